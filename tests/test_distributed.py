"""Two CPU processes (gloo) reach the same weights as one process with the same effective batch: with plain
data parallel, with every weight sharded by FSDP2 and by DeepSpeed ZeRO-3 (each launched with the shipped
accelerate config, as a user would), for fine-tuning and every unlearning method."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from palu.data.synthetic import synthetic_splits
from palu.methods.common import METHODS
from palu.models import tiny_llama, train_bpe_tokenizer

WORKER = Path(__file__).with_name("distributed_worker.py")
CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
EVERY = ("finetune", *METHODS.names())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(start: Path, out: Path, processes: int, batch_size: int, grad_accum: int = 1, methods=("palu",),
        config: str | None = None) -> dict[str, dict]:
    """Each method's final weights, from the model saved in ``start``. One process runs plainly; two run under
    torchrun, or under ``accelerate launch --config_file examples/accelerate/<config>``, whose worker then
    checks that every weight really is sharded during training."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [str(WORKER), str(start), str(out), str(batch_size), str(grad_accum), "sharded" if config else "whole",
            *methods]
    if config:
        launch = ["-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                  f"--num_processes={processes}", "--mixed_precision=no", f"--main_process_port={free_port()}"]
    elif processes > 1:
        launch = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                  f"--master_port={free_port()}"]
    else:
        launch = []
    done = subprocess.run([sys.executable, *launch, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = {}
    for method in methods:
        weights[method] = torch.load(out / method / "weights.pt")
        saved = load_file(out / method / "model" / "model.safetensors")  # written once, whole, with every rank calling
        assert saved.keys() == weights[method].keys()
        assert all(torch.equal(saved[k], v) for k, v in weights[method].items())
    return weights


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A tiny Llama with a tokenizer trained on the synthetic data, saved as a model folder."""
    splits = synthetic_splits(n_authors=4, forget_authors=1, holdout_authors=1, seed=11)
    tok = train_bpe_tokenizer([t for it in splits.retain + splits.forget for t in (it.question, it.answer)], 500)
    folder = tmp_path_factory.mktemp("start")
    tiny_llama(len(tok), hidden=32, layers=1, heads=2, tokenizer=tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one(start, tmp_path_factory) -> dict[str, dict]:
    """One process, 4 examples a step, 2 accumulation steps: the effective batch of 2 processes x 4."""
    return run(start, tmp_path_factory.mktemp("one"), processes=1, batch_size=4, grad_accum=2, methods=EVERY)


def test_two_processes_match_one_with_the_same_effective_batch(start, tmp_path, one):
    """2 processes x 4 examples average two per-process means, exactly as 1 process x 4 x 2 accumulation
    steps does; tolerance 1e-5 covers float summation order."""
    two = run(start, tmp_path / "two", processes=2, batch_size=4)
    assert max_diff(one["palu"], two["palu"]) < 1e-5
    other = run(start, tmp_path / "big", processes=1, batch_size=8)  # a different batching visibly differs
    assert max_diff(other["palu"], two["palu"]) > 1e-3


def test_rmu_with_its_defaults_runs_on_two_processes(start, tmp_path):
    """RMU's loss reads block ``layer``'s output, so the later parameters (here the head) get no gradient; plain data parallel refuses parameters that get none, so RMU trains only those its loss
    reaches. The blocks end where one process with the same effective batch does (1e-4: Adam amplifies
    summation-order noise); the embeddings are left out, since rows that only padding reaches get a gradient
    of rounding noise that Adam turns into a full step of either sign."""
    two = run(start, tmp_path / "two", processes=2, batch_size=4, methods=("rmu:default",))["rmu:default"]
    one = run(start, tmp_path / "one", processes=1, batch_size=4, grad_accum=2, methods=("rmu:default",))["rmu:default"]
    before = load_file(start / "model.safetensors")
    assert torch.equal(two["lm_head.weight"], before["lm_head.weight"])  # no hidden state reads the head
    blocks = {k: v for k, v in two.items() if k.startswith("model.layers.")}
    assert any(not torch.equal(v, before[k]) for k, v in blocks.items())
    assert max_diff(blocks, one) < 1e-4


@pytest.mark.parametrize("config", [
    "fsdp_full_shard.yaml",
    pytest.param("deepspeed_zero3.yaml", marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                                                  reason="DeepSpeed is not installed")),
])
def test_sharded_training_matches_one_process(start, tmp_path, one, config):
    """Every weight split over 2 processes, the output layer gathered whole for the losses that read it
    and its gradient reduced back: each method ends where one unsharded process does. Tolerance 1e-4 covers
    float summation order, which Adam's normalisation amplifies where a gradient is near zero (updates here
    move weights by about 1e-2), and the reference states, which each process computes for its share of
    the examples in batches padded differently."""
    sharded = run(start, tmp_path, processes=2, batch_size=4, methods=EVERY, config=config)
    diffs = {method: max_diff(one[method], sharded[method]) for method in EVERY}
    assert max(diffs.values()) < 1e-4, diffs
