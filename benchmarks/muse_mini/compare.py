"""The comparison: PALU (spans from the rules and from the contrast annotator) and every baseline
that trains on documents, each tuned by the same search and selected by the same rule, on request 1.

Tuning: one ``palu sweep`` per method, ``trials`` trials each (the learning rate and the method's
own knobs, ``palu sweep --space``; RMU also searches its steered block among 1-3), every trial
``epochs`` epochs, batch 8, one warm-up epoch, linear decay, with MUSE's suite after every epoch.
Selection (for the sweep's objective and for the row): among all epochs of all trials whose C4
utility (retain KnowMem) stays at or above 0.95 of the target model's, the lowest C1 (VerbMem);
the earliest epoch breaks ties. IdkDPO is left out: it pairs each forget answer with a refusal to
its question, and documents have no question.

The selected epoch's record holds every MUSE metric (C1-C4): the per-epoch evaluation completes the
record of each epoch that becomes its trial's best.
"""

from __future__ import annotations

import logging
from pathlib import Path

from protocol import MAX_LENGTH, Protocol

from palu.annotate import annotate
from palu.commands.annotate import write_spans
from palu.commands.sweep import Config as SweepConfig
from palu.commands.sweep import run_sweep, selected
from palu.commands.unlearn import Config as UnlearnConfig
from palu.data.loaders import DataSource, load_qa
from palu.methods import configure
from palu.train.loop import TrainConfig
from palu.train.selection import SelectionRule

log = logging.getLogger("muse_mini")
RULE = SelectionRule(metric="forget_verbmem_ROUGE", utility="retain_knowmem_ROUGE", utility_floor=0.95)
METHODS = {  # row name -> (method, spans it reads)
    "palu (rules spans)": ("palu", "rules"),
    "palu (contrast spans)": ("palu", "contrast"),
    **{name: (name, None) for name in ("ga", "graddiff", "npo", "simnpo", "rmu", "wga", "pdu")},
    "tpo (rules spans)": ("tpo", "rules"),
}
EXTRA_SPACE = {"rmu": {"layer": [1, 2, 3]}}


def slug(name: str) -> str:
    return name.replace(" (", "-").replace(" spans)", "").replace(" ", "-")


class Comparison:
    def __init__(self, protocol: Protocol, trials: int, epochs: int):
        self.p, self.trials, self.epochs = protocol, trials, epochs
        self.out = protocol.workdir / "compare"

    def forget(self, method: str, request: str) -> DataSource:
        """``request``'s documents, with the spans the method reads (annotated once, cached)."""
        kind = METHODS[method][1]
        if kind is None:
            return self.p.source(request)
        path = self.p.workdir / "spans" / f"{request}_{kind}.jsonl"
        if not path.is_file():
            options = {"model": str(self.p.model("target"))} if kind == "contrast" else {}
            items, report = annotate(load_qa(self.p.source(request)), kind, **options)
            log.info("spans (%s, %s): %s", kind, request, report.summary().splitlines()[0])
            write_spans(path, items)
        return DataSource(str(path), kind="text")

    def base(self, method: str, forget: DataSource, scope: str = "r1") -> UnlearnConfig:
        return UnlearnConfig(model=str(self.p.model("target")), forget=forget, retain=self.p.source("retain"),
                             method=configure({"name": METHODS[method][0]}), eval_muse=self.p.muse_sets(scope),
                             select=RULE, train=TrainConfig(epochs=self.epochs, batch_size=8, warmup_epochs=1,
                                                            max_length=MAX_LENGTH))

    def sweep_dir(self, method: str) -> Path:
        return self.out / slug(method)

    def select(self, method: str) -> dict | None:
        """The method's sweep (run or resumed) and its selected epoch over every trial."""
        name = METHODS[method][0]
        cfg = SweepConfig(unlearn=self.base(method, self.forget(method, "request-1")), trials=self.trials,
                          space=EXTRA_SPACE.get(name, {}), output_dir=str(self.sweep_dir(method)))
        run_sweep(cfg)
        return selected(cfg.output_dir, RULE)

    def run_all(self, references: dict) -> dict:
        table = {name: {"eval": summary} for name, summary in references.items()}
        for method in METHODS:
            log.info("compare: %s", method)
            best = self.select(method)
            table[method] = {"selected": best, "eval": best}
        return table
