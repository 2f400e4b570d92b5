"""PDU: primal-dual unlearning with logit-margin flattening (Entesari et al., "Constrained Entropic
Unlearning: A Primal-Dual Framework for Large Language Models", arXiv 2506.05314).

The forget term flattens the full-vocabulary logits at every answer position (the entropic
baseline PALU localises); the retain loss is a constraint ``R <= eps`` whose multiplier grows
while the constraint is violated and shrinks (to 0 at least) while it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import reduce

from palu.methods.common import (
    Head,
    Method,
    RetainOptions,
    Setup,
    at_answers,
    final_hidden,
    mean_or_zero,
    register,
    retain_loss,
)
from palu.methods.space import Knob


@dataclass
class PDUConfig(RetainOptions):
    """PDU's options (open-unlearning's defaults with the dual update on, per step).

    Attributes:
        lambda_f: weight of the forget term.
        lambda_r: initial retain multiplier.
        eta: dual step size.
        eps: the retain-loss bound; 0 makes the multiplier grow every step, so set it to the retain
            loss you accept (e.g. a little above the original model's).
        retain_loss: see :class:`palu.methods.common.RetainOptions`.
    """

    name: str = "pdu"

    lambda_f: float = 1.0
    lambda_r: float = 1.0
    eta: float = 1.0
    eps: float = 0.0


class Multiplier:
    """lambda_r for one run, updated by dual ascent ``max(0, lambda_r + eta (R - eps))`` after each optimizer
    update, with ``R`` the retain loss averaged over that update's micro-batches and processes: every
    process keeps the same value, and accumulation steps as one larger batch would."""

    def __init__(self, value: float, eta: float, eps: float):
        self.value, self.eta, self.eps = value, eta, eps
        self._sum, self._count = 0.0, 0

    def record(self, retain: torch.Tensor) -> None:
        """One micro-batch's retain loss (averaged over the processes, which all call this together)."""
        self._sum += float(reduce(retain.detach(), "mean"))
        self._count += 1

    def after_update(self) -> None:
        if self._count:
            self.value = max(0.0, self.value + self.eta * (self._sum / self._count - self.eps))
        self._sum, self._count = 0.0, 0

    def state_dict(self) -> dict:  # saved with each checkpoint, so a resumed run continues the ascent
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def pdu_prepare(cfg: PDUConfig, model, forget, seed: int) -> Setup:
    return Setup(state={"multiplier": Multiplier(cfg.lambda_r, cfg.eta, cfg.eps)})


def pdu_loss(model, batch: dict, ref_head: Head, cfg: PDUConfig, multiplier: Multiplier) -> dict[str, torch.Tensor]:
    """``lambda_f * mean_t (max_v z_t - mean_v z_t)^2 + lambda_r * (R - eps)``; ``R`` joins the dual step
    taken after the optimizer update (:class:`Multiplier`).

    The logged ``lambda_r`` is the multiplier this step used.
    """
    forget = batch["forget"]
    h, _ = at_answers(final_hidden(model, forget), forget)
    z = Head.of(model).logits(h).float()
    flat = mean_or_zero((z.max(-1).values - z.mean(-1)) ** 2, z)
    ret = retain_loss(model, batch["retain"], ref_head, cfg.retain_loss)
    used = multiplier.value
    total = cfg.lambda_f * flat + used * (ret - cfg.eps)
    multiplier.record(ret)
    return {"loss": total, "forget": flat.detach(), "retain": ret.detach(), "lambda_r": torch.tensor(used)}


SPACE = {"eps": Knob(0.05, 2.0, source="the retain-loss bound: near the original model's retain NLL, "
                                      "about 0.1 for tiny models and 1 to 2 for pretrained ones")}

register(Method("pdu", PDUConfig, pdu_loss, pdu_prepare, space=SPACE))
