"""Wall time of TOFU's suite: the whole suite on the built-in data, and the evaluation after each
unlearning epoch on TOFU-mini's sets (the whole suite against what the selection rule reads).

    palu demo output_dir=/tmp/palu-demo --quiet                      # once: the models
    python benchmarks/eval_time.py /tmp/palu-demo [--threads 1]
    python benchmarks/eval_time.py --tofu-mini ~/.cache/palu-benchmarks/tofu-mini        # after its models stage

The first form evaluates the demo's unlearned model on every built-in set (forget 80, retain 640,
holdout 80 items): forget Prob / ROUGE / truth ratio / forget quality / EM / ES, retain Prob /
ROUGE / truth ratio, MIA scores and privleak against the retain model's saved results. Target:
under 2 minutes on 2 cores.

The second evaluates TOFU-mini's full model on the sets a comparison evaluates after every epoch
(forget05_perturbed, retain_perturbed, real_authors_perturbed, world_facts_perturbed; batch 32,
128 new tokens) twice: the whole suite (``eval.every_epoch=all``) and what the default selection
rule reads (``eval.every_epoch=selection``: forget quality and model utility), checks that every
metric the second computes has the first's value exactly, and times where each spends its time.
With ``--values FILE`` it saves the whole suite's per-item values, or compares them with those a
previous version of the code saved there (what a change of the scoring code moved).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from palu.data.loaders import DataSource
from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.eval import scoring, tofu
from palu.eval.core import summary
from palu.eval.tofu import evaluate_tofu
from palu.io import read_json
from palu.models import load_model, load_tokenizer
from palu.train.selection import UTILITY_FALLBACK, SelectionRule

TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
EPOCH_SETS = {"forget": "forget05_perturbed", "retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
              "world_facts": "world_facts_perturbed"}


def demo_suite(demo: Path, max_new_tokens: int) -> None:
    sets = {name: load_items(synthetic(name), SyntheticConfig()) for name in ("forget", "retain", "holdout")}
    model_dir = demo / "unlearned" / "model"
    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    reference = read_json(demo / "eval-retain" / "results.json")
    start = time.perf_counter()
    results = evaluate_tofu(model, tok, sets, PromptConfig(), reference, batch_size=16,
                            max_new_tokens=max_new_tokens, max_length=256)
    seconds = time.perf_counter() - start
    values = summary(results)
    print(f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}: "
          f"{sum(len(v) for v in sets.values())} items, {len(results)} metrics in {seconds:.1f} s")
    print(", ".join(f"{k}={v:.4g}" for k, v in values.items() if v is not None))


class Timer:
    """Seconds spent in each scoring function the suite calls."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        for name in ("score_answers", "multi_answer_nll", "generate"):
            setattr(tofu, name, self.wrap(name, getattr(scoring, name)))

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            return out

        return timed


def compare_values(results: dict, path: Path) -> None:
    """Save each metric's per-item values to ``path``, or, when it holds another version's, print the
    largest relative difference per metric (what a change of the scoring code moved)."""
    item = lambda v: v.get("value") if isinstance(v, dict) else v
    values = {k: {i: item(v) for i, v in (r.get("value_by_index") or {}).items()} | {"agg": r.get("agg_value")}
              for k, r in results.items()}
    if not path.is_file():
        path.write_text(json.dumps(values))
        print(f"values saved to {path}; run again with the other code to compare")
        return
    before = json.loads(path.read_text())
    worst = {}
    for metric, items in values.items():
        pairs = [(v, before[metric].get(i)) for i, v in items.items() if isinstance(v, float)]
        worst[metric] = max((abs(a - b) / max(abs(b), 1e-30) for a, b in pairs if isinstance(b, float)), default=0.0)
    print("largest relative difference against", path, "(per-item values and aggregates):")
    for metric, diff in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"  {metric}: {diff:.2e}")


def epoch_evaluation(workdir: Path, values: Path | None) -> None:
    model_dir = workdir / "full" / "model"
    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    sets = {name: load_items(DataSource(str(TOFU / f"{file}.json")), SyntheticConfig())
            for name, file in EPOCH_SETS.items()}
    rule = SelectionRule()
    runs = {}
    for scope, metrics in (("all", None), ("selection", {rule.metric, rule.utility, UTILITY_FALLBACK})):
        timer = Timer()
        start = time.perf_counter()
        results = evaluate_tofu(model, tok, sets, PromptConfig(), None, batch_size=32, max_new_tokens=128,
                                max_length=256, metrics=metrics)
        runs[scope] = (time.perf_counter() - start, dict(timer.seconds), results)
    whole, lean = runs["all"][2], runs["selection"][2]
    exact = all(json.dumps(whole[k], sort_keys=True) == json.dumps(lean[k], sort_keys=True) for k in lean)
    print(f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"{', '.join(f'{k} {len(v)}' for k, v in sets.items())} items")
    print("| evaluated after each epoch | metrics | wall (s) | teacher-forced answers (s) | wrong answers (s) | "
          "generation (s) |\n|---|---|---|---|---|---|")
    for scope, (seconds, parts, results) in runs.items():
        print(f"| {scope} | {len(results)} | {seconds:.1f} | {parts.get('score_answers', 0):.1f} | "
              f"{parts.get('multi_answer_nll', 0):.1f} | {parts.get('generate', 0):.1f} |")
    print(f"every metric of the selection scope equals the whole suite's, value for value: {exact}")
    if values:
        compare_values(whole, values)
    a, lean_s = runs["all"][0], runs["selection"][0]
    for best in (1, 3, 5):  # epochs of a 5-epoch trial that become the best so far get the rest of the suite
        print(f"a 5-epoch trial with {best} new best epoch(s): {5 * a / (5 * lean_s + best * (a - lean_s)):.2f}x "
              "cheaper")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, nargs="?", help="a `palu demo` output folder")
    p.add_argument("--tofu-mini", type=Path, help="a TOFU-mini working folder with its full model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--values", type=Path, help="with --tofu-mini: save the whole suite's values here, or compare with "
                                               "those saved by another version of the code")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.tofu_mini:
        epoch_evaluation(args.tofu_mini, args.values)
    elif args.demo:
        demo_suite(args.demo, args.max_new_tokens)
    else:
        p.error("give a demo folder or --tofu-mini WORKDIR")


if __name__ == "__main__":
    main()
