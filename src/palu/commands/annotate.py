"""``palu annotate``: annotate a data source, write the items with spans as JSON Lines, show them.

The output rows use the TPO/PALU field ``target_words`` (``{"word", "start", "end"}``), so
``load_qa`` reads them back as spans and the ``file`` annotator accepts them as a span file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from palu.annotate.base import ANNOTATORS, Annotated, get_annotator
from palu.config import describe, load_config, typed_options
from palu.data.loaders import ANNOTATION_SPANS_FIELD, DataSource
from palu.data.qa import QAItem
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.errors import PaluError
from palu.io import write_text

HELP = "find the sensitive spans in QA answers or documents (contrast, rules, file or llm annotator)"
RESUMABLE = False
HIGHLIGHT, RESET = "\x1b[1;30;43m", "\x1b[0m"  # bold black on yellow


@dataclass
class Config:
    """``palu annotate``: find the sensitive spans of a data source's answers.

    Attributes:
        input: the items to annotate (any loader source, or ``path: synthetic``).
        annotator: "contrast" (default; needs ``options.model``), "rules", "file" (needs
            ``options.path``) or "llm" (endpoint from options or PALU_LLM_* variables).
        options: the annotator's options (see its class in ``palu.annotate``).
        output: a .jsonl file for the items with spans; nothing is written when empty.
        show: print every item with its spans highlighted.
    """

    input: DataSource = field(default_factory=lambda: synthetic("forget"))
    annotator: str = "contrast"
    options: dict = field(default_factory=dict)
    output: str = ""
    show: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:  # the annotator's options, checked as typed options before any work
        self.options = typed_options(ANNOTATORS[self.annotator], self.options, "options")


def run_annotate(cfg: Config, overwrite: bool = False) -> str:
    """Annotate, write ``cfg.output`` and return the text to print (report, and the spans if ``show``).

    A run in which every item failed is an error and writes nothing: its output would only hold the
    input spans, and a script checking the exit status would take it for a result.
    """
    out = Path(cfg.output) if cfg.output else None
    if out is not None and out.exists() and not overwrite:
        raise PaluError(f"{out} exists; pass --overwrite to replace it or choose another output.")
    annotator = get_annotator(cfg.annotator, **cfg.options)
    result: Annotated = annotator.annotate(load_items(cfg.input, cfg.synthetic))
    errors = result.report.errors
    if result.items and len(errors) >= len(result.items):  # e.g. a server that answers HTML to every request
        raise PaluError(f"{cfg.annotator} annotator: no item annotated; all {len(result.items)} items failed, "
                        f"the first with: {errors[0]}")
    parts = []
    if cfg.show:
        parts.append(show_spans(result.items, color=sys.stdout.isatty()))
    parts.append(result.report.summary())
    if out is not None:
        write_spans(out, result.items)
        parts.append(f"items with spans written to {out.resolve()}")
    return "\n\n".join(parts)


def to_row(item: QAItem) -> dict:
    """One output row: the loader's default field names, spans as ``target_words``."""
    if item.is_document:  # what `kind: text` reads back
        return {"text": item.answer, ANNOTATION_SPANS_FIELD: span_rows(item)}
    row = {"question": item.question, "answer": item.answer, ANNOTATION_SPANS_FIELD: span_rows(item)}
    if item.paraphrased_answer:
        row["paraphrased_answer"] = item.paraphrased_answer
    if item.perturbed_answers:
        row["perturbed_answer"] = item.perturbed_answers
    if item.paraphrased_question:
        row["paraphrased_question"] = item.paraphrased_question
    return row


def span_rows(item: QAItem) -> list[dict]:
    return [{"word": s.text(item.answer), "start": s.start, "end": s.end} for s in item.spans]


def write_spans(path: str | Path, items: list[QAItem]) -> Path:
    """Write ``items`` as JSON Lines, atomically."""
    return write_text(path, "".join(json.dumps(to_row(item), ensure_ascii=False) + "\n" for item in items))


def show_spans(items: list[QAItem], color: bool = True) -> str:
    """The items as text, spans highlighted with ANSI colours (or ``[[...]]`` when ``color`` is off)."""
    open_, close = (HIGHLIGHT, RESET) if color else ("[[", "]]")
    blocks = []
    for item in items:
        answer, pos, parts = item.answer, 0, []
        for span in sorted(item.spans, key=lambda s: (s.start, s.end)):
            start = max(span.start, pos)  # overlapping spans: highlight the union
            if span.end <= start:
                continue
            parts += [answer[pos:start], open_, answer[start : span.end], close]
            pos = span.end
        parts.append(answer[pos:])
        head = f"{item.source}\n" if item.source else ""
        text = "".join(parts)
        blocks.append(f"{head}{text}" if item.is_document else f"{head}Q: {item.question}\nA: {text}")
    return "\n\n".join(blocks)


def more_options() -> list[tuple[str, str, str, str]]:
    """Each annotator's options, for ``palu annotate --help``."""
    return [(key, kind, default, f"(annotator={name}) {text}".strip())
            for name in ANNOTATORS.names() for key, kind, default, text in describe(ANNOTATORS[name], "options.")]


def arguments(parser) -> None:
    parser.add_argument("--show", action="store_true", help="print the answers with their spans highlighted")


def main(args) -> str:
    cfg = load_config(Config, args.config, args.overrides + (["show=true"] if args.show else []))
    return run_annotate(cfg, args.overwrite)
