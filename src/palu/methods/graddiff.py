"""GradDiff: gradient ascent on the forget set plus descent on the retain set (Liu et al., CoLLAs
2022, arXiv 2203.12817; TOFU's "gradient difference", Maini et al. 2024, arXiv 2401.06121)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palu.methods.common import Head, Method, WeightedOptions, answer_nll, register, weighted_total
from palu.methods.space import Knob


@dataclass
class GradDiffConfig(WeightedOptions):
    """GradDiff's options: ``gamma`` (forget weight, 1), ``alpha`` (retain weight, 1) and
    ``retain_loss`` ("nll" or "kl"), as in open-unlearning."""

    name: str = "graddiff"


def graddiff_loss(model, batch: dict, ref_head: Head, cfg: GradDiffConfig) -> dict[str, torch.Tensor]:
    """``gamma * (-NLL(forget)) + alpha * R``."""
    return weighted_total(model, batch, ref_head, -answer_nll(model, batch["forget"]), cfg)


SPACE = {"alpha": Knob(0.1, 10.0, source="around open-unlearning's 1")}

register(Method("graddiff", GradDiffConfig, graddiff_loss, space=SPACE))
