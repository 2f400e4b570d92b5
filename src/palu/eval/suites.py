"""Each evaluation suite as one function of a model and of the metrics wanted (None: all), so the
evaluation after every unlearning epoch runs TOFU's suite, MUSE's, or both, with lm-eval tasks
beside, in one way."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from palu.data.prompts import PromptConfig
from palu.eval.harness import PREFIX as HARNESS_PREFIX
from palu.eval.harness import HarnessTasks, evaluate_harness
from palu.eval.muse import MuseSets, evaluate_muse
from palu.eval.tofu import evaluate_tofu

Suite = Callable[[Any, Collection[str] | None], dict[str, dict]]


def tofu_suite(tokenizer, sets: Mapping, prompt: PromptConfig, reference: Mapping | None, progress: bool = False,
               **options) -> Suite:
    """TOFU's suite on loaded ``sets`` (see :func:`palu.eval.tofu.evaluate_tofu`)."""
    return lambda model, metrics=None: evaluate_tofu(model, tokenizer, sets, prompt, reference, progress=progress,
                                                     metrics=metrics, **options)


def muse_suite(tokenizer, cfg: MuseSets, reference: Mapping | None, progress: bool = False) -> Suite:
    """MUSE's suite on the sets ``cfg`` names, loaded once (see :func:`palu.eval.muse.evaluate_muse`)."""
    data = cfg.load()
    return lambda model, metrics=None: evaluate_muse(model, tokenizer, data, reference, cfg.batch_size,
                                                     cfg.max_length, progress, cfg.rules, cfg.knowmem_prompt, metrics)


def harness_suite(tokenizer, tasks: HarnessTasks) -> Suite:
    """lm-evaluation-harness tasks, run when any of their metrics (``lm-eval/...``) is wanted."""
    def run(model, metrics=None):
        wanted = metrics is None or any(name.startswith(HARNESS_PREFIX) for name in metrics)
        return evaluate_harness(model, tokenizer, tasks) if wanted else {}

    return run


def combined(*suites: Suite) -> Suite:
    """Several suites as one: their results side by side."""
    def run(model, metrics=None):
        results: dict[str, dict] = {}
        for suite in suites:
            results.update(suite(model, metrics))
        return results

    return run
