"""Cost of one PALU training step: palu against the official code's structure.

    python benchmarks/step_cost.py                      # the table: vocab 32,000 and 128,256
    python benchmarks/step_cost.py --curve              # also step cost against |V| and against K
    python benchmarks/step_cost.py --out benchmarks/results/step_cost.md

Setting (the issue's anchor): a random-init Llama (hidden 512, 8 layers), fp32, 2 threads; a batch
of 8 forget + 8 retain sequences of 128 tokens with 48 prompt tokens each; K = 50, N = 3.
Each (implementation, vocabulary) runs in a fresh subprocess, so peak RSS is its own.

"official" below is a faithful re-implementation of the structure of the official PALU code
(github.com/nxZhai/PALU), kept here only to measure against: a second full model as the
reference, full-vocabulary logits and log-softmaxes of both models at every position, and a
Python loop over the batch for prefix selection.
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
from palu.methods.palu import PaluConfig, palu_loss

B, T, PROMPT_LEN, HIDDEN, LAYERS = 8, 128, 48, 512, 8


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


def measure(impl: str, vocab: int, top_k: int, steps: int) -> dict:
    """Runs in its own process: resident memory, one-time precompute, then timed steps."""
    torch.set_num_threads(2)
    model = make_model(vocab)
    forget, retain = make_batch(vocab, 1), make_batch(vocab, 2)
    t0 = time.perf_counter()
    if impl == "official":
        ref_model = copy.deepcopy(model).eval()
        resident = sum(p.numel() * p.element_size() for p in ref_model.parameters())
        step = lambda: official_step(model, ref_model, forget, retain, top_k, 3)
    else:
        with torch.no_grad():
            forget["ref_hidden"] = final_hidden(model, forget)[:, :-1][answer_positions(forget)].clone()
        ref_head = Head.of(model).frozen_copy()
        resident = forget["ref_hidden"].numel() * 4 + ref_head.weight.numel() * 4
        cfg = PaluConfig(top_k=top_k, first_n=3)
        step = lambda: palu_loss(model, {"forget": forget, "retain": retain}, ref_head, cfg)["loss"]
    precompute = time.perf_counter() - t0
    before = rss_mb()
    times = []
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss = step()
        loss.backward()
        if i:  # the first step warms up allocators and caches
            times.append(time.perf_counter() - t)
    return {"impl": impl, "vocab": vocab, "top_k": top_k, "step_s": min(times), "peak_rss_mb": peak_mb(),
            "step_peak_above_start_mb": peak_mb() - before, "resident_reference_mb": resident / 2**20,
            "precompute_s": precompute, "loss": float(loss.detach())}


def run_child(impl: str, vocab: int, top_k: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(vocab), str(top_k), str(steps)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| vocabulary | impl | step (s) | peak RSS (MB) | resident reference (MB) | precompute (s) | time ratio "
             "| peak ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for vocab in sorted({r["vocab"] for r in rows}):
        off = next(r for r in rows if r["vocab"] == vocab and r["impl"] == "official")
        for r in [off, next(r for r in rows if r["vocab"] == vocab and r["impl"] == "palu")]:
            lines.append(f"| {vocab:,} | {r['impl']} | {r['step_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['resident_reference_mb']:.1f} | {r['precompute_s']:.2f} | "
                         f"{r['step_s'] / off['step_s']:.2f}x | {r['peak_rss_mb'] / off['peak_rss_mb']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--curve", action="store_true", help="also palu's step cost against |V| and K")
    p.add_argument("--out", help="write the results as Markdown here")
    args = p.parse_args()
    if args.child:
        impl, vocab, top_k, steps = args.child
        print(json.dumps(measure(impl, int(vocab), int(top_k), int(steps))))
        return
    rows = [run_child(impl, vocab, 50, args.steps) for vocab in (32000, 128256) for impl in ("official", "palu")]
    for vocab in (32000, 128256):
        pair = [r for r in rows if r["vocab"] == vocab]
        assert abs(pair[0]["loss"] - pair[1]["loss"]) <= 1e-4 * abs(pair[0]["loss"]), pair
    text = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads available; "
            f"torch {torch.__version__}; date {date.today()}.", "", table(rows)]
    if args.curve:
        text += ["", "palu step time against |V| (K = 50) and against K (|V| = 32,000):", "",
                 "| |V| | K | step (s) | peak RSS (MB) |", "|---|---|---|---|"]
        for vocab, k in [(8000, 50), (32000, 50), (64000, 50), (128256, 50), (32000, 1), (32000, 1000),
                         (32000, 10000)]:
            r = run_child("palu", vocab, k, args.steps)
            text.append(f"| {vocab:,} | {k} | {r['step_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    print("\n".join(text))
    if args.out:
        Path(args.out).write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
