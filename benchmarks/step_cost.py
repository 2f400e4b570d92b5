"""Cost of one PALU training step: palu against the official code's structure, above the trunk's floor.

    python benchmarks/step_cost.py                      # the table: vocab 32,000 and 128,256
    python benchmarks/step_cost.py --rounds 3           # repeat every process, interleaved, for the noise
    python benchmarks/step_cost.py --curve              # also step cost against |V| and against K
    python benchmarks/step_cost.py --out benchmarks/results/step_cost.md

Setting: a random-init Llama (hidden 512, 8 layers), fp32, 2 threads (--threads); a batch
of 8 forget + 8 retain sequences of 128 tokens with 48 prompt tokens each; K = 50, N = 3.
Each (implementation, vocabulary) runs in a fresh subprocess, so peak RSS is its own.

"official" below is a faithful re-implementation of the structure of the official PALU code
(github.com/nxZhai/PALU), kept here only to measure against: a second full model as the
reference, full-vocabulary logits and log-softmaxes of both models at every position, and a
Python loop over the batch for prefix selection.

"trunk" is the floor no loss can lower: the same two forwards and the backward through the model,
with a loss on the final hidden states only. What a loss adds is its peak minus the trunk's. palu's
process also times, interleaved with its own steps, a trunk step and the matrix products its exact
objective needs alone (current and reference logits at every ordinary and retain answer row, and
the two gradient products of the current ones), the floor of its head's time.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from palu.data.labels import ORDINARY, PROMPT, SENSITIVE
from palu.methods.common import Head, answer_positions, final_hidden
from palu.methods.head import chunk_rows
from palu.methods.palu import PaluConfig, palu_loss

B, T, PROMPT_LEN, HIDDEN, LAYERS = 8, 128, 48, 512, 8
IMPLS = ("trunk", "official", "palu")


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=1376, num_hidden_layers=LAYERS,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=T,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def make_batch(vocab: int, seed: int) -> dict:
    """Sequences of 48 prompt tokens and 80 answer tokens, three 4-token sensitive spans each."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=gen)
    labels = ids.clone()
    labels[:, :PROMPT_LEN] = -100
    cls = torch.full((B, T), ORDINARY)
    cls[:, :PROMPT_LEN] = PROMPT
    span = torch.full((B, T), -1)
    for b in range(B):
        starts = sorted(torch.randperm(70, generator=gen)[:3].tolist())
        for k, s in enumerate(starts):
            pos = PROMPT_LEN + 2 + s
            cls[b, pos : pos + 4] = SENSITIVE
            span[b, pos : pos + 4] = k
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "token_class": cls,
            "span_id": span}


def official_step(model, ref_model, forget, retain, top_k: int, first_n: int):
    """The official structure: both models' full logits everywhere, vectorised masks, loop for prefixes."""
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    with torch.no_grad():
        ref_logits = ref_model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    labels = forget["labels"].clone()
    labels[forget["token_class"] == ORDINARY] = -200
    shift_logits, shift_ref, shift_labels = logits[:, :-1], ref_logits[:, :-1], labels[:, 1:]
    sens_mask = torch.zeros_like(shift_labels, dtype=torch.bool)
    for b in range(shift_labels.shape[0]):  # the official prefix selection: a loop over the batch
        run = 0
        for t in range(shift_labels.shape[1]):
            run = run + 1 if shift_labels[b, t] >= 0 else 0
            sens_mask[b, t] = 0 < run <= first_n
    topk = shift_ref.topk(top_k, dim=-1).indices
    chosen = shift_logits.gather(-1, topk)
    c = shift_logits.mean(-1, keepdim=True)
    l_sens = ((chosen - c) ** 2).mean(-1)[sens_mask].mean()
    logp, logq = F.log_softmax(shift_logits, -1), F.log_softmax(shift_ref, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    l_ord = kl[shift_labels == -200].mean()
    l_ret = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"], labels=retain["labels"]).loss
    return l_sens + l_ret + l_ord


def trunk_step(model, forget, retain):
    """palu's trunk work alone: both forwards, and a loss on the final hidden states at the answers."""
    return sum(final_hidden(model, b)[:, :-1][answer_positions(b)].square().mean() for b in (forget, retain))


def head_products(head: Head, ref_head: Head, forget: dict, retain: dict):
    """The matrix products palu's ordinary-token (KL) and retain (NLL) terms need, alone, in the fused
    loss's chunks and into preallocated buffers: the current logits at every ordinary and retain answer
    row with their two gradient products (hidden states, output layer), the reference logits at the
    ordinary rows."""
    vocab, d = head.weight.shape
    ordinary = int(((forget["token_class"][:, 1:] == ORDINARY) & answer_positions(forget)).sum())
    groups = [(ordinary, head.weight.detach(), True), (int(answer_positions(retain).sum()), head.weight.detach(), True),
              (ordinary, ref_head.weight, False)]
    chunk = chunk_rows(vocab)
    h, z, grad_h = torch.randn(chunk, d), torch.empty(chunk, vocab), torch.empty(chunk, d)
    grad_w = torch.zeros(vocab, d)

    def run():
        for rows, weight, backward in groups:
            for s in range(0, rows, chunk):
                r = min(chunk, rows - s)
                torch.mm(h[:r], weight.T, out=z[:r])
                if backward:
                    torch.mm(z[:r], weight, out=grad_h[:r])
                    grad_w.addmm_(z[:r].T, h[:r])
    return run


def cpu_s() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def timed(fn) -> tuple[float, float, float]:
    """Wall-clock, user and system seconds of ``fn()``. On a shared machine the CPU seconds are the
    steadier measure: other processes stretch the wall clock, much less a single thread's CPU time."""
    (u, s), t = cpu_s(), time.perf_counter()
    fn()
    (u1, s1), t1 = cpu_s(), time.perf_counter()
    return t1 - t, u1 - u, s1 - s


def fastest(runs: list[tuple[float, float, float]]) -> tuple[float, float]:
    return min(r[0] for r in runs), min(r[1] + r[2] for r in runs)


def measure(impl: str, vocab: int, top_k: int, steps: int, threads: int) -> dict:
    """Runs in its own process: resident memory, one-time precompute, then timed steps and the peak.

    palu then runs ``steps`` more rounds of its step, a trunk step and its head's products alone,
    for times only: they come after its peak is read.
    """
    torch.set_num_threads(threads)
    model = make_model(vocab)
    forget, retain = make_batch(vocab, 1), make_batch(vocab, 2)
    t0 = time.perf_counter()
    resident = 0
    if impl == "official":
        ref_model = copy.deepcopy(model).eval()
        resident = sum(p.numel() * p.element_size() for p in ref_model.parameters())
        step = lambda: official_step(model, ref_model, forget, retain, top_k, 3)
    elif impl == "palu":
        with torch.no_grad():
            forget["ref_hidden"] = final_hidden(model, forget)[:, :-1][answer_positions(forget)].clone()
        ref_head = Head.of(model).frozen_copy()
        resident = forget["ref_hidden"].numel() * 4 + ref_head.weight.numel() * 4
        cfg = PaluConfig(top_k=top_k, first_n=3)
        step = lambda: palu_loss(model, {"forget": forget, "retain": retain}, ref_head, cfg)["loss"]
    else:
        step = lambda: trunk_step(model, forget, retain)
    precompute = time.perf_counter() - t0
    last = {}

    def train_step(loss_fn=step):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        last["loss"] = float(loss.detach())

    train_step()  # the first step warms up allocators and caches
    before = rss_mb()
    runs = [timed(train_step) for _ in range(steps)]
    out = {"impl": impl, "vocab": vocab, "top_k": top_k, "peak_rss_mb": peak_mb(),
           "step_peak_above_start_mb": peak_mb() - before, "resident_reference_mb": resident / 2**20,
           "precompute_s": precompute, "sys_per_user": sum(r[2] for r in runs) / sum(r[1] for r in runs),
           "loss": last["loss"]}
    if impl == "palu":
        model.zero_grad(set_to_none=True)
        products = head_products(Head.of(model), ref_head, forget, retain)
        trunk = lambda: train_step(lambda: trunk_step(model, forget, retain))
        rounds = [(timed(train_step), timed(trunk), timed(products)) for _ in range(steps)]
        runs += [r[0] for r in rounds]
        out["trunk_s"], out["trunk_cpu_s"] = fastest([r[1] for r in rounds])
        out["products_s"], out["products_cpu_s"] = fastest([r[2] for r in rounds])
    out["step_s"], out["step_cpu_s"] = fastest(runs)
    return out


def run_child(impl: str, vocab: int, top_k: int, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(vocab), str(top_k), str(steps), str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """One implementation's rounds: the fastest times, the highest peak, and how far the rounds differ."""
    out = dict(runs[0])
    for key in [k for k in out if k.endswith("_s")]:
        out[key] = min(r[key] for r in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["peak_spread_mb"] = out["peak_rss_mb"] - min(r["peak_rss_mb"] for r in runs)
    out["cpu_spread"] = max(r["step_cpu_s"] for r in runs) / out["step_cpu_s"]
    return out


def table(rows: list[dict]) -> str:
    lines = ["| vocabulary | impl | step (s) | step CPU (s) | slowest round (CPU) | sys / user | peak RSS (MB) "
             "| peak spread (MB) | above the trunk (MB) | CPU ratio | peak ratio | above-trunk ratio "
             "| resident reference (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for vocab in sorted({r["vocab"] for r in rows}):
        trunk, off, palu = (next(r for r in rows if r["vocab"] == vocab and r["impl"] == i) for i in IMPLS)
        for r in (trunk, off, palu):
            above = r["peak_rss_mb"] - trunk["peak_rss_mb"]
            ratio = "" if r is trunk else f"{above / (off['peak_rss_mb'] - trunk['peak_rss_mb']):.2f}x"
            lines.append(f"| {vocab:,} | {r['impl']} | {r['step_s']:.2f} | {r['step_cpu_s']:.2f} | "
                         f"{r['cpu_spread']:.2f}x | {r['sys_per_user']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['peak_spread_mb']:.0f} | {above:.0f} | {r['step_cpu_s'] / off['step_cpu_s']:.2f}x | "
                         f"{r['peak_rss_mb'] / off['peak_rss_mb']:.2f}x | {ratio} | {r['resident_reference_mb']:.1f} |")
    return "\n".join(lines)


def head_time_table(rows: list[dict]) -> str:
    lines = ["| vocabulary | clock | palu step (s) | trunk step (s) | head (s) | its products alone (s) "
             "| head / products |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["impl"] == "palu"), key=lambda r: r["vocab"]):
        for clock, suffix in (("CPU", "_cpu_s"), ("wall", "_s")):
            step, trunk, products = (r[k + suffix] for k in ("step", "trunk", "products"))
            lines.append(f"| {r['vocab']:,} | {clock} | {step:.2f} | {trunk:.2f} | {step - trunk:.2f} | "
                         f"{products:.2f} | {(step - trunk) / products:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (1: CPU time is wall time, when quiet)")
    p.add_argument("--rounds", type=int, default=1, help="run every process this many times, interleaved")
    p.add_argument("--curve", action="store_true", help="also palu's step cost against |V| and K")
    p.add_argument("--out", help="write the results as Markdown here")
    args = p.parse_args()
    if args.child:
        impl, *numbers = args.child
        print(json.dumps(measure(impl, *map(int, numbers))))
        return
    runs = [run_child(impl, vocab, 50, args.steps, args.threads) for _ in range(args.rounds)
            for vocab in (32000, 128256) for impl in IMPLS]
    rows = [best([r for r in runs if (r["impl"], r["vocab"]) == (impl, vocab)]) for vocab in (32000, 128256)
            for impl in IMPLS]
    for vocab in (32000, 128256):
        pair = [r for r in rows if r["vocab"] == vocab and r["impl"] != "trunk"]
        assert abs(pair[0]["loss"] - pair[1]["loss"]) <= 1e-4 * abs(pair[0]["loss"]), pair
    text = [f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch thread(s); "
            f"torch {torch.__version__}; date {date.today()}; fastest of {args.rounds} round(s) of {args.steps} steps.",
            "", table(rows), "", "palu's head time against the matrix products it needs:", "", head_time_table(rows)]
    if args.curve:
        text += ["", "palu step time against |V| (K = 50) and against K (|V| = 32,000):", "",
                 "| |V| | K | step (s) | step CPU (s) | peak RSS (MB) |", "|---|---|---|---|---|"]
        for vocab, k in [(8000, 50), (32000, 50), (64000, 50), (128256, 50), (32000, 1), (32000, 1000),
                         (32000, 10000)]:
            r = run_child("palu", vocab, k, args.steps, args.threads)
            text.append(f"| {vocab:,} | {k} | {r['step_s']:.2f} | {r['step_cpu_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    print("\n".join(text))
    if args.out:
        Path(args.out).write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
