"""Output folders: palu replaces only its own run folders, never one holding an input, the current,
home or root folder; two commands never share a folder; --resume keeps a run's config."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from cli_helpers import TINY_UNLEARN, one_line_error, unlearn

from palu.cli import main
from palu.errors import PaluError
from palu.io import write_text
from palu.runs import MARKER, Reuse, run_folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, saved_model):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert unlearn(saved_model, out) == 0
    return out


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / run.name)


def test_a_run_folder_is_marked_and_config_saved(finished_run):
    assert json.loads((finished_run / MARKER).read_text()) == {"command": "unlearn"}
    assert "forget:" in (finished_run / "config.yaml").read_text()
    assert (finished_run / "DONE").exists() and (finished_run / "model" / "config.json").exists()


def test_overwrite_never_deletes_the_current_folder(finished_run, tmp_path, monkeypatch, capsys):
    run = copy_of(finished_run, tmp_path)
    monkeypatch.chdir(run)
    assert unlearn(run / "model", ".", "--overwrite") == 2
    one_line_error(capsys, "current, home or root folder")
    assert (run / "model" / "model.safetensors").exists() and (run / "DONE").exists()


def test_overwrite_never_deletes_a_parent_of_the_current_folder_or_home(finished_run, tmp_path, monkeypatch, capsys):
    run = copy_of(finished_run, tmp_path)
    (run / "work").mkdir()
    monkeypatch.chdir(run / "work")
    assert unlearn(finished_run / "model", run, "--overwrite") == 2
    one_line_error(capsys, "current, home or root folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(run))
    assert unlearn(finished_run / "model", run, "--overwrite") == 2
    one_line_error(capsys, "current, home or root folder")
    assert (run / "DONE").exists()


def test_overwrite_never_deletes_the_input_model(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    assert unlearn(run / "model", run, "--overwrite") == 2
    one_line_error(capsys, "holds this command's input model=")
    assert (run / "model" / "model.safetensors").exists()


def test_overwrite_never_deletes_input_data(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    data = run / "forget.jsonl"
    data.write_text('{"question": "Who?", "answer": "Hina Ameen."}\n')
    assert unlearn(finished_run / "model", run, f"forget.path={data}", "--overwrite") == 2
    one_line_error(capsys, "forget.path=")
    assert data.exists()


def test_overwrite_refuses_a_folder_palu_did_not_make(saved_model, tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    assert unlearn(saved_model, mine, "--overwrite") == 2
    one_line_error(capsys, "palu did not write")
    assert (mine / "chapter1.tex").read_text() == "precious"
    assert unlearn(saved_model, mine, "--resume") == 2
    one_line_error(capsys, "palu did not write")
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.tex"]


def test_overwrite_replaces_a_palu_run_folder(finished_run, saved_model, tmp_path):
    run = copy_of(finished_run, tmp_path)
    (run / "stale.txt").write_text("old")
    assert unlearn(saved_model, run, "--overwrite") == 0
    assert not (run / "stale.txt").exists() and (run / "DONE").exists()


def test_a_run_of_another_command_is_not_resumed_or_taken(finished_run, saved_model, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    before = (run / "config.yaml").read_text()
    assert main(["finetune", f"model={saved_model}", f"output_dir={run}", "--resume", "--quiet"]) == 2
    one_line_error(capsys, "`palu unlearn` run folder")
    sweep = ["sweep", f"output_dir={run}", "unlearn.eval.retain_reference=r.json", "--quiet"]
    assert main(sweep) == 2
    one_line_error(capsys, "`palu unlearn` run folder")
    assert (run / "config.yaml").read_text() == before and not (run / "study.db").exists()


def test_resume_refuses_a_changed_config_and_names_the_options(finished_run, saved_model, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    (run / "DONE").unlink()
    before = (run / "config.yaml").read_text()
    assert unlearn(saved_model, run, "--resume", "method=npo", "train.lr=3e-4") == 2
    one_line_error(capsys, "method.name: 'palu' -> 'npo'", "train.lr: 1e-05 -> 0.0003", "--allow-config-change")
    assert (run / "config.yaml").read_text() == before
    assert unlearn(saved_model, run, "--resume", "train.lr=3e-4", "--allow-config-change") == 0
    assert "lr: 0.0003" in (run / "config.yaml").read_text()


def test_resume_with_the_same_config_continues(finished_run, saved_model, tmp_path):
    run = copy_of(finished_run, tmp_path)
    assert unlearn(saved_model, run, "--resume") == 0  # finished: nothing to do, nothing refused


def test_an_option_added_since_the_run_started_is_no_change_at_its_default(finished_run, saved_model, tmp_path,
                                                                            capsys):
    """A run started by an earlier palu lacks today's options: at their defaults they change nothing, set
    otherwise they are named."""
    run = copy_of(finished_run, tmp_path)
    (run / "DONE").unlink()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["method"]["forget_scale"]  # as a run started before the option existed
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert unlearn(saved_model, run, "--resume", "method.forget_scale=reference") == 2
    one_line_error(capsys, "method.forget_scale: 'none' -> 'reference'")
    assert unlearn(saved_model, run, "--resume") == 0


def test_allow_config_change_needs_resume(saved_model, tmp_path, capsys):
    assert unlearn(saved_model, tmp_path / "o", "--allow-config-change") == 2
    one_line_error(capsys, "goes with --resume")


def test_a_folder_in_use_is_refused(saved_model, tmp_path, capsys):
    with run_folder(tmp_path / "busy", "unlearn"):
        assert unlearn(saved_model, tmp_path / "busy") == 2
        one_line_error(capsys, "in use by another palu command", f"process {os.getpid()}")
    with run_folder(tmp_path / "busy", "unlearn", reuse=Reuse(resume=True)):  # released once the command ends
        pass


def test_two_commands_started_together_never_share_a_folder(saved_model, tmp_path):
    out = tmp_path / "race"
    cmd = [sys.executable, "-m", "palu.cli", "unlearn", f"model={saved_model}", f"output_dir={out}", *TINY_UNLEARN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another palu command" in refused or "exists and is not empty" in refused, refused
    assert (out / "DONE").exists() and not (out / "checkpoint.tmp").exists()


def test_sweep_workers_share_their_folder_but_nothing_else_does(tmp_path):
    with run_folder(tmp_path / "s", "sweep", shared=True):
        with run_folder(tmp_path / "s", "sweep", reuse=Reuse(resume=True), shared=True):
            pass
        with pytest.raises(PaluError, match="in use"), run_folder(tmp_path / "s", "sweep", reuse=Reuse(overwrite=True)):
            pass


def test_output_dir_that_is_a_file_or_below_one(saved_model, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert unlearn(saved_model, tmp_path / "f") == 2
    one_line_error(capsys, "is a file, not a folder")
    assert unlearn(saved_model, tmp_path / "f" / "run") == 2
    one_line_error(capsys, "is a file, not a folder")
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full"),
                                        (errno.EACCES, "permission denied")])
def test_an_unwritable_output_is_one_line(code, words, saved_model, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("palu.io.tempfile.mkstemp", refuse)
    assert unlearn(saved_model, tmp_path / "o") == 2
    one_line_error(capsys, words)


def test_report_never_replaces_a_file_it_did_not_write(finished_run, tmp_path, capsys):
    mine = tmp_path / "X.md"
    mine.write_text("my notes")
    assert main(["report", str(finished_run), "--out", str(tmp_path / "X.html")]) == 2
    one_line_error(capsys, "X.md exists", "--overwrite")
    assert mine.read_text() == "my notes" and not (tmp_path / "X.html").exists()
    assert main(["report", str(finished_run), "--out", str(tmp_path / "Y.html")]) == 0
    assert main(["report", str(finished_run), "--out", str(tmp_path / "Y.html")]) == 0  # its own report: replaced
    assert main(["report", str(finished_run), "--out", str(tmp_path / "X.html"), "--overwrite"]) == 0
    assert "my notes" not in mine.read_text()


def test_report_below_a_file_is_one_line(finished_run, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["report", str(finished_run), "--out", str(tmp_path / "f" / "r.html")]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = write_text(tmp_path / "results.json", "old")

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("palu.io.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_link_to_the_home_folder_is_not_deleted_through(finished_run, tmp_path, monkeypatch, capsys):
    home = copy_of(finished_run, tmp_path)
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "link").symlink_to(home)
    assert unlearn(finished_run / "model", tmp_path / "link", "--overwrite") == 2
    one_line_error(capsys, "current, home or root folder")
    assert (home / "DONE").exists()


def test_demo_and_eval_refuse_a_folder_palu_did_not_make(saved_model, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("a,b\n")
    assert main(["demo", f"output_dir={mine}", "--overwrite", "--quiet"]) == 2
    one_line_error(capsys, "palu did not write")
    assert main(["eval", f"model={saved_model}", f"output_dir={mine}", "--overwrite", "--quiet"]) == 2
    one_line_error(capsys, "palu did not write")
    assert (mine / "data.csv").read_text() == "a,b\n"


def test_a_model_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from palu.io import replacing_dir

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.safetensors").write_text("epoch 2")
    with pytest.raises(KeyboardInterrupt), replacing_dir(tmp_path / "best") as tmp:
        (tmp / "model.safetensors").write_text("half of epoch 3")
        raise KeyboardInterrupt
    assert (tmp_path / "best" / "model.safetensors").read_text() == "epoch 2"
    with replacing_dir(tmp_path / "best") as tmp:
        (tmp / "model.safetensors").write_text("epoch 3")
    assert (tmp_path / "best" / "model.safetensors").read_text() == "epoch 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_written_files_follow_the_umask_like_any_other_file(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (write_text(tmp_path / "atomic.txt", "x").stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_a_failed_start_removes_the_folders_it_created(tmp_path, capsys):
    out = tmp_path / "runs" / "deep" / "run"
    assert unlearn(tmp_path / "no-such-model", out) == 2
    capsys.readouterr()
    assert list(tmp_path.iterdir()) == []
