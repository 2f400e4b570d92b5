"""The paper's two claims at demo scale: does the prefix suffice (N), does the top-K suffice (K)?

    palu demo output_dir=/tmp/palu-demo --quiet            # once: the full and retain models
    python benchmarks/kn_grid.py /tmp/palu-demo --out benchmarks/results/kn_grid.md

PALU unlearns the demo's full model for every K in {1, 10, 50, 1000, |V|} and N in {1, 3, 5, all},
with the demo's other settings (alpha 2, lr 5e-4, 5 epochs), and each run is evaluated like the
demo: forget quality against the retain model, forget Prob, retain Prob.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from palu.commands.unlearn import Config as UnlearnConfig
from palu.commands.unlearn import run_unlearn
from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig, synthetic
from palu.eval.core import summary
from palu.eval.sets import EvalSets, eval_sets
from palu.eval.tofu import evaluate_tofu
from palu.io import read_json
from palu.methods import configure
from palu.models import load_model, load_tokenizer
from palu.train.loop import TrainConfig

KS, NS = (1, 10, 50, 1000, -1), (1, 3, 5, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sets_cfg = EvalSets(retain=synthetic("retain", 100), max_new_tokens=64, max_length=256)
    sets = eval_sets(sets_cfg, SyntheticConfig())
    reference = read_json(args.demo / "eval-retain" / "results.json")
    tok = load_tokenizer(str(args.demo / "full" / "model"))
    train = TrainConfig(epochs=5, lr=5e-4, batch_size=8, warmup_epochs=1, max_length=256)
    cells, start = {}, time.time()
    for k in KS:
        for n in NS:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = UnlearnConfig(model=str(args.demo / "full" / "model"), train=train, output_dir=tmp,
                                    method=configure({"name": "palu", "top_k": k, "first_n": n, "alpha": 2.0}))
                model = load_model(str(run_unlearn(cfg, overwrite=True, progress=False)))
                cells[k, n] = summary(evaluate_tofu(model, tok, sets, PromptConfig(), reference,
                                                    **sets_cfg.options()))
            print(k, n, {m: cells[k, n][m] for m in ("forget_quality", "forget_Q_A_Prob", "retain_Q_A_Prob")},
                  flush=True)
    label = lambda n: "all" if n == -1 else str(n)
    lines = [f"Machine: {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; {date.today()}; "
             f"{len(cells)} runs in {time.time() - start:.0f} s.", ""]
    for metric in ("forget_quality", "forget_Q_A_Prob", "retain_Q_A_Prob"):
        lines += [f"{metric} (rows K, columns N):", "", "| K \\ N | " + " | ".join(label(n) for n in NS) + " |",
                  "|---" * (len(NS) + 1) + "|"]
        for k in KS:
            row = ["|V|" if k == -1 else str(k)] + [f"{cells[k, n][metric]:.4g}" for n in NS]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
