"""From the folders a user names to the runs a report shows, each with its history and evaluation.

Three kinds of folder are understood, so that ``palu report`` works on whatever palu wrote:

- an evaluation (``results.json`` and ``summary.json``, as ``palu eval`` writes);
- a run (``history.json``, as ``palu unlearn`` writes); its evaluation is its only subfolder holding
  ``results.json`` or else the sibling ``eval-<run>``; the model it started from, when that is a run
  folder with an evaluation too, becomes the "before" model;
- a folder of evaluations ``eval-<name>/`` (``palu demo``'s output): one run per evaluation, with the
  run folder ``<name>`` beside it when there is one; ``full`` is the before model, ``retain`` the
  retain model (the one forget quality compares with).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from palu.config import build, read_yaml
from palu.data.loaders import DataSource
from palu.data.qa import QAItem
from palu.data.sources import SyntheticConfig, load_items
from palu.errors import PaluError
from palu.io import read_json
from palu.runs import CHECKPOINT, CONFIG, DONE, EVAL_PREFIX, HISTORY, MODEL_DIR, RESULTS, SUMMARY, evaluation_dir

BEFORE, RETAIN, UNLEARNED = "before", "retain", "unlearned"
ROLE_NAMES = {"full": BEFORE, "retain": RETAIN}
GENERATIONS = "forget_Q_A_ROUGE"  # the per-item result whose generations the report shows


@dataclass
class Run:
    """One model in the report: its training run (if given) and its evaluation (if found)."""

    name: str
    role: str
    run_dir: Path | None = None
    eval_dir: Path | None = None
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def discover(paths: list[str | Path]) -> list[Run]:
    """The runs behind ``paths``: before models first, then the retain model, then the unlearned runs."""
    if not paths:
        raise PaluError("name at least one run, evaluation or demo folder to report on.")
    runs: list[Run] = []
    seen: set[tuple] = set()
    for path in map(Path, paths):
        for run in _expand(path):
            key = (run.run_dir and run.run_dir.resolve(), run.eval_dir and run.eval_dir.resolve())
            if key not in seen:
                seen.add(key)
                runs.append(run)
    _unique_names(runs)
    for run in runs:
        _load(run)
    rank = {BEFORE: 0, RETAIN: 1, UNLEARNED: 2}
    return sorted(runs, key=lambda r: rank[r.role])


def _expand(path: Path) -> list[Run]:
    if not path.is_dir():
        raise PaluError(f"{path}: no such folder; give run folders, evaluation folders or a demo folder.")
    if (path / RESULTS).exists() or ((path / SUMMARY).exists() and not _evaluations_in(path)):
        name = path.name.removeprefix(EVAL_PREFIX)
        return [Run(name, ROLE_NAMES.get(name, UNLEARNED), eval_dir=path)]
    if (path / HISTORY).exists() or (path / DONE).exists() or (path / CHECKPOINT).exists():
        before = _before_of(path)
        return ([before] if before else []) + [Run(path.name, UNLEARNED, run_dir=path, eval_dir=_evaluation_of(path))]
    evaluations = _evaluations_in(path)
    if not evaluations:
        raise PaluError(f"{path}: not a run folder (history.json), an evaluation (results.json, summary.json) or a "
                        f"demo folder (eval-<name>/); nothing to report.")
    runs = []
    for ev in evaluations:
        name = ev.name.removeprefix(EVAL_PREFIX)
        run_dir = path / name if (path / name).is_dir() else None
        runs.append(Run(name, ROLE_NAMES.get(name, UNLEARNED), run_dir=run_dir, eval_dir=ev))
    return runs


def _evaluations_in(path: Path) -> list[Path]:
    """``eval-*`` subfolders, in the order of the folder's summary.json (the demo's table) when it has one."""
    found = sorted(p for p in path.glob(f"{EVAL_PREFIX}*") if p.is_dir())
    table = read_json(path / SUMMARY) if (path / SUMMARY).exists() else {}
    order = {name: i for i, name in enumerate(table if isinstance(table, dict) else [])}
    return sorted(found, key=lambda p: order.get(p.name.removeprefix(EVAL_PREFIX), len(order)))


def _evaluation_of(run_dir: Path) -> Path | None:
    inside = sorted(p.parent for p in run_dir.glob(f"*/{RESULTS}"))
    if len(inside) > 1:
        raise PaluError(f"{run_dir}: several evaluations ({', '.join(p.name for p in inside)}); "
                        "name the one to report instead of the run folder.")
    if inside:
        return inside[0]
    sibling = evaluation_dir(run_dir.parent, run_dir.name)
    return sibling if (sibling / RESULTS).exists() else None


def _before_of(run_dir: Path) -> Run | None:
    """The evaluated run folder that the run's ``model`` came from, if it is one (``<run>/model``)."""
    config = run_dir / CONFIG
    model = read_yaml(config).get("model") if config.exists() else None
    if not isinstance(model, str):
        return None
    origin = Path(model)
    origin = origin.parent if origin.name == MODEL_DIR else origin
    if not (origin / HISTORY).exists():
        return None
    evaluation = _evaluation_of(origin)
    return Run(origin.name, BEFORE, run_dir=origin, eval_dir=evaluation) if evaluation else None


def _unique_names(runs: list[Run]) -> None:
    """Runs of the same name from different folders (two demos' ``unlearned``, two methods'
    ``scalability/step-1``) get as many of their parent folders' names as tell them apart."""
    clashing = [r for r in runs if sum(o.name == r.name for o in runs) > 1]
    parents = [(r.run_dir or r.eval_dir).resolve().parent.parts for r in clashing]
    for depth in range(1, max(map(len, parents), default=0) + 1):
        names = ["/".join((*up[-depth:], r.name)) for r, up in zip(clashing, parents)]
        if len(set(names)) == len(names):
            break
    for run, name in zip(clashing, names if clashing else []):
        run.name = name


def _load(run: Run) -> None:
    if run.run_dir is not None and run.role == UNLEARNED:
        if not (run.run_dir / HISTORY).exists():
            raise PaluError(f"{run.run_dir}: no history.json; the run is unfinished. Finish it with --resume "
                            "or leave it out.")
        run.history = _read(run.run_dir / HISTORY, list)
        if not all(isinstance(rec, dict) for rec in run.history):
            raise PaluError(f"{run.run_dir / HISTORY}: expected a list of per-epoch records.")
    if run.eval_dir is not None:
        for name in (SUMMARY, RESULTS):
            if not (run.eval_dir / name).exists():
                raise PaluError(f"{run.eval_dir}: no {name}; the evaluation is unfinished. Run palu eval again "
                                "or leave it out.")
        run.summary = _read(run.eval_dir / SUMMARY, dict)
        run.results = _read(run.eval_dir / RESULTS, dict)
        _check_generations(run.eval_dir / RESULTS, run.results)


def _read(path: Path, kind: type):
    data = read_json(path)
    if not isinstance(data, kind):
        raise PaluError(f"{path}: expected a JSON {'list' if kind is list else 'object'}, not {type(data).__name__}.")
    return data


def _check_generations(path: Path, results: dict) -> None:
    """The one per-item result the report reads (the forget generations), checked here so that a hand-edited
    results.json is named instead of failing deep inside rendering."""
    entry = results.get(GENERATIONS)
    if entry is None:
        return
    by_index = (entry.get("value_by_index") or {}) if isinstance(entry, dict) else None
    if not isinstance(by_index, dict) or not all(re.fullmatch("[0-9]+", index) for index in by_index):
        raise PaluError(f"{path}: '{GENERATIONS}' should be an object whose value_by_index maps item indices to "
                        "values, as palu eval writes it; run palu eval again or fix the file.")
    for index, value in by_index.items():
        spans = (value.get("spans") or []) if isinstance(value, dict) else []
        if not isinstance(spans, list) or not all(map(_is_span, spans)):
            raise PaluError(f"{path}: {GENERATIONS} value_by_index[{index}] spans should be a list of "
                            '{"start": N, "end": M} offsets; fix or remove them.')


def _is_span(span) -> bool:
    pair = [span.get("start"), span.get("end")] if isinstance(span, dict) and set(span) == {"start", "end"} else span
    return isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                             for x in pair)


def forget_items(runs: list[Run]) -> dict[str, QAItem]:
    """Forget items by answer text, for their questions and sensitive spans.

    Read through each unlearned run's config (the spans it unlearned) and each evaluation's config
    (the items its generations answer); an item with spans wins over the same answer without.
    """
    configs = [r.run_dir / CONFIG for r in runs if r.run_dir and r.role == UNLEARNED]
    configs += [r.eval_dir / CONFIG for r in runs if r.eval_dir]
    items: dict[str, QAItem] = {}
    loaded: set[str] = set()
    for path in configs:
        data = read_yaml(path) if path.exists() else {}
        if not isinstance(data.get("forget"), dict):
            continue
        synthetic = data.get("synthetic") or {}
        if not isinstance(synthetic, dict):
            raise PaluError(f"{path}: 'synthetic' should be a mapping of options, not {synthetic!r:.40}.")
        key = json.dumps([data["forget"], synthetic], sort_keys=True)
        if key in loaded:
            continue
        loaded.add(key)
        try:
            source = build(DataSource, data["forget"], "forget")
            found = load_items(source, build(SyntheticConfig, synthetic, "synthetic"))
        except PaluError as exc:
            raise PaluError(f"{path}: cannot load its forget items (for their spans): {exc}") from None
        for item in found:
            if item.answer not in items or (item.spans and not items[item.answer].spans):
                items[item.answer] = item
    return items
