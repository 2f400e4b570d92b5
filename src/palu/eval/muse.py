"""The MUSE-News suite (Shi et al. 2024) as docs/metrics.md describes it, batched.

- ``forget_verbmem_ROUGE`` (VerbMem): the first part of a forget-corpus excerpt as the prompt, a
  greedy continuation (128 new tokens), ROUGE-L F1 against the true continuation.
- ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE`` (KnowMem): questions on the forget / retain
  corpus after the few-shot examples, greedy (32 new tokens, stop at a newline), ROUGE-L F1
  against the answer.
- ``mia_min_k`` and ``privleak`` (PrivLeak): the Min-k% (k = 0.4) AUC of forget (label 0) against
  holdout (label 1) texts, and its gap to the retain model's AUC, exactly as the TOFU privleak.

Prompts are plain text, not chat: the MUSE models are base models trained on the raw corpora. The
prompt formats, few-shot layout included, are MUSE's own, so scores compare with its paper; ROUGE
stems words, as open-unlearning's MUSE does (MUSE's own code does not). KnowMem answers end at the
first newline (MUSE's code cuts at a blank line or "Question"; the few-shot answers are one line
each, so both agree while the model keeps the few-shot layout).

Privleak compares with the retain model: pass the results of this suite on the retain model (or
the JSON they were saved to) as ``retain_reference``; without it privleak is None (unavailable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from palu.data.loaders import HUB_ID
from palu.errors import PaluError
from palu.eval.metrics import MetricSpec, mia_result, min_k_score, register, rouge_result
from palu.eval.scoring import generate_text, text_logprobs
from palu.eval.tofu import MIA_K, add_comparisons
from palu.io import read_json

MUSE_NEWS = "muse-bench/MUSE-News"
VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32


@dataclass
class MuseData:
    """The MUSE evaluation sets; an empty set is not evaluated (its metrics are left out).

    Attributes:
        verbmem: ``{"prompt", "gt"}`` forget-corpus excerpts split into prompt and continuation.
        forget_qa, retain_qa: ``{"question", "answer"}`` on the forget / retain corpus.
        forget_qa_icl, retain_qa_icl: the few-shot examples put before those questions.
        privleak_forget, privleak_holdout: texts the target model was / was not trained on.
    """

    verbmem: list[dict] = field(default_factory=list)
    forget_qa: list[dict] = field(default_factory=list)
    forget_qa_icl: list[dict] = field(default_factory=list)
    retain_qa: list[dict] = field(default_factory=list)
    retain_qa_icl: list[dict] = field(default_factory=list)
    privleak_forget: list[str] = field(default_factory=list)
    privleak_holdout: list[str] = field(default_factory=list)


# MuseData field -> (hub config, hub split, row fields); a local folder holds the same as <config>/<split>.json.
# Privleak rows are bare texts locally and {"text"} rows on the hub.
FILES = {
    "verbmem": ("verbmem", "forget", ("prompt", "gt")),
    "forget_qa": ("knowmem", "forget_qa", ("question", "answer")),
    "forget_qa_icl": ("knowmem", "forget_qa_icl", ("question", "answer")),
    "retain_qa": ("knowmem", "retain_qa", ("question", "answer")),
    "retain_qa_icl": ("knowmem", "retain_qa_icl", ("question", "answer")),
    "privleak_forget": ("privleak", "forget", ("text",)),
    "privleak_holdout": ("privleak", "holdout", ("text",)),
}


def load_muse(path: str = MUSE_NEWS, verbmem_limit: int | None = None, knowmem_limit: int | None = None,
              privleak_limit: int | None = None) -> MuseData:
    """The MUSE sets from a local folder laid out like MUSE-News (knowmem/, verbmem/, privleak/) or a hub id.

    The limits keep the first N items of VerbMem, of each KnowMem QA set and of each privleak set
    (all when None, none when 0) for quick runs; the few-shot examples are always kept whole.
    """
    limits = {"verbmem": verbmem_limit, "forget_qa": knowmem_limit, "retain_qa": knowmem_limit,
              "privleak_forget": privleak_limit, "privleak_holdout": privleak_limit}
    for limit in limits.values():
        if limit is not None and limit < 0:
            raise PaluError(f"MUSE limits must be non-negative numbers of items or None, not {limit}.")
    folder = Path(path).expanduser()
    if folder.is_dir():
        read = _file_reader(folder)
    elif HUB_ID.match(path):
        read = _hub_reader(path)
    else:
        raise PaluError(f"{path}: no such folder; point path at a folder laid out like MUSE-News "
                        f"(knowmem/, verbmem/, privleak/) or at a hub id such as {MUSE_NEWS}.")
    data = {}
    for name, (config, split, keys) in FILES.items():
        rows, where = read(config, split)
        data[name] = [_row(row, keys, f"{where}:{i}") for i, row in enumerate(rows[: limits.get(name)], 1)]
    return MuseData(**data)


def _file_reader(folder: Path):
    def read(config: str, split: str) -> tuple[list, str]:
        path = folder / config / f"{split}.json"
        if not path.is_file():
            raise PaluError(f"{path}: no such file; a MUSE folder holds knowmem/{{forget,retain}}_qa[_icl].json, "
                            "verbmem/forget.json and privleak/{forget,holdout}.json.")
        rows = read_json(path)
        if not isinstance(rows, list):
            raise PaluError(f"{path}: expected a JSON array of rows, got {type(rows).__name__}.")
        return rows, str(path)

    return read


def _hub_reader(hub_id: str):
    import datasets  # slow to import; only the hub path needs it

    def read(config: str, split: str) -> tuple[list, str]:
        where = f"{hub_id}/{config}/{split}"
        try:
            dataset = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # offline, unknown id, config or split: all mean "use a local copy"
            raise PaluError(f"{where}: loading it from the Hugging Face hub failed ({type(e).__name__}: {e}); "
                            "offline, point path at a local folder laid out like MUSE-News (knowmem/, verbmem/, "
                            "privleak/).") from e
        return list(dataset), where

    return read


def _row(row: object, keys: tuple[str, ...], where: str):
    """A validated row: the dict with its text fields, or the bare text of a privleak row."""
    if keys == ("text",) and isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, dict):
        raise PaluError(f"{where}: expected an object with {', '.join(keys)}, got {type(row).__name__}.")
    for key in keys:
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PaluError(f"{where}: '{key}' should be non-empty text, got {value!r:.60}.")
    return row["text"] if keys == ("text",) else {key: row[key] for key in keys}


def knowmem_prompt(question: str, icl: Sequence[Mapping[str, str]]) -> str:
    """MUSE's few-shot QA prompt: each example as ``Question: q\\nAnswer: a`` then a blank line, and the question."""
    shots = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in icl)
    return f"{shots}Question: {question}\nAnswer: "


# Names as open-unlearning's; MUSE's MIA AUC and privleak are TOFU's mia_min_k and privleak.
register(MetricSpec("forget_verbmem_ROUGE", False, "MUSE VerbMem: mean ROUGE-L F1 of greedy continuations of "
                    "forget-corpus excerpts against the true continuations"))
register(MetricSpec("forget_knowmem_ROUGE", False, "MUSE KnowMem: mean ROUGE-L F1 of few-shot greedy answers to "
                    "questions on the forget corpus"))
register(MetricSpec("retain_knowmem_ROUGE", True, "MUSE KnowMem: mean ROUGE-L F1 of few-shot greedy answers to "
                    "questions on the retain corpus"))


def evaluate_muse(model, tokenizer, data: MuseData, retain_reference: Mapping | None = None, batch_size: int = 16,
                  max_length: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Every MUSE metric the non-empty sets of ``data`` allow; metric name -> result.

    ``max_length`` cuts privleak texts to that many tokens (for models with a shorter context than
    the texts' roughly 2,000 Llama tokens); None scores them whole, as MUSE does.
    """
    gen = dict(batch_size=batch_size, progress=progress)
    results: dict[str, dict] = {}
    if data.verbmem:
        continuations = generate_text(model, tokenizer, [d["prompt"] for d in data.verbmem],
                                      VERBMEM_MAX_NEW_TOKENS, **gen)
        results["forget_verbmem_ROUGE"] = rouge_result("forget_verbmem_ROUGE", continuations,
                                                       [d["gt"] for d in data.verbmem], measure="f1")
    knowmem = (("forget", data.forget_qa, data.forget_qa_icl), ("retain", data.retain_qa, data.retain_qa_icl))
    for split, qa, icl in knowmem:
        if qa:
            answers = generate_text(model, tokenizer, [knowmem_prompt(d["question"], icl) for d in qa],
                                    KNOWMEM_MAX_NEW_TOKENS, stop_at_newline=True, **gen)
            name = f"{split}_knowmem_ROUGE"
            results[name] = rouge_result(name, answers, [d["answer"] for d in qa], measure="f1")
    if data.privleak_forget and data.privleak_holdout:
        scores = [[min_k_score(lp, MIA_K) for lp in text_logprobs(model, tokenizer, texts, batch_size, max_length,
                                                                   progress)]
                  for texts in (data.privleak_forget, data.privleak_holdout)]
        results["mia_min_k"] = mia_result("mia_min_k", *scores)
    add_comparisons(results, retain_reference)
    return results
