"""`palu sweep`: trials are ordinary evaluated runs, the front is Pareto-optimal, studies resume."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import optuna
import pytest
from cli_helpers import one_line_error
from test_cli import TINY

import palu.commands.sweep
from palu.cli import main
from palu.commands.sweep import Config as SweepConfig
from palu.commands.sweep import collapsed, pareto_table, run_sweep, selected, space_table
from palu.config import load_config
from palu.errors import PaluError
from palu.methods import METHODS
from palu.methods.space import search_space
from palu.runs import epoch_records
from palu.train.selection import SelectionRule


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "demo"
    assert main(["demo", f"output_dir={out}", *TINY]) == 0
    return out


def sweep_args(demo, out, trials, *extra):
    return ["sweep", f"output_dir={out}", f"trials={trials}", f"unlearn.model={demo / 'full' / 'model'}",
            f"unlearn.eval.retain_reference={demo / 'eval-retain' / 'results.json'}", "unlearn.eval.retain.limit=3",
            "unlearn.eval.max_new_tokens=4", "unlearn.train.epochs=2", "unlearn.train.batch_size=4",
            "unlearn.train.max_length=128", *(f"unlearn.{o}" for o in TINY[:3]), "--quiet", *extra]


def dominated(a, b):
    return b["forget_quality"] >= a["forget_quality"] and b["utility"] >= a["utility"] and b != a


def test_sweep_finds_a_pareto_front_and_resumes(demo, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(sweep_args(demo, out, 3, "prune_below=0")) == 0
    front = json.loads((out / "pareto.json").read_text())
    assert front and all(not any(dominated(a, b) for b in front) for a in front)
    for row in front:
        assert 1e-4 <= row["lr"] <= 3e-3 and row["top_k"] in (1, 10, 50, 1000) and row["epoch"] in (1, 2)
        assert (out / f"trial-{row['trial']:03d}" / "eval" / "epoch-0.json").exists()
    assert "forget quality" in capsys.readouterr().out
    start = json.loads((out / "start-eval.json").read_text())  # the starting model, evaluated once
    start["summary"]["marker"] = "shared"
    (out / "start-eval.json").write_text(json.dumps(start))
    assert main(sweep_args(demo, out, 4, "prune_below=0")) == 0  # one more trial, not four
    assert len(list(out.glob("trial-*"))) == 4
    assert json.loads((out / "trial-003" / "eval" / "epoch-0.json").read_text())["summary"]["marker"] == "shared"
    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{out / 'study.db'}")
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # resuming draws no trial twice


@pytest.mark.parametrize("floor", [0.0, 2.0])
def test_trials_that_lose_utility_stop_and_count_only_with_a_kept_epoch(demo, tmp_path, monkeypatch, floor):
    out = tmp_path / "p"
    monkeypatch.setattr(palu.commands.sweep, "collapsed", lambda *_: True)  # the rule itself is tested below
    assert main(sweep_args(demo, out, 2, f"unlearn.select.utility_floor={floor}")) == 0
    assert not (out / "trial-000" / "eval" / "epoch-2.json").exists()  # stopped after the first epoch
    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{out / 'study.db'}")
    assert all(t.user_attrs["stopped_after"] == 1 for t in study.trials)
    front = json.loads((out / "pareto.json").read_text())
    if floor == 0:  # epoch 1 kept the floor: the trial counts with it
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2 and front
    else:
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2 and front == []


def test_a_callback_sees_each_trial_of_this_worker_as_it_ends(demo, tmp_path):
    out, seen = tmp_path / "cb", []
    cfg = load_config(SweepConfig, None, [a for a in sweep_args(demo, out, 2, "prune_below=0")[1:] if a != "--quiet"])
    run_sweep(cfg, after_trial=lambda study, trial: seen.append(
        (trial.number, trial.state.name, len(study.trials), len(epoch_records(out / f"trial-{trial.number:03d}")))))
    assert seen == [(0, "COMPLETE", 1, 3), (1, "COMPLETE", 2, 3)]  # epochs 0-2 evaluated before the call


def test_a_worker_stops_when_the_shared_study_is_full(demo, tmp_path, monkeypatch):
    out, real = tmp_path / "w", palu.commands.sweep.run_unlearn

    def with_another_worker(cfg, **kwargs):  # another worker finishes a trial while this one runs
        real(cfg, **kwargs)
        study = optuna.load_study(study_name="palu", storage=f"sqlite:///{out / 'study.db'}")
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))

    monkeypatch.setattr(palu.commands.sweep, "run_unlearn", with_another_worker)
    assert main(sweep_args(demo, out, 3, "prune_below=0")) == 0
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-000", "trial-002"]  # 2 here + 2 there >= 3


@pytest.mark.parametrize("bad, words", [("unlearn.model=/nonexistent/model", "no such folder"),
                                         ("unlearn.forget.path=/nonexistent/forget.json", "/nonexistent/forget.json"),
                                         ("unlearn.eval.retain_reference=/nonexistent/r.json", "/nonexistent/r.json")])
def test_a_bad_input_stops_the_sweep_before_it_writes_anything(demo, tmp_path, capsys, bad, words):
    out = tmp_path / "bad"
    assert main([*sweep_args(demo, out, 2), bad]) == 2
    one_line_error(capsys, words)
    assert not out.exists()


def test_tpe_models_the_study_after_the_random_start_the_user_sets(demo, tmp_path, monkeypatch):
    """With startup_trials=1 the second trial comes from TPE's model, not from its random start."""
    modelled = []
    real = optuna.samplers.TPESampler._sample  # TPE's model of the study, past the random start

    def recording(self, study, trial, search_space):
        modelled.append(trial.number)
        return real(self, study, trial, search_space)

    monkeypatch.setattr(optuna.samplers.TPESampler, "_sample", recording)
    assert main(sweep_args(demo, tmp_path / "t", 2, "prune_below=0", "startup_trials=1")) == 0
    assert 1 in modelled and 0 not in modelled


def test_a_trial_left_running_by_a_dead_worker_is_drawn_anew(demo, tmp_path):
    """A killed worker leaves its trial RUNNING; a resumed sweep fails it and runs another in its place,
    while a live worker's trial and another machine's are left alone."""
    out = tmp_path / "d"
    assert main(sweep_args(demo, out, 1, "prune_below=0")) == 0
    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{out / 'study.db'}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    workers = {"dead": f"{socket.gethostname()}:{dead.pid}", "live": palu.commands.sweep.worker_id(),
               "elsewhere": "another-host:1"}
    for name, worker in workers.items():
        trial = study.ask()
        trial.set_user_attr("worker", worker)
    assert main(sweep_args(demo, out, 2, "prune_below=0")) == 0
    states = {t.user_attrs["worker"]: t.state for t in study.get_trials()[1:4]}
    assert states == {workers["dead"]: optuna.trial.TrialState.FAIL, workers["live"]: optuna.trial.TrialState.RUNNING,
                      workers["elsewhere"]: optuna.trial.TrialState.RUNNING}
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert [t.number for t in finished] == [0, 4]  # the failed one did not count toward trials=2


@pytest.mark.parametrize("floor", [0.0, 2.0])
def test_the_utility_floor_constrains_the_search_and_the_front(demo, tmp_path, floor):
    out = tmp_path / "f"
    assert main(sweep_args(demo, out, 3, "prune_below=0", f"unlearn.select.utility_floor={floor}")) == 0
    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{out / 'study.db'}")
    start = json.loads((out / "start-eval.json").read_text())["summary"]["retain_Q_A_Prob"]  # no utility sets
    for t in study.trials:  # the constraint is the floor minus the trial's utility
        assert t.constraints["utility_floor"] == pytest.approx(floor * start - t.values[1])
    front = json.loads((out / "pareto.json").read_text())
    assert len(front) > 0 if floor == 0 else front == []  # no trial keeps twice the start's utility


@pytest.mark.parametrize("utilities, pruned", [
    ([0.9, 0.8, 0.7], False),  # falling, above the floor
    ([0.9, 0.3], False),  # the first epoch's dip alone
    ([0.9, 0.3, 0.2], True),  # under the floor and falling
    ([0.9, 0.3, 0.4], False),  # under the floor but recovering
    ([0.9, 0.3, 0.3], True),  # under the floor and stalled
    ([0.9], False),  # the starting model alone
])
def test_a_trial_is_pruned_only_when_utility_is_low_and_not_recovering(utilities, pruned):
    records = [{"epoch": i, "model_utility": u} for i, u in enumerate(utilities)]
    assert collapsed(records, "model_utility", 0.5) is pruned


def test_a_sweep_needs_per_epoch_evaluation():
    with pytest.raises(PaluError, match="unlearn.eval"):
        load_config(SweepConfig, None, [])


@pytest.mark.parametrize("name", list(METHODS.names()))
def test_every_method_declares_a_space_of_valid_settings_with_sources(name):
    """Each declared knob is an option of the method; each bound and choice makes a valid run config."""
    method = METHODS[name]
    options = method.config()
    knobs = search_space(method.space, options, {})
    assert "lr" in knobs and all(k.source for k in knobs.values())
    for knob_name, knob in method.space.items():
        assert hasattr(options, knob_name)
        for value in (knob.low, knob.high) if knob.is_range else knob.choices:
            assert getattr(type(options)(**{knob_name: value}), knob_name) == value
    assert name in space_table()


def test_drawn_settings_stay_in_the_declared_and_given_space():
    cfg = load_config(SweepConfig, None, ["unlearn.model=x", "unlearn.eval.retain_reference=r.json",
                                          "unlearn.method=rmu", "space.layer=[1, 2]", "space.lr=[1e-5, 2e-5]"])
    knobs = cfg.knobs()
    assert set(knobs) == {"lr", "steering_coeff", "layer"}
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        run = cfg.settings({name: knob.suggest(trial, name) for name, knob in knobs.items()})
        assert 1e-5 <= run.train.lr <= 2e-5 and run.method.layer in (1, 2) and 1 <= run.method.steering_coeff <= 50
        assert run.method.name == "rmu" and run.model == "x"
    assert cfg.space == {"layer": [1, 2], "lr": [1e-5, 2e-5]}  # typed: saved and compared on resume as numbers


def test_a_sweep_of_another_method_searches_its_own_knobs(demo, tmp_path, capsys):
    out = tmp_path / "npo"
    assert main(sweep_args(demo, out, 2, "prune_below=0", "method=npo", "space.beta=[0.2, 0.4]")) == 0
    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{out / 'study.db'}")
    for t in study.trials:
        assert set(t.params) == {"lr", "beta"} and 0.2 <= t.params["beta"] <= 0.4
        saved = (out / f"trial-{t.number:03d}" / "config.yaml").read_text()
        assert "name: npo" in saved and f"beta: {t.params['beta']}" in saved
    assert "beta" in capsys.readouterr().out.splitlines()[0]  # the printed front shows the knobs searched
    rule = SelectionRule(utility_floor=0.0)
    chosen = selected(out, rule)
    every = [(r["forget_quality"], -r["epoch"], -t.number) for t in study.trials  # ties: earliest epoch, trial
             for r in epoch_records(out / f"trial-{t.number:03d}") if r["epoch"] > 0]
    best = max(every)
    assert (chosen["forget_quality"], -chosen["epoch"], -chosen["trial"]) == best
    assert chosen["settings"] == study.trials[chosen["trial"]].params and chosen["run"].endswith(f"{-best[2]:03d}")


def test_the_front_table_shows_each_method_s_settings():
    table = pareto_table([{"trial": 3, "epoch": 2, "forget_quality": 0.5, "utility": 0.9, "lr": 3e-4, "beta": 0.25}])
    assert table.split("\n")[0].split()[-2:] == ["lr", "beta"] and "0.0003" in table and "0.25" in table
