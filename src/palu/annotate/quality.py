"""How well predicted spans match reference spans: character-level precision, recall and F1.

Characters, not tokens: the score then does not depend on a tokenizer, and a span that is off by
one word costs that word's length rather than a whole span. Whitespace is not counted, so
joining "Karachi" and "Pakistan" into one span is not rewarded or punished for the space between
them; punctuation is. Counts are pooled over all items (micro average), so long answers weigh more.
"""

from __future__ import annotations

from dataclasses import dataclass

from palu.data.qa import QAItem, Span
from palu.errors import PaluError


@dataclass(frozen=True)
class SpanScores:
    """Precision, recall and F1, with the pooled character counts behind them.

    With nothing predicted, precision is 1 (no wrong claim); with nothing to find, recall is 1.
    """

    precision: float
    recall: float
    f1: float
    predicted: int
    reference: int
    overlap: int

    def __str__(self) -> str:
        return f"P {self.precision:.3f}  R {self.recall:.3f}  F1 {self.f1:.3f}"


def span_chars(answer: str, spans: list[Span]) -> set[int]:
    """Indices of the non-whitespace characters that ``spans`` cover."""
    return {i for s in spans for i in range(s.start, s.end) if not answer[i].isspace()}


def span_f1(predicted: list[QAItem], reference: list[QAItem]) -> SpanScores:
    """Scores of ``predicted`` against ``reference``, paired item by item (answers must be equal)."""
    if len(predicted) != len(reference):
        raise PaluError(f"span_f1: {len(predicted)} predicted items but {len(reference)} reference items.")
    n_pred = n_ref = n_both = 0
    for i, (p, r) in enumerate(zip(predicted, reference)):
        if p.answer != r.answer:
            raise PaluError(f"span_f1: item {i} ({r.source or 'no source'}) has different answers; "
                            "pair the predicted and reference items in the same order.")
        pred, ref = span_chars(p.answer, p.spans), span_chars(r.answer, r.spans)
        n_pred, n_ref, n_both = n_pred + len(pred), n_ref + len(ref), n_both + len(pred & ref)
    precision = n_both / n_pred if n_pred else 1.0
    recall = n_both / n_ref if n_ref else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SpanScores(precision, recall, f1, n_pred, n_ref, n_both)
