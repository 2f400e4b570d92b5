"""Evaluation after every unlearning epoch, and the rule that picks the best epoch.

The rule (the usual one in the unlearning literature, made explicit): among the epochs whose
utility stays at or above ``utility_floor`` times the starting model's, take the one with the best
``metric`` (its direction comes from the metric registry); ties go to the earliest epoch. Utility
is ``model_utility`` when the evaluation has the sets for it, else ``retain_Q_A_Prob``.
The best epoch's model is saved in ``<run>/best/`` beside the last one, with ``best.json``.

After every epoch only what the rule reads is computed by default (``eval.every_epoch=selection``):
its metric and utility. The rest of the suite (forget ROUGE, fluency, the MIAs, lm-eval tasks the
rule does not read) runs on the starting model and on each epoch that becomes the best so far, so
the selected epoch's record is as complete as the starting model's, with the same values the whole
suite gives, at a fraction of the cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from palu.errors import PaluError
from palu.eval.core import summary
from palu.eval.metrics import get_metric
from palu.eval.suites import Suite
from palu.io import copy_file, read_json, write_json
from palu.runs import BEST_DIR, BEST_RECORD, epoch_path, epoch_records, save_model

log = logging.getLogger(__name__)
UTILITY_FALLBACK = "retain_Q_A_Prob"


@dataclass
class SelectionRule:
    """How the best epoch is chosen.

    Attributes:
        metric: the metric to optimise (default: forget quality).
        utility: the utility metric that must not fall (falls back to retain_Q_A_Prob when absent).
        utility_floor: the fraction of the starting model's utility an epoch must keep.
    """

    metric: str = "forget_quality"
    utility: str = "model_utility"
    utility_floor: float = 0.95


def utility_floor(records: list[dict], rule: SelectionRule) -> tuple[str, float | None]:
    """The utility metric the rule judges ``records`` by, and the least value an epoch must keep
    (None without a starting-model record to scale it by)."""
    start = next((r for r in records if r["epoch"] == 0), None)
    utility = rule.utility if start is not None and start.get(rule.utility) is not None else UTILITY_FALLBACK
    floor = rule.utility_floor * start[utility] if start is not None and start.get(utility) is not None else None
    return utility, floor


def best_epoch(records: list[dict], rule: SelectionRule) -> dict | None:
    """The selected record among ``records`` (per-epoch summaries; epoch 0 is the starting model)."""
    utility, floor = utility_floor(records, rule)
    candidates = [r for r in records if r["epoch"] > 0 and r.get(rule.metric) is not None
                  and (floor is None or (r.get(utility) is not None and r[utility] >= floor))]
    if not candidates:
        return None
    sign = 1 if get_metric(rule.metric).higher_is_better else -1
    return max(candidates, key=lambda r: (sign * r[rule.metric], -r["epoch"]))


def share_start(run: Path, start: Path) -> None:
    """Give ``run`` the evaluation ``start`` of its starting model as epoch 0 unless it has one, so
    runs from one model on the same sets evaluate that model once between them."""
    target = epoch_path(run, 0)
    if not target.is_file():
        copy_file(start, target)


class EpochEvaluator:
    """The hook the training loop calls after each epoch: evaluate, record, keep the best model.

    Per-epoch results go to ``<run>/eval/epoch-<n>.json``; a resumed run reads them back, so the
    selection sees every epoch. ``stop(records)`` may raise to end training early (a sweep's pruning).
    ``every_epoch``: "selection" computes after each epoch only what the rule reads, and the rest
    when the epoch becomes the best so far; "all" computes the whole suite after every epoch.
    """

    def __init__(self, suite: Suite, tokenizer, run: Path, rule: SelectionRule,
                 stop: Callable[[list[dict]], None] | None = None, every_epoch: str = "selection"):
        self.suite, self.tokenizer, self.stop, self.every_epoch = suite, tokenizer, stop, every_epoch
        self.run, self.rule = Path(run), rule
        self.records = epoch_records(self.run)

    def _write(self, epoch: int, results: dict) -> dict:
        record = {"epoch": epoch, **summary(results)}
        write_json(epoch_path(self.run, epoch), {"summary": record, "results": results})
        self.records = [r for r in self.records if r["epoch"] != epoch] + [record]
        self.records.sort(key=lambda r: r["epoch"])
        return record

    def evaluate(self, epoch: int, model) -> dict:
        done = next((r for r in self.records if r["epoch"] == epoch), None)
        if done is not None:
            return done
        lean = epoch > 0 and self.every_epoch == "selection"
        record = self._write(epoch, self.suite(model, {self.rule.metric, self.rule.utility, UTILITY_FALLBACK}
                                               if lean else None))
        if epoch == 0 and self.rule.metric not in record:
            shown = ", ".join(sorted(k for k in record if k != "epoch"))
            raise PaluError(f"select.metric={self.rule.metric} is not among the metrics of this evaluation ({shown}); "
                            "set select.metric (and select.utility) to metrics it has.")
        return record

    def complete(self, epoch: int, model) -> dict:
        """``epoch``'s record with the metrics the starting model has and it lacks computed on ``model``."""
        record = next(r for r in self.records if r["epoch"] == epoch)
        start = next((r for r in self.records if r["epoch"] == 0), None)
        missing = None if start is None else set(start) - set(record)
        if missing == set():
            return record
        results = read_json(epoch_path(self.run, epoch))["results"]
        results.update(self.suite(model, missing))
        return self._write(epoch, results)

    def __call__(self, epoch: int, model) -> dict:
        record = self.evaluate(epoch, model)
        best = best_epoch(self.records, self.rule)
        if best is not None and best["epoch"] == epoch:
            best = record = self.complete(epoch, model)
            save_model(self.run / BEST_DIR, model, self.tokenizer)  # a PEFT model saves its adapter
            write_json(self.run / BEST_RECORD, {"rule": vars(self.rule), **best})
            log.info("epoch %d is the best so far by %s; saved to %s", epoch, self.rule.metric, self.run / BEST_DIR)
        if self.stop is not None:
            self.stop(self.records)
        return {k: v for k, v in record.items() if k != "epoch"}
