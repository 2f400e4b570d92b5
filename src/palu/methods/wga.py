"""WGA: weighted gradient ascent (Wang et al., ICLR 2025, arXiv 2502.19301, "Rethinking LLM
Unlearning Objectives: A Gradient Perspective and Go Beyond").

Each forget token's ascent is weighted by its own (detached) probability to the power beta, so
tokens the model already finds unlikely stop being pushed, which curbs GA's divergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palu.methods.common import (
    Head,
    Method,
    WeightedOptions,
    at_answers,
    final_hidden,
    mean_or_zero,
    register,
    token_nll,
    weighted_total,
)
from palu.methods.space import Knob


@dataclass
class WGAConfig(WeightedOptions):
    """WGA's options (open-unlearning's defaults).

    Attributes:
        beta: power of the token probability in the weight (0 gives plain GA).
        gamma, alpha, retain_loss: see :class:`palu.methods.common.WeightedOptions`.
    """

    name: str = "wga"

    beta: float = 1.0


def wga_loss(model, batch: dict, ref_head: Head, cfg: WGAConfig) -> dict[str, torch.Tensor]:
    """``gamma * -mean_t [p_t^beta (detached) * CE_t] + alpha * R`` over the forget answer tokens."""
    forget = batch["forget"]
    h, targets = at_answers(final_hidden(model, forget), forget)
    ce = token_nll(Head.of(model).logits(h), targets)
    weight = torch.exp(-ce.detach() * cfg.beta)
    return weighted_total(model, batch, ref_head, -mean_or_zero(weight * ce, ce), cfg)


SPACE = {"beta": Knob(0.1, 5.0, source="around open-unlearning's 1")}

register(Method("wga", WGAConfig, wga_loss, space=SPACE))
