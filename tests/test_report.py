"""palu report on a tiny demo: what the page shows, that it escapes model output, its errors, and that
a real browser renders it without a console error."""

from __future__ import annotations

import json
import shutil
import subprocess
from html import escape

import pytest

from palu.cli import main
from palu.commands.report import run_report
from palu.data.synthetic import synthetic_splits
from palu.errors import PaluError
from palu.report import write_report

TINY = ["synthetic.n_authors=5", "synthetic.forget_authors=1", "synthetic.holdout_authors=1",
        "scratch.hidden=32", "scratch.layers=1", "scratch.heads=2", "scratch.vocab_size=500",
        "finetune.epochs=2", "unlearn.epochs=2", "retain_eval_items=5", "max_new_tokens=8", "--quiet", "--threads=1"]
RUNS = ("full", "retain", "unlearned")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "demo"
    assert main(["demo", f"output_dir={out}", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory):
    return write_report([demo], tmp_path_factory.mktemp("out") / "report.html")


@pytest.fixture
def copy(demo, tmp_path):
    """A demo folder a test may change."""
    return shutil.copytree(demo, tmp_path / "demo", ignore=shutil.ignore_patterns("model", "tokenizer"))


def loss_terms(run_dir) -> list[str]:
    history = json.loads((run_dir / "history.json").read_text())
    return [k for k in history[0] if k not in ("epoch", "lr")]


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")][2:]


def test_report_shows_every_run_with_one_svg_per_plot(report, demo):
    page = report[0].read_text()
    for name in RUNS:
        assert f"<td>{name}</td>" in page
    assert page.count("<svg") == len(loss_terms(demo / "unlearned")) + 1  # + the forget quality scatter
    assert "forget quality (log scale)" in page and "forget_<wbr>quality ↑" in page and "privleak ↕" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page  # self-contained


def test_generations_mark_the_forget_spans(report):
    page = report[0].read_text()
    item = synthetic_splits(5, 1, 1, 0).forget[0]
    assert f"<b>{escape(item.question)}</b>" in page
    for span in item.spans:
        assert f'<mark class="span">{escape(span.text(item.answer))}</mark>' in page
    assert "full (before)" in page


def test_markdown_has_one_row_per_run(report):
    rows = table_rows(report[1].read_text())
    assert [row.split("|")[1].strip() for row in rows] == list(RUNS)


def test_model_output_is_escaped(copy, tmp_path):
    results = json.loads((copy / "eval-unlearned" / "results.json").read_text())
    injected = '<script>alert("x")</script> & <b>bold</b>'
    results["forget_Q_A_ROUGE"]["value_by_index"]["0"]["generation"] = injected
    (copy / "eval-unlearned" / "results.json").write_text(json.dumps(results))
    page = write_report([copy], tmp_path / "r.html")[0].read_text()
    assert "<script" not in page and "<b>bold" not in page
    assert escape(injected) in page


def test_spans_given_with_the_ground_truth_are_marked(copy, tmp_path):
    results = json.loads((copy / "eval-unlearned" / "results.json").read_text())
    value = results["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    value["spans"] = [{"start": 0, "end": 3}]
    (copy / "eval-unlearned" / "results.json").write_text(json.dumps(results))
    page = write_report([copy], tmp_path / "r.html")[0].read_text()
    assert f'<mark class="span">{escape(value["ground_truth"][:3])}</mark>{escape(value["ground_truth"][3:])}' in page


def test_per_epoch_metrics_are_plotted_when_logged(copy, tmp_path):
    history, terms = json.loads((copy / "unlearned" / "history.json").read_text()), loss_terms(copy / "unlearned")
    history = [{"epoch": 0, "forget_quality": 1e-3, "model_utility": 0.5}] + [
        {**rec, "forget_quality": 0.1 * rec["epoch"], "model_utility": 0.4} for rec in history]
    (copy / "unlearned" / "history.json").write_text(json.dumps(history))
    page = write_report([copy], tmp_path / "r.html")[0].read_text()
    assert page.count("<svg") == len(terms) + 2 + 1
    assert "forget_quality ↑ (log scale)" in page and "model_utility ↑" in page


def test_a_run_folder_finds_its_evaluation_and_the_model_it_started_from(copy, tmp_path):
    run = shutil.copytree(copy / "unlearned", tmp_path / "run")
    shutil.copytree(copy / "eval-unlearned", run / "eval")
    page, table = write_report([run], tmp_path / "r.html")
    rows = table_rows(table.read_text())
    assert [row.split("|")[1].strip() for row in rows] == ["full", "run"]
    fq = json.loads((copy / "eval-unlearned" / "summary.json").read_text())["forget_quality"]
    assert f"{fq:.4f}" in rows[1] or f"{fq:.3e}" in rows[1]


def test_run_report_says_where_the_files_went(demo, tmp_path):
    text = run_report([demo], tmp_path / "sub" / "r.html")
    assert str((tmp_path / "sub" / "r.html").resolve()) in text and str((tmp_path / "sub" / "r.md").resolve()) in text


@pytest.mark.parametrize("break_it, where, what", [
    (lambda d: d / "nowhere", "nowhere", "no such folder"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "empty", "nothing to report"),
    (lambda d: (d / "eval-unlearned" / "results.json").unlink() or d, "eval-unlearned", "no results.json"),
    (lambda d: (d / "unlearned" / "history.json").unlink() or d / "unlearned", "unlearned", "no history.json"),
])
def test_missing_files_name_the_folder(copy, tmp_path, break_it, where, what):
    with pytest.raises(PaluError, match=f"{where}.*{what}"):
        write_report([break_it(copy)], tmp_path / "r.html")


def test_a_headless_browser_renders_the_page_without_console_errors(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH (apt-get install -y chromium); the page was not rendered")
    page = report[0]
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the page has no script: any console message is an error or a blocked external resource
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = proc.stdout
    assert dom.count("<svg") == page.read_text().count("<svg") > 0
    assert "<polyline" in dom and "<circle" in dom and '<mark class="span">' in dom


def test_runs_of_the_same_name_take_the_parent_folders_that_tell_them_apart(tmp_path):
    from palu.report.discover import Run, _unique_names

    runs = [Run("step-1", "unlearned", run_dir=tmp_path / method / prop / "step-1")
            for method in ("palu", "rmu") for prop in ("scalability", "sustainability")]
    runs.append(Run("retain", "retain", eval_dir=tmp_path / "eval-retain"))
    _unique_names(runs)
    assert [r.name for r in runs] == ["palu/scalability/step-1", "palu/sustainability/step-1",
                                      "rmu/scalability/step-1", "rmu/sustainability/step-1", "retain"]
