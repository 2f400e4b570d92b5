"""Character spans to token classes, and prefix selection against a plain loop."""

from __future__ import annotations

import pytest
import torch

from palu.data.labels import ORDINARY, PROMPT, SENSITIVE, collate, encode, select_prefix
from palu.data.prompts import PromptConfig, answer_ids_and_offsets, prompt_ids
from palu.data.qa import QAItem, Span
from palu.errors import PaluError

TOKENIZERS = ["bpe_tokenizer", "chat_tokenizer"]


def span_of(answer: str, word: str) -> Span:
    start = answer.index(word)
    return Span(start, start + len(word))


def sensitive_text(tok, enc, answer):
    """The answer characters covered by the tokens marked sensitive."""
    ids, offsets = answer_ids_and_offsets(tok, answer)
    n_prompt = enc.token_class.index(next(c for c in enc.token_class if c != PROMPT))
    classes = enc.token_class[n_prompt : n_prompt + len(ids)]
    return [answer[s:e].strip() for (s, e), c in zip(offsets, classes) if c == SENSITIVE]


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_layout_prompt_answer_eos(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    item = QAItem("In which genre does Hina Ameen primarily write?", "Hina Ameen primarily contributes to the geology genre.")
    item.spans = [span_of(item.answer, "geology")]
    enc = encode(tok, item, PromptConfig(), max_length=128)
    p = prompt_ids(tok, item.question, PromptConfig())
    assert enc.input_ids[: len(p)] == p
    assert enc.input_ids[-1] == tok.eos_token_id and enc.token_class[-1] == ORDINARY
    assert all(c == PROMPT for c in enc.token_class[: len(p)])
    assert all(label == -100 for label in enc.labels[: len(p)])
    assert enc.labels[len(p):] == enc.input_ids[len(p):]
    assert tok.decode(enc.input_ids[len(p):-1]).strip() == item.answer
    assert "".join(sensitive_text(tok, enc, item.answer)).replace("▁", "") == "geology"


def test_chat_template_is_used(chat_tokenizer, bpe_tokenizer):
    cfg = PromptConfig(system_prompt="Be brief.")
    text = chat_tokenizer.decode(prompt_ids(chat_tokenizer, "Where was he born?", cfg))
    assert "<|system|>" in text and "<|assistant|>" in text
    plain = bpe_tokenizer.decode(prompt_ids(bpe_tokenizer, "Where was he born?", cfg), skip_special_tokens=True)
    assert plain == "Question: Where was he born?\nAnswer: "
    never = chat_tokenizer.decode(prompt_ids(chat_tokenizer, "Q?", PromptConfig(chat_template="never")))
    assert "<|assistant|>" not in never


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_span_at_the_very_end(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    item = QAItem("What professions do Hina Ameen's parents hold?", "Her mother is a Doctor")
    item.spans = [span_of(item.answer, "Doctor")]
    enc = encode(tok, item, PromptConfig(), max_length=128)
    assert enc.token_class[-1] == ORDINARY  # EOS
    assert enc.token_class[-2] == SENSITIVE
    assert enc.span_id[-2] == 0


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_span_covering_part_of_a_token(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    answer = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."
    ids, offsets = answer_ids_and_offsets(tok, answer)
    # pick a multi-character token and mark only its second character
    k, (s, e) = next((k, o) for k, o in enumerate(offsets) if answer[o[0]:o[1]].strip().isalpha()
                     and len(answer[o[0]:o[1]].strip()) > 2)
    inner = s + (len(answer[s:e]) - len(answer[s:e].lstrip())) + 1
    item = QAItem("Where was Basil Mahfouz Al-Kuwaiti born?", answer, spans=[Span(inner, inner + 1)])
    enc = encode(tok, item, PromptConfig(), max_length=128)
    n_prompt = len(prompt_ids(tok, item.question, PromptConfig()))
    classes = enc.token_class[n_prompt:]
    assert classes[k] == SENSITIVE
    assert sum(c == SENSITIVE for c in classes) == 1


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_answer_without_span(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    item = QAItem("Which book of hers is the most loved?", "Her most-loved book is Granite Glossary.")
    enc = encode(tok, item, PromptConfig(), max_length=128)
    assert SENSITIVE not in enc.token_class
    assert all(s == -1 for s in enc.span_id)


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_every_offset_range_is_inside_the_answer(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    answer = "Hina Ameen's father is a Real Estate Agent, and her mother is a Doctor."
    ids, offsets = answer_ids_and_offsets(tok, answer)
    assert all(0 <= s <= e <= len(answer) for s, e in offsets)
    covered = set().union(*(range(s, e) for s, e in offsets))
    assert covered >= {i for i, ch in enumerate(answer) if not ch.isspace()}


def test_truncation_cuts_the_answer_end_and_flags_it(bpe_tokenizer):
    item = QAItem("Where was Basil Mahfouz Al-Kuwaiti born?", "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.")
    n_prompt = len(prompt_ids(bpe_tokenizer, item.question, PromptConfig()))
    enc = encode(bpe_tokenizer, item, PromptConfig(), max_length=n_prompt + 3)
    assert enc.truncated and len(enc.input_ids) == n_prompt + 3
    with pytest.raises(PaluError, match="max_length"):
        encode(bpe_tokenizer, item, PromptConfig(), max_length=n_prompt)


def test_collate_pads_right(bpe_tokenizer):
    a = encode(bpe_tokenizer, QAItem("Q?", "A short one."), PromptConfig(), 64)
    b = encode(bpe_tokenizer, QAItem("Q?", "A much longer answer than the other one."), PromptConfig(), 64)
    batch = collate([a, b], pad_id=bpe_tokenizer.pad_token_id)
    n = len(a.input_ids)
    assert batch["input_ids"].shape == (2, len(b.input_ids))
    assert batch["attention_mask"][0, n:].sum() == 0 and batch["attention_mask"][0, :n].all()
    assert (batch["labels"][0, n:] == -100).all() and (batch["token_class"][0, n:] == PROMPT).all()


def slow_prefix(classes: list[int], spans: list[int], n: int, split: bool) -> list[bool]:
    out, run_len, prev_span = [], 0, None
    for c, s in zip(classes, spans):
        if c != SENSITIVE:
            run_len, prev_span = 0, None
            out.append(False)
            continue
        if split and prev_span is not None and s != prev_span:
            run_len = 0
        run_len += 1
        prev_span = s
        out.append(n < 0 or run_len <= n)
    return out


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("n", [-1, 1, 2, 3])
def test_select_prefix_matches_a_loop(n, split):
    gen = torch.Generator().manual_seed(n + 10 * split)
    classes = torch.randint(0, 3, (6, 40), generator=gen)
    spans = torch.where(classes == SENSITIVE, torch.randint(0, 3, (6, 40), generator=gen), -1)
    got = select_prefix(classes, spans, n, split)
    want = torch.tensor([slow_prefix(c, s, n, split) for c, s in zip(classes.tolist(), spans.tolist())])
    assert torch.equal(got, want)


def test_official_grouping_merges_adjacent_spans():
    classes = torch.tensor([[ORDINARY, SENSITIVE, SENSITIVE, SENSITIVE, SENSITIVE, ORDINARY, SENSITIVE, SENSITIVE]])
    spans = torch.tensor([[-1, 0, 0, 1, 1, -1, 2, 2]])
    assert select_prefix(classes, spans, 1, False).tolist() == [[False, True, False, False, False, False, True, False]]
    assert select_prefix(classes, spans, 1, True).tolist() == [[False, True, False, True, False, False, True, False]]
