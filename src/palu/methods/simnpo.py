"""SimNPO: NPO without a reference model, on the length-normalised NLL (Fan et al., "Simplicity
Prevails", arXiv 2410.07163). Normalising by length keeps short answers from dominating."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palu.methods.common import (
    Head,
    Method,
    WeightedOptions,
    answer_lengths,
    at_answers,
    final_hidden,
    preference_loss,
    register,
    sequence_logprob,
    weighted_total,
)
from palu.methods.space import Knob


@dataclass
class SimNPOConfig(WeightedOptions):
    """SimNPO's options (the paper's TOFU defaults).

    Attributes:
        beta: inverse temperature.
        delta: reward margin subtracted from the per-token NLL.
        gamma: weight of the forget term (0.125 here, not 1).
        alpha, retain_loss: see :class:`palu.methods.common.WeightedOptions`.
    """

    name: str = "simnpo"

    gamma: float = 0.125
    beta: float = 4.5
    delta: float = 0.0


def simnpo_loss(model, batch: dict, ref_head: Head, cfg: SimNPOConfig) -> dict[str, torch.Tensor]:
    """``gamma * -(2/beta) mean logsigma(beta (NLL_sum(y)/len(y) - delta)) + alpha * R``."""
    forget = batch["forget"]
    h, _ = at_answers(final_hidden(model, forget), forget)
    per_token_nll = -sequence_logprob(h, forget, Head.of(model)) / answer_lengths(forget).clamp_min(1)
    return weighted_total(model, batch, ref_head, preference_loss(per_token_nll - cfg.delta, cfg.beta), cfg)


SPACE = {
    "beta": Knob(1.0, 6.0, source="around SimNPO's 4.5 on TOFU"),
    "delta": Knob(0.0, 2.0, log=False, source="SimNPO's reward margin: 0 on TOFU, up to 2 nats per token"),
}

register(Method("simnpo", SimNPOConfig, simnpo_loss, space=SPACE))
