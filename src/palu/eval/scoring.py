"""Model-based scoring: batched answer NLLs with per-token statistics, and greedy generation.

Answers are tokenised with ``palu.data.labels.encode`` and prompts with ``prompt_ids``, so scoring
sees exactly the tokens training used. Items are batched by length (``palu.batching``: longest
first, so an out-of-memory error shows at once) and results come back in the items' order.

Raw-text benchmarks (MUSE) and fluency need no QA template: ``generate_text`` continues plain
prompts and ``text_logprobs`` scores plain texts, on the same batching.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from palu.batching import length_batches, pad, restore_order
from palu.data.labels import IGNORE_INDEX, collate, encode
from palu.data.prompts import PromptConfig, prompt_ids
from palu.data.qa import QAItem
from palu.errors import PaluError

log = logging.getLogger(__name__)


@contextmanager
def _inference(model):
    """Eval mode and no gradients, restoring the model's mode afterwards (scoring may run mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass
class TokenScores:
    """One answer's teacher-forced statistics at the positions open-unlearning's token metrics use:
    every answer token but the last (the EOS), or the only one of a one-token answer.

    ``mu`` and ``sigma2`` (mean and variance of log p under the model's next-token distribution,
    for Min-k%++) are only computed on request: they cost two more passes over the vocabulary.
    """

    logprob: np.ndarray
    hit: np.ndarray
    mu: np.ndarray | None = None
    sigma2: np.ndarray | None = None


@dataclass
class AnswerScores:
    """Per item: the mean NLL over all answer tokens (EOS included) and the token statistics."""

    nll: np.ndarray
    tokens: list[TokenScores]

    @property
    def accuracy(self) -> np.ndarray:
        """Teacher-forced token accuracy per item (exact memorization)."""
        return np.array([t.hit.mean() for t in self.tokens])


def score_answers(model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig, answers: Sequence[str] | None = None,
                  batch_size: int = 16, max_length: int = 512, vocab_stats: bool = False,
                  progress: bool = False) -> AnswerScores:
    """Score the answers (``item.answer``, or ``answers[i]`` when given) under teacher forcing, batched."""
    if answers is not None and len(answers) != len(items):
        raise PaluError(f"answer scoring: {len(items)} items but {len(answers)} answers.")
    encs = [encode(tokenizer, item, prompt, max_length, answer=None if answers is None else answers[i])
            for i, item in enumerate(items)]
    cut = sum(e.truncated for e in encs)
    if cut:
        log.warning("%d of %d answers were cut to max_length=%d tokens before scoring.", cut, len(encs), max_length)
    results = []
    with _inference(model):
        for idx in tqdm(length_batches([len(e.input_ids) for e in encs], batch_size), desc="scoring answers",
                        disable=not progress):
            nll, tokens = _score_batch(model, collate([encs[i] for i in idx], _pad_id(tokenizer)), vocab_stats)
            results.append((idx, list(zip(nll, tokens))))
    scores = restore_order(len(encs), results)
    return AnswerScores(np.array([nll for nll, _ in scores], dtype=float), [tokens for _, tokens in scores])


def nll_and_accuracy(model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig,
                     answers: Sequence[str] | None = None, batch_size: int = 16, max_length: int = 512,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the mean NLL of the answer tokens (EOS included) and the teacher-forced token accuracy.

    Token accuracy (exact memorization) counts answer positions whose argmax equals the label,
    without the last label position (the EOS), as in open-unlearning; an answer cut to a single
    token keeps that one.
    """
    scores = score_answers(model, tokenizer, items, prompt, answers, batch_size, max_length, progress=progress)
    return scores.nll, scores.accuracy


def _score_batch(model, batch: dict[str, torch.Tensor], vocab_stats: bool) -> tuple[np.ndarray, list[TokenScores]]:
    """Mean answer NLL per row and each row's token statistics."""
    device = model.device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    labels = batch["labels"][:, 1:].to(device)
    return _answer_stats(logits[:, :-1], labels, labels != IGNORE_INDEX, vocab_stats)


def _answer_stats(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                  vocab_stats: bool) -> tuple[np.ndarray, list[TokenScores]]:
    """Per row, the mean NLL of ``targets`` where ``mask`` holds, under ``logits`` [rows, positions, V]
    (position t predicts target t), and the token statistics; only those positions reach the softmax."""
    device = logits.device
    rows = mask.nonzero(as_tuple=True)[0]
    target = targets[mask]
    logp = logits[mask].float().log_softmax(-1)
    token_logp = logp.gather(1, target[:, None]).squeeze(1)
    count = mask.sum(1)
    n_rows = targets.shape[0]
    nll = torch.zeros(n_rows, device=device).index_add_(0, rows, -token_logp) / count
    rank = mask.cumsum(1)[mask]
    keep = (rank < count[rows]) | (count[rows] == 1)
    stats = {"logprob": token_logp[keep], "hit": (logp.argmax(-1) == target)[keep]}
    if vocab_stats:
        kept = logp[keep]
        p = kept.exp()
        stats["mu"] = (p * kept).sum(-1)
        stats["sigma2"] = (p * kept.square()).sum(-1) - stats["mu"].square()
    per_row = torch.bincount(rows[keep], minlength=n_rows).tolist()  # kept positions are in row order
    split = {name: np.split(value.cpu().numpy(), np.cumsum(per_row)[:-1]) for name, value in stats.items()}
    tokens = [TokenScores(**{name: parts[r] for name, parts in split.items()}) for r in range(n_rows)]
    return nll.cpu().numpy(), tokens


def multi_answer_nll(model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig,
                     answers: Sequence[Sequence[str]], batch_size: int = 16, max_length: int = 512,
                     progress: bool = False) -> list[np.ndarray]:
    """Mean NLL of several answers per item (a paraphrase and the perturbed answers), batched.

    An item's answers share its prompt, so the prompt runs once and its key/value cache serves
    every answer: ``P + n*A`` tokens instead of ``n*(P + A)``. The tokens scored are exactly
    ``score_answers``'s; the values agree with it to float rounding (the sums run in another order).
    A batch holds at most ``batch_size`` answers (an item with more gets a batch of its own).
    Returns one array per item, ``len(answers[i])`` long.
    """
    if len(answers) != len(items):
        raise PaluError(f"multi_answer_nll: {len(items)} items but {len(answers)} answer lists.")
    encs = [[encode(tokenizer, item, prompt, max_length, answer=a) for a in group]
            for item, group in zip(items, answers)]
    cut = sum(e.truncated for group in encs for e in group)
    if cut:
        log.warning("%d of %d answers were cut to max_length=%d tokens before scoring.", cut,
                    sum(map(len, encs)), max_length)
    groups = [_prompt_and_answers(group) for group in encs]
    longest = [len(p) + max((len(a) for a in group), default=0) for p, group in groups]
    batches, current, size = [], [], 0
    for i in sorted(range(len(groups)), key=lambda i: -longest[i]):  # longest first, like length_batches
        if current and size + len(groups[i][1]) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += len(groups[i][1])
    batches += [current] if current else []
    results = []
    with _inference(model):
        for idx in tqdm(batches, desc="scoring answers", disable=not progress):
            nll = _score_shared(model, [groups[i] for i in idx if groups[i][1]], _pad_id(tokenizer))
            ends = np.cumsum([len(groups[i][1]) for i in idx], dtype=int)
            results.append((idx, [nll[end - len(groups[i][1]) : end] for i, end in zip(idx, ends)]))
    return restore_order(len(groups), results)


def _prompt_and_answers(encs: list) -> tuple[list[int], list[list[int]]]:
    """One item's encoded answers as its prompt ids and each answer's ids (EOS included)."""
    if not encs:
        return [], []
    start = encs[0].labels.count(IGNORE_INDEX)
    return encs[0].input_ids[:start], [e.input_ids[start:] for e in encs]


def _score_shared(model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> np.ndarray:
    """Mean NLL of each answer of ``groups`` (prompt, answers), answers in order: the prompts run once,
    left-padded, and their cache is copied to each of their answers, which continue it right-padded."""
    if not groups:
        return np.zeros(0)
    device = model.device
    ids, mask = (t.to(device) for t in pad([p for p, _ in groups], pad_id, left=True))
    owner = torch.tensor([r for r, (_, answers) in enumerate(groups) for _ in answers], device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0), use_cache=True,
                logits_to_keep=1)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.reorder_cache(owner)
    flat = [a for _, answers in groups for a in answers]
    a_ids, a_mask = (t.to(device) for t in pad(flat, pad_id))
    positions = mask.sum(1)[owner, None] + torch.arange(a_ids.shape[1], device=device)
    logits = model(input_ids=a_ids, attention_mask=torch.cat([mask[owner], a_mask], 1), position_ids=positions,
                   **{_cache_argument(model): cache}).logits
    predictions = torch.cat([out.logits[owner], logits[:, :-1]], 1)
    return _answer_stats(predictions, a_ids, a_mask.bool(), vocab_stats=False)[0]


def _cache_argument(model) -> str:
    """The forward argument taking a key/value cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS (what training appends) plus the model's own stop tokens (e.g. end-of-turn)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def generate(model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig, max_new_tokens: int = 200,
             batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy answers to the items' questions, decoded without special tokens and stripped."""
    prompts = [prompt_ids(tokenizer, item.question, prompt) for item in items]
    return [text.strip() for text in _generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, progress)]


def generate_text(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 128, batch_size: int = 16,
                  stop_at_newline: bool = False, progress: bool = False) -> list[str]:
    """Greedy continuations of plain-text prompts (tokenised as the tokenizer does, BOS included),
    decoded without special tokens and not stripped.

    ``stop_at_newline`` ends each continuation before its first newline in two steps: a stopping
    criterion ends a row's decoding once its text holds a newline (the other rows go on), and the
    text is then cut there, since the token that brought the newline may carry more text after it.
    """
    ids = [tokenizer(text).input_ids for text in prompts]
    texts = _generate_ids(model, tokenizer, ids, max_new_tokens, batch_size, progress, stop_at_newline)
    return [text.split("\n", 1)[0] for text in texts] if stop_at_newline else texts


class _NewlineStop(StoppingCriteria):
    """Per row: done once the tokens generated after ``start`` decode to text holding a newline."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor(["\n" in text for text in texts], device=input_ids.device)


def _generate_ids(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int,
                  progress: bool, stop_at_newline: bool = False) -> list[str]:
    """Greedy continuations of tokenised prompts, decoded without special tokens, in the prompts' order.

    Batches are left-padded by hand so every prompt ends where generation starts, whatever the
    tokenizer's padding side.
    """
    pad_id = _pad_id(tokenizer)
    stop = _stop_ids(model, tokenizer)
    results = []
    device = model.device
    with _inference(model):
        for idx in tqdm(length_batches([len(p) for p in prompts], batch_size), desc="generating",
                        disable=not progress):
            input_ids, attention_mask = pad([prompts[i] for i in idx], pad_id, left=True)
            width = input_ids.shape[1]
            criteria = StoppingCriteriaList([_NewlineStop(tokenizer, width)] if stop_at_newline else [])
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                       pad_token_id=pad_id, eos_token_id=stop, stopping_criteria=criteria)
            results.append((idx, tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)))
    return restore_order(len(prompts), results, "")


def text_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int | None = None,
                  progress: bool = False) -> list[np.ndarray]:
    """Per text, the log-probability of each token given the ones before it (the first token, BOS
    where the tokenizer adds one, is context only); texts longer than ``max_length`` tokens are cut.

    Batches are right-padded: a forward pass numbers positions from the left, so right padding
    keeps every real token where it is unpadded (generation, which follows the mask, pads left).
    """
    ids = [tokenizer(text).input_ids for text in texts]
    if max_length is not None:
        cut = sum(len(i) > max_length for i in ids)
        if cut:
            log.warning("%d of %d texts were cut to max_length=%d tokens before scoring.", cut, len(ids), max_length)
        ids = [i[:max_length] for i in ids]
    pad_id = _pad_id(tokenizer)
    scorable = [i for i in range(len(ids)) if len(ids[i]) > 1]
    results = []
    device = model.device
    with _inference(model):
        for batch in tqdm(length_batches([len(ids[i]) for i in scorable], batch_size), desc="scoring texts",
                          disable=not progress):
            idx = [scorable[b] for b in batch]
            input_ids, attention_mask = (t.to(device) for t in pad([ids[i] for i in idx], pad_id))
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            scored = attention_mask[:, 1:].bool()
            logp = logits[:, :-1][scored].float().log_softmax(-1)  # only real positions reach the (N, V) softmax
            token_logp = logp.gather(1, input_ids[:, 1:][scored][:, None]).squeeze(1).cpu().numpy()
            results.append((idx, np.split(token_logp, np.cumsum(scored.sum(1).tolist())[:-1])))
    return restore_order(len(ids), results, np.zeros(0, dtype=np.float32))  # the fill: a text with no token to score
