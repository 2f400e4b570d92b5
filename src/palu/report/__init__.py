"""``palu report``: one self-contained HTML page (and a Markdown table) on a set of unlearning runs.

The page has no script and loads nothing (inline CSS, SVG drawn here), so it can be mailed, archived
with the runs, or opened on an offline machine.
"""

from __future__ import annotations

from pathlib import Path

from palu.errors import PaluError
from palu.io import write_text
from palu.report.discover import discover, forget_items
from palu.report.render import MARK, html_page, markdown


def write_report(run_dirs: list[Path], out: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write the HTML report to ``out`` and its summary table beside it (``.md``); returns both paths.

    An existing file is replaced only when an earlier report wrote it, or with ``overwrite``."""
    out = Path(out)
    table = out.with_suffix(".md")
    if table == out:
        raise PaluError(f"{out}: the report is HTML; name it FILE.html (the Markdown table goes beside it).")
    for path in (out, table):
        if path.is_dir():
            raise PaluError(f"{path} is a folder; name the report FILE.html.")
        if path.exists() and not overwrite and not _written_by_report(path):
            raise PaluError(f"{path} exists and palu report did not write it; pass --overwrite to replace it, or "
                            "choose another --out.")
    runs = discover(run_dirs)
    page = html_page(runs, forget_items(runs), [Path(p) for p in run_dirs])
    write_text(out, page)
    write_text(table, markdown(runs))
    return out, table


def _written_by_report(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return MARK.encode() in fh.read(1 << 20)
    except OSError:
        return False


__all__ = ["write_report"]
