"""``palu curve``: MUSE's scalability (C5) or sustainability (C6) property of an unlearning method.

MUSE (Shi et al. 2024, arXiv 2407.06460) asks six things of an unlearned model; ``palu eval
suite=muse`` scores the first four, and this command traces them over a series of forget sets:

- C1 no verbatim memorisation: ``forget_verbmem_ROUGE`` (lower is better);
- C2 no knowledge memorisation: ``forget_knowmem_ROUGE`` (lower is better);
- C3 no privacy leakage: ``privleak`` against the retain model (0 is ideal);
- C4 utility preserved: ``retain_knowmem_ROUGE`` (higher is better);
- C5 scalability: C1-C4 as the forget set grows: nested forget sets, each unlearned from the
  original model (MUSE's ``scal`` splits);
- C6 sustainability: C1-C4 after each of several deletion requests that follow one another:
  disjoint forget sets, each unlearned from the model the previous one left (MUSE's ``sust``).

Row 0 is the original model. Every unlearning step and every evaluation is a run folder of its
own, so an interrupted curve resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from palu.commands import muse, unlearn
from palu.config import load_config, require
from palu.data.loaders import DataSource
from palu.data.sources import load_items
from palu.eval.core import format_value
from palu.eval.muse import PROPERTIES
from palu.io import read_json, write_json, write_text
from palu.models import require_model
from palu.runs import CURVE, CURVE_TABLE, MODEL_DIR, SUMMARY, Reuse, evaluation_dir, request_dir, run_folder

HELP = "MUSE's scalability (C5) or sustainability (C6): C1-C4 as the forget set grows or requests follow"
RESUMABLE = True


@dataclass
class Config:
    """``palu curve``: unlearn a series of forget sets and score C1-C4 after each.

    Attributes:
        property: "scalability" (C5: nested forget sets, each from the original model) or
            "sustainability" (C6: successive requests, each from the previous model).
        forgets: the forget sets in order (documents or QA pairs).
        unlearn: the unlearning run (model, retain set, method, training); its ``forget`` and
            ``requests`` are set by the curve.
        muse: the MUSE evaluation (``path``, ``retain_reference`` for C3, limits); its ``model`` is
            each step's.
    """

    property: Literal["scalability", "sustainability"] = "sustainability"
    forgets: list[DataSource] = field(default_factory=list)
    unlearn: unlearn.Config = field(default_factory=unlearn.Config)
    muse: muse.Config = field(default_factory=muse.Config)
    output_dir: str = "runs/curve"

    def __post_init__(self) -> None:
        require(len(self.forgets) >= 1, "forgets", "a list of at least one forget set", self.forgets)


def run_curve(cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True,
              allow_config_change: bool = False) -> list[dict]:
    """Unlearn, evaluate every step, write ``curve.json`` and ``curve.md``; returns the rows (row 0: the
    original model)."""
    require_model(cfg.unlearn)
    with run_folder(cfg.output_dir, "curve", cfg, Reuse(overwrite, resume, allow_config_change)) as out:
        steps = [(cfg.unlearn.model, 0), *_unlearned(cfg, out, progress)]
        rows = [{"step": step, "forget_documents": size, **_properties(_evaluate(cfg, out, step, model, progress))}
                for step, (model, size) in enumerate(steps)]
        write_json(out / CURVE, {"property": cfg.property, "rows": rows})
        write_text(out / CURVE_TABLE, curve_table(cfg.property, rows) + "\n")
        return rows


def _unlearned(cfg: Config, out: Path, progress: bool) -> list[tuple[str, int]]:
    """(model, forget documents so far) after each step, unlearning what is not yet unlearned."""
    sizes = [len(load_items(source, cfg.unlearn.synthetic)) for source in cfg.forgets]
    if cfg.property == "sustainability":
        folder = out / "requests"
        unlearn.run_unlearn(replace(cfg.unlearn, requests=cfg.forgets, output_dir=str(folder)), resume=True,
                            progress=progress)
        totals = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        return [(str(request_dir(folder, i) / MODEL_DIR), total) for i, total in enumerate(totals, 1)]
    models = []
    for i, source in enumerate(cfg.forgets, 1):
        step = replace(cfg.unlearn, forget=source, requests=[], output_dir=str(out / f"size-{i}"))
        models.append((str(unlearn.run_unlearn(step, resume=True, progress=progress)), sizes[i - 1]))
    return models


def _evaluate(cfg: Config, out: Path, step: int, model: str, progress: bool) -> dict:
    folder = evaluation_dir(out, f"step-{step}")
    if not (folder / SUMMARY).exists():
        muse.run_muse(replace(cfg.muse, model=model, output_dir=str(folder)), overwrite=True, progress=progress)
    return read_json(folder / SUMMARY)


def _properties(summary: dict) -> dict:
    return {name: summary.get(metric) for name, (metric, _) in PROPERTIES.items()}


def curve_table(prop: str, rows: list[dict]) -> str:
    """The curve as a Markdown table: one row per step, C1-C4 with their metrics named."""
    head = ["step", "forget documents", *(f"{name} {PROPERTIES[name][1]} ({PROPERTIES[name][0]})"
                                          for name in PROPERTIES)]
    lines = [f"{'C5 scalability' if prop == 'scalability' else 'C6 sustainability'} (step 0: the original model)",
             "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines += ["| " + " | ".join([str(r["step"]), str(r["forget_documents"]),
                                 *(format_value(r[name]) for name in PROPERTIES)]) + " |" for r in rows]
    return "\n".join(lines)


def main(args) -> str:
    cfg = load_config(Config, args.config, args.overrides)
    rows = run_curve(cfg, args.overwrite, args.resume, not args.quiet, args.allow_config_change)
    return f"{curve_table(cfg.property, rows)}\n\nthe runs and the curve are in {Path(cfg.output_dir).resolve()}"
