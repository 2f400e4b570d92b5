"""Model-based spans, no API: the answer (or document) tokens that the model's knowledge of the subject explains.

Score. For each answer token y_t

    s_t = log p_model(y_t | prompt(question), y_<t) - log p_ref(y_t | reference context)

The first term is what the model predicts when it knows what is asked. The reference lacks that
knowledge:

* ``base_model`` given (a model that never saw the facts: the pre-fine-tuning or the retain
  model): the same input. s_t is then how much learning the facts raised the token.
* otherwise the same model on a reference context without the subject: the question with its
  names, numbers and quoted titles replaced by "someone" (or a fixed ``reference_question``),
  followed by only the last ``window`` answer tokens. Both halves matter. Answers name their
  subject ("Hina Ameen was born in Karachi"), so a reference that still reads the whole answer
  prefix recalls "Karachi" from memory and s_t is near 0 exactly on the facts (``window=None``
  gives that variant). A few tokens of local context keep grammar and set phrases ("was born" ->
  "in"); the masked question keeps what kind of answer is expected (so the memorised wording of
  the answer scores low) but not whom it is about. s_t is then the pointwise mutual information
  between the token and the subject's identity given the question type and local context: near
  0 for function words, word continuations and template words, large where a fact starts. That
  onset is also what PALU unlearns (the first tokens of a span).

Words and spans. A word scores the maximum of its tokens (the onset carries the signal; the rest
of a word is predictable from it). Words scoring at least ``threshold`` nats are marked. For the
same reason a marked word carries the content words that follow it up to the next function word
or punctuation (``complete_phrases``): once "civil" or "Historical" is out, "engineer" and
"Fiction" follow from local context and score near 0, yet they are part of the fact. Names,
numbers, dates and quoted titles (the rules annotator's spans) are added (``with_rules``):
they are sensitive whatever the model makes of them, and a tiny model often predicts their tails
from context alone. Function words and words of the question are never marked (the author's
name unless asked for). Adverbs and past forms ("eloquently", "inspired"; ``skip_modifiers``)
start no span: a memorising model gains on all of an answer's wording, but the facts a user must
remove are named by nouns, names and numbers, and these words only say how (they stay inside a
span that phrase completion extends over them). Marked words separated only by spaces form one span, and function words
are trimmed from span edges.
Scoring is batched: answers with their prompts in one pass, windows in a second pass of short
left-padded sequences, only the needed positions reaching the vocabulary projection.

Documents. A document has no question: what the model knows about it is its own earlier text
(whom it is about, what it said before). Each token is scored

    s_t = log p_model(y_t | BOS, the previous W document tokens) - log p_ref(y_t | reference context)

over one tokenisation of the whole text (as in training), so offsets are the document's own. A long
document is read in rows of ``max_length`` tokens: the first row scores all its tokens, each later row
re-reads half a row before the tokens it scores, so every token is scored once, with W from half a
row to a whole row (all earlier tokens near the start), and memory is bounded by ``max_length`` and
``batch_tokens``. The reference:

* ``base_model`` given: that model on the same rows, so s_t is what learning the document added.
* otherwise (the default): the same model on BOS and only the last ``window`` tokens. Cutting the
  earlier document removes what the model knows about this document but keeps what it knows about
  language: grammar, set phrases and word continuations follow from a few tokens and score near 0,
  while a fact the model recalls from the document ("Karachi" once the text has said whose birth it
  is) scores high. The same model, not a second one, because it is the model a user always has and
  its language knowledge is the one the first term uses; a base model that is weaker at language
  would also credit the document with grammar. The first ``window`` tokens score 0 (the two contexts
  are the same), and a fact whose cue lies inside the window (a name right before it) scores low,
  one more reason names, numbers and titles also come from the rules. ``window=None`` is an error
  for documents: the reference would read what the model reads.

Defaults (window 5, threshold 1 nat, all options on) gave the best span F1 in
``benchmarks/annotators.py`` with tiny models; see ``benchmarks/results/annotators.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from palu.annotate.base import AnnotationReport, Annotator, register
from palu.annotate.rules import RulesAnnotator
from palu.annotate.text import STOPWORDS, content_words, merge, trim, word_spans
from palu.batching import length_batches, pad, restore_order
from palu.config import build
from palu.data.prompts import PromptConfig, answer_ids_and_offsets, prompt_ids
from palu.data.qa import QAItem, Span
from palu.errors import PaluError
from palu.models import load_model, load_tokenizer

Request = tuple[list[int], int]  # token ids, and how many of the last ids to score
_RULES = RulesAnnotator(spacy_model=None)  # without a question, it skips no words


@dataclass
class ContrastScores:
    """Per scored answer token: its character range, the contrast score and both log-probabilities."""

    offsets: list[tuple[int, int]]
    score: np.ndarray
    logp: np.ndarray
    ref_logp: np.ndarray


@register("contrast")
@dataclass
class ContrastAnnotator(Annotator):
    """Options:

    Attributes:
        model: the model that knows the facts: a loaded causal LM, or a hub id or folder.
        tokenizer: a loaded fast tokenizer, or a hub id or folder (default: the model's).
        base_model: optional reference that lacks the facts (object, hub id or folder), same tokenizer.
        window: answer (or document) tokens of local context for the same-model reference; None keeps
            the whole answer prefix (QA items only).
        reference_question: the question of the same-model reference; None masks the names,
            numbers and titles of each item's own question.
        threshold: the word score (nats) from which a word is sensitive.
        skip_question_words: never mark a word the question contains (nor a rule span made of them).
        skip_modifiers: adverbs and past forms (lowercase words ending in -ly or -ed) start no span.
        complete_phrases: extend each marked word over the content words right after it.
        with_rules: add the rules annotator's spans (names, numbers, dates, quoted titles).
        batch_tokens: input tokens per forward pass.
        max_length: prompt plus answer tokens scored at most (the rest of a long answer is not marked);
            for a document, the tokens of one row it is read in.
        prompt: how a question becomes a prompt (as in training).
    """

    documents: ClassVar[bool] = True

    model: Any = None
    tokenizer: Any = None
    base_model: Any = None
    window: int | None = 5
    reference_question: str | None = None
    threshold: float = 1.0
    skip_question_words: bool = True
    skip_modifiers: bool = True
    complete_phrases: bool = True
    with_rules: bool = True
    batch_tokens: int = 4096
    max_length: int = 512
    prompt: Any = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        if self.model is None or (isinstance(self.model, str) and not self.model):
            raise PaluError("contrast annotator: no model; set model to the fine-tuned model (a folder or hub id).")
        if isinstance(self.model, str):
            self.tokenizer = load_tokenizer(self.tokenizer or self.model)
            self.model = load_model(self.model)
        elif self.tokenizer is None:
            raise PaluError("contrast annotator: a loaded model needs its tokenizer; pass tokenizer= as well.")
        elif isinstance(self.tokenizer, str):
            self.tokenizer = load_tokenizer(self.tokenizer)
        if isinstance(self.base_model, str):
            self.base_model = load_model(self.base_model) if self.base_model else None
        if self.base_model is not None and self.base_model.config.vocab_size != self.model.config.vocab_size:
            raise PaluError("contrast annotator: base_model has another vocabulary than model; "
                            "the two must share one tokenizer.")
        if isinstance(self.prompt, dict):
            self.prompt = build(PromptConfig, self.prompt, "prompt")
        if self.window is not None and self.window < 1:
            raise PaluError(f"contrast annotator: window must be at least 1 or None, not {self.window}.")
        if self.batch_tokens < 1:
            raise PaluError(f"contrast annotator: batch_tokens must be positive, not {self.batch_tokens}.")

    def find_spans(self, items: list[QAItem], report: AnnotationReport) -> list[list[Span] | None]:
        return [self.spans(item, scores) for item, scores in zip(items, self.token_scores(items))]

    def spans(self, item: QAItem, scores: ContrastScores) -> list[Span]:
        """Word-level spans of one item from its token scores."""
        answer = item.answer
        words = word_scores(answer, scores)
        question = item.question or ""  # a document asks nothing
        asked = content_words(question) if self.skip_question_words else set()
        marked = [word for word, score in words
                  if score >= self.threshold and not self.skipped(word.text(answer), asked)]
        if self.complete_phrases:
            marked = phrases(answer, [word for word, _ in words], marked)
        if self.with_rules:
            marked += _RULES.spans(answer, question if self.skip_question_words else "")
        # every span holds a marked word outside the question, so no span is made of question words only
        spans = (trim(answer, span) for span in merge(marked, answer, bridge=" "))
        return [span for span in spans if span is not None]

    def skipped(self, word: str, asked: set[str]) -> bool:
        """Words that start no span whatever their score: function words and the question's words (no
        content word outside ``asked``) and, with ``skip_modifiers``, adverbs and past forms."""
        return content_words(word) <= asked or (self.skip_modifiers and is_modifier(word))

    def token_scores(self, items: list[QAItem]) -> list[ContrastScores]:
        """Contrast scores of every answer (or document) token of every item (EOS not included)."""
        docs = [i for i, item in enumerate(items) if item.is_document]
        pairs = [i for i, item in enumerate(items) if not item.is_document]
        return restore_order(len(items), [(pairs, self._answer_scores([items[i] for i in pairs])),
                                          (docs, self._document_scores([items[i] for i in docs]))])

    def _answer_scores(self, items: list[QAItem]) -> list[ContrastScores]:
        tok = self.tokenizer
        prompts = [prompt_ids(tok, item.question, self.prompt) for item in items]
        references = [prompt_ids(tok, self.reference_question or mask_subject(item.question), self.prompt)
                      for item in items]
        answers = []
        for item, p, r in zip(items, prompts, references):
            ids, offsets = answer_ids_and_offsets(tok, item.answer)
            keep = max(0, self.max_length - max(len(p), len(r)))
            answers.append((ids[:keep], offsets[:keep]))
        full = _logprobs(self.model, [(p + ids, len(ids)) for p, (ids, _) in zip(prompts, answers)], self.batch_tokens)
        if self.base_model is not None:
            ref = _logprobs(self.base_model, [(p + ids, len(ids)) for p, (ids, _) in zip(prompts, answers)],
                            self.batch_tokens)
        elif self.window is None:
            ref = _logprobs(self.model, [(r + ids, len(ids)) for r, (ids, _) in zip(references, answers)],
                            self.batch_tokens)
        else:
            requests = [(r + ids[max(0, j - self.window) : j + 1], 1)
                        for r, (ids, _) in zip(references, answers) for j in range(len(ids))]
            ref = _per_item(self.model, requests, [len(ids) for ids, _ in answers], self.batch_tokens)
        return [ContrastScores(offsets, f - r, f, r) for (_, offsets), f, r in zip(answers, full, ref)]

    def _document_scores(self, items: list[QAItem]) -> list[ContrastScores]:
        """Scores of every token of each document, read in rows of ``max_length`` (see the module docstring)."""
        if not items:
            return []
        if self.base_model is None and self.window is None:
            raise PaluError("contrast annotator: window=None gives documents no reference (it would read what the "
                            "model reads); keep a window (default 5) or set base_model.")
        tok = self.tokenizer
        head = tok("", add_special_tokens=True)["input_ids"] or [
            tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]  # what predicts the first token
        if None in head:
            raise PaluError("contrast annotator: the tokenizer has neither BOS nor EOS, so nothing predicts a "
                            "document's first token; set one (e.g. tokenizer.bos_token).")
        room = self.max_length - len(head)
        if room < 2:
            raise PaluError(f"contrast annotator: max_length={self.max_length} leaves no room to score a document; "
                            "raise it.")
        docs = [answer_ids_and_offsets(tok, item.answer) for item in items]
        lengths = [len(ids) for ids, _ in docs]
        rows = [(head + ids[max(0, end - room) : end], end - start) for ids, _ in docs
                for start, end in row_blocks(len(ids), room)]
        full = _per_item(self.model, rows, lengths, self.batch_tokens)
        if self.base_model is not None:
            ref = _per_item(self.base_model, rows, lengths, self.batch_tokens)
        else:
            requests = [(head + ids[max(0, j - self.window) : j + 1], 1) for ids, _ in docs for j in range(len(ids))]
            ref = _per_item(self.model, requests, lengths, self.batch_tokens)
        return [ContrastScores(offsets, f - r, f, r) for (_, offsets), f, r in zip(docs, full, ref)]


def row_blocks(n: int, room: int) -> list[tuple[int, int]]:
    """The [start, end) tokens each row of an ``n``-token document scores: the first ``room``, then ``room // 2``
    at a time, each row reading ``room`` tokens back from its end, so later tokens keep half a row of context."""
    out, start = [], 0
    while start < n:
        end = min(n, max(room, start + room // 2))
        out.append((start, end))
        start = end
    return out


def word_scores(answer: str, scores: ContrastScores) -> list[tuple[Span, float]]:
    """Each word of ``answer`` with the highest score of the tokens it overlaps (-inf if none was scored)."""
    # A token of spaces only (byte-level BPE sometimes splits " L|agos") predicts the next word's start.
    ranges = [(end, end + 1) if answer[start:end].isspace() else (start, end) for start, end in scores.offsets]
    out = []
    for word in word_spans(answer):
        hits = [s for (start, end), s in zip(ranges, scores.score) if start < word.end and end > word.start]
        out.append((word, float(max(hits, default=-np.inf))))
    return out


def is_modifier(word: str) -> bool:
    """A lowercase word ending in -ly or -ed: an adverb or a past form ("eloquently", "inspired")."""
    return word.islower() and len(word) >= 4 and word.endswith(("ly", "ed"))


def phrases(answer: str, words: list[Span], marked: list[Span]) -> list[Span]:
    """``marked`` plus, after each marked word, the following content words up to a function word or
    any character other than a space."""
    chosen = {(w.start, w.end) for w in marked}
    out = list(marked)
    for i, word in enumerate(words):
        if (word.start, word.end) not in chosen:
            continue
        for prev, nxt in zip(words[i:], words[i + 1 :]):
            if answer[prev.end : nxt.start] != " " or nxt.text(answer).lower() in STOPWORDS:
                break
            out.append(nxt)
    return out


def mask_subject(question: str, placeholder: str = "someone") -> str:
    """``question`` with its names, numbers and quoted titles (the rules annotator's spans) replaced."""
    for span in reversed(_RULES.spans(question)):
        question = question[: span.start] + placeholder + question[span.end :]
    return question


def _per_item(model, requests: list[Request], lengths: list[int], batch_tokens: int) -> list[np.ndarray]:
    """The log-probabilities of consecutive requests, joined and cut back into items of ``lengths`` tokens."""
    flat = np.concatenate(_logprobs(model, requests, batch_tokens) or [np.zeros(0)])
    return np.split(flat, np.cumsum(lengths)[:-1]) if lengths else []


def _logprobs(model, requests: list[Request], batch_tokens: int) -> list[np.ndarray]:
    """Log-probability of each of the last ``n`` tokens of each request given the tokens before it.

    Rows are left-padded (with explicit position ids) so the scored tokens of every row end at the
    same place; only the last positions are projected onto the vocabulary.
    """
    results = []
    device = model.device
    was_training = model.training
    model.eval()
    try:
        for idx in length_batches([len(ids) for ids, _ in requests], max_tokens=batch_tokens):
            keep = max(requests[i][1] for i in idx)
            if keep == 0:
                continue
            ids, mask = pad([requests[i][0] for i in idx], 0, left=True)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=positions.to(device), logits_to_keep=keep + 1).logits
            logp = torch.log_softmax(logits[:, -(keep + 1) : -1].float(), dim=-1)  # predicts the last `keep` ids
            picked = logp.gather(-1, ids[:, -keep:].unsqueeze(-1).to(device)).squeeze(-1).cpu().numpy()
            results.append((idx, [picked[row, keep - requests[i][1] :] if requests[i][1] else np.zeros(0)
                                  for row, i in enumerate(idx)]))
    finally:
        model.train(was_training)
    return restore_order(len(requests), results, np.zeros(0))
