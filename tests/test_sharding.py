"""Sharded training in one process: the shipped configs as accelerate reads them, the output layer of a ZeRO-3
model gathered and partitioned again (with a fake of DeepSpeed's parameters, which CI does not install), a whole
model left as it is, and the reference passes every process must run together. tests/test_distributed.py
trains with real sharding on two processes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

import palu.train.reference as reference
from palu.data.labels import encode
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.methods.head import Head
from palu.sharding import apply_accelerate_config, full_state_dict, is_sharded, release

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"


def test_the_shipped_configs_shard_every_weight():
    """accelerate reads FSDP2 with full sharding from the one, ZeRO-3 from the other; neither fixes the
    accumulation steps or the clipping, which then come from palu's train section."""
    fsdp = load_config_from_file(str(CONFIGS / "fsdp_full_shard.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    zero3 = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml"))
    assert zero3.distributed_type == DistributedType.DEEPSPEED and zero3.deepspeed_config["zero_stage"] == 3
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & zero3.deepspeed_config.keys()


def test_fsdp1_on_cpu_processes_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    accelerator = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, state=SimpleNamespace(),
                                  mixed_precision="no")
    with pytest.raises(PaluError, match="fsdp_version: 2"):
        apply_accelerate_config(accelerator)


def zero3(weight: torch.Tensor, external: bool = False) -> torch.nn.Parameter:
    """A parameter as ZeRO-3 leaves it between uses, its data empty, with the methods DeepSpeed gives it."""
    p = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # frozen, as under a LoRA adapter
    p.ds_id, p.ds_full, p.is_external_param = 0, weight.detach().clone(), external

    def all_gather(param_list):
        for q in param_list:
            if q.numel() == 0:
                q.data = q.ds_full.clone()

    def partition(param_list):
        for q in param_list:
            q.data = torch.empty(0)

    p.all_gather, p.partition = all_gather, partition
    return p


def test_a_zero3_output_layer_is_gathered_until_release(tiny_model):
    model = tiny_model(vocab_size=64)
    full = model.lm_head.weight.detach().clone()
    model.lm_head.weight = zero3(full)
    head = Head.of(model)
    assert is_sharded(model) and head.gathered and torch.equal(head.weight, full)
    assert model.lm_head.weight.is_external_param  # DeepSpeed's module hooks leave an external parameter gathered
    frozen = head.frozen_copy()
    release(model)
    assert model.lm_head.weight.numel() == 0 and not model.lm_head.weight.is_external_param
    assert torch.equal(frozen.weight, full)  # a copy, though nothing trains the layer: the gathered numbers are gone


def test_release_leaves_what_deepspeed_itself_keeps_gathered(tiny_model):
    model = tiny_model(vocab_size=64)
    model.lm_head.weight = zero3(model.lm_head.weight, external=True)
    Head.of(model)
    release(model)
    assert model.lm_head.weight.is_external_param and model.lm_head.weight.numel() > 0


def test_a_whole_model_is_read_in_place(tiny_model):
    model = tiny_model(vocab_size=64).requires_grad_(False)
    head = Head.of(model)
    assert head.weight is model.lm_head.weight and not head.gathered
    assert head.frozen_copy().weight.data_ptr() == model.lm_head.weight.data_ptr()  # nothing can change it
    assert not is_sharded(model) and full_state_dict(model) is None  # save_pretrained saves its own weights


def test_every_process_runs_as_many_reference_passes(bpe_tokenizer, tiny_model, monkeypatch):
    """A sharded model gathers its layers with every process taking part, so the second of two processes,
    with 2 of 5 examples, runs a spare pass to match the first's 3 examples in batches of 2; it keeps the
    states of its own examples only, equal to those of one process doing all."""
    model = tiny_model(bpe_tokenizer).eval()
    items = [QAItem(f"Question {i}?" + " more" * i, "An answer.") for i in range(5)]
    examples = [encode(bpe_tokenizer, it, PromptConfig(), 64) for it in items]
    alone = reference.reference_hidden(model, examples, bpe_tokenizer.pad_token_id, batch_size=2)
    monkeypatch.setattr(reference, "process_state", lambda: SimpleNamespace(
        process_index=1, num_processes=2, is_main_process=False, device=torch.device("cpu")))
    monkeypatch.setattr(reference, "gather_object", lambda computed: computed)  # this process's share only
    passes = []
    model.register_forward_pre_hook(lambda *_: passes.append(1))
    second = reference.reference_hidden(model, examples, bpe_tokenizer.pad_token_id, batch_size=2)
    assert len(passes) == 2
    assert [i for i, states in enumerate(second) if states is not None] == [1, 3]
    for i in (1, 3):
        torch.testing.assert_close(second[i], alone[i])
