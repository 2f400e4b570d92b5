"""Loaders: every format, TOFU's real files, the hub path, and errors that name file and line."""

import json
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from palu.data.loaders import DataSource, load_lines, load_qa
from palu.data.qa import Span
from palu.errors import PaluError

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
TOFU = SHARED / "tofu"
ANNOTATIONS = SHARED / "tofu_annotations" / "forget05_gpt4o.jsonl"

CUSTOM = dict(question_field="q", answer_field="a", perturbed_answers_field="wrong", spans_field="marks")
ROWS = [
    {"q": "Where was Ann born?", "a": "Ann was born in Oslo.", "wrong": ["Ann was born in Rome."],
     "marks": [{"start": 16, "end": 20}]},
    {"q": "What does Ann write?", "a": "Ann writes poems.", "wrong": "Ann writes novels.", "marks": []},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path, **kwargs):
    return load_qa(DataSource(str(path), **kwargs))


def assert_custom_rows(items, sources):
    assert [i.question for i in items] == ["Where was Ann born?", "What does Ann write?"]
    assert [i.answer for i in items] == ["Ann was born in Oslo.", "Ann writes poems."]
    assert items[0].spans == [Span(16, 20)] and items[0].spans[0].text(items[0].answer) == "Oslo"
    assert items[1].spans == []
    assert items[0].perturbed_answers == ["Ann was born in Rome."]
    assert items[1].perturbed_answers == ["Ann writes novels."]  # a single string becomes a list
    assert [i.source for i in items] == sources


# --- formats ---------------------------------------------------------------------------------------


def test_jsonl_with_custom_fields_skips_blank_lines_and_counts_lines(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    assert_custom_rows(load(path, **CUSTOM), [f"{path}:1", f"{path}:3"])


def test_json_array_is_detected_by_content(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    assert_custom_rows(load(path, **CUSTOM), [f"{path}:1", f"{path}:2"])


def test_json_extension_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "qa.json", ROWS)
    assert_custom_rows(load(path, **CUSTOM), [f"{path}:1", f"{path}:2"])


def test_csv_decodes_json_list_cells_and_keeps_text_as_text(tmp_path):
    path = tmp_path / "qa.csv"
    frame = pd.DataFrame([{**r, "wrong": json.dumps(r["wrong"]) if isinstance(r["wrong"], list) else r["wrong"],
                           "marks": json.dumps(r["marks"])} for r in ROWS])
    frame.to_csv(path, index=False)
    assert_custom_rows(load(path, **CUSTOM), [f"{path}:1", f"{path}:2"])


def test_csv_empty_optional_cells_are_absent_and_na_stays_text(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,paraphrased_answer,perturbed_answer\nIs it known?,NA,,\n", encoding="utf-8")
    [item] = load(path)
    assert item.answer == "NA"
    assert item.paraphrased_answer is None and item.perturbed_answers == []


def test_parquet_with_custom_fields(tmp_path):
    path = tmp_path / "qa.parquet"
    rows = [{**r, "wrong": r["wrong"] if isinstance(r["wrong"], list) else [r["wrong"]]} for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert_custom_rows(load(path, **CUSTOM), [f"{path}:1", f"{path}:2"])


def test_tofu_perturbed_row_and_limit(tmp_path):
    row = {"question": "Q?", "answer": "A.", "paraphrased_answer": "Para A.", "perturbed_answer": ["W1.", "W2."],
           "paraphrased_question": "Para Q?"}
    path = write_jsonl(tmp_path / "forget_perturbed.json", [row, {**row, "question": "Q2?"}, "not a row"])
    [item] = load(path, limit=1)  # the bad third row is never read
    assert (item.paraphrased_answer, item.perturbed_answers, item.paraphrased_question) == (
        "Para A.", ["W1.", "W2."], "Para Q?")
    assert load(path, limit=0) == []


def test_folder_and_split_picks_the_split_file(tmp_path):
    write_jsonl(tmp_path / "forget.json", [{"question": "F?", "answer": "F."}])
    write_jsonl(tmp_path / "retain.jsonl", [{"question": "R?", "answer": "R."}])
    [item] = load(tmp_path, split="retain")
    assert item.question == "R?" and item.source == f"{tmp_path / 'retain.jsonl'}:1"


def test_annotation_rows_use_target_words(tmp_path):
    row = {"question": "Q?", "answer": "Ann lives in Oslo.",
           "target_words": [{"word": "Oslo", "start": 13, "end": 17}]}
    [item] = load(write_jsonl(tmp_path / "ann.jsonl", [row]))
    assert [s.text(item.answer) for s in item.spans] == ["Oslo"]


# --- the real TOFU files ---------------------------------------------------------------------------


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent; the shared TOFU data is needed for this test")
    return path


def test_real_tofu_forget05_perturbed():
    items = load(require(TOFU), split="forget05_perturbed")
    assert len(items) == 200
    assert all(len(i.perturbed_answers) == 5 for i in items)
    assert all(i.paraphrased_answer and i.paraphrased_question for i in items)
    assert items[0].answer == "The author's name is Hina Ameen."


def test_real_tofu_annotations_load_with_spans():
    items = load(require(ANNOTATIONS))
    assert len(items) == 200
    assert items[0].spans and items[0].spans[0].text(items[0].answer) == "Hina Ameen"
    assert sum(1 for i in items if not i.spans) == 4  # documented: 4 forget05 rows have no span


def test_real_idontknow_lines():
    lines = load_lines(require(TOFU / "idontknow.jsonl"))
    assert len(lines) == 100 and lines[0] == "I'm not certain about that."


# --- bad input --------------------------------------------------------------------------------------


def error_of(path, **kwargs) -> str:
    with pytest.raises(PaluError) as info:
        load(path, **kwargs)
    return str(info.value)


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n", encoding="utf-8")
    assert f"{path}:2" in error_of(path, **CUSTOM)


def test_malformed_json_array_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"question": "Q?", "answer": "A."},\n{"question": }\n]', encoding="utf-8")
    assert f"{path}:3" in error_of(path)


def test_missing_question_field_lists_fields_and_option(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}, {"prompt": "Q?", "answer": "A."}])
    message = error_of(path)
    assert f"{path}:2" in message and "prompt, answer" in message and "set question_field" in message


def test_missing_answer_field_names_option(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,response\nQ?,A.\n", encoding="utf-8")
    message = error_of(path)
    assert f"{path}:1" in message and "question, response" in message and "set answer_field" in message


def test_empty_answer_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "  "}])
    message = error_of(path)
    assert f"{path}:1" in message and "answer is empty" in message


def test_span_outside_answer_names_file_and_line(tmp_path):
    row = {"question": "Q?", "answer": "Short.", "target_words": [{"word": "x", "start": 3, "end": 40}]}
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}, row])
    message = error_of(path)
    assert f"{path}:2" in message and "outside its answer" in message


def test_span_without_offsets_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A.", "spans": [{"word": "A"}]}])
    assert f"{path}:1" in error_of(path)


def test_non_text_answer_and_non_object_row(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": 1975}])
    assert f"{path}:1" in error_of(path) and "quote it" in error_of(path)
    path = write_jsonl(tmp_path / "texts.jsonl", ["just a string"])
    assert f"{path}:1" in error_of(path)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "absent" / "qa.json"
    message = error_of(path)
    assert str(path) in message and "no such file or folder" in message


def test_missing_split_lists_available_splits(tmp_path):
    write_jsonl(tmp_path / "forget05.json", [{"question": "Q?", "answer": "A."}])
    (tmp_path / "retain.parquet").write_bytes(b"")
    message = error_of(tmp_path, split="forget99")
    assert str(tmp_path) in message and "forget99" in message and "forget05, retain" in message
    assert "set split" in error_of(tmp_path)  # a folder without a split


def test_unsupported_extension(tmp_path):
    path = tmp_path / "qa.txt"
    path.write_text("Q? A.\n", encoding="utf-8")
    message = error_of(path)
    assert str(path) in message and ".txt" in message


def test_empty_file_and_unreadable_formats(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert "no QA rows" in error_of(empty)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert str(broken) in error_of(broken)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps({"question": "Q?", "answer": "A."}).encode() + b"\n\xe9\n")
    assert f"{latin}:2" in error_of(latin)


# --- hub --------------------------------------------------------------------------------------------


def test_hub_rows_come_through(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": "Q?", "answer": "A.", "perturbed_answer": ["W."]}, {"question": "Q2?", "answer": "B."}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_qa(DataSource("locuslab/TOFU", "forget05_perturbed"))
    assert calls == [("locuslab/TOFU", "forget05_perturbed", "train")]
    assert [i.question for i in items] == ["Q?", "Q2?"] and items[0].perturbed_answers == ["W."]
    assert [i.source for i in items] == [f"locuslab/TOFU/forget05_perturbed[{i}]" for i in (0, 1)]


def test_hub_failure_becomes_palu_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PaluError) as info:
        load_qa(DataSource("locuslab/TOFU", "forget05"))
    message = str(info.value)
    assert "cannot reach the Hugging Face hub" in message and "no network" in message
    assert "locuslab/TOFU/forget05" in message and "local folder" in message


# --- load_lines -------------------------------------------------------------------------------------


def test_load_lines_plain_and_json_strings(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text('I am not sure.\n\n  "I don\'t know."  \n"Quoted," she said.\n', encoding="utf-8")
    assert load_lines(path) == ["I am not sure.", "I don't know.", '"Quoted," she said.']


def test_load_lines_errors_name_the_file(tmp_path):
    with pytest.raises(PaluError, match="absent.txt"):
        load_lines(tmp_path / "absent.txt")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PaluError, match="no lines"):
        load_lines(blank)
