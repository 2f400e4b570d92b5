"""The full TOFU suite (docs/metrics.md) on whichever sets are given, batched.

- ``forget``: Prob, ROUGE, truth ratio, forget quality, exact memorization, extraction strength.
- ``retain``, ``real_authors``, ``world_facts``: Prob, ROUGE, truth ratio (the latter two also the
  normalised Prob); all three together give model utility.
- ``holdout`` (with forget): the MIA AUCs (loss, zlib, Min-k%, Min-k%++) and privleak.

Forget quality and privleak compare with the retain model: pass the results of this function on
the retain model (or the JSON they were saved to, or an open-unlearning TOFU_EVAL.json) as
``retain_reference``; without it they are None (unavailable), never a made-up 0.

``metrics`` limits the work to what some metrics need (the evaluation after every unlearning
epoch computes only what its selection rule reads); each value is then the one the full suite
gives, from the same calls on the same batches.

The scores keep open-unlearning's 1e-10 guards (``OPEN_UNLEARNING_EPS``), so that given the same
per-item losses palu's aggregates are the reference implementation's to the last digit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from functools import partial

import numpy as np

from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.eval.fluency import fluency
from palu.eval.metrics import (
    MODEL_UTILITY_PARTS,
    OPEN_UNLEARNING_EPS,
    answer_prob,
    extraction_strength,
    forget_quality,
    mean_result,
    mia_result,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    normalised_prob,
    privleak,
    result,
    rouge_result,
    truth_ratio,
    truth_ratio_result,
    zlib_score,
)
from palu.eval.scoring import AnswerScores, generate, multi_answer_nll, score_answers

SETS = ("forget", "retain", "real_authors", "world_facts", "holdout")
PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}  # metric-name prefixes
GENERAL = ("real_authors", "world_facts")  # general knowledge: truth ratio against the answer itself
MIA_K = 0.4
# The suite's parts: forget answers (Prob, EM, ES), forget generations (ROUGE, fluency), forget truth
# ratio (and forget quality), the MIAs (and privleak), and each of the other sets whole.
PARTS = ("forget_answers", "forget_generations", "forget_truth", "mia", "retain", *GENERAL)
QA_PARTS = ("prob", "rouge", "truth")


def parts_for(metrics: Collection[str] | None) -> set[str]:
    """The parts of the suite that give ``metrics`` (all parts for None; names of other suites are ignored)."""
    if metrics is None:
        return set(PARTS)
    parts = set()
    for name in metrics:
        if name == "model_utility":
            parts |= {"retain", *GENERAL}
        elif name in ("forget_truth_ratio", "forget_quality"):
            parts.add("forget_truth")
        elif name == "forget_Q_A_ROUGE" or name.startswith("fluency_"):
            parts.add("forget_generations")
        elif name.startswith("mia_") or name == "privleak":
            parts.add("mia")
        elif name in ("forget_Q_A_Prob", "exact_memorization", "extraction_strength"):
            parts.add("forget_answers")
        else:
            parts |= {split for split, prefix in PREFIX.items() if split != "forget" and name.startswith(f"{prefix}_")}
    return parts


def evaluate_tofu(model, tokenizer, sets: Mapping[str, Sequence[QAItem]], prompt: PromptConfig,
                  retain_reference: Mapping | None = None, batch_size: int = 16, max_new_tokens: int = 200,
                  max_length: int = 512, progress: bool = False, fluency_model=None,
                  metrics: Collection[str] | None = None) -> dict[str, dict]:
    """Every TOFU metric the given ``sets`` (names in ``SETS``) allow, or only the parts of the suite
    that give ``metrics`` (see :func:`parts_for`); metric name -> result.

    The forget generations' fluency is measured too (:mod:`palu.eval.fluency`); its token
    probability needs ``fluency_model``, a model sharing ``tokenizer`` (the retain model, say).

    Truth ratios need wrong answers on the items (``perturbed_answers``, and ``paraphrased_answer``
    on forget and retain); a split without them reports its truth ratio as unavailable.
    """
    unknown = sorted(set(sets) - set(SETS))
    if unknown:
        raise PaluError(f"unknown evaluation set {unknown[0]!r}; valid sets: {', '.join(SETS)}.")
    if "holdout" in sets and "forget" not in sets:
        raise PaluError("the holdout set serves the membership-inference metrics against the forget set; "
                        "give a forget set too.")
    opts = dict(batch_size=batch_size, max_length=max_length, progress=progress)
    score = partial(score_answers, model, tokenizer, prompt=prompt, **opts)
    multi = partial(multi_answer_nll, model, tokenizer, prompt=prompt, **opts)
    gen = partial(generate, model, tokenizer, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size,
                  progress=progress)

    parts = parts_for(metrics)
    mia = "holdout" in sets and "mia" in parts
    results: dict[str, dict] = {}
    if "forget" in sets:
        forget_parts = {"prob"} if "forget_answers" in parts else set()
        forget_parts |= {"rouge"} if "forget_generations" in parts else set()
        forget_parts |= {"truth"} if "forget_truth" in parts else set()
        forget = score(sets["forget"], vocab_stats="holdout" in sets) if "prob" in forget_parts or mia else None
        results.update(_qa_metrics("forget", sets["forget"], forget, score, multi, gen, forget_parts))
        if "forget_answers" in parts:
            results["exact_memorization"] = mean_result("exact_memorization", forget.accuracy)
            results["extraction_strength"] = mean_result("extraction_strength",
                                                         [extraction_strength(t.hit) for t in forget.tokens])
        if "forget_generations" in parts:
            generations = [v["generation"] for v in results["forget_Q_A_ROUGE"]["value_by_index"].values()]
            results.update(fluency(generations, fluency_model, tokenizer, batch_size, progress=progress))
    for name in ("retain", *GENERAL):
        if name in sets and name in parts:
            results.update(_qa_metrics(name, sets[name], score(sets[name]), score, multi, gen))
    if mia:
        on_forget = mia_scores(sets["forget"], forget)
        on_holdout = mia_scores(sets["holdout"], score(sets["holdout"], vocab_stats=True))
        for name, scores in on_forget.items():
            results[name] = mia_result(name, scores, on_holdout[name])
    add_comparisons(results, retain_reference)
    return results


def _qa_metrics(split: str, items: Sequence[QAItem], scores: AnswerScores | None, score, multi, gen,
                parts: Collection[str] = QA_PARTS) -> dict[str, dict]:
    """A QA set's Prob (with ``scores``, the answers' scores), ROUGE and truth ratio: the ``parts`` asked.
    General-knowledge sets are always scored whole: their normalised Prob needs the wrong answers."""
    p = PREFIX[split]
    general = split in GENERAL
    out = {}
    paraphrase, wrong = _wrong_nll(items, multi, with_paraphrase=not general) if "truth" in parts or general \
        else (None, None)
    if "prob" in parts:
        prob = answer_prob(scores.nll)
        out[f"{p}_Q_A_Prob"] = mean_result(f"{p}_Q_A_Prob", prob)
        if general:
            norm = None if wrong is None else normalised_prob(prob, [answer_prob(w) for w in wrong],
                                                              OPEN_UNLEARNING_EPS)
            out[f"{p}_Q_A_Prob_normalised"] = mean_result(f"{p}_Q_A_Prob_normalised", norm)
    if "rouge" in parts:
        out[f"{p}_Q_A_ROUGE"] = rouge_result(f"{p}_Q_A_ROUGE", gen(items), [item.answer for item in items])
    if "truth" in parts:
        tr = None
        if wrong is not None:
            tr = truth_ratio(scores.nll if general else paraphrase, wrong, OPEN_UNLEARNING_EPS)
        out[f"{p}_truth_ratio"] = truth_ratio_result(f"{p}_truth_ratio", tr, OPEN_UNLEARNING_EPS)
    return out


def _wrong_nll(items: Sequence[QAItem], multi, with_paraphrase: bool):
    """The paraphrases' NLLs (``with_paraphrase``, else None) and the wrong answers' NLLs per item, scored
    together so each prompt runs once; (None, None) when no item has them all.

    Items are all-or-none: a split where only some items have them is refused rather than silently shrunk.
    """
    has = [bool(item.perturbed_answers) and (bool(item.paraphrased_answer) or not with_paraphrase) for item in items]
    if not any(has):
        return None, None
    if not all(has):
        first = items[has.index(False)]
        what = "no paraphrased or perturbed answers" if with_paraphrase else "no perturbed answers"
        raise PaluError(f"{first.source or f'item {has.index(False)}'}: {what}, while {sum(has)} of {len(items)} "
                        "items have them; give every item of the split them, or none.")
    if not with_paraphrase:
        return None, multi(items, answers=[item.perturbed_answers for item in items])
    nll = multi(items, answers=[[item.paraphrased_answer, *item.perturbed_answers] for item in items])
    return np.array([n[0] for n in nll]), [n[1:] for n in nll]


def mia_scores(items: Sequence[QAItem], scores: AnswerScores, k: float = MIA_K) -> dict[str, list[float]]:
    """Per-item MIA scores (higher = less like training data), by metric name.

    zlib compresses the answer text itself; open-unlearning compresses the answer decoded from its
    tokens, which can differ by a byte or two (6 of the 200 forget05 answers under Llama-2, all
    opening with a quote).
    """
    return {
        "mia_loss": [float(x) for x in scores.nll],
        "mia_zlib": [zlib_score(x, item.answer) for x, item in zip(scores.nll, items)],
        "mia_min_k": [min_k_score(t.logprob, k) for t in scores.tokens],
        "mia_min_k_plus_plus": [min_k_plus_plus_score(t.logprob, t.mu, t.sigma2, k) for t in scores.tokens],
    }


def add_comparisons(results: dict[str, dict], retain_reference: Mapping | None) -> None:
    """Add the metrics computed from other results: forget quality and privleak against the retain
    model's results (None without them), and model utility once its three sets are there."""
    reference = retain_reference or {}
    if "forget_truth_ratio" in results:
        ref = reference.get("forget_truth_ratio")
        results["forget_quality"] = result("forget_quality", forget_quality(
            item_values(results["forget_truth_ratio"]), None if ref is None else item_values(ref)))
    if "mia_min_k" in results:
        ref = reference.get("mia_min_k")
        results["privleak"] = result("privleak", privleak(results["mia_min_k"]["agg_value"],
                                                          None if ref is None else ref["agg_value"],
                                                          OPEN_UNLEARNING_EPS))
    if all(name in results for name in MODEL_UTILITY_PARTS):
        parts = {name: results[name]["agg_value"] for name in MODEL_UTILITY_PARTS}
        results["model_utility"] = result("model_utility", model_utility(parts), parts)


def item_values(res: Mapping) -> list[float]:
    """Per-item values of a result: palu's plain numbers or open-unlearning's ``{"score": x}``."""
    return [v["score"] if isinstance(v, Mapping) else v for v in res["value_by_index"].values()]
