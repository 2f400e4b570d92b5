"""MUSE-mini in one command: build (or reuse) the corpora and models, then run the requested stages.

    python benchmarks/muse_mini/run.py                               # models, compare, curves
    python benchmarks/muse_mini/run.py --stages models               # the cached models only
    python benchmarks/muse_mini/run.py --stages compare --trials 6

Everything is cached under --workdir: a rerun reuses finished runs and resumes unfinished ones.
The results go to --results (Markdown, with the JSON beside it) and an HTML report. See
benchmarks/muse_mini/README.md for the protocol and its deviations from MUSE.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import METHODS, RULE, Comparison, slug  # noqa: E402
from curves import PROPERTIES, Curves  # noqa: E402
from protocol import Protocol  # noqa: E402

from palu.commands.curve import curve_table  # noqa: E402
from palu.commands.report import run_report  # noqa: E402
from palu.eval.core import format_value  # noqa: E402
from palu.eval.muse import PROPERTIES as MUSE_PROPERTIES  # noqa: E402
from palu.io import write_json, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("models", "compare", "curves")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "muse_news" / "raw",
                   help="MUSE-News corpora (forget.jsonl, sust_forget_2..4.jsonl)")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "muse-mini", help="models and runs (cached)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    p.add_argument("--trials", type=int, default=6, help="sweep trials per method (the same for all)")
    p.add_argument("--epochs", type=int, default=4, help="unlearning epochs per trial")
    p.add_argument("--curve-methods", default="all", help="methods with C5/C6 curves: all, or comma-separated rows")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "muse_mini.md")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stage {unknown[0]!r}")
    curve_methods = list(METHODS) if args.curve_methods == "all" else [m.strip() for m in args.curve_methods.split(",")]
    if set(curve_methods) - set(METHODS):
        p.error(f"--curve-methods: valid rows are {', '.join(METHODS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "palu.train.selection", "palu.commands.unlearn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.time()
    protocol = Protocol(args.data, args.workdir)
    references = protocol.build()
    sections = [header(args), "## The models (request 1's evaluation sets)", table({n: {"eval": r} for n, r in
                                                                                     references.items()})]
    if "compare" in stages or "curves" in stages:
        cmp = Comparison(protocol, args.trials, args.epochs)
        results = cmp.run_all(references)
        write_json(args.results.with_suffix(".json"), results)
        sections += [f"## Comparison on request 1 ({args.trials} sweep trials per method, {args.epochs} epochs each)",
                     table(results), report([Path(row["selected"]["run"]) for row in results.values()
                                             if row.get("selected")],
                                            args.results.with_name(f"{args.results.stem}_report.html"))]
        if "curves" in stages:
            curves = Curves(cmp).run_all(results, curve_methods)
            write_json(args.results.with_name(f"{args.results.stem}_curves.json"), curves)
            html = args.results.with_name(f"{args.results.stem}_curves_report.html")
            run_report([cmp.p.workdir / "curves" / slug(m) / prop for m in curves for prop in PROPERTIES], html)
            sections += ["## C5 and C6 curves (all four requests' evaluation sets; step 0: the target model)",
                         f"The HTML report draws them: `{html.name}`."]
            for method, by_prop in curves.items():
                sections += [f"### {method}", *(curve_table(prop, by_prop[prop]["rows"]) for prop in PROPERTIES)]
    sections.append(f"Wall time of this invocation (finished runs are reused): {(time.time() - start) / 60:.0f} min.")
    write_text(args.results, "\n\n".join(sections) + "\n")
    print(f"results in {args.results}")


def header(args) -> str:
    results = args.results.resolve()
    shown = results.relative_to(ROOT) if results.is_relative_to(ROOT) else results
    return (f"# MUSE-mini\n\nCommand: `python benchmarks/muse_mini/run.py --stages {args.stages} "
            f"--trials {args.trials} --epochs {args.epochs} --curve-methods {args.curve_methods} --results {shown}`\n\n"
            f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}. "
            f"Date: {date.today()}. Selection: the lowest {RULE.metric} among epochs keeping {RULE.utility} >= "
            f"{RULE.utility_floor} of the target model's. What the tables show: `benchmarks/muse_mini/README.md`.")


def table(rows: dict) -> str:
    """One row per model: C1-C4 (MUSE's metrics, 0-1), and the selected trial's settings."""
    head = ["model", "selected (trial, epoch: settings)",
            *(f"{name} {MUSE_PROPERTIES[name][1]}" for name in MUSE_PROPERTIES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        ev, chosen = row.get("eval") or {}, row.get("selected")
        if chosen:
            knobs = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in chosen["settings"].items())
            picked = f"{chosen['trial']}, {chosen['epoch']}: {knobs}"
        else:
            picked = "" if "selected" not in row else "no epoch kept the utility floor"
        cells = [name, picked, *(format_value(ev.get(metric)) for metric, _ in MUSE_PROPERTIES.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(runs: list[Path], html: Path) -> str:
    """The HTML report of each method's selected trial (its per-epoch curves and MUSE metrics); a trial
    the sweep stopped for lost utility has no history and is left out (its row is in the table)."""
    finished = [run for run in runs if (run / "history.json").is_file()]
    run_report(finished, html)
    stopped = ", ".join(str(run.relative_to(run.parents[1])) for run in runs if run not in finished)
    return (f"HTML report of each method's selected trial: `{html.name}` (`palu report TRIAL... --out {html}`)"
            + (f"; left out, stopped early by the sweep's pruning: {stopped}." if stopped else "."))


if __name__ == "__main__":
    main()
