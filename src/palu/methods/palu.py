"""PALU: Prefix-Aware Localized Unlearning (Zhai et al., ACL 2026, arXiv 2601.03190).

Flatten only the reference's top-K logits, only at the first N tokens of each sensitive span;
hold every ordinary answer token close to the reference. The forget term uses K rows of the
output matrix and its mean row, never the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from palu.config import require
from palu.data.labels import ORDINARY, select_prefix
from palu.methods.common import (
    Head,
    Method,
    WeightedOptions,
    answer_positions,
    answer_rows,
    final_hidden,
    mean_or_zero,
    register,
)
from palu.methods.head import Rows, head_loss, ref_argmax
from palu.methods.space import Knob


@dataclass
class PaluConfig(WeightedOptions):
    """PALU's options; defaults follow the official configuration (paper: K = 50, N = 3..5 worked best).

    Attributes:
        top_k: K, how many of the reference's largest logits to flatten at each selected position
            (-1: the whole vocabulary).
        first_n: N, how many leading tokens of each sensitive run get the forget loss (-1: all).
        split_spans: start a new run at each annotated span, not only at gaps (official: False).
        target: "mean" (the vocabulary-mean logit, official, not detached) or "local_mean"
            (the mean of the K selected logits: flattens them among themselves only).
        constraint: ordinary-token term: "kl" (KL(P_theta||P_ref), official), "reverse_kl"
            (KL(P_ref||P_theta), the paper's text) or "nll" (cross-entropy to the reference argmax).
        forget_scale: "none" (official) or "reference": the forget term divided by its value under
            the reference at the same positions (per batch), so it starts at 1 and its weight means
            the same on any model; the official term grows with the square of the logit scale.
        gamma: weight of the forget term.
        alpha: weight of the retain term and of the ordinary-token constraint (official: one alpha).
        retain_loss: "nll" (official) or "kl" (KL(P_ref||P_theta) on the retain answer).

    gamma, alpha and retain_loss (with their defaults) come from :class:`WeightedOptions`.
    """

    name: str = "palu"

    top_k: int = 1
    first_n: int = -1
    split_spans: bool = False
    target: Literal["mean", "local_mean"] = "mean"
    constraint: Literal["kl", "reverse_kl", "nll"] = "kl"
    forget_scale: Literal["none", "reference"] = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("top_k", "first_n"):
            value = getattr(self, name)
            require(value >= 1 or value == -1, name, "a positive number, or -1 for all", value)


def local_entropy(h: torch.Tensor, ref_h: torch.Tensor, head: Head, ref_head: Head, top_k: int,
                  target: str) -> torch.Tensor:
    """Per-position forget loss ``mean_{i in TopK_ref} (z[i] - c)^2`` at hidden states ``h`` [S, d]."""
    vocab = head.weight.shape[0]
    if top_k < 0 or top_k >= vocab:
        z = head.logits(h)
        return ((z - z.mean(-1, keepdim=True)) ** 2).mean(-1)
    ids = ref_head.logits(ref_h).topk(top_k, dim=-1).indices
    z = head.rows(h, ids)
    c = head.mean_logit(h)[:, None] if target == "mean" else z.mean(-1, keepdim=True)
    return ((z - c) ** 2).mean(-1)


def ordinary_rows(h: torch.Tensor, ref_h: torch.Tensor, ref_head: Head, kind: str, scale: float) -> Rows:
    """The ordinary-token constraint as rows of the fused head loss: the distance of the current
    next-token distributions at hidden states ``h`` to the reference's at ``ref_h``."""
    if kind == "nll":
        return Rows(h, "ce", targets=ref_argmax(ref_h, ref_head), scale=scale)
    return Rows(h, kind, ref_h=ref_h, scale=scale)


def palu_loss(model, batch: dict, ref_head: Head, cfg: PaluConfig) -> dict[str, torch.Tensor]:
    """``gamma * L_sens + alpha * L_retain + alpha * L_ord`` on a paired forget/retain batch.

    ``batch["forget"]["ref_hidden"]`` holds the reference's final hidden states at the forget
    batch's answer positions, in row-major order. The ordinary-token constraint and the retain term
    share one pass of the fused head loss.
    """
    forget = batch["forget"]
    head = Head.of(model)
    answers = answer_positions(forget)
    h = final_hidden(model, forget)[:, :-1][answers]
    selected = select_prefix(forget["token_class"], forget["span_id"], cfg.first_n, cfg.split_spans)[:, 1:][answers]
    ordinary = (forget["token_class"][:, 1:] == ORDINARY)[answers]
    ref_h = forget["ref_hidden"]
    sens = mean_or_zero(local_entropy(h[selected], ref_h[selected], head, ref_head, cfg.top_k, cfg.target), h)
    if cfg.forget_scale == "reference":
        with torch.no_grad():
            at_ref = local_entropy(ref_h[selected], ref_h[selected], ref_head, ref_head, cfg.top_k, cfg.target)
        sens = sens / mean_or_zero(at_ref, h).clamp_min(torch.finfo(sens.dtype).tiny)
    rows = [ordinary_rows(h[ordinary], ref_h[ordinary], ref_head, cfg.constraint, cfg.alpha),
            answer_rows(model, batch["retain"], cfg.retain_loss, cfg.alpha)]
    head_terms, (ord_, ret) = head_loss(head, rows, ref_head)
    total = cfg.gamma * sens + head_terms
    return {"loss": total, "forget": sens.detach(), "ordinary": ord_.detach(), "retain": ret.detach()}


SPACE = {
    "alpha": Knob(0.2, 5.0, source="the official PALU grid: 0.2 to 5"),
    "top_k": Knob(choices=(1, 10, 50, 1000), source="the official PALU grid: K 1 to 10,000"),
    "first_n": Knob(choices=(1, 2, 3, 5, -1), source="the official PALU grid: N 1 to 10; -1: every token of a run"),
}

register(Method("palu", PaluConfig, palu_loss, uses_spans=True, space=SPACE))
