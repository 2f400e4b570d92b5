"""Robustness attacks on an unlearned model: is the forgotten knowledge gone, or only hidden?
(The pieces; ``palu attack`` in ``palu.commands.attack`` runs them.)

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

import torch

from palu.errors import PaluError
from palu.eval.metrics import mia_auc
from palu.eval.tofu import item_values

log = logging.getLogger(__name__)

ATTACKS = ("relearn", "quantize", "paraphrase")
BITS = (8, 4)
RELEARN_FRACTION = 0.1


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
