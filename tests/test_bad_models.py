"""Bad models and checkpoints: one line naming the folder and the cure; a model's own code never
runs unless the user passes --trust-remote-code."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from cli_helpers import one_line_error, unlearn

from palu.errors import PaluError
from palu.models import load_model, load_tokenizer, trust_remote_code

EVIL = "import pathlib; pathlib.Path({flag!r}).write_text('ran')\n"




def broken_copy(saved_model, tmp_path, name):
    return shutil.copytree(saved_model, tmp_path / name)


def test_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert unlearn(tmp_path / "notes", tmp_path / "o") == 2
    one_line_error(capsys, "cannot load the model", "not a saved model folder")
    assert not (tmp_path / "o").exists()  # a failed start leaves nothing behind


@pytest.mark.parametrize("option", ["model", "tokenizer"])
@pytest.mark.parametrize("path", ["/no/such/model", "./missing", "runs/x/model"])
def test_a_missing_local_path_is_named_at_once(option, path, saved_model, tmp_path, capsys):
    assert unlearn(saved_model, tmp_path / "o", f"{option}={path}") == 2
    one_line_error(capsys, f"cannot load the {option} {path!r}: no such folder")


def test_a_truncated_weights_file(saved_model, tmp_path, capsys):
    model = broken_copy(saved_model, tmp_path, "cut")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert unlearn(model, tmp_path / "o") == 2
    one_line_error(capsys, "damaged or incomplete", "save the model again")


def test_a_model_without_weights(saved_model, tmp_path, capsys):
    model = broken_copy(saved_model, tmp_path, "noweights")
    (model / "model.safetensors").unlink()
    assert unlearn(model, tmp_path / "o") == 2
    one_line_error(capsys, "cannot load the model", "model.safetensors")


def test_a_model_without_a_tokenizer(saved_model, tmp_path, capsys):
    model = broken_copy(saved_model, tmp_path, "notok")
    for path in model.glob("*token*"):
        path.unlink()
    assert unlearn(model, tmp_path / "o") == 2
    one_line_error(capsys, "cannot load the tokenizer", "set tokenizer=PATH")


def test_a_broken_config_json(saved_model, tmp_path, capsys):
    model = broken_copy(saved_model, tmp_path, "badcfg")
    (model / "config.json").write_text("{not json")
    assert unlearn(model, tmp_path / "o") == 2
    one_line_error(capsys, "cannot load the model", "not a valid JSON")


def remote_model(saved_model, tmp_path, model_type: str = "palu_evil"):
    """A model folder whose config asks transformers to run the code beside it."""
    model = broken_copy(saved_model, tmp_path, "remote")
    flag = tmp_path / "code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                   "AutoModelForCausalLM": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(EVIL.format(flag=str(flag)))
    return model, flag


def test_remote_code_never_runs_by_default_even_when_stdin_says_yes(saved_model, tmp_path, monkeypatch, capsys):
    model, flag = remote_model(saved_model, tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    assert unlearn(model, tmp_path / "o") == 2
    one_line_error(capsys, "ships its own Python code", "--trust-remote-code")
    assert not flag.exists()


def test_remote_code_beside_a_known_architecture_is_not_run(saved_model, tmp_path):
    model, flag = remote_model(saved_model, tmp_path, model_type="llama")
    assert load_model(str(model)).config.model_type == "llama"  # transformers' own Llama, not the folder's code
    assert not flag.exists()


def test_remote_code_in_a_tokenizer_is_not_run(saved_model, tmp_path):
    model = broken_copy(saved_model, tmp_path, "remote-tok")
    flag = tmp_path / "code-ran"
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(EVIL.format(flag=str(flag)))
    try:
        load_tokenizer(str(model))
    except PaluError as e:
        assert "--trust-remote-code" in str(e)
    assert not flag.exists()


def test_trust_remote_code_runs_it_when_asked(saved_model, tmp_path, capsys):
    model, flag = remote_model(saved_model, tmp_path)
    try:
        with pytest.raises(AttributeError, match="EvilConfig"):  # the code ran; its classes do not exist
            unlearn(model, tmp_path / "o", "--trust-remote-code")
    finally:
        trust_remote_code(False)
    capsys.readouterr()
    assert flag.read_text() == "ran"


def test_a_truncated_checkpoint_on_resume(saved_model, tmp_path, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("palu.commands.unlearn.finish", crash)  # killed after the last checkpoint, before saving
    assert unlearn(saved_model, tmp_path / "run") == 130
    monkeypatch.undo()
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    capsys.readouterr()
    assert unlearn(saved_model, tmp_path / "run", "--resume") == 2
    one_line_error(capsys, "checkpoint is damaged or incomplete", "--overwrite")
    assert not (tmp_path / "run" / "DONE").exists()


def test_an_interrupted_run_resumes_to_the_same_model(saved_model, tmp_path, monkeypatch):
    assert unlearn(saved_model, tmp_path / "straight", "train.epochs=2") == 0
    calls = []

    def interrupt_after_first_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return saving(self, *args, **kwargs)

    from palu.train import loop

    saving = loop.FiniteGuard.check_weights
    monkeypatch.setattr(loop.FiniteGuard, "check_weights", interrupt_after_first_epoch)
    assert unlearn(saved_model, tmp_path / "resumed", "train.epochs=2") == 130
    monkeypatch.undo()
    assert unlearn(saved_model, tmp_path / "resumed", "train.epochs=2", "--resume") == 0
    a = (tmp_path / "straight" / "model" / "model.safetensors").read_bytes()
    b = (tmp_path / "resumed" / "model" / "model.safetensors").read_bytes()
    assert a == b
