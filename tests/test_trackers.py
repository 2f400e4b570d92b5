"""Experiment trackers: a TensorBoard event file written during `palu unlearn` holds every loss term,
the epoch records (evaluation metrics included) and the config; nothing is written without asking."""

from __future__ import annotations

import pytest
from cli_helpers import unlearn

from palu.train.loop import TrainConfig, hyperparameters

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is not installed (pip install tensorboard)")


def events(run):
    files = sorted((run / "logs").rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run / 'logs'}"
    scalars = {}
    for path in files:
        acc = event_accumulator.EventAccumulator(str(path))
        acc.Reload()
        scalars.update({tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]})
    return scalars


def test_tensorboard_receives_loss_terms_epoch_metrics_and_the_config(saved_model, tmp_path):
    run = tmp_path / "run"
    assert unlearn(saved_model, run, "train.epochs=2", "train.report_to=tensorboard", "train.log_every=1",
                   "eval.forget.limit=2", "eval.retain.limit=2", "eval.max_new_tokens=2") == 0
    scalars = events(run)
    for term in ("loss", "forget", "retain", "ordinary"):  # PALU's terms, at every step
        assert len(scalars[f"train/{term}"]) == 2 * 2, term  # 4 forget items, batch 2, 2 epochs
    assert len(scalars["epoch/loss"]) == 2 and len(scalars["epoch/retain_Q_A_Prob"]) == 2
    history = __import__("json").loads((run / "history.json").read_text())
    assert scalars["epoch/retain_Q_A_Prob"] == pytest.approx([h["retain_Q_A_Prob"] for h in history[1:]])
    assert list((run / "logs").rglob("hparams.yml")), "the config was not stored as hyper-parameters"


def test_nothing_is_written_unless_asked(saved_model, tmp_path):
    assert unlearn(saved_model, tmp_path / "run") == 0
    assert not (tmp_path / "run" / "logs").exists()


def test_hyperparameters_are_the_run_config_flattened(tmp_path):
    (tmp_path / "config.yaml").write_text("model: m\ntrain:\n  lr: 0.001\n  epochs: 3\nmethod: {name: palu, top_k: 5}\n"
                                          "peft: null\nlist: [1, 2]\n")
    flat = hyperparameters(tmp_path, TrainConfig())
    assert flat == {"model": "m", "train.lr": 0.001, "train.epochs": 3, "method.name": "palu", "method.top_k": 5,
                    "peft": "None", "list": "[1, 2]"}
    assert hyperparameters(tmp_path / "none", TrainConfig(lr=2e-5))["lr"] == 2e-5


def test_a_tracker_that_is_not_installed_is_named_with_its_install_command(saved_model, tmp_path, monkeypatch, capsys):
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert unlearn(saved_model, tmp_path / "run", "train.report_to=mlflow") == 2
    err = capsys.readouterr().err
    assert "train.report_to=mlflow needs the mlflow package: pip install mlflow" in err and "Traceback" not in err
