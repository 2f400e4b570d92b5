"""`palu plan`: the memory estimate against hand-computed numbers, and the command, from a config only."""

from __future__ import annotations

from dataclasses import replace

import huggingface_hub.constants
import pytest
from cli_helpers import one_line_error
from transformers import LlamaConfig, T5Config

from palu.adapters import AdapterConfig
from palu.cli import main
from palu.methods import METHODS
from palu.plan import GIB, METHOD_PASSES, Setting, estimate, fitting_changes, model_shape
from palu.train.loop import TrainConfig

SMALL = LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                    num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and an empty hub cache of the test's own."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_the_shape_is_read_from_the_config():
    shape = model_shape(SMALL, AdapterConfig(r=8))
    layer_linear = 4 * 64 * 64 + 3 * 64 * 128  # q, k, v, o; gate, up, down
    assert shape.linear == 2 * layer_linear
    assert shape.params == 2 * 1000 * 64 + 2 * layer_linear + 2 * 2 * 64 + 64  # embeddings, head, layers, norms
    assert (shape.vocab, shape.hidden, shape.layers, shape.intermediate, shape.largest) == (1000, 64, 2, 128, 64000)
    assert shape.lora == 2 * 8 * (4 * (64 + 64) + 3 * (64 + 128))  # r (in + out) for every linear layer
    assert model_shape(SMALL, AdapterConfig(target_modules=["q_proj"])).lora == 2 * 8 * (64 + 64)


def test_the_estimate_matches_the_formula_by_hand():
    shape = model_shape(SMALL)
    setting = Setting(TrainConfig(batch_size=2, max_length=16, dtype="bfloat16"))
    params, tokens = 210240, 32
    weights, head = params * 2, 1000 * 64
    layer = 24 * 64 + 8 * 128 + 2 * 16  # bytes a layer keeps per token with bf16 weights
    forget_pass = tokens * 2 * layer  # two layers; PALU's forget term holds no output-layer gradient
    retain_pass = forget_pass + 4 * head  # and the one fused call's float32 gradient (ordinary and retain terms)
    reference = head * 2 + tokens * 64 * 2  # frozen output layer, the batch's reference states
    forward = forget_pass + retain_pass + 2 * tokens * 1000 * 4  # both passes, and a chunk's two buffers (32 rows)
    backward = forget_pass + max(retain_pass, weights) + 4 * head  # retain pass freed while gradients fill in
    e = estimate(shape, setting)
    assert (e.weights, e.gradients, e.optimizer, e.reference) == (weights, weights, 2 * weights, reference)
    assert (e.activations, e.update) == (forget_pass + retain_pass, weights)
    assert e.peak == weights + 2 * weights + reference + max(forward, backward, 2 * weights)
    assert e.total == e.peak + GIB

    second = estimate(shape, setting, second_model=True)
    forget, retain = tokens * 2 * layer + 20 * tokens * 1000, tokens * 2 * layer + 8 * tokens * 1000
    assert second.reference == weights
    assert second.peak == weights + 2 * weights + weights + max(forget + retain, forget + max(retain, weights) + 4 * head)


def test_each_option_moves_the_part_it_should():
    shape = model_shape(LlamaConfig(**LLAMA_8B))
    base = Setting(TrainConfig(batch_size=8, max_length=512))
    e = estimate(shape, base)
    assert e.weights == 8030261248 * 4
    assert estimate(shape, Setting(TrainConfig(dtype="bfloat16"))).weights == e.weights // 2
    checkpointed = estimate(shape, Setting(TrainConfig(gradient_checkpointing=True)))
    assert checkpointed.activations < e.activations / 8 and checkpointed.weights == e.weights
    lora = estimate(shape, Setting(base.train, lora=True))
    assert lora.gradients < e.gradients / 100 and lora.reference < e.reference
    sharded = estimate(shape, Setting(base.train, processes=4, sharding="full_shard"))
    gathered = 2 * shape.linear // 32 + 128256 * 4096  # two decoder layers and the output layer, whole
    assert sharded.weights == e.weights // 4 + gathered * 4 and sharded.optimizer == e.optimizer // 4
    assert sharded.gradients == e.gradients // 4 + 128256 * 4096 * 4  # and the output layer's whole gradient
    assert estimate(shape, base, second_model=True).peak > e.peak + 29 * GIB  # a second model, and its logits


def test_fitting_changes_are_the_fewest_that_fit():
    shape = model_shape(LlamaConfig(**LLAMA_8B))
    setting = Setting(TrainConfig(batch_size=8, max_length=512))
    assert fitting_changes(shape, setting, 40 * GIB) == ["train.gradient_checkpointing=true", "peft=lora"]
    fitted = Setting(replace(setting.train, gradient_checkpointing=True), lora=True)
    assert 35 * GIB < estimate(shape, fitted).total <= 40 * GIB  # float32 weights, and little room left
    assert fitting_changes(shape, setting, 30 * GIB) == ["train.gradient_checkpointing=true", "train.dtype=bfloat16",
                                                         "peft=lora"]
    assert fitting_changes(shape, setting, 1000 * GIB) == []
    assert fitting_changes(shape, setting, 10 * GIB) is None


def test_every_method_has_its_passes():
    assert set(METHOD_PASSES) == set(METHODS.names())


def test_plan_of_a_config_folder_prints_the_table(tmp_path, capsys):
    SMALL.save_pretrained(tmp_path / "m")
    assert main(["plan", f"model={tmp_path / 'm'}", "train.batch_size=2", "memory=2"]) == 0
    out = capsys.readouterr().out
    for row in ("weights", "gradients", "optimizer states", "reference", "activations", "peak per device", "total"):
        assert row in out
    assert "palu  second model" in out and ": 0.2M parameters" in out
    assert "On a 2 GiB device: palu fits. The second-model structure fits." in out
    assert not any((tmp_path / "m").glob("*.safetensors"))  # no run folder, no weights


def test_plan_of_a_cached_hub_id_works_offline(offline, capsys):
    snapshot = offline / "models--palu-tests--small" / "snapshots" / "0123abc"
    SMALL.save_pretrained(snapshot)
    (offline / "models--palu-tests--small" / "refs").mkdir()
    (offline / "models--palu-tests--small" / "refs" / "main").write_text("0123abc")
    assert main(["plan", "model=palu-tests/small", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("palu-tests/small: 0.2M parameters (2 layers, hidden 64, MLP 128, vocabulary 1,000)")
    assert "CUDA runtime" not in out


def test_plan_of_an_uncached_hub_id_offline_is_one_line(offline, capsys):
    assert main(["plan", "model=palu-tests/not-cached"]) == 2
    one_line_error(capsys, "cannot load the model config 'palu-tests/not-cached'", "cached files")


@pytest.mark.parametrize("args,words", [
    (["processes=0"], "processes must be at least 1, not 0"),
    (["memory=-40"], "memory must be a positive number of GiB"),
    (["sharding=zero3"], "sharding must be one of no_shard, shard_grad_op, full_shard, not 'zero3'"),
    (["device=tpu"], "device must be one of cuda, cpu"),
    (["train.dtype=float16"], "train.dtype must be one of float32, bfloat16, not 'float16'"),
    (["train.dtype=bfloat16", "train.bf16=false"], "train.bf16=false cannot hold"),
    (["method=forgetall"], "valid methods: palu"),
    (["peft=lora", "peft.target_modules=[wq]"], "peft.target_modules=['wq'] names no linear layer"),
])
def test_bad_plan_options_are_one_line(args, words, tmp_path, capsys):
    SMALL.save_pretrained(tmp_path / "m")
    assert main(["plan", f"model={tmp_path / 'm'}", *args]) == 2
    one_line_error(capsys, words)


@pytest.mark.parametrize("model,words", [
    ("", "no model given"),
    ("./no/such/folder", "no such folder"),
    ("{tmp}", "no config.json"),
    ("{tmp}/t5", "describes no causal language model"),
])
def test_a_missing_or_wrong_model_is_one_line(model, words, tmp_path, capsys):
    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")  # sequence to sequence
    assert main(["plan", f"model={model.format(tmp=tmp_path)}"]) == 2
    one_line_error(capsys, words)
