"""``palu report RUN_DIR... [--out FILE.html]``: one self-contained HTML report (see ``palu.report``)."""

from __future__ import annotations

from pathlib import Path

from palu.report import write_report
from palu.runs import REPORT

HELP = "write one self-contained HTML report (and a Markdown table) of demo, run or evaluation folders"


def run_report(paths: list[str | Path], out: str | Path | None = None, overwrite: bool = False) -> str:
    """``palu report RUN_DIR... [--out FILE.html]``; by default the report goes into the first folder."""
    out = Path(out) if out else Path(paths[0] if paths else ".") / REPORT
    page, table = write_report([Path(p) for p in paths], out, overwrite)
    return f"report written to {page.resolve()}\nsummary table in {table.resolve()}"


def arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="a demo folder, unlearning runs or evaluations")
    parser.add_argument("--out", metavar="FILE.html", help=f"where to write (default: RUN_DIR/{REPORT})")


def main(args) -> str:
    return run_report([Path(p) for p in args.paths], Path(args.out) if args.out else None, args.overwrite)
