"""TOFU-mini's equal-stage records: a search outlives its cache, and is reused only on the same models."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_sweep import demo, sweep_args  # noqa: F401, F811 (demo: the fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "tofu_mini"))
from compare import Comparison  # noqa: E402
from equal import EqualSearch, difference, records  # noqa: E402
from protocol import Protocol  # noqa: E402
from scale import latest_scale, scale_file, selected_point  # noqa: E402
from trials import load_study, restore, snapshot  # noqa: E402

from palu.commands.sweep import Config as SweepConfig  # noqa: E402
from palu.commands.sweep import run_sweep, selected  # noqa: E402
from palu.config import load_config  # noqa: E402
from palu.data.sources import synthetic  # noqa: E402
from palu.eval.sets import EvalSets  # noqa: E402
from palu.io import read_json, write_json  # noqa: E402
from palu.train.selection import SelectionRule  # noqa: E402


def _weights(folder: Path, value: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((3,), value)}, str(folder / "model.safetensors"))


@pytest.fixture
def protocol(tmp_path) -> Protocol:
    tofu = tmp_path / "tofu"
    tofu.mkdir()
    for name in ("full", "forget05", "retain95", "forget05_perturbed", "retain_perturbed", "real_authors",
                 "world_facts"):
        (tofu / f"{name}.json").write_text("[]")
    p = Protocol(tofu, tmp_path / "work")
    _weights(p.model("full"), 1.0)
    _weights(p.model("retain95"), 2.0)
    return p


class _Comparison:
    def __init__(self, protocol: Protocol, out: Path):
        self.p, self.out = protocol, out

    def references(self) -> dict:
        return {"full": {}, "retain": {}}


def _entry(search: EqualSearch, method: str) -> dict:
    """What a search of ``method`` records: one trial whose second epoch was selected."""
    epochs = [{"epoch": e, "forget_quality": 0.1 * e, "model_utility": 0.9} for e in (1, 2)]
    return {"method": method, "models": search.cmp.p.fingerprint(), "startup": 4,
            "trials": [{"trial": 0, "settings": {"lr": 1e-4}, "epochs": epochs, "history": [{"epoch": 1, "forget": 7.5}]}],
            "points": [{"method": method, "trial": "trial-000", "epoch": 2, "forget_quality": 0.2, "utility": 0.9}],
            "row": {"selected": {"trial": 0, "epoch": 2, "lr": 1e-4, "settings": {"lr": 1e-4}}}}


def _searching(search: EqualSearch, calls: list[str]) -> None:
    def search_once(method: str, options: dict | None = None) -> dict:
        calls.append(method)
        entry = _entry(search, method)
        write_json(search.ledger / f"{method}.json", entry)
        return entry

    search.search = search_once


def test_a_replayed_trial_is_compared_with_its_record_value_by_value():
    recorded = {1: {"forget_quality": 0.01, "model_utility": 0.80}, 2: {"forget_quality": 0.02, "model_utility": 0.85}}
    start = {"epoch": 0, "forget_quality": 1e-12, "model_utility": 0.9}
    same = [start, {"epoch": 1, **recorded[1]}, {"epoch": 2, **recorded[2]}]
    assert difference(recorded, same) == 0.0
    rounded = [start, {"epoch": 1, "forget_quality": 0.01, "model_utility": 0.80 * (1 + 4e-10)},
               {"epoch": 2, "forget_quality": 0.02 * (1 - 3e-3), "model_utility": 0.85}]
    assert difference(recorded, rounded) == pytest.approx(3e-3)  # the largest, relative, over both values
    assert difference(recorded, rounded[:2]) == math.inf  # a recorded epoch the replay never reached


def test_a_recorded_search_is_reused_not_run_again(protocol, tmp_path):
    ledger = tmp_path / "results" / "tofu_mini_equal"
    calls: list[str] = []
    first = EqualSearch(_Comparison(protocol, tmp_path / "cache-1"), 8, ledger)
    _searching(first, calls)
    first.run_all(["ga", "npo"])
    # a later sitting: a new working folder (the cache is gone), the same models rebuilt
    later = EqualSearch(_Comparison(protocol, tmp_path / "cache-2"), 8, ledger)
    _searching(later, calls)
    found = later.run_all(["ga", "npo", "wga"])
    assert calls == ["ga", "npo", "wga"]
    assert [p["method"] for p in found["plane"]] == ["ga", "npo", "wga"]
    assert sorted(p.name for p in later.ledger.iterdir()) == ["ga.json", "npo.json", "wga.json"]
    assert later.ledger.parent == records(ledger, 8)
    assert read_json(later.ledger / "ga.json")["models"] == protocol.fingerprint()


def test_a_table_so_far_holds_the_finished_searches_and_starts_none(protocol, tmp_path):
    ledger, calls = tmp_path / "tofu_mini_equal", []
    search = EqualSearch(_Comparison(protocol, tmp_path / "cache"), 8, ledger)
    _searching(search, calls)
    search.run_all(["npo"])
    write_json(search.ledger / "ga.json", {k: v for k, v in _entry(search, "ga").items() if k != "row"})  # unfinished
    found = search.run_all(["ga", "npo", "wga"], search=False)
    assert calls == ["npo"]
    assert list(found["table"]) == ["full", "retain", "npo"]
    assert [p["method"] for p in found["plane"]] == ["npo"]
    assert found["unsearched"] == ["ga", "wga"]


def test_searches_on_other_weights_are_kept_apart(protocol, tmp_path):
    ledger, calls = tmp_path / "tofu_mini_equal", []
    search = EqualSearch(_Comparison(protocol, tmp_path / "cache"), 8, ledger)
    _searching(search, calls)
    search.run_all(["ga"])
    _weights(protocol.model("full"), 1.0 + 1e-6)  # the models rebuilt with other arithmetic
    elsewhere = EqualSearch(_Comparison(protocol, tmp_path / "cache"), 8, ledger)
    _searching(elsewhere, calls)
    elsewhere.run_all(["ga"])
    assert calls == ["ga", "ga"]  # searched again on these weights
    assert elsewhere.ledger != search.ledger
    assert read_json(search.ledger / "ga.json")["models"] != read_json(elsewhere.ledger / "ga.json")["models"]
    assert EqualSearch(_Comparison(protocol, tmp_path / "cache"), 16, ledger).recorded("ga") is None  # other budget
    moved = elsewhere.ledger / "npo.json"  # a record put in the wrong folder by hand
    write_json(moved, {**read_json(search.ledger / "ga.json"), "method": "npo"})
    with pytest.raises(SystemExit, match=r"npo\.json: npo was searched on other models"):
        elsewhere.recorded("npo")


def test_the_selected_point_comes_from_the_record(protocol, tmp_path):
    search = EqualSearch(_Comparison(protocol, tmp_path), 8, tmp_path / "ledger")
    assert selected_point(_entry(search, "palu")) == {"forget_quality": 0.2, "utility": 0.9, "epoch": 2,
                                                      "settings": {"lr": 1e-4}, "forget_term_epoch_1": 7.5}


def test_the_other_regime_finds_the_scale_result_where_its_stage_wrote_it(protocol, tmp_path):
    """The other regime's models are not built here, so its result is found among any models' records."""
    trials = records(tmp_path / "tofu_mini_pretrained_equal", 8)
    assert latest_scale(trials) is None
    ledger = EqualSearch(_Comparison(protocol, tmp_path), 8, tmp_path / "tofu_mini_pretrained_equal").ledger
    old = scale_file(trials / "models-000000000000")
    write_json(old, {"own": {}})
    os.utime(old, (1, 1))
    write_json(scale_file(ledger), {"own": {}})
    assert latest_scale(trials) == scale_file(ledger)


def test_a_search_whose_folder_is_gone_goes_on_from_its_recorded_trials(demo, tmp_path):  # noqa: F811
    out, recorded = tmp_path / "s", []
    args = [a for a in sweep_args(demo, out, 2, "prune_below=0")[1:] if a != "--quiet"]
    run_sweep(load_config(SweepConfig, None, args), after_trial=lambda study, t: recorded.append(snapshot(study, out)))
    rows = recorded[-1]
    assert [(r["trial"], r["state"], len(r["epochs"])) for r in rows] == [(0, "COMPLETE", 3), (1, "COMPLETE", 3)]
    before = load_study(out)
    front = selected(out, SelectionRule())
    start = shutil.copy(out / "start-eval.json", tmp_path / "start.json")  # the comparison's start record
    shutil.rmtree(out)  # the cache is gone; the records are not

    restore(out, json.loads(json.dumps(rows)), ["maximize", "maximize"], Path(start))
    again = load_study(out)
    assert [(t.number, t.state, t.params, t.values, t.system_attrs) for t in again.trials] == [
        (t.number, t.state, t.params, t.values, t.system_attrs) for t in before.trials]
    assert selected(out, SelectionRule()) == front  # the same selection from the summaries alone
    run_sweep(load_config(SweepConfig, None, [a.replace("trials=2", "trials=3") for a in args]))
    study = load_study(out)
    assert len(study.trials) == 3 and study.trials[2].params not in [t.params for t in before.trials]
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
    assert (out / "trial-002" / "best").is_dir() and not (out / "trial-000" / "best").exists()


class _DemoModels:
    """The protocol's interface on the tiny demo's models and a few built-in items."""

    retain, retain_set, fingerprint = "retain95", synthetic("retain", limit=8), Protocol.fingerprint

    def __init__(self, source: Path, workdir: Path):
        for name in ("full", "retain95"):
            shutil.copytree(source / ("retain" if name == "retain95" else name) / "model", self.model(name, workdir))
        self.workdir = workdir

    def model(self, name: str, workdir: Path | None = None) -> Path:
        return (workdir or self.workdir) / name / "model"


class _DemoComparison:
    """The comparison's interface on the demo's models."""

    epochs = 2

    def __init__(self, models: Path, out: Path, protocol: _DemoModels):
        self.demo, self.out, self.p = models, out, protocol

    def forget_source(self, method: str):
        return synthetic("forget", limit=8)

    def epoch_sets(self) -> EvalSets:
        return EvalSets(forget=synthetic("forget", limit=6), retain=synthetic("retain", limit=3), max_new_tokens=4,
                        max_length=128, retain_reference=str(self.demo / "eval-retain" / "results.json"))

    def start_record(self) -> Path:
        return Comparison.start_record(self)

    def start_run(self, folder: Path) -> None:
        Comparison.start_run(self, folder)

    unlearn_train = Comparison.unlearn_train

    def final(self, method: str, run: Path, best: dict, tag: str = "") -> dict:
        return {"final_on": str(run / "best")}

    def references(self) -> dict:
        return {}


def test_an_unfinished_search_goes_on_in_a_later_sitting_and_its_selected_trial_is_trained_again(
        demo, tmp_path):  # noqa: F811
    protocol = _DemoModels(demo, tmp_path / "work")  # the demo's models stand in for TOFU-mini's
    ledger, first = tmp_path / "ledger", _DemoComparison(demo, tmp_path / "cache-1", protocol)
    search = EqualSearch(first, 2, ledger)
    done = search.search("ga")
    assert [t["state"] for t in done["trials"]] == ["COMPLETE", "COMPLETE"]
    assert "replayed" not in done["row"]["selected"]
    write_json(search.ledger / "ga.json", {k: v for k, v in done.items() if k not in ("row", "points")})  # unfinished

    later = _DemoComparison(demo, tmp_path / "cache-2", protocol)  # the cache is gone
    assert read_json(later.start_record())["summary"] == done["start"]  # the models stage's start, computed again
    again = EqualSearch(later, 2, ledger).run_all(["ga"])["table"]["ga"]["selected"]
    chosen = done["row"]["selected"]
    assert {k: again[k] for k in ("trial", "epoch", "settings")} == {k: chosen[k] for k in ("trial", "epoch", "settings")}
    # the same machine trains the same model, epoch by epoch, value for value
    assert again["replayed"] == {"trial": chosen["trial"], "same_values": True, "largest_difference": 0.0}
    assert again["run"].endswith(f"replay-{chosen['trial']:03d}")
    assert (later.out / again["run"] / "best").is_dir()
    assert not (later.out / "equal-2" / "ga" / f"trial-{chosen['trial']:03d}" / "best").exists()
