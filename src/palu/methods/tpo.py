"""TPO: Targeted Preference Optimization (Zhou et al., "Not All Tokens Are Meant To Be Forgotten",
arXiv 2506.03142).

Only the sensitive ("unwanted") tokens are unlearned, by a preference loss that pushes their
mean gold-token logit below the reference's; the ordinary tokens of the same answer are kept by
plain NLL. It uses PALU's span annotations; the reference logits come from the precomputed
hidden states and one row of the frozen output layer per position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palu.data.labels import ORDINARY, SENSITIVE
from palu.methods.common import (
    Head,
    Method,
    RetainOptions,
    answer_positions,
    answer_rows,
    final_hidden,
    preference_loss,
    register,
    sequence_sums,
)
from palu.methods.head import Rows, head_loss
from palu.methods.space import Knob


@dataclass
class TPOConfig(RetainOptions):
    """TPO's options.

    Attributes:
        beta: inverse temperature of the logit preference loss (the paper tuned 0.19..0.32).
        retain_loss: see :class:`palu.methods.common.RetainOptions`.
    """

    name: str = "tpo"

    beta: float = 0.25


def gold_logits(h: torch.Tensor, targets: torch.Tensor, head: Head) -> torch.Tensor:
    """The gold token's logit at each position [N], from one output row per position."""
    return head.rows(h, targets[:, None])[:, 0].float()


def tpo_loss(model, batch: dict, ref_head: Head, cfg: TPOConfig) -> dict[str, torch.Tensor]:
    """``L_f + NLL_ordinary + R``, with ``L_f = -(2/beta) mean logsigma(beta (zbar_ref - zbar_theta))``.

    zbar is one sequence's mean gold-token logit over its sensitive positions; the mean runs over
    the sequences that have any (L_f is 0 when none has). The ordinary-token NLL and the retain term
    share one pass of the fused head loss.
    """
    forget = batch["forget"]
    head = Head.of(model)
    answers = answer_positions(forget)
    h = final_hidden(model, forget)[:, :-1][answers]
    targets = forget["labels"][:, 1:][answers]
    cls = forget["token_class"][:, 1:][answers]
    sensitive = (cls == SENSITIVE).float()
    count = sequence_sums(sensitive, forget)
    zbar = sequence_sums(gold_logits(h, targets, head) * sensitive, forget)
    zbar_ref = sequence_sums(gold_logits(forget["ref_hidden"], targets, ref_head) * sensitive, forget)
    has = count > 0
    sens = preference_loss((zbar_ref[has] - zbar[has]) / count[has], cfg.beta)
    ordinary = cls == ORDINARY
    rows = [Rows(h[ordinary], "ce", targets=targets[ordinary]), answer_rows(model, batch["retain"], cfg.retain_loss)]
    head_terms, (ord_, ret) = head_loss(head, rows, ref_head)
    return {"loss": sens + head_terms, "forget": sens.detach(), "ordinary": ord_, "retain": ret}


SPACE = {"beta": Knob(0.1, 0.5, source="TPO's tuned 0.19 to 0.32")}

register(Method("tpo", TPOConfig, tpo_loss, uses_spans=True, space=SPACE))
