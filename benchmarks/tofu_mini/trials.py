"""A sweep's trials as plain records, and a sweep folder rebuilt from them.

A method's search of the equal stage takes about an hour on one core, longer than what is left of
many sittings, and a machine may not keep its cache. Each trial is therefore recorded as it ends
(Optuna's fields, the per-epoch evaluation summaries and the training log; not the models nor the
per-item values), and a search whose folder is gone is rebuilt from the records: the study holds
the recorded trials, so TPE goes on from them and the search runs only the trials still missing.
The models of recorded trials are not kept; the selected one is trained again (see ``equal.py``).
"""

from __future__ import annotations

from pathlib import Path

from palu.io import copy_file, read_json, write_json
from palu.runs import HISTORY, START_EVAL, STUDY, epoch_path, epoch_records, new_run, trial_dir

ENDED = ("COMPLETE", "PRUNED", "FAIL")  # a running trial is not recorded: it is drawn anew


def history(run: Path) -> list[dict]:
    """A run's training log, per epoch (none when it stopped before it wrote one)."""
    return read_json(run / HISTORY) if (run / HISTORY).is_file() else []


def load_study(out: Path):
    import optuna

    return optuna.load_study(study_name="palu", storage=f"sqlite:///{out / STUDY}")


def snapshot(study, out: Path) -> list[dict]:
    """Every ended trial of ``study`` (whose folder is ``out``), in order, as JSON-ready records."""
    from optuna.distributions import distribution_to_json

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ENDED:
            continue
        run = trial_dir(out, t.number)
        kept = t.state.name != "FAIL" and run.is_dir()
        rows.append({"trial": t.number, "state": t.state.name, "settings": t.params,
                     "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
                     "values": t.values, "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
                     "epochs": epoch_records(run) if kept else [], "history": history(run) if kept else []})
    return rows


def restore(out: Path, rows: list[dict], directions: list[str], start: Path) -> None:
    """A sweep folder at ``out`` holding the recorded trials: the study (same numbers, states, values
    and constraints) and each trial's folder with its per-epoch summaries and training log."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState, create_trial

    new_run(out, "sweep")
    copy_file(start, out / START_EVAL)
    study = optuna.create_study(study_name="palu", storage=f"sqlite:///{out / STUDY}", directions=directions)
    for row in rows:
        if row["trial"] != len(study.trials):
            raise ValueError(f"trial records out of order: {row['trial']} after {len(study.trials) - 1}")
        state = TrialState[row["state"]]
        study.add_trial(create_trial(
            state=state, params=row["settings"], values=row["values"] if state == TrialState.COMPLETE else None,
            distributions={k: json_to_distribution(d) for k, d in row["distributions"].items()},
            user_attrs=row["user_attrs"], system_attrs=row["system_attrs"]))
        if state != TrialState.FAIL:
            run = new_run(trial_dir(out, row["trial"]), "unlearn")
            for record in row["epochs"]:
                write_json(epoch_path(run, record["epoch"]), {"summary": record, "results": None})
            if row["history"]:
                write_json(run / HISTORY, row["history"])
