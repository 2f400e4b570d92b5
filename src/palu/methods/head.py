"""The output layer as plain tensors, and row losses through it that never hold [rows, |V|] logits
for the backward pass.

The ordinary-token constraint and the retain term are sums of per-row losses over full-vocabulary
distributions. Each chunk of rows computes its logits, its loss and the loss's gradient with
respect to the logits at once, folds that into the gradients of the hidden states and of the
output layer, and drops the logits. Backward then only scales the stored gradients. Peak memory
is one chunk of logits instead of all of them, and no logits are recomputed.

Gradients with respect to the logits z (p = softmax(z), q = softmax(z_ref)):
    kl          KL(p || q)            p * ((log p - log q) - KL)
    reverse_kl  KL(q || p)            p - q
    ce          -log p[target]        p - onehot(target)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("kl", "reverse_kl", "ce")
CHUNK_ELEMENTS = 2**23  # logits per chunk: 32 MiB in float32, a few such temporaries at a time


def chunk_rows(vocab: int) -> int:
    """Rows per chunk so one chunk's logits stay near CHUNK_ELEMENTS, whatever the vocabulary."""
    return max(16, CHUNK_ELEMENTS // vocab)


@dataclass
class Head:
    """An output layer as plain tensors: ``logits = h @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, model) -> Head:
        layer = getattr(model, "module", model).get_output_embeddings()  # through a DDP wrapper
        return cls(layer.weight, getattr(layer, "bias", None))

    def frozen_copy(self) -> Head:
        """The layer as it is now; cloned only if training can change it (not under a LoRA adapter)."""
        copy = lambda t: None if t is None else (t.detach().clone() if t.requires_grad else t.detach())
        return Head(copy(self.weight), copy(self.bias))

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


def _row_loss_and_grad(z: torch.Tensor, z_ref: torch.Tensor | None, targets: torch.Tensor | None, kind: str):
    logp = F.log_softmax(z, -1)
    p = logp.exp()
    if kind == "ce":
        loss = -logp.gather(1, targets[:, None]).squeeze(1)
        grad = p.scatter_add(1, targets[:, None], -torch.ones_like(loss)[:, None])
        return loss, grad
    logq = F.log_softmax(z_ref, -1)
    if kind == "kl":
        diff = logp - logq
        loss = (p * diff).sum(-1)
        return loss, p * (diff - loss[:, None])
    q = logq.exp()
    return (q * (logq - logp)).sum(-1), p - q


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, ref_h, ref_weight, ref_bias, targets, kind, chunk):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk):
                hc = h[s : s + chunk].to(weight.dtype)
                z = (hc @ weight.T).float()
                if bias is not None:
                    z = z + bias.float()
                z_ref = None
                if ref_h is not None:
                    z_ref = (ref_h[s : s + chunk].to(ref_weight.dtype) @ ref_weight.T).float()
                    if ref_bias is not None:
                        z_ref = z_ref + ref_bias.float()
                tc = None if targets is None else targets[s : s + chunk]
                loss, dz = _row_loss_and_grad(z, z_ref, tc, kind)
                total += loss.sum()
                if need_h:
                    grad_h[s : s + chunk] = (dz.to(weight.dtype) @ weight).to(h.dtype)
                if need_w:
                    grad_w.addmm_(dz.T, hc.float())
                if need_b:
                    grad_b += dz.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = lambda g, dtype=None: None if g is None else (g * grad_out).to(dtype or g.dtype)
        return (scale(grad_h), scale(grad_w, ctx.dtypes[0]), scale(grad_b, ctx.dtypes[1]),
                None, None, None, None, None, None)


@torch.no_grad()
def ref_argmax(ref_h: torch.Tensor, ref_head: Head, chunk: int | None = None) -> torch.Tensor:
    """The reference's most likely next token at each row, without all the logits at once."""
    chunk = chunk or chunk_rows(ref_head.weight.shape[0])
    return torch.cat([ref_head.logits(ref_h[s : s + chunk]).argmax(-1) for s in range(0, len(ref_h), chunk)])


def head_loss_sum(h: torch.Tensor, head: Head, kind: str, ref_h: torch.Tensor | None = None,
                  ref_head: Head | None = None, targets: torch.Tensor | None = None,
                  chunk: int | None = None) -> torch.Tensor:
    """Sum over rows of ``kind``'s loss at hidden states ``h`` [N, d] (see the module docstring).

    ``kl`` and ``reverse_kl`` compare with the reference's distribution at ``ref_h``; ``ce``
    scores ``targets`` [N]. Differentiable in ``h`` and the output layer.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    ref_w = ref_b = None
    if ref_head is not None:
        ref_w, ref_b = ref_head.weight.detach(), None if ref_head.bias is None else ref_head.bias.detach()
    ref_h = None if ref_h is None else ref_h.detach()
    chunk = chunk or chunk_rows(head.weight.shape[0])
    return _FusedHeadLoss.apply(h, head.weight, head.bias, ref_h, ref_w, ref_b, targets, kind, chunk)
