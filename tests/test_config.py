"""Configs: YAML plus overrides, typed conversion, and errors that name the option."""

from __future__ import annotations

import pytest

from palu.commands.demo import Config as DemoConfig
from palu.commands.finetune import Config as FinetuneConfig
from palu.commands.unlearn import Config as UnlearnConfig
from palu.config import build, dump, load_config, parse_overrides
from palu.errors import PaluError
from palu.methods import configure
from palu.methods.palu import PaluConfig


def test_overrides_nest_and_read_yaml_scalars():
    assert parse_overrides(["train.lr=1e-5", "train.epochs=3", "method.split_spans=true", "x=abc"]) == {
        "train": {"lr": "1e-5", "epochs": 3}, "method": {"split_spans": True}, "x": "abc"}
    with pytest.raises(PaluError, match="key=value"):
        parse_overrides(["train.lr"])


def test_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: some/model\ntrain:\n  lr: 1e-5\n  epochs: 4\nmethod:\n  name: palu\n  top_k: 50\n")
    cfg = load_config(UnlearnConfig, str(path), ["train.epochs=2", "method.first_n=3"])
    assert cfg.model == "some/model" and cfg.train.epochs == 2
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-5  # YAML reads "1e-5" as text
    assert cfg.method.name == "palu" and cfg.method == PaluConfig(top_k=50, first_n=3)


def test_method_shorthand_and_switch_drops_the_files_options(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("method:\n  name: other\n  beta: 0.1\n")
    cfg = load_config(UnlearnConfig, str(path), ["method=palu"])
    assert cfg.method == PaluConfig()


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(PaluError, match=r"train: unknown option 'lrr'; valid options: epochs, lr"):
        load_config(UnlearnConfig, None, ["train.lrr=1"])
    with pytest.raises(PaluError, match="unknown method .nope.; valid methods: palu, ga"):
        configure({"name": "nope"})
    with pytest.raises(PaluError, match="method: unknown option 'topk'"):
        configure({"name": "palu", "topk": 3})


def test_type_errors_name_the_option():
    with pytest.raises(PaluError, match="train.epochs must be a whole number"):
        load_config(UnlearnConfig, None, ["train.epochs=2.5"])
    with pytest.raises(PaluError, match="train.gradient_checkpointing must be true or false"):
        load_config(UnlearnConfig, None, ["train.gradient_checkpointing=maybe"])
    with pytest.raises(PaluError, match="train.lr must be a number"):
        load_config(UnlearnConfig, None, ["train.lr=fast"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: a\ntrain: [1,\n")
    with pytest.raises(PaluError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(UnlearnConfig, str(path), [])
    with pytest.raises(PaluError, match="no such config file"):
        load_config(UnlearnConfig, str(tmp_path / "missing.yaml"), [])


def test_lists_of_sources_and_round_trip(tmp_path):
    cfg = load_config(FinetuneConfig, None, [])
    assert cfg.data[0].path == "synthetic" and cfg.data[0].split == "full"
    path = tmp_path / "resolved.yaml"
    path.write_text(dump(DemoConfig()))
    assert load_config(DemoConfig, str(path), []) == DemoConfig()


def test_validation_of_nested_sections_runs():
    with pytest.raises(PaluError, match="train.schedule"):
        build(UnlearnConfig, {"train": {"schedule": "step"}})


def test_partial_sections_keep_their_defaults():
    cfg = load_config(DemoConfig, None, ["method.alpha=3", "unlearn.epochs=7"])
    assert cfg.method == PaluConfig(top_k=50, first_n=3, alpha=3)
    assert cfg.unlearn.epochs == 7 and cfg.unlearn.lr == DemoConfig().unlearn.lr
    cfg = load_config(UnlearnConfig, None, ["retain.limit=3"])
    assert cfg.retain.path == "synthetic" and cfg.retain.split == "retain" and cfg.retain.limit == 3
    with pytest.raises(PaluError, match="unknown method 'other'"):  # typed: refused when the config is read
        load_config(DemoConfig, None, ["method=other"])


def test_paraphrased_questions_replace_the_forget_questions(tmp_path):
    from palu.commands.eval import Config as EvalConfig
    from palu.eval.sets import eval_sets

    cfg = load_config(EvalConfig, None, ["questions=paraphrased", "synthetic.n_authors=3",
                                         "synthetic.forget_authors=1", "synthetic.holdout_authors=1"])
    sets = eval_sets(cfg, cfg.synthetic)
    original = eval_sets(load_config(EvalConfig, None, ["synthetic.n_authors=3", "synthetic.forget_authors=1",
                                                        "synthetic.holdout_authors=1"]), cfg.synthetic)
    assert [it.question for it in sets["forget"]] == [it.paraphrased_question for it in original["forget"]]
    assert sets["retain"] == original["retain"]
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Q?", "answer": "A."}\n')
    with pytest.raises(PaluError, match="no paraphrased question"):
        eval_sets(load_config(EvalConfig, None, ["questions=paraphrased", f"forget.path={data}"]), cfg.synthetic)
    with pytest.raises(PaluError, match="questions must be"):
        load_config(EvalConfig, None, ["questions=both"])


def test_the_example_config_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "tofu_forget05.yaml"
    cfg = load_config(UnlearnConfig, str(path), [])
    assert cfg.method == PaluConfig(top_k=50, first_n=3)
    assert cfg.train.grad_accum == 4 and cfg.train.gradient_checkpointing
