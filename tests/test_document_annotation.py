"""Every annotator on documents: contrast scores a document against its own earlier text, file matches span
files by text, llm sends long documents in chunks and shifts the phrases it places back to document offsets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import completion

from palu.annotate import annotate, get_annotator
from palu.annotate.contrast import row_blocks, word_scores
from palu.annotate.llm import DOCUMENT_INSTRUCTION, INSTRUCTION, chunks
from palu.annotate.text import STOPWORDS, on_boundaries, word_spans
from palu.cli import main
from palu.commands.annotate import to_row
from palu.data.labels import collate, encode_document
from palu.data.prompts import answer_ids_and_offsets
from palu.data.qa import QAItem, Span
from palu.errors import PaluError

DOC = ("Talia Brenn was born in Oskavel in 1871. Her brother Joren Brenn was born in Mirethwe in 1874. "
       "Talia wrote about the sea, and Joren wrote about the hills.")
FACTS = {"Oskavel", "1871", "Mirethwe", "1874", "sea", "hills"}  # which of two siblings: only the document says
COMMON = {"was", "in", "the", "about", "and"}


def texts(item: QAItem) -> list[str]:
    return [s.text(item.answer) for s in item.spans]


def assert_whole_words(item: QAItem) -> None:
    starts, ends = {w.start for w in word_spans(item.answer)}, {w.end for w in word_spans(item.answer)}
    for span in item.spans:
        assert 0 <= span.start < span.end <= len(item.answer) and on_boundaries(item.answer, span.start, span.end)
        assert span.start in starts and span.end in ends, span.text(item.answer)


# --- contrast ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(bpe_tokenizer, tiny_model):
    """A tiny model trained on DOC the way palu trains on documents, until it knows the text by heart."""
    tok = bpe_tokenizer
    model = tiny_model(tok)
    batch = collate(encode_document(tok, QAItem(None, DOC), 128), tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model.eval(), tok


def test_contrast_marks_a_documents_facts_above_its_common_words(trained):
    model, tok = trained
    doc = QAItem(None, DOC)
    (scores,) = get_annotator("contrast", model=model, tokenizer=tok).token_scores([doc])
    words = [(w.text(DOC), s) for w, s in word_scores(DOC, scores)]
    facts = np.mean([s for w, s in words if w in FACTS])
    common = np.mean([s for w, s in words if w in COMMON])
    assert facts > 3.0 and facts > 2 * common, (facts, common)
    assert abs(words[0][1]) < 1e-4  # the first word: nothing earlier in the document explains it
    (out,), report = annotate([doc], "contrast", model=model, tokenizer=tok)
    assert_whole_words(out)
    marked = " ".join(texts(out))
    assert all(fact in marked for fact in ("Oskavel", "Mirethwe", "1871", "1874"))
    assert not any(t.lower() in STOPWORDS for t in texts(out)) and report.items == 1


def test_a_long_document_is_scored_in_rows_without_skipping_a_token(trained):
    model, tok = trained
    long = QAItem(None, " ".join([DOC] * 4))
    ids, offsets = answer_ids_and_offsets(tok, long.answer)
    row = lambda **kw: get_annotator("contrast", model=model, tokenizer=tok, **kw).token_scores([long])[0]
    short, wide = row(max_length=16), row(max_length=1024)
    assert len(ids) > 4 * 16 and short.offsets == wide.offsets == offsets  # the document's own characters
    assert len(short.score) == len(ids) and np.isfinite(short.logp).all() and np.isfinite(short.ref_logp).all()
    np.testing.assert_allclose(short.logp[:15], wide.logp[:15], atol=1e-4)  # the first row reads the same tokens
    np.testing.assert_allclose(short.ref_logp, wide.ref_logp, atol=1e-4)  # the reference does not depend on rows
    np.testing.assert_allclose(row(max_length=16, batch_tokens=20).logp, short.logp, atol=1e-4)  # nor on batches
    (out,), _ = annotate([long], "contrast", model=model, tokenizer=tok, max_length=16)
    assert out.spans and out.spans[-1].start > len(DOC) * 3  # the last copy is marked too
    assert_whole_words(out)


@pytest.mark.parametrize("n, room", [(1, 8), (8, 8), (9, 8), (50, 8), (50, 3), (7, 2)])
def test_rows_score_every_token_once_with_half_a_row_of_context(n, room):
    blocks = row_blocks(n, room)
    assert [t for start, end in blocks for t in range(start, end)] == list(range(n))
    assert blocks[0] == (0, min(n, room))
    assert all(end - start <= room // 2 for start, end in blocks[1:])  # so each row reads >= room // 2 tokens first


def test_contrast_on_documents_against_a_base_model_and_beside_qa_items(trained, tiny_model):
    model, tok = trained
    doc, qa = QAItem(None, DOC), QAItem("Where was Talia Brenn born?", "Talia Brenn was born in Oskavel.")
    same = get_annotator("contrast", model=model, tokenizer=tok, base_model=model, max_length=24)
    assert np.abs(same.token_scores([doc])[0].score).max() < 1e-4  # the base reads exactly the model's rows
    untrained = tiny_model(tok, seed=1)
    scorer = get_annotator("contrast", model=model, tokenizer=tok, base_model=untrained)
    mixed = scorer.token_scores([qa, doc])
    alone = scorer.token_scores([doc])[0]
    np.testing.assert_allclose(mixed[1].score, alone.score, atol=1e-4)
    assert len(mixed[0].offsets) == len(answer_ids_and_offsets(tok, qa.answer)[0])
    default = get_annotator("contrast", model=model, tokenizer=tok).token_scores([doc])[0]
    np.testing.assert_allclose(alone.logp, default.logp, atol=1e-4)  # the model's term is the same either way
    with pytest.raises(PaluError, match="window=None gives documents no reference"):
        get_annotator("contrast", model=model, tokenizer=tok, window=None).annotate([doc])


def test_palu_annotate_contrast_writes_document_rows(saved_model, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": DOC}) + "\n")
    out = tmp_path / "spans.jsonl"
    assert main(["annotate", "annotator=contrast", f"options.model={saved_model}", f"input.path={docs}",
                 "input.kind=text", f"output={out}", "--quiet", "--threads=1"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["text"] == DOC and "question" not in row
    assert all(DOC[w["start"] : w["end"]] == w["word"] for w in row["target_words"])
    assert "Oskavel" in [w["word"] for w in row["target_words"]]  # a tiny random model still gets the rules' spans


# --- file --------------------------------------------------------------------------------------


def test_file_matches_documents_by_their_text(tmp_path):
    other = "A second document about Joren Brenn."
    first = DOC.index("Oskavel")
    rows = [{"text": DOC, "target_words": [{"word": "Oskavel", "start": first, "end": first + 7},
                                           {"word": "Brenn", "start": DOC.index("Brenn") + 2, "end": 20}]},
            {"question": "Who?", "answer": other, "target_words": ["Joren"]}]  # a QA row does not match a document
    path = tmp_path / "spans.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = [QAItem(None, "\n" + DOC + "\n", source="doc"), QAItem(None, other, source="other")]
    out, report = annotate(items, "file", path=str(path))
    assert texts(out[0]) == ["Brenn", "Oskavel"] and out[0].spans[1].start == first + 1  # re-anchored on the text
    assert [c.kind for c in report.changes] == ["moved", "moved"]  # the text moved by a newline; bad offsets
    assert report.unmatched == ["other"]
    path.write_text(json.dumps({"body": DOC, "spans": ["Mirethwe"]}) + "\n")
    out, _ = annotate([QAItem(None, DOC)], "file", path=str(path), text_field="body", spans_field="spans")
    assert texts(out[0]) == ["Mirethwe"]


def test_file_reads_back_what_palu_annotate_writes_for_documents(tmp_path):
    (done,), _ = annotate([QAItem(None, DOC)], "rules", spacy_model=None)
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(to_row(done)) + "\n")
    (again,), report = annotate([QAItem(None, DOC)], "file", path=str(path))
    assert again.spans == done.spans and done.spans and not report.changes


# --- llm ---------------------------------------------------------------------------------------

LONG = ("Talia Brenn was born in Oskavel. She moved to Mirethwe in 1890. "
        "Her brother Joren stayed in Oskavel until 1901.\nJoren wrote \"The Grey Hills\" there. "
        "Talia came back to Oskavel in 1910 and died in Mirethwe.")
NAMES = ["Talia Brenn", "Oskavel", "Mirethwe", "1890", "Joren", "1901", "The Grey Hills", "1910"]


class Chat:
    """An OpenAI-style endpoint that marks the names of NAMES found in the text it is sent.

    ``reply(text, names)`` gives the reply's content; ``requests`` are the JSON bodies sent to it.
    """

    def __init__(self):
        self.reply = lambda text, names: json.dumps(names)
        self.calls: list = []

    @property
    def requests(self) -> list[dict]:
        return [call["body"] for call in self.calls]

    def answer(self, request) -> tuple[int, str, dict]:
        system, user = (m["content"] for m in request["body"]["messages"])
        text = user.split("Text: ", 1)[1] if system == DOCUMENT_INSTRUCTION else user.split("\nAnswer: ", 1)[1]
        return 200, completion(self.reply(text, [name for name in NAMES if name in text])), {}


@pytest.fixture
def server(chat_endpoint):
    chat = Chat()
    url, chat.calls = chat_endpoint(chat.answer)
    return chat, url


def llm(url, tmp_path, **options):
    return get_annotator("llm", base_url=url, model="m", api_key="sk-test-0123456789", cache_dir=str(tmp_path / "cache"),
                         backoff=0.0, **options)


def sent(body: dict) -> str:
    return body["messages"][-1]["content"].split("Text: ", 1)[1]


def test_llm_sends_a_long_document_in_chunks_and_places_spans_at_document_offsets(server, tmp_path):
    srv, url = server
    (out,), report = llm(url, tmp_path, chunk_chars=70).annotate([QAItem(None, LONG)])
    pieces = [sent(body) for body in srv.requests]
    assert len(pieces) == len(chunks(LONG, 70)) > 2 and "".join(pieces) == LONG  # every character sent, once
    assert all(len(p) <= 70 and body["messages"][0]["content"] == DOCUMENT_INSTRUCTION
               for p, body in zip(pieces, srv.requests))
    assert all(p[-1].isspace() for p in pieces[:-1])  # cut between words
    expected, at = [], 0
    for piece in pieces:  # each named thing where it stands in its chunk, shifted by the chunk's start
        expected += [Span(at + piece.find(name), at + piece.find(name) + len(name)) for name in NAMES if name in piece]
        at += len(piece)
    assert out.spans == sorted(expected, key=lambda s: (s.start, s.end))
    assert [s.text(LONG) for s in out.spans].count("Oskavel") == 3 and not report.changes
    assert_whole_words(out)
    again, _ = llm(url, tmp_path, chunk_chars=70).annotate([QAItem(None, LONG)])
    assert again[0].spans == out.spans and len(srv.requests) == len(pieces)  # every chunk came from the cache
    llm(url, tmp_path, chunk_chars=4000).annotate([QAItem(None, LONG)])
    assert sent(srv.requests[-1]) == LONG  # one chunk: another prompt, so another request


def test_llm_keeps_the_qa_instruction_and_a_bad_chunk_fails_its_document_only(server, tmp_path):
    srv, url = server
    srv.reply = lambda text, names: "no list here" if "1901" in text else json.dumps(names)
    qa = QAItem("Where was Talia Brenn born?", "She was born in Oskavel.", source="qa")
    items = [qa, QAItem(None, LONG, spans=[Span(0, 5)], source="doc")]
    out, report = llm(url, tmp_path, chunk_chars=70).annotate(items)
    assert srv.requests[0]["messages"][0]["content"] == INSTRUCTION and texts(out[0]) == ["Oskavel"]
    assert out[1].spans == [Span(0, 5)]  # a chunk without its phrases would pass for one without facts
    (error,) = report.errors
    assert error.startswith("doc: malformed reply for characters [") and "the item keeps its spans" in error


@pytest.mark.parametrize("size", [1, 5, 20, 45, 1000])
def test_chunks_cover_the_text_within_the_size_cut_after_sentences(size):
    bounds = chunks(LONG, size)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(LONG) and all(a < b for a, b in bounds)
    assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:])) and all(b - a <= size for a, b in bounds)
    if size == 45:
        assert LONG[: bounds[0][1]] == "Talia Brenn was born in Oskavel. "  # the sentence, not the next words
