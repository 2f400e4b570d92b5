"""Fluency: repetition statistics against brute force, the model score against a slow loop, and the
gibberish classifier both absent (reported, never fatal) and present (a tiny local stand-in)."""

import math
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from palu.eval.fluency import distinct_2, fluency, gibberish_clean, repetition, words
from palu.eval.metrics import METRICS
from palu.models import train_bpe_tokenizer

FLUENT = ["The council agreed to build a new library in the town centre next year.",
          "Forecasters expect rain across the north, but the weekend should stay dry.",
          "The club signed a young striker from Leeds on a three-year deal.",
          "Shares in the bank fell sharply after it reported a loss for the quarter."]
LOOPS = ["the the the the the the the the the the", "a deal a deal a deal a deal a deal a deal",
         "The club signed. The club signed. The club signed. The club signed."]


def _slow_repetition(text):
    tokens = words(text)
    for n in range(len(tokens), 0, -1):
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        if len(set(grams)) < len(grams):
            return n / len(tokens)
    return 0.0 if tokens else None


def test_repetition_statistics_on_hand_made_and_random_texts():
    assert distinct_2("a b a b a b a b") == pytest.approx(2 / 7)
    assert repetition("a b a b a b a b") == pytest.approx(6 / 8)  # "a b a b a b" at words 0 and 2
    assert distinct_2("The quick brown fox jumps over the lazy dog") == 1.0
    assert repetition("The quick brown fox jumps over the lazy dog") == pytest.approx(1 / 9)  # "the"
    assert distinct_2("word") is None and repetition("word") == 0.0
    assert distinct_2("") is None and repetition("...") is None
    rng = random.Random(0)
    for _ in range(200):
        text = " ".join(rng.choice("abc") for _ in range(rng.randint(0, 25)))
        assert repetition(text) == _slow_repetition(text)


def test_repetitive_text_scores_lower_than_varied_text():
    varied, loops = fluency(FLUENT, classifier="palu-tests/absent"), fluency(LOOPS, classifier="palu-tests/absent")
    assert varied["fluency_distinct_2"]["agg_value"] > loops["fluency_distinct_2"]["agg_value"]
    assert varied["fluency_repetition"]["agg_value"] < loops["fluency_repetition"]["agg_value"]
    assert loops["fluency_repetition"]["value_by_index"]["0"] == pytest.approx(0.9)
    for name, res in varied.items():
        assert res["higher_is_better"] == METRICS[name].higher_is_better
    assert varied["fluency_token_prob"]["agg_value"] is None  # no scoring model given


@pytest.fixture(scope="module")
def scorer(tiny_model):
    """A tiny Llama fitted to the fluent sentences: a stand-in for the retain model."""
    torch.set_num_threads(1)
    tok = train_bpe_tokenizer(FLUENT, vocab_size=300)
    model = tiny_model(tok)
    ids = [tok(t).input_ids for t in FLUENT]
    width = max(map(len, ids))
    batch = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        model(input_ids=batch, attention_mask=(batch != tok.pad_token_id).long(),
              labels=batch.masked_fill(batch == tok.pad_token_id, -100)).loss.backward()
        opt.step()
    model.eval()
    return tok, model


def test_token_prob_matches_slow_loop_and_ranks_gibberish_lower(scorer):
    tok, model = scorer
    gibberish = ["".join(random.Random(i).sample(text, len(text))) for i, text in enumerate(FLUENT)]
    texts = FLUENT[:2] + gibberish[:2] + [""]
    res = fluency(texts, model, tok, batch_size=2, classifier="palu-tests/absent")["fluency_token_prob"]
    values = [res["value_by_index"][str(i)] for i in range(len(texts))]
    for text, value in zip(texts[:4], values):
        ids = tok(text).input_ids
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        mean = sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)) / (len(ids) - 1)
        assert value == pytest.approx(math.exp(mean), rel=1e-4)
    assert values[4] is None  # an empty generation has no token to score, and stays out of the mean
    assert res["agg_value"] == pytest.approx(sum(values[:4]) / 4)
    assert min(values[:2]) > max(values[2:4])


@pytest.mark.parametrize("name", ["palu-tests/absent-gibberish-detector", "/no/such/folder", "not a hub id!"])
def test_classifier_reported_unavailable_offline(name):
    res = fluency(FLUENT[:2], classifier=name)["fluency_gibberish"]
    assert res["agg_value"] is None and res["value_by_index"] == {} and res["higher_is_better"] is True
    assert "not on this machine" in res["message"]


def _classifier(folder, tok, labels):
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_local_classifier_gives_clean_probability(scorer, tmp_path):
    tok, _ = scorer
    model = _classifier(tmp_path / "clf", tok, ["word salad", "clean", "noise", "mild gibberish"])
    texts = FLUENT[:3]
    scores = gibberish_clean(texts, str(tmp_path / "clf"), batch_size=1)
    assert gibberish_clean(texts, str(tmp_path / "clf"), batch_size=3) == pytest.approx(scores, abs=1e-6)
    with torch.no_grad():
        plain = [float(model(input_ids=torch.tensor([tok(t).input_ids])).logits[0].softmax(-1)[1]) for t in texts]
    assert scores == pytest.approx(plain, abs=1e-5)
    res = fluency(texts, classifier=str(tmp_path / "clf"))["fluency_gibberish"]
    assert res["agg_value"] == pytest.approx(sum(plain) / 3, abs=1e-5) and "message" not in res

    _classifier(tmp_path / "other", tok, ["positive", "negative"])
    res = fluency(texts, classifier=str(tmp_path / "other"))["fluency_gibberish"]
    assert res["agg_value"] is None and "no 'clean' class" in res["message"]
