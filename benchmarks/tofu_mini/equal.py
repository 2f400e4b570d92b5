"""Equal search: every method tuned by the same `palu sweep` with the same number of trials.

Each method searches the learning rate (1e-4 to 3e-3, the comparison's range) and its own knobs
(``palu sweep --space``: PALU's alpha, K and N, NPO's beta, SimNPO's beta and delta, RMU's steering
coefficient and block, WGA's beta, PDU's bound, TPO's beta, GradDiff's retain weight; GA has
none), with the 95% utility floor as the search's constraint, 5 epochs per trial and the
comparison's per-epoch evaluation. The first half of the trials are TPE's random start and the
second half are drawn from its model of the study (Optuna's default start of 10 would leave a
budget of 8 a pure random search, which missed every learning rate GA survives in a first try).
The method's row is the selected epoch over all its trials (the same rule as everywhere),
evaluated fully and attacked as in the comparison. Every trial's
selected epoch joins one forget-quality / utility plane, whose Pareto front says which methods
are not beaten on both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compare import METHODS, RULE, Comparison, slug
from search import pareto

from palu.commands.sweep import Config as SweepConfig
from palu.commands.sweep import finished_trials, run_sweep, selected
from palu.commands.unlearn import Config as UnlearnConfig
from palu.io import read_json, write_json
from palu.methods import configure
from palu.runs import epoch_records
from palu.train.loop import TrainConfig
from palu.train.selection import best_epoch

log = logging.getLogger("tofu_mini")
LR_RANGE = [1e-4, 3e-3]
EXTRA_SPACE = {"rmu": {"layer": [1, 2, 3]}}  # the steered block of the 4-block model


class EqualSearch:
    def __init__(self, cmp: Comparison, trials: int):
        self.cmp, self.trials = cmp, trials
        self.startup = max(1, trials // 2)  # half drawn at random, half guided by TPE's model of the study
        self.out = cmp.out / f"equal-{trials}"

    def sweep(self, method: str, options: dict | None = None) -> Path:
        """The method's search (cached, resumable); ``options`` fix other method options (a variant)."""
        cmp = self.cmp
        options = options or {"name": METHODS[method]["name"]}
        name = options["name"]
        base = UnlearnConfig(model=str(cmp.p.model("full")), forget=cmp.forget_source(method), retain=cmp.p.retain_set,
                             method=configure(options), eval=cmp.epoch_sets(), select=RULE,
                             train=TrainConfig(epochs=cmp.epochs, batch_size=8, warmup_epochs=1, max_length=256))
        cfg = SweepConfig(unlearn=base, space={"lr": LR_RANGE, **EXTRA_SPACE.get(name, {})}, trials=self.trials,
                          startup_trials=self.startup, output_dir=str(self.out / slug(method)))
        run_sweep(cfg)
        return Path(cfg.output_dir)

    def points(self, method: str, folder: Path) -> list[dict]:
        """Each finished trial's selected epoch (or none when no epoch kept the floor) as a plane point."""
        start = read_json(folder / "start-eval.json")["summary"]
        points = []
        for _, run, _ in finished_trials(folder):
            best = best_epoch([start, *epoch_records(run)], RULE)
            if best is not None:
                points.append({"method": method, "trial": run.name, "epoch": best["epoch"],
                               "forget_quality": best["forget_quality"], "utility": best["model_utility"]})
        return points

    def run_all(self, methods: list[str] | None = None) -> dict:
        """Every method's search (or only ``methods``: workers on two cores split the list, and a last
        call without it gathers every finished search into the table)."""
        table, plane = self.cmp.references(), []
        for method in methods or METHODS:
            log.info("equal search: %s", method)
            folder = self.sweep(method)
            plane += self.points(method, folder)
            best = selected(folder, RULE)
            if best is None:
                table[method] = {"selected": None}
                continue
            run = Path(best["run"])
            table[method] = {"selected": {"run": str(run.relative_to(self.cmp.out)), "lr": best["settings"]["lr"],
                                          "epoch": best["epoch"], "settings": best["settings"]},
                             **self.cmp.final(method, run, best, tag=f"equal-{self.trials}-")}
            write_json(self.out / "comparison.json", {"table": table, "front": pareto(plane), "plane": plane})
        result = {"table": table, "front": pareto(plane), "plane": plane, "trials": self.trials,
                  "startup": self.startup}
        write_json(self.out / "comparison.json", result)
        return result

