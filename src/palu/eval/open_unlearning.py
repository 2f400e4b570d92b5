"""Recompute the TOFU aggregates of an open-unlearning evaluation log with palu's metric code.

open-unlearning (github.com/locuslab/open-unlearning, the reference implementation of the TOFU
metrics) writes ``TOFU_EVAL.json``: per metric an ``agg_value`` and per-item ``value_by_index``
(``prob`` and ``avg_loss`` per answer, ROUGE generations with their ground truths, MIA scores).
Feeding palu's aggregation the stored per-item values, and rescoring the stored generations with
rouge_score, must give the stored aggregates: that shows palu's definitions are the community's
without running a 7B model (tests/test_open_unlearning_parity.py does it on two shipped logs).

Where the reference deviates from docs/tofu-metrics.md, palu follows it (documented where it acts):
the 1e-10 guards in denominators (``metrics.OPEN_UNLEARNING_EPS``), extraction strength of 1/n
rather than 0 when the last token is missed (``metrics.extraction_strength``), and token metrics
that skip the answer's last token, the EOS (``scoring.TokenScores``). Two more concern logs only:

- Prob is the mean of the stored ``prob``, which the reference rounded to float32, not ``exp`` of
  the stored loss (they differ around the 8th digit).
- Without the retain model's log, the reference computes privleak against a retain AUC of 0.5
  (``REFERENCE_RETAIN_AUC``); palu's own suite reports it unavailable instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from palu.errors import PaluError
from palu.eval.metrics import (
    OPEN_UNLEARNING_EPS,
    MetricSpec,
    mean_result,
    mia_result,
    normalised_prob,
    register,
    rouge_result,
    truth_ratio,
    truth_ratio_result,
)
from palu.eval.tofu import GENERAL, PREFIX, add_comparisons
from palu.io import read_json

REFERENCE_RETAIN_AUC = 0.5

for _name, _what in (("gradnorm", "gradient-norm"), ("reference", "reference-model")):
    register(MetricSpec(f"mia_{_name}", False, f"AUC of open-unlearning's {_what} membership-inference score, "
                                               "recomputed from a log (palu does not compute this score)"))
MIA_METRICS = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference")


def read_log(path: str | Path) -> dict:
    """An open-unlearning evaluation log, refused with a clear message when it is something else."""
    log = read_json(path)
    if not isinstance(log, dict) or not any(isinstance(v, dict) and "agg_value" in v for v in log.values()):
        raise PaluError(f"{path}: not an open-unlearning evaluation log (TOFU_EVAL.json): it holds no metrics "
                        "with an agg_value.")
    return log


def recompute_files(eval_path: str | Path, retain_path: str | Path | None = None) -> dict[str, dict]:
    """``recompute`` on log files (``palu eval --from-open-unlearning EVAL.json --retain-log RETAIN.json``)."""
    return recompute(read_log(eval_path), None if retain_path is None else read_log(retain_path))


def recompute(log: Mapping, retain_log: Mapping | None = None) -> dict[str, dict]:
    """palu's results for every metric the log's per-item values allow, under palu's metric names.

    ``retain_log`` (the retain model's log on the same forget set) gives forget quality and privleak.
    Per-item values are indexed by position in the log. Aggregates that are only inputs of others
    (``*_PARA_Prob``, ``*_PERT_Prob``) are not reported; the truth ratios built from them are.
    """
    results: dict[str, dict] = {}
    for split, prefix in PREFIX.items():
        if f"{prefix}_Q_A_Prob" in log:
            results.update(_qa_metrics(log, prefix, split in GENERAL))
    for name in ("exact_memorization", "extraction_strength"):
        if name in log:
            results[name] = mean_result(name, [v["score"] for v in _values(log[name])])
    for name in MIA_METRICS:
        if name in log:
            forget, holdout = ([v["score"] for v in _values(log[name][part])] for part in ("forget", "holdout"))
            results[name] = mia_result(name, forget, holdout)
    reference = recompute(retain_log) if retain_log is not None else {"mia_min_k": {"agg_value": REFERENCE_RETAIN_AUC}}
    add_comparisons(results, reference)
    return results


def _qa_metrics(log: Mapping, prefix: str, general: bool) -> dict[str, dict]:
    """Prob, normalised Prob (general-knowledge sets), ROUGE and truth ratio of one split."""
    answers = _values(log[f"{prefix}_Q_A_Prob"])
    probs = [v["prob"] for v in answers]
    out = {f"{prefix}_Q_A_Prob": mean_result(f"{prefix}_Q_A_Prob", probs)}
    wrong = _values(log[f"{prefix}_Q_A_PERT_Prob"]) if f"{prefix}_Q_A_PERT_Prob" in log else None
    if general:
        norm = None if wrong is None else normalised_prob(probs, [v["prob"] for v in wrong], OPEN_UNLEARNING_EPS)
        out[f"{prefix}_Q_A_Prob_normalised"] = mean_result(f"{prefix}_Q_A_Prob_normalised", norm)
    if f"{prefix}_Q_A_ROUGE" in log:
        rouge = _values(log[f"{prefix}_Q_A_ROUGE"])
        out[f"{prefix}_Q_A_ROUGE"] = rouge_result(f"{prefix}_Q_A_ROUGE", [v["generation"] for v in rouge],
                                                  [v["ground_truth"] for v in rouge])
    para = f"{prefix}_Q_A_PARA_Prob"  # the correct answer of forget and retain; general knowledge uses the answer
    correct = answers if general else (_values(log[para]) if para in log else None)
    tr = None
    if wrong is not None and correct is not None:
        tr = truth_ratio([v["avg_loss"] for v in correct], [v["avg_loss"] for v in wrong], OPEN_UNLEARNING_EPS)
    out[f"{prefix}_truth_ratio"] = truth_ratio_result(f"{prefix}_truth_ratio", tr, OPEN_UNLEARNING_EPS)
    return out


def _values(entry: Mapping) -> list:
    return list(entry["value_by_index"].values())
