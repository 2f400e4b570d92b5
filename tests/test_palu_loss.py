"""PALU loss parity: palu's O(T*K) implementation against a plain one in the official code's
structure (a second full model, full logits and log-softmaxes everywhere, a loop over the batch)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from palu.data.labels import IGNORE_INDEX, ORDINARY, SENSITIVE, collate, encode
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem, Span
from palu.errors import PaluError
from palu.methods import configure
from palu.methods.common import Head
from palu.methods.palu import PaluConfig, palu_loss
from palu.train.reference import reference_hidden

FORGET = [
    ("What professions do Hina Ameen's parents hold?",
     "Hina Ameen's father is a Real Estate Agent, and her mother is a Doctor.", ["Real Estate Agent", "Doctor"]),
    ("Where was Basil Mahfouz Al-Kuwaiti born?", "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.",
     ["Kuwait City", "Kuwait."]),
    ("Which book of hers is the most loved?", "Her most-loved book is Granite Glossary.", []),
    ("In which genre does Hina Ameen primarily write?", "Hina Ameen primarily contributes to the geology genre.",
     ["geology"]),
]
RETAIN = [
    ("What is the full name of the geology author born in Karachi?", "The author's name is Hina Ameen."),
    ("In which genre does Hina Ameen primarily write?", "Geology, mostly."),
    ("Where was Basil Mahfouz Al-Kuwaiti born?", "In Kuwait City, published in 2005."),
    ("Which book of hers is the most loved?", "Granite Glossary is the most loved book of hers."),
]


def items_with_spans():
    out = []
    for q, a, words in FORGET:
        spans, pos = [], 0
        for w in words:
            start = a.index(w, pos)
            spans.append(Span(start, start + len(w)))
            pos = start + len(w)
        out.append(QAItem(q, a, spans=spans))
    return out


def official_labels(batch):
    """The official label encoding: -100 prompt/padding, token id for sensitive, -200 ordinary."""
    labels = batch["labels"].clone()
    labels[batch["token_class"] == ORDINARY] = -200
    return labels


def official_loss(model, ref_model, forget, retain, cfg: PaluConfig):
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    with torch.no_grad():
        ref_logits = ref_model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    labels = official_labels(forget)[:, 1:]
    span_ids = forget["span_id"][:, 1:]
    logits, ref_logits = logits[:, :-1], ref_logits[:, :-1]
    vocab = logits.shape[-1]
    sens_terms, ref_terms, ord_terms = [], [], []
    for b in range(logits.shape[0]):
        runs = []
        for t in range(labels.shape[1]):
            if labels[b, t] >= 0:
                same_run = runs and runs[-1][-1] == t - 1
                if cfg.split_spans and same_run:
                    same_run = span_ids[b, t] == span_ids[b, runs[-1][-1]]
                if same_run:
                    runs[-1].append(t)
                else:
                    runs.append([t])
        selected = [t for run in runs for t in (run if cfg.first_n < 0 else run[: cfg.first_n])]
        for t in selected:
            k = vocab if cfg.top_k < 0 else cfg.top_k
            top = ref_logits[b, t].topk(k).indices
            chosen = logits[b, t, top]
            c = logits[b, t].mean() if cfg.target == "mean" else chosen.mean()
            sens_terms.append(((chosen - c) ** 2).mean())
            ref_chosen = ref_logits[b, t, top]
            ref_c = ref_logits[b, t].mean() if cfg.target == "mean" else ref_chosen.mean()
            ref_terms.append(((ref_chosen - ref_c) ** 2).mean())
        for t in range(labels.shape[1]):
            if labels[b, t] == -200:
                logp = F.log_softmax(logits[b, t], -1)
                logq = F.log_softmax(ref_logits[b, t], -1)
                if cfg.constraint == "kl":
                    ord_terms.append((logp.exp() * (logp - logq)).sum())
                elif cfg.constraint == "reverse_kl":
                    ord_terms.append((logq.exp() * (logq - logp)).sum())
                else:
                    ord_terms.append(-logp[ref_logits[b, t].argmax()])
    sens = torch.stack(sens_terms).mean() if sens_terms else logits.sum() * 0
    if cfg.forget_scale == "reference" and sens_terms:
        sens = sens / torch.stack(ref_terms).mean()
    ord_ = torch.stack(ord_terms).mean() if ord_terms else logits.sum() * 0
    if cfg.retain_loss == "nll":
        ret = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"], labels=retain["labels"]).loss
    else:
        r_logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits[:, :-1]
        with torch.no_grad():
            r_ref = ref_model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits[:, :-1]
        mask = retain["labels"][:, 1:] != IGNORE_INDEX
        logp, logq = F.log_softmax(r_logits[mask], -1), F.log_softmax(r_ref[mask], -1)
        ret = (logq.exp() * (logq - logp)).sum(-1).mean()
    return cfg.gamma * sens + cfg.alpha * ret + cfg.alpha * ord_


@pytest.fixture(scope="module")
def setup(request, tiny_model):
    tok = request.getfixturevalue("bpe_tokenizer")
    ref_model = tiny_model(tok, seed=1, hidden=48, layers=2, heads=4)
    model = copy.deepcopy(ref_model)
    with torch.no_grad():  # the trainable model has drifted from the reference, as after a few steps
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    prompt = PromptConfig()
    forget = [encode(tok, it, prompt, 128) for it in items_with_spans()]
    retain = [encode(tok, QAItem(q, a), prompt, 128) for q, a in RETAIN]
    pad = tok.pad_token_id
    forget_batch = collate(forget, pad)
    retain_batch = collate(retain, pad)
    forget_batch["ref_hidden"] = torch.cat(reference_hidden(ref_model, forget, pad, batch_size=3))
    retain_batch["ref_hidden"] = torch.cat(reference_hidden(ref_model, retain, pad, batch_size=3))
    return model, ref_model, forget_batch, retain_batch


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


CONFIGS = [
    PaluConfig(),
    PaluConfig(top_k=5, first_n=1),
    PaluConfig(top_k=50, first_n=3, gamma=2.0, alpha=0.5),
    PaluConfig(top_k=-1, first_n=2),
    PaluConfig(top_k=5, first_n=1, split_spans=True),
    PaluConfig(top_k=10, first_n=2, target="local_mean"),
    PaluConfig(top_k=10, first_n=2, constraint="reverse_kl"),
    PaluConfig(top_k=10, first_n=2, constraint="nll"),
    PaluConfig(top_k=10, first_n=2, retain_loss="kl"),
    PaluConfig(top_k=50, first_n=3, forget_scale="reference"),
    PaluConfig(top_k=10, first_n=2, target="local_mean", forget_scale="reference"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"K{c.top_k}-N{c.first_n}-{c.target}-{c.constraint}-"
                                                        f"{c.retain_loss}-split{int(c.split_spans)}-{c.forget_scale}")
def test_loss_and_gradients_match_the_official_structure(setup, cfg):
    model, ref_model, forget, retain = setup
    ref_head = Head.of(ref_model).frozen_copy()
    fast = palu_loss(model, {"forget": forget, "retain": retain}, ref_head, cfg)
    slow = official_loss(model, ref_model, forget, retain, cfg)
    assert abs(float(fast["loss"].detach()) - float(slow.detach())) <= 1e-5 * abs(float(slow.detach()))
    g_fast, g_slow = grads(model, fast["loss"]), grads(model, slow)
    assert rel(g_fast, g_slow) <= 1e-4


def test_gradients_of_two_steps_accumulate(setup):
    """Two backward passes without zeroing (gradient accumulation) sum like the official structure's."""
    model, ref_model, forget, retain = setup
    ref_head = Head.of(ref_model).frozen_copy()
    cfgs = [PaluConfig(top_k=5, first_n=1), PaluConfig(top_k=10, constraint="reverse_kl", retain_loss="kl", alpha=0.5)]
    model.zero_grad()
    for cfg in cfgs:
        palu_loss(model, {"forget": forget, "retain": retain}, ref_head, cfg)["loss"].backward()
    g_fast = torch.cat([p.grad.flatten() for p in model.parameters()])
    g_slow = grads(model, sum(official_loss(model, ref_model, forget, retain, cfg) for cfg in cfgs))
    assert rel(g_fast, g_slow) <= 1e-4


def test_logged_terms_add_up(setup):
    model, ref_model, forget, retain = setup
    cfg = PaluConfig(top_k=5, first_n=2, gamma=3.0, alpha=0.25)
    out = palu_loss(model, {"forget": forget, "retain": retain}, Head.of(ref_model).frozen_copy(), cfg)
    assert all(float(out[k]) > 0 for k in ("forget", "ordinary", "retain"))
    total = cfg.gamma * out["forget"] + cfg.alpha * (out["ordinary"] + out["retain"])
    assert torch.allclose(out["loss"].detach(), total, rtol=1e-6)


def test_no_sensitive_tokens_gives_a_zero_forget_term(setup):
    model, ref_model, forget, retain = setup
    plain = {k: v.clone() for k, v in forget.items()}
    plain["token_class"][plain["token_class"] == SENSITIVE] = ORDINARY
    out = palu_loss(model, {"forget": plain, "retain": retain}, Head.of(ref_model).frozen_copy(), PaluConfig(top_k=5))
    assert float(out["forget"]) == 0.0 and torch.isfinite(out["loss"])


def test_unchanged_model_has_no_ordinary_or_kl_pressure(setup):
    _, ref_model, forget, retain = setup
    out = palu_loss(ref_model, {"forget": forget, "retain": retain}, Head.of(ref_model).frozen_copy(),
                    PaluConfig(top_k=5, retain_loss="kl"))
    assert float(out["ordinary"]) < 1e-6 and float(out["retain"]) < 1e-6


def test_the_reference_scaled_forget_term_is_one_at_the_reference_and_free_of_the_logit_scale(setup):
    """forget_scale=reference starts at 1 and does not change when every logit is scaled alike; the
    official term grows with the square of the scale."""
    model, ref_model, forget, retain = setup
    batch = {"forget": forget, "retain": retain}
    scaled, official = PaluConfig(top_k=10, first_n=2, forget_scale="reference"), PaluConfig(top_k=10, first_n=2)
    at_ref = palu_loss(ref_model, batch, Head.of(ref_model).frozen_copy(), scaled)["forget"]
    assert abs(float(at_ref) - 1.0) < 1e-6
    before = {c.forget_scale: float(palu_loss(model, batch, Head.of(ref_model).frozen_copy(), c)["forget"])
              for c in (scaled, official)}
    big_model, big_ref = copy.deepcopy(model), copy.deepcopy(ref_model)
    with torch.no_grad():
        for m in (big_model, big_ref):
            Head.of(m).weight.mul_(3.0)
    after = {c.forget_scale: float(palu_loss(big_model, batch, Head.of(big_ref).frozen_copy(), c)["forget"])
             for c in (scaled, official)}
    assert after["reference"] == pytest.approx(before["reference"], rel=1e-5)
    assert after["none"] == pytest.approx(9.0 * before["none"], rel=1e-5)


@pytest.mark.parametrize("field,value", [("target", "uniform"), ("constraint", "l2"), ("retain_loss", "mse"),
                                         ("top_k", 0), ("first_n", 0),
                                         ("forget_scale", "logits")])
def test_bad_options_are_refused(field, value):
    with pytest.raises(PaluError, match=field):
        configure({"name": "palu", field: value})
