"""A diverging run stops with a message naming the epoch and step, keeps its last good checkpoint and
is never marked finished; a full disk while checkpointing says so, and --resume then continues."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from cli_helpers import one_line_error, unlearn
from safetensors.torch import load_file

from palu.data.labels import collate, encode_all
from palu.data.prompts import PromptConfig
from palu.data.synthetic import synthetic_splits
from palu.errors import PaluError
from palu.train.finetune import nll_step
from palu.train.loop import CHECKPOINT, EpochData, TrainConfig, train


def test_an_exploding_learning_rate_stops_the_run_unfinished(saved_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert unlearn(saved_model, out, "train.lr=1e30", "train.epochs=3", "train.warmup_epochs=0") == 2
    one_line_error(capsys, "training diverged at epoch", "step", "Lower train.lr")
    assert not (out / "DONE").exists() and not (out / "model").exists()


def test_a_huge_weight_stops_at_the_first_step_with_nothing_saved(saved_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert unlearn(saved_model, out, "method.alpha=1e38", "train.epochs=1") == 2
    one_line_error(capsys, "epoch 1, step 1: the loss is inf", "nothing was saved")
    assert not (out / "DONE").exists() and not (out / CHECKPOINT).exists()


@pytest.fixture()
def setup(bpe_tokenizer, tiny_model):
    splits = synthetic_splits(n_authors=3, forget_authors=1, holdout_authors=1, seed=3)
    enc = encode_all(bpe_tokenizer, splits.retain[:8], PromptConfig(), 256)
    data = EpochData(len(enc), lambda i, epoch: enc[i], 0)
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=4, warmup_epochs=0, schedule="constant", bf16="false")

    def model():
        return tiny_model(bpe_tokenizer)

    return data, lambda rows: collate(rows, bpe_tokenizer.pad_token_id), cfg, model


def test_a_non_finite_loss_keeps_the_last_good_checkpoint(setup, tmp_path):
    data, collate_fn, cfg, model = setup
    one = model()
    train(one, data, collate_fn, nll_step, TrainConfig(**{**vars(cfg), "epochs": 1}), tmp_path / "one", progress=False)

    def nan_in_epoch_two(m, batch):
        losses = nll_step(m, batch)
        return {"loss": losses["loss"] * float("nan")} if data.epoch == 1 else losses

    with pytest.raises(PaluError, match=r"epoch 2, step 1: the loss is nan.*checkpoint after epoch 1 is kept"):
        train(model(), data, collate_fn, nan_in_epoch_two, cfg, tmp_path / "two", progress=False)
    kept = load_file(tmp_path / "two" / CHECKPOINT / "model.safetensors")
    for name, value in one.state_dict().items():
        assert torch.equal(kept[name], value), name  # the checkpoint holds the weights after epoch 1


def test_a_non_finite_gradient_stops_before_the_update(setup, tmp_path):
    data, collate_fn, cfg, model = setup
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def nan_gradient(m, batch):
        x = next(m.parameters()).sum() * 0.0
        return {"loss": nll_step(m, batch)["loss"] + torch.sqrt(x * x)}  # finite loss, 0/0 gradient

    with pytest.raises(PaluError, match="epoch 1, step 1: the gradient norm is nan"):
        train(m, data, collate_fn, nan_gradient, cfg, tmp_path / "run", progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                     RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_while_checkpointing_says_so_and_resume_continues(failure, saved_model, tmp_path, monkeypatch,
                                                                      capsys):
    assert unlearn(saved_model, tmp_path / "straight", "train.epochs=2") == 0
    from accelerate import Accelerator

    save_state, calls = Accelerator.save_state, []

    def full_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise failure
        return save_state(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_on_second)
    assert unlearn(saved_model, tmp_path / "run", "train.epochs=2") == 2
    one_line_error(capsys, "disk", "full", "--resume")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "DONE").exists()
    assert unlearn(saved_model, tmp_path / "run", "train.epochs=2", "--resume") == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model" / "model.safetensors").read_bytes()


def test_a_full_disk_while_saving_the_model_says_so_and_resume_finishes(saved_model, tmp_path, monkeypatch, capsys):
    assert unlearn(saved_model, tmp_path / "straight", "train.epochs=1") == 0
    from transformers import PreTrainedModel

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    assert unlearn(saved_model, tmp_path / "run", "train.epochs=1") == 2
    one_line_error(capsys, "the disk is full", "--resume")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "DONE").exists() and (tmp_path / "run" / CHECKPOINT).exists()
    assert unlearn(saved_model, tmp_path / "run", "train.epochs=1", "--resume") == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model" / "model.safetensors").read_bytes()
