"""Recompute the TOFU aggregates of an open-unlearning evaluation log with palu's metric code.

open-unlearning (github.com/locuslab/open-unlearning, the reference implementation of the TOFU
metrics) writes ``TOFU_EVAL.json``: per metric an ``agg_value`` and per-item ``value_by_index``
(``prob`` and ``avg_loss`` per answer, ROUGE generations with their ground truths, MIA scores).
Feeding palu's aggregation the stored per-item values, and rescoring the stored generations with
rouge_score, must give the stored aggregates: that shows palu's definitions are the community's
without running a 7B model (tests/test_open_unlearning_parity.py does it on two shipped logs).

Where the reference deviates from the plain formulas, palu follows it (docs/metrics.md lists these;
each is documented where it acts):
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
                                               "recomputed from a log (palu does not compute this score)", "AUC"))
TEXT_FIELDS = ("generation", "ground_truth")
MIA_METRICS = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference")


def read_log(path: str | Path) -> dict:
    """An open-unlearning evaluation log, refused with a clear message when it is something else."""
    log = read_json(path, "file")
    if not isinstance(log, dict) or not any(isinstance(v, dict) and "agg_value" in v for v in log.values()):
        raise PaluError(f"{path}: not an open-unlearning evaluation log (TOFU_EVAL.json): it holds no metrics "
                        "with an agg_value.")
    return log


def recompute_files(eval_path: str | Path, retain_path: str | Path | None = None) -> dict[str, dict]:
    """``recompute`` on log files (``palu eval --from-open-unlearning EVAL.json --retain-log RETAIN.json``)."""
    reference = None if retain_path is None else _recompute_file(retain_path, None)
    return _recompute_file(eval_path, reference)


def _recompute_file(path: str | Path, reference: dict | None) -> dict[str, dict]:
    """``_recompute`` on one log file, whose errors (a missing per-item field, ...) then name the file."""
    log = read_log(path)
    try:
        return _recompute(log, reference)
    except PaluError as exc:
        raise PaluError(f"{path}: {exc}") from None


def recompute(log: Mapping, retain_log: Mapping | None = None) -> dict[str, dict]:
    """palu's results for every metric the log's per-item values allow, under palu's metric names.

    ``retain_log`` (the retain model's log on the same forget set) gives forget quality and privleak.
    Per-item values are indexed by position in the log. Aggregates that are only inputs of others
    (``*_PARA_Prob``, ``*_PERT_Prob``) are not reported; the truth ratios built from them are.
    """
    return _recompute(log, None if retain_log is None else recompute(retain_log))


def _recompute(log: Mapping, reference: dict | None) -> dict[str, dict]:
    """``recompute`` given the retain model's results (None: the reference's fixed retain AUC)."""
    results: dict[str, dict] = {}
    for split, prefix in PREFIX.items():
        if f"{prefix}_Q_A_Prob" in log:
            results.update(_qa_metrics(log, prefix, split in GENERAL))
    for name in ("exact_memorization", "extraction_strength"):
        if name in log:
            results[name] = mean_result(name, _values(log, name, "score"))
    for name in MIA_METRICS:
        if name in log:
            results[name] = mia_result(name, _values(log, name, "score", "forget"),
                                       _values(log, name, "score", "holdout"))
    add_comparisons(results, {"mia_min_k": {"agg_value": REFERENCE_RETAIN_AUC}} if reference is None else reference)
    return results


def _qa_metrics(log: Mapping, prefix: str, general: bool) -> dict[str, dict]:
    """Prob, normalised Prob (general-knowledge sets), ROUGE and truth ratio of one split."""
    answers, wrong, para = (f"{prefix}_Q_A_{kind}" for kind in ("Prob", "PERT_Prob", "PARA_Prob"))
    probs = _values(log, answers, "prob")
    out = {answers: mean_result(answers, probs)}
    if general:
        norm = None if wrong not in log else normalised_prob(probs, _values(log, wrong, "prob"), OPEN_UNLEARNING_EPS)
        out[f"{prefix}_Q_A_Prob_normalised"] = mean_result(f"{prefix}_Q_A_Prob_normalised", norm)
    if f"{prefix}_Q_A_ROUGE" in log:
        rouge = f"{prefix}_Q_A_ROUGE"
        out[rouge] = rouge_result(rouge, _values(log, rouge, "generation"), _values(log, rouge, "ground_truth"))
    correct = answers if general else para  # the correct answer of forget and retain; general knowledge uses the answer
    tr = None
    if wrong in log and correct in log:
        tr = truth_ratio(_values(log, correct, "avg_loss"), _values(log, wrong, "avg_loss"), OPEN_UNLEARNING_EPS)
    out[f"{prefix}_truth_ratio"] = truth_ratio_result(f"{prefix}_truth_ratio", tr, OPEN_UNLEARNING_EPS)
    return out


def _values(log: Mapping, metric: str, field: str, part: str | None = None) -> list:
    """Per item, ``field`` of ``metric`` (of its ``part``, for MIA), refused naming metric, index and field
    when missing or of the wrong kind: a hand-edited or truncated log must not end in a traceback."""
    name = metric if part is None else f"{metric}.{part}"
    entry = log[metric]
    if part is not None:
        entry = entry.get(part) if isinstance(entry, dict) else None
    by_index = entry.get("value_by_index") if isinstance(entry, dict) else None
    if not isinstance(by_index, dict):
        raise PaluError(f"metric {name} has no value_by_index (per-item values); use the complete log "
                        "open-unlearning wrote.")
    kind = ("text" if field in TEXT_FIELDS else "a list of numbers" if metric.endswith("_PERT_Prob")
            else "a number" if part else "a number or null")  # MIA's AUC takes no None
    out = []
    for index, value in by_index.items():
        if not isinstance(value, dict) or field not in value:
            raise PaluError(f"metric {name}: value_by_index[{index}] has no '{field}'; use the complete log "
                            "open-unlearning wrote, or remove the metric.")
        if not KINDS[kind](value[field]):
            raise PaluError(f"metric {name}: value_by_index[{index}].{field} should be {kind}, "
                            f"not {value[field]!r:.40}; fix the log.")
        out.append(value[field])
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KINDS = {  # what a per-item field may hold; None marks an item open-unlearning could not score
    "text": lambda v: isinstance(v, str),
    "a number": _number,
    "a number or null": lambda v: v is None or _number(v),
    "a list of numbers": lambda v: isinstance(v, list) and all(map(_number, v)),
}
