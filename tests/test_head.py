"""The chunked head loss against plain autograd on full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from palu.methods.head import KINDS, Head, Rows, head_loss, ref_argmax

N, D, V = 23, 16, 97


def plain_mean(h, w, b, ref_h, ref_w, ref_b, targets, kind):
    z = h @ w.T + (0 if b is None else b)
    if kind == "ce":
        return F.cross_entropy(z, targets)
    z_ref = ref_h @ ref_w.T + (0 if ref_b is None else ref_b)
    logp, logq = F.log_softmax(z, -1), F.log_softmax(z_ref, -1)
    if kind == "kl":
        return (logp.exp() * (logp - logq)).sum(-1).mean()
    return (logq.exp() * (logq - logp)).sum(-1).mean()


def layer(gen, bias, requires_grad=True):
    w = torch.randn(V, D, generator=gen, requires_grad=requires_grad)
    return w, torch.randn(V, generator=gen, requires_grad=requires_grad) if bias else None


def group(gen, kind, n=N):
    return {"h": torch.randn(n, D, generator=gen, requires_grad=True), "ref_h": torch.randn(n, D, generator=gen),
            "targets": torch.randint(0, V, (n,), generator=gen), "kind": kind}


def close(a, e):
    """Relative to the tensor's scale: entries near 0 carry fp32 noise."""
    return float((a - e).norm() / e.norm()) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_matches_autograd(kind, bias, chunk):
    gen = torch.Generator().manual_seed(KINDS.index(kind) * 100 + 10 * bias + chunk)
    (w, b), (ref_w, ref_b), g = layer(gen, bias), layer(gen, bias, requires_grad=False), group(gen, kind)
    params = [g["h"], w] + ([b] if bias else [])

    fast, means = head_loss(Head(w, b), [Rows(**g, scale=0.5)], Head(ref_w, ref_b), chunk=chunk)
    g_fast = torch.autograd.grad(2.5 * fast, params)  # an upstream gradient other than 1
    slow = plain_mean(g["h"], w, b, g["ref_h"], ref_w, ref_b, g["targets"], kind)
    g_slow = torch.autograd.grad(2.5 * 0.5 * slow, params)
    assert torch.allclose(fast, 0.5 * slow, rtol=1e-5, atol=1e-6) and torch.allclose(means[0], slow, rtol=1e-5)
    assert all(close(a, e) for a, e in zip(g_fast, g_slow))


@pytest.mark.parametrize("bias", [False, True])
def test_groups_in_one_pass_match_separate_terms(bias):
    """Several kinds, scales and sizes (one empty) share a pass, its buffers and one layer gradient."""
    gen = torch.Generator().manual_seed(7 + bias)
    (w, b), (ref_w, ref_b) = layer(gen, bias), layer(gen, bias, requires_grad=False)
    groups = [group(gen, "kl", 30), group(gen, "ce", 11), group(gen, "reverse_kl", 5), group(gen, "ce", 0)]
    scales = [0.3, 2.0, 1.5, 4.0]
    params = [g["h"] for g in groups] + [w] + ([b] if bias else [])

    fast, means = head_loss(Head(w, b), [Rows(**g, scale=s) for g, s in zip(groups, scales)], Head(ref_w, ref_b),
                            chunk=8)
    g_fast = torch.autograd.grad(fast, params, allow_unused=True)
    slow = [plain_mean(g["h"], w, b, g["ref_h"], ref_w, ref_b, g["targets"], g["kind"]) for g in groups[:3]]
    total = sum(s * m for s, m in zip(scales, slow))
    g_slow = torch.autograd.grad(total, params, allow_unused=True)
    assert torch.allclose(fast, total, rtol=1e-5) and torch.allclose(means, torch.stack([*slow, torch.tensor(0.0)]))
    assert g_fast[3].shape == (0, D) and g_slow[3] is None
    assert all(close(a, e) for a, e in zip(g_fast[:3] + g_fast[4:], g_slow[:3] + g_slow[4:]))


def test_two_backward_passes_accumulate():
    gen = torch.Generator().manual_seed(3)
    (w, b), (ref_w, _) = layer(gen, True), layer(gen, False, requires_grad=False)
    first, second = group(gen, "kl"), group(gen, "ce")
    for g in (first, second):
        head_loss(Head(w, b), [Rows(**g)], Head(ref_w))[0].backward()
    fast = [w.grad, b.grad]
    slow = torch.autograd.grad(sum(plain_mean(g["h"], w, b, g["ref_h"], ref_w, None, g["targets"], g["kind"])
                                   for g in (first, second)), [w, b])
    assert all(close(a, e) for a, e in zip(fast, slow))


def test_the_layer_gradient_is_the_forward_buffer_not_a_copy():
    gen = torch.Generator().manual_seed(4)
    w, _ = layer(gen, False)
    loss, _ = head_loss(Head(w), [Rows(**group(gen, "ce"), scale=0.25)])
    address = loss.grad_fn.grads[0].data_ptr()  # no reference kept: autograd may take it over
    (3.0 * loss).backward()
    assert w.grad.data_ptr() == address


def test_a_second_backward_is_refused():
    gen = torch.Generator().manual_seed(5)
    loss, _ = head_loss(Head(layer(gen, False)[0]), [Rows(**group(gen, "ce"))])
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_a_bfloat16_layer_gets_bfloat16_gradients_close_to_float32():
    gen = torch.Generator().manual_seed(6)
    w, b = (t.detach().bfloat16() for t in layer(gen, True))
    ref_w, g = torch.randn(V, D, generator=gen).bfloat16(), group(gen, "kl")
    w16, b16, w32, b32 = (t.clone().requires_grad_() for t in (w, b, w.float(), b.float()))
    loss, _ = head_loss(Head(w16, b16), [Rows(**g)], Head(ref_w))
    fast = torch.autograd.grad(loss, [g["h"], w16, b16])
    slow = plain_mean(g["h"], w32, b32, g["ref_h"], ref_w.float(), None, g["targets"], "kl")
    assert [t.dtype for t in fast] == [torch.float32, torch.bfloat16, torch.bfloat16]
    errors = [float((a.float() - e).norm() / e.norm()) for a, e in zip(fast, torch.autograd.grad(slow, [g["h"], w32, b32]))]
    assert max(errors) <= 3e-2, errors


def test_no_rows_give_a_zero_in_the_graph():
    h = torch.randn(0, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    loss, means = head_loss(Head(w), [Rows(h, "ce", targets=torch.zeros(0, dtype=torch.long))])
    loss.backward()
    assert float(loss.detach()) == 0.0 and means.tolist() == [0.0] and h.grad.shape == (0, D) and not w.grad.any()


def test_frozen_output_layer_gets_no_gradient():
    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8)
    loss, _ = head_loss(Head(w), [Rows(h, "ce", targets=torch.tensor([0, 1, 2, 3, 4]))], chunk=2)
    loss.backward()
    assert h.grad is not None and w.grad is None


@pytest.mark.parametrize("rows,ref,message", [(Rows(torch.zeros(1, 2), "ce"), False, "need targets"),
                                              (Rows(torch.zeros(1, 2), "kl", ref_h=torch.zeros(1, 2)), False,
                                               "need ref_h and ref_head"),
                                              (Rows(torch.zeros(1, 2), "mse"), True, "kind must be")])
def test_incomplete_rows_are_refused(rows, ref, message):
    head = Head(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=message):
        head_loss(head, [rows], head if ref else None)


def test_ref_argmax_is_chunk_independent():
    ref_h, w = torch.randn(9, 4), torch.randn(13, 4)
    assert torch.equal(ref_argmax(ref_h, Head(w), chunk=2), (ref_h @ w.T).argmax(-1))
