"""Metric definitions and pure functions on numbers (no model), as docs/metrics.md describes them.

Every metric declares, beside the code that computes it, its direction and how its aggregate is
formed, because unlearning users keep misreading which way is good; every result has one shape,
``{"agg_value", "value_by_index", "higher_is_better"}``, so suites, reports and reference files
can treat all metrics alike.

open-unlearning (the reference implementation) adds ``OPEN_UNLEARNING_EPS`` to the denominators of
the truth ratio, its forget aggregate, the normalised probability and privleak. The functions take
it as ``eps`` (default 0, the plain formulas); palu's suites pass it so that their numbers are
the reference's to the last digit (without it, on the shipped Llama-2 logs, aggregates differ by up
to 6e-8 relatively: world-facts answers are unlikely, so 1e-10 weighs on them).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import hmean, ks_2samp

from palu.errors import PaluError
from palu.registry import Registry

OPEN_UNLEARNING_EPS = 1e-10


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name, which way is good, what it measures (shown in reports) and how it is aggregated.

    ``higher_is_better`` is None for a metric whose ideal lies in between (privleak: 0, the retain
    model's level); the description says where. ``aggregation`` says how ``agg_value`` is formed:
    the mean of the per-item values (most metrics), a mean of a function of them (truth ratios), or
    a statistic of the whole set ("KS p-value", "AUC", "relative AUC gap", "harmonic mean").
    """

    name: str
    higher_is_better: bool | None
    description: str
    aggregation: str = "mean"


# Fluency, MUSE and open-unlearning metrics are declared in their modules, which not every reader imports.
METRICS: Registry[MetricSpec] = Registry(
    "metric", sources=("palu.eval.fluency", "palu.eval.muse", "palu.eval.open_unlearning"), sort=True)


def register(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the registry; a second metric of the same name is a bug, so it is refused."""
    return METRICS.add(spec.name, spec)


def get_metric(name: str) -> MetricSpec:
    return METRICS[name]


# TOFU's QA splits: metric prefix, what the descriptions call them, and whether a high score is good there.
_QA_SPLITS = (("forget", "the forget split", False), ("retain", "the retain split", True),
              ("ra", "real authors", True), ("wf", "world facts", True))


def result(name: str, agg_value: float | None, value_by_index: Mapping[int, object] | Sequence | None = None) -> dict:
    """The one result shape. ``value_by_index`` is a sequence (indexed 0..n-1) or an index -> value map."""
    if value_by_index is None:
        value_by_index = {}
    elif not isinstance(value_by_index, Mapping):
        value_by_index = dict(enumerate(value_by_index))
    return {
        "agg_value": None if agg_value is None else float(agg_value),
        "value_by_index": {str(i): _plain(v) for i, v in value_by_index.items()},
        "higher_is_better": get_metric(name).higher_is_better,
    }


def _plain(value):
    """numpy scalars -> Python numbers, so results are JSON-serialisable as they are."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def mean_or_none(values: Iterable[float]) -> float | None:
    """Mean of ``values``; None (unavailable) for no values rather than NaN."""
    arr = np.asarray(list(values), dtype=np.float64)
    return float(arr.mean()) if arr.size else None


def mean_result(name: str, values: Iterable[float | None] | None) -> dict:
    """A result aggregated by the mean of its per-item values; None (unavailable) for no values.

    None items (open-unlearning marks items it could not score so) stay in the per-item values
    but out of the mean, as in the reference.
    """
    if values is None:
        return result(name, None)
    values = list(values)
    return result(name, mean_or_none(v for v in values if v is not None), values)


def answer_prob(mean_nll) -> np.ndarray:
    """``P(a) = exp(-L(a))``: the length-normalised probability of an answer from its mean token NLL."""
    return np.exp(-np.asarray(mean_nll, dtype=np.float64))


for _prefix, _what, _higher in _QA_SPLITS:
    register(MetricSpec(f"{_prefix}_Q_A_Prob", _higher, f"mean P(answer) on {_what} (length-normalised)"))


def _check_wrong(n: int, wrong: Sequence[Sequence[float]], what: str) -> None:
    if len(wrong) != n:
        raise PaluError(f"{what}: {n} correct answers but {len(wrong)} lists of wrong answers.")
    if any(len(w) == 0 for w in wrong):
        raise PaluError(f"{what}: every item needs at least one wrong answer.")


def truth_ratio(correct_nll, wrong_nll: Sequence[Sequence[float]], eps: float = 0.0) -> np.ndarray:
    """Per-item ``TR = P_wrong / P_correct`` with ``P_wrong = exp(-mean_j L(w_j))``.

    ``wrong_nll[i]`` holds item i's wrong-answer mean NLLs (their number may vary per item).
    Without ``eps`` it is computed as ``exp(L_correct - mean_j L(w_j))``, equal but free of underflow
    for unlikely answers; with it, as open-unlearning does, ``P_wrong / (P_correct + eps)``.
    """
    correct = np.asarray(correct_nll, dtype=np.float64)
    _check_wrong(len(correct), wrong_nll, "truth ratio")
    wrong_mean = np.array([np.mean(np.asarray(w, dtype=np.float64)) for w in wrong_nll])
    if eps:
        return np.exp(-wrong_mean) / (np.exp(-correct) + eps)
    return np.exp(correct - wrong_mean)


def aggregate_forget_truth_ratio(tr, eps: float = 0.0) -> float | None:
    """``mean(min(TR, 1/TR))``: 1 when the model cannot tell right from wrong, as a model that never saw the data."""
    tr = np.asarray(tr, dtype=np.float64)
    return mean_or_none(np.minimum(tr, 1.0 / (tr + eps)))


def aggregate_retain_truth_ratio(tr) -> float | None:
    """``mean(max(0, 1 - TR))``: high when the model prefers the correct answer to the wrong ones."""
    tr = np.asarray(tr, dtype=np.float64)
    return mean_or_none(np.maximum(0.0, 1.0 - tr))


def truth_ratio_result(name: str, tr, eps: float = 0.0) -> dict:
    """The truth-ratio result of a split: two-sided aggregate on the forget split, one-sided elsewhere.

    ``tr`` None (the split has no wrong answers) gives an unavailable result.
    """
    if tr is None:
        return result(name, None)
    agg = aggregate_forget_truth_ratio(tr, eps) if name == "forget_truth_ratio" else aggregate_retain_truth_ratio(tr)
    return result(name, agg, tr)


register(MetricSpec("forget_truth_ratio", True, "mean min(TR, 1/TR) on the forget split; 1 = no preference between "
                    "paraphrased and perturbed answers", "mean of min(TR, 1/TR)"))
register(MetricSpec("retain_truth_ratio", True, "mean max(0, 1 - TR) on the retain split; prefers the paraphrased "
                    "answer over perturbed ones", "mean of max(0, 1 - TR)"))
for _prefix, _what, _ in _QA_SPLITS[2:]:
    register(MetricSpec(f"{_prefix}_truth_ratio", True, f"mean max(0, 1 - TR) on {_what}; prefers the answer over "
                        "wrong ones", "mean of max(0, 1 - TR)"))


def normalised_prob(p_correct, p_wrong: Sequence[Sequence[float]], eps: float = 0.0) -> np.ndarray:
    """Per item ``P(a) / (P(a) + sum_j P(w_j))`` (a sum over wrong answers, not a mean: TOFU's definition)."""
    correct = np.asarray(p_correct, dtype=np.float64)
    _check_wrong(len(correct), p_wrong, "normalised probability")
    wrong_sum = np.array([np.sum(np.asarray(w, dtype=np.float64)) for w in p_wrong])
    return correct / (correct + wrong_sum + eps)


for _prefix, _what, _ in _QA_SPLITS[2:]:
    register(MetricSpec(f"{_prefix}_Q_A_Prob_normalised", True,
                        f"mean P(answer) / (P(answer) + sum P(wrong)) on {_what}"))


# The nine parts of model utility, in open-unlearning's order (the harmonic mean's last bit depends on it).
MODEL_UTILITY_PARTS = (
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_truth_ratio",
    "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_truth_ratio",
    "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_truth_ratio",
)


def model_utility(parts: Mapping[str, float | None]) -> float | None:
    """Harmonic mean of the nine ``MODEL_UTILITY_PARTS``; None unless all nine are available.

    A mean of fewer parts would be another metric, so none is made up.
    """
    values = [parts.get(name) for name in MODEL_UTILITY_PARTS]
    if any(v is None for v in values):
        return None
    return float(hmean(values))


register(MetricSpec("model_utility", True, "harmonic mean of Prob, ROUGE and truth ratio on retain, real authors and "
                    "world facts", "harmonic mean"))


def extraction_strength(hits) -> float:
    """``1 - k/n`` from the teacher-forced hits (argmax == label) of an answer's n scored tokens.

    k is the shortest prefix after which every remaining token is a hit. Deviation from the doc,
    kept for parity with open-unlearning: k is at most n - 1, so an answer whose last token is
    missed scores 1/n, not 0 (the reference's search loop ends there; the retain95 log shows it).
    """
    hits = np.asarray(hits, dtype=bool)
    if hits.size == 0:
        raise PaluError("extraction strength: the answer has no scored tokens.")
    misses = np.flatnonzero(~hits)
    k = 0 if misses.size == 0 else min(int(misses[-1]) + 1, hits.size - 1)
    return 1.0 - k / hits.size


register(MetricSpec("exact_memorization", False, "mean fraction of forget answer tokens the model predicts exactly "
                    "under teacher forcing"))
register(MetricSpec("extraction_strength", False, "mean 1 - k/len over forget answers, k the shortest prefix after "
                    "which teacher forcing reproduces the rest of the answer"))


def _min_k(values: np.ndarray, k: float) -> float:
    """Minus the mean of the lowest ``max(1, int(n * k))`` values (at least one, as the reference)."""
    lowest = np.sort(values)[: max(1, int(len(values) * k))]
    return float(-np.mean(lowest))


def min_k_score(token_logprobs, k: float = 0.4) -> float:
    """Min-k% MIA score: minus the mean of the lowest k-fraction of the answer's token log-probs.

    Sign convention (all MIA scores here, as open-unlearning): higher = less like training data.
    """
    return _min_k(np.asarray(token_logprobs, dtype=np.float64), k)


def min_k_plus_plus_score(token_logprobs, mu, sigma2, k: float = 0.4) -> float:
    """Min-k%++ MIA score: Min-k% on ``(log p - mu) / sigma``, mu and sigma^2 the mean and variance of
    log p under the model's next-token distribution at each position (sigma^2 floored at 1e-6, as
    the reference does against zero variance)."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    sigma = np.sqrt(np.maximum(np.asarray(sigma2, dtype=np.float64), 1e-6))
    return _min_k((lp - np.asarray(mu, dtype=np.float64)) / sigma, k)


def zlib_score(mean_nll: float, text: str) -> float:
    """zlib MIA score: the answer's mean NLL over its zlib-compressed length in bytes."""
    return float(mean_nll) / len(zlib.compress(text.encode("utf-8")))


def mia_auc(forget_scores, holdout_scores) -> float:
    """ROC AUC of MIA scores with forget = label 0, holdout = label 1 (1 = forget items look trained on)."""
    from sklearn.metrics import roc_auc_score

    f, h = list(forget_scores), list(holdout_scores)
    if not f or not h:
        raise PaluError(f"MIA AUC: needs forget and holdout items, got {len(f)} and {len(h)}.")
    return float(roc_auc_score([0] * len(f) + [1] * len(h), f + h))


def mia_result(name: str, forget_scores, holdout_scores) -> dict:
    """An MIA result: the AUC, with per-item scores under ``value_by_index["forget"|"holdout"][i]``."""
    by_set = {part: {str(i): v for i, v in enumerate(scores)}
              for part, scores in (("forget", forget_scores), ("holdout", holdout_scores))}
    return result(name, mia_auc(forget_scores, holdout_scores), by_set)


for _name, _what in (("loss", "loss"), ("zlib", "zlib"), ("min_k", "Min-k% (k=0.4)"),
                     ("min_k_plus_plus", "Min-k%++ (k=0.4)")):
    register(MetricSpec(f"mia_{_name}", False, f"AUC of the {_what} membership-inference score, forget items (label 0) "
                        "against holdout items (label 1); 1 = the forget set looks like training data; below the "
                        "retain model's AUC = over-unlearned", "AUC"))


def privleak(auc: float | None, retain_auc: float | None, eps: float = 0.0) -> float | None:
    """``((1-AUC) - (1-AUC_ret)) / (1-AUC_ret) * 100`` (open-unlearning adds ``eps`` to the denominator).

    None (unavailable) without the retain model's AUC, or where it is undefined (AUC_ret = 1, no eps).
    """
    if auc is None or retain_auc is None:
        return None
    score, ref = 1.0 - auc, 1.0 - retain_auc
    if ref + eps == 0:
        return None
    return (score - ref) / (ref + eps) * 100


register(MetricSpec("privleak", None, "relative Min-k% AUC gap to the retain model, in %; 0 is ideal, -100 = the "
                    "forget set is as exposed as it gets, > 0 = over-unlearned", "relative AUC gap"))


def forget_quality(tr_unlearned, tr_retain) -> float | None:
    """Two-sided KS-test p-value between the unlearned and the retain model's forget truth ratios.

    None (unavailable) without the retain model's values: a p-value of 0 would claim a failure.
    """
    if tr_retain is None:
        return None
    a = np.asarray(list(tr_unlearned), dtype=np.float64)
    b = np.asarray(list(tr_retain), dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return None
    return float(ks_2samp(a, b).pvalue)


register(MetricSpec("forget_quality", True, "KS-test p-value of forget truth ratios against the retain model's",
                    "KS p-value"))


ROUGE_MEASURES = {"recall": "recall", "f1": "fmeasure"}  # name in palu -> field of a rouge_score Score


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(generations: Sequence[str], references: Sequence[str], measure: str = "recall") -> list[float]:
    """ROUGE-L of each generation against its reference (stemming on, as open-unlearning for TOFU and
    MUSE alike): ``recall``, how much of the reference it reproduces (TOFU), or ``f1`` (MUSE)."""
    if len(generations) != len(references):
        raise PaluError(f"ROUGE: {len(generations)} generations but {len(references)} references.")
    if measure not in ROUGE_MEASURES:
        raise PaluError(f"unknown ROUGE measure {measure!r}; valid: {', '.join(ROUGE_MEASURES)}.")
    field = ROUGE_MEASURES[measure]
    scorer = _rouge_scorer()
    return [getattr(scorer.score(ref, gen)["rougeL"], field) for gen, ref in zip(generations, references)]


def rouge_result(name: str, generations: Sequence[str], references: Sequence[str], measure: str = "recall") -> dict:
    """A ROUGE-L result; per item the score (``rougeL_<measure>``) with the generation and its reference."""
    scores = rouge_l(generations, references, measure)
    per_item = [{f"rougeL_{measure}": r, "generation": g, "ground_truth": t}
                for r, g, t in zip(scores, generations, references)]
    return result(name, mean_or_none(scores), per_item)


for _prefix, _what, _higher in _QA_SPLITS:
    register(MetricSpec(f"{_prefix}_Q_A_ROUGE", _higher, f"mean ROUGE-L recall of greedy answers on {_what}"))
