"""Word-level text helpers shared by the annotators: word boundaries, occurrences, question words.

A "word character" is a letter or digit (``str.isalnum``); hyphens and apostrophes are boundaries,
so "Kuwait" in "Al-Kuwaiti" starts on a boundary but does not end on one.
"""

from __future__ import annotations

import re

from palu.data.qa import Span

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")  # "Al-Kuwaiti", "Geologist’s", "1975"

# Function words: never a span on their own, trimmed from span edges, ignored when comparing with the question.
STOPWORDS = frozenset("""
a an the this that these those some any each every all both either neither no
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
who whom whose which what when where why how whoever whatever
is am are was were be been being have has had having do does did done
will would shall should can could may might must
and or but nor so yet if then than as because while although though since unless until
of in on at by for with about against between into through during before after above below
to from up down out off over under again further once here there
not only own same too very just also still even ever often well much many more most other such
one ones s t d ll m re ve
""".split())


def is_word_char(ch: str) -> bool:
    return ch.isalnum()


def on_boundaries(text: str, start: int, end: int) -> bool:
    """True when ``text[start:end]`` neither begins nor ends inside a word."""
    before = start > 0 and is_word_char(text[start - 1]) and is_word_char(text[start])
    after = end < len(text) and is_word_char(text[end]) and is_word_char(text[end - 1])
    return not before and not after


def occurrences(text: str, phrase: str, ignore_case: bool = False) -> list[Span]:
    """Every occurrence of ``phrase`` in ``text`` that lies on word boundaries, left to right."""
    if not phrase:
        return []
    hay, needle = (text.lower(), phrase.lower()) if ignore_case else (text, phrase)
    out, i = [], hay.find(needle)
    while i >= 0:
        if on_boundaries(text, i, i + len(phrase)):
            out.append(Span(i, i + len(phrase)))
        i = hay.find(needle, i + 1)
    return out


def overlaps(span: Span, others: list[Span]) -> bool:
    return any(span.start < o.end and o.start < span.end for o in others)


def first_free(text: str, phrase: str, taken: list[Span]) -> Span | None:
    """The first word-bounded occurrence of ``phrase`` that no span in ``taken`` covers.

    An exact-case match is preferred; a case-insensitive one is the fallback (models and
    annotators often change the case of a sentence-initial word).
    """
    for ignore_case in (False, True):
        for span in occurrences(text, phrase, ignore_case):
            if not overlaps(span, taken):
                return span
    return None


def word_spans(text: str) -> list[Span]:
    return [Span(m.start(), m.end()) for m in WORD.finditer(text)]


def widen_to_words(text: str, start: int, end: int) -> Span:
    """Grow ``[start, end)`` to the word characters around it."""
    while start > 0 and is_word_char(text[start - 1]):
        start -= 1
    while end < len(text) and is_word_char(text[end]):
        end += 1
    return Span(start, end)


def enclosing_word(text: str, span: Span) -> Span:
    """The whole written word around ``span``, hyphens and apostrophes included ("Al-Kuwaiti", "most-loved")."""
    return next((w for w in word_spans(text) if w.start <= span.start and span.end <= w.end), span)


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that carry content (no function words, no possessive 's)."""
    return {w for w in re.findall(r"[^\W_]+", text.lower()) if w not in STOPWORDS}


def in_question(answer: str, span: Span, question: str) -> bool:
    """True when every content word of the span also occurs in the question.

    This is the annotation rule "mark the author's name only when the question asks for it":
    a name the question already gives is context, while a name the question asks for is not in it.
    """
    words = content_words(span.text(answer))
    return bool(words) and words <= content_words(question)


def trim(answer: str, span: Span) -> Span | None:
    """Strip lower-case function words, possessive 's and punctuation from both ends; None if nothing is left.

    Capitalised function words stay: they belong to names and titles ("The Orchard of Bells", "May 31").
    """
    words = [w for w in word_spans(answer) if span.start <= w.start and w.end <= span.end]
    while words and words[0].text(answer) in STOPWORDS:
        words.pop(0)
    while words and words[-1].text(answer) in STOPWORDS:
        words.pop()
    if not words:
        return None
    end = words[-1].end
    if answer[end - 2 : end] in ("'s", "’s") and end - 2 > words[-1].start:
        end -= 2
    return Span(words[0].start, end)


def merge(spans: list[Span], answer: str, bridge: str = "") -> list[Span]:
    """Sorted union of ``spans``; two spans also join when only characters in ``bridge`` separate them."""
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        if out and (span.start <= out[-1].end or all(c in bridge for c in answer[out[-1].end : span.start])):
            out[-1] = Span(out[-1].start, max(out[-1].end, span.end))
        else:
            out.append(span)
    return out
