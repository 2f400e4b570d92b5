"""Bad options and config files: one line that names the option or file, never a traceback."""

from __future__ import annotations

import pytest

from palu.cli import main

UNLEARN = ["unlearn", "model=x"]
SWEEP = ["sweep", "unlearn.model=x", "unlearn.eval.retain_reference=r.json"]


@pytest.mark.parametrize("args,words", [
    (UNLEARN + ["train.lr=-1"], "train.lr must be a positive number, not -1"),
    (UNLEARN + ["train.lr=0"], "train.lr must be a positive number"),
    (UNLEARN + ["train.lr=inf"], "train.lr must be a finite number"),
    (UNLEARN + ["train.lr=.nan"], "train.lr must be a finite number"),
    (UNLEARN + ["train.epochs=1e400"], "train.epochs must be a"),
    (UNLEARN + ["train.max_grad_norm=-1"], "train.max_grad_norm must be zero or more"),
    (UNLEARN + ["train.max_length=0"], "train.max_length must be at least 2"),
    (UNLEARN + ["train.epochs=0"], "train.epochs"),
    (UNLEARN + ["train.schedule=zigzag"], "train.schedule must be one of linear, cosine, constant, not 'zigzag'"),
    (UNLEARN + ["method.top_k=-5"], "method.top_k must be a positive number, or -1 for all, not -5"),
    (UNLEARN + ["method.first_n=-7"], "method.first_n must be a positive number, or -1 for all, not -7"),
    (UNLEARN + ["method.top_k=abc"], "method.top_k must be a number, not 'abc'"),
    (UNLEARN + ["method.alpha=nan"], "method.alpha must be a finite number"),
    (UNLEARN + ["method.alpha=-2"], "method.alpha must be zero or more"),
    (UNLEARN + ["method.no_such_option=1"], "unknown option 'no_such_option'"),
    (UNLEARN + ["method=npo", "method.beta=inf"], "method.beta must be a finite number"),
    (UNLEARN + ["peft=lora", "peft.r=0"], "peft.r must be at least 1"),
    (UNLEARN + ["forget.limit=-1"], "forget.limit must be a non-negative number of items"),
    (["eval", "model=x", "retain.limit=-3"], "retain.limit must be a non-negative number of items"),
    (UNLEARN + ["train.lr"], "write it as key=value"),
    (UNLEARN + ['data=[{path: '], "cannot read the value of the override"),
    (UNLEARN + ["train=3"], "train is a section"),
    (UNLEARN + ["--allow-config-change"], "goes with --resume"),
    (["finetune", "scratch.hidden=30", "scratch.heads=4"], "scratch.hidden must be a multiple of heads (4), not 30"),
    (["finetune", "scratch.heads=0"], "scratch.heads must be at least 1"),
    (["finetune", "scratch.layers=-1"], "scratch.layers must be at least 1"),
    (SWEEP + ["space.lr=[1e-4]"], "space.lr must be a range [low, high] with 0 < low <= high, not [0.0001]"),
    (SWEEP + ["space.alpha=[5, 1]"], "space.alpha must be a range [low, high]"),
    (SWEEP + ["space.top_k=[]"], "space.top_k must be a non-empty list"),
    (SWEEP + ["space.top_k=[ten]"], "space.top_k must be a number, not 'ten'"),
    (SWEEP + ["space.first_n=[0, 3]"], "space.first_n: 0 is not a valid setting (first_n must be a positive number"),
    (SWEEP + ["space.beta=[0.1, 1]"], "space.beta: palu has no option 'beta'; a sweep of palu can search: lr, alpha"),
    (SWEEP + ["method=npo", "space.beta=[0, 1]"], "space.beta must be a range [low, high] with 0 < low"),
    (SWEEP + ["method=simnpo", "space.delta=[2, 0]"], "space.delta must be a range [low, high] with low <= high"),
    (SWEEP + ["method=rmu", "space.layer=2"], "space.layer must be a non-empty list of choices, not 2"),
    (SWEEP + ["trials=0"], "trials must be at least 1"),
    (SWEEP + ["sampler=grid"], "sampler must be one of tpe, nsga2, not 'grid'"),
    (["sweep", "unlearn.model=x", "unlearn.eval.forget.path=synthetic", "unlearn.eval.forget.split=forget"],
     "unlearn.eval.retain_reference"),
    (["sweep", "unlearn.model=x"], "unlearn.eval.retain_reference"),
    (["eval", "model=x", "questions=shuffled"], "questions must be one of original, paraphrased, not 'shuffled'"),
    (["attack", "model=x", "attacks=[fly]"], "attacks[0] must be one of relearn, quantize, paraphrase, not 'fly'"),
    (["attack", "model=x", "relearn_items=0"], "relearn_items must be at least 1"),
    (["annotate", "annotator=psychic"], "psychic"),
])
def test_bad_option_is_one_line(args, words, tmp_path, capsys):
    assert main([*args, f"output_dir={tmp_path / 'o'}", "--quiet"] if args[0] != "annotate" else args) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def config_error(tmp_path, capsys, content: bytes | None, *words, folder: bool = False, named: bool = True) -> None:
    path = tmp_path / "cfg.yaml"
    if folder:
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main(["unlearn", "--config", str(path), f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in ((str(path),) if named else ()) + words:
        assert word in err, err


def test_config_that_is_a_folder(tmp_path, capsys):
    config_error(tmp_path, capsys, None, "is a folder", folder=True)


def test_config_missing(tmp_path, capsys):
    config_error(tmp_path, capsys, None, "no such config file")


def test_config_not_utf8(tmp_path, capsys):
    config_error(tmp_path, capsys, b"model: x\ntrain:\n  lr: 1e-5 \xff\xfe\n", ":3: not UTF-8")


def test_config_broken_yaml_names_the_line(tmp_path, capsys):
    config_error(tmp_path, capsys, b"model: x\ntrain: {lr: [\n", "not valid YAML")


def test_config_not_a_mapping(tmp_path, capsys):
    config_error(tmp_path, capsys, b"- model\n- x\n", "must hold a mapping")


def test_config_with_a_byte_order_mark_is_read(tmp_path, capsys):
    config_error(tmp_path, capsys, "\ufeffmodel: x\ntrain:\n  lr: -3\n".encode(), "train.lr must be a positive number",
                 named=False)  # read past the mark: the error is the option's


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="train.lr must be a positive number"):
        main(["unlearn", "model=x", "train.lr=-1", "--debug", f"output_dir={tmp_path / 'o'}"])


def test_a_nested_option_is_named_by_its_full_path(tmp_path, capsys):
    args = ["sweep", "unlearn.model=x", "unlearn.eval.retain_reference=r.json", "unlearn.train.lr=-1",
            f"output_dir={tmp_path / 'o'}"]
    assert main(args) == 2
    assert "unlearn.train.lr must be a positive number, not -1" in capsys.readouterr().err
    assert main(["demo", "finetune.max_grad_norm=-2", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "finetune.max_grad_norm must be zero or more" in capsys.readouterr().err


@pytest.mark.parametrize("args,words", [
    (UNLEARN + ["method.no_such_option=1"], "method: unknown option 'no_such_option'; valid options: name,"),
    (UNLEARN + ["method=npo", "method.top_k=3"], "method: unknown option 'top_k'"),  # PALU's, not NPO's
    (UNLEARN + ["method.target=x"], "method.target must be one of mean, local_mean, not 'x'"),
    (UNLEARN + ["method.retain_loss=mse"], "method.retain_loss must be one of nll, kl, not 'mse'"),
    (UNLEARN + ["peft=lora", "peft.save=both"], "peft.save must be one of merged, adapter, not 'both'"),
    (UNLEARN + ["prompt.chat_template=maybe"], "prompt.chat_template must be one of auto, never, not 'maybe'"),
    (["annotate", "annotator=rules", "options.colour=1"], "options: unknown option 'colour'; valid options:"),
    (["annotate", "annotator=llm", "options.retries=many"], "options.retries must be a number, not 'many'"),
])
def test_method_and_annotator_options_are_typed_like_every_other(args, words, tmp_path, capsys):
    """One mechanism, one wording: a method's or an annotator's options are refused as any option is."""
    test_bad_option_is_one_line(args, words, tmp_path, capsys)


def test_every_option_is_listed_in_help(capsys):
    for verb, keys in {"unlearn": ["model:", "forget.path:", "method.top_k:", "method.beta:", "train.lr:",
                                   "eval.retain_reference:", "select.utility_floor:", "peft.r:"],
                       "annotate": ["annotator:", "input.path:", "output:", "options:"],
                       "sweep": ["unlearn.train.lr:", "space: dict = {}", "trials:", "sampler: 'tpe' | 'nsga2' = tpe"],
                       "demo": ["method.first_n: int = 3", "finetune.epochs:"],
                       "eval": ["retain_reference:", "questions: 'original' | 'paraphrased' = original"],
                       "attack": ["attacks:", "relearn.lr:"], "finetune": ["scratch.hidden: int = 256"]}.items():
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = capsys.readouterr().out
        for key in keys:
            assert f"\n  {key}" in out, (verb, key)
