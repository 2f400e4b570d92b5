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

The stage takes longer than a machine may keep its cache, so each method's search is also
recorded beside the results (``ledger``): every trial as it ends (``trials.py``), and once the
search is done its plane points and table row, in a folder named by the SHA-256 of the models'
weights. A later call on the same weights (a machine that rebuilds the models bit for bit)
reuses the finished searches, goes on with an unfinished one from its recorded trials, and trains
the selected trial again when its model is gone, checking that every epoch comes out the same.
Models rebuilt with other arithmetic (another CPU or torch) start a folder of their own, so a
table never mixes searches on different models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

from compare import METHODS, RULE, Comparison, slug
from search import pareto
from trials import load_study, restore, snapshot

from palu.commands.sweep import Config as SweepConfig
from palu.commands.sweep import direction, finished_trials, run_sweep, selected
from palu.commands.unlearn import Config as UnlearnConfig
from palu.commands.unlearn import run_unlearn
from palu.io import copy_file, read_json, write_json
from palu.methods import configure
from palu.runs import BEST_DIR, START_EVAL, epoch_records, new_run
from palu.train.selection import best_epoch, utility_floor

log = logging.getLogger("tofu_mini")
LR_RANGE = [1e-4, 3e-3]
EXTRA_SPACE = {"rmu": {"layer": [1, 2, 3]}}  # the steered block of the 4-block model
# A trial trained again on another CPU matches its record only to float rounding: the same weights
# evaluated there sum in another order (the start's utility moved by 4e-10 between two EPYCs).
ROUNDING = 1e-6


def records(ledger: Path, trials: int) -> Path:
    """The folder of a ledger's records of searches of ``trials`` trials."""
    return ledger / f"trials-{trials}"


def models_id(fingerprint: dict[str, str]) -> str:
    """A short name for a set of model weights (``Protocol.fingerprint``)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def difference(recorded: dict[int, dict], replayed: list[dict]) -> float:
    """The largest relative difference between the recorded epochs' selection values (forget quality
    and utility) and those of the same epochs trained again; infinite when an epoch is missing."""
    again, (utility, _) = {r["epoch"]: r for r in replayed}, utility_floor(replayed, RULE)
    largest = 0.0
    for epoch, record in recorded.items():
        for key in (RULE.metric, utility):
            value = again.get(epoch, {}).get(key)
            if value is None:
                return math.inf
            largest = max(largest, abs(value - record[key]) / max(abs(record[key]), 1e-300))
    return largest


class Replayed(Exception):
    """Ends a replayed trial after the last epoch its record holds (the sweep had pruned it there)."""


class EqualSearch:
    def __init__(self, cmp: Comparison, trials: int, ledger: Path | None = None):
        self.cmp, self.trials = cmp, trials
        self.startup = max(1, trials // 2)  # half drawn at random, half guided by TPE's model of the study
        self.out = cmp.out / f"equal-{trials}"
        self.models = cmp.p.fingerprint()  # hashed once: it reads every model's weights
        self.ledger = records(ledger, trials) / f"models-{models_id(self.models)}" if ledger else None

    def config(self, method: str, options: dict | None = None) -> SweepConfig:
        """The method's search; ``options`` fix other method options (a variant)."""
        cmp = self.cmp
        options = options or {"name": METHODS[method]["name"]}
        name = options["name"]
        base = UnlearnConfig(model=str(cmp.p.model("full")), forget=cmp.forget_source(method), retain=cmp.p.retain_set,
                             method=configure(options), eval=cmp.epoch_sets(), select=RULE,
                             train=cmp.unlearn_train())
        return SweepConfig(unlearn=base, space={"lr": LR_RANGE, **EXTRA_SPACE.get(name, {})}, trials=self.trials,
                           startup_trials=self.startup, output_dir=str(self.out / slug(method)))

    def sweep(self, method: str, options: dict | None = None) -> Path:
        """The method's search (cached and resumable, each trial recorded as it ends; a search whose
        folder is gone goes on from its recorded trials)."""
        cfg, start = self.config(method, options), self.cmp.start_record()
        out, partial = Path(cfg.output_dir), self.entry(method)
        if not out.exists() and partial and partial["trials"]:
            log.info("equal search: %s goes on from its %d recorded trials", method, len(partial["trials"]))
            if partial.get("start") not in (None, read_json(start)["summary"]):
                log.warning("equal search: %s's trials were recorded from another start record than %s", method,
                            start)
            restore(out, partial["trials"], [direction(RULE.metric), "maximize"], start)
        elif not (out / START_EVAL).is_file():  # every search starts from the one start record
            copy_file(start, new_run(out, "sweep") / START_EVAL)
        run_sweep(cfg, after_trial=lambda study, trial: self.record(method, snapshot(study, out),
                                                                    start=read_json(out / START_EVAL)["summary"]))
        return out

    def replay(self, method: str, options: dict | None, best: dict) -> tuple[Path, dict]:
        """Train the selected trial again when its model is gone (it was recorded in another sitting),
        up to the last epoch its record holds; says whether every epoch's values came out the same."""
        cfg, trial = self.config(method, options), Path(best["run"])
        recorded = {r["epoch"]: r for r in epoch_records(trial) if r["epoch"] > 0}
        run = trial.parent / f"replay-{best['trial']:03d}"
        self.cmp.start_run(run)

        def stop(records: list[dict]) -> None:
            if records[-1]["epoch"] >= max(recorded):
                raise Replayed

        log.info("equal search: %s, trial %d trained again for its model", method, best["trial"])
        try:
            run_unlearn(replace(cfg.settings(best["settings"]), output_dir=str(run)), resume=True, progress=False,
                        stop=stop)
        except Replayed:
            pass
        largest = difference(recorded, epoch_records(run))
        if largest > ROUNDING:
            log.warning("equal search: %s, trial %d trained again gives other values than recorded (by %.1e)",
                        method, best["trial"], largest)
        return run, {"trial": best["trial"], "same_values": largest <= ROUNDING, "largest_difference": largest}

    def points(self, method: str, folder: Path) -> list[dict]:
        """Each finished trial's selected epoch (or none when no epoch kept the floor) as a plane point."""
        start = read_json(folder / "start-eval.json")["summary"]
        utility, _ = utility_floor([start], RULE)
        points = []
        for _, run, _ in finished_trials(folder):
            best = best_epoch([start, *epoch_records(run)], RULE)
            if best is not None:
                points.append({"method": method, "trial": run.name, "epoch": best["epoch"],
                               "forget_quality": best["forget_quality"], "utility": best[utility]})
        return points

    def entry(self, method: str) -> dict | None:
        """The method's record in the ledger, finished or not (None when there is none)."""
        path = self.ledger / f"{slug(method)}.json" if self.ledger else None
        if path is None or not path.is_file():
            return None
        entry = read_json(path)
        if entry["models"] != self.models:
            raise SystemExit(f"{path}: {method} was searched on other models than those in {self.cmp.p.workdir} "
                             f"(weights {entry['models']}, here {self.models}); the folder's name "
                             "should say which. Move the file to the folder of its models.")
        return entry

    def recorded(self, method: str) -> dict | None:
        """The method's finished search as recorded in the ledger (None when it is not finished)."""
        entry = self.entry(method)
        if entry is None or "row" not in entry:
            return None
        log.info("equal search: %s recorded in %s", method, self.ledger)
        return entry

    def record(self, method: str, trials: list[dict], **finished) -> dict:
        """The method's ledger entry: its trials so far and their start record's summary, and once
        finished its plane points and row."""
        entry = {"method": method, "models": self.models, "startup": self.startup, "trials": trials,
                 **finished}
        if self.ledger:
            write_json(self.ledger / f"{slug(method)}.json", entry)
        return entry

    def search(self, method: str, options: dict | None = None) -> dict:
        """The method's search (``options``: as in :meth:`config`), its selected model evaluated fully
        and attacked, as a ledger entry."""
        folder = self.sweep(method, options)
        best = selected(folder, RULE)
        row = {"selected": None}
        if best is not None:
            run, chosen = Path(best["run"]), {}
            if not (run / BEST_DIR).is_dir():
                run, chosen["replayed"] = self.replay(method, options, best)
            row = {"selected": {"run": str(run.relative_to(self.cmp.out)), "trial": best["trial"],
                                "lr": best["settings"]["lr"], "epoch": best["epoch"], "settings": best["settings"],
                                **chosen},
                   **self.cmp.final(method, run, best, tag=f"equal-{self.trials}-")}
        start = read_json(folder / START_EVAL)["summary"]
        return self.record(method, snapshot(load_study(folder), folder), start=start,
                           points=self.points(method, folder), row=row)

    def searched(self, method: str, options: dict | None = None) -> dict:
        """The method's ledger entry, searching first unless a finished search was recorded."""
        return self.recorded(method) or self.search(method, options)

    def run_all(self, methods: list[str] | None = None, search: bool = True) -> dict:
        """Every method's search (or only ``methods``: workers on two cores split the list, and a last
        call without it gathers every finished search into the table). With ``search`` false only the
        searches finished so far join the table, and the others are listed as ``unsearched``: a
        partial result while the stage runs over several sittings."""
        table, plane, unsearched = self.cmp.references(), [], []
        for other in sorted(self.ledger.parent.glob("models-*")) if self.ledger else []:
            if other != self.ledger:
                log.info("equal search: %d searches in %s ran on other models (rebuilt elsewhere); not used here",
                         len(list(other.glob("*.json"))), other)
        for method in methods or METHODS:
            log.info("equal search: %s", method)
            entry = self.searched(method) if search else self.recorded(method)
            if entry is None:
                unsearched.append(method)
                continue
            table[method], plane = entry["row"], plane + entry["points"]
            write_json(self.out / "comparison.json", {"table": table, "front": pareto(plane), "plane": plane})
        result = {"table": table, "front": pareto(plane), "plane": plane, "trials": self.trials,
                  "startup": self.startup, "unsearched": unsearched}
        write_json(self.out / "comparison.json", result)
        return result

