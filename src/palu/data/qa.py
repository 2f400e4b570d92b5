"""The one record every stage passes around: a question, its answer and the answer's sensitive spans."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from palu.errors import PaluError


@dataclass(frozen=True)
class Span:
    """A sensitive span: character offsets ``[start, end)`` into the answer."""

    start: int
    end: int

    def text(self, answer: str) -> str:
        return answer[self.start : self.end]


@dataclass
class QAItem:
    """One question/answer pair, with what evaluation and unlearning may need of it; or, with no
    question (None), a document: its text is the "answer", every token of it a training token.

    ``source`` says where the item came from (``file:line`` or ``dataset[index]``) so that
    every error about it can name it.
    """

    question: str | None
    answer: str
    spans: list[Span] = field(default_factory=list)
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    paraphrased_question: str | None = None
    group: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or ("a document" if self.is_document else "a QA item")
        what = "document" if self.is_document else "answer"
        if not self.is_document and (not isinstance(self.question, str) or not self.question.strip()):
            raise PaluError(f"{where}: the question is empty; give every item a non-empty question.")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise PaluError(f"{where}: the {what} is empty; give every item a non-empty {what}.")
        for span in self.spans:
            if not (0 <= span.start < span.end <= len(self.answer)):
                raise PaluError(
                    f"{where}: span [{span.start}, {span.end}) lies outside its {what} "
                    f"(length {len(self.answer)}); fix the offsets or re-anchor the span."
                )

    @property
    def is_document(self) -> bool:
        return self.question is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> QAItem:
        row = dict(row)
        row["spans"] = [Span(**s) if isinstance(s, dict) else Span(*s) for s in row.get("spans", [])]
        return cls(**row)


def shared_items(items: list[QAItem], others: list[QAItem]) -> list[QAItem]:
    """The items of ``items`` that ``others`` also holds (same question and answer, ignoring surrounding
    spaces): a forget set that overlaps its retain set is pulled both ways, a common slip in naming splits."""
    def key(item: QAItem) -> tuple[str, str]:
        return (item.question or "").strip(), item.answer.strip()

    keys = {key(o) for o in others}
    return [item for item in items if key(item) in keys]


def item_texts(items: list[QAItem]) -> list[str]:
    """Every text of ``items`` (questions, answers and their variants): what a tokenizer for them is trained on."""
    texts = []
    for it in items:
        texts += [it.question or "", it.answer, it.paraphrased_answer or "", it.paraphrased_question or "",
                  *it.perturbed_answers]
    return [t for t in texts if t]
