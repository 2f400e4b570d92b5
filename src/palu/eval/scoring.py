"""Model-based scoring: batched answer NLLs with per-token statistics, and greedy generation.

Answers are tokenised with ``palu.data.labels.encode`` and prompts with ``prompt_ids``, so scoring
sees exactly the tokens training used. Items are batched by length (longest first, so an
out-of-memory error shows at once) and results come back in the items' order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

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


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


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
    nll = np.zeros(len(encs))
    tokens: list[TokenScores | None] = [None] * len(encs)
    batches = _length_batches([len(e.input_ids) for e in encs], batch_size)
    with _inference(model):
        for idx in tqdm(batches, desc="scoring answers", disable=not progress):
            batch = collate([encs[i] for i in idx], _pad_id(tokenizer))
            nll[idx], batch_tokens = _score_batch(model, batch, vocab_stats)
            for i, t in zip(idx, batch_tokens):
                tokens[i] = t
    return AnswerScores(nll, tokens)


def answer_nll(model, tokenizer, items: Sequence[QAItem], prompt: PromptConfig, answers: Sequence[str] | None = None,
               batch_size: int = 16, max_length: int = 512, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
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
    """Greedy answers to the items' questions, decoded without special tokens and stripped.

    Batches are left-padded by hand so every prompt ends where generation starts, whatever the
    tokenizer's padding side.
    """
    prompts = [prompt_ids(tokenizer, item.question, prompt) for item in items]
    pad = _pad_id(tokenizer)
    stop = _stop_ids(model, tokenizer)
    out = [""] * len(items)
    device = model.device
    with _inference(model):
        for idx in tqdm(_length_batches([len(p) for p in prompts], batch_size), desc="generating",
                        disable=not progress):
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
            attention_mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx],
                                          device=device)
            generated = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                       pad_token_id=pad, eos_token_id=stop)
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                out[i] = text.strip()
    return out
