"""The core TOFU metrics on a forget and a retain split: a subset of ``palu.eval.tofu.evaluate_tofu``.

Forget quality needs the retain model's per-item forget truth ratios: pass the results of this same
function on the retain model (or the JSON they were saved to) as ``retain_reference``.
"""

from __future__ import annotations

from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.eval.tofu import evaluate_tofu

CORE_METRICS = ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_quality", "exact_memorization",
                "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_truth_ratio")


def evaluate_core(model, tokenizer, forget: list[QAItem], retain: list[QAItem], prompt: PromptConfig,
                  retain_reference: dict | None = None, batch_size: int = 16, max_new_tokens: int = 200,
                  max_length: int = 512, progress: bool = False) -> dict[str, dict]:
    """Forget and retain Q_A_Prob, Q_A_ROUGE and truth ratio, forget quality and exact memorization.

    Truth ratios need ``paraphrased_answer`` and ``perturbed_answers`` on the items; without them the
    truth-ratio metrics (and forget quality) are reported with ``agg_value`` None.
    """
    results = evaluate_tofu(model, tokenizer, {"forget": forget, "retain": retain}, prompt, retain_reference,
                            batch_size, max_new_tokens, max_length, progress)
    return {name: results[name] for name in CORE_METRICS}


def summary(results: dict[str, dict]) -> dict[str, float | None]:
    """Metric name -> aggregate value (None where unavailable)."""
    return {name: res["agg_value"] for name, res in results.items()}
