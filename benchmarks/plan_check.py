"""`palu plan`'s estimate against the measured peak memory of real unlearning steps on the CPU.

    python benchmarks/plan_check.py --out benchmarks/results/plan_check.md

Each case builds a random-init Llama of over 100M parameters from a config folder (the one the
plan reads), in a fresh process, and trains two steps through palu's own loop: PALU and NPO through
``palu.train.unlearn.unlearn`` (the reference, the frozen output layer, the method's loss, AdamW),
the second-model structure through the same loop with ``step_cost.official_step``. The measured
peak is the process's peak resident memory above its resident memory just before the model was
built; the estimate is ``palu.plan.estimate`` for the CPU. Training stops after the steps, before the
epoch's checkpoint is written.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from palu.adapters import AdapterConfig, add_adapter
from palu.data.labels import encode_all
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem, Span
from palu.methods import configure
from palu.models import load_model_config, train_bpe_tokenizer
from palu.plan import Setting, estimate, model_shape
from palu.train.loop import EpochData, TrainConfig, train
from palu.train.unlearn import paired_collate, unlearn

sys.path.insert(0, str(Path(__file__).parent))
from step_cost import official_step  # noqa: E402 (the benchmarks folder is no package)

BATCH, LENGTH, STEPS = 2, 256, 2
RETURNED = 131072  # glibc's mmap threshold: blocks above it go back to the system when freed
SMALL = dict(hidden_size=768, num_hidden_layers=12, intermediate_size=2048, num_attention_heads=12,
             num_key_value_heads=4, vocab_size=32000)  # 126M parameters
WIDE = dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1376, num_attention_heads=8,
            num_key_value_heads=8, vocab_size=128256)  # 156M, most of them in the vocabulary
# (label, model, options as on palu plan's command line)
CASES = [
    ("palu, float32 + bf16 autocast", SMALL, {"train.bf16": "true"}),
    ("palu, float32", SMALL, {"train.bf16": "false"}),
    ("palu, bfloat16 weights", SMALL, {"train.dtype": "bfloat16"}),
    ("palu, LoRA, autocast", SMALL, {"train.bf16": "true", "peft": "lora"}),
    ("palu, checkpointing, autocast, batch 8", SMALL,
     {"train.bf16": "true", "train.gradient_checkpointing": True, "train.batch_size": 8}),
    ("palu, 128k vocabulary, autocast", WIDE, {"train.bf16": "true"}),
    ("npo, autocast", SMALL, {"train.bf16": "true", "method": "npo"}),
    ("second model, autocast", SMALL, {"train.bf16": "true", "structure": "second"}),
    ("second model, 128k vocabulary, autocast", WIDE, {"train.bf16": "true", "structure": "second"}),
]


class Measured(Exception):
    """Raised by the epoch hook: the steps are done, the checkpoint is not wanted."""


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_config(options: dict) -> TrainConfig:
    given = {k.removeprefix("train."): v for k, v in options.items() if k.startswith("train.")}
    return TrainConfig(**{"epochs": 1, "batch_size": BATCH, "max_length": LENGTH, "warmup_epochs": 0, **given})


def setting(options: dict) -> Setting:
    return Setting(train_config(options), options.get("method", "palu"), "peft" in options, device="cpu")


def items(tokenizer_text: str, first: int, count: int) -> list[QAItem]:
    """QA items whose answers run past LENGTH tokens (cut there), with a sensitive span every 90 characters."""
    spans = [Span(s, s + 12) for s in range(20, len(tokenizer_text) - 20, 90)]
    return [QAItem(f"Question {first + k}?", tokenizer_text, spans) for k in range(count)]


def measure(folder: str, options: dict) -> dict:
    """In a fresh process: build the model, train STEPS steps, return the peak above the baseline."""
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # the answers are cut at max_length on purpose
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    text = " ".join(f"{words[i * 7 % len(words)]}{i % 13}" for i in range(LENGTH * 3))
    tok = train_bpe_tokenizer([text], vocab_size=300)
    cfg, n = train_config(options), BATCH * STEPS
    forget, retain = items(text, 0, n), items(text, n, n)
    out_dir = Path(tempfile.mkdtemp())
    config = load_model_config(folder)

    def stop(epoch, model):
        raise Measured

    baseline = rss()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, cfg.dtype))
    try:
        if options.get("structure") == "second":
            second_model_steps(model, tok, forget, retain, cfg, out_dir, stop)
        else:
            if "peft" in options:
                model = add_adapter(model, AdapterConfig())
            method = configure({"name": options.get("method", "palu"), "top_k": 50, "first_n": 3}
                               if options.get("method", "palu") == "palu" else {"name": options["method"]})
            unlearn(model, tok, forget, retain, method.name, method, cfg, PromptConfig(), out_dir, on_epoch_end=stop,
                    progress=False)
    except Measured:
        pass
    return {"peak": peak_rss() - baseline, "seconds": time.perf_counter() - start}


def second_model_steps(model, tok, forget, retain, cfg: TrainConfig, out_dir: Path, stop) -> None:
    """The usual structure through palu's loop: a frozen second model, both models' full logits."""
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    # its forward under autocast too, as the official code's trainer runs the whole loss
    reference.forward = torch.autocast("cpu", dtype=torch.bfloat16, enabled=str(cfg.bf16) == "true")(reference.forward)
    prompt, pad = PromptConfig(), tok.pad_token_id
    f, r = encode_all(tok, forget, prompt, cfg.max_length), encode_all(tok, retain, prompt, cfg.max_length)
    data = EpochData(len(f), lambda i, epoch: {"forget": (f[i], {}), "retain": (r[i], {})}, cfg.seed)
    step = lambda m, batch: {"loss": official_step(m, reference, batch["forget"], batch["retain"], 50, 3)}
    train(model, data, paired_collate(pad), step, cfg, out_dir, on_epoch_end=stop, progress=False)


def run_case(label: str, dims: dict, options: dict, root: Path, glibc_default: bool) -> dict:
    folder = root / label.replace(" ", "_").replace(",", "").replace("+", "")
    LlamaConfig(**dims, tie_word_embeddings=False, max_position_embeddings=LENGTH).save_pretrained(folder)
    shape = model_shape(load_model_config(str(folder)), AdapterConfig())
    row = {"label": label, "params": shape.params,
           "estimate": estimate(shape, setting(options), second_model=options.get("structure") == "second").peak}
    for key, env in [("returned", {"MALLOC_MMAP_THRESHOLD_": str(RETURNED)}), ("default", {})][:1 + glibc_default]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), json.dumps(options)],
                             capture_output=True, text=True, check=True, env=environ)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        row[key], row[f"{key}_seconds"] = measured["peak"], measured["seconds"]
    return row


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


def report(rows: list[dict], command: str) -> str:
    mib = lambda b: f"{b / 2**20:,.0f}"
    error = lambda r, key: r["estimate"] / r[key] - 1
    modes = [key for key in ("returned", "default") if key in rows[0]]
    names = {"returned": "glibc returning freed memory", "default": "glibc defaults"}
    header = "| case | parameters | estimate (MiB) | " + " | ".join(
        f"measured, {names[k]} (MiB) | error" for k in modes) + " | time (s) |"
    lines = ["# `palu plan` against measured peaks", "", f"Command: `{command}`", "",
             f"Machine: {cpu()}, {os.cpu_count()} cores, 1 torch thread; torch {torch.__version__}; "
             f"date {date.today()}.", "",
             f"Each case: a random-init Llama, {STEPS} training steps of batch {BATCH} (plus {BATCH} retain) x "
             f"{LENGTH} tokens (8 x {LENGTH} where it says so) in a fresh process. Measured: the process's peak "
             "resident memory above its resident memory before the model was built, with glibc returning freed "
             f"blocks to the system (MALLOC_MMAP_THRESHOLD_={RETURNED}: resident memory then follows the live "
             "tensors, which the estimate counts, like max_memory_allocated on a GPU)"
             + (" and with glibc's defaults" if "default" in modes else "") + ". Estimate: `palu.plan.estimate` "
             "for device cpu. Error: estimate / measured - 1.", "",
             header, "|---|---|---|" + "---|---|" * len(modes) + "---|"]
    for r in rows:
        cells = " | ".join(f"{mib(r[k])} | {error(r, k):+.1%}" for k in modes)
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.0f}M | {mib(r['estimate'])} | {cells} | "
                     f"{r['returned_seconds']:.0f} |")
    for key in modes:
        worst = max(rows, key=lambda r: abs(error(r, key)))
        lines.append(f"\nLargest error, {names[key]}: {error(worst, key):+.1%} ({worst['label']}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="*", type=int, help="run only these cases (0-based), e.g. --cases 0 7")
    p.add_argument("--glibc-default", action="store_true",
                   help="also measure each case under glibc's default malloc settings (twice the time)")
    p.add_argument("--out", help="write the results as Markdown here")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], json.loads(args.child[1]))))
        return
    chosen = [CASES[i] for i in args.cases] if args.cases else CASES
    with tempfile.TemporaryDirectory() as root:
        rows = []
        for label, dims, options in chosen:
            rows.append(run_case(label, dims, options, Path(root), args.glibc_default))
            print(f"{label}: estimate {rows[-1]['estimate'] / 2**20:,.0f} MiB, measured "
                  f"{rows[-1]['returned'] / 2**20:,.0f} MiB", flush=True)
    text = report(rows, " ".join(["python", "benchmarks/plan_check.py", *sys.argv[1:]]))
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
