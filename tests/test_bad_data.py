"""Whatever a user feeds palu, the answer is one line that names the file (and line, metric or item) and says
what to do, never a traceback: data files, span files, forget/retain sets, open-unlearning logs, run folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED

from palu.cli import main
from palu.commands.report import run_report
from palu.data.loaders import DataSource, load_lines, load_qa
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem, Span, shared_items
from palu.errors import PaluError
from palu.methods.ga import GAConfig
from palu.report import write_report
from palu.train.loop import TrainConfig
from palu.train.unlearn import unlearn

BOM = b"\xef\xbb\xbf"
ROW = {"question": "Where was Ann born?", "answer": "Ann was born in Oslo."}


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def error_of(call, *args) -> str:
    """The PaluError ``call(*args)`` raises, checked to be one line."""
    with pytest.raises(PaluError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def load_error(path: Path, **kwargs) -> str:
    return error_of(lambda: load_qa(DataSource(str(path), **kwargs)))


# --- a byte-order mark is accepted everywhere palu reads data ----------------------------------------


@pytest.mark.parametrize("name, data", [
    ("qa.json", json.dumps([ROW]).encode()),
    ("qa.jsonl", jsonl([ROW])),
    ("qa.csv", b"question,answer\nWhere was Ann born?,Ann was born in Oslo.\n"),
])
def test_data_files_with_a_byte_order_mark_load(tmp_path, name, data):
    [item] = load_qa(DataSource(str(write(tmp_path / name, BOM + data))))
    assert (item.question, item.answer) == (ROW["question"], ROW["answer"])  # the first field's name is clean


def test_line_files_with_a_byte_order_mark_load(tmp_path):
    assert load_lines(write(tmp_path / "idk.jsonl", BOM + b"I am not sure.\n\"I don't know.\"\n")) == [
        "I am not sure.", "I don't know."]


# --- data files that are not what they claim ----------------------------------------------------------


def truncated_parquet(path: Path) -> bytes:
    pq.write_table(pa.Table.from_pylist([ROW] * 50), path)
    return path.read_bytes()[:-40]


@pytest.mark.parametrize("name, data, where", [
    ("latin.jsonl", jsonl([ROW]) + "caf\xe9\n".encode("latin-1"), ":2: not UTF-8"),
    ("latin.json", b'[\n{"question": "Q?",\n "answer": "caf\xe9"}]', ":3: not UTF-8"),
    ("latin.csv", "question,answer\nQ?,caf\xe9\n".encode("latin-1"), ":2: not UTF-8"),
    ("binary.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), ":1: not UTF-8"),
    ("empty.json", b"", ": no QA rows"),
    ("empty.jsonl", b"\n\n", ": no QA rows"),
    ("empty.csv", b"", ": no QA rows"),
    ("empty.parquet", b"", ": cannot read it as Parquet"),
    ("scalar.json", b"42", ":1: expected an object"),
    ("strings.json", b'["Where?", "There."]', ":1: expected an object"),
    ("lists.jsonl", b'["Where?", "There."]\n', ":1: expected an object"),
    ("list-cell.csv", b'question,answer,perturbed_answer\nQ?,A.,"[""unclosed"\n', ":1: the 'perturbed_answer' cell"),
    ("ragged.csv", b"question,answer\nQ?,A., and more\n", ":1: the row has 3 cells"),
    ("quote.csv", b'question,answer\nQ?,"never closed\n', ":2: cannot read it as CSV"),
    ("stray-quote.csv", b'question,answer\nQ?,"A" and B\n', ":2: cannot read it as CSV"),
])
def test_bad_data_files_name_the_file_and_line(tmp_path, name, data, where):
    path = write(tmp_path / name, data)
    assert f"{path}{where}" in load_error(path)


def test_a_truncated_parquet_file_is_named(tmp_path):
    path = tmp_path / "qa.parquet"
    path.write_bytes(truncated_parquet(path))
    assert f"{path}: cannot read it as Parquet" in load_error(path)


def test_a_folder_without_a_split_lists_its_splits(tmp_path):
    write(tmp_path / "forget05.jsonl", jsonl([ROW]))
    message = load_error(tmp_path)
    assert str(tmp_path) in message and "set split" in message and "forget05" in message


def test_a_folder_given_as_a_line_file_is_named(tmp_path):
    assert f"{tmp_path} is a folder" in error_of(load_lines, tmp_path)


# --- span entries whose word is not in the answer ---------------------------------------------------------

KUWAIT = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."


def span_row(answer: str, *entries: dict, field: str = "target_words") -> dict:
    return {"question": "Where was he born?", "answer": answer, field: list(entries)}


@pytest.mark.parametrize("field", ["target_words", "spans"])
def test_a_word_absent_from_the_answer_is_refused(tmp_path, field):
    rows = [span_row(KUWAIT, {"word": "Kuwait City", "start": 37, "end": 48}, field=field),
            span_row(KUWAIT, {"word": "Baghdad", "start": 37, "end": 44}, field=field)]
    path = write(tmp_path / "spans.jsonl", jsonl(rows))
    message = load_error(path)
    assert f"{path}:2" in message and "'Baghdad'" in message and "does not occur in the answer" in message
    assert f"palu annotate annotator=file options.path={path}" in message


@pytest.mark.parametrize("entry", [
    {"word": "Kuwait", "start": 17, "end": 23},  # the paper's defect: the first occurrence, inside "Al-Kuwaiti"
    {"word": "Kuwait", "start": 0, "end": 6},  # in the answer, but not at its offsets: the file annotator moves it
    {"word": "kuwait city ", "start": 37, "end": 48},  # case and surrounding spaces, as the file annotator compares
    {"start": 0, "end": 5},  # no word: nothing to check
    {"word": "", "start": 0, "end": 5},
])
def test_a_word_somewhere_in_the_answer_is_kept_as_given(tmp_path, entry):
    [item] = load_qa(DataSource(str(write(tmp_path / "spans.jsonl", jsonl([span_row(KUWAIT, entry)])))))
    assert item.spans == [Span(entry["start"], entry["end"])]


@pytest.mark.parametrize("name", ["forget01_gpt4o.jsonl", "forget05_gpt4o.jsonl", "forget10_gpt4o.jsonl"])
def test_the_papers_annotation_files_load(name):
    path = SHARED / "data" / "tofu_annotations" / name
    if not path.exists():
        pytest.skip(f"{path} is absent; the shared annotation files are needed for this test")
    items = load_qa(DataSource(str(path)))
    assert len(items) in (40, 200, 400) and sum(len(i.spans) for i in items) > len(items)


# --- a forget set that overlaps the retain set -----------------------------------------------------------


def qa(i: int, source: str = "") -> QAItem:
    return QAItem(f"Where was author {i} born?", f"Author {i} was born in city {i}.", source=source)


def test_shared_items_compare_question_and_answer():
    forget = [qa(1, "f:1"), qa(2, "f:2"), qa(3, "f:3")]
    retain = [QAItem(" Where was author 2 born?", "Author 2 was born in city 2. "), qa(3), qa(4),
              QAItem("Where was author 1 born?", "Somewhere else.")]
    assert [item.source for item in shared_items(forget, retain)] == ["f:2", "f:3"]
    assert shared_items(forget, [qa(5)]) == []


@pytest.mark.parametrize("retain, warned", [(None, "3 of 3 forget items"), ([qa(7), qa(8)], None)])
def test_unlearning_warns_when_forget_items_are_in_the_retain_set(bpe_tokenizer, tiny_model, tmp_path, caplog, retain,
                                                                  warned):
    forget = [qa(i, f"forget.jsonl:{i + 1}") for i in range(3)]
    model = tiny_model(bpe_tokenizer, hidden=16)
    train = TrainConfig(epochs=1, batch_size=4, max_length=48, warmup_epochs=0, bf16="false")
    with caplog.at_level(logging.WARNING, logger="palu.train.unlearn"):
        unlearn(model, bpe_tokenizer, forget, retain or forget, "ga", GAConfig(), train, PromptConfig(), tmp_path,
                progress=False)
    shared = [r.getMessage() for r in caplog.records if "also in the retain set" in r.getMessage()]
    if warned:
        assert len(shared) == 1 and warned in shared[0] and "(first: forget.jsonl:1)" in shared[0]
    else:
        assert shared == []


# --- open-unlearning logs --------------------------------------------------------------------------------


def by_index(*values: dict) -> dict:
    return {"agg_value": 0.5, "value_by_index": {str(i): v for i, v in enumerate(values)}}


def good_log() -> dict:
    return {
        "forget_Q_A_Prob": by_index({"prob": 0.5, "avg_loss": 0.7}, {"prob": 0.4, "avg_loss": 0.9}),
        "forget_Q_A_PARA_Prob": by_index({"prob": 0.3, "avg_loss": 1.2}, {"prob": 0.2, "avg_loss": 1.6}),
        "forget_Q_A_PERT_Prob": by_index({"prob": [0.1, 0.2], "avg_loss": [2.3, 1.6]},
                                         {"prob": [0.1, 0.1], "avg_loss": [2.3, 2.3]}),
        "forget_Q_A_ROUGE": by_index({"generation": "Ann was born.", "ground_truth": "Ann was born in Oslo."},
                                     {"generation": "No idea.", "ground_truth": "Bob writes poems."}),
        "exact_memorization": by_index({"score": 1.0}, {"score": 0.5}),
        "mia_min_k": {"agg_value": 0.5, "forget": by_index({"score": 0.1}, {"score": 0.2}),
                      "holdout": by_index({"score": 0.3}, {"score": 0.4})},
    }


def eval_error(capsys, *args) -> str:
    """stderr of a ``palu eval --from-open-unlearning`` that must fail cleanly."""
    assert main(["eval", "--from-open-unlearning", *map(str, args), "--threads=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_complete_log_is_recomputed(tmp_path, capsys):
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(json.dumps(good_log()))
    assert main(["eval", "--from-open-unlearning", str(path), "--quiet", "--threads=1"]) == 0
    assert "forget_truth_ratio" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("metric, part, field", [
    ("forget_Q_A_Prob", None, "prob"),
    ("forget_Q_A_PARA_Prob", None, "avg_loss"),
    ("forget_Q_A_PERT_Prob", None, "avg_loss"),
    ("forget_Q_A_ROUGE", None, "generation"),
    ("forget_Q_A_ROUGE", None, "ground_truth"),
    ("exact_memorization", None, "score"),
    ("mia_min_k", "holdout", "score"),
])
def test_a_missing_per_item_field_names_file_metric_index_and_field(tmp_path, capsys, metric, part, field):
    log = good_log()
    entry = log[metric] if part is None else log[metric][part]
    del entry["value_by_index"]["1"][field]
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(json.dumps(log))
    err = eval_error(capsys, path)
    assert str(path) in err and metric in err and f"value_by_index[1] has no '{field}'" in err


@pytest.mark.parametrize("metric, value", [("forget_Q_A_Prob", {"agg_value": 0.5}), ("forget_Q_A_ROUGE", 0.5),
                                           ("mia_min_k", {"agg_value": 0.5, "forget": {"agg_value": 0.5}})])
def test_a_metric_without_per_item_values_is_named(tmp_path, capsys, metric, value):
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(json.dumps({**good_log(), metric: value}))
    err = eval_error(capsys, path)
    assert str(path) in err and metric in err and "no value_by_index" in err


@pytest.mark.parametrize("metric, field, value", [("forget_Q_A_Prob", "prob", "0.5"),
                                                  ("forget_Q_A_PERT_Prob", "avg_loss", 2.3),
                                                  ("forget_Q_A_ROUGE", "generation", None),
                                                  ("mia_min_k", "score", None)])
def test_a_per_item_value_of_the_wrong_kind_is_named(tmp_path, capsys, metric, field, value):
    log = good_log()
    entry = log[metric]["forget"] if metric.startswith("mia") else log[metric]
    entry["value_by_index"]["0"][field] = value
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(json.dumps(log))
    err = eval_error(capsys, path)
    assert str(path) in err and metric in err and f"value_by_index[0].{field} should be" in err


def test_a_broken_retain_log_is_the_one_named(tmp_path, capsys):
    good, retain = tmp_path / "eval.json", tmp_path / "retain.json"
    good.write_text(json.dumps(good_log()))
    log = good_log()
    del log["forget_Q_A_Prob"]["value_by_index"]["0"]["prob"]
    retain.write_text(json.dumps(log))
    err = eval_error(capsys, good, "--retain-log", retain)
    assert f"{retain}: metric forget_Q_A_Prob" in err and str(good) not in err


def test_a_log_that_is_not_utf8_names_file_and_line(tmp_path, capsys):
    path = write(tmp_path / "TOFU_EVAL.json", b'{\n"forget_Q_A_Prob": "\xff"}')
    assert f"{path}:2: not UTF-8" in eval_error(capsys, path)


# --- palu report on run folders with damaged files ------------------------------------------------------


def fake_demo(root: Path) -> Path:
    """A demo-like folder: the run ``unlearned`` and its evaluation ``eval-unlearned``, as palu writes them."""
    run, evaluation = root / "unlearned", root / "eval-unlearned"
    run.mkdir(parents=True)
    evaluation.mkdir()
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 1.0, "lr": 1e-4}]))
    (run / "config.yaml").write_text("method: ga\nmodel: nowhere\n")
    (evaluation / "summary.json").write_text(json.dumps({"forget_quality": 0.1, "model_utility": 0.5}))
    rouge = by_index({"generation": "Ann was born.", "ground_truth": "Ann was born in Oslo.",
                      "spans": [{"start": 16, "end": 20}]})
    (evaluation / "results.json").write_text(json.dumps({"forget_Q_A_ROUGE": rouge}))
    return root


def test_the_fake_run_folder_makes_a_report(tmp_path):
    page, _ = write_report([fake_demo(tmp_path / "demo")], tmp_path / "r.html")
    assert '<mark class="span">Oslo</mark>' in page.read_text()


@pytest.mark.parametrize("file, data, what", [
    ("unlearned/history.json", b"\x89PNG\r\n\x1a\n\x00\xff", ":1: not UTF-8"),
    ("eval-unlearned/summary.json", b'{"forget_quality": \xff}', ":1: not UTF-8"),
    ("eval-unlearned/results.json", b"\xff\xfe{}", ":1: not UTF-8"),
    ("unlearned/config.yaml", b"method: ga\nmodel: caf\xe9\n", ":2: not UTF-8"),
    ("unlearned/history.json", b"", ":1: not valid JSON"),
    ("unlearned/history.json", b'{"epoch": 1}', ": expected a JSON list"),
    ("unlearned/history.json", b"[1, 2]", ": expected a list of per-epoch records"),
    ("eval-unlearned/summary.json", b"[0.1]", ": expected a JSON object"),
    ("eval-unlearned/results.json", b'"results"', ": expected a JSON object"),
    ("eval-unlearned/results.json", b'{"forget_Q_A_ROUGE": 0.5}', ": 'forget_Q_A_ROUGE' should be an object"),
    ("eval-unlearned/results.json", b'{"forget_Q_A_ROUGE": {"value_by_index": [{}]}}', ": 'forget_Q_A_ROUGE'"),
    ("eval-unlearned/results.json", b'{"forget_Q_A_ROUGE": {"value_by_index": {"0": {"generation": "g", '
                                    b'"ground_truth": "t", "spans": [{"from": 0}]}}}}', ": forget_Q_A_ROUGE"),
    ("unlearned/config.yaml", b"- a list\n", ": a config file must hold a mapping"),
    ("unlearned/config.yaml", b"forget: {path: synthetic}\nsynthetic: 5\n", ": 'synthetic' should be a mapping"),
])
def test_damaged_run_files_name_the_file(tmp_path, file, data, what):
    demo = fake_demo(tmp_path / "demo")
    write(demo / file, data)
    assert f"{demo / file}{what}" in error_of(write_report, [demo], tmp_path / "r.html")


def test_a_folder_where_a_run_file_should_be_is_named(tmp_path):
    demo = fake_demo(tmp_path / "demo")
    (demo / "unlearned" / "config.yaml").unlink()
    (demo / "unlearned" / "config.yaml").mkdir()
    assert f"{demo / 'unlearned' / 'config.yaml'} is a folder" in error_of(run_report, [demo / "unlearned"])
