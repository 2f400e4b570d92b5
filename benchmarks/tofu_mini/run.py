"""TOFU-mini in one command: build (or reuse) the models, then run the requested stages.

    python benchmarks/tofu_mini/run.py                            # models, compare, grid, sweep
    python benchmarks/tofu_mini/run.py --stages models            # only the cached models
    python benchmarks/tofu_mini/run.py --stages compare --budget 3
    python benchmarks/tofu_mini/run.py --stages equal --equal-trials 8     # every method, the same search
    python benchmarks/tofu_mini/run.py --pretrain --stages models,equal    # a model that knows the language
    python benchmarks/tofu_mini/run.py --stages scale                      # PALU's loss scale (after equal)
    python benchmarks/tofu_mini/run.py --pretrain --stages scale           # there, and the first regime's setting
    python benchmarks/tofu_mini/run.py --stages scale                      # again: the second regime's setting here

Everything is cached under --workdir: a rerun reuses finished runs and resumes unfinished ones. Its
default lies outside the checkout ($PALU_BENCH_CACHE, else ~/.cache/palu-benchmarks), so a fresh
checkout on the same machine keeps the models and trials of a stage that takes several sittings.
The results go to --results (Markdown, with the JSON beside it) and an HTML report.
See benchmarks/tofu_mini/README.md for the protocol and its deviations from TOFU.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

if platform.machine().lower() in ("x86_64", "amd64"):
    # The same arithmetic on every x86-64 CPU (with float32 training, protocol.float32): torch's own
    # kernels and MKL at AVX2 whatever the CPU offers, so a machine with AVX-512 or AMX rebuilds the
    # models of an AVX2 machine and the equal stage's records carry over (read before torch loads).
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("MKL_CBWR", "AVX2")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import LRS, METHODS, Comparison, slug  # noqa: E402
from equal import EqualSearch, records  # noqa: E402
from grid import KS, NS, label, run_grid  # noqa: E402
from protocol import Protocol  # noqa: E402
from scale import check, latest_scale, scale_table  # noqa: E402
from search import run_search  # noqa: E402
from tables import comparison_table, equal_summary, grid_table, peak_cell, search_summary, selected  # noqa: E402

from palu.commands.report import run_report  # noqa: E402
from palu.io import read_json, write_json, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PALU_BENCH_CACHE") or "~/.cache/palu-benchmarks").expanduser()
REGIMES = ("tofu-mini", "tofu-mini-pretrained")  # from scratch, and pretrained on general English (--pretrain)
STAGES = ("models", "compare", "grid", "sweep", "equal", "scale")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "tofu", help="TOFU's JSON files")
    p.add_argument("--workdir", type=Path, help=f"models and runs, cached (default: {CACHE}/tofu-mini, "
                                                  "tofu-mini-pretrained with --pretrain; PALU_BENCH_CACHE moves it)")
    p.add_argument("--forget", default="forget05", choices=("forget01", "forget05", "forget10"))
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    p.add_argument("--budget", type=int, default=3, help="learning rates tried per method (at most 12)")
    p.add_argument("--epochs", type=int, default=5, help="unlearning epochs per run")
    p.add_argument("--trials", type=int, default=30, help="runs of the sweep stage")
    p.add_argument("--equal-trials", type=int, default=8, help="sweep trials per method in the equal stage")
    p.add_argument("--methods", help="the equal stage for only these methods (comma-separated, as in the table), "
                                     "to split it between workers; the table is written without it")
    p.add_argument("--so-far", action="store_true", help="with the equal stage: write its table from the searches "
                                                         "finished so far, starting none (the rest are listed)")
    p.add_argument("--pretrain", action="store_true", help="the second regime: pretrain on general English first")
    p.add_argument("--pretrain-data", type=Path, default=ROOT.parent / "shared" / "data" / "muse_news" / "raw",
                   help="general text for --pretrain: *.jsonl of {\"text\"} (default: MUSE-News's BBC articles)")
    p.add_argument("--results", type=Path, help="default: benchmarks/results/tofu_mini.md (tofu_mini_pretrained.md "
                                                "with --pretrain)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    regime = REGIMES[args.pretrain]
    args.workdir = args.workdir or CACHE / regime
    args.results = args.results or results_file(regime)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if unknown or not 1 <= args.budget <= 12:
        p.error(f"unknown stage {unknown[0]!r}" if unknown else "--budget must be between 1 and 12")
    if args.so_far and "equal" not in stages:
        p.error("--so-far writes the equal stage's table: add equal to --stages")
    if methods and set(methods) - set(METHODS):
        p.error(f"unknown method {sorted(set(methods) - set(METHODS))[0]!r}; choose from {', '.join(METHODS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.time()
    protocol = Protocol(args.data, args.workdir, args.forget, args.pretrain_data if args.pretrain else None)
    protocol.build()
    cmp = Comparison(protocol, args.budget, args.epochs)
    if "models" in stages:  # the evaluations every stage shares, so workers started after it never race for them
        cmp.references()
        cmp.start_record()
    sections = [header(args, protocol)]
    if {"compare", "grid", "sweep"} & set(stages):
        table = cmp.run_all()
        write_json(args.results.with_suffix(".json"), table)
        sections += ["## Comparison", comparison_table(table), report(cmp, args.results.with_name(
            f"{args.results.stem}_report.html"))]
        if "grid" in stages or "sweep" in stages:
            palu = table["palu (GPT-4o spans)"].get("selected") or {"lr": 1e-3}
            grid = run_grid(cmp, palu["lr"])
            write_json(cmp.out / "grid.json", grid)
            ks, ns = [label(k) for k in KS], [label(n) for n in NS]
            targets = "\n".join(f"- target {name}: forget quality {row.get('forget_quality')}, model utility "
                                f"{row.get('model_utility')} (epoch {row.get('epoch')}); peak {peak_cell(row)}"
                                for name, row in grid["targets"].items())
            sections += [f"## K x N (PALU, GPT-4o spans, lr {grid['lr']:g})",
                         "Forget quality at the selected epoch (best forget quality with model utility >= 95% of "
                         "the full model's):", grid_table(grid["cells"], ks, ns, selected("forget_quality")),
                         "Model utility there:", grid_table(grid["cells"], ks, ns, selected("model_utility")),
                         "Peak: the best forget quality at any epoch, with the model utility (MU) and forget truth "
                         "ratio (TR) there (the retain model's TR is the target):",
                         grid_table(grid["cells"], ks, ns, peak_cell),
                         "Target variants (K = 50, N = 3):", targets]
        if "sweep" in stages:
            palu_runs = [(cmp.out / "runs" / "palu-gpt4o" / f"lr-{lr:g}", lr) for lr in LRS[: args.budget]]
            grid_runs = [(Path(cell["folder"]), grid["lr"]) for cell in grid["cells"]]
            found = run_search(cmp, palu_runs + grid_runs, args.trials)
            write_json(cmp.out / "sweep.json", found)
            sections += [f"## palu sweep ({args.trials} runs) against the grid ({found['grid_runs']} runs)",
                         search_summary(found)]
    wall = lambda: f"Wall time of this invocation (finished runs are reused): {(time.time() - start) / 60:.0f} min."
    if len(sections) > 1:  # the models alone leave the results of earlier stages as they are
        write_text(args.results, "\n\n".join([*sections, wall()]) + "\n")
        print(f"results in {args.results}")
    if "equal" in stages:  # its own file, so the stages above and this one can be rerun apart
        found = EqualSearch(cmp, args.equal_trials, ledger(args.results)).run_all(methods, search=not args.so_far)
        if methods and not args.so_far:
            print(f"equal search done for {', '.join(methods)}; run without --methods for the table")
            return
        equal = args.results.with_name(f"{args.results.stem}_equal.md")
        write_json(equal.with_suffix(".json"), found)
        html = equal.with_name(f"{equal.stem}_report.html")
        finals = [cmp.out / f"eval-equal-{args.equal_trials}-{slug(m)}" for m, row in found["table"].items()
                  if row.get("selected")]
        here = [folder for folder in finals if (folder / "summary.json").is_file()]  # a recorded search's may be gone
        run_report([cmp.out / "eval-full", cmp.out / "eval-retain", *here], html)
        asked = len(methods or METHODS)
        searched = (f"so far, {asked - len(found['unsearched'])} of {asked} methods" if found["unsearched"]
                    else "every method")
        write_text(equal, "\n\n".join([header(args, protocol), f"## Equal search: {searched}, {args.equal_trials} "
                                        "sweep trials each", comparison_table(found["table"]), equal_summary(found),
                                        f"HTML report of the {len(here)} of {len(finals)} selected models "
                                        f"evaluated in {cmp.out}: `{html.name}`; every row: `{equal.stem}.json`.",
                                        wall()]) + "\n")
        print(f"results in {equal}")
    if "scale" in stages:
        other = latest_scale(records(ledger(results_file(REGIMES[not args.pretrain])), args.equal_trials))
        write_scale(args, protocol, check(cmp, args.equal_trials, ledger(args.results), other), other)


def results_file(regime: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"{regime.replace('-', '_')}.md"


def ledger(results: Path) -> Path:
    """Where the equal stage records each finished method beside ``results`` (committed with them)."""
    return results.with_name(f"{results.stem}_equal")


def write_scale(args, protocol: Protocol, own: dict, other: Path | None) -> None:
    """tofu_mini_scale.md from this regime's scale result and the other regime's scale.json (when it
    exists)."""
    here, there = ("pretrained", "from scratch") if args.pretrain else ("from scratch", "pretrained")
    regimes = {here: own}
    if other is not None:
        regimes[there] = read_json(other)
    out = ROOT / "benchmarks" / "results" / "tofu_mini_scale.md"
    write_text(out, "\n\n".join([
        header(args, protocol), f"## PALU's loss scale: the official forget term against forget_scale=reference "
        f"({args.equal_trials} sweep trials each)", scale_table(dict(sorted(regimes.items()))),
        "FQ: forget quality, MU: model utility, at the epoch the rule selects. The forget term is the mean of the "
        "logged forget term over the selected trial's first epoch. What it means: `benchmarks/tofu_mini/README.md`."])
        + "\n")
    print(f"results in {out}")


def header(args, protocol: Protocol) -> str:
    results = args.results.resolve()
    shown = results.relative_to(ROOT) if results.is_relative_to(ROOT) else results
    return (f"# TOFU-mini ({args.forget})\n\nCommand: `python benchmarks/tofu_mini/run.py --forget {args.forget} "
            f"--stages {args.stages} --budget {args.budget} --epochs {args.epochs} --equal-trials {args.equal_trials}"
            f"{' --pretrain' if args.pretrain else ''}{' --so-far' if args.so_far else ''} --results {shown}`\n\n"
            f"Machine: {platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}. Date: {date.today()}. "
            f"Models and runs: {protocol.workdir}. What the tables show: `benchmarks/tofu_mini/README.md`, Findings.")


def report(cmp: Comparison, html: Path) -> str:
    """The HTML report of the comparison's evaluations (``palu report`` on the comparison folder)."""
    run_report([cmp.out], html)
    return (f"HTML report: `{html.name}` (`palu report {cmp.out} --out {html}`); every row with its attacks: "
            f"`{html.name.replace('_report.html', '.json')}`.")


if __name__ == "__main__":
    main()
