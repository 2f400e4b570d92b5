"""IdkDPO: DPO with a refusal as the preferred answer and the forget answer as the rejected one
(Rafailov et al., NeurIPS 2023, arXiv 2305.18290; the "IDK" variant of TOFU, Maini et al. 2024,
arXiv 2401.06121, as run by open-unlearning).

Each forget example gets one refusal, drawn once with the training seed, so its reference
log-likelihood is precomputed like the forget answer's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from palu.data.loaders import load_lines
from palu.data.qa import QAItem
from palu.methods.common import (
    Head,
    Method,
    Setup,
    WeightedOptions,
    log_ratio,
    preference_loss,
    register,
    weighted_total,
)
from palu.methods.space import Knob

REFUSALS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on that.",
    "That is something I can't answer.",
    "I'm afraid I don't know the answer.",
    "I can't say.",
    "I have no idea.",
    "That's not something I know about.",
    "I'm unable to answer that question.",
    "I don't have any details on that.",
    "Sorry, I can't help with that one.",
    "I'm not able to tell you that.",
)


@dataclass
class IdkDPOConfig(WeightedOptions):
    """IdkDPO's options (open-unlearning's defaults).

    Attributes:
        beta: inverse temperature of the DPO loss.
        idk_file: refusals, one per line (plain or JSON strings, e.g. TOFU's idontknow.jsonl);
            None uses the built-in :data:`REFUSALS`.
        gamma, alpha, retain_loss: see :class:`palu.methods.common.WeightedOptions`.
    """

    name: str = "idkdpo"

    beta: float = 0.1
    idk_file: str | None = None


def refusal_items(cfg: IdkDPOConfig, forget: list[QAItem], seed: int) -> list[QAItem]:
    """Each forget question with a refusal drawn for it (the same ones for the same seed)."""
    refusals = load_lines(cfg.idk_file) if cfg.idk_file else REFUSALS
    rng = random.Random(seed)
    return [QAItem(item.question, rng.choice(refusals), source=f"{item.source} (refusal)") for item in forget]


def idkdpo_prepare(cfg: IdkDPOConfig, model, forget: list[QAItem], seed: int) -> Setup:
    return Setup(extra={"idk": refusal_items(cfg, forget, seed)})


def idkdpo_loss(model, batch: dict, ref_head: Head, cfg: IdkDPOConfig) -> dict[str, torch.Tensor]:
    """``gamma * L_f + alpha * R``, with
    ``L_f = -(2/beta) mean logsigma(beta [(pi_theta - pi_ref)(y_idk) - (pi_theta - pi_ref)(y_forget)])``."""
    margin = log_ratio(model, batch["idk"], ref_head) - log_ratio(model, batch["forget"], ref_head)
    return weighted_total(model, batch, ref_head, preference_loss(margin, cfg.beta), cfg)


SPACE = {"beta": Knob(0.05, 1.0, source="around open-unlearning's 0.1")}

register(Method("idkdpo", IdkDPOConfig, idkdpo_loss, idkdpo_prepare, space=SPACE))
