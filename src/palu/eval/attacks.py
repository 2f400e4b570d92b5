"""Robustness attacks on an unlearned model: is the forgotten knowledge gone, or only hidden?

Each attack starts from a fresh load of the model (the folder on disk is never written) and is
scored with the TOFU suite beside the unattacked model:

- ``relearn``: fine-tune on a few forget items, score the other forget items. Knowledge that comes
  back on items the attacker never showed was suppressed, not removed (Lynch et al. 2024; Hu et
  al. 2024, "Jogging the Memory of Unlearned LLMs Through Targeted Relearning Attacks").
- ``quantize``: round the weights to 8 and 4 bits. Unlearning by small weight updates can vanish
  under rounding (Zhang et al. 2024, "Catastrophic Failure of LLM Unlearning via Quantization").
- ``paraphrase``: ask the forget questions in other words; unlearning tied to the wording of the
  training prompts fails here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from palu.commands import EvalConfig, eval_sets, load_configured
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.eval.core import format_value, summary
from palu.eval.metrics import mia_auc
from palu.eval.tofu import evaluate_tofu, item_values
from palu.io import read_json, write_json
from palu.models import require_model
from palu.runs import Reuse, finish, run_folder
from palu.train.finetune import finetune
from palu.train.loop import TrainConfig

log = logging.getLogger(__name__)

ATTACKS = ("relearn", "quantize", "paraphrase")
BITS = (8, 4)
RELEARN_FRACTION = 0.1
UNATTACKED = "none"
RELEARN_DIR = "relearn"
TABLE_METRICS = ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_quality",
                 "exact_memorization", "extraction_strength", "privleak")


def relearn_train() -> TrainConfig:
    """A short relearning run at a pretrained model's learning rate; raise lr (~1e-3) for models from scratch."""
    return TrainConfig(epochs=3, lr=1e-5, batch_size=4, warmup_epochs=0, schedule="constant")


@dataclass
class AttackConfig(EvalConfig):
    """``palu attack``: the TOFU metrics of an unlearned model under robustness attacks.

    The model, tokenizer, evaluation sets, retain reference and evaluation options are those of
    ``palu eval`` (``EvalConfig``).

    Attributes:
        attacks: which of ``relearn``, ``quantize`` and ``paraphrase`` to run (all by default).
        relearn_items: forget items the attacker fine-tunes on; None: 10% of the forget set, at
            least 1, drawn at random with ``relearn.seed`` (so they span the forget authors).
            They are left out of the forget set for every row, the unattacked one included, so
            that all rows score the same items and relearning is judged only on facts it did not
            train on: scoring the trained items would measure fresh memorisation, not recovery.
        relearn: the relearning run (through the shared training loop); the relearned model is
            saved under ``<output_dir>/relearn``.
        quantize_bits: weight widths to try, each 8 or 4. With bitsandbytes and a CUDA GPU, its
            int8 (no outlier threshold) and NF4 (blocks of 64) layers; otherwise a symmetric
            round-to-nearest round trip per output channel (``round_trip``). The results record which.
    """

    output_dir: str = "runs/attack"
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    relearn_items: int | None = None
    relearn: TrainConfig = field(default_factory=relearn_train)
    quantize_bits: list[int] = field(default_factory=lambda: list(BITS))

    def __post_init__(self) -> None:
        for name in self.attacks:
            if name not in ATTACKS:
                raise PaluError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)}.")
        for bits in self.quantize_bits:
            if bits not in BITS:
                raise PaluError(f"quantize_bits: {bits} bits is not supported; use 8 or 4.")
        if self.relearn_items is not None and self.relearn_items < 1:
            raise PaluError(f"relearn_items must be at least 1 (or None for 10% of the forget set), "
                            f"not {self.relearn_items}.")


def relearn_indices(n_forget: int, n_items: int | None, seed: int) -> list[int]:
    """Sorted positions of the forget items to relearn on; at least one forget item is left to score."""
    k = max(1, round(RELEARN_FRACTION * n_forget)) if n_items is None else n_items
    if k >= n_forget:
        raise PaluError(f"relearning on {k} of the {n_forget} forget items leaves none to evaluate; "
                        "lower relearn_items or give more forget items.")
    return sorted(random.Random(seed).sample(range(n_forget), k))


def restrict_reference(reference: Mapping | None, indices: list[int]) -> dict | None:
    """The retain model's results on the forget items at ``indices`` only, re-indexed 0..n-1 as the
    attacked model's are, so that forget quality and privleak compare the same items."""
    if reference is None:
        return None
    out = dict(reference)
    try:
        if "forget_truth_ratio" in reference:
            tr = reference["forget_truth_ratio"]
            out["forget_truth_ratio"] = {**tr, "value_by_index": _pick(tr["value_by_index"], indices)}
        if "mia_min_k" in reference:
            mia = reference["mia_min_k"]
            by_set = mia["value_by_index"]
            forget = item_values({"value_by_index": _pick(by_set["forget"], indices)})
            out["mia_min_k"] = {**mia, "agg_value": mia_auc(forget, item_values({"value_by_index": by_set["holdout"]}))}
    except KeyError:
        raise PaluError(f"the retain reference lacks per-item forget values for the {len(indices)} forget items "
                        f"scored here (positions up to {max(indices)}); evaluate the retain model on the same "
                        "forget set.") from None
    return out


def _pick(values: Mapping, indices: list[int]) -> dict:
    return {str(new): values[str(old)] for new, old in enumerate(indices)}


def round_trip(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric round-to-nearest per output channel (row), back in the weight's dtype: a row w becomes
    ``s * round(w / s)`` with ``s = max|w| / (2^(bits-1) - 1)``, so no weight moves by more than s/2.

    Computed in float32; an all-zero row stays zero.
    """
    w = weight.float()
    step = w.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
    step = torch.where(step > 0, step, 1.0)
    return ((w / step).round() * step).to(weight.dtype)


def quantize_round_trip(model, bits: int):
    """Round-trip every nn.Linear weight of ``model`` (in place) through ``bits``-bit integers.

    Each weight is replaced by a new tensor rather than written into, so an input embedding tied
    to the output layer keeps full precision, as it does under bitsandbytes.
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise PaluError("the model has no nn.Linear layers to quantize.")
    with torch.no_grad():
        for module in linears:
            module.weight = torch.nn.Parameter(round_trip(module.weight, bits), requires_grad=False)
    return model


def bitsandbytes_available() -> bool:
    """bitsandbytes quantizes on a CUDA GPU only, so it needs both."""
    if not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def quantize(model, bits: int) -> str:
    """Quantize every nn.Linear of ``model`` in place to ``bits`` bits; returns the backend used."""
    if bitsandbytes_available():
        _bitsandbytes(model, bits)
        return "bitsandbytes"
    quantize_round_trip(model, bits)
    return "round-trip"


def _bitsandbytes(model, bits: int) -> None:
    """Swap every nn.Linear for a bitsandbytes layer holding its weights; they are quantized when the
    model moves to the GPU (so they must start on the CPU), and the model is then evaluated there."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            shape = (child.in_features, child.out_features, child.bias is not None)
            weight = child.weight.data.cpu()
            if bits == 8:
                layer = bnb.nn.Linear8bitLt(*shape, has_fp16_weights=False, threshold=0.0)
                layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            else:
                layer = bnb.nn.Linear4bit(*shape, compute_dtype=child.weight.dtype, quant_type="nf4")
                layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                layer.bias = child.bias
            setattr(parent, name, layer)
    model.cuda()


@dataclass
class _Run:
    """What every row of one ``run_attack`` shares. ``scored``: the forget positions every row scores."""

    cfg: AttackConfig
    sets: dict[str, list[QAItem]]
    reference: dict | None
    scored: list[int]
    out: Path
    progress: bool

    def score(self, model, tok, indices: list[int] | None = None, paraphrase: bool = False) -> dict:
        """The TOFU suite on the forget items at ``indices`` (default ``scored``) and the other sets;
        with ``paraphrase``, on the forget items alone, asked their paraphrased questions."""
        indices = self.scored if indices is None else indices
        forget = [self.sets["forget"][i] for i in indices]
        if paraphrase:
            sets = {"forget": [replace(item, question=item.paraphrased_question) for item in forget]}
        else:
            sets = {**self.sets, "forget": forget}
        c = self.cfg
        metrics = evaluate_tofu(model, tok, sets, c.prompt, restrict_reference(self.reference, indices), c.batch_size,
                                c.max_new_tokens, c.max_length, progress=self.progress)
        return {"forget_indices": indices, "metrics": metrics}

    def unattacked(self) -> dict:
        return self.score(*load_configured(self.cfg))

    def relearned(self, relearned: list[int]) -> dict:
        model, tok = load_configured(self.cfg)
        folder = self.out / RELEARN_DIR
        items = [self.sets["forget"][i] for i in relearned]
        history = finetune(model, tok, items, self.cfg.relearn, self.cfg.prompt, folder, progress=self.progress)
        finish(folder, model, tok, history)
        return {**self.score(model, tok), "relearned_indices": relearned, "history": history}

    def quantized(self, bits: int) -> dict:
        model, tok = load_configured(self.cfg)
        backend = quantize(model, bits)
        return {**self.score(model, tok), "backend": backend}

    def paraphrased(self, indices: list[int]) -> dict:
        asked = set(indices)
        missing = [i for i in self.scored if i not in asked]
        if missing:
            log.warning("%d of %d forget items have no paraphrased question; the paraphrase attack skips them "
                        "(listed in results.json).", len(missing), len(self.scored))
        return {**self.score(*load_configured(self.cfg), indices, paraphrase=True), "without_paraphrased_question": missing}


def run_attack(cfg: AttackConfig, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Score the unattacked model (row "none") and each attack; returns {row: {metric: value}}.

    Rows: "none", then in the order of ``cfg.attacks`` "relearn", "quantize_8bit"/"quantize_4bit"
    and "paraphrase". After every row, ``results.json`` (per row: the per-item results under
    "metrics", "forget_indices" (the forget-set position of each scored item) and what the attack
    did) and ``summary.json`` are rewritten, so an interrupted run keeps its finished rows.
    """
    require_model(cfg)
    sets = eval_sets(cfg, cfg.synthetic)
    n = len(sets["forget"])
    relearned = relearn_indices(n, cfg.relearn_items, cfg.relearn.seed) if "relearn" in cfg.attacks else []
    scored = sorted(set(range(n)) - set(relearned))
    paraphrased = [i for i in scored if sets["forget"][i].paraphrased_question]
    if "paraphrase" in cfg.attacks and not paraphrased:
        raise PaluError(f"the paraphrase attack needs paraphrased questions, and none of the {len(scored)} forget "
                        "items scored has one; add them (field paraphrased_question) or leave paraphrase out of "
                        "attacks.")
    reference = read_json(cfg.retain_reference) if cfg.retain_reference else None
    with run_folder(cfg.output_dir, "attack", cfg, Reuse(overwrite)) as out:
        run = _Run(cfg, sets, reference, scored, out, progress)
        rows = {UNATTACKED: run.unattacked}
        for name in cfg.attacks:
            if name == "relearn":
                rows[name] = partial(run.relearned, relearned)
            elif name == "quantize":
                rows.update({f"quantize_{bits}bit": partial(run.quantized, bits) for bits in cfg.quantize_bits})
            else:
                rows[name] = partial(run.paraphrased, paraphrased)
        results: dict[str, dict] = {}
        table: dict[str, dict] = {}
        for row, attack in rows.items():
            log.info("attack: %s", row)
            results[row] = attack()
            table[row] = summary(results[row]["metrics"])
            write_json(out / "results.json", results)
            write_json(out / "summary.json", table)
        return table


def attack_table(table: Mapping[str, Mapping[str, float | None]]) -> str:
    """The forget metrics (rows) under each attack (columns) beside the unattacked model's ("none"),
    the change from it in brackets, as plain text."""
    base = table.get(UNATTACKED, {})
    metrics = [m for m in TABLE_METRICS if any(m in values for values in table.values())]
    header = ["metric", *table]
    rows = [[m] + [_cell(values.get(m), None if row == UNATTACKED else base.get(m)) for row, values in table.items()]
            for m in metrics]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    legend = ("in brackets: the change from none; a rise in forget Prob, ROUGE, exact_memorization or "
              "extraction_strength is forgotten knowledge coming back")
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows), "", legend])


def _cell(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return format_value(value)
    change = value - base
    return f"{format_value(value)} ({'-' if change < 0 else '+'}{format_value(abs(change))})"
