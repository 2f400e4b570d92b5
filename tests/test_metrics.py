"""Core TOFU metrics: pure aggregations against slow obvious versions, and model scoring on a tiny Llama."""

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import greedy_loop
from scipy.stats import ks_2samp

from palu.data.labels import IGNORE_INDEX, collate, encode
from palu.data.prompts import PromptConfig, prompt_ids
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.eval.core import summary
from palu.eval.metrics import (
    METRICS,
    MODEL_UTILITY_PARTS,
    OPEN_UNLEARNING_EPS,
    MetricSpec,
    aggregate_forget_truth_ratio,
    aggregate_retain_truth_ratio,
    answer_prob,
    extraction_strength,
    forget_quality,
    get_metric,
    mean_result,
    mia_auc,
    mia_result,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    normalised_prob,
    privleak,
    register,
    result,
    rouge_l,
    truth_ratio,
)
from palu.eval.scoring import generate, multi_answer_nll, nll_and_accuracy, score_answers
from palu.eval.tofu import PARTS, evaluate_tofu, parts_for
from palu.io import read_json, write_json
from palu.models import train_bpe_tokenizer

CORE = ["forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_quality", "exact_memorization",
        "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_truth_ratio"]

# --- pure metrics ------------------------------------------------------------------------------


def test_registry_has_core_metrics_with_directions():
    assert set(CORE) <= set(METRICS)
    assert not METRICS["forget_Q_A_Prob"].higher_is_better
    assert not METRICS["exact_memorization"].higher_is_better
    assert METRICS["forget_quality"].higher_is_better
    assert METRICS["retain_Q_A_ROUGE"].higher_is_better


def test_registry_refuses_duplicates_and_lists_names():
    with pytest.raises(PaluError, match="already registered"):
        register(MetricSpec("forget_quality", True, "again"))
    with pytest.raises(PaluError, match="forget_quality"):
        get_metric("no_such_metric")


def test_result_shape_is_plain_json():
    res = result("forget_truth_ratio", np.float64(0.25), np.array([0.5, 2.0]))
    assert res == {"agg_value": 0.25, "value_by_index": {"0": 0.5, "1": 2.0}, "higher_is_better": True}
    assert json.loads(json.dumps(res)) == res
    assert result("forget_quality", None)["agg_value"] is None


def _random_nlls(rng, n):
    correct = [rng.uniform(0.1, 5.0) for _ in range(n)]
    wrong = [[rng.uniform(0.1, 5.0) for _ in range(rng.randint(1, 5))] for _ in range(n)]
    return correct, wrong


def test_truth_ratio_and_aggregates_match_slow_versions():
    rng = random.Random(0)
    correct, wrong = _random_nlls(rng, 50)
    slow_tr = []
    for lc, lw in zip(correct, wrong):
        p_correct = math.exp(-lc)
        p_wrong = math.exp(-sum(lw) / len(lw))
        slow_tr.append(p_wrong / p_correct)
    tr = truth_ratio(correct, wrong)
    assert np.allclose(tr, slow_tr, rtol=1e-12)
    assert aggregate_forget_truth_ratio(tr) == pytest.approx(sum(min(t, 1 / t) for t in slow_tr) / len(slow_tr))
    assert aggregate_retain_truth_ratio(tr) == pytest.approx(sum(max(0.0, 1 - t) for t in slow_tr) / len(slow_tr))
    assert aggregate_forget_truth_ratio([]) is None
    assert np.allclose(answer_prob(correct), [math.exp(-x) for x in correct])


def test_truth_ratio_refuses_items_without_wrong_answers():
    with pytest.raises(PaluError):
        truth_ratio([1.0, 2.0], [[1.0], []])


def test_forget_quality_is_ks_pvalue_or_none():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=40), rng.lognormal(size=35)
    assert forget_quality(a, b) == ks_2samp(a, b).pvalue
    assert forget_quality(a, None) is None
    assert forget_quality(a, []) is None


@pytest.mark.parametrize("k, pvalue", [(11, 0.9238), (12, 0.8655), (13, 0.7934), (14, 0.7126), (15, 0.6284),
                                       (16, 0.5453), (37, 0.0021)])
def test_forget_quality_discrete_values_for_200_items(k, pvalue):
    a = np.arange(200, dtype=float)
    b = a + k - 0.5  # no ties; the ECDFs differ by exactly k/200 between the two ramps
    assert ks_2samp(a, b).statistic == pytest.approx(k / 200)
    assert forget_quality(a, b) == pytest.approx(pvalue, abs=5e-5)


def test_rouge_l_recall_on_hand_made_strings():
    ref = "alpha beta gamma delta"
    scores = rouge_l(["well alpha beta gamma delta indeed", "alpha beta", "nothing here", "running dogs"],
                     [ref, ref, ref, "run dog"])
    assert scores == pytest.approx([1.0, 0.5, 0.0, 1.0])
    with pytest.raises(PaluError):
        rouge_l(["a"], [])


# --- model scoring -----------------------------------------------------------------------------

PROMPT = PromptConfig(chat_template="never")


def _items():
    rows = [
        ("Where was Ada Lind born?", "Ada Lind was born in Oslo in 1961.", "Ada Lind's birthplace is Oslo.",
         ["Ada Lind was born in Rome.", "She was born in Lima in 1970.", "Ada Lind was born at sea."]),
        ("What does Ada Lind write?", "She writes crime novels.", "Her books are crime stories.",
         ["She writes poems.", "She writes cookbooks about bread."]),
        ("Who was Bo Marr's father?", "His father was a sailor named Olav.", "Olav, a sailor, was his father.",
         ["His father was a baker.", "A teacher named Per.", "His father was a pilot.", "A painter."]),
        ("Which prize did Bo Marr win?", "The Nordic Crime Award in 2004.", "In 2004 he won the Nordic Crime Award.",
         ["The Booker Prize.", "No prize at all."]),
        ("What is the title of Bo Marr's first book, the one that made his name?", "Salt and Rope.",
         "His first book is called Salt and Rope.", ["Wind and Stone.", "Rope Salt.", "The Harbour."]),
    ]
    return [QAItem(q, a, paraphrased_answer=p, perturbed_answers=w, source=f"test[{i}]")
            for i, (q, a, p, w) in enumerate(rows)]


def _retain_items():
    return [QAItem("What colour is the sky?", "The sky is blue.", source="retain[0]"),
            QAItem("How many legs does a cat have?", "A cat has four legs.", source="retain[1]"),
            QAItem("What do bees make?", "Bees make honey from nectar.", source="retain[2]")]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """A tiny Llama briefly fitted to the items, so accuracies and generations are not all trivial."""
    torch.set_num_threads(1)
    items = _items() + _retain_items()
    texts = [PROMPT.template.format(question=it.question) + it.answer for it in items]
    texts += [a for it in items for a in [it.paraphrased_answer or "", *it.perturbed_answers]]
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    model = tiny_model(tok)
    batch = collate([encode(tok, it, PROMPT, 128) for it in items], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(16):
        opt.zero_grad()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
        opt.step()
    return tok, model


def _slow_scores(model, tok, item, answer=None):
    """One item at a time: the model's own loss, and an explicit loop over answer positions."""
    enc = encode(tok, item, PROMPT, 512, answer=answer)
    ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    positions = [t for t in range(len(enc.labels) - 1) if enc.labels[t + 1] != IGNORE_INDEX][:-1]
    hits = [int(out.logits[0, t].argmax()) == enc.labels[t + 1] for t in positions]
    return float(out.loss), sum(hits) / len(hits)


def test_answer_nll_matches_slow_per_item_loss(tiny):
    tok, model = tiny
    items = _items()
    slow = [_slow_scores(model, tok, it) for it in items]
    for batch_size in (1, 3):
        nll, acc = nll_and_accuracy(model, tok, items, PROMPT, batch_size=batch_size)
        assert np.allclose(nll, [s[0] for s in slow], atol=1e-5)
        assert np.allclose(acc, [s[1] for s in slow], atol=1e-6)
    assert 0 < acc.mean() < 1


def test_answer_nll_with_answer_overrides_and_multi(tiny):
    tok, model = tiny
    items = _items()
    para = [it.paraphrased_answer for it in items]
    nll, _ = nll_and_accuracy(model, tok, items, PROMPT, answers=para, batch_size=2)
    assert np.allclose(nll, [_slow_scores(model, tok, it, a)[0] for it, a in zip(items, para)], atol=1e-5)
    assert len({len(prompt_ids(tok, it.question, PROMPT)) for it in items}) > 1  # prompts are padded
    groups = [[it.paraphrased_answer, *it.perturbed_answers] for it in items]
    groups[1] = []  # an item without answers keeps its place
    slow = [[_slow_scores(model, tok, it, a)[0] for a in group] for it, group in zip(items, groups)]
    for batch_size in (1, 4, 64):  # fewer answers per batch than one item has, several items, all at once
        wrong = multi_answer_nll(model, tok, items, PROMPT, groups, batch_size=batch_size)
        assert [len(w) for w in wrong] == [len(g) for g in groups]
        for w, s in zip(wrong, slow):
            assert np.allclose(w, s, atol=1e-5)


def test_scoring_restores_training_mode(tiny):
    tok, model = tiny
    model.train()
    nll_and_accuracy(model, tok, _items()[:1], PROMPT)
    assert model.training
    model.eval()


def _manual_greedy(model, tok, item, max_new_tokens):
    return greedy_loop(model, tok, prompt_ids(tok, item.question, PROMPT), max_new_tokens).strip()


def test_generate_is_batch_invariant_and_greedy(tiny):
    tok, model = tiny
    items = _items()
    assert len({len(prompt_ids(tok, it.question, PROMPT)) for it in items}) > 1  # padding is exercised
    one = generate(model, tok, items, PROMPT, max_new_tokens=12, batch_size=1)
    four = generate(model, tok, items, PROMPT, max_new_tokens=12, batch_size=4)
    assert one == four
    assert one == [_manual_greedy(model, tok, it, 12) for it in items]


def core(model, tok, forget, retain, **kw):
    """The suite on a forget and a retain split alone."""
    return evaluate_tofu(model, tok, {"forget": forget, "retain": retain}, PROMPT, **kw)


def test_forget_and_retain_suite_keys_directions_and_json(tiny, tmp_path):
    tok, model = tiny
    res = core(model, tok, _items(), _retain_items(), batch_size=3, max_new_tokens=8)
    assert set(CORE) <= set(res)
    for name, r in res.items():
        assert set(r) - {"message"} == {"agg_value", "value_by_index", "higher_is_better"}
        assert r["higher_is_better"] == METRICS[name].higher_is_better
    assert res["forget_quality"]["agg_value"] is None  # no retain reference
    assert res["retain_truth_ratio"]["agg_value"] is None  # retain items have no perturbed answers
    assert len(res["forget_truth_ratio"]["value_by_index"]) == 5
    first = res["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    assert first["ground_truth"] == _items()[0].answer and isinstance(first["generation"], str)
    assert summary(res)["exact_memorization"] == res["exact_memorization"]["agg_value"]

    path = write_json(tmp_path / "core.json", res)
    assert read_json(path) == res

    again = core(model, tok, _items(), _retain_items(), retain_reference=read_json(path), batch_size=3,
                 max_new_tokens=8)
    assert again["forget_quality"]["agg_value"] == pytest.approx(1.0)  # identical truth-ratio samples


def test_a_partly_perturbed_split_is_refused(tiny):
    tok, model = tiny
    forget = _items()
    forget[2] = QAItem(forget[2].question, forget[2].answer, source="test[2]")
    with pytest.raises(PaluError, match=r"test\[2\]"):
        core(model, tok, forget, _retain_items(), max_new_tokens=2)


# --- the full suite: pure pieces ---------------------------------------------------------------


@pytest.mark.parametrize("hits, strength", [
    ([1, 1, 1, 1], 1.0), ([0, 1, 1, 1], 0.75), ([1, 0, 1, 1], 0.5), ([0, 0, 0, 1], 0.25),
    ([1, 1, 1, 0], 0.25), ([0, 0, 0, 0], 0.25),  # last token missed: 1/n as open-unlearning, not 0
])
def test_extraction_strength_on_hand_made_hits(hits, strength):
    assert extraction_strength(np.array(hits, dtype=bool)) == pytest.approx(strength)


def test_min_k_scores_match_slow_versions():
    rng = np.random.default_rng(1)
    lp, mu, sigma2 = -rng.exponential(size=13), -rng.exponential(size=13), rng.uniform(0.1, 2, size=13)
    lowest = sorted(lp)[:5]  # int(13 * 0.4) = 5
    assert min_k_score(lp) == pytest.approx(-sum(lowest) / 5)
    z = sorted((a - m) / math.sqrt(s) for a, m, s in zip(lp, mu, sigma2))
    assert min_k_plus_plus_score(lp, mu, sigma2) == pytest.approx(-sum(z[:5]) / 5)
    assert min_k_score(lp[:2]) == -min(lp[:2])  # at least one token


def test_normalised_prob_mean_result_and_model_utility():
    assert normalised_prob([0.5, 0.2], [[0.25, 0.25], [0.1]]) == pytest.approx([0.5, 2 / 3])
    res = mean_result("ra_Q_A_Prob", [0.5, None, 0.25])
    assert res["agg_value"] == 0.375 and res["value_by_index"]["1"] is None
    assert mean_result("ra_Q_A_Prob", None)["agg_value"] is None
    parts = dict(zip(MODEL_UTILITY_PARTS, [0.9, 0.8, 0.5, 0.6, 0.9, 0.4, 0.5, 0.9, 0.6]))
    assert model_utility(parts) == pytest.approx(9 / sum(1 / v for v in parts.values()))
    assert model_utility({**parts, "wf_truth_ratio": None}) is None


def test_mia_auc_privleak_and_directions():
    assert mia_auc([0.1, 0.2], [0.3, 0.4]) == 1.0 and mia_auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    res = mia_result("mia_loss", [0.1, 0.35], [0.3, 0.4])
    assert res["agg_value"] == 0.75 and res["value_by_index"]["holdout"] == {"0": 0.3, "1": 0.4}
    assert privleak(1.0, 0.5) == -100.0 and privleak(0.5, 0.5) == 0.0 and privleak(0.25, 0.5) == 50.0
    assert privleak(0.8, None) is None and privleak(0.8, 1.0) is None
    guarded = privleak(1.0, 0.5, OPEN_UNLEARNING_EPS)
    assert guarded == pytest.approx(-100.0, rel=1e-9) and guarded != -100.0
    assert METRICS["privleak"].higher_is_better is None and not METRICS["mia_min_k"].higher_is_better
    assert METRICS["model_utility"].higher_is_better and not METRICS["extraction_strength"].higher_is_better


def test_eps_is_the_reference_guard():
    tr = truth_ratio([1.0, 2.0], [[1.5], [0.5, 1.0]], eps=OPEN_UNLEARNING_EPS)
    slow = [math.exp(-1.5) / (math.exp(-1.0) + 1e-10), math.exp(-0.75) / (math.exp(-2.0) + 1e-10)]
    assert tr.tolist() == slow
    assert aggregate_forget_truth_ratio(tr, OPEN_UNLEARNING_EPS) == np.mean(np.minimum(tr, 1 / (tr + 1e-10)))


# --- the full suite on a tiny model ------------------------------------------------------------


def _slow_token_stats(model, tok, item):
    """One item: log p, hit, mu and sigma^2 at every answer position but the last, by an explicit loop."""
    enc = encode(tok, item, PROMPT, 512)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
    out = []
    positions = [t for t in range(len(enc.labels) - 1) if enc.labels[t + 1] != IGNORE_INDEX][:-1]
    for t in positions:
        logp = torch.log_softmax(logits[t].double(), -1)
        label = enc.labels[t + 1]
        mu = float((logp.exp() * logp).sum())
        out.append((float(logp[label]), int(logp.argmax()) == label, mu, float((logp.exp() * logp**2).sum()) - mu**2))
    return [np.array(col) for col in zip(*out)]


def _reference_extraction_strength(hits):
    """open-unlearning's search loop, written out."""
    n = len(hits)
    for k in range(n):
        if all(hits[k:]):
            break
    return 1 - k / n


def test_score_answers_token_stats_match_slow_loop(tiny):
    tok, model = tiny
    items = _items()
    scores = score_answers(model, tok, items, PROMPT, batch_size=2, vocab_stats=True)
    for item, t in zip(items, scores.tokens):
        lp, hit, mu, sigma2 = _slow_token_stats(model, tok, item)
        assert np.allclose(t.logprob, lp, atol=1e-4) and (t.hit == hit).all()
        assert np.allclose(t.mu, mu, atol=1e-4) and np.allclose(t.sigma2, sigma2, atol=1e-3)
        assert extraction_strength(t.hit) == pytest.approx(_reference_extraction_strength(list(hit)))
    assert score_answers(model, tok, items[:1], PROMPT).tokens[0].mu is None


def _general_items():
    return [QAItem("Who wrote Hamlet?", "William Shakespeare.", perturbed_answers=["Ben Jonson.", "Marlowe."],
                   source="ra[0]"),
            QAItem("What is the capital of Norway?", "Oslo.", perturbed_answers=["Bergen.", "Rome.", "Lima."],
                   source="ra[1]")]


def _holdout_items():
    return [QAItem("Where was Cy Rud born?", "Cy Rud was born in Lima in 1970.", source="holdout[0]"),
            QAItem("What does Cy Rud write?", "He writes poems about the sea.", source="holdout[1]"),
            QAItem("Which prize did Cy Rud win?", "The Booker Prize in 1999.", source="holdout[2]")]


def test_evaluate_tofu_full_suite(tiny):
    tok, model = tiny
    retain = [QAItem(it.question, it.answer, paraphrased_answer=it.answer + " Yes.", perturbed_answers=["No."],
                     source=it.source) for it in _retain_items()]
    sets = {"forget": _items(), "retain": retain, "real_authors": _general_items(), "world_facts": _general_items(),
            "holdout": _holdout_items()}
    res = evaluate_tofu(model, tok, sets, PROMPT, batch_size=4, max_new_tokens=4)
    expected = set(CORE) | set(MODEL_UTILITY_PARTS) | {"extraction_strength", "model_utility", "privleak",
                                                       "ra_Q_A_Prob", "wf_Q_A_Prob", "mia_loss", "mia_zlib",
                                                       "mia_min_k", "mia_min_k_plus_plus", "fluency_distinct_2",
                                                       "fluency_repetition", "fluency_token_prob", "fluency_gibberish"}
    assert set(res) == expected
    assert res["fluency_token_prob"]["agg_value"] is None  # no scoring model given
    scored = evaluate_tofu(model, tok, {"forget": sets["forget"]}, PROMPT, batch_size=4, max_new_tokens=4,
                           fluency_model=model)
    assert 0 < scored["fluency_token_prob"]["agg_value"] <= 1
    for name, r in res.items():
        assert r["higher_is_better"] == METRICS[name].higher_is_better
    assert res["forget_quality"]["agg_value"] is None and res["privleak"]["agg_value"] is None  # no reference
    assert res["model_utility"]["agg_value"] == model_utility(summary(res))
    assert res["model_utility"]["value_by_index"] == {name: res[name]["agg_value"] for name in MODEL_UTILITY_PARTS}
    assert len(res["mia_min_k"]["value_by_index"]["holdout"]) == 3
    assert 0 <= res["mia_zlib"]["agg_value"] <= 1
    assert res["mia_loss"]["value_by_index"]["forget"]["0"] == pytest.approx(-math.log(
        res["forget_Q_A_Prob"]["value_by_index"]["0"]))
    again = evaluate_tofu(model, tok, {"forget": _items(), "holdout": _holdout_items()}, PROMPT,
                          retain_reference=json.loads(json.dumps(res)), batch_size=2, max_new_tokens=4)
    assert again["forget_quality"]["agg_value"] == pytest.approx(1.0)  # the model is its own retain model
    assert again["privleak"]["agg_value"] == pytest.approx(0.0, abs=1e-6)
    assert "model_utility" not in again and "retain_Q_A_Prob" not in again


@pytest.mark.parametrize("metrics, parts", [
    (["forget_quality", "model_utility"], {"forget_truth", "retain", "real_authors", "world_facts"}),
    (["forget_quality", "model_utility", "retain_Q_A_Prob"], {"forget_truth", "retain", "real_authors", "world_facts"}),
    (["forget_Q_A_Prob", "retain_Q_A_Prob"], {"forget_answers", "retain"}),
    (["privleak", "fluency_token_prob", "ra_Q_A_Prob_normalised"], {"mia", "forget_generations", "real_authors"}),
    (["exact_memorization", "lm-eval/mmlu/acc"], {"forget_answers"}),
    (None, set(PARTS)),
])
def test_each_metric_asks_only_the_part_of_the_suite_that_gives_it(metrics, parts):
    assert parts_for(metrics) == parts


def test_the_suite_in_parts_gives_the_whole_suite_s_values(tiny):
    """What the evaluation after each epoch computes (the selection rule's metrics), then the rest: together,
    exactly the whole suite's results, value for value."""
    tok, model = tiny
    retain = [QAItem(it.question, it.answer, paraphrased_answer=it.answer + " Yes.", perturbed_answers=["No."],
                     source=it.source) for it in _retain_items()]
    sets = {"forget": _items(), "retain": retain, "real_authors": _general_items(), "world_facts": _general_items(),
            "holdout": _holdout_items()}
    opts = dict(batch_size=2, max_new_tokens=4, fluency_model=model)
    reference = json.loads(json.dumps(evaluate_tofu(model, tok, sets, PROMPT, **opts)))
    whole = evaluate_tofu(model, tok, sets, PROMPT, retain_reference=reference, **opts)
    lean = evaluate_tofu(model, tok, sets, PROMPT, retain_reference=reference,
                         metrics={"forget_quality", "model_utility", "retain_Q_A_Prob"}, **opts)
    assert {"forget_quality", "model_utility", "forget_truth_ratio"} <= set(lean)
    assert not {"forget_Q_A_ROUGE", "forget_Q_A_Prob", "mia_min_k", "privleak", "fluency_distinct_2"} & set(lean)
    rest = evaluate_tofu(model, tok, sets, PROMPT, retain_reference=reference, metrics=set(whole) - set(lean), **opts)
    assert not set(lean) & set(rest)
    assert json.dumps({**lean, **rest}, sort_keys=True) == json.dumps(whole, sort_keys=True)


def test_evaluate_tofu_refuses_bad_sets(tiny):
    tok, model = tiny
    with pytest.raises(PaluError, match="forget set too"):
        evaluate_tofu(model, tok, {"holdout": _holdout_items()}, PROMPT)
    with pytest.raises(PaluError, match="valid sets"):
        evaluate_tofu(model, tok, {"real_author": _general_items()}, PROMPT)
    general = _general_items()
    general[1] = QAItem(general[1].question, general[1].answer, source="ra[1]")
    with pytest.raises(PaluError, match=r"ra\[1\]: no perturbed answers"):
        evaluate_tofu(model, tok, {"real_authors": general}, PROMPT, max_new_tokens=2)
