"""Best-epoch selection: the documented rule, and the evaluator that keeps the best model."""

from __future__ import annotations

import json

import pytest

from palu.train.selection import BEST_DIR, EpochEvaluator, SelectionRule, best_epoch


def rec(epoch, fq, mu=None, prob=None):
    return {"epoch": epoch, "forget_quality": fq, "model_utility": mu, "retain_Q_A_Prob": prob}


def test_highest_forget_quality_among_epochs_that_keep_utility():
    records = [rec(0, 1e-5, 0.60), rec(1, 0.2, 0.59), rec(2, 0.9, 0.50), rec(3, 0.7, 0.58), rec(4, 0.7, 0.585)]
    assert best_epoch(records, SelectionRule(utility_floor=0.95))["epoch"] == 3  # 2 lost utility; tie -> earlier
    assert best_epoch(records, SelectionRule(utility_floor=0.8))["epoch"] == 2
    assert best_epoch(records, SelectionRule(utility_floor=1.0)) is None


def test_direction_comes_from_the_registry_and_utility_falls_back():
    records = [rec(0, None, None, 0.9), rec(1, None, None, 0.89), rec(2, None, None, 0.5)]
    for r, p in zip(records, (0.9, 0.4, 0.1)):
        r["forget_Q_A_Prob"] = p
    # lower forget Prob is better; model utility is unavailable, so retain Prob guards utility
    assert best_epoch(records, SelectionRule(metric="forget_Q_A_Prob"))["epoch"] == 1


class FakeModel:
    def __init__(self):
        self.saved = []

    def parameters(self):
        return iter(())

    def save_pretrained(self, path, **options):
        path.mkdir(parents=True, exist_ok=True)
        (path / "weights").write_text(str(len(self.saved)))
        self.saved.append(path)


class FakeTokenizer:
    def save_pretrained(self, path):
        (path / "tokenizer.json").write_text("{}")


def test_evaluator_records_saves_the_best_and_resumes(tmp_path):
    scores = iter([(1e-4, 0.6), (0.3, 0.59), (0.1, 0.58), (0.8, 0.2)])

    def fake_suite(model, metrics=None):
        fq, mu = next(scores)
        return {"forget_quality": {"agg_value": fq}, "model_utility": {"agg_value": mu}}

    model, tok = FakeModel(), FakeTokenizer()
    ev = EpochEvaluator(fake_suite, tok, tmp_path, SelectionRule())
    ev.evaluate(0, model)
    assert ev(1, model) == {"forget_quality": 0.3, "model_utility": 0.59}
    ev(2, model)
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 1
    assert len(model.saved) == 1 and (tmp_path / BEST_DIR / "tokenizer.json").exists()

    resumed = EpochEvaluator(fake_suite, tok, tmp_path, SelectionRule())  # reads epochs 0-2 back
    assert [r["epoch"] for r in resumed.records] == [0, 1, 2]
    assert resumed.evaluate(2, model)["forget_quality"] == 0.1  # not evaluated again
    resumed(3, model)  # best forget quality, but utility 0.2 < 0.95 * 0.6
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 1
    with pytest.raises(StopIteration):
        next(scores)


def test_epochs_compute_what_the_rule_reads_and_the_best_one_the_rest(monkeypatch, tmp_path):
    """After each epoch only the rule's metrics; an epoch that becomes the best gets what the start has."""
    values = {1: (0.3, 0.59), 2: (0.1, 0.58), 3: (0.5, 0.3)}
    calls = []

    def fake_suite(model, metrics=None):
        calls.append((model, None if metrics is None else sorted(metrics)))
        fq, mu = values.get(model, (1e-4, 0.6))
        everything = {"forget_quality": fq, "model_utility": mu, "retain_Q_A_Prob": mu, "forget_Q_A_ROUGE": fq / 2,
                      "privleak": -fq}
        return {k: {"agg_value": v} for k, v in everything.items() if metrics is None or k in metrics}

    monkeypatch.setattr("palu.train.selection.save_model", lambda *args: None)
    ev = EpochEvaluator(fake_suite, FakeTokenizer(), tmp_path, SelectionRule())
    ev.evaluate(0, 0)
    rule_reads = ["forget_quality", "model_utility", "retain_Q_A_Prob"]
    assert ev(1, 1) == {"forget_quality": 0.3, "model_utility": 0.59, "retain_Q_A_Prob": 0.59,
                        "forget_Q_A_ROUGE": 0.15, "privleak": -0.3}  # the best so far: complete
    assert calls[1:] == [(1, rule_reads), (1, ["forget_Q_A_ROUGE", "privleak"])]
    ev(2, 2)  # worse: the rule's metrics only
    ev(3, 3)  # better, but below the utility floor: not the best
    assert calls[3:] == [(2, rule_reads), (3, rule_reads)]
    on_disk = json.loads((tmp_path / "eval" / "epoch-1.json").read_text())
    assert on_disk["summary"]["forget_Q_A_ROUGE"] == 0.15 and set(on_disk["results"]) == set(on_disk["summary"]) - {
        "epoch"}
    assert "privleak" not in json.loads((tmp_path / "eval" / "epoch-2.json").read_text())["summary"]

    calls.clear()
    whole = EpochEvaluator(fake_suite, FakeTokenizer(), tmp_path / "all", SelectionRule(), every_epoch="all")
    whole.evaluate(0, 0)
    whole(1, 1)
    assert [m for _, m in calls] == [None, None]


def test_a_rule_whose_metric_the_evaluation_lacks_is_refused_at_the_start(tmp_path):
    from palu.errors import PaluError

    suite = lambda model, metrics=None: {"forget_verbmem_ROUGE": {"agg_value": 0.9}}
    with pytest.raises(PaluError, match="select.metric=forget_quality is not among the metrics of this evaluation "
                                        r"\(forget_verbmem_ROUGE\)"):
        EpochEvaluator(suite, FakeTokenizer(), tmp_path, SelectionRule()).evaluate(0, None)
