#!/usr/bin/env bash
# The GPU check in one command, on a machine with a CUDA GPU and torch installed (about 5 minutes):
#
#   bash benchmarks/gpu/check.sh            # writes benchmarks/results/gpu_check.md ($OUT/gpu_check.md if OUT is set)
#   bash benchmarks/gpu/check.sh --dry-run  # no GPU, nothing installed: the same flow on the CPU, smaller
#
# (a) one step of a random-init Llama of Llama-3.2-1B's shape in bf16, palu against the official structure in one
#     process, with torch.cuda.max_memory_allocated beside `palu plan`'s estimate (step.py);
# (b) the tiny pipeline on the built-in data: fine-tune, unlearn with PALU (bf16 weights) and NPO, evaluate, attack
#     with relearning and 4-bit quantization (bitsandbytes' NF4 when it installs), plan (check.py);
# (c) both as Markdown. PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
LIMIT=540  # seconds for (a) to (c), so the whole check stays within 10 minutes with the installation

case "${1:-}" in
  "") dry="" ;;
  --dry-run) dry="--dry-run" ;;
  *) echo "usage: bash benchmarks/gpu/check.sh [--dry-run]" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "torch is not installed for $PYTHON; install torch (the CUDA build) first, then run this again." >&2
  exit 1
fi
if [ -z "$dry" ]; then
  if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU is visible to torch (torch.cuda.is_available() is False): nothing to check here." \
         "bash benchmarks/gpu/check.sh --dry-run runs the same flow on the CPU."
    exit 0
  fi
  out="${OUT:+$OUT/gpu_check.md}"
  out="${out:-benchmarks/results/gpu_check.md}"
  "$PYTHON" -m pip install --quiet -e ".[dev]"  # the torch already installed satisfies palu's requirement
  "$PYTHON" -m pip install --quiet bitsandbytes \
    || echo "bitsandbytes did not install: the 4-bit attack falls back to round-trip quantization."
else
  out="${OUT:-$(mktemp -d)}/gpu_check_dry_run.md"  # a dry run never replaces the recorded results
fi

mkdir -p "$(dirname "$out")"
status=0
timeout "$LIMIT" "$PYTHON" benchmarks/gpu/check.py ${dry:+"$dry"} --out "$out" || status=$?
if [ "$status" -eq 124 ]; then
  echo "the check ran past $LIMIT seconds and was stopped; what it finished is not written." >&2
fi
exit "$status"
