"""Fluency of generations, offline: does an unlearned model still write text, or gibberish and loops?

The paper's "Fluency" is the gibberish classifier's "clean" probability, but that classifier is a
hub download; these measures need nothing but the generations (and a scoring model):

- ``fluency_token_prob``: per generation, ``exp`` of the mean token log-probability of the text
  under a scoring model (the retain model is the natural one: fluent and unaware of the forget
  set), i.e. 1 / perplexity, in (0, 1]. Garbage scores near 0. A model judges its own loops likely,
  which is why the repetition measures stand beside it.
- ``fluency_distinct_2``: per generation, distinct word bigrams / all word bigrams; 1 = no bigram
  repeats, low = repetitive.
- ``fluency_repetition``: per generation, the length in words of its longest word n-gram that occurs
  twice (the occurrences may overlap), over its number of words; near 1 = stuck in a loop.
- ``fluency_gibberish``: the classifier's "clean" probability, computed only when the classifier is
  on this machine (a folder, or a copy in the local Hugging Face cache); it is never downloaded.
  Otherwise its result is unavailable (``agg_value`` None) and says why under ``"message"``.

Words are lower-cased runs of letters and digits. A generation without the tokens or words a
measure needs (one word has no bigram) gets None there, which the mean leaves out.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

from palu.eval.metrics import MetricSpec, mean_result, register, result
from palu.eval.scoring import text_logprobs

log = logging.getLogger(__name__)

_REPORTED: set[str] = set()
GIBBERISH_DETECTOR = "madhurjindal/autonlp-Gibberish-Detector-492513457"
CLEAN_LABEL = "clean"
WORD = re.compile(r"\w+")


class Unavailable(Exception):
    """The classifier cannot be used here; the message says why and what to do."""


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def distinct_2(text: str) -> float | None:
    """Distinct word bigrams over all word bigrams; None for fewer than two words."""
    tokens = words(text)
    bigrams = list(zip(tokens, tokens[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def repetition(text: str) -> float | None:
    """Length of the longest word n-gram occurring at least twice, over the number of words; None without words.

    An n-gram that repeats implies its shorter prefixes repeat too, so the longest length is found
    by bisection, each step one pass over the n-grams of that length.
    """
    tokens = words(text)
    if not tokens:
        return None

    def repeats(n: int) -> bool:
        seen = set()
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i : i + n])
            if gram in seen:
                return True
            seen.add(gram)
        return False

    low, high = 0, len(tokens) - 1  # the longest repeat is at least `low` and at most `high` words
    while low < high:
        mid = (low + high + 1) // 2
        if repeats(mid):
            low = mid
        else:
            high = mid - 1
    return low / len(tokens)


def token_prob(logprobs) -> float | None:
    """``exp(mean log p)`` over a text's scored tokens (1 / perplexity); None without tokens."""
    return math.exp(sum(logprobs) / len(logprobs)) if len(logprobs) else None


register(MetricSpec("fluency_token_prob", True, "mean over generations of exp(mean token log-prob) under a scoring "
                    "model, i.e. 1 / perplexity, in (0, 1]"))
register(MetricSpec("fluency_distinct_2", True, "mean share of distinct word bigrams in a generation; "
                    "low = repetitive"))
register(MetricSpec("fluency_repetition", False, "mean share of a generation's words spanned by its longest word "
                    "n-gram that occurs twice; near 1 = a generation stuck in a loop"))
register(MetricSpec("fluency_gibberish", True, "mean probability of the 'clean' class of the gibberish classifier "
                    "(the paper's Fluency)"))


def fluency(generations: Sequence[str], scoring_model=None, tokenizer=None, batch_size: int = 16,
            classifier: str = GIBBERISH_DETECTOR, progress: bool = False) -> dict[str, dict]:
    """The fluency results of ``generations``; metric name -> result.

    ``fluency_token_prob`` needs ``scoring_model`` and its ``tokenizer`` and is unavailable without
    them; ``classifier`` is a hub id or a folder, looked up locally only.
    """
    generations = list(generations)
    results = {
        "fluency_distinct_2": mean_result("fluency_distinct_2", [distinct_2(g) for g in generations]),
        "fluency_repetition": mean_result("fluency_repetition", [repetition(g) for g in generations]),
    }
    probs = None
    if scoring_model is not None and tokenizer is not None:
        probs = [token_prob(lp) for lp in text_logprobs(scoring_model, tokenizer, generations, batch_size,
                                                         progress=progress)]
    results["fluency_token_prob"] = mean_result("fluency_token_prob", probs)
    try:
        results["fluency_gibberish"] = mean_result("fluency_gibberish",
                                                   gibberish_clean(generations, classifier, batch_size))
    except Unavailable as e:
        if str(e) not in _REPORTED:  # once per process, not once per evaluation
            _REPORTED.add(str(e))
            log.info("fluency_gibberish is unavailable: %s", e)
        results["fluency_gibberish"] = {**result("fluency_gibberish", None), "message": str(e)}
    return results


def gibberish_clean(generations: Sequence[str], classifier: str = GIBBERISH_DETECTOR,
                    batch_size: int = 16) -> list[float]:
    """The classifier's "clean" probability per generation; raises ``Unavailable`` when it is not here."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    folder = _local_copy(classifier)
    try:
        # a classifier is never trusted to run its own code: it is an optional extra
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True,
                                                                   trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise Unavailable(f"cannot load the classifier from {folder} ({type(e).__name__}: {e}).") from None
    labels = {str(label).lower() for label in model.config.id2label.values()}
    if CLEAN_LABEL not in labels:
        raise Unavailable(f"the classifier {classifier} has no '{CLEAN_LABEL}' class "
                          f"(it has: {', '.join(sorted(labels))}).")
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    outputs = classify(list(generations), batch_size=batch_size, truncation=True)
    return [next(o["score"] for o in out if o["label"].lower() == CLEAN_LABEL) for out in outputs]


def _local_copy(classifier: str) -> Path:
    """``classifier`` as a folder on this machine: itself, or its snapshot in the local hub cache.

    Looked up in the cache by hand: ``from_pretrained`` on a hub id probes the hub even with
    ``local_files_only`` (for adapter files), which offline costs retries, not an error at once.
    """
    if Path(classifier).expanduser().is_dir():
        return Path(classifier).expanduser()
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(classifier, "config.json")
    except ValueError:  # not a valid hub id either
        cached = None
    if not isinstance(cached, str):
        raise Unavailable(f"the classifier {classifier} is not on this machine (not a folder, not in the Hugging Face "
                          "cache) and is never downloaded here; download it while online to get this metric.")
    return Path(cached).parent
