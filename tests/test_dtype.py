"""train.dtype: float32 master weights (bf16 only under autocast), or every weight, gradient and AdamW
state in bf16, as the official PALU code trains."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import unlearn
from safetensors import safe_open

from palu.data.prompts import PromptConfig
from palu.data.synthetic import synthetic_splits
from palu.errors import PaluError
from palu.methods.palu import PaluConfig
from palu.models import load_model, train_bpe_tokenizer
from palu.train.loop import TrainConfig, mixed_precision
from palu.train.unlearn import unlearn as unlearn_items


def stored_dtypes(folder) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_tensor(name).dtype for name in f.keys()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_run_trains_and_saves_in_its_dtype(dtype, saved_model, tmp_path):
    out = tmp_path / dtype
    assert unlearn(saved_model, out, f"train.dtype={dtype}", "train.epochs=2", "train.lr=1e-2") == 0
    history = json.loads((out / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert history[0]["loss"] != history[1]["loss"]
    assert stored_dtypes(out / "model") == {getattr(torch, dtype)}
    trained, start = load_model(str(out / "model")), load_model(str(saved_model), dtype)
    assert trained.dtype == getattr(torch, dtype)
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters())]
    assert all(changed), "every weight trains, none is stuck under bf16's precision"


@pytest.fixture(scope="module")
def data():
    splits = synthetic_splits(n_authors=4, forget_authors=1, holdout_authors=1, seed=3)
    texts = [t for it in splits.retain + splits.forget for t in (it.question, it.answer)]
    return splits, train_bpe_tokenizer(texts, vocab_size=600)


def bf16_run(model, tok, splits, out, **kw):
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=4, warmup_epochs=0, max_length=96, dtype="bfloat16")
    return unlearn_items(model, tok, splits.forget[:8], splits.retain[:8], "palu", PaluConfig(), cfg, PromptConfig(),
                         out, progress=False, **kw)


def test_a_float32_model_given_for_bf16_training_is_cast_and_resumes_to_the_same_weights(data, tiny_model, tmp_path):
    splits, tok = data
    whole = tiny_model(tok)
    bf16_run(whole, tok, splits, tmp_path / "a")
    assert {p.dtype for p in whole.parameters()} == {torch.bfloat16}

    def stop_after_two(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bf16_run(tiny_model(tok), tok, splits, tmp_path / "b", on_epoch_end=stop_after_two)
    resumed = tiny_model(tok)
    history = bf16_run(resumed, tok, splits, tmp_path / "b", resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), whole.parameters()))


def test_bf16_weights_always_autocast_and_refuse_float32_computation():
    assert mixed_precision(TrainConfig(dtype="bfloat16")) == "bf16"  # auto, on any device
    assert mixed_precision(TrainConfig(bf16="false")) == "no"
    assert TrainConfig().dtype == "float32"
    with pytest.raises(PaluError, match="train.dtype=bfloat16 computes in bf16, so train.bf16=false"):
        TrainConfig(dtype="bfloat16", bf16="false")
