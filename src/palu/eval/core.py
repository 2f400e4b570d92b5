"""The core TOFU metrics on a forget and a retain split (docs/tofu-metrics.md).

Forget quality needs the retain model's per-item forget truth ratios: pass the results of this same
function on the retain model (or the JSON they were saved to) as ``retain_reference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.eval.metrics import (
    aggregate_forget_truth_ratio,
    aggregate_retain_truth_ratio,
    answer_prob,
    forget_quality,
    mean_or_none,
    result,
    rouge_l_recall,
    truth_ratio,
)
from palu.eval.scoring import answer_nll, generate, multi_answer_nll


def evaluate_core(model, tokenizer, forget: list[QAItem], retain: list[QAItem], prompt: PromptConfig,
                  retain_reference: dict | None = None, batch_size: int = 16, max_new_tokens: int = 200,
                  max_length: int = 512, progress: bool = False) -> dict[str, dict]:
    """Forget and retain Q_A_Prob, Q_A_ROUGE and truth ratio, forget quality and exact memorization.

    Truth ratios need ``paraphrased_answer`` and ``perturbed_answers`` on the items; without them the
    truth-ratio metrics (and forget quality) are reported with ``agg_value`` None.
    """
    score = dict(batch_size=batch_size, max_length=max_length, progress=progress)
    results: dict[str, dict] = {}

    f_nll, f_acc = answer_nll(model, tokenizer, forget, prompt, **score)
    results.update(_prob_and_rouge("forget", model, tokenizer, forget, prompt, f_nll, max_new_tokens, score))
    f_tr = _truth_ratios(model, tokenizer, forget, prompt, score)
    results["forget_truth_ratio"] = _tr_result("forget_truth_ratio", f_tr, aggregate_forget_truth_ratio)
    reference = (retain_reference or {}).get("forget_truth_ratio")
    ref_values = list(reference["value_by_index"].values()) if reference else None
    results["forget_quality"] = result("forget_quality", None if f_tr is None else forget_quality(f_tr, ref_values))
    results["exact_memorization"] = result("exact_memorization", mean_or_none(f_acc), f_acc)

    r_nll, _ = answer_nll(model, tokenizer, retain, prompt, **score)
    results.update(_prob_and_rouge("retain", model, tokenizer, retain, prompt, r_nll, max_new_tokens, score))
    r_tr = _truth_ratios(model, tokenizer, retain, prompt, score)
    results["retain_truth_ratio"] = _tr_result("retain_truth_ratio", r_tr, aggregate_retain_truth_ratio)
    return results


def summary(results: dict[str, dict]) -> dict[str, float | None]:
    """Metric name -> aggregate value (None where unavailable)."""
    return {name: res["agg_value"] for name, res in results.items()}


def _prob_and_rouge(split: str, model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig, nll: np.ndarray,
                    max_new_tokens: int, score: dict) -> dict[str, dict]:
    prob = answer_prob(nll)
    generations = generate(model, tokenizer, items, prompt, max_new_tokens=max_new_tokens,
                           batch_size=score["batch_size"], progress=score["progress"])
    truths = [item.answer for item in items]
    recall = rouge_l_recall(generations, truths)
    per_item = [{"rougeL_recall": r, "generation": g, "ground_truth": t} for r, g, t in zip(recall, generations, truths)]
    return {
        f"{split}_Q_A_Prob": result(f"{split}_Q_A_Prob", mean_or_none(prob), prob),
        f"{split}_Q_A_ROUGE": result(f"{split}_Q_A_ROUGE", mean_or_none(recall), per_item),
    }


def _truth_ratios(model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig, score: dict) -> np.ndarray | None:
    """Per-item TR (correct = paraphrased answer, wrong = perturbed answers); None when no item has them.

    Items are all-or-none: a split where only some items have them is refused rather than silently shrunk.
    """
    has = [bool(item.paraphrased_answer) and bool(item.perturbed_answers) for item in items]
    if not any(has):
        return None
    if not all(has):
        first = items[has.index(False)]
        raise PaluError(
            f"{first.source or f'item {has.index(False)}'}: no paraphrased or perturbed answers, while "
            f"{sum(has)} of {len(items)} items have both; give every item of the split both, or none."
        )
    correct, _ = answer_nll(model, tokenizer, items, prompt, answers=[item.paraphrased_answer for item in items],
                            **score)
    wrong = multi_answer_nll(model, tokenizer, items, prompt, [item.perturbed_answers for item in items], **score)
    return truth_ratio(correct, wrong)


def _tr_result(name: str, tr: np.ndarray | None, aggregate) -> dict:
    return result(name, None) if tr is None else result(name, aggregate(tr), tr)
