"""PALU's loss scale: does ``forget_scale=reference`` make one setting work in both regimes?

The official forget term is a squared distance between logits, so it grows with the square of the
model's logit scale, and alpha (the weight of everything else) means something different on each
model. The scaled variant divides the term by its value under the reference, so it starts at 1.

In each regime (``--stages scale``, after ``equal``):

- the scaled variant gets the same search as every method of the equal stage (same trials, lr,
  alpha, K and N, same rule), beside the official one's;
- once the other regime has its own selections (its ``scale.json``), each variant's selected
  setting of that regime is run here unchanged (one 5-epoch run, the same rule): the setting that
  transfers is the one that loses least against what this regime's own search found.

Each regime writes ``scale.json`` among its equal-stage records beside the results (so it outlives
the working folder); the table combines both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compare import RULE, Comparison, slug
from equal import EqualSearch
from trials import history

from palu.io import read_json, write_json
from palu.runs import epoch_records
from palu.train.selection import best_epoch

log = logging.getLogger("tofu_mini")
OFFICIAL, SCALED = "palu (GPT-4o spans)", "palu-scaled (GPT-4o spans)"
VARIANTS = {OFFICIAL: {"name": "palu"}, SCALED: {"name": "palu", "forget_scale": "reference"}}
RESULT = "scale.json"


def scale_file(ledger: Path) -> Path:
    """Where a regime's scale stage writes its result (``ledger``: its equal-stage records of one set of
    models)."""
    return ledger / RESULT


def latest_scale(records: Path) -> Path | None:
    """A regime's newest scale result among its records of any models (``records``: its ``trials-N``
    folder): the other regime's models are not built here, so their name is not known."""
    found = sorted(records.glob(f"models-*/{RESULT}"), key=lambda f: f.stat().st_mtime)
    if len(found) > 1:
        log.warning("scale: %d results in %s; the newest, %s, is used", len(found), records, found[-1])
    return found[-1] if found else None


def point(record: dict | None, history: list[dict]) -> dict | None:
    """A selected epoch as forget quality, utility, its settings and the forget term's first-epoch value
    (``history``: its run's training log)."""
    if record is None:
        return None
    first = next((r for r in history if r["epoch"] == 1), {})
    return {"forget_quality": record["forget_quality"], "utility": record["model_utility"],
            "epoch": record["epoch"], "settings": record.get("settings"), "forget_term_epoch_1": first.get("forget")}


def selected_point(entry: dict) -> dict | None:
    """A search's selected epoch (an equal-stage ledger entry) as a :func:`point`."""
    chosen = entry["row"]["selected"]
    if chosen is None:
        return None
    trial = next(t for t in entry["trials"] if t["trial"] == chosen["trial"])
    record = next(r for r in trial["epochs"] if r["epoch"] == chosen["epoch"])
    return point({**record, "settings": chosen["settings"]}, trial["history"])


class ScaleCheck:
    def __init__(self, equal: EqualSearch, other: Path | None):
        self.equal, self.cmp, self.other = equal, equal.cmp, other

    def own(self) -> dict:
        """Each variant's search in this regime (the official one is the equal stage's)."""
        found = {}
        for variant in VARIANTS:
            log.info("scale: search %s", variant)
            found[variant] = selected_point(self.equal.searched(variant, VARIANTS[variant]))
        return found

    def transferred(self, other: dict) -> dict:
        """The other regime's selected setting of each variant, run here unchanged."""
        found = {}
        for variant, chosen in other.items():
            if chosen is None:
                continue
            settings = dict(chosen["settings"])
            lr = settings.pop("lr")
            folder = self.cmp.out / "transfer" / slug(variant)
            log.info("scale: %s with the other regime's setting %s", variant, chosen["settings"])
            run = self.cmp.train(folder, {**VARIANTS[variant], **settings}, self.cmp.forget_source(OFFICIAL), lr)
            start = read_json(self.cmp.start_record())["summary"]
            best = best_epoch([start, *epoch_records(run)], RULE)
            found[variant] = point(best and {**best, "settings": chosen["settings"]}, history(run))
        return found

    def run(self) -> dict:
        result = {"own": self.own()}
        if self.other is not None:
            result["transferred"] = self.transferred(read_json(self.other)["own"])
        else:
            log.info("scale: the other regime has no scale result yet; run its scale stage, then this one again")
        write_json(scale_file(self.equal.ledger), result)
        return result


def scale_table(regimes: dict[str, dict]) -> str:
    """Per regime and variant: the own search's selection and the other regime's setting run here."""
    from tables import cell

    lines = ["| regime | variant | own search: FQ (MU) | other regime's setting here: FQ (MU) | forget term, "
             "epoch 1 | own setting |", "|---|---|---|---|---|---|"]
    show = lambda p: "none kept the floor" if not p else f"{cell(p['forget_quality'])} ({cell(p['utility'])})"
    for regime, result in regimes.items():
        for variant in VARIANTS:
            own, moved = result["own"].get(variant), (result.get("transferred") or {}).get(variant)
            settings = ", ".join(f"{k} {cell(v)}" for k, v in ((own or {}).get("settings") or {}).items())
            lines.append(f"| {regime} | {variant} | {show(own)} | {show(moved) if 'transferred' in result else ''} | "
                         f"{cell((own or {}).get('forget_term_epoch_1'))} | {settings} |")
    return "\n".join(lines)


def check(cmp: Comparison, trials: int, ledger: Path, other: Path | None) -> dict:
    """The scale stage in this regime (``ledger``: its equal-stage records; ``other``: the other regime's
    scale.json, whose settings are run here, or None while it has none)."""
    return ScaleCheck(EqualSearch(cmp, trials, ledger), other).run()
