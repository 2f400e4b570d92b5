"""Span F1 of the rules and contrast annotators against (a) the synthetic ground truth and (b) GPT-4o spans.

(a) The built-in data (40 authors, the last 8 forgotten): a tiny "full" model is trained from
    scratch on all authors and a "retain" model without the forget authors; the forget items are
    annotated and scored against the spans recorded when the data was generated.
(b) TOFU forget10, scored against the GPT-4o spans (re-anchored by the file annotator). The
    contrast annotator needs a model that knows these authors: a tiny model is trained on forget10
    plus the first ``--tofu-retain`` retain90 items (and a retain model on those items only).

Scores are character-level (see ``palu.annotate.quality``). Models are cached in ``--workdir``, so
a second run only annotates. Run from the project root:

    python benchmarks/annotators.py                  # everything (trains 4 tiny models: slow on a CPU)
    python benchmarks/annotators.py --skip-contrast  # rules only, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from palu.annotate import annotate, get_annotator
from palu.annotate.quality import span_f1
from palu.commands.finetune import Config as FinetuneConfig
from palu.commands.finetune import ScratchConfig, run_finetune, scratch_train
from palu.data.loaders import DataSource, load_qa
from palu.data.qa import item_texts
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.models import load_model, load_tokenizer, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = SyntheticConfig(n_authors=40, forget_authors=8, holdout_authors=0)
THRESHOLDS = (1.0, 1.5, 2.0, 3.0)
WINDOWS = (2, 3, 5, None)


def train(name: str, data: list[DataSource], tokenizer: Path, workdir: Path, epochs: int) -> Path:
    cfg = FinetuneConfig(model="scratch", tokenizer=str(tokenizer), data=data, output_dir=str(workdir / name),
                         synthetic=SYNTHETIC, scratch=ScratchConfig(), train=scratch_train())
    cfg.train.epochs = epochs
    start = time.time()
    path = run_finetune(cfg, resume=True, progress=False)
    print(f"  model {name}: {path} ({time.time() - start:.0f} s)")
    return path


def train_pair(name: str, full: list[DataSource], retain: list[DataSource], workdir: Path, epochs: int):
    """A full and a retain model sharing one tokenizer (trained on the full data), so either can be the base."""
    tokenizer = workdir / f"{name}-tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        items = [it for source in full for it in load_items(source, SYNTHETIC)]
        train_bpe_tokenizer(item_texts(items), ScratchConfig().vocab_size).save_pretrained(str(tokenizer))
    return (train(f"{name}-full", full, tokenizer, workdir, epochs),
            train(f"{name}-retain", retain, tokenizer, workdir, epochs))


def contrast_rows(items, reference, full: Path, retain: Path) -> list[dict]:
    """F1 of every window (same-model reference) and of the retain model as base, at each threshold."""
    model, tok = load_model(str(full)), load_tokenizer(str(full))
    variants = [(f"window={w}", {"window": w}) for w in WINDOWS]
    variants.append(("window=5 modifiers may start spans", {"skip_modifiers": False}))
    variants.append(("window=5 scores only (no phrase completion, no rules, modifiers kept)",
                     {"complete_phrases": False, "with_rules": False, "skip_modifiers": False}))
    variants.append(("window=5 neutral question", {"reference_question": "Tell me something."}))
    variants.append(("base=retain model", {"base_model": load_model(str(retain))}))
    rows = []
    for label, options in variants:
        start = time.time()
        scorer = get_annotator("contrast", model=model, tokenizer=tok, **options)
        scores = scorer.token_scores(items)
        seconds = time.time() - start
        for threshold in THRESHOLDS:
            scorer.threshold = threshold
            predicted = [replace(item, spans=scorer.spans(item, s)) for item, s in zip(items, scores)]
            rows.append(row(f"contrast {label} threshold={threshold}", span_f1(predicted, reference), seconds))
    return rows


def row(name: str, scores, seconds: float) -> dict:
    print(f"  {name:50s} {scores}  ({seconds:.1f} s)")
    return {"annotator": name, "precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
            "seconds": round(seconds, 2)}


def rules_row(items, reference) -> dict:
    start = time.time()
    predicted, _ = annotate(items, "rules")
    return row("rules", span_f1(predicted, reference), time.time() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with tofu/ and tofu_annotations/")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "bench-annotators"), help="where trained models are kept")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "annotators.json"))
    p.add_argument("--epochs", type=int, default=15, help="training epochs of the tiny models")
    p.add_argument("--tofu-retain", type=int, default=400, help="retain90 items trained beside forget10")
    p.add_argument("--skip-contrast", action="store_true", help="rules only (no training)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    workdir, data = Path(args.workdir), Path(args.data)
    results: dict = {}

    print("(a) synthetic forget split vs generated ground truth")
    items = load_items(synthetic("forget"), SYNTHETIC)
    results["synthetic"] = [rules_row(items, items)]
    if not args.skip_contrast:
        full, retain = train_pair("synthetic", [synthetic("full")], [synthetic("retain")], workdir, args.epochs)
        results["synthetic"] += contrast_rows(items, items, full, retain)

    tofu, spans = data / "tofu" / "forget10.json", data / "tofu_annotations" / "forget10_gpt4o.jsonl"
    if tofu.is_file() and spans.is_file():
        print("(b) TOFU forget10 vs GPT-4o spans")
        items = load_qa(DataSource(str(tofu)))
        reference, _ = annotate(items, "file", path=str(spans))
        results["tofu_forget10"] = [rules_row(items, reference)]
        if not args.skip_contrast:
            retain_data = DataSource(str(data / "tofu" / "retain90.json"), limit=args.tofu_retain)
            full, retain = train_pair("tofu", [DataSource(str(tofu)), retain_data], [retain_data], workdir, args.epochs)
            results["tofu_forget10"] += contrast_rows(items, reference, full, retain)
    else:
        print(f"(b) skipped: {tofu} or {spans} not found")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
