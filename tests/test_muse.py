"""MUSE suite: raw-text generation and scoring against slow loops, aggregations against plain
computations, each scoring rule (MUSE's and open-unlearning's) against a plain re-implementation
on made-up outputs, loading from a folder, the hub (mocked) and broken files, and the runner."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import greedy_loop
from rouge_score import rouge_scorer
from sklearn.metrics import roc_auc_score

from palu.commands.muse import Config as MuseConfig
from palu.commands.muse import run_muse
from palu.config import build
from palu.errors import PaluError
from palu.eval import muse
from palu.eval.metrics import METRICS, rouge_l
from palu.eval.muse import FILES, MuseData, evaluate_muse, knowmem_prompt_text, load_muse, rouge_f1_result
from palu.eval.scoring import generate_text, text_logprobs
from palu.io import read_json
from palu.models import train_bpe_tokenizer

MUSE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "muse_news"

QA = [("Who won the cup in 2004?", "The Rovers"), ("Where is the new bridge?", "In Leeds"),
      ("How much did the council spend on the library?", "Four million pounds"),
      ("Which minister opened the hospital?", "The health minister")]
ICL = [{"question": "When did the strike end?", "answer": "In March"},
       {"question": "Who runs the museum?", "answer": "A charity"}]
TEXTS = ["The council met on Monday.\nIt agreed to build a new library in the town centre.",
         "Rain is expected across the north.\n\nForecasters said the weekend would be dry.",
         "Shares fell sharply",
         "The club confirmed the signing of a striker from Leeds on a three-year deal.\nFans welcomed the news."]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """A tiny Llama fitted a little to few-shot QA text, so that its continuations hold newlines."""
    torch.set_num_threads(1)
    shots = [knowmem_prompt_text(q, ICL) + a + "\n\n" for q, a in QA]
    tok = train_bpe_tokenizer(shots + TEXTS, vocab_size=300)
    model = tiny_model(tok)
    ids = [tok(t).input_ids for t in shots]
    width = max(map(len, ids))
    batch = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    labels = batch.masked_fill(batch == tok.pad_token_id, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        model(input_ids=batch, attention_mask=(batch != tok.pad_token_id).long(), labels=labels).loss.backward()
        opt.step()
    model.eval()
    return tok, model


def _greedy(model, tok, prompt, max_new_tokens):
    """One prompt at a time, one token at a time: the plain greedy continuation."""
    return greedy_loop(model, tok, tok(prompt).input_ids, max_new_tokens)


def _slow_logprobs(model, tok, text):
    ids = tok(text).input_ids
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    return np.array([float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)])


# --- raw-text generation and scoring ---------------------------------------------------------------


def test_generate_text_is_batch_invariant_greedy_and_stops_at_newline(tiny):
    tok, model = tiny
    prompts = [knowmem_prompt_text(q, ICL) for q, _ in QA] + TEXTS[:2]
    assert len({len(tok(p).input_ids) for p in prompts}) > 1  # padding is exercised
    free = generate_text(model, tok, prompts, max_new_tokens=12, batch_size=1)
    assert free == generate_text(model, tok, prompts, max_new_tokens=12, batch_size=4)
    assert free == [_greedy(model, tok, p, 12) for p in prompts]
    assert sum("\n" in text for text in free) >= 2  # the cut below has something to cut

    stopped = generate_text(model, tok, prompts, max_new_tokens=12, batch_size=1, stop_at_newline=True)
    assert stopped == generate_text(model, tok, prompts, max_new_tokens=12, batch_size=4, stop_at_newline=True)
    assert stopped == [text.split("\n")[0] for text in free]
    assert not any("\n" in text for text in stopped)


def test_newline_stop_ends_decoding_early(tiny):
    """The stopping criterion, not only the cut: a prompt whose continuation breaks the line at once
    takes fewer forward passes than max_new_tokens."""
    tok, model = tiny
    free = generate_text(model, tok, TEXTS, max_new_tokens=12, batch_size=1)
    prompt = next(p for p, text in zip(TEXTS, free) if "\n" in text[: len(text) // 2])
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        generate_text(model, tok, [prompt], max_new_tokens=12, stop_at_newline=True)
    finally:
        hook.remove()
    assert len(calls) < 12


def test_text_logprobs_match_slow_loop_and_cut(tiny):
    tok, model = tiny
    slow = [_slow_logprobs(model, tok, t) for t in TEXTS]
    for batch_size in (1, 3):
        fast = text_logprobs(model, tok, TEXTS, batch_size=batch_size)
        assert [len(f) for f in fast] == [len(tok(t).input_ids) - 1 for t in TEXTS]
        for f, s in zip(fast, slow):
            assert np.allclose(f, s, atol=1e-5)
    cut = text_logprobs(model, tok, TEXTS, max_length=5)
    assert all(len(c) == min(4, len(s)) and np.allclose(c, s[:4], atol=1e-5) for c, s in zip(cut, slow))


def test_rouge_l_f1_and_measures():
    assert rouge_l(["a b c d"], ["a b x"], "f1") == pytest.approx([4 / 7])  # LCS 2: P = 2/4, R = 2/3
    assert rouge_l(["a b c d"], ["a b x"], "recall") == pytest.approx([2 / 3])
    with pytest.raises(PaluError, match="recall, f1"):
        rouge_l(["a"], ["a"], "precision")


def test_knowmem_prompt_is_muse_format():
    assert knowmem_prompt_text("Q?", ICL) == ("Question: When did the strike end?\nAnswer: In March\n\n"
                                         "Question: Who runs the museum?\nAnswer: A charity\n\nQuestion: Q?\nAnswer: ")


# --- the suite ---------------------------------------------------------------------------------------


LONG_GT = " " + " ".join(TEXTS * 4)  # well over 128 tokens: MUSE scores only its first 128


def _data():
    qa = [{"question": q, "answer": a} for q, a in QA]
    verbmem = [{"prompt": t[:20], "gt": t[20:]} for t in TEXTS[:3]] + [{"prompt": TEXTS[3][:30], "gt": LONG_GT}]
    return MuseData(verbmem=verbmem, forget_qa=qa[:2],
                    forget_qa_icl=ICL, retain_qa=qa[2:], retain_qa_icl=ICL[:1],
                    privleak_forget=TEXTS[:2], privleak_holdout=TEXTS[2:])


def _slow_min_k(logprobs, k=0.4):
    lowest = sorted(logprobs)[: max(1, int(len(logprobs) * k))]
    return -sum(lowest) / len(lowest)


def _muse_cut(text):
    """MUSE's KnowMem cut, plainly: the text before the earliest of its three stop strings."""
    ends = [text.find(stop) for stop in ("\n\n", "\nQuestion", "Question:") if stop in text]
    return text[: min(ends)] if ends else text


def _muse_gt(tok, gt):
    """MUSE's VerbMem reference: gt tokenised with BOS, its first 128 ids, decoded."""
    return tok.decode(tok(gt).input_ids[:128], skip_special_tokens=True)


def test_evaluate_muse_matches_plain_computation(tiny):
    """MUSE's own procedure by default: full 32-token answers cut at its stop strings, the VerbMem
    reference cut to 128 tokens, ROUGE-L F1 without stemming."""
    tok, model = tiny
    data = _data()
    res = evaluate_muse(model, tok, data, batch_size=2)
    assert set(res) == {"forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "mia_min_k", "privleak"}
    for name, r in res.items():
        assert set(r) == {"agg_value", "value_by_index", "higher_is_better"}
        assert r["higher_is_better"] == METRICS[name].higher_is_better
    assert json.loads(json.dumps(res)) == res

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    short = _muse_gt(tok, LONG_GT)
    assert len(tok(LONG_GT).input_ids) > 128 and LONG_GT.startswith(short) and len(short) < len(LONG_GT)
    cases = {"forget_verbmem_ROUGE": ([d["prompt"] for d in data.verbmem], [_muse_gt(tok, d["gt"]) for d in data.verbmem],
                                      128, False),
             "forget_knowmem_ROUGE": ([knowmem_prompt_text(d["question"], ICL) for d in data.forget_qa],
                                      [d["answer"] for d in data.forget_qa], 32, True),
             "retain_knowmem_ROUGE": ([knowmem_prompt_text(d["question"], ICL[:1]) for d in data.retain_qa],
                                      [d["answer"] for d in data.retain_qa], 32, True)}
    for name, (prompts, gts, max_new, cut) in cases.items():
        gens = [_greedy(model, tok, p, max_new) for p in prompts]
        gens = [_muse_cut(g) for g in gens] if cut else gens
        f1 = [scorer.score(gt, g)["rougeL"].fmeasure for g, gt in zip(gens, gts)]
        per_item = res[name]["value_by_index"]
        assert [per_item[str(i)]["generation"] for i in range(len(gens))] == gens
        assert [per_item[str(i)]["ground_truth"] for i in range(len(gens))] == gts
        assert [per_item[str(i)]["rougeL_f1"] for i in range(len(gens))] == pytest.approx(f1)
        assert res[name]["agg_value"] == pytest.approx(sum(f1) / len(f1))

    forget = [_slow_min_k(_slow_logprobs(model, tok, t)) for t in data.privleak_forget]
    holdout = [_slow_min_k(_slow_logprobs(model, tok, t)) for t in data.privleak_holdout]
    auc = roc_auc_score([0] * 2 + [1] * 2, forget + holdout)
    assert res["mia_min_k"]["agg_value"] == pytest.approx(auc)
    assert list(res["mia_min_k"]["value_by_index"]["forget"].values()) == pytest.approx(forget, abs=1e-5)
    assert res["privleak"]["agg_value"] is None  # no retain reference

    again = evaluate_muse(model, tok, data, retain_reference={"mia_min_k": {"agg_value": 0.3}}, batch_size=4)
    assert again["privleak"]["agg_value"] == pytest.approx(((1 - auc) - 0.7) / 0.7 * 100)
    assert again["forget_knowmem_ROUGE"] == res["forget_knowmem_ROUGE"]  # batch size changes nothing


def test_evaluate_muse_leaves_out_empty_sets(tiny):
    tok, model = tiny
    data = _data()
    data.verbmem, data.privleak_holdout = [], []
    assert set(evaluate_muse(model, tok, data)) == {"forget_knowmem_ROUGE", "retain_knowmem_ROUGE"}


# --- the scoring rules on made-up outputs -----------------------------------------------------------


def test_knowmem_answer_is_cut_at_muses_stop_strings_not_at_a_newline():
    """"1472\nAnswer: 1472" holds none of MUSE's stop strings, so MUSE scores all of it: LCS 1 of 3
    output tokens and 1 answer token, P = 1/3, R = 1, F1 = 0.5 (a newline cut would give 1.0)."""
    assert muse.knowmem_cut("1472\nAnswer: 1472") == _muse_cut("1472\nAnswer: 1472") == "1472\nAnswer: 1472"
    f1 = rouge_f1_result("forget_knowmem_ROUGE", ["1472\nAnswer: 1472"], ["1472"], stem=False)
    assert f1["agg_value"] == pytest.approx(0.5)
    for text in ("The Rovers\n\nQuestion: Who won?", "In Leeds\nQuestion 2", "A charity Question: why?\n\n",
                 "Question: who?", "\n\nQuestion:", "no stop\nat all", ""):
        assert muse.knowmem_cut(text) == _muse_cut(text)


def test_rouge_stems_only_under_open_unlearning_rules():
    """MUSE's code scores "running" against "run" as different words; open-unlearning stems both to "run"."""
    scores = {stem: rouge_f1_result("forget_knowmem_ROUGE", ["The dog was running home", "run"],
                                    ["The dog runs home", "running"], stem)["value_by_index"] for stem in (False, True)}
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert [scores[False][i]["rougeL_f1"] for i in "01"] == pytest.approx(
        [plain.score("The dog runs home", "The dog was running home")["rougeL"].fmeasure, 0.0])
    assert scores[False]["0"]["rougeL_f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))  # LCS the dog home
    assert scores[True]["0"]["rougeL_f1"] == pytest.approx(2 * (4 / 5) * 1 / (4 / 5 + 1))  # + run
    assert scores[True]["1"]["rougeL_f1"] == 1.0


def _scripted(monkeypatch, outputs):
    """Make evaluate_muse's generations the given texts (by prompt); returns the calls' lengths and options."""
    calls = []

    def generate_text(model, tokenizer, prompts, max_new_tokens, **kwargs):
        calls.append((max_new_tokens, sorted(kwargs)))
        return [outputs[p] for p in prompts]

    monkeypatch.setattr(muse, "generate_text", generate_text)
    return calls


@pytest.mark.parametrize("rules", ["muse", "open-unlearning"])
def test_each_rule_matches_a_plain_reimplementation(tiny, monkeypatch, rules):
    tok, _ = tiny
    long_out = " " + " ".join(TEXTS * 2)[:200] + "\n\nMore text "
    verbmem = [{"prompt": "p1", "gt": LONG_GT}, {"prompt": "p2", "gt": " the dogs running home\n"}]
    qa = [{"question": "When?", "answer": "1472"}, {"question": "Who?", "answer": "The Rovers"},
          {"question": "Where?", "answer": "In Leeds"}]
    outputs = {"p1": long_out, "p2": "  the dog runs home  "}
    answers = ["1472\nAnswer: 1472", " The Rovers won\n\nQuestion: Who lost?\nAnswer: ", " In Leeds Question: x"]
    outputs |= {knowmem_prompt_text(d["question"], ICL): a for d, a in zip(qa, answers)}
    calls = _scripted(monkeypatch, outputs)
    res = evaluate_muse(None, tok, MuseData(verbmem=verbmem, forget_qa=qa, forget_qa_icl=ICL), rules=rules)
    assert calls == [(128, ["batch_size", "progress"]), (32, ["batch_size", "progress"])]  # no early stop

    if rules == "muse":  # MUSE's code: no stemming, no strip, reference cut to 128 token ids
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        gens, refs = [long_out, outputs["p2"]], [_muse_gt(tok, d["gt"]) for d in verbmem]
        cut = [_muse_cut(a) for a in answers]
    else:  # open-unlearning: stemming, whole reference, everything stripped
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        gens, refs = [long_out.strip(), outputs["p2"].strip()], [d["gt"].strip() for d in verbmem]
        cut = [_muse_cut(a).strip() for a in answers]
    assert cut[0] == "1472\nAnswer: 1472"
    for name, gen, ref in (("forget_verbmem_ROUGE", gens, refs), ("forget_knowmem_ROUGE", cut, [d["answer"] for d in qa])):
        per_item = res[name]["value_by_index"]
        assert [per_item[str(i)]["generation"] for i in range(len(gen))] == gen
        assert [per_item[str(i)]["ground_truth"] for i in range(len(gen))] == ref
        f1 = [scorer.score(r, g)["rougeL"].fmeasure for g, r in zip(gen, ref)]
        assert [per_item[str(i)]["rougeL_f1"] for i in range(len(gen))] == pytest.approx(f1)
        assert res[name]["agg_value"] == pytest.approx(sum(f1) / len(f1))
    assert res["forget_knowmem_ROUGE"]["value_by_index"]["0"]["rougeL_f1"] == pytest.approx(0.5)
    verbmem_f1 = res["forget_verbmem_ROUGE"]["value_by_index"]
    whole = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(LONG_GT, long_out)["rougeL"].fmeasure
    assert (verbmem_f1["0"]["rougeL_f1"] == pytest.approx(whole)) == (rules == "open-unlearning")
    assert (verbmem_f1["1"]["rougeL_f1"] == 1.0) == (rules == "open-unlearning")  # "runs"/"running" stem to "run"


def test_privleak_text_length_under_each_rule(tiny, monkeypatch):
    """MUSE scores privleak texts whole; open-unlearning cuts them to 2,048 tokens after BOS; max_length wins."""
    tok, _ = tiny
    seen = []

    def text_logprobs(model, tokenizer, texts, batch_size, max_length, progress):
        seen.append(max_length)
        return [np.array([-1.0, -2.0 - i]) for i in range(len(texts))]

    monkeypatch.setattr(muse, "text_logprobs", text_logprobs)
    data = MuseData(privleak_forget=TEXTS[:2], privleak_holdout=TEXTS[2:])
    for rules, max_length in (("muse", None), ("open-unlearning", None), ("open-unlearning", 64)):
        evaluate_muse(None, tok, data, rules=rules, max_length=max_length)
    assert seen == [None] * 2 + [len(tok("").input_ids) + 2048] * 2 + [64] * 2 and tok("").input_ids == [tok.bos_token_id]
    with pytest.raises(PaluError, match="muse, open-unlearning"):
        evaluate_muse(None, tok, data, rules="stemmed")


@pytest.fixture(scope="module")
def muse_dir():
    if not MUSE_DIR.is_dir():
        pytest.skip(f"MUSE data not found at {MUSE_DIR}; the shared data folder is needed for this test.")
    return MUSE_DIR


def test_suite_and_runner_on_muse_news(muse_dir, tiny_model, tmp_path):
    data = load_muse(str(muse_dir), verbmem_limit=2, knowmem_limit=2, privleak_limit=2)
    assert [len(getattr(data, name)) for name in FILES] == [2, 2, 10, 2, 10, 2, 2]  # few-shot sets stay whole
    assert data.forget_qa[0] == read_json(muse_dir / "knowmem" / "forget_qa.json")[0]
    assert data.privleak_holdout[1] == read_json(muse_dir / "privleak" / "holdout.json")[1]

    texts = [d["prompt"] + d["gt"] for d in data.verbmem] + [d["question"] + " " + d["answer"] for d in data.forget_qa]
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    model = tiny_model(tok)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    cfg = build(MuseConfig, {"model": str(tmp_path / "model"), "path": str(muse_dir),
                             "output_dir": str(tmp_path / "out"), "batch_size": 2, "verbmem_limit": 1, "knowmem_limit": 2, "privleak_limit": 2,
                             "max_length": 256})
    assert cfg.rules == "muse"
    res = run_muse(cfg, progress=False)
    assert len(res["forget_verbmem_ROUGE"]["value_by_index"]) == 1
    assert len(res["retain_knowmem_ROUGE"]["value_by_index"]) == 2
    assert 0 <= res["mia_min_k"]["agg_value"] <= 1 and res["privleak"]["agg_value"] is None
    assert read_json(tmp_path / "out" / "results.json") == res
    assert read_json(tmp_path / "out" / "summary.json") == {name: r["agg_value"] for name, r in res.items()}
    with pytest.raises(PaluError, match="not empty"):
        run_muse(cfg, progress=False)

    cfg.output_dir, cfg.retain_reference = str(tmp_path / "again"), str(tmp_path / "out" / "results.json")
    assert run_muse(cfg, progress=False)["privleak"]["agg_value"] == pytest.approx(0.0)  # the same model
    assert build(MuseConfig, {"model": "m", "rules": "open-unlearning"}).rules == "open-unlearning"
    with pytest.raises(PaluError, match="rules must be one of muse, open-unlearning"):
        build(MuseConfig, {"model": "m", "rules": "stemmed"})


# --- loading --------------------------------------------------------------------------------------


def _write_folder(root: Path) -> Path:
    rows = {"verbmem": [{"prompt": "The council", "gt": " met on Monday."}],
            "forget_qa": [{"question": q, "answer": a} for q, a in QA[:2]], "forget_qa_icl": ICL,
            "retain_qa": [{"question": q, "answer": a} for q, a in QA[2:]], "retain_qa_icl": ICL,
            "privleak_forget": TEXTS[:2], "privleak_holdout": TEXTS[2:]}
    for name, (config, split, _) in FILES.items():
        (root / config).mkdir(parents=True, exist_ok=True)
        (root / config / f"{split}.json").write_text(json.dumps(rows[name]))
    return root


def test_load_muse_from_folder_and_limits(tmp_path):
    data = load_muse(str(_write_folder(tmp_path)), knowmem_limit=1, privleak_limit=0)
    assert data.verbmem == [{"prompt": "The council", "gt": " met on Monday."}]
    assert data.forget_qa == [{"question": QA[0][0], "answer": QA[0][1]}] and len(data.retain_qa) == 1
    assert data.forget_qa_icl == ICL and data.privleak_forget == [] and data.privleak_holdout == []
    with pytest.raises(PaluError, match="non-negative"):
        load_muse(str(tmp_path), verbmem_limit=-1)


@pytest.mark.parametrize("file, content, message", [
    ("knowmem/retain_qa.json", None, r"knowmem/retain_qa\.json: no such file"),
    ("verbmem/forget.json", "[{\"prompt\": ", r"verbmem/forget\.json:1: not valid JSON"),
    ("privleak/holdout.json", "{\"text\": \"a\"}", r"privleak/holdout\.json: expected a JSON array"),
    ("knowmem/forget_qa_icl.json", "[{\"question\": \"q\", \"answer\": \"a\"}, {\"question\": \"q\"}]",
     r"knowmem/forget_qa_icl\.json:2: 'answer' should be non-empty text"),
    ("privleak/forget.json", "[\"a text\", 3]", r"privleak/forget\.json:2: expected an object with text"),
])
def test_load_muse_names_missing_or_malformed_file(tmp_path, file, content, message):
    root = _write_folder(tmp_path)
    if content is None:
        (root / file).unlink()
    else:
        (root / file).write_text(content)
    with pytest.raises(PaluError, match=message):
        load_muse(str(root))


def test_load_muse_refuses_missing_folder(tmp_path):
    with pytest.raises(PaluError, match="no such folder"):
        load_muse(str(tmp_path / "nowhere"))


def test_load_muse_from_hub(monkeypatch):
    import datasets

    calls = []
    hub = {("verbmem", "forget"): [{"prompt": "p", "gt": "g"}, {"prompt": "p2", "gt": "g2"}],
           ("knowmem", "forget_qa"): [{"question": "q", "answer": "a"}], ("knowmem", "forget_qa_icl"): ICL,
           ("knowmem", "retain_qa"): [{"question": "q2", "answer": "a2"}], ("knowmem", "retain_qa_icl"): ICL,
           ("privleak", "forget"): [{"text": "forget text"}], ("privleak", "holdout"): [{"text": "holdout text"}]}

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return hub[(name, split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_muse("muse-bench/MUSE-News", verbmem_limit=1)
    assert {path for path, _, _ in calls} == {"muse-bench/MUSE-News"} and len(calls) == len(FILES)
    assert data.verbmem == [{"prompt": "p", "gt": "g"}] and data.retain_qa_icl == ICL
    assert data.privleak_forget == ["forget text"] and data.privleak_holdout == ["holdout text"]

    def offline(path, name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PaluError, match=r"muse-bench/MUSE-News/verbmem/forget: .*ConnectionError.*local folder"):
        load_muse("muse-bench/MUSE-News")


def test_muse_metrics_registered_with_directions():
    assert METRICS["forget_verbmem_ROUGE"].higher_is_better is False
    assert METRICS["forget_knowmem_ROUGE"].higher_is_better is False
    assert METRICS["retain_knowmem_ROUGE"].higher_is_better is True
    assert METRICS["privleak"].higher_is_better is None
