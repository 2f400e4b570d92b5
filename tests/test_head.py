"""The chunked head loss against plain autograd on full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from palu.methods.head import KINDS, Head, head_loss_sum, ref_argmax


def plain(h, w, b, ref_h, ref_w, ref_b, targets, kind):
    z = h @ w.T + (0 if b is None else b)
    if kind == "ce":
        return F.cross_entropy(z, targets, reduction="sum")
    z_ref = ref_h @ ref_w.T + (0 if ref_b is None else ref_b)
    logp, logq = F.log_softmax(z, -1), F.log_softmax(z_ref, -1)
    if kind == "kl":
        return (logp.exp() * (logp - logq)).sum()
    return (logq.exp() * (logq - logp)).sum()


@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "ce"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_matches_autograd(kind, bias, chunk):
    gen = torch.Generator().manual_seed(KINDS.index(kind) * 100 + 10 * bias + chunk)
    n, d, v = 23, 16, 97
    h = torch.randn(n, d, generator=gen, requires_grad=True)
    w = torch.randn(v, d, generator=gen, requires_grad=True)
    b = torch.randn(v, generator=gen, requires_grad=True) if bias else None
    ref_h, ref_w = torch.randn(n, d, generator=gen), torch.randn(v, d, generator=gen)
    ref_b = torch.randn(v, generator=gen) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    params = [h, w] + ([b] if bias else [])

    fast = head_loss_sum(h, Head(w, b), kind, ref_h, Head(ref_w, ref_b), targets, chunk=chunk)
    g_fast = torch.autograd.grad(2.5 * fast, params)
    slow = plain(h, w, b, ref_h, ref_w, ref_b, targets, kind)
    g_slow = torch.autograd.grad(2.5 * slow, params)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    for a, e in zip(g_fast, g_slow):  # relative to the gradient's scale: entries near 0 carry fp32 noise
        assert float((a - e).norm() / e.norm()) <= 1e-5


def test_frozen_output_layer_gets_no_gradient():
    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8)
    loss = head_loss_sum(h, Head(w), "ce", targets=torch.tensor([0, 1, 2, 3, 4]), chunk=2)
    loss.backward()
    assert h.grad is not None and w.grad is None


def test_ref_argmax_is_chunk_independent():
    ref_h, w = torch.randn(9, 4), torch.randn(13, 4)
    assert torch.equal(ref_argmax(ref_h, Head(w), chunk=2), (ref_h @ w.T).argmax(-1))
