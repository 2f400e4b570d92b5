"""What benchmarks/gpu/check.sh runs once palu is installed: the paired step (step.py) and the tiny
pipeline on the built-in data through the `palu` command (fine-tune, unlearn with PALU in bf16 and
with NPO, evaluate, attack with relearning and 4-bit quantization, plan), written as Markdown.

    python benchmarks/gpu/check.py --out gpu_check.md            # on a CUDA GPU
    python benchmarks/gpu/check.py --dry-run --out /tmp/dry.md   # the same flow on the CPU, smaller
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from step import step_table

DATA = ["synthetic.n_authors=8", "synthetic.forget_authors=2", "synthetic.holdout_authors=2"]


def pipeline(work: Path, dry_run: bool) -> list[tuple[str, list[str]]]:
    """(name, palu arguments) of each stage; the dry run trains for a single epoch."""
    epochs = lambda n: f"train.epochs={1 if dry_run else n}"
    full, unlearned = work / "full" / "model", work / "palu" / "model"
    return [
        ("finetune", ["finetune", f"output_dir={work / 'full'}", epochs(10), *DATA]),
        ("unlearn, PALU, bf16 weights", ["unlearn", f"model={full}", f"output_dir={work / 'palu'}", "method=palu",
                                         "train.dtype=bfloat16", "train.lr=5e-4", epochs(3), *DATA]),
        ("unlearn, NPO", ["unlearn", f"model={full}", f"output_dir={work / 'npo'}", "method=npo", "train.lr=5e-4",
                          epochs(3), *DATA]),
        ("eval", ["eval", f"model={unlearned}", f"output_dir={work / 'eval'}", "max_new_tokens=32", *DATA]),
        ("attack: relearn, 4-bit", ["attack", f"model={unlearned}", f"output_dir={work / 'attack'}",
                                    "attacks=[relearn, quantize]", "quantize_bits=[4]", "relearn.lr=5e-4",
                                    "max_new_tokens=32", *DATA]),
        ("plan", ["plan", f"model={full}", "train.batch_size=8", f"device={'cpu' if dry_run else 'cuda'}"]),
    ]


def run_stage(args: list[str]) -> tuple[int, float, str]:
    """Exit code, seconds and the tail of the output of ``palu ARGS``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "palu", *args, "--quiet"], capture_output=True, text=True)
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-16:])
    return done.returncode, time.perf_counter() - start, tail


def quantization_backend(work: Path) -> str:
    """What the 4-bit attack used: bitsandbytes' NF4 layers, or the round trip where they are missing."""
    results = work / "attack" / "results.json"
    if not results.exists():
        return "not run"
    return str(json.loads(results.read_text()).get("quantize_4bit", {}).get("backend", "unknown"))


def machine() -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB; CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, no GPU (dry run)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same flow on the CPU: a small model, one epoch")
    p.add_argument("--out", required=True, help="the Markdown file to write")
    args = p.parse_args()
    text = ["# GPU check", "", f"Command: `bash benchmarks/gpu/check.sh{' --dry-run' if args.dry_run else ''}`", "",
            f"Machine: {machine()}; torch {torch.__version__}; date {date.today()}.", "",
            "## One step: palu against the official structure", "", step_table(args.dry_run), "",
            "## The tiny pipeline on the built-in data", ""]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, stage in pipeline(work, args.dry_run):
            code, seconds, tail = run_stage(stage)
            failed += code != 0
            print(f"{name}: exit {code}, {seconds:.0f} s", flush=True)
            text += [f"### {name}: exit {code}, {seconds:.0f} s", "", f"`palu {' '.join(stage)}`", "", "```",
                     tail, "```", ""]
        text.append(f"4-bit quantization backend: {quantization_backend(work)}.")
    Path(args.out).write_text("\n".join(text) + "\n")
    print(f"results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
