"""The output layer as plain tensors, and row losses through it that never hold [rows, |V|] logits
for the backward pass.

The ordinary-token constraint and the retain term are means of per-row losses over full-vocabulary
distributions. One pass takes every such group of rows: each chunk of rows computes its logits, its
loss and the loss's gradient with respect to the logits in a few reused buffers, folds that into
the gradients of the hidden states and of the output layer, and drops the logits. Backward then
only scales the stored gradients. Peak memory is the output layer's gradient, once for all the
groups, and a chunk's buffers; no logits are recomputed.

Gradients with respect to the logits z (p = softmax(z), q = softmax(z_ref)):
    kl          KL(p || q)            p * ((log p - log q) - KL)
    reverse_kl  KL(q || p)            p - q
    ce          -log p[target]        p - onehot(target)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from palu.sharding import is_sharded, whole_output_layer

KINDS = ("kl", "reverse_kl", "ce")
CHUNK_ELEMENTS = 2**23  # logits per chunk: 32 MiB in float32; a pass reuses two such buffers (three for reverse_kl)


def chunk_rows(vocab: int) -> int:
    """Rows per chunk so one chunk's logits stay near CHUNK_ELEMENTS, whatever the vocabulary."""
    return max(16, CHUNK_ELEMENTS // vocab)


@dataclass
class Head:
    """An output layer as plain tensors: ``logits = h @ weight.T + bias``.

    ``gathered``: the tensors are a sharded layer gathered for the step, freed when it is sharded
    again (see :mod:`palu.sharding`).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    gathered: bool = field(default=False, repr=False)

    @classmethod
    def of(cls, model) -> Head:
        """The model's output layer, whole on this process even when training shards the weights."""
        model = getattr(model, "module", model)  # through a DDP wrapper
        layer = whole_output_layer(model)
        return cls(layer.weight, getattr(layer, "bias", None), gathered=is_sharded(model))

    def frozen_copy(self) -> Head:
        """The layer as it is now; cloned only if training can change it (not under a LoRA adapter)
        or sharding will free it."""
        copy = lambda t: None if t is None else (t.detach().clone() if t.requires_grad or self.gathered else t.detach())
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


@dataclass
class Rows:
    """A group of rows scored through the output layer: the mean over rows of ``kind``'s loss at hidden
    states ``h`` [N, d], counted ``scale`` times in :func:`head_loss`'s sum. ``kl`` and ``reverse_kl``
    compare with the reference's distribution at ``ref_h`` [N, d]; ``ce`` scores ``targets`` [N]."""

    h: torch.Tensor
    kind: str
    ref_h: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    scale: float = 1.0


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out = a @ b``, the product in ``b``'s dtype (the layer's), written into the preallocated ``out``."""
    if a.dtype == b.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    return out.copy_(a.to(b.dtype) @ b)


def _logits_into(out: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    out = _mm_into(out, h, weight.T)
    return out if bias is None else out.add_(bias)


def _loss_and_grad_(z: torch.Tensor, z_ref: torch.Tensor | None, spare: torch.Tensor | None,
                    targets: torch.Tensor | None, kind: str):
    """Per-row losses [r] from float32 logits ``z`` (and ``z_ref``), computed in place: the buffers are
    overwritten, and the one returned beside the losses holds the gradient with respect to ``z``.
    ``spare`` is scratch for ``reverse_kl``, which needs p, q and their log-ratio at once."""
    logp = torch.log_softmax(z, -1, out=z)
    if kind == "ce":
        loss = -logp.gather(1, targets[:, None]).squeeze(1)
        return loss, logp.exp_().scatter_add_(1, targets[:, None], z.new_full((len(z), 1), -1.0))
    logq = torch.log_softmax(z_ref, -1, out=z_ref)
    if kind == "kl":
        p_diff = torch.sub(logp, logq, out=logq)
        p = logp.exp_()
        loss = p_diff.mul_(p).sum(-1)
        return loss, p_diff.addcmul_(p, loss[:, None], value=-1)
    q = torch.exp(logq, out=spare)
    loss = logq.sub_(logp).mul_(q).sum(-1)
    return loss, logp.exp_().sub_(q)


class _FusedHeadLoss(torch.autograd.Function):
    """Row groups through one output layer in one pass over chunks of rows, gradients computed on the
    way into a single gradient of the layer; backward scales them in place and hands them over, so
    autograd keeps that buffer as the layer's gradient instead of copying it. Like the chunked
    ``torch.nn.functional.linear_cross_entropy``, it can be backpropagated once."""

    @staticmethod
    def forward(ctx, weight, bias, ref_weight, ref_bias, groups, chunk, *hs):
        need_w, need_b = ctx.needs_input_grad[:2]
        device, vocab = weight.device, weight.shape[0]
        rows = max(1, min(chunk, max(map(len, hs), default=0)))
        kinds = {kind for kind, *_ in groups}
        buffer = lambda needed: torch.empty(rows, vocab, dtype=torch.float32, device=device) if needed else None
        z, z_ref, spare = buffer(True), buffer(kinds - {"ce"}), buffer("reverse_kl" in kinds)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=device) if need_b else None
        grad_hs = [torch.empty_like(h) if need else None for h, need in zip(hs, ctx.needs_input_grad[6:])]
        means = torch.zeros(len(hs), dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False):
            for g, ((kind, scale, ref_h, targets), h, grad_h) in enumerate(zip(groups, hs, grad_hs)):
                coef = scale / max(len(h), 1)
                for s in range(0, len(h), rows):
                    hc = h[s : s + rows].to(weight.dtype)
                    r = len(hc)
                    zc = _logits_into(z[:r], hc, weight, bias)
                    zr = None if ref_h is None else _logits_into(z_ref[:r], ref_h[s : s + r], ref_weight, ref_bias)
                    tc = None if targets is None else targets[s : s + r]
                    loss, dz = _loss_and_grad_(zc, zr, None if spare is None else spare[:r], tc, kind)
                    means[g] += loss.sum()
                    if grad_h is not None:
                        _mm_into(grad_h[s : s + r], dz, weight).mul_(coef)
                    if grad_w is not None:
                        grad_w.addmm_(dz.T, hc.float(), alpha=coef)
                    if grad_b is not None:
                        grad_b.add_(dz.sum(0), alpha=coef)
                means[g] /= max(len(h), 1)
        ctx.grads = (grad_w, grad_b, grad_hs)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(means)
        return means @ means.new_tensor([scale for _, scale, *_ in groups]), means

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, _grad_means):
        if ctx.grads is None:
            raise RuntimeError("the fused head loss can be backpropagated only once (no retain_graph)")
        (grad_w, grad_b, grad_hs), ctx.grads = ctx.grads, None
        scale = lambda g, dtype=None: None if g is None else g.mul_(grad_total).to(dtype or g.dtype)
        return (scale(grad_w, ctx.dtypes[0]), scale(grad_b, ctx.dtypes[1]), None, None, None, None,
                *map(scale, grad_hs))


@torch.no_grad()
def ref_argmax(ref_h: torch.Tensor, ref_head: Head, chunk: int | None = None) -> torch.Tensor:
    """The reference's most likely next token at each row, without all the logits at once."""
    chunk = chunk or chunk_rows(ref_head.weight.shape[0])
    return torch.cat([ref_head.logits(ref_h[s : s + chunk]).argmax(-1) for s in range(0, len(ref_h), chunk)])


def head_loss(head: Head, groups: list[Rows], ref_head: Head | None = None,
              chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_g scale_g * mean_g`` over the row ``groups`` (see the module docstring), differentiable in
    their hidden states and the output layer, and the means [G] (detached) to log.

    The groups share one pass: one set of chunk buffers and one gradient of the output layer, however
    many terms of the objective go through it. An empty group's mean is 0.
    """
    for rows in groups:
        if rows.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {rows.kind!r}")
        need = "targets" if rows.kind == "ce" else "ref_h"
        if getattr(rows, need) is None or (need == "ref_h" and ref_head is None):
            raise ValueError(f"{rows.kind!r} rows need {need}" + ("" if need == "targets" else " and ref_head"))
    detach = lambda t: None if t is None else t.detach()
    ref_w, ref_b = (None, None) if ref_head is None else (ref_head.weight.detach(), detach(ref_head.bias))
    plan = tuple((rows.kind, rows.scale, None, rows.targets) if rows.kind == "ce" else
                 (rows.kind, rows.scale, rows.ref_h.detach(), None) for rows in groups)
    chunk = chunk or chunk_rows(head.weight.shape[0])
    return _FusedHeadLoss.apply(head.weight, head.bias, ref_w, ref_b, plan, chunk, *(rows.h for rows in groups))
