"""NPO: Negative Preference Optimization (Zhang et al., COLM 2024, arXiv 2404.05868).

DPO with only a losing answer: the forget answer's likelihood is pushed below the reference's,
with a gradient that fades as it gets there, which slows GA's collapse. pi_ref comes from the
precomputed reference hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palu.methods.common import Head, Method, WeightedOptions, log_ratio, preference_loss, register, weighted_total
from palu.methods.space import Knob


@dataclass
class NPOConfig(WeightedOptions):
    """NPO's options (open-unlearning's defaults).

    Attributes:
        beta: inverse temperature of the preference loss.
        gamma, alpha, retain_loss: see :class:`palu.methods.common.WeightedOptions`.
    """

    name: str = "npo"

    beta: float = 0.1


def npo_loss(model, batch: dict, ref_head: Head, cfg: NPOConfig) -> dict[str, torch.Tensor]:
    """``gamma * -(2/beta) mean logsigma(-beta (pi_theta - pi_ref)(y_forget)) + alpha * R``."""
    forget = preference_loss(-log_ratio(model, batch["forget"], ref_head), cfg.beta)
    return weighted_total(model, batch, ref_head, forget, cfg)


SPACE = {"beta": Knob(0.05, 1.0, source="around NPO's and open-unlearning's 0.1")}

register(Method("npo", NPOConfig, npo_loss, space=SPACE))
