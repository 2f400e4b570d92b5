"""The annotator interface, the report every annotator returns, and the registry of annotators by name.

An annotator turns QA items into copies with sensitive spans. Every annotator returns the same
report, so a user can see what an annotation run did (which spans were moved, widened, dropped
or added, which items ended up with no span, which failed) instead of trusting it blindly.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from palu.config import typed_options
from palu.data.qa import QAItem, Span
from palu.errors import PaluError
from palu.registry import Registry

CHANGE_KINDS = ("moved", "widened", "dropped", "added")


@dataclass(frozen=True)
class Change:
    """One edit to a span: ``before`` is None for an added span, ``after`` None for a dropped one."""

    item: str
    kind: str
    word: str
    before: Span | None
    after: Span | None
    reason: str

    def __str__(self) -> str:
        def at(span):
            return "-" if span is None else f"[{span.start}, {span.end})"

        return f"{self.item}: {self.kind} {self.word!r} {at(self.before)} -> {at(self.after)}: {self.reason}"


@dataclass
class AnnotationReport:
    """What an annotation run did. Items are named by ``QAItem.source`` (or ``item N``)."""

    annotator: str
    items: int = 0
    changes: list[Change] = field(default_factory=list)
    without_spans: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(c.kind == kind for c in self.changes)

    def summary(self) -> str:
        counts = Counter(c.kind for c in self.changes)
        lines = [f"{self.annotator}: {self.items} items, {self.items - len(self.without_spans)} with spans"]
        if self.changes:
            lines.append("spans " + ", ".join(f"{k} {counts[k]}" for k in CHANGE_KINDS if counts[k]))
            lines += [f"  {c}" for c in self.changes if c.kind != "added"]
        for title, names in (("without spans", self.without_spans), ("not annotated (no match)", self.unmatched),
                             ("errors", self.errors)):
            if names:
                lines.append(f"{title} ({len(names)}):")
                lines += [f"  {n}" for n in names]
        return "\n".join(lines)


class Annotated(NamedTuple):
    """The annotated copies, in input order, and the report; unpacks as ``items, report``."""

    items: list[QAItem]
    report: AnnotationReport


def item_name(item: QAItem, index: int) -> str:
    return item.source or f"item {index}"


class Annotator(ABC):
    """Finds sensitive spans. Subclasses are dataclasses whose fields are the annotator's options;
    ``documents``: it also marks documents (items without a question)."""

    name: ClassVar[str]
    documents: ClassVar[bool] = False

    def annotate(self, items: list[QAItem]) -> Annotated:
        """Copies of ``items`` with the spans found; the inputs are not changed."""
        report = AnnotationReport(self.name, len(items))
        if not self.documents and any(item.is_document for item in items):
            documents = ", ".join(name for name in ANNOTATORS.names() if ANNOTATORS[name].documents)
            raise PaluError(f"the {self.name} annotator works on question/answer pairs, not documents; annotate "
                            f"documents with one of: {documents}.")
        found = self.find_spans(items, report)
        out = []
        for i, (item, spans) in enumerate(zip(items, found, strict=True)):
            spans = item.spans if spans is None else spans
            copy = dataclasses.replace(item, spans=sorted(spans, key=lambda s: (s.start, s.end)))
            if not copy.spans:
                report.without_spans.append(item_name(item, i))
            out.append(copy)
        return Annotated(out, report)

    @abstractmethod
    def find_spans(self, items: list[QAItem], report: AnnotationReport) -> list[list[Span] | None]:
        """The spans of each item (None: leave the item as it is), recording changes and failures in ``report``."""


ANNOTATORS: Registry[type[Annotator]] = Registry("annotator", sort=True)


def register(name: str):
    """Class decorator: make an annotator available by ``name`` (to ``annotate`` and ``palu annotate``)."""

    def add(cls: type[Annotator]) -> type[Annotator]:
        ANNOTATORS.add(name, cls)
        cls.name = name
        return cls

    return add


def annotator_names() -> list[str]:
    return ANNOTATORS.names()


def get_annotator(name: str, **options) -> Annotator:
    """The annotator ``name`` built with ``options``; unknown names and options are errors that list the valid ones."""
    cls = ANNOTATORS[name]
    return cls(**typed_options(cls, options, "options"))


def annotate(items: list[QAItem], annotator: str = "contrast", **options) -> Annotated:
    """Annotate ``items`` with the annotator named ``annotator``; returns ``(items, report)``."""
    return get_annotator(annotator, **options).annotate(items)
