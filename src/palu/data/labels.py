"""From QA items to token tensors: token classes (prompt / sensitive / ordinary) and prefix selection.

Classes are per input token. After the causal shift, position ``t`` predicts token ``t + 1``; the
losses shift the class tensor themselves, so everything here stays aligned with ``input_ids``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from palu.data.prompts import PromptConfig, answer_ids_and_offsets, prompt_ids
from palu.data.qa import QAItem, Span
from palu.errors import PaluError

log = logging.getLogger(__name__)

PROMPT, SENSITIVE, ORDINARY = 0, 1, 2
IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised example; ``truncated`` tells the caller to count it in a warning."""

    input_ids: list[int]
    labels: list[int]
    token_class: list[int]
    span_id: list[int]
    truncated: bool = False


def token_spans(offsets: list[tuple[int, int]], spans: list[Span]) -> list[int]:
    """For each answer token, the index of the first span it overlaps, or -1.

    A token overlapping a span by even one character is sensitive (a span may cover part of a token).
    """
    out = []
    for start, end in offsets:
        hit = -1
        for k, span in enumerate(spans):
            if start < span.end and end > span.start:
                hit = k
                break
        out.append(hit)
    return out


def encode(tokenizer, item: QAItem, prompt: PromptConfig, max_length: int, answer: str | None = None,
           spans: list[Span] | None = None) -> Encoded:
    """Tokenise ``prompt + answer + EOS`` with labels and token classes.

    ``answer`` overrides the item's answer (perturbed or paraphrased answers are scored this way);
    spans then default to none. Answers longer than ``max_length`` allows are cut at the end.
    """
    if answer is None:
        answer, spans = item.answer, item.spans if spans is None else spans
    spans = spans or []
    p_ids = prompt_ids(tokenizer, item.question, prompt)
    a_ids, offsets = answer_ids_and_offsets(tokenizer, answer)
    a_span = token_spans(offsets, spans)
    a_ids, a_span = a_ids + [tokenizer.eos_token_id], a_span + [-1]
    room = max_length - len(p_ids)
    if room < 1:
        raise PaluError(
            f"{item.source or 'item'}: the prompt alone is {len(p_ids)} tokens, over max_length={max_length}; "
            "raise max_length or shorten the question."
        )
    truncated = len(a_ids) > room
    a_ids, a_span = a_ids[:room], a_span[:room]
    n_p = len(p_ids)
    return Encoded(
        input_ids=p_ids + a_ids,
        labels=[IGNORE_INDEX] * n_p + a_ids,
        token_class=[PROMPT] * n_p + [SENSITIVE if s >= 0 else ORDINARY for s in a_span],
        span_id=[-1] * n_p + a_span,
        truncated=truncated,
    )


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into batch tensors."""
    width = max(len(e.input_ids) for e in examples)

    def pad(rows, value):
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    return {
        "input_ids": pad([e.input_ids for e in examples], pad_id),
        "attention_mask": pad([[1] * len(e.input_ids) for e in examples], 0),
        "labels": pad([e.labels for e in examples], IGNORE_INDEX),
        "token_class": pad([e.token_class for e in examples], PROMPT),
        "span_id": pad([e.span_id for e in examples], -1),
    }


def select_prefix(token_class: torch.Tensor, span_id: torch.Tensor, first_n: int,
                  split_spans: bool = False) -> torch.Tensor:
    """Keep the first ``first_n`` tokens of each run of sensitive tokens (all of them if ``first_n < 0``).

    Returns a mask over tokens. Runs are maximal stretches of consecutive sensitive tokens (the
    official grouping: two spans with only a space between them form one run); with
    ``split_spans`` a new run also starts wherever the annotated span changes. Vectorised over the batch.
    """
    sensitive = token_class == SENSITIVE
    if first_n < 0:
        return sensitive
    prev_sensitive = torch.nn.functional.pad(sensitive[:, :-1], (1, 0), value=False)
    starts = sensitive & ~prev_sensitive
    if split_spans:
        prev_span = torch.nn.functional.pad(span_id[:, :-1], (1, 0), value=-1)
        starts |= sensitive & (span_id != prev_span)
    pos = torch.arange(token_class.shape[1], device=token_class.device).expand_as(token_class)
    run_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=1).values
    return sensitive & (pos - run_start < first_n)


def encode_document(tokenizer, item: QAItem, max_length: int) -> list[Encoded]:
    """A document as consecutive windows of its own tokens, each an example of at most ``max_length``.

    A window starts with the tokenizer's special prefix (BOS, for Llama tokenizers) and has no
    prompt: every document token is trained on. Windows never cross documents and do not overlap
    (MUSE trains on fixed-length blocks the same way); the last one ends with EOS. They follow the
    whole document's tokenisation, so a character span marks the same tokens in whichever window
    holds them; a span cut by a window boundary starts a new sensitive run in the next window.
    """
    head = tokenizer("", add_special_tokens=True)["input_ids"]
    ids, offsets = answer_ids_and_offsets(tokenizer, item.answer)
    spans = token_spans(offsets, item.spans)
    ids, spans = ids + [tokenizer.eos_token_id], spans + [-1]
    room = max_length - len(head)
    if room < 2:
        raise PaluError(f"max_length={max_length} leaves no room for a document window; raise it.")
    windows = []
    for start in range(0, len(ids), room):
        chunk, chunk_spans = ids[start:start + room], spans[start:start + room]
        windows.append(Encoded(input_ids=head + chunk, labels=[IGNORE_INDEX] * len(head) + chunk,
                               token_class=[PROMPT] * len(head) + [SENSITIVE if s >= 0 else ORDINARY
                                                                   for s in chunk_spans],
                               span_id=[-1] * len(head) + chunk_spans))
    return windows


def encode_all(tokenizer, items: list[QAItem], prompt: PromptConfig, max_length: int) -> list[Encoded]:
    """Encode many items, a document as its windows (so there may be more examples than items);
    cutting over-long answers is reported once, with a count."""
    if any(item.is_document for item in items):
        return [e for item in items for e in (encode_document(tokenizer, item, max_length) if item.is_document
                                              else [encode(tokenizer, item, prompt, max_length)])]
    encoded = [encode(tokenizer, item, prompt, max_length) for item in items]
    cut = [item.source for item, e in zip(items, encoded) if e.truncated]
    if cut:
        log.warning("%d of %d examples are longer than max_length=%d and were cut at the end (first: %s); "
                    "raise max_length to keep them whole.", len(cut), len(items), max_length, cut[0])
    return encoded
