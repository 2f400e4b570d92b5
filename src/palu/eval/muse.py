"""The MUSE-News suite (Shi et al. 2024) as docs/metrics.md describes it, batched.

- ``forget_verbmem_ROUGE`` (VerbMem): the first part of a forget-corpus excerpt as the prompt, a
  greedy continuation (128 new tokens), ROUGE-L F1 against the true continuation cut to its first
  128 tokens.
- ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE`` (KnowMem): questions on the forget / retain
  corpus after the few-shot examples, greedy (32 new tokens), cut before the first of "\\n\\n",
  "\\nQuestion" or "Question:", ROUGE-L F1 against the answer.
- ``mia_min_k`` and ``privleak`` (PrivLeak): the Min-k% (k = 0.4) AUC of forget (label 0) against
  holdout (label 1) texts, and its gap to the retain model's AUC, exactly as the TOFU privleak.

Prompts are plain text, not chat: the MUSE models are base models trained on the raw corpora. The
prompt formats, few-shot layout included, are MUSE's own. A model that never saw question-answer
text (one trained from scratch on the corpora) can be asked in cloze form instead
(``knowmem_prompt="cloze"``): the question is a passage the model continues, and the answer is
scored against as many words of the continuation as it has. By default every rule is that of MUSE's
released code (ROUGE without stemming), so scores compare with its paper (which shows them x100;
palu reports 0-1); ``rules="open-unlearning"`` scores as open-unlearning's MUSE does instead.

Privleak compares with the retain model: pass the results of this suite on the retain model (or
the JSON they were saved to) as ``retain_reference``; without it privleak is None (unavailable).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from palu.data.loaders import HUB_ID
from palu.errors import PaluError
from palu.eval.metrics import MetricSpec, mean_or_none, mia_result, min_k_score, register, result
from palu.eval.scoring import generate_text, text_logprobs
from palu.eval.tofu import MIA_K, add_comparisons
from palu.io import read_json

MUSE_NEWS = "muse-bench/MUSE-News"
VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")  # a KnowMem answer ends before the first of these


@dataclass(frozen=True)
class Rules:
    """Where MUSE's released code and open-unlearning's MUSE score the same generations differently.

    Attributes:
        stem: ROUGE stems words (only ever raises scores).
        strip: generations and references are stripped of surrounding whitespace.
        cut_gt: the VerbMem reference is ``gt`` cut to its first 128 token ids (BOS counted), not all of it.
        max_tokens: privleak texts are cut to this many tokens after the tokenizer's leading special
            tokens when ``max_length`` is not given (None: scored whole).
    """

    stem: bool
    strip: bool
    cut_gt: bool
    max_tokens: int | None


RULES = {"muse": Rules(stem=False, strip=False, cut_gt=True, max_tokens=None),  # swj0419/muse_bench
         "open-unlearning": Rules(stem=True, strip=True, cut_gt=False, max_tokens=2048)}


@dataclass
class MuseSets:
    """What a MUSE evaluation runs on, and how it scores: shared by ``palu eval suite=muse`` and the
    evaluation after every unlearning epoch (``unlearn.eval_muse``).

    Attributes:
        path: a folder laid out like MUSE-News (knowmem/, verbmem/, privleak/), or a hub id
            (MUSE-News by default).
        retain_reference: results.json of the retain model's MUSE run; privleak needs it and is
            reported as unavailable without it.
        verbmem_limit, knowmem_limit, privleak_limit: keep the first N items of each set, for quick
            runs (0 skips the set's metrics).
        max_length: cut privleak texts to this many tokens (None: as the rules do).
        rules: whose scoring to follow: "muse" (MUSE's released code, the default) or
            "open-unlearning" (stemmed ROUGE, whole VerbMem reference, stripped texts, privleak
            texts cut to 2,048 tokens); see docs/metrics.md. ROUGE is reported 0-1 under both.
        knowmem_prompt: "qa" (MUSE's few-shot ``Question: ... Answer:`` prompt) or "cloze" (the
            question is a passage the model continues, no few-shot examples; the answer is scored
            against the continuation's first as many words as it has): for models that only ever
            saw raw text.
    """

    path: str = MUSE_NEWS
    retain_reference: str | None = None
    batch_size: int = 16
    verbmem_limit: int | None = None
    knowmem_limit: int | None = None
    privleak_limit: int | None = None
    max_length: int | None = None
    rules: Literal["muse", "open-unlearning"] = "muse"
    knowmem_prompt: Literal["qa", "cloze"] = "qa"

    def load(self) -> MuseData:
        return load_muse(self.path, self.verbmem_limit, self.knowmem_limit, self.privleak_limit)


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


def knowmem_prompt_text(question: str, icl: Sequence[Mapping[str, str]]) -> str:
    """MUSE's few-shot QA prompt: each example as ``Question: q\\nAnswer: a`` then a blank line, and the question."""
    shots = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in icl)
    return f"{shots}Question: {question}\nAnswer: "


def cloze_cut(text: str, answer: str) -> str:
    """A cloze continuation cut to as many words as the answer has: what a correct completion says."""
    return " ".join(text.split()[: len(answer.split())])


def knowmem_cut(text: str) -> str:
    """The answer before the first stop string: once the model starts the next few-shot block, it is done."""
    for stop in KNOWMEM_STOPS:
        text = text.split(stop, 1)[0]
    return text


def verbmem_reference(tokenizer, gt: str) -> str:
    """MUSE's VerbMem reference: ``gt`` tokenised as a prompt is (BOS included where the tokenizer adds
    one), cut to 128 ids and decoded, so a 128-token continuation is not scored against a longer text."""
    return tokenizer.decode(tokenizer(gt).input_ids[:VERBMEM_MAX_NEW_TOKENS], skip_special_tokens=True)


def rouge_f1_result(name: str, generations: Sequence[str], references: Sequence[str], stem: bool) -> dict:
    """Per item ROUGE-L F1 (``rougeL_f1``) with the generation and the reference it was scored against."""
    from rouge_score import rouge_scorer  # slow to import

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    scores = [scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generations, references, strict=True)]
    per_item = [{"rougeL_f1": r, "generation": g, "ground_truth": t}
                for r, g, t in zip(scores, generations, references)]
    return result(name, mean_or_none(scores), per_item)


# Names as open-unlearning's; MUSE's MIA AUC and privleak are TOFU's mia_min_k and privleak.
register(MetricSpec("forget_verbmem_ROUGE", False, "MUSE VerbMem: mean ROUGE-L F1 (0-1; MUSE shows x100) of greedy "
                    "continuations of forget-corpus excerpts against the true continuations"))
register(MetricSpec("forget_knowmem_ROUGE", False, "MUSE KnowMem: mean ROUGE-L F1 (0-1; MUSE shows x100) of few-shot "
                    "greedy answers to questions on the forget corpus"))
register(MetricSpec("retain_knowmem_ROUGE", True, "MUSE KnowMem: mean ROUGE-L F1 (0-1; MUSE shows x100) of few-shot "
                    "greedy answers to questions on the retain corpus"))


def evaluate_muse(model, tokenizer, data: MuseData, retain_reference: Mapping | None = None, batch_size: int = 16,
                  max_length: int | None = None, progress: bool = False, rules: str = "muse",
                  knowmem_prompt: str = "qa", metrics: Collection[str] | None = None) -> dict[str, dict]:
    """Every MUSE metric the non-empty sets of ``data`` allow, or only those among ``metrics`` (with
    what they need: privleak needs the MIA); metric name -> result.

    ``rules`` ("muse", the default, or "open-unlearning"; see ``RULES``) says whose scoring to follow;
    ``knowmem_prompt`` ("qa" or "cloze", see :class:`MuseSets`) how KnowMem asks.
    Under both, privleak is None without ``retain_reference`` (open-unlearning would assume a retain
    AUC of 0.5; pass ``{"mia_min_k": {"agg_value": 0.5}}`` for that).
    ``max_length`` cuts privleak texts to that many tokens (for models with a shorter context than
    the texts' roughly 2,000 Llama tokens); None scores them as the rules do.
    """
    if rules not in RULES:
        raise PaluError(f"MUSE rules must be one of {', '.join(RULES)}, not {rules!r}.")
    if knowmem_prompt not in ("qa", "cloze"):
        raise PaluError(f"knowmem_prompt must be qa or cloze, not {knowmem_prompt!r}.")
    rule = RULES[rules]
    wanted = lambda *names: metrics is None or any(name in metrics for name in names)
    tidy = str.strip if rule.strip else str
    gen = dict(batch_size=batch_size, progress=progress)
    results: dict[str, dict] = {}
    if data.verbmem and wanted("forget_verbmem_ROUGE"):
        outputs = generate_text(model, tokenizer, [d["prompt"] for d in data.verbmem], VERBMEM_MAX_NEW_TOKENS, **gen)
        refs = [verbmem_reference(tokenizer, d["gt"]) if rule.cut_gt else d["gt"] for d in data.verbmem]
        results["forget_verbmem_ROUGE"] = rouge_f1_result("forget_verbmem_ROUGE", [tidy(o) for o in outputs],
                                                          [tidy(r) for r in refs], rule.stem)
    knowmem = (("forget", data.forget_qa, data.forget_qa_icl), ("retain", data.retain_qa, data.retain_qa_icl))
    cloze = knowmem_prompt == "cloze"
    for split, qa, icl in knowmem:
        name = f"{split}_knowmem_ROUGE"
        if qa and wanted(name):
            prompts = [d["question"] if cloze else knowmem_prompt_text(d["question"], icl) for d in qa]
            outputs = generate_text(model, tokenizer, prompts, KNOWMEM_MAX_NEW_TOKENS, **gen)
            answers = [cloze_cut(o, d["answer"]) if cloze else knowmem_cut(o) for o, d in zip(outputs, qa)]
            results[name] = rouge_f1_result(name, [tidy(a) for a in answers], [tidy(d["answer"]) for d in qa],
                                            rule.stem)
    if data.privleak_forget and data.privleak_holdout and wanted("mia_min_k", "privleak"):
        if max_length is None and rule.max_tokens is not None:
            max_length = len(tokenizer("").input_ids) + rule.max_tokens
        scores = [[min_k_score(lp, MIA_K) for lp in text_logprobs(model, tokenizer, texts, batch_size, max_length,
                                                                   progress)]
                  for texts in (data.privleak_forget, data.privleak_holdout)]
        results["mia_min_k"] = mia_result("mia_min_k", *scores)
    add_comparisons(results, retain_reference)
    return results


PROPERTIES = {  # MUSE's six properties of an unlearned model, the first four scored: name -> (metric, what it asks)
    "C1": ("forget_verbmem_ROUGE", "no verbatim memorisation"),
    "C2": ("forget_knowmem_ROUGE", "no knowledge memorisation"),
    "C3": ("privleak", "no privacy leakage"),
    "C4": ("retain_knowmem_ROUGE", "utility preserved"),
}
