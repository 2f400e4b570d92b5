"""PALU with spans from palu's offline contrast annotator against PALU with the paper's GPT-4o spans.

Same tiny model, data and settings; only the spans differ. The model is the annotator benchmark's
"tofu-full" (TOFU forget10 plus the first 400 retain90 items, trained from scratch) and its
"tofu-retain" reference; both are trained (and cached) when missing.

    python benchmarks/annotation_end_to_end.py --out benchmarks/results/annotation_end_to_end.md

Forget quality is measured on forget10_perturbed (400 items) against the retain model; utility is
retain Prob / ROUGE on the first --eval-retain retain items the models were trained on (the tiny
models know no real authors or world facts, so TOFU's model utility does not apply). Each run is
evaluated after every epoch; the table shows its last epoch and the epoch palu's selection rule
picks (best forget quality among the epochs keeping 95% of the starting retain Prob), which
compares the two span sets at equal utility rather than at equal settings.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from annotators import ROOT, train_pair

from palu.annotate import annotate
from palu.data.loaders import DataSource, load_qa
from palu.data.prompts import PromptConfig
from palu.eval.core import summary
from palu.eval.suites import tofu_suite
from palu.eval.tofu import evaluate_tofu
from palu.methods.palu import PaluConfig
from palu.models import load_model, load_tokenizer
from palu.train.loop import TrainConfig
from palu.train.selection import EpochEvaluator, SelectionRule, best_epoch
from palu.train.unlearn import unlearn

KEYS = ("epoch", "forget_quality", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "retain_Q_A_Prob",
        "retain_Q_A_ROUGE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-annotators")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--eval-retain", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tofu, spans_file = args.data / "tofu", args.data / "tofu_annotations" / "forget10_gpt4o.jsonl"
    retain_src = DataSource(str(tofu / "retain90.json"), limit=400)
    full, retain = train_pair("tofu", [DataSource(str(tofu / "forget10.json")), retain_src], [retain_src],
                              args.workdir, 15)
    tok = load_tokenizer(str(full))
    forget = load_qa(DataSource(str(tofu / "forget10.json")))
    retain_items = load_qa(retain_src)
    sets = {"forget": load_qa(DataSource(str(tofu / "forget10_perturbed.json"))),
            "retain": retain_items[: args.eval_retain]}
    opts = dict(batch_size=16, max_new_tokens=64, max_length=256)
    reference = evaluate_tofu(load_model(str(retain)), tok, sets, PromptConfig(), **opts)
    base = load_model(str(full))
    rows = {"full (no unlearning)": summary(evaluate_tofu(base, tok, sets, PromptConfig(), reference, **opts))}
    start_record = {"epoch": 0, **rows["full (no unlearning)"]}
    span_sets = {"GPT-4o spans (file annotator)": annotate(forget, "file", path=str(spans_file))[0]}
    start = time.time()
    span_sets["contrast spans (offline)"] = annotate(forget, "contrast", model=base, tokenizer=tok)[0]
    annotate_s = time.time() - start
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=8, warmup_epochs=1, max_length=256)
    rule = SelectionRule(utility="retain_Q_A_Prob")
    for name, items in span_sets.items():
        model = copy.deepcopy(base)
        with tempfile.TemporaryDirectory() as tmp:
            every_epoch = EpochEvaluator(tofu_suite(tok, sets, PromptConfig(), reference, **opts), tok, Path(tmp), rule,
                                         every_epoch="all")
            every_epoch.records.append(start_record)  # the same model each run starts from: evaluated once
            unlearn(model, tok, items, retain_items, "palu", PaluConfig(top_k=50, first_n=3, alpha=args.alpha), cfg,
                    PromptConfig(), Path(tmp), on_epoch_end=every_epoch, progress=False)
        spans = sum(len(it.spans) for it in items)
        rows[f"PALU, {name}, last epoch"] = {**every_epoch.records[-1], "spans": spans}
        rows[f"PALU, {name}, selected epoch"] = {**(best_epoch(every_epoch.records, rule) or {}), "spans": spans}
    lines = [f"Machine: {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; {date.today()}.",
             f"Unlearning: PALU K=50, N=3, alpha={args.alpha}, lr {args.lr}, {args.epochs} epochs, batch 8. "
             f"Contrast annotation of 400 answers: {annotate_s:.0f} s.", "",
             "| run | spans | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 2) + "|"]
    for name, values in rows.items():
        cells = [f"{values[k]:.4g}" if values.get(k) is not None else "n/a" for k in KEYS]
        lines.append(f"| {name} | {values.get('spans', '')} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
