"""Wall time of the TOFU-style suite on the built-in data with the demo's tiny model.

    palu demo output_dir=/tmp/palu-demo --quiet          # once: the models
    python benchmarks/eval_time.py /tmp/palu-demo [--threads 1]

Evaluates the demo's unlearned model on every built-in set (forget 80, retain 640, holdout 80
items): forget Prob / ROUGE / truth ratio / forget quality / EM / ES, retain Prob / ROUGE / truth
ratio, MIA scores and privleak against the retain model's saved results. Target: under 2 minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.eval.core import summary
from palu.eval.tofu import evaluate_tofu
from palu.io import read_json
from palu.models import load_model, load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, help="a `palu demo` output folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sets = {name: load_items(synthetic(name), SyntheticConfig()) for name in ("forget", "retain", "holdout")}
    model_dir = args.demo / "unlearned" / "model"
    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    reference = read_json(args.demo / "eval-retain" / "results.json")
    start = time.perf_counter()
    results = evaluate_tofu(model, tok, sets, PromptConfig(), reference, batch_size=16,
                            max_new_tokens=args.max_new_tokens, max_length=256)
    seconds = time.perf_counter() - start
    values = summary(results)
    print(f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}: "
          f"{sum(len(v) for v in sets.values())} items, {len(results)} metrics in {seconds:.1f} s")
    print(", ".join(f"{k}={v:.4g}" for k, v in values.items() if v is not None))


if __name__ == "__main__":
    main()
