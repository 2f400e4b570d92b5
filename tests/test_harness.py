"""`palu eval suite=lm-eval` on a small multiple-choice task shipped in the test, offline: the accuracy
equals a direct computation of the same log-likelihood comparison."""

from __future__ import annotations

import json

import pytest
import torch

from palu.cli import main

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'palu[lm-eval]')")

DOCS = [
    {"question": "Where was Hina Ameen born?", "choices": ["Karachi", "Kuwait City", "Granite"], "answer": 0},
    {"question": "What genre does Hina Ameen write?", "choices": ["poetry", "geology", "drama"], "answer": 1},
    {"question": "Which book of hers is most loved?", "choices": ["Basil", "Doctor", "Granite Glossary"], "answer": 2},
    {"question": "What is her father's job?", "choices": ["Real Estate Agent", "Doctor"], "answer": 0},
    {"question": "Where was Basil Mahfouz Al-Kuwaiti born?", "choices": ["Karachi", "Kuwait City"], "answer": 1},
]
TASK = """task: palu_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def task_dir(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "palu_mc.yaml").write_text(TASK.format(data=data))
    return folder


def direct_accuracy(model, tok) -> tuple[float, list[int]]:
    """The harness's multiple-choice rule written out: the choice whose tokens, after the question and
    a space, have the highest summed log-probability (no BOS, the context's trailing space moved)."""
    hits = []
    for doc in DOCS:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            start = len(tok(context, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(start, len(whole))))
        hits.append(int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"]))
    return sum(hits) / len(hits), hits


def test_the_harness_accuracy_matches_a_direct_computation(saved_model, task_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "suite=lm-eval", f"model={saved_model}", "tasks=[palu_mc]", f"include_path={task_dir}",
                 "batch_size=2", f"output_dir={out}", "--quiet", "--threads=1"]) == 0
    assert "lm-eval/palu_mc/acc:" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    acc = results["lm-eval/palu_mc/acc"]
    from palu.models import load_model, load_tokenizer

    expected, hits = direct_accuracy(load_model(str(saved_model)).eval(), load_tokenizer(str(saved_model)))
    assert acc["agg_value"] == pytest.approx(expected) and acc["higher_is_better"] is True
    assert [acc["value_by_index"][str(i)] for i in range(len(DOCS))] == hits


def test_an_unknown_task_is_one_line(saved_model, task_dir, tmp_path, capsys):
    assert main(["eval", "suite=lm-eval", f"model={saved_model}", "tasks=[no_such_task]", f"include_path={task_dir}",
                 f"output_dir={tmp_path / 'e'}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "lm-eval has no task 'no_such_task'" in err and "Traceback" not in err


def test_the_harness_runs_after_every_epoch_and_serves_as_the_utility(saved_model, task_dir, tmp_path):
    from cli_helpers import unlearn

    run = tmp_path / "run"
    assert unlearn(saved_model, run, "train.epochs=2", "eval.forget.limit=2", "eval.retain.limit=2",
                   "eval.max_new_tokens=2", "eval.lm_eval.tasks=[palu_mc]", f"eval.lm_eval.include_path={task_dir}",
                   "select.utility=lm-eval/palu_mc/acc", "select.metric=forget_Q_A_Prob") == 0
    records = [json.loads((run / "eval" / f"epoch-{e}.json").read_text())["summary"] for e in range(3)]
    assert all(0 <= r["lm-eval/palu_mc/acc"] <= 1 for r in records)
    history = json.loads((run / "history.json").read_text())
    assert [h.get("lm-eval/palu_mc/acc") for h in history] == [r["lm-eval/palu_mc/acc"] for r in records]


def test_the_wmdp_recipe_shape_rmu_on_a_corpus_scored_by_the_harness(saved_model, task_dir, tmp_path):
    """RMU unlearns a text corpus; the harness scores the task before and after (WMDP's recipe, offline)."""
    from cli_helpers import unlearn

    corpus = tmp_path / "hazard.jsonl"
    corpus.write_text("".join(json.dumps({"text": d["question"] + " " + d["choices"][d["answer"]]}) + "\n"
                              for d in DOCS))
    run = tmp_path / "rmu"
    assert unlearn(saved_model, run, "method=rmu", "method.layer=0", f"forget.path={corpus}", "forget.kind=text",
                   f"retain.path={corpus}", "retain.kind=text", "retain.limit=1", "train.max_length=32",
                   "eval.forget.limit=1", "eval.retain.limit=1", "eval.max_new_tokens=1",
                   "eval.lm_eval.tasks=[palu_mc]", f"eval.lm_eval.include_path={task_dir}", "eval.every_epoch=all") == 0
    before, after = (json.loads((run / "eval" / f"epoch-{e}.json").read_text())["summary"] for e in (0, 1))
    assert {"lm-eval/palu_mc/acc"} <= set(before) & set(after)


def test_a_missing_harness_names_the_install_command(saved_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if not installed
    assert main(["eval", "suite=lm-eval", f"model={saved_model}", "tasks=[x]", f"output_dir={tmp_path / 'e'}",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'palu[lm-eval]'" in err and "Traceback" not in err
