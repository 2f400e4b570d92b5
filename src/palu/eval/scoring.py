"""Model-based scoring: batched answer NLLs with per-token statistics, and greedy generation.

Answers are tokenised with ``palu.data.labels.encode`` and prompts with ``prompt_ids``, so scoring
sees exactly the tokens training used. Items are batched by length (``palu.batching``: longest
first, so an out-of-memory error shows at once) and results come back in the items' order.

Raw-text benchmarks (MUSE) and fluency need no QA template: ``generate_text`` continues plain
prompts and ``text_logprobs`` scores plain texts, on the same batching.
"""

from __future__ import annotations

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
    """Mean answer NLL per row and each row's token statistics; only answer positions reach the (N, V) softmax."""
    device = model.device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    labels = batch["labels"][:, 1:].to(device)
    mask = labels != IGNORE_INDEX
    rows = mask.nonzero(as_tuple=True)[0]
    target = labels[mask]
    logp = logits[:, :-1][mask].float().log_softmax(-1)
    token_logp = logp.gather(1, target[:, None]).squeeze(1)
    count = mask.sum(1)
    n_rows = labels.shape[0]
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
    """Mean NLL of several answers per item (e.g. perturbed answers), scored in one batched call.

    Returns one array per item, ``len(answers[i])`` long.
    """
    if len(answers) != len(items):
        raise PaluError(f"multi_answer_nll: {len(items)} items but {len(answers)} answer lists.")
    flat_items = [item for item, group in zip(items, answers) for _ in group]
    flat_answers = [a for group in answers for a in group]
    nll = score_answers(model, tokenizer, flat_items, prompt, answers=flat_answers, batch_size=batch_size,
                        max_length=max_length, progress=progress).nll
    ends = np.cumsum([len(group) for group in answers], dtype=int)
    return [nll[end - len(group) : end] for group, end in zip(answers, ends)]


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
