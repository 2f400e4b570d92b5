"""Methods, annotators and metrics share one registry: one error for a name taken twice, one for an unknown name."""

import json
import subprocess
import sys

import pytest

from palu.annotate.base import ANNOTATORS, get_annotator
from palu.annotate.base import register as register_annotator
from palu.annotate.rules import RulesAnnotator
from palu.errors import PaluError
from palu.eval.metrics import METRICS, MetricSpec, get_metric
from palu.eval.metrics import register as register_metric
from palu.methods import METHODS, get_method
from palu.methods import register as register_method

REGISTRIES = [(METHODS, get_method, "method"), (ANNOTATORS, get_annotator, "annotator"),
              (METRICS, get_metric, "metric")]


@pytest.mark.parametrize("add, kind, name", [
    (lambda: register_method(METHODS["ga"]), "method", "ga"),
    (lambda: register_annotator("rules")(RulesAnnotator), "annotator", "rules"),
    (lambda: register_metric(MetricSpec("forget_quality", True, "again")), "metric", "forget_quality"),
])
def test_a_name_taken_twice_is_refused(add, kind, name):
    with pytest.raises(PaluError) as err:
        add()
    assert str(err.value) == f"{kind} {name!r} is already registered; pick another name."


@pytest.mark.parametrize("registry, lookup, kind", REGISTRIES)
def test_an_unknown_name_lists_the_valid_ones(registry, lookup, kind):
    with pytest.raises(PaluError) as err:
        lookup("nope")
    assert str(err.value) == f"unknown {kind} 'nope'; valid {kind}s: {', '.join(registry.names())}."
    assert len(registry.names()) == len(registry) > 1
    assert "nope" not in registry and registry.get("nope") is None


def test_annotators_and_metrics_are_listed_alphabetically():
    assert ANNOTATORS.names() == ["contrast", "file", "llm", "rules"]
    assert METRICS.names() == sorted(METRICS)


def test_every_metric_has_a_direction_and_an_aggregation():
    for name, spec in METRICS.items():
        assert spec.name == name
        assert spec.higher_is_better in (True, False, None), name
        assert isinstance(spec.aggregation, str) and spec.aggregation, name
    assert METRICS["forget_quality"].aggregation == "KS p-value"
    assert METRICS["model_utility"].aggregation == "harmonic mean"
    assert METRICS["privleak"].aggregation == "relative AUC gap"
    assert {METRICS[f"mia_{n}"].aggregation for n in ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm",
                                                      "reference")} == {"AUC"}


def test_methods_keep_their_order():
    """``palu demo --compare`` and the error for an unknown method list them in this order."""
    assert list(METHODS) == ["palu", "ga", "graddiff", "npo", "simnpo", "idkdpo", "rmu", "wga", "pdu", "tpo"]


SCRIPT = """
import importlib, inspect, json, pkgutil
import palu.annotate, palu.eval, palu.methods
from palu.annotate.base import ANNOTATORS, Annotator
from palu.eval.metrics import METRICS
from palu.methods import METHODS

registries = {"annotators": ANNOTATORS, "metrics": METRICS, "methods": METHODS}
before = {kind: list(registry) for kind, registry in registries.items()}
for package in (palu.annotate, palu.eval, palu.methods):
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)


def subclasses(cls):
    return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]


print(json.dumps({
    "before": before,
    "after": {kind: list(registry) for kind, registry in registries.items()},
    "method_modules": sorted({m.loss.__module__ for m in METHODS.values()}),
    "modules": sorted(m.name for m in pkgutil.iter_modules(palu.methods.__path__, "palu.methods.")),
    "annotator_modules": sorted({a.__module__ for a in ANNOTATORS.values()}),
    "annotator_classes": sorted({c.__module__ for c in subclasses(Annotator) if not inspect.isabstract(c)}),
}))
"""


def test_importing_a_package_registers_every_module_of_it():
    """In a fresh process: importing palu.methods or palu.annotate, or reading METRICS, gives whole registries,
    and every method and annotator module registered what it defines."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["before"] == out["after"]
    assert out["method_modules"] == sorted(set(out["modules"]) - {"palu.methods.common", "palu.methods.head", "palu.methods.space"})
    assert out["annotator_modules"] == out["annotator_classes"]
