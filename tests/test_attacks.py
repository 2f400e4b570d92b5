"""Robustness attacks: quantization round trip, relearning, paraphrase, and the run's files."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

import palu.commands.attack as attack_command
from palu.commands.attack import Config as AttackConfig
from palu.commands.attack import attack_table, run_attack
from palu.commands.eval import Config as EvalConfig
from palu.commands.eval import run_eval
from palu.commands.finetune import Config as FinetuneConfig
from palu.commands.finetune import ScratchConfig, run_finetune
from palu.config import load_config
from palu.data.loaders import DataSource
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.errors import PaluError
from palu.eval.attacks import quantize_round_trip, relearn_indices, restrict_reference
from palu.eval.tofu import add_comparisons
from palu.train.loop import TrainConfig

SYNTH = SyntheticConfig(n_authors=3, forget_authors=1, holdout_authors=1)
FAST = dict(synthetic=SYNTH, retain=synthetic("retain", 2), max_new_tokens=4, max_length=256)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model that never saw the forget author: the ideal of unlearning, for relearning to undo."""
    cfg = FinetuneConfig(data=[synthetic("retain")], output_dir=str(tmp_path_factory.mktemp("ft") / "run"),
                         scratch=ScratchConfig(hidden=32, layers=1, heads=2, vocab_size=500), synthetic=SYNTH,
                         train=TrainConfig(epochs=10, lr=3e-3, batch_size=8, max_length=256))
    return run_finetune(cfg, progress=False)


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def attacked(model_dir, tmp_path_factory):
    """One run of every attack, with the model's own `palu eval` results as the retain reference;
    the forget questions each evaluation was asked are recorded."""
    before = _hashes(model_dir)
    tmp = tmp_path_factory.mktemp("attack")
    sets = dict(holdout=synthetic("holdout"), **FAST)
    run_eval(EvalConfig(model=str(model_dir), output_dir=str(tmp / "eval"), **sets), progress=False)
    asked = []
    real = attack_command.evaluate_tofu

    def spy(model, tok, data, *args, **kwargs):
        asked.append([item.question for item in data["forget"]])
        return real(model, tok, data, *args, **kwargs)

    cfg = AttackConfig(model=str(model_dir), output_dir=str(tmp / "out"),
                       retain_reference=str(tmp / "eval" / "results.json"),
                       relearn_items=4, relearn=TrainConfig(epochs=3, lr=3e-3, batch_size=4, warmup_epochs=0,
                                                            schedule="constant", max_length=256), **sets)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attack_command, "evaluate_tofu", spy)
        table = run_attack(cfg, progress=False)
    return cfg, table, asked, before


def test_round_trip_moves_weights_by_at_most_half_a_step(tiny_model):
    model = tiny_model(vocab_size=64)
    errors = {}
    for bits in (8, 4):
        q = quantize_round_trip(copy.deepcopy(model), bits)
        worst = []
        for (name, w), (_, wq) in zip(model.named_parameters(), q.named_parameters()):
            if name.endswith("proj.weight") or name == "lm_head.weight":
                step = w.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
                assert ((wq - w).abs() <= step / 2 * (1 + 1e-5)).all(), name
                assert not torch.equal(wq, w)
                worst.append((wq - w).abs().mean())
            else:  # embeddings and norms are not nn.Linear: untouched
                assert torch.equal(wq, w), name
        errors[bits] = torch.stack(worst).mean()
    assert errors[4] > errors[8] > 0


def test_every_row_reports_forget_metrics_and_relearning_brings_them_back(attacked):
    cfg, table, _, _ = attacked
    assert list(table) == ["none", "relearn", "quantize_8bit", "quantize_4bit", "paraphrase"]
    for row, values in table.items():
        for metric in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "exact_memorization"):
            assert values[metric] is not None, (row, metric)
    assert table["relearn"]["forget_Q_A_Prob"] > table["none"]["forget_Q_A_Prob"]
    # the reference is the same model: cut to the same items, it matches the unattacked row exactly
    assert table["none"]["forget_quality"] == 1.0 and table["none"]["privleak"] == 0.0
    assert table["relearn"]["forget_quality"] is not None and table["quantize_4bit"]["privleak"] is not None
    assert table["quantize_4bit"]["forget_Q_A_Prob"] != table["none"]["forget_Q_A_Prob"]
    assert "retain_Q_A_Prob" in table["quantize_8bit"] and "retain_Q_A_Prob" not in table["paraphrase"]
    text = attack_table(table)
    assert "forget_Q_A_Prob" in text and "quantize_4bit" in text and "(+" in text


def test_files_hold_per_item_results_and_relearned_items_are_not_scored(attacked):
    cfg, table, _, _ = attacked
    out = Path(cfg.output_dir)
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "summary.json").read_text()) == table
    relearned = results["relearn"]["relearned_indices"]
    assert len(relearned) == 4 and len(results["relearn"]["history"]) == 3
    for row, entry in results.items():
        scored = entry["forget_indices"]
        assert len(scored) == 16 and not set(scored) & set(relearned), row
        assert len(entry["metrics"]["forget_Q_A_Prob"]["value_by_index"]) == 16
    assert {results[r]["backend"] for r in ("quantize_8bit", "quantize_4bit")} == {"round-trip"}
    assert (out / "relearn" / "model" / "config.json").exists() and (out / "config.yaml").exists()
    with pytest.raises(PaluError, match="--overwrite"):
        run_attack(cfg, progress=False)


def test_paraphrase_asks_the_paraphrased_questions(attacked):
    cfg, _, asked, _ = attacked
    forget = load_items(cfg.forget, cfg.synthetic)
    scored = json.loads((Path(cfg.output_dir) / "results.json").read_text())["paraphrase"]["forget_indices"]
    assert asked[0] == [forget[i].question for i in scored]
    assert asked[-1] == [forget[i].paraphrased_question for i in scored] != asked[0]


def test_the_model_on_disk_is_unchanged(attacked, model_dir):
    assert _hashes(model_dir) == attacked[3] and attacked[3]


def test_items_without_a_paraphrase_are_reported(model_dir, tmp_path):
    rows = [{"question": "Who wrote Granite Glossary?", "answer": "Hina Ameen.", "paraphrased_question": "Whose book?"},
            {"question": "Where was Basil born?", "answer": "In Kuwait City."}]
    data = tmp_path / "forget.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = AttackConfig(model=str(model_dir), forget=DataSource(path=str(data)), attacks=["paraphrase"],
                       output_dir=str(tmp_path / "out"), **FAST)
    run_attack(cfg, progress=False)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["paraphrase"]["without_paraphrased_question"] == [1]
    assert results["paraphrase"]["forget_indices"] == [0] and results["none"]["forget_indices"] == [0, 1]
    data.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(PaluError, match="paraphrased questions"):
        run_attack(cfg, overwrite=True, progress=False)


def test_relearned_items_are_a_seeded_tenth():
    assert relearn_indices(40, None, 0) == relearn_indices(40, None, 0) != relearn_indices(40, None, 1)
    assert len(relearn_indices(40, None, 0)) == 4 and len(relearn_indices(5, None, 0)) == 1
    with pytest.raises(PaluError, match="leaves none"):
        relearn_indices(3, 3, 0)


def test_reference_is_cut_to_the_scored_items():
    tr = [0.5, 1.0, 2.0, 4.0]
    reference = {"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {str(i): v for i, v in enumerate(tr)}},
                 "mia_min_k": {"agg_value": 0.6, "value_by_index": {"forget": {"0": 1.0, "1": 5.0, "2": 2.0, "3": 6.0},
                                                                    "holdout": {"0": {"score": 3.0}, "1": 4.0}}}}
    cut = restrict_reference(reference, [1, 3])
    assert cut["forget_truth_ratio"]["value_by_index"] == {"0": 1.0, "1": 4.0}
    assert cut["mia_min_k"]["agg_value"] == 0.0  # forget 5, 6 above holdout 3, 4
    results = {"forget_truth_ratio": {"value_by_index": {"0": 1.0, "1": 4.0}}}
    add_comparisons(results, cut)
    assert results["forget_quality"]["agg_value"] == 1.0
    with pytest.raises(PaluError, match="same forget set"):
        restrict_reference(reference, [7])


def test_config_options_and_errors():
    cfg = load_config(AttackConfig, None, ["attacks=[quantize]", "quantize_bits=4", "relearn.lr=1e-3", "model=m"])
    assert cfg.attacks == ["quantize"] and cfg.quantize_bits == [4] and cfg.relearn.lr == 1e-3
    assert cfg.output_dir == "runs/attack" and cfg.forget.split == "forget"
    with pytest.raises(PaluError, match=r"attacks\[0\] must be one of relearn, quantize, paraphrase, not 'prune'"):
        load_config(AttackConfig, None, ["attacks=[prune]"])
    with pytest.raises(PaluError, match=r"quantize_bits\[0\] must be one of 8, 4, not 3"):
        load_config(AttackConfig, None, ["quantize_bits=[3]"])
