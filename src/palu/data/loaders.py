"""Loading QA items from the hub, a folder of TOFU-format files or a single file.

Every later stage trusts a ``QAItem``, so bad input is caught here: each error names the file and
line (or hub row) and says which option or fix cures it, instead of surfacing as a KeyError deep
inside training.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import Literal

from palu.config import require
from palu.data.qa import QAItem, Span
from palu.errors import PaluError
from palu.io import read_text

FORMATS = (".json", ".jsonl", ".parquet", ".csv")  # also the lookup order for a folder + split
ANNOTATION_SPANS_FIELD = "target_words"  # TOFU/PALU span-annotation files: [{"word", "start", "end"}]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Row = tuple[str, object]  # (where it came from, the raw row)


@dataclass
class DataSource:
    """Where QA items (or documents) come from and which fields hold what; the defaults are TOFU's
    field names.

    Attributes:
        path: a hub dataset id ("locuslab/TOFU"), a local folder of TOFU-format files, or one
            .json/.jsonl/.csv/.parquet file; for documents also a .txt file or a folder of them.
            A path that does not exist locally and looks like ``owner/name`` is read as a hub id.
        split: with a hub id, the config name (or, with ``subset``, the split); with a folder, the
            file stem ("forget05", "retain_perturbed", "forget05_perturbed"). Ignored for a single file.
        kind: "qa" (question/answer pairs) or "text" (documents: every token is a training token;
            see ``palu.data.documents``).
        text_field: with kind text, the field holding a document's text.
        separator: with kind text, a line that separates documents in a .txt file (None: the
            whole file is one document).
        subset: a hub dataset's config when ``split`` names its split (MUSE: ``subset: raw,
            split: forget``).
        question_field: the field holding the question.
        answer_field: the field holding the answer (the text that spans index into).
        paraphrased_answer_field: optional; a paraphrase of the answer (TOFU truth ratio).
        perturbed_answers_field: optional; wrong answers, a list or a single string.
        paraphrased_question_field: optional; a paraphrase of the question.
        spans_field: optional; a list of ``{"start", "end"}`` (or ``{"word", "start", "end"}``)
            character offsets into the answer. Rows without it fall back to the annotation
            files' ``target_words`` field.
        limit: keep only the first N items (all when None).
    """

    path: str
    split: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    paraphrased_answer_field: str = "paraphrased_answer"
    perturbed_answers_field: str = "perturbed_answer"
    paraphrased_question_field: str = "paraphrased_question"
    spans_field: str = "spans"
    limit: int | None = None
    kind: Literal["qa", "text"] = "qa"
    text_field: str = "text"
    separator: str | None = None
    subset: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None:
            require(self.limit >= 0, "limit", "a non-negative number of items (or null for all)", self.limit)

    @property
    def name(self) -> str:
        """The source as messages name it: its path, then the hub config and split when given."""
        return "/".join([self.path, *(part for part in (self.subset, self.split) if part)])


def load_qa(source: DataSource) -> list[QAItem]:
    """Load and validate the QA items (or, with ``kind: text``, the documents) ``source`` points at.

    Each item's ``source`` is ``file:line`` for JSON Lines, ``file:row`` (1-based) for JSON
    arrays, CSV and Parquet, ``file:document N`` for .txt files, and ``hub_id/config/split[index]``
    (0-based) for hub rows.
    """
    rows, label = _rows(source)
    convert = _to_document if source.kind == "text" else _to_item
    items = [convert(row, where, source) for where, row in islice(rows, source.limit)]
    if not items and source.limit != 0:
        what = "documents" if source.kind == "text" else "QA rows"
        raise PaluError(f"{label}: no {what} found; point path (and split) at a file that holds some.")
    return items


def load_lines(path: str | Path) -> list[str]:
    """One entry per non-blank line of a plain-text file (e.g. TOFU's idontknow.jsonl refusals).

    Lines may be plain text or JSON strings (``"I don't know."``); both give the bare text.
    """
    path = Path(path)
    lines = []
    for raw in read_text(path).split("\n"):
        line = raw.strip()
        if line.startswith('"'):
            try:
                decoded = json.loads(line)
            except json.JSONDecodeError:
                decoded = None  # plain text that happens to start with a quote
            if isinstance(decoded, str):
                line = decoded
        if line:
            lines.append(line)
    if not lines:
        raise PaluError(f"{path}: holds no lines; write one entry per line.")
    return lines


def _rows(source: DataSource) -> tuple[Iterator[Row], str]:
    """The raw rows ``source`` points at, and a label naming it for errors."""
    path = Path(source.path).expanduser()
    if path.is_dir() and source.kind == "text" and source.split is None:
        return _text_folder_rows(path, source), str(path)
    if path.is_dir():
        path = _split_file(path, source.split)
    if path.is_file():
        return _file_rows(path, source), str(path)
    if HUB_ID.match(source.path) and path.suffix.lower() not in FORMATS:
        return _hub_rows(source, source.name), source.name
    raise PaluError(
        f"{source.path}: no such file or folder; point path at a .json/.jsonl/.csv/.parquet file, "
        "a folder of them (with split), or a hub id such as locuslab/TOFU."
    )


def _split_file(folder: Path, split: str | None) -> Path:
    available = sorted({p.stem for p in folder.iterdir() if p.suffix.lower() in (*FORMATS, ".txt")})
    listing = ", ".join(available) or "none (no .json/.jsonl/.parquet/.csv files there)"
    if split is None:
        raise PaluError(f"{folder} is a folder; set split to the file to load, one of: {listing}.")
    for suffix in (*FORMATS, ".txt"):
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    raise PaluError(f"{folder}: no file for split '{split}' ({split}.json, .jsonl, .parquet or .csv); "
                    f"splits there: {listing}.")


def _file_rows(path: Path, source: DataSource) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return json_rows(path)
    if suffix == ".csv":
        return _csv_rows(path, (source.perturbed_answers_field, source.spans_field, ANNOTATION_SPANS_FIELD))
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".txt" and source.kind == "text":
        return _text_rows(path, source)
    raise PaluError(f"{path}: unsupported file type '{path.suffix}'; use .json, .jsonl, .csv or .parquet "
                    "(or .txt documents with kind: text).")


def _text_rows(path: Path, source: DataSource) -> Iterator[Row]:
    """The documents of a .txt file: the whole file, or the parts between ``separator`` lines."""
    text = read_text(path)
    parts = [text] if source.separator is None else re.split(rf"(?m)^{re.escape(source.separator)}[ \t]*\n?", text)
    for i, part in enumerate(parts, 1):
        if source.separator is None or part.strip():
            yield f"{path}:document {i}", {source.text_field: part}


def _text_folder_rows(folder: Path, source: DataSource) -> Iterator[Row]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise PaluError(f"{folder}: no .txt files; put one document per .txt file there, or set split to a file.")
    for path in files:
        yield from _text_rows(path, source)


def json_rows(path: Path) -> Iterator[Row]:
    """A JSON array or JSON Lines, told apart by content: TOFU's .json files are JSON Lines."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise PaluError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                            "fix the file.") from None
        for i, row in enumerate(rows, 1):
            yield f"{path}:{i}", row
        return
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other line breaks.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PaluError(f"{path}:{lineno}: not a valid JSON line ({e.msg}, column {e.colno}); "
                            "each line must hold one JSON object: fix or remove this line.") from None
        yield f"{path}:{lineno}", row


def _csv_rows(path: Path, list_fields: tuple[str, ...]) -> Iterator[Row]:
    """CSV rows as strings, the first row naming the fields; cells of list-valued fields may hold JSON lists
    (CSV has no lists). Read with the csv module, which says on which line a row goes wrong."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)  # strict: no silent misquotes
    try:
        header = next(reader, [])
        rows = (cells for cells in reader if any(cell.strip() for cell in cells))  # blank lines are skipped
        for i, cells in enumerate(rows, 1):
            where = f"{path}:{i}"
            if len(cells) > len(header):
                raise PaluError(f"{where}: the row has {len(cells)} cells but the header names {len(header)} fields; "
                                f"quote cells that hold commas (line {reader.line_num} of the file).")
            row = dict(zip_longest(header, cells, fillvalue=""))
            for name in list_fields:
                cell = row.get(name)
                if isinstance(cell, str) and cell.lstrip().startswith("["):
                    try:
                        row[name] = json.loads(cell)
                    except json.JSONDecodeError as e:
                        raise PaluError(f"{where}: the '{name}' cell is not a valid JSON list ({e.msg}); "
                                        'write it as JSON, e.g. ["first", "second"].') from None
            yield where, row
    except csv.Error as e:
        raise PaluError(f"{path}:{reader.line_num}: cannot read it as CSV ({e}); fix the file or save it as "
                        "JSON Lines.") from None


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise PaluError(f"{path}: cannot read it as Parquet ({_one_line(e)}); check that it is a whole Parquet "
                        "file.") from None
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"{path}:{i}", row


def _hub_rows(source: DataSource, label: str) -> Iterator[Row]:
    import datasets  # imported here: it is slow to import and only the hub path needs it

    try:
        if source.subset is not None:
            dataset = datasets.load_dataset(source.path, source.subset, split=source.split or "train")
        else:
            dataset = datasets.load_dataset(source.path, source.split, split="train")
    except Exception as e:  # offline, unknown id or config: all mean "use a local copy"
        raise PaluError(
            f"{label}: not a local file or folder, so it was loaded as a Hugging Face hub "
            f"dataset, which failed ({type(e).__name__}: {_one_line(e)}). If you are offline you cannot reach the "
            "Hugging Face hub; download it while online, or point path at a local folder of its files (e.g. a local "
            "folder of TOFU files such as data/tofu)."
        ) from e
    for i, row in enumerate(dataset):
        yield f"{label}[{i}]", row


def _to_item(row: object, where: str, source: DataSource) -> QAItem:
    if not isinstance(row, dict):
        raise PaluError(f"{where}: expected an object with a question and an answer, got {type(row).__name__}; "
                        "write one object per row.")
    question = _required(row, source.question_field, "question_field", where)
    answer = _required(row, source.answer_field, "answer_field", where)
    return QAItem(
        question=question,
        answer=answer,
        spans=_spans(row, source.spans_field, answer or "", where),
        paraphrased_answer=_text(row.get(source.paraphrased_answer_field), source.paraphrased_answer_field, where),
        perturbed_answers=_answers(row.get(source.perturbed_answers_field), source.perturbed_answers_field, where),
        paraphrased_question=_text(row.get(source.paraphrased_question_field), source.paraphrased_question_field,
                                   where),
        source=where,
    )


def _to_document(row: object, where: str, source: DataSource) -> QAItem:
    """A document: an item with no question, its text as the answer that spans index into."""
    if not isinstance(row, dict):
        raise PaluError(f"{where}: expected an object with a '{source.text_field}' field, got {type(row).__name__}; "
                        "write one object per row.")
    text = _required(row, source.text_field, "text_field", where)
    if not text or not text.strip():
        raise PaluError(f"{where}: the document is empty; remove it or give it text.")
    return QAItem(question=None, answer=text, spans=_spans(row, source.spans_field, text, where), source=where)


def _required(row: dict, name: str, option: str, where: str) -> str | None:
    if name not in row:
        fields = ", ".join(map(str, row)) or "none"
        raise PaluError(f"{where}: no '{name}' field (the row has: {fields}); "
                        f"set {option} to the field that holds it.")
    return _text(row[name], name, where)  # an empty value is left to QAItem, which reports it


def _text(value: object, name: str, where: str) -> str | None:
    """Optional text; an empty CSV cell counts as absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PaluError(f"{where}: '{name}' should be text, got {type(value).__name__} {value!r:.60}; quote it.")
    return value


def _answers(value: object, name: str, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise PaluError(f"{where}: '{name}' should be a string or a list of strings, got {value!r:.80}.")


def _spans(row: dict, name: str, answer: str, where: str) -> list[Span]:
    """Spans from ``name``, else from an annotation file's ``target_words``.

    An entry's ``word`` that is nowhere in the answer (ignoring case, as the file annotator matches) is
    refused: its offsets mark something else. A word elsewhere than at its offsets is kept as given: the
    paper's span files mark a phrase's first occurrence, sometimes inside another word, and
    ``palu annotate annotator=file`` re-anchors those.
    """
    if name not in row:
        name = ANNOTATION_SPANS_FIELD
    value = row.get(name)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise PaluError(f"{where}: '{name}' should be a list of {{\"start\", \"end\"}} objects, got {value!r:.80}.")
    spans = []
    for entry in value:
        start, end = (entry.get("start"), entry.get("end")) if isinstance(entry, dict) else (None, None)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
            raise PaluError(f"{where}: each entry of '{name}' needs integer 'start' and 'end' offsets into the "
                            f"answer, e.g. {{\"start\": 0, \"end\": 5}}; got {entry!r:.80}.")
        word = entry.get("word")  # (offsets past the answer are left to QAItem, which says so)
        if isinstance(word, str) and end <= len(answer) and word.strip().lower() not in answer.lower():
            file = re.sub(r":\d+$", "", where)
            raise PaluError(f"{where}: the '{name}' word {word.strip()!r} does not occur in the answer; fix the entry "
                            f"or re-anchor the spans with `palu annotate annotator=file options.path={file}`.")
        spans.append(Span(start, end))
    return spans


def _one_line(exc: Exception) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(exc).split())
