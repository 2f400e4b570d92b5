"""The `palu` command: demo, finetune, unlearn, eval, annotate, attack, report, sweep.

Each takes ``--config FILE.yaml`` plus ``key=value`` overrides (``train.lr=1e-5``, ``method=palu``)
and prints where its outputs went. Errors in the input, the files or the machine (a full disk) are
printed as one line, not a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from palu.errors import PaluError, explain


def default_threads() -> int:
    """Half the cores: torch threads slow down sharply when they compete with another busy process."""
    return max(1, (os.cpu_count() or 2) // 2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="palu", description="Targeted unlearning for language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "demo": "train tiny full and retain models on the built-in data, unlearn with PALU, compare (offline)",
        "finetune": "train a target (full) or retain model on QA data",
        "unlearn": "remove the forget set from a model with PALU or a baseline",
        "eval": "evaluate a model on forget and retain data (TOFU metrics)",
        "annotate": "find the sensitive spans in QA answers (contrast, rules, file or llm annotator)",
        "attack": "evaluate an unlearned model under relearning, quantization and paraphrase attacks",
        "sweep": "search PALU's lr, alpha, K and N for the forget-quality / utility Pareto front (Optuna)",
    }
    for name, text in helps.items():
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-5")
        c.add_argument("--config", metavar="FILE.yaml", help="a YAML config; overrides apply on top")
        c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        if name == "demo":
            c.add_argument("--compare", action="store_true", help="unlearn with PALU and every baseline; one table")
        if name == "annotate":
            c.add_argument("--show", action="store_true", help="print the answers with their spans highlighted")
        elif name not in ("eval", "attack", "sweep"):
            c.add_argument("--resume", action="store_true", help="continue an interrupted run in its output folder")
        if name in ("demo", "finetune", "unlearn", "sweep"):
            c.add_argument("--allow-config-change", action="store_true",
                           help="continue a run under options other than those it was started with "
                                "(refused by default)")
        c.add_argument("--trust-remote-code", action="store_true",
                       help="let a model folder or hub repository run its own Python code (off by default)")
        if name == "eval":
            c.add_argument("--from-open-unlearning", metavar="EVAL.json",
                           help="no model: recompute the aggregates of an open-unlearning TOFU_EVAL.json with "
                                "palu's metric code and print them as JSON")
            c.add_argument("--retain-log", metavar="RETAIN_EVAL.json",
                           help="with --from-open-unlearning: the retain model's log (forget quality, privleak)")
        c.add_argument("--threads", type=int, default=None,
                       help=f"CPU threads for torch (default: PALU_THREADS or {default_threads()})")
        c.add_argument("--quiet", action="store_true", help="no progress bars")
        c.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    text = "write one self-contained HTML report (and a Markdown table) of demo, run or evaluation folders"
    c = sub.add_parser("report", help=text, description=text)
    c.add_argument("paths", nargs="+", metavar="RUN_DIR", help="a demo folder, unlearning runs or evaluations")
    c.add_argument("--out", metavar="FILE.html", help="where to write (default: RUN_DIR/report.html)")
    c.add_argument("--overwrite", action="store_true", help="replace existing files that palu report did not write")
    c.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def setup(args) -> None:
    import torch
    import transformers

    from palu.models import trust_remote_code

    threads = getattr(args, "threads", None)
    threads = threads if threads is not None else int(os.environ.get("PALU_THREADS", default_threads()))
    if threads < 1:
        raise PaluError(f"--threads must be at least 1, not {threads}.")
    torch.set_num_threads(threads)
    trust_remote_code(getattr(args, "trust_remote_code", False))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("palu").setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(args) -> str:
    """Run one command; returns the text to print when it is done."""
    from palu import commands
    from palu.config import load_config
    from palu.demo import DemoConfig, render_table, run_demo
    from palu.eval.core import summary

    if args.command == "report":
        from palu.report import run_report

        return run_report([Path(p) for p in args.paths], Path(args.out) if args.out else None, args.overwrite)
    progress = not args.quiet
    resume = getattr(args, "resume", False)
    changes = {"allow_config_change": getattr(args, "allow_config_change", False)}
    if changes["allow_config_change"] and not resume and args.command != "sweep":
        raise PaluError("--allow-config-change goes with --resume.")
    if args.command == "demo":
        cfg = load_config(DemoConfig, args.config, args.overrides)
        table = run_demo(cfg, args.overwrite, resume, progress, args.compare, **changes)
        return f"{render_table(table)}\n\nall outputs in {Path(cfg.output_dir).resolve()}"
    if args.command == "finetune":
        cfg = load_config(commands.FinetuneConfig, args.config, args.overrides)
        return f"model saved to {commands.run_finetune(cfg, args.overwrite, resume, progress, **changes).resolve()}"
    if args.command == "annotate":
        from palu.annotate.command import AnnotateConfig, run_annotate

        cfg = load_config(AnnotateConfig, args.config, args.overrides + (["show=true"] if args.show else []))
        return run_annotate(cfg, args.overwrite)
    if args.command == "attack":
        from palu.eval.attacks import AttackConfig, attack_table, run_attack

        cfg = load_config(AttackConfig, args.config, args.overrides)
        table = run_attack(cfg, args.overwrite, progress)
        return f"{attack_table(table)}\n\nresults in {Path(cfg.output_dir).resolve()}"
    if args.command == "sweep":
        from palu.sweep import SweepConfig, pareto_table, run_sweep

        cfg = load_config(SweepConfig, args.config, args.overrides)
        front = run_sweep(cfg, args.overwrite, progress, **changes)
        return f"{pareto_table(front)}\n\nthe study and every trial are in {Path(cfg.output_dir).resolve()}"
    if args.command == "unlearn":
        cfg = load_config(commands.UnlearnConfig, args.config, args.overrides)
        return f"unlearned model saved to {commands.run_unlearn(cfg, args.overwrite, resume, progress, **changes).resolve()}"
    if args.from_open_unlearning or args.retain_log:
        from palu.eval.open_unlearning import recompute_files

        if not args.from_open_unlearning:
            raise PaluError("--retain-log goes with --from-open-unlearning EVAL.json.")
        if args.config or args.overrides:
            raise PaluError("--from-open-unlearning reads a log and takes no --config or key=value overrides.")
        return json.dumps(summary(recompute_files(args.from_open_unlearning, args.retain_log)), indent=2)
    if "suite=muse" in args.overrides:  # the MUSE suite instead of TOFU's
        from palu.eval.muse import MuseConfig, run_muse

        cfg = load_config(MuseConfig, args.config, [o for o in args.overrides if o != "suite=muse"])
        results = run_muse(cfg, args.overwrite, progress)
    else:
        cfg = load_config(commands.EvalConfig, args.config, args.overrides)
        results = commands.run_eval(cfg, args.overwrite, progress)
    lines = [f"{k}: {'n/a' if v is None else f'{v:.4g}'}" for k, v in summary(results).items()]
    return "\n".join(lines + [f"results in {Path(cfg.output_dir).resolve()}"])


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)  # overrides may come before or after the options
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and args.command == "report":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        setup(args)
        print(run(args))
    except Exception as exc:  # a user's error is one line; a bug keeps its traceback
        error = explain(exc)
        if error is None or args.debug:
            raise
        print(f"palu {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"palu {args.command}: interrupted; run it again with --resume to continue.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
