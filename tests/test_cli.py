"""The `palu` command end to end on tiny settings, and its handling of bad input."""

from __future__ import annotations

import json

import pytest

from palu.cli import main

TINY = ["synthetic.n_authors=5", "synthetic.forget_authors=1", "synthetic.holdout_authors=1",
        "scratch.hidden=32", "scratch.layers=1", "scratch.heads=2", "scratch.vocab_size=500",
        "finetune.epochs=2", "unlearn.epochs=1", "retain_eval_items=5", "max_new_tokens=8", "--quiet", "--threads=1"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", f"output_dir={out}", *TINY]) == 0
    return out


def test_demo_writes_every_stage_and_prints_the_table(demo_dir, capsys):
    for path in ("config.yaml", "summary.json", "tokenizer/tokenizer.json", "full/model/config.json",
                 "retain/DONE", "unlearned/history.json", "eval-unlearned/results.json"):
        assert (demo_dir / path).exists(), path
    table = json.loads((demo_dir / "summary.json").read_text())
    assert set(table) == {"retain", "full", "unlearned"}
    assert table["retain"]["forget_quality"] is None  # the retain model is the reference itself
    assert 0 <= table["unlearned"]["forget_quality"] <= 1
    assert not (demo_dir / "full" / "checkpoint").exists()


def test_demo_refuses_to_overwrite_and_resumes(demo_dir, capsys):
    assert main(["demo", f"output_dir={demo_dir}", *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo", f"output_dir={demo_dir}", "--resume", *TINY]) == 0
    out = capsys.readouterr().out
    assert "forget quality" in out and "unlearned" in out and str(demo_dir) in out


def test_eval_command_writes_results(demo_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", f"model={demo_dir / 'unlearned' / 'model'}", f"output_dir={out}", "max_new_tokens=4",
            f"retain_reference={demo_dir / 'eval-retain' / 'results.json'}", "retain.limit=3", *TINY[:3], "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["forget_quality"]["higher_is_better"] is True
    assert len(results["retain_Q_A_Prob"]["value_by_index"]) == 3
    assert "forget_quality:" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["eval"], "no model given"),
    (["unlearn", "model=x", "train.lrr=1"], "unknown option 'lrr'"),
    (["unlearn", "model=x", "method=forgetall"], "valid methods"),
    (["finetune", "data=[{path: /nonexistent/data.jsonl}]"], "/nonexistent/data.jsonl"),
    (["demo", "--config", "/nonexistent/cfg.yaml"], "no such config file"),
    (["unlearn", "model=x", "--threads=0"], "--threads"),
])
def test_bad_input_is_one_clear_message(args, message, tmp_path, capsys):
    assert main([*args, f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_data_line_is_named(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Q1?", "answer": "A1."}\n{"question": "Q2?", "answer": \n')
    assert main(["finetune", f"data=[{{path: {data}}}]", f"output_dir={tmp_path / 'o'}"]) == 2
    assert f"{data}:2" in capsys.readouterr().err


def test_demo_with_a_lora_adapter(tmp_path):
    out = tmp_path / "lora"
    assert main(["demo", f"output_dir={out}", "peft=lora", "peft.r=4", "unlearn.lr=1e-2", *TINY]) == 0
    assert "peft" in (out / "unlearned" / "config.yaml").read_text()
    full = json.loads((out / "summary.json").read_text())
    assert full["unlearned"]["forget_Q_A_Prob"] != full["full"]["forget_Q_A_Prob"]


def test_demo_compare_runs_every_method_once(tmp_path, capsys):
    from palu.methods import METHODS

    out = tmp_path / "cmp"
    assert main(["demo", "--compare", f"output_dir={out}", "unlearn.lr=1e-3", *TINY]) == 0
    table = json.loads((out / "summary.json").read_text())
    assert set(table) == {"retain", "full", *METHODS}
    printed = capsys.readouterr().out
    assert all(name in printed for name in METHODS)
    assert (out / "npo" / "config.yaml").read_text().count("name: npo") == 1


def test_annotate_command_with_rules_writes_and_shows_spans(tmp_path, capsys):
    out = tmp_path / "spans.jsonl"
    args = ["annotate", "annotator=rules", "input.limit=3", f"output={out}", "--show", *TINY[:3]]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and any(row["target_words"] for row in rows)
    printed = capsys.readouterr().out
    assert rows[0]["answer"] in printed or rows[0]["question"] in printed
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err


def test_attack_command_prints_the_table(demo_dir, tmp_path, capsys):
    out = tmp_path / "attack"
    args = ["attack", f"model={demo_dir / 'unlearned' / 'model'}", f"output_dir={out}", "max_new_tokens=4",
            "attacks=[quantize]", "quantize_bits=[8]", "retain.limit=3", *TINY[:3], "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "quantize_8bit" in printed and str(out) in printed
    assert set(json.loads((out / "summary.json").read_text())) == {"none", "quantize_8bit"}


def test_demo_with_per_epoch_evaluation_keeps_the_best_epoch_and_reports(tmp_path, capsys):
    out = tmp_path / "epochs"
    args = ["demo", f"output_dir={out}", *TINY, "eval_every_epoch=true", "unlearn.epochs=2", "unlearn.lr=3e-3",
            "finetune.epochs=3", "finetune.lr=3e-3"]  # later overrides win
    assert main(args) == 0
    history = json.loads((out / "unlearned" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all("forget_quality" in h and "retain_Q_A_Prob" in h for h in history)
    assert (out / "unlearned" / "eval" / "epoch-2.json").exists()
    if (out / "unlearned" / "best.json").exists():  # an epoch kept 95% of the starting utility
        best = json.loads((out / "unlearned" / "best.json").read_text())
        assert best["epoch"] in (1, 2) and (out / "unlearned" / "best" / "config.json").exists()
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert "r.html" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "unlearned" in page
    assert (tmp_path / "r.md").exists()


def test_eval_suite_muse_on_the_shared_news_data(demo_dir, tmp_path, capsys):
    from conftest import SHARED

    if not (SHARED / "data" / "muse_news").exists():
        pytest.skip("../shared/data/muse_news is absent")
    out = tmp_path / "muse"
    args = ["eval", "suite=muse", f"model={demo_dir / 'unlearned' / 'model'}", f"path={SHARED / 'data' / 'muse_news'}",
            "verbmem_limit=1", "knowmem_limit=1", "privleak_limit=2", "max_length=64", f"output_dir={out}", "--quiet"]
    assert main(args) == 0
    assert "forget_verbmem_ROUGE:" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["privleak"] is None  # no retain reference given
