"""``palu eval``: the TOFU metrics of a model (``suite=muse``: the MUSE suite, see ``palu.commands.muse``);
``--from-open-unlearning`` recomputes an open-unlearning log's aggregates instead."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from palu.config import build, raw_config
from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig
from palu.errors import PaluError
from palu.eval.core import summary
from palu.eval.harness import evaluate_harness
from palu.eval.sets import EvalSets, eval_sets
from palu.eval.tofu import evaluate_tofu
from palu.io import read_json
from palu.models import load_model, load_model_and_tokenizer, require_model
from palu.runs import Reuse, run_folder, write_results

HELP = "evaluate a model on forget and retain data (TOFU metrics; suite=muse for MUSE, suite=lm-eval for the harness)"
RESUMABLE = False
SUITES = ("tofu", "muse", "lm-eval")


@dataclass
class Config(EvalSets):
    """``palu eval``: the TOFU metrics of a model on forget and retain data, and on the optional sets."""

    model: str = ""
    tokenizer: str | None = None
    output_dir: str = "runs/eval"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


def run_eval(cfg: Config, overwrite: bool = False, progress: bool = True) -> dict:
    """Evaluate, write ``results.json`` (per item) and ``summary.json``; returns the results."""
    require_model(cfg)
    with run_folder(cfg.output_dir, "eval", cfg, Reuse(overwrite)) as out:
        reference = read_json(cfg.retain_reference) if cfg.retain_reference else None
        sets = eval_sets(cfg, cfg.synthetic)
        model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer)
        scorer = load_model(cfg.fluency_model) if cfg.fluency_model else None
        results = evaluate_tofu(model, tok, sets, cfg.prompt, reference, progress=progress, fluency_model=scorer,
                                **cfg.options())
        if cfg.lm_eval is not None:
            results.update(evaluate_harness(model, tok, cfg.lm_eval))
        return write_results(out, results)


def arguments(parser) -> None:
    parser.add_argument("--from-open-unlearning", metavar="EVAL.json",
                        help="no model: recompute the aggregates of an open-unlearning TOFU_EVAL.json with palu's "
                             "metric code and print them as JSON")
    parser.add_argument("--retain-log", metavar="RETAIN_EVAL.json",
                        help="with --from-open-unlearning: the retain model's log (forget quality, privleak)")


def main(args) -> str:
    if args.from_open_unlearning or args.retain_log:
        return _recompute(args)
    data = raw_config(args.config, args.overrides)
    suite = data.pop("suite", "tofu")
    if suite not in SUITES:
        raise PaluError(f"suite must be one of {', '.join(SUITES)}, not {suite!r}.")
    if suite == "muse":
        from palu.commands import muse

        cfg = build(muse.Config, data)
        results = muse.run_muse(cfg, args.overwrite, not args.quiet)
    elif suite == "lm-eval":
        from palu.commands import harness

        cfg = build(harness.Config, data)
        results = harness.run_harness(cfg, args.overwrite, not args.quiet)
    else:
        cfg = build(Config, data)
        results = run_eval(cfg, args.overwrite, not args.quiet)
    lines = [f"{k}: {'n/a' if v is None else f'{v:.4g}'}" for k, v in summary(results).items()]
    return "\n".join(lines + [f"results in {Path(cfg.output_dir).resolve()}"])


def _recompute(args) -> str:
    from palu.eval.open_unlearning import recompute_files

    if not args.from_open_unlearning:
        raise PaluError("--retain-log goes with --from-open-unlearning EVAL.json.")
    if args.config or args.overrides:
        raise PaluError("--from-open-unlearning reads a log and takes no --config or key=value overrides.")
    return json.dumps(summary(recompute_files(args.from_open_unlearning, args.retain_log)), indent=2)
