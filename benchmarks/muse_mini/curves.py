"""C5 scalability and C6 sustainability of each method at its selected setting (``palu curve``).

Each method unlearns with the learning rate and knobs of its selected trial, for as many epochs as
its selected epoch (the schedule then decays over those epochs), and is scored on all four requests'
evaluation sets (``eval-all``) after each step:

- C5: nested forget sets (request 1, requests 1-2, 1-3, 1-4), each unlearned from the target model;
- C6: the four requests one after another, each from the model the previous one left.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from compare import METHODS, Comparison, slug

from palu.commands.curve import Config as CurveConfig
from palu.commands.curve import run_curve
from palu.commands.muse import Config as MuseConfig
from palu.commands.unlearn import Config as UnlearnConfig
from palu.config import load_config
from palu.data.loaders import DataSource
from palu.io import write_text

PROPERTIES = ("scalability", "sustainability")


class Curves:
    def __init__(self, cmp: Comparison):
        self.cmp, self.p = cmp, cmp.p
        self.out = cmp.p.workdir / "curves"

    def nested(self, method: str, size: int) -> DataSource:
        """Requests 1..size in one file, with the method's spans."""
        kind = METHODS[method][1] or "plain"
        path = self.p.workdir / "spans" / f"requests-1-{size}_{kind}.jsonl"
        if not path.is_file():
            parts = [Path(self.cmp.forget(method, r).path).read_text() for r in self.p.requests[:size]]
            write_text(path, "".join(parts))
        return DataSource(str(path), kind="text")

    def forgets(self, method: str, prop: str) -> list[DataSource]:
        if prop == "sustainability":
            return [self.cmp.forget(method, r) for r in self.p.requests]
        return [self.nested(method, size) for size in range(1, len(self.p.requests) + 1)]

    def run(self, method: str, prop: str, best: dict) -> dict:
        """The curve of ``method`` at its selected trial (``best``), run or resumed; curve.json's content."""
        trial = load_config(UnlearnConfig, str(Path(best["run"]) / "config.yaml"), [])
        unlearn = replace(trial, eval_muse=None, train=replace(trial.train, epochs=best["epoch"]))
        folder = self.out / slug(method) / prop
        cfg = CurveConfig(property=prop, forgets=self.forgets(method, prop), unlearn=unlearn,
                          muse=MuseConfig(**vars(self.p.muse_sets("all"))), output_dir=str(folder))
        run_curve(cfg, resume=True, progress=False)
        return json.loads((folder / "curve.json").read_text())

    def run_all(self, table: dict, methods: list[str]) -> dict:
        return {method: {prop: self.run(method, prop, table[method]["selected"]) for prop in PROPERTIES}
                for method in methods if (table.get(method) or {}).get("selected")}
