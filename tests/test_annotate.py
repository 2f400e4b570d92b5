"""Annotation: re-anchoring span files, rules, the contrast score, the LLM client, the command and span F1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED, completion

from palu.annotate import annotate, get_annotator
from palu.annotate.contrast import ContrastScores, is_modifier, mask_subject, phrases, word_scores
from palu.annotate.quality import span_f1
from palu.annotate.text import on_boundaries, word_spans
from palu.commands.annotate import Config as AnnotateConfig
from palu.commands.annotate import run_annotate, show_spans
from palu.data.labels import collate, encode
from palu.data.loaders import DataSource, load_qa
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem, Span
from palu.errors import PaluError


def texts(item: QAItem) -> list[str]:
    return [s.text(item.answer) for s in item.spans]


def span_of(answer: str, phrase: str) -> dict:
    """A span-file entry at the first occurrence of ``phrase``, found the way the GPT-4o files were (substring)."""
    start = answer.index(phrase)
    return {"word": phrase, "start": start, "end": start + len(phrase)}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- file annotator: the known defects of the GPT-4o files ------------------------------------

KUWAIT_Q = "In which city and country was Basil Mahfouz Al-Kuwaiti born?"
KUWAIT_A = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."


def test_file_moves_a_span_found_inside_another_word_to_the_standalone_word(tmp_path):
    row = {"question": KUWAIT_Q, "answer": KUWAIT_A,
           "target_words": [span_of(KUWAIT_A, "Kuwait City"), span_of(KUWAIT_A, "Kuwait")]}  # "Kuwait" in "Al-Kuwaiti"
    items, report = annotate([QAItem(KUWAIT_Q, KUWAIT_A)], "file", path=write_rows(tmp_path / "s.jsonl", [row]))
    assert texts(items[0]) == ["Kuwait City", "Kuwait"]
    assert items[0].spans[1] == Span(KUWAIT_A.rindex("Kuwait"), len(KUWAIT_A) - 1)
    (change,) = report.changes
    assert (change.kind, change.before, change.after) == ("moved", Span(17, 23), items[0].spans[1])
    assert "Al-Kuwaiti" in change.reason


@pytest.mark.parametrize("answer, phrase, kind, expected", [
    ("It is her most-loved book, a tale of love and loss.", "love", "moved", ["love"]),  # a standalone "love" exists
    ("It is her most-loved book.", "love", "widened", ["loved"]),  # the start of an inflected word
    ("His work impacted society.", "impact", "widened", ["impacted"]),
    ("She was born that year.", "ear", "dropped", []),  # a piece of another word
    ("She studied in Paris.", "London", "dropped", []),  # not there at all
    ("She studied in Paris.", "Paris ", "moved", ["Paris"]),  # offsets that do not hold the word
])
def test_file_reanchors_on_word_boundaries(tmp_path, answer, phrase, kind, expected):
    entry = span_of(answer, phrase) if phrase in answer else {"word": phrase, "start": 0, "end": 3}
    row = {"question": "Q?", "answer": answer, "target_words": [entry]}
    items, report = annotate([QAItem("Q?", answer)], "file", path=write_rows(tmp_path / "s.jsonl", [row]))
    assert texts(items[0]) == expected
    assert [c.kind for c in report.changes] == [kind]
    assert all(on_boundaries(answer, s.start, s.end) for s in items[0].spans)


def test_file_moves_a_phrase_recorded_inside_another_span_and_marks_repeats_on_request(tmp_path):
    answer = '"Kazakhstan Echoes" draws on his life in Astana, Kazakhstan, and Kazakhstan again.'
    row = {"question": "What inspired it?", "answer": answer,
           "target_words": [span_of(answer, "Kazakhstan Echoes"), span_of(answer, "Kazakhstan")]}
    path = write_rows(tmp_path / "s.jsonl", [row])
    items, report = annotate([QAItem("What inspired it?", answer)], "file", path=path)
    assert items[0].spans[1] == Span(answer.index("Kazakhstan,"), answer.index("Kazakhstan,") + 10)
    assert report.count("moved") == 1 and report.count("added") == 0
    items, report = annotate([QAItem("What inspired it?", answer)], "file", path=path, all_occurrences=True)
    assert texts(items[0]) == ["Kazakhstan Echoes", "Kazakhstan", "Kazakhstan"]
    assert report.count("added") == 1


def test_file_reports_rows_without_spans_and_unmatched_items(tmp_path):
    rows = [{"question": "A?", "answer": "Alpha.", "target_words": []},
            {"question": "B?", "answer": "It is Beta, not Gamma.",
             "target_words": [{"word": "Beta", "start": 6, "end": 10}]}]
    items = [QAItem("A?", "Alpha.", source="a"), QAItem("B?", "Beta it is, not Gamma.", source="b"),
             QAItem("C?", "Gamma.", spans=[Span(0, 5)], source="c")]
    out, report = annotate(items, "file", path=write_rows(tmp_path / "s.jsonl", rows))
    assert texts(out[1]) == ["Beta"]  # matched by question; offsets of the file's answer re-anchored by word
    assert report.without_spans == ["a"] and report.unmatched == ["c"]
    assert out[2].spans == [Span(0, 5)] and items[1].spans == []  # unmatched keeps its spans; inputs untouched


def test_file_reads_a_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    row = {"question": KUWAIT_Q, "answer": KUWAIT_A, "target_words": [span_of(KUWAIT_A, "Kuwait City")]}
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row])}).save_to_disk(str(tmp_path / "saved"))
    items, report = annotate([QAItem(KUWAIT_Q, KUWAIT_A)], "file", path=str(tmp_path / "saved"), split="train")
    assert texts(items[0]) == ["Kuwait City"] and not report.changes


@pytest.mark.parametrize("split, empty", [("forget05", 4), ("forget10", 12)])
def test_file_on_the_shared_gpt4o_spans(split, empty):
    tofu = SHARED / "data" / "tofu" / f"{split}.json"
    spans = SHARED / "data" / "tofu_annotations" / f"{split}_gpt4o.jsonl"
    if not (tofu.is_file() and spans.is_file()):
        pytest.skip("shared TOFU data not present")
    items, report = annotate(load_qa(DataSource(str(tofu))), "file", path=str(spans))
    assert len(report.without_spans) == empty and not report.unmatched
    assert all(on_boundaries(it.answer, s.start, s.end) for it in items for s in it.spans)
    assert {c.word for c in report.changes if c.kind == "moved"} >= {"Kuwait"}


# --- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("question, answer, expected", [
    ("Where was Hina Ameen born?", "Hina Ameen was born in Karachi, Pakistan on June 30, 1975.",
     ["Karachi", "Pakistan", "June 30, 1975"]),  # the name is given by the question
    ("What is the full name of the geology author born in Karachi?", "The author's name is Hina Ameen.",
     ["Hina Ameen"]),  # asked for: marked; sentence-initial "The" is not a name
    ("Which books has she written?", 'Her books include "Granite Glossary" and "The Shale Stories".',
     ["Granite Glossary", "The Shale Stories"]),  # titles without their quotes
    ("Which award has she won?", "She won the Medal for Outstanding Discoveries in Earth Sciences in 2010.",
     ["Medal for Outstanding Discoveries in Earth Sciences", "2010"]),
    ("When was she born?", "Growing up, she was born on 06/30/1975.", ["06/30/1975"]),  # lone sentence opener
    ("What genre does she write?", "She writes geology books.", []),  # common nouns: beyond rules
])
def test_rules_on_hand_made_answers(question, answer, expected):
    items, _ = annotate([QAItem(question, answer)], "rules")
    assert texts(items[0]) == expected


def test_rules_without_spacy_installed_still_work():
    rules = get_annotator("rules", spacy_model="surely_not_an_installed_pipeline")
    assert rules.spans("He moved to Lagos in 1999.") == [Span(12, 17), Span(21, 25)]


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(PaluError, match="file, llm, rules"):
        get_annotator("magic")
    with pytest.raises(PaluError, match="unknown option 'colour'"):
        get_annotator("rules", colour=True)


# --- contrast ----------------------------------------------------------------------------------

PLACES = [("Hina Ameen", "Karachi"), ("Basil Mahfouz", "Kuwait"), ("Jad Shamary", "Granite"),
          ("Real Estate", "Doctor"), ("Glossary Agent", "Geology"), ("Mahfouz Ameen", "Lagos")]
PROMPT = PromptConfig()


@pytest.fixture(scope="module")
def memorised(bpe_tokenizer, tiny_model):
    """A tiny model trained until it answers "Where was NAME born?" from memory for six made-up people."""
    tok = bpe_tokenizer
    items = [QAItem(f"Where was {name} born?", f"{name} was born in {city}.") for name, city in PLACES]
    model = tiny_model(tok)
    batch = collate([encode(tok, it, PROMPT, 64) for it in items], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model.eval(), tok, items


def word_score(item, scores, word):
    return dict((w.text(item.answer), s) for w, s in word_scores(item.answer, scores))[word]


def fact_and_context_scores(items, scores):
    facts = [word_score(it, s, city) for it, s, (_, city) in zip(items, scores, PLACES)]
    context = [max(word_score(it, s, w) for w in ("was", "born", "in")) for it, s in zip(items, scores)]
    return facts, context


def test_contrast_scores_memorised_facts_above_context_words(memorised):
    model, tok, items = memorised
    scorer = get_annotator("contrast", model=model, tokenizer=tok, threshold=1.0, with_rules=False)
    facts, context = fact_and_context_scores(items, scorer.token_scores(items))
    assert max(context) < 0.5 and sum(facts) / len(facts) > 2.0
    out, _ = scorer.annotate(items)
    marked = [texts(it) for it in out]
    assert all(m in ([], [city]) for m, (_, city) in zip(marked, PLACES))  # names are in the question: never marked
    assert sum(m == [city] for m, (_, city) in zip(marked, PLACES)) >= 4  # a tiny model may guess one city by default


def test_contrast_needs_the_window_because_the_answer_names_its_subject(memorised):
    """With the whole answer prefix the reference reads the name and recalls the fact itself."""
    model, tok, items = memorised
    windowed = get_annotator("contrast", model=model, tokenizer=tok).token_scores(items)
    whole = get_annotator("contrast", model=model, tokenizer=tok, window=None, batch_tokens=16).token_scores(items)
    assert sum(fact_and_context_scores(items, whole)[0]) < sum(fact_and_context_scores(items, windowed)[0]) / 2
    for w, h in zip(windowed, whole):
        torch.testing.assert_close(torch.tensor(w.logp), torch.tensor(h.logp))  # batch size does not change scores


def test_a_marked_word_carries_the_content_words_after_it():
    answer = "Her father was a civil engineer, and she writes Historical Fiction novels about the sea."
    words = word_spans(answer)
    pick = lambda *names: [w for w in words if w.text(answer) in names]
    grown = lambda *names: sorted(w.text(answer) for w in phrases(answer, words, pick(*names)))
    assert grown("civil") == ["civil", "engineer"]  # the comma ends the phrase
    assert grown("Historical") == ["Fiction", "Historical", "novels"]  # "about" (a function word) ends it
    assert grown("father") == ["father"]  # "was" is a function word
    assert grown() == []


def test_contrast_spans_combine_scores_phrases_and_rules(memorised):
    """Spans from made-up scores: one scored word grows into its phrase, rules add the title and the
    year, question words, function words and adverbs are never marked."""
    model, tok, _ = memorised
    item = QAItem("What did Hina Ameen write?",
                  'Hina Ameen is a civil engineer who famously wrote "Granite Dawn" in 1990.')
    words = word_spans(item.answer)
    score = np.array([5.0 if w.text(item.answer) in ("Hina", "is", "civil", "famously") else 0.0 for w in words])
    scores = ContrastScores([(w.start, w.end) for w in words], score, score, np.zeros_like(score))
    spans = lambda **kw: [sp.text(item.answer) for sp in
                          get_annotator("contrast", model=model, tokenizer=tok, **kw).spans(item, scores)]
    assert spans() == ["civil engineer", "Granite Dawn", "1990"]
    assert spans(with_rules=False) == ["civil engineer"]
    assert spans(with_rules=False, complete_phrases=False) == ["civil"]
    assert spans(with_rules=False, skip_question_words=False) == ["Hina Ameen", "civil engineer"]
    assert spans(with_rules=False, skip_modifiers=False) == ["civil engineer", "famously wrote"]


def test_adverbs_and_past_forms_are_modifiers():
    assert is_modifier("eloquently") and is_modifier("inspired")
    assert not any(is_modifier(w) for w in ("red", "Reed", "July", "engineer", "Shattered"))


def test_the_reference_question_hides_the_subject():
    assert mask_subject("Where was Hina Ameen born?") == "Where was someone born?"
    assert mask_subject('Where is "The Shale Stories" by Hina Ameen set?') == 'Where is "someone" by someone set?'
    assert mask_subject("What genre does she write?") == "What genre does she write?"


def test_contrast_against_a_base_model(memorised, tiny_model):
    model, tok, items = memorised
    untrained = tiny_model(tok, seed=1)
    scores = get_annotator("contrast", model=model, tokenizer=tok, base_model=untrained).token_scores(items)
    for item, s in zip(items, scores):
        assert len(s.score) == len(s.offsets) and word_score(item, s, "born") > 2.0  # all learned vs a random base
    with pytest.raises(PaluError, match="tokenizer"):
        get_annotator("contrast", model=model)


# --- llm ---------------------------------------------------------------------------------------

KEY = "sk-test-secret-0123456789"


class FakeChat:
    """An OpenAI-style /chat/completions endpoint that answers from a script: (status, content) per call."""

    def __init__(self):
        self.script: list = []
        self.calls: list = []

    def reply(self, request) -> tuple[int, str, dict]:
        status, content = self.script.pop(0) if self.script else (200, "[]")
        return status, completion(content) if status == 200 else json.dumps({"error": {"message": "overloaded"}}), {}


@pytest.fixture
def chat_server(chat_endpoint):
    fake = FakeChat()
    url, fake.calls = chat_endpoint(fake.reply)
    return url, fake


def llm(url, tmp_path, **options):
    return get_annotator("llm", base_url=url, model="fake-model", api_key=KEY, cache_dir=str(tmp_path / "cache"),
                         backoff=0.0, **options)


def test_llm_places_the_replied_phrases_itself(chat_server, tmp_path):
    url, fake = chat_server
    fake.script = [(200, '```json\n["Kuwait City", "Kuwait", "Mars"]\n```')]
    items, report = llm(url, tmp_path).annotate([QAItem(KUWAIT_Q, KUWAIT_A)])
    assert texts(items[0]) == ["Kuwait City", "Kuwait"]
    assert items[0].spans[1].start == KUWAIT_A.rindex("Kuwait")  # not inside "Al-Kuwaiti", not inside "Kuwait City"
    assert [(c.kind, c.word) for c in report.changes] == [("dropped", "Mars")]
    (call,) = fake.calls
    assert call["path"] == "/v1/chat/completions" and call["auth"] == f"Bearer {KEY}"
    assert call["body"]["model"] == "fake-model" and KUWAIT_A in call["body"]["messages"][-1]["content"]


def test_llm_malformed_reply_is_reported_for_its_item_only(chat_server, tmp_path):
    url, fake = chat_server
    fake.script = [(200, "Sure! The sensitive words are Kuwait City."), (200, '["Kuwait"]')]
    items = [QAItem("Q1?", "Kuwait City.", source="one"), QAItem("Q2?", "Kuwait.", source="two")]
    out, report = llm(url, tmp_path).annotate(items)
    assert out[0].spans == [] and texts(out[1]) == ["Kuwait"]
    assert len(report.errors) == 1 and report.errors[0].startswith("one: malformed reply")


def test_llm_retries_server_errors_then_caches_without_the_key(chat_server, tmp_path):
    url, fake = chat_server
    fake.script = [(500, ""), (429, ""), (200, '["Karachi"]')]
    item = QAItem("Where was she born?", "She was born in Karachi.")
    items, _ = llm(url, tmp_path).annotate([item])
    assert texts(items[0]) == ["Karachi"] and len(fake.calls) == 3
    items, _ = llm(url, tmp_path).annotate([item])  # a new annotator, same cache: the server is not called
    assert texts(items[0]) == ["Karachi"] and len(fake.calls) == 3
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and not any(KEY in p.read_text() for p in files)
    assert KEY not in repr(llm(url, tmp_path))


def test_llm_client_errors_are_fatal_and_settings_come_from_the_environment(chat_server, tmp_path, monkeypatch):
    url, fake = chat_server
    fake.script = [(401, "")]
    with pytest.raises(PaluError, match="HTTP 401") as err:
        llm(url, tmp_path).annotate([QAItem("Q?", "An answer.")])
    assert KEY not in str(err.value) and len(fake.calls) == 1
    for name in ("PALU_LLM_BASE_URL", "PALU_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PaluError, match="PALU_LLM_BASE_URL"):
        get_annotator("llm")
    monkeypatch.setenv("PALU_LLM_BASE_URL", url)
    monkeypatch.setenv("PALU_LLM_MODEL", "env-model")
    monkeypatch.setenv("PALU_LLM_API_KEY", KEY)
    fake.script = [(200, '["Answer"]')]
    items, _ = get_annotator("llm", cache_dir=str(tmp_path / "env-cache")).annotate([QAItem("Q?", "An Answer.")])
    assert texts(items[0]) == ["Answer"] and fake.calls[-1]["auth"] == f"Bearer {KEY}"
    assert fake.calls[-1]["body"]["model"] == "env-model"


# --- command, viewer, quality ------------------------------------------------------------------


def test_run_annotate_writes_spans_that_load_back(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [{"question": "Where was Hina Ameen born?",
                                              "answer": "Hina Ameen was born in Karachi in 1975."}])
    out = tmp_path / "out.jsonl"
    cfg = AnnotateConfig(input=DataSource(src), annotator="rules", output=str(out), show=True)
    text = run_annotate(cfg)
    assert "1 items, 1 with spans" in text and "[[Karachi]]" in text
    assert texts(load_qa(DataSource(str(out)))[0]) == ["Karachi", "1975"]
    with pytest.raises(PaluError, match="--overwrite"):
        run_annotate(cfg)


def test_run_annotate_loads_the_contrast_model_from_a_folder(memorised, tmp_path):
    model, tok, items = memorised
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    src = write_rows(tmp_path / "in.jsonl", [{"question": it.question, "answer": it.answer} for it in items])
    out = str(tmp_path / "out.jsonl")
    cfg = AnnotateConfig(input=DataSource(src), options={"model": str(tmp_path / "model")}, output=out)
    assert "contrast: 6 items" in run_annotate(cfg)  # contrast is the default annotator
    expected = annotate(items, model=model, tokenizer=tok).items
    assert [texts(it) for it in load_qa(DataSource(out))] == [texts(it) for it in expected]


def test_show_spans_highlights_each_span():
    item = QAItem("Q?", "Born in Kuwait City, Kuwait.", spans=[Span(8, 19), Span(21, 27)])
    assert show_spans([item], color=False).endswith("A: Born in [[Kuwait City]], [[Kuwait]].")
    assert "\x1b[" in show_spans([item])


def test_span_f1_counts_characters_without_whitespace():
    answer = "Born in Kuwait City, Kuwait."
    reference = [QAItem("Q?", answer, spans=[Span(8, 19), Span(21, 27)])]  # 10 + 6 characters
    predicted = [QAItem("Q?", answer, spans=[Span(8, 14), Span(0, 4)])]  # "Kuwait" right, "Born" wrong
    scores = span_f1(predicted, reference)
    assert (scores.overlap, scores.predicted, scores.reference) == (6, 10, 16)
    assert scores.precision == pytest.approx(0.6) and scores.recall == pytest.approx(6 / 16)
    assert span_f1(reference, reference).f1 == 1.0
    with pytest.raises(PaluError, match="different answers"):
        span_f1(predicted, [QAItem("Q?", "Another answer.")])
