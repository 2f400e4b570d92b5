"""Spans from a TPO/PALU span file (``target_words``), re-anchored on words and on the intended occurrence.

The GPT-4o files record each phrase at its *first* occurrence in the answer, found by plain
substring search, so a span can land inside another word ("Kuwait" inside "Al-Kuwaiti") and a
repeated phrase is marked once. Each span is re-anchored, in this order:

1. kept, when its offsets hold its word on word boundaries and no earlier span covers them;
2. moved, to the first word-bounded occurrence of the word that no other span covers (the
   standalone "Kuwait" after "Kuwait City", the "love" in "a tale of love" rather than the one in
   "most-loved");
3. widened, when there is no such occurrence but the span starts a word ("impact" inside
   "impacted", "love" inside "loved" when no standalone "love" exists): the annotator meant that
   word in an inflected form, and the whole word keeps the span's onset tokens, which are the ones
   PALU unlearns;
4. dropped otherwise: a span starting inside a word is a piece of a different word ("ear" inside
   "year"), and a phrase whose every occurrence is taken duplicates another span.

``all_occurrences`` then marks every other word-bounded occurrence of each span's text too.
Documents are matched by their whole text (what ``palu annotate`` writes for them), so their spans
are re-anchored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from palu.annotate.base import AnnotationReport, Annotator, Change, item_name, register
from palu.annotate.text import (
    enclosing_word,
    first_free,
    is_word_char,
    occurrences,
    on_boundaries,
    overlaps,
    widen_to_words,
)
from palu.data.loaders import ANNOTATION_SPANS_FIELD, json_rows  # the loaders' reader and its error messages
from palu.data.qa import QAItem, Span
from palu.errors import PaluError


@register("file")
@dataclass
class FileAnnotator(Annotator):
    """Spans from a span file, matched to items by question and answer (or by question alone), and to
    documents by their text.

    Attributes:
        path: a JSON Lines or JSON file of ``{"question", "answer", "target_words": [{"word", "start",
            "end"}]}`` rows (``{"text", "target_words"}`` for documents), or a folder saved with
            ``datasets.save_to_disk`` holding the same columns.
        split: the split of a saved ``DatasetDict`` (all splits, concatenated, when None).
        all_occurrences: also mark every other word-bounded occurrence of each span's text.
        question_field, answer_field, text_field, spans_field: the file's field names.
    """

    documents: ClassVar[bool] = True

    path: str = ""
    split: str | None = None
    all_occurrences: bool = False
    question_field: str = "question"
    answer_field: str = "answer"
    text_field: str = "text"
    spans_field: str = ANNOTATION_SPANS_FIELD

    def find_spans(self, items: list[QAItem], report: AnnotationReport) -> list[list[Span] | None]:
        rows = self._rows()
        by_pair, by_text = {}, {}
        by_question: dict[str, list[tuple[str, dict]]] = {}
        for where, row in rows:
            if self.text_field in row:
                by_text.setdefault(str(row[self.text_field]).strip(), (where, row))
            question = str(row.get(self.question_field, "")).strip()
            by_pair.setdefault((question, str(row.get(self.answer_field, "")).strip()), (where, row))
            by_question.setdefault(question, []).append((where, row))
        out: list[list[Span] | None] = []
        for i, item in enumerate(items):
            name = item_name(item, i)
            if item.is_document:
                match, field = by_text.get(item.answer.strip()), self.text_field
            else:
                question = item.question.strip()
                match = by_pair.get((question, item.answer.strip())) or (by_question.get(question) or [None])[0]
                field = self.answer_field
            if match is None:
                report.unmatched.append(name)
                out.append(None)
                continue
            where, row = match
            out.append(self._anchor(item.answer, str(row.get(field, "")), self._entries(row, where), name, report))
        return out

    def _rows(self) -> list[tuple[str, dict]]:
        path = Path(self.path).expanduser()
        if not self.path or not path.exists():
            raise PaluError(f"file annotator: {self.path!r} does not exist; set path to a span file (JSON or "
                            "JSON Lines rows of question, answer (or text) and spans, e.g. "
                            "annotations/forget05.jsonl) or a saved dataset folder.")
        if path.is_dir():
            return _saved_rows(path, self.split)
        rows = []
        for where, row in json_rows(path):
            if not isinstance(row, dict):
                raise PaluError(f"{where}: expected an object with question, answer (or {self.text_field}) and "
                                f"{self.spans_field}.")
            rows.append((where, row))
        return rows

    def _entries(self, row: dict, where: str) -> list[tuple[str | None, int | None, int | None]]:
        """(word, start, end) of each entry (a bare string is a word without offsets, placed by search)."""
        value = row.get(self.spans_field) or []
        if not isinstance(value, list):
            raise PaluError(f"{where}: '{self.spans_field}' should be a list of {{\"word\", \"start\", \"end\"}} "
                            f"objects, got {value!r:.80}.")
        entries = []
        for entry in value:
            if isinstance(entry, str):
                entry = {"word": entry}
            if not isinstance(entry, dict):
                raise PaluError(f"{where}: each entry of '{self.spans_field}' should be an object or a string, "
                                f"got {entry!r:.80}.")
            start, end = entry.get("start"), entry.get("end")
            if not (isinstance(start, int) and isinstance(end, int)):
                start = end = None
            entries.append((entry.get("word"), start, end))
        return entries

    def _anchor(self, answer: str, row_answer: str, entries, name: str, report: AnnotationReport) -> list[Span]:
        taken: list[Span] = []
        for word, start, end in entries:
            if not word and start is not None and 0 <= start < end <= len(row_answer):
                word = row_answer[start:end]
            if not word or not word.strip():
                report.changes.append(Change(name, "dropped", str(word), None, None, "no word and no usable offsets"))
                continue
            word = word.strip()
            before = Span(start, end) if start is not None and 0 <= start < end <= len(answer) else None
            span, kind, reason = _place(answer, word, before, taken)
            if kind:
                report.changes.append(Change(name, kind, word, before, span, reason))
            if span is not None:
                taken.append(span)
        if self.all_occurrences:
            for span in list(taken):
                for extra in occurrences(answer, span.text(answer)):
                    if not overlaps(extra, taken):
                        taken.append(extra)
                        report.changes.append(Change(name, "added", span.text(answer), None, extra,
                                                     "another occurrence (all_occurrences)"))
        return taken


def _place(answer: str, word: str, at: Span | None, taken: list[Span]) -> tuple[Span | None, str, str]:
    """Where ``word`` goes, and the change kind ("" when kept as is) with its reason."""
    exact = at is not None and at.text(answer) == word
    if exact and on_boundaries(answer, at.start, at.end) and not overlaps(at, taken):
        return at, "", ""
    free = first_free(answer, word, taken)
    if exact and not on_boundaries(answer, at.start, at.end):
        first = enclosing_word(answer, Span(at.start, at.start + 1))
        last = enclosing_word(answer, Span(at.end - 1, at.end))
        inside = answer[first.start : last.end]
        if free is not None:
            return free, "moved", f"was inside {inside!r}; moved to the standalone occurrence"
        if at.start > 0 and is_word_char(answer[at.start - 1]):
            return None, "dropped", f"only a piece of {inside!r}, a different word"
        wide = widen_to_words(answer, at.start, at.end)
        if overlaps(wide, taken):
            return None, "dropped", f"{inside!r} is already covered by another span"
        return wide, "widened", f"was the start of {inside!r}, an inflected form; marked the whole word"
    if free is not None and at is None:
        return free, "", ""  # a bare word: placing it changes nothing
    if free is not None:
        reason = "lay inside another span; moved to a free occurrence" if exact else "the offsets did not hold the word"
        return free, "moved", reason
    if occurrences(answer, word, ignore_case=True):
        return None, "dropped", "every occurrence is already covered by another span"
    return None, "dropped", "the word is not in the answer"


def _saved_rows(path: Path, split: str | None) -> list[tuple[str, dict]]:
    """Rows of a folder written by ``datasets`` ``save_to_disk`` (a Dataset or a DatasetDict)."""
    import datasets  # slow to import; only saved folders need it

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise PaluError(f"{path}: not a folder saved with datasets.save_to_disk ({e}); "
                        "point path at a .jsonl span file or such a folder.") from None
    if isinstance(data, datasets.DatasetDict):
        if split is not None and split not in data:
            raise PaluError(f"{path}: no split {split!r}; splits there: {', '.join(data)}.")
        parts = [(split, data[split])] if split is not None else list(data.items())
        return [(f"{path}/{name}[{i}]", row) for name, ds in parts for i, row in enumerate(ds)]
    return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
