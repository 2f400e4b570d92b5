"""One training step of a random-init Llama of Llama-3.2-1B's shape: palu against the official structure,
paired in one process, with torch.cuda.max_memory_allocated beside `palu plan`'s estimate; in bf16
weights, then in float32 weights under bf16 autocast (palu's default).

A step is what palu's loop does: the loss with bf16 autocast, backward, gradient clipping, AdamW. The
batch is step_cost.py's (8 forget + 8 retain sequences of 128 tokens, K = 50, N = 3); each structure
gets a fresh model from the same seed, a warm-up step, then timed steps.
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from palu.methods.common import Head, answer_positions, final_hidden
from palu.methods.palu import PaluConfig, palu_loss
from palu.plan import GIB, Setting, estimate, model_shape
from palu.train.loop import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from step_cost import B, T, make_batch, official_step  # noqa: E402 (the benchmarks folder is no package)

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)  # Llama-3.2-1B: 1.24B
SMALL = dict(vocab_size=32000, hidden_size=256, num_hidden_layers=2, intermediate_size=688, num_attention_heads=4,
             num_key_value_heads=4, tie_word_embeddings=True)  # for a dry run on the CPU
TOP_K, FIRST_N = 50, 3


def measure(impl: str, dtype: str, config: LlamaConfig, device: str, steps: int) -> dict:
    """Step time (the fastest of ``steps`` after a warm-up) and peak allocated memory of one structure."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated() if cuda else 0
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    forget, retain = ({k: v.to(device) for k, v in make_batch(config.vocab_size, seed).items()} for seed in (1, 2))
    autocast = torch.autocast(device, dtype=torch.bfloat16)
    if impl == "official":  # the whole loss under autocast, as the official code's trainer runs it
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        step = autocast(lambda: official_step(model, reference, forget, retain, TOP_K, FIRST_N))
    else:  # the model's forward under autocast, as palu's loop (accelerate) runs it
        with torch.no_grad():  # before training, without autocast, as palu's reference is taken
            forget["ref_hidden"] = final_hidden(model, forget)[:, :-1][answer_positions(forget)].clone()
        model.forward = autocast(model.forward)
        ref_head, cfg = Head.of(model).frozen_copy(), PaluConfig(top_k=TOP_K, first_n=FIRST_N)
        step = lambda: palu_loss(model, {"forget": forget, "retain": retain}, ref_head, cfg)["loss"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    times, losses = [], []
    for i in range(steps + 1):
        sync()
        t = time.perf_counter()
        loss = step()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        losses.append(float(loss.detach()))
        if i:  # the first step warms up kernels and the allocator
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() - start if cuda else None
    return {"impl": impl, "dtype": dtype, "step_s": min(times), "peak": peak, "first_loss": losses[0]}


def planned(config: LlamaConfig, impl: str, dtype: str, device: str) -> int:
    """`palu plan`'s peak (without the CUDA runtime, which max_memory_allocated leaves out) for this step."""
    setting = Setting(TrainConfig(batch_size=B, max_length=T, dtype=dtype, bf16="true"), device=device)
    return estimate(model_shape(config), setting, second_model=impl == "official").peak


def step_table(dry_run: bool) -> str:
    """Each weight type, palu then the official structure, as a Markdown table; the time ratio is to the
    official structure in the same type."""
    device = "cpu" if dry_run else "cuda"
    config = LlamaConfig(**(SMALL if dry_run else LLAMA_1B))
    gib = lambda b: "n/a" if b is None else f"{b / GIB:.2f}"
    lines = [f"Model: random-init Llama, {model_shape(config).params / 1e9:.2f}B parameters; batch {B} forget + {B} "
             f"retain x {T} tokens; K = {TOP_K}, N = {FIRST_N}; {device}.", "",
             "| structure | weights | step (ms) | time ratio | max_memory_allocated (GiB) | `palu plan` peak (GiB) | "
             "plan error | first loss |", "|---|---|---|---|---|---|---|---|"]
    for dtype in ("bfloat16", "float32"):
        palu, official = (measure(impl, dtype, config, device, 1 if dry_run else 5) for impl in ("palu", "official"))
        for r in (palu, official):
            plan = planned(config, r["impl"], dtype, device)
            error = "n/a" if r["peak"] is None else f"{plan / r['peak'] - 1:+.1%}"
            lines.append(f"| {r['impl']} | {dtype if dtype == 'bfloat16' else 'float32, bf16 autocast'} | "
                         f"{r['step_s'] * 1000:.0f} | {r['step_s'] / official['step_s']:.2f}x | {gib(r['peak'])} | "
                         f"{gib(plan)} | {error} | {r['first_loss']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(step_table(dry_run="--dry-run" in sys.argv))
