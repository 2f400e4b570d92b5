"""Metric definitions and pure functions on numbers (no model), following docs/tofu-metrics.md.

Every metric carries its direction in a registry, because unlearning users keep misreading which
way is good, and every result has one shape, ``{"agg_value", "value_by_index", "higher_is_better"}``,
so suites, reports and reference files can treat all metrics alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import ks_2samp

from palu.errors import PaluError


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name, which way is good, and what it measures (shown in reports)."""

    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the registry; a second metric of the same name is a bug, so it is refused."""
    if spec.name in METRICS:
        raise PaluError(f"metric {spec.name!r} is already registered; pick another name.")
    METRICS[spec.name] = spec
    return spec


def get_metric(name: str) -> MetricSpec:
    try:
        return METRICS[name]
    except KeyError:
        raise PaluError(f"unknown metric {name!r}; valid names: {', '.join(sorted(METRICS))}.") from None


for _spec in (
    MetricSpec("forget_Q_A_Prob", False, "mean P(answer) on the forget split (length-normalised)"),
    MetricSpec("forget_Q_A_ROUGE", False, "mean ROUGE-L recall of greedy answers on the forget split"),
    MetricSpec("forget_truth_ratio", True, "mean min(TR, 1/TR) on the forget split; 1 = no preference "
                                           "between paraphrased and perturbed answers"),
    MetricSpec("forget_quality", True, "KS-test p-value of forget truth ratios against the retain model's"),
    MetricSpec("exact_memorization", False, "mean fraction of forget answer tokens the model predicts "
                                            "exactly under teacher forcing"),
    MetricSpec("retain_Q_A_Prob", True, "mean P(answer) on the retain split (length-normalised)"),
    MetricSpec("retain_Q_A_ROUGE", True, "mean ROUGE-L recall of greedy answers on the retain split"),
    MetricSpec("retain_truth_ratio", True, "mean max(0, 1 - TR) on the retain split; prefers the paraphrased "
                                           "answer over perturbed ones"),
):
    register(_spec)


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


def answer_prob(mean_nll) -> np.ndarray:
    """``P(a) = exp(-L(a))``: the length-normalised probability of an answer from its mean token NLL."""
    return np.exp(-np.asarray(mean_nll, dtype=np.float64))


def truth_ratio(correct_nll, wrong_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-item ``TR = P_wrong / P_correct`` with ``P_wrong = exp(-mean_j L(w_j))``.

    ``wrong_nll[i]`` holds item i's wrong-answer mean NLLs (their number may vary per item).
    Computed as ``exp(L_correct - mean_j L(w_j))``, equal but free of underflow for unlikely answers.
    """
    correct = np.asarray(correct_nll, dtype=np.float64)
    if len(wrong_nll) != len(correct):
        raise PaluError(f"truth ratio: {len(correct)} correct answers but {len(wrong_nll)} lists of wrong answers.")
    if any(len(w) == 0 for w in wrong_nll):
        raise PaluError("truth ratio: every item needs at least one wrong answer.")
    wrong_mean = np.array([np.mean(np.asarray(w, dtype=np.float64)) for w in wrong_nll])
    return np.exp(correct - wrong_mean)


def aggregate_forget_truth_ratio(tr) -> float | None:
    """``mean(min(TR, 1/TR))``: 1 when the model cannot tell right from wrong, as a model that never saw the data."""
    tr = np.asarray(tr, dtype=np.float64)
    return mean_or_none(np.minimum(tr, 1.0 / tr))


def aggregate_retain_truth_ratio(tr) -> float | None:
    """``mean(max(0, 1 - TR))``: high when the model prefers the correct answer to the wrong ones."""
    tr = np.asarray(tr, dtype=np.float64)
    return mean_or_none(np.maximum(0.0, 1.0 - tr))


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


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each generation against its reference (how much of the reference it reproduces)."""
    if len(generations) != len(references):
        raise PaluError(f"ROUGE: {len(generations)} generations but {len(references)} references.")
    scorer = _rouge_scorer()
    return [scorer.score(ref, gen)["rougeL"].recall for gen, ref in zip(generations, references)]

