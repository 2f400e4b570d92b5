"""GA: gradient ascent on the forget answers (Jang et al., ACL 2023, arXiv 2210.01504; TOFU's
baseline, Maini et al. 2024, arXiv 2401.06121). The simplest objective and the one that collapses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palu.methods.common import Head, Method, MethodOptions, answer_nll, register


@dataclass
class GAConfig(MethodOptions):
    """GA has no options: the loss is ``-NLL(forget)`` with no retain term."""

    name: str = "ga"


def ga_loss(model, batch: dict, ref_head: Head, cfg: GAConfig) -> dict[str, torch.Tensor]:
    """``L = -NLL(forget)``."""
    forget = -answer_nll(model, batch["forget"])
    return {"loss": forget, "forget": forget.detach()}


register(Method("ga", GAConfig, ga_loss))
