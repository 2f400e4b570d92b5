"""Model-free spans from surface rules: proper-noun runs, numbers and dates, quoted titles (and spaCy entities).

Fast and dependency-free, so it works anywhere and gives a baseline for the model-based
annotators. What it marks are the usual carriers of biographical facts; what it misses are
common-noun facts ("geology", "a civil engineer"), which only a model or an LLM can tell apart
from context words.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import ClassVar

from palu.annotate.base import AnnotationReport, Annotator, register
from palu.annotate.text import STOPWORDS, WORD, in_question, merge, trim
from palu.data.qa import QAItem, Span

log = logging.getLogger(__name__)

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
          r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
NUMBERS = re.compile(
    rf"\b(?:{_MONTH}\s+{_DAY}(?:,?\s+\d{{4}})?"  # June 30, 1975
    rf"|{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?"  # 30 June 1975
    rf"|{_MONTH}\s+\d{{4}}"  # June 1975
    r"|\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}"  # 06/30/1975, 1975-06-30
    r"|\d+(?:[.,]\d+)*(?:st|nd|rd|th|s)?)\b"  # 2010, 1990s, 3.5, 2nd
)
TITLES = re.compile(r'"([^"\n]+)"|“([^”\n]+)”')
MAX_TITLE_WORDS = 12  # longer quotations are speech, not titles
CONNECTORS = frozenset("of the for in de del la le van von da du des di y".split())  # inside names and titles
SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*|[\"“(]\s*)$")
SPACY_LABELS = frozenset({"PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
                          "LANGUAGE", "DATE"})


@register("rules")
@dataclass
class RulesAnnotator(Annotator):
    """Options:

    Attributes:
        proper_nouns: mark runs of capitalised words ("Kuwait City", "Medal for Outstanding
            Discoveries"); a sentence-initial function word ("The", "Her") does not start a run,
            and a lone sentence-initial word is skipped, since its capital says nothing.
        numbers: mark numbers and dates ("2010", "June 30, 1975", "06/30/1975").
        titles: mark double-quoted text of up to 12 words (book titles), without the quotes.
        spacy_model: a spaCy pipeline whose entities are added when spaCy and the model are
            installed; skipped with a log message otherwise. None turns it off.
        skip_question_words: drop spans whose words all occur in the question, e.g. the
            author's name unless the question asks for it.
    """

    documents: ClassVar[bool] = True

    proper_nouns: bool = True
    numbers: bool = True
    titles: bool = True
    spacy_model: str | None = "en_core_web_sm"
    skip_question_words: bool = True

    def __post_init__(self) -> None:
        self._nlp = _load_spacy(self.spacy_model) if self.spacy_model else None

    def find_spans(self, items: list[QAItem], report: AnnotationReport) -> list[list[Span] | None]:
        return [self.spans(item.answer, item.question or "") for item in items]  # a document has no question

    def spans(self, answer: str, question: str = "") -> list[Span]:
        """The rule spans of one answer (``question`` only serves ``skip_question_words``)."""
        found: list[Span] = []
        if self.proper_nouns:
            found += _proper_noun_runs(answer)
        if self.numbers:
            found += [Span(m.start(), m.end()) for m in NUMBERS.finditer(answer)]
        if self.titles:
            found += _titles(answer)
        if self._nlp is not None:
            found += [Span(e.start_char, e.end_char) for e in self._nlp(answer).ents if e.label_ in SPACY_LABELS]
        out = []
        for span in merge(found, answer):
            span = trim(answer, span)
            if span is not None and not (self.skip_question_words and in_question(answer, span, question)):
                out.append(span)
        return out


def _proper_noun_runs(answer: str) -> list[Span]:
    words = list(WORD.finditer(answer))
    runs, run = [], []  # run: indices into words
    for i, m in enumerate(words):
        text = m.group()
        capital = text[0].isupper()
        joined = run and answer[words[run[-1]].end() : m.start()].strip() == ""
        if capital and joined:
            run.append(i)
        elif text.lower() in CONNECTORS and run and joined and _next_capital(words, i, answer):
            run.append(i)
        else:
            runs.append(run)
            run = [i] if capital else []
    runs.append(run)
    out = []
    for run in runs:
        opens_sentence = bool(run) and SENTENCE_START.search(answer[: words[run[0]].start()]) is not None
        stripped = run
        while stripped and _weak(words[stripped[0]].group(), opens_sentence and stripped is run):
            stripped = stripped[1:]
        if opens_sentence and stripped is run and len(run) == 1:
            stripped = []  # a lone capitalised word opening a sentence: its capital says nothing
        if stripped:
            out.append(Span(words[stripped[0]].start(), words[stripped[-1]].end()))
    return out


def _weak(word: str, opens_sentence: bool) -> bool:
    """A capitalised word that does not start a name: a function word, or a sentence-opening -ing/-ly word."""
    lower = word.lower()
    return lower in STOPWORDS or lower in CONNECTORS or (opens_sentence and lower.endswith(("ing", "ly")))


def _next_capital(words, i: int, answer: str) -> bool:
    """True when a capitalised word follows ``words[i]`` through connectors and spaces only."""
    for j in range(i + 1, len(words)):
        if answer[words[j - 1].end() : words[j].start()].strip():
            return False
        if words[j].group()[0].isupper():
            return True
        if words[j].group().lower() not in CONNECTORS:
            return False
    return False


def _titles(answer: str) -> list[Span]:
    out = []
    for m in TITLES.finditer(answer):
        group = 1 if m.group(1) is not None else 2
        if len(m.group(group).split()) <= MAX_TITLE_WORDS and m.group(group).strip():
            out.append(Span(m.start(group), m.end(group)))
    return out


def _load_spacy(name: str):
    try:
        import spacy

        return spacy.load(name)
    except (ImportError, OSError) as e:
        log.info("rules annotator: spaCy entities skipped (%s: %s)", type(e).__name__, e)
        return None
