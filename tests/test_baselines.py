"""Baselines: each loss against a plain re-implementation of its formula in baselines.md (a second,
full reference model, full logits, per-sequence masks), and a few real steps through ``unlearn``."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from palu.data.labels import IGNORE_INDEX, ORDINARY, SENSITIVE, collate, encode
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.data.synthetic import synthetic_splits
from palu.errors import PaluError
from palu.methods import METHODS, configure, get_method
from palu.methods.common import Head
from palu.methods.ga import GAConfig
from palu.methods.graddiff import GradDiffConfig
from palu.methods.idkdpo import REFUSALS, IdkDPOConfig, refusal_items
from palu.methods.npo import NPOConfig
from palu.methods.pdu import PDUConfig
from palu.methods.rmu import RMUConfig, resolve_layer, rmu_prepare
from palu.methods.simnpo import SimNPOConfig
from palu.methods.tpo import TPOConfig
from palu.methods.wga import WGAConfig
from palu.train.loop import TrainConfig
from palu.train.reference import reference_hidden
from palu.train.unlearn import unlearn

MAX_LEN = 160
BASELINES = {"ga", "graddiff", "npo", "simnpo", "idkdpo", "rmu", "pdu", "tpo", "wga"}


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n_authors=3, forget_authors=1, holdout_authors=1)


# --- plain re-implementations ---------------------------------------------------------------


def logits_of(m, b):
    return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()


def seq_logprob(m, b):
    """pi(y): summed log-probs of the answer tokens, one sequence at a time."""
    logp = F.log_softmax(logits_of(m, b), -1)
    labels = b["labels"][:, 1:]
    out = []
    for row in range(labels.shape[0]):
        mask = labels[row] != IGNORE_INDEX
        out.append(logp[row][mask].gather(-1, labels[row][mask][:, None]).sum())
    return torch.stack(out)


def nll(m, b):
    return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def retain_term(model, ref_model, retain, kind):
    if kind == "nll":
        return nll(model, retain)
    mask = retain["labels"][:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(logits_of(model, retain)[mask], -1)
    with torch.no_grad():
        logq = F.log_softmax(logits_of(ref_model, retain)[mask], -1)
    return (logq.exp() * (logq - logp)).sum(-1).mean()


def npo_form(x, beta):
    return -(2 / beta) * F.logsigmoid(beta * x).mean()


def plain_loss(name, cfg, model, ref_model, batch, state):
    """``(L_f, total)`` by the formula of ``name`` in baselines.md."""
    forget, retain = batch["forget"], batch["retain"]
    if name == "rmu":
        return plain_rmu(cfg, model, ref_model, forget, retain, state)
    if name == "ga":
        return -nll(model, forget), -nll(model, forget)
    ret = retain_term(model, ref_model, retain, cfg.retain_loss)
    if name == "tpo":
        lf, ordinary = plain_tpo(cfg, model, ref_model, forget)
        return lf, lf + ordinary + ret
    if name == "pdu":
        z = logits_of(model, forget)[forget["labels"][:, 1:] != IGNORE_INDEX]
        flat = ((z.max(-1).values - z.mean(-1)) ** 2).mean()
        return flat, cfg.lambda_f * flat + state["lambda_r"] * (ret - cfg.eps)
    if name == "graddiff":
        lf = -nll(model, forget)
    elif name == "npo":
        with torch.no_grad():
            ref = seq_logprob(ref_model, forget)
        lf = npo_form(-(seq_logprob(model, forget) - ref), cfg.beta)
    elif name == "simnpo":
        lengths = (forget["labels"] != IGNORE_INDEX).sum(1)
        lf = npo_form(-seq_logprob(model, forget) / lengths - cfg.delta, cfg.beta)
    elif name == "idkdpo":
        idk = batch["idk"]
        with torch.no_grad():
            ref_win, ref_lose = seq_logprob(ref_model, idk), seq_logprob(ref_model, forget)
        lf = npo_form((seq_logprob(model, idk) - ref_win) - (seq_logprob(model, forget) - ref_lose), cfg.beta)
    elif name == "wga":
        labels = forget["labels"][:, 1:]
        ce = F.cross_entropy(logits_of(model, forget).flatten(0, 1), labels.flatten(), reduction="none")
        keep = labels.flatten() != IGNORE_INDEX
        weight = (torch.exp(-ce).detach() ** cfg.beta)[keep]
        lf = -(weight * ce[keep]).mean()
    else:
        raise AssertionError(name)
    return lf, cfg.gamma * lf + cfg.alpha * ret


def plain_tpo(cfg, model, ref_model, forget):
    logits = logits_of(model, forget)
    with torch.no_grad():
        ref_logits = logits_of(ref_model, forget)
    labels, cls = forget["labels"][:, 1:], forget["token_class"][:, 1:]
    terms = []
    for row in range(labels.shape[0]):
        sens = (cls[row] == SENSITIVE).nonzero()[:, 0]
        if len(sens) == 0:
            continue
        z = torch.stack([logits[row, t, labels[row, t]] for t in sens]).mean()
        z_ref = torch.stack([ref_logits[row, t, labels[row, t]] for t in sens]).mean()
        terms.append(-(2 / cfg.beta) * F.logsigmoid(cfg.beta * (z_ref - z)))
    ordinary = cls == ORDINARY
    return torch.stack(terms).mean(), F.cross_entropy(logits[ordinary], labels[ordinary])


def plain_rmu(cfg, model, ref_model, forget, retain, state):
    layer, target = state["layer"], cfg.steering_coeff * state["direction"]

    def acts(m, b):
        return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 output_hidden_states=True).hidden_states[layer + 1][:, :-1]

    def mse(h, goal, b):  # the answer positions, as every palu loss: those predicting answer tokens
        mask = b["labels"][:, 1:] != IGNORE_INDEX
        return torch.stack([((h[r][mask[r]] - (goal if goal.dim() == 1 else goal[r][mask[r]])) ** 2).mean()
                            for r in range(h.shape[0])]).mean()

    with torch.no_grad():
        ref_retain = acts(ref_model, retain)
    lf = mse(acts(model, forget), target, forget)
    return lf, lf + cfg.alpha * mse(acts(model, retain), ref_retain, retain)


# --- parity ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(bpe_tokenizer, splits, tiny_model):
    tok = bpe_tokenizer
    ref_model = tiny_model(tok, seed=1, hidden=48, layers=2, heads=4)
    model = copy.deepcopy(ref_model)
    with torch.no_grad():  # the trainable model has drifted from the reference, as after a few steps
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    forget_items = splits.forget[:3] + [QAItem(splits.forget[3].question, splits.forget[3].answer)]  # one unmarked
    pad, prompt = tok.pad_token_id, PromptConfig()

    def side(items, **indices):
        enc = [encode(tok, it, prompt, MAX_LEN) for it in items]
        batch = collate(enc, pad)
        for key, index in indices.items():
            batch[key] = torch.cat(reference_hidden(ref_model, enc, pad, batch_size=3, index=index))
        return batch, enc

    forget, _ = side(forget_items, ref_hidden=-1)
    retain, retain_enc = side(splits.retain[:4], ref_hidden=-1)
    idk, _ = side(refusal_items(IdkDPOConfig(), forget_items, seed=0), ref_hidden=-1)
    layers = {i: torch.cat(reference_hidden(ref_model, retain_enc, pad, index=i + 1)) for i in (0, 1)}
    return model, ref_model, {"forget": forget, "retain": retain, "idk": idk}, layers, forget_items


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# Cases with alpha = 0 check the forget term's gradient alone (the retain term can dwarf it).
CASES = [
    ("ga", GAConfig()),
    ("graddiff", GradDiffConfig(gamma=2.0, alpha=0.5)),
    ("graddiff", GradDiffConfig(retain_loss="kl")),
    ("npo", NPOConfig()),
    ("npo", NPOConfig(beta=0.5, alpha=0.0)),
    ("npo", NPOConfig(gamma=0.5, alpha=2.0, retain_loss="kl")),
    ("simnpo", SimNPOConfig()),
    ("simnpo", SimNPOConfig(delta=6.0, beta=1.0, gamma=1.0, alpha=0.0)),  # ln |V| = 6: away from saturation
    ("idkdpo", IdkDPOConfig()),
    ("idkdpo", IdkDPOConfig(beta=1.0, alpha=0.0)),
    ("idkdpo", IdkDPOConfig(retain_loss="kl")),
    ("wga", WGAConfig(alpha=0.0)),
    ("wga", WGAConfig(beta=2.5, gamma=0.5)),
    ("pdu", PDUConfig(lambda_f=2.0, lambda_r=0.5, eta=0.1, eps=1.0)),
    ("pdu", PDUConfig(lambda_r=0.0, retain_loss="kl")),
    ("tpo", TPOConfig()),
    ("tpo", TPOConfig(beta=0.19, retain_loss="kl")),
    ("rmu", RMUConfig(layer=0, steering_coeff=5.0, alpha=0.0)),
    ("rmu", RMUConfig(layer=0, alpha=2.0)),
    ("rmu", RMUConfig()),
]


def close(a, b, rel_tol=1e-5, abs_tol=0.0):
    a, b = float(a.detach()), float(b.detach())
    return abs(a - b) <= rel_tol * abs(b) + abs_tol


@pytest.mark.parametrize("name,cfg", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_loss_and_gradients_match_the_formula(setup, name, cfg):
    model, ref_model, batch, layers, forget_items = setup
    spec = get_method(name)
    state = spec.prepare(cfg, model, forget_items, 0).state if spec.prepare else {}
    batch = dict(batch)
    if name == "rmu":
        batch["retain"] = {**batch["retain"], "ref_layer_hidden": layers[state["layer"]]}
    plain_state = {"lambda_r": cfg.lambda_r} if name == "pdu" else state
    fast = spec.loss(model, batch, Head.of(ref_model).frozen_copy(), cfg, **state)
    slow_forget, slow = plain_loss(name, cfg, model, ref_model, batch, plain_state)
    assert close(fast["loss"], slow)
    assert close(fast["forget"], slow_forget, abs_tol=1e-9)
    assert rel(grads(model, fast["loss"]), grads(model, slow)) <= 1e-4
    assert all(torch.isfinite(v) for v in fast.values())


def test_pdu_multiplier_takes_one_dual_ascent_step_per_update_with_the_mean_retain_loss(setup):
    """The micro-batches of one update use the same multiplier; the update steps it by the mean of their
    retain losses, as one larger batch would."""
    model, ref_model, batch, _, items = setup
    cfg = PDUConfig(lambda_r=0.2, eta=0.5, eps=3.0)
    multiplier = get_method("pdu").prepare(cfg, model, items, 0).state["multiplier"]
    seen = []
    for micro_batches in (1, 2, 1):
        before, losses = multiplier.value, []
        for _ in range(micro_batches):
            out = get_method("pdu").loss(model, batch, Head.of(ref_model).frozen_copy(), cfg, multiplier=multiplier)
            assert float(out["lambda_r"]) == pytest.approx(before)
            losses.append(float(out["retain"]))
        multiplier.after_update()
        seen.append(multiplier.value)
        assert multiplier.value == pytest.approx(max(0.0, before + cfg.eta * (sum(losses) / len(losses) - cfg.eps)))
    assert len(set(seen)) == 3


def test_tpo_without_sensitive_tokens_has_a_zero_forget_term(setup):
    model, ref_model, batch, _, _ = setup
    forget = {k: v.clone() for k, v in batch["forget"].items()}
    forget["token_class"][forget["token_class"] == SENSITIVE] = ORDINARY
    out = get_method("tpo").loss(model, {**batch, "forget": forget}, Head.of(ref_model).frozen_copy(), TPOConfig())
    assert float(out["forget"]) == 0.0 and torch.isfinite(out["loss"])


# --- training through the shared loop --------------------------------------------------------


TRAIN = {
    "ga": GAConfig(),
    "graddiff": GradDiffConfig(),
    "npo": NPOConfig(retain_loss="kl"),
    "simnpo": SimNPOConfig(),
    "idkdpo": IdkDPOConfig(),
    "wga": WGAConfig(),
    "pdu": PDUConfig(eps=1.0),
    "tpo": TPOConfig(),
    "rmu": RMUConfig(trainable=[r"layers\.0\.mlp\.down_proj"]),
}


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_training_steps_run_log_finite_terms_and_move_the_model(bpe_tokenizer, tiny_model, splits, name, tmp_path):
    tok = bpe_tokenizer
    model = tiny_model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=4, warmup_epochs=0, max_length=MAX_LEN, bf16="false")
    history = unlearn(model, tok, splits.forget[:8], splits.retain[:8], name, TRAIN[name], cfg, PromptConfig(),
                      tmp_path, progress=False)
    terms = set(history[0]) - {"epoch", "lr"}
    assert {"loss", "forget"} <= terms
    assert all(torch.isfinite(torch.tensor(h[t])) for h in history for t in terms)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    if name == "rmu":
        assert changed == {"model.layers.0.mlp.down_proj.weight"}
        assert all(p.requires_grad for p in model.parameters())  # the freeze lasts for the run only
    else:
        assert changed
    if name == "pdu":
        assert "lambda_r" in terms


# --- options and registry --------------------------------------------------------------------


def test_unknown_method_lists_every_method():
    assert BASELINES | {"palu"} == set(METHODS)
    with pytest.raises(PaluError) as err:
        get_method("forgetall")
    assert all(name in str(err.value) for name in METHODS)


def test_defaults_follow_the_baselines_table():
    assert NPOConfig().beta == 0.1
    simnpo = SimNPOConfig()
    assert (simnpo.delta, simnpo.beta, simnpo.gamma) == (0.0, 4.5, 0.125)
    deep = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=32))
    shallow = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=2))
    assert resolve_layer(RMUConfig(), deep) == 7 and resolve_layer(RMUConfig(), shallow) == 1


def test_method_options_build_from_plain_values():
    cfg = configure({"name": "rmu", "trainable": r"layers\.0\.mlp", "layer": 0})
    assert cfg.name == "rmu" and cfg.trainable == [r"layers\.0\.mlp"] and cfg.layer == 0
    with pytest.raises(PaluError, match="retain_loss"):
        configure({"name": "npo", "retain_loss": "mse"})


def test_rmu_refuses_a_missing_layer_or_parameter(bpe_tokenizer, tiny_model):
    model = tiny_model(vocab_size=len(bpe_tokenizer), layers=2)
    with pytest.raises(PaluError, match="out of range.*2 layers"):
        rmu_prepare(RMUConfig(layer=7), model, [], 0)
    with pytest.raises(PaluError, match="matches no parameter"):
        rmu_prepare(RMUConfig(trainable=["mlp\\.nothing"]), model, [], 0)
    with pytest.raises(PaluError, match="regular expression"):
        RMUConfig(trainable=["layers.("])
    a, b = rmu_prepare(RMUConfig(), model, [], 3).state, rmu_prepare(RMUConfig(), model, [], 3).state
    assert torch.equal(a["direction"], b["direction"]) and float(a["direction"].norm()) == pytest.approx(1.0)


def test_refusals_are_seeded_and_can_come_from_a_file(splits, tmp_path):
    items = splits.forget
    first, again = refusal_items(IdkDPOConfig(), items, 0), refusal_items(IdkDPOConfig(), items, 0)
    assert [i.answer for i in first] == [i.answer for i in again]
    assert [i.question for i in first] == [i.question for i in items]
    assert {i.answer for i in first} <= set(REFUSALS)
    assert [i.answer for i in first] != [i.answer for i in refusal_items(IdkDPOConfig(), items, 1)]
    path = tmp_path / "idk.jsonl"
    path.write_text('"No idea."\n\n"Cannot say."\n')
    from_file = refusal_items(IdkDPOConfig(idk_file=str(path)), items, 0)
    assert {i.answer for i in from_file} == {"No idea.", "Cannot say."}


def test_pdu_multiplier_survives_a_resume(bpe_tokenizer, tiny_model, splits, tmp_path):
    """The dual variable is training state: an interrupted run resumes with the value it had."""
    tok = bpe_tokenizer
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=4, warmup_epochs=0, max_length=MAX_LEN, bf16="false")
    args = (tok, splits.forget[:8], splits.retain[:8], "pdu", PDUConfig(eps=0.5), cfg, PromptConfig())
    whole = unlearn(tiny_model(tok), *args,
                    tmp_path / "a", progress=False)

    def stop(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unlearn(tiny_model(tok), *args, tmp_path / "b",
                on_epoch_end=stop, progress=False)
    resumed = unlearn(tiny_model(tok), *args,
                      tmp_path / "b", resume=True, progress=False)
    assert whole[-1]["lambda_r"] != PDUConfig().lambda_r
    assert resumed[-1]["lambda_r"] == pytest.approx(whole[-1]["lambda_r"], rel=1e-5)
