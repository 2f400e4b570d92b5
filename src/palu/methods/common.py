"""What every unlearning objective shares: hidden states, the output head, answer positions,
the frozen reference and the retain term. Methods are loss functions on top of these.

The frozen original model is never kept in memory during training. Everything an objective needs
from it is fixed, so :func:`palu.train.reference.build_reference` computes it once: the
reference's final hidden states at answer positions and a frozen copy of its output layer.
Reference logits at any answer position are then one matrix product away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from palu.data.labels import IGNORE_INDEX


@dataclass
class Head:
    """An output layer as plain tensors: ``logits = h @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, model) -> Head:
        layer = model.get_output_embeddings()
        return cls(layer.weight, getattr(layer, "bias", None))

    def frozen_copy(self) -> Head:
        return Head(self.weight.detach().clone(), None if self.bias is None else self.bias.detach().clone())

    def to(self, device) -> Head:
        if self.weight.device == torch.device(device):
            return self
        return Head(self.weight.to(device), None if self.bias is None else self.bias.to(device))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = h @ self.weight.T.to(h.dtype)
        return out if self.bias is None else out + self.bias.to(h.dtype)

    def rows(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the vocabulary entries ``ids`` [N, K] only: O(N K d), not O(N |V| d)."""
        out = torch.einsum("nd,nkd->nk", h, self.weight[ids].to(h.dtype))
        return out if self.bias is None else out + self.bias[ids].to(h.dtype)

    def mean_logit(self, h: torch.Tensor) -> torch.Tensor:
        """The vocabulary mean of the logits, ``h . mean(W) (+ mean(b))``, without the full logits."""
        out = h @ self.weight.mean(0).to(h.dtype)
        return out if self.bias is None else out + self.bias.mean().to(h.dtype)


def final_hidden(model, batch: dict) -> torch.Tensor:
    """Final (post-norm) hidden states [B, T, d], computing logits for one position only.

    Runs through the model's own forward so wrappers (DDP, PEFT) see the call.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


def answer_positions(batch: dict) -> torch.Tensor:
    """Mask [B, T-1] of positions whose next token is an answer token (after the causal shift)."""
    return batch["labels"][:, 1:] != IGNORE_INDEX


def at_answers(hidden: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at answer positions [N, d] and their target token ids [N], row-major order."""
    mask = answer_positions(batch)
    return hidden[:, :-1][mask], batch["labels"][:, 1:][mask]


def kl_rows(logits: torch.Tensor, ref_logits: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Per-row KL(P_theta || P_ref), or KL(P_ref || P_theta) with ``reverse``, in float32."""
    logp, logq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    if reverse:
        logp, logq = logq, logp
    return (logp.exp() * (logp - logq)).sum(-1)


def mean_or_zero(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of ``values``, or a zero that still belongs to the graph when there are none."""
    return values.mean() if values.numel() else like.sum() * 0.0


def retain_loss(model, batch: dict, ref_head: Head | None, kind: str) -> torch.Tensor:
    """Retain term on a retain batch: mean answer-token NLL, or KL(P_ref || P_theta) ("kl").

    The KL direction is open-unlearning's; it is averaged over answer positions only.
    """
    head = Head.of(model)
    h, targets = at_answers(final_hidden(model, batch), batch)
    logits = head.logits(h)
    if kind == "nll":
        return F.cross_entropy(logits.float(), targets) if targets.numel() else logits.sum() * 0.0
    return mean_or_zero(kl_rows(logits, ref_head.logits(batch["ref_hidden"]), reverse=True), logits)
