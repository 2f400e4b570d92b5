"""`palu sweep`: find good unlearning settings in tens of runs, not a grid of thousands.

A multi-objective Optuna study (TPE or NSGA-II) over the learning rate and the method's own knobs
(each method declares them beside its config: PALU's alpha, K and N, NPO's beta, ...; see
:mod:`palu.methods.space`) optimises the selection rule's metric (forget quality by default; a MUSE
metric such as ``forget_verbmem_ROUGE`` under ``unlearn.eval_muse``) and utility together and
returns their Pareto front. Every method is searched the same way, so a comparison can give each the
same budget. Every trial is an ordinary unlearning run evaluated after each epoch; its values are
those of its best epoch under the selection rule (:mod:`palu.train.selection`), or of its last epoch
when no epoch keeps the utility floor. Pruning is per epoch and domain-specific: from the second
epoch on, a trial stops once its utility is below ``prune_below`` times the starting model's and no
higher than at the epoch before. A dip alone is not enough: while the learning rate decays, utility
often climbs back (on TOFU-mini, PALU went from 0.46 to 0.88 of the start). A stopped trial that
kept the floor at an earlier epoch still counts, with that epoch; one that never did is pruned.
Optuna's own pruners do not support several objectives.

The selection rule's utility floor is a constraint of the search (``trial.set_constraint``: the
floor minus the trial's utility, feasible at zero or below), so the sampler spends its trials where
utility is kept, and the front holds only trials that keep it; ``unlearn.select.utility_floor=0``
searches without one. The study lives in ``<output_dir>/study.db``, so an interrupted sweep resumes,
and several workers (the same command started once per GPU) share one study: they draw different
settings and stop once the study holds ``trials`` finished trials (each may finish the one it runs).
A trial left running by a worker that died is marked failed when a sweep starts, and is drawn anew.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from palu.commands import unlearn
from palu.commands.unlearn import run_unlearn
from palu.config import load_config, require
from palu.errors import PaluError
from palu.eval.metrics import get_metric
from palu.io import copy_file, read_json, write_json
from palu.methods import get_method
from palu.methods.space import Knob, search_space, typed_space
from palu.runs import FRONT, START_EVAL, STUDY, Reuse, epoch_path, epoch_records, new_run, run_folder, trial_dir
from palu.train.selection import UTILITY_FALLBACK, best_epoch, share_start, utility_floor

log = logging.getLogger(__name__)

HELP = "search a method's learning rate and own knobs for the forget-quality / utility Pareto front (Optuna)"
RESUMABLE = False  # a sweep folder always resumes: its workers share it


@dataclass
class Config:
    """``palu sweep``: the base unlearning run (``unlearn.*``, with ``unlearn.eval`` or ``unlearn.eval_muse``
    set) and the search.

    Attributes:
        space: bounds ``[low, high]`` or choices ``[a, b, ...]`` replacing the defaults of a searched
            option (``space.lr=[1e-5,5e-5]``, ``space.top_k=[10,50]``); any other option of the
            method may be added as a list of choices (``space.layer=[1,2,3]`` for RMU).
            ``palu sweep --space`` lists each method's knobs with their defaults and sources.
        trials: runs in the study (resumed studies count the finished ones).
        sampler: "tpe" or "nsga2".
        startup_trials: with "tpe", how many trials are drawn at random before TPE models the study
            (Optuna's default, 10); a sweep of no more trials than this is a random search.
        prune_below: stop a trial whose utility is below this fraction of the starting model's and
            not recovering (no higher than at the epoch before).
    """

    unlearn: unlearn.Config = field(default_factory=unlearn.Config)
    space: dict[str, list] = field(default_factory=dict)
    trials: int = 30
    sampler: Literal["tpe", "nsga2"] = "tpe"
    startup_trials: int = 10
    seed: int = 0
    prune_below: float = 0.5
    output_dir: str = "runs/sweep"

    def __post_init__(self) -> None:
        tofu, muse = self.unlearn.eval, self.unlearn.eval_muse
        if muse is None and (tofu is None or not tofu.retain_reference):
            raise PaluError("a sweep scores every epoch: set the evaluation sets and the retain model's results "
                            "(unlearn.eval.forget.path=..., unlearn.eval.retain_reference=RETAIN_RESULTS.json from "
                            "`palu eval` of the retain model), or MUSE's (unlearn.eval_muse.path=...).")
        require(self.trials >= 1, "trials", "at least 1", self.trials)
        require(self.startup_trials >= 1, "startup_trials", "at least 1", self.startup_trials)
        self.space = typed_space(self.unlearn.method, self.space)
        for name, knob in self.knobs().items():  # every bound and choice must make a valid run
            for value in (knob.low, knob.high) if knob.is_range else knob.choices:
                try:
                    self.settings({name: value})
                except PaluError as exc:
                    raise PaluError(f"space.{name}: {value!r} is not a valid setting ({exc})") from None

    def knobs(self) -> dict[str, Knob]:
        """The searched options: the learning rate and the method's knobs, with ``space`` on top."""
        method = self.unlearn.method
        return search_space(get_method(method.name).space, method, self.space)

    def settings(self, values: dict) -> unlearn.Config:
        """The base run with the drawn ``values`` (``lr`` and method options) in place."""
        values = dict(values)
        train = replace(self.unlearn.train, lr=values.pop("lr")) if "lr" in values else self.unlearn.train
        return replace(self.unlearn, method=replace(self.unlearn.method, **values), train=train)


def space_table() -> str:
    """Every method's searched options with their default bounds or choices and their sources."""
    from palu.methods import METHODS

    lines = []
    for name in METHODS.names():
        knobs = search_space(METHODS[name].space, METHODS[name].config(), {})
        lines += [name, *(f"  {knob_name:<15} {knob.describe()}" for knob_name, knob in knobs.items())]
    return "\n".join(lines)


class UtilityCollapsed(Exception):
    """Raised from the epoch hook to end a trial whose utility fell below the pruning floor."""


def utility_of(record: dict, name: str) -> float | None:
    return record.get(name) if record.get(name) is not None else record.get(UTILITY_FALLBACK)


def run_sweep(cfg: Config, overwrite: bool = False, progress: bool = False,
              allow_config_change: bool = False, after_trial: Callable | None = None) -> list[dict]:
    """Run (or resume) the study; returns the Pareto-optimal trials, also written to ``pareto.json``.

    A sweep folder resumes without ``--resume`` (workers share it); its config may change only in
    ``trials``, unless ``allow_config_change``. ``after_trial(study, trial)`` is called as each trial of
    this worker ends (an Optuna callback), e.g. to copy its results somewhere that outlives the folder."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate TPE
    reuse = Reuse(overwrite, resume=True, allow_config_change=allow_config_change)
    with run_folder(cfg.output_dir, "sweep", cfg, reuse, shared=True, ignore=("trials",)) as out:
        unlearn.check_inputs(cfg.unlearn)  # before the study: a bad path leaves a new folder as it was
        return _search(cfg, out, progress, after_trial)


def _search(cfg: Config, out: Path, progress: bool, after_trial: Callable | None) -> list[dict]:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    rule = cfg.unlearn.select
    study = optuna.create_study(study_name="palu", storage=f"sqlite:///{out / STUDY}", load_if_exists=True,
                                directions=[direction(rule.metric), "maximize"])
    study.sampler = _sampler(cfg.sampler, cfg.seed + len(study.trials), cfg.startup_trials)
    utility = rule.utility

    knobs = cfg.knobs()

    def objective(trial) -> tuple[float, float]:
        trial.set_user_attr("worker", worker_id())
        run = trial_dir(out, trial.number)
        start_trial(run, out / START_EVAL)
        drawn = {name: knob.suggest(trial, name) for name, knob in knobs.items()}
        run_cfg = replace(cfg.settings(drawn), output_dir=str(run))
        try:
            run_unlearn(run_cfg, resume=True, progress=progress, stop=lambda records: _prune(records, utility,
                                                                                             cfg.prune_below))
            pruned = False
        except UtilityCollapsed:
            pruned = True
        finally:
            if not (out / START_EVAL).is_file() and epoch_path(run, 0).is_file():
                copy_file(epoch_path(run, 0), out / START_EVAL)
        records = epoch_records(run)
        kept = best_epoch(records, rule)
        chosen = kept or records[-1]
        name, floor = utility_floor(records, rule)
        forgetting, kept_utility = chosen.get(rule.metric), chosen.get(name)
        if forgetting is None or kept_utility is None:
            raise PaluError(f"trial {trial.number}: the evaluation gives no {rule.metric} or utility; "
                            "set unlearn.eval.retain_reference.")
        trial.set_user_attr("epoch", chosen["epoch"])
        trial.set_constraint("utility_floor", 0.0 if floor is None else floor - kept_utility)
        if pruned:
            trial.set_user_attr("stopped_after", records[-1]["epoch"])
            if kept is None:
                raise optuna.TrialPruned()
        return forgetting, kept_utility

    fail_abandoned(study)
    done = (TrialState.COMPLETE, TrialState.PRUNED)  # a failed trial is drawn anew when the sweep resumes
    remaining = cfg.trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:  # other workers on the same study count too: stop once the study holds enough trials
        study.optimize(objective, n_trials=remaining, catch=(),
                       callbacks=[MaxTrialsCallback(cfg.trials, states=done), *([after_trial] if after_trial else [])])
    sign = 1 if direction(rule.metric) == "maximize" else -1
    front = [{"trial": t.number, "epoch": t.user_attrs.get("epoch"), rule.metric: t.values[0],
              "utility": t.values[1], **t.params} for t in sorted(study.best_trials, key=lambda t: -sign * t.values[0])]
    write_json(out / FRONT, front)
    return front


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_abandoned(study) -> None:
    """Mark failed the trials a worker of this machine left running when it died (killed, or the
    session ended): they count as neither finished nor in progress, so the study draws them anew and
    the sampler stops avoiding their settings. Trials of live workers or of other machines stay."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = t.user_attrs.get("worker", "").rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL)
            log.warning("trial %d was left running by process %s, which is gone: marked failed, drawn anew",
                        t.number, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sampler(name: str, seed: int, startup_trials: int):
    """The study's sampler, seeded by the sweep's seed plus the trials the study already holds: a
    resumed sweep stays reproducible, and workers started on one study (one ``palu sweep`` per
    GPU, same output folder) do not draw the same settings. TPE's constant liar keeps a worker
    from proposing what another is running."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=startup_trials)
    return optuna.samplers.NSGAIISampler(seed=seed)


def start_trial(run: Path, start: Path) -> None:
    """An empty trial folder holding the starting model's evaluation when an earlier trial made it.

    Every trial starts from the same model and is scored on the same sets, so that evaluation is
    done once per study, not once per trial. A trial folder left by an interrupted sweep belongs
    to a trial Optuna will not resume, so it is cleared.
    """
    if run.exists():
        shutil.rmtree(run)
    new_run(run, "unlearn")
    if start.is_file():
        share_start(run, start)


def collapsed(records: list[dict], utility: str, fraction: float) -> bool:
    """Is the last epoch's utility under ``fraction`` of the start's and no higher than the epoch
    before? Judged from the second epoch on: the first always falls from the start."""
    if len(records) < 3:
        return False
    base, before, now = (utility_of(r, utility) for r in (records[0], records[-2], records[-1]))
    return None not in (base, before, now) and now < fraction * base and now <= before


def _prune(records: list[dict], utility: str, fraction: float) -> None:
    if collapsed(records, utility, fraction):
        raise UtilityCollapsed


def finished_trials(out: str | Path) -> list[tuple[int, Path, dict]]:
    """The study's finished trials (complete or pruned, not failed) as (number, folder, settings)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{Path(out) / STUDY}")
    return [(t.number, trial_dir(out, t.number), t.params)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if trial_dir(out, t.number).is_dir()]


def selected(out: str | Path, rule) -> dict | None:
    """The study's selected model: over every epoch of every finished trial, the one ``rule`` picks (the
    same rule as within one run), with its trial's folder and settings; None when no epoch keeps the floor."""
    start = read_json(Path(out) / START_EVAL)["summary"]
    records = [{**r, "trial": number, "run": str(run), "settings": settings}
               for number, run, settings in finished_trials(out)
               for r in epoch_records(run) if r["epoch"] > 0]
    return best_epoch([start, *records], rule)


def direction(metric: str) -> str:
    """Optuna's direction for a selection metric, from the metric registry."""
    return "maximize" if get_metric(metric).higher_is_better else "minimize"


def pareto_table(front: list[dict], metric: str = "forget_quality") -> str:
    """The Pareto front as a plain-text table, best ``metric`` first, with each trial's settings."""
    names = list(dict.fromkeys(k for r in front for k in r if k not in ("trial", "epoch", metric, "utility")))
    show = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    header = (f"{'trial':>5}  {'epoch':>5}  {metric.replace('_', ' '):>14}  {'utility':>8}"
              + "".join(f"  {n:>9}" for n in names))
    rows = [f"{r['trial']:>5}  {r['epoch']:>5}  {r[metric]:>14.4g}  {r['utility']:>8.4f}"
            + "".join(f"  {show(r.get(n, '')):>9}" for n in names) for r in front]
    return "\n".join([header, *rows])


def arguments(parser) -> None:
    parser.add_argument("--space", action="store_true", help="list each method's searched options and exit")


def main(args) -> str:
    if args.space:
        return space_table()
    # `method=npo` / `method.beta=...` address the base run's method, as in `palu unlearn`
    args.overrides = [f"unlearn.{o}" if o.startswith(("method=", "method.")) else o for o in args.overrides]
    cfg = load_config(Config, args.config, args.overrides)
    front = run_sweep(cfg, args.overwrite, not args.quiet, args.allow_config_change)
    table = pareto_table(front, cfg.unlearn.select.metric)
    return f"{table}\n\nthe study and every trial are in {Path(cfg.output_dir).resolve()}"
