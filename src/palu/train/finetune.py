"""Fine-tuning a target ("full") or retain model on QA data: answer-token NLL through the shared loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from palu.data.labels import collate, encode_all
from palu.data.loaders import DataSource
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.eval.metrics import answer_prob, rouge_l
from palu.eval.scoring import generate, nll_and_accuracy
from palu.models import in_dtype
from palu.train.loop import STOP, EpochData, TrainConfig, train


@dataclass
class EarlyStop:
    """Stop fine-tuning once the model knows ``data``: its mean answer probability and ROUGE-L
    recall of greedy answers both reach the thresholds (checked from ``from_epoch`` on).

    A target model for unlearning must first know what it will forget; training on past that point
    only costs time, and fixing the epoch count instead would under- or over-train other data sizes.
    """

    data: DataSource
    prob: float = 0.9
    rouge: float = 0.9
    from_epoch: int = 1
    max_new_tokens: int = 128
    batch_size: int = 32


class StopWhenKnown:
    """The epoch hook for :class:`EarlyStop`: logs ``known_prob``/``known_rouge`` and asks to stop."""

    def __init__(self, cfg: EarlyStop, items: list[QAItem], tokenizer, prompt: PromptConfig, max_length: int):
        self.cfg, self.items, self.tokenizer, self.prompt, self.max_length = cfg, items, tokenizer, prompt, max_length

    def __call__(self, epoch: int, model) -> dict:
        if epoch < self.cfg.from_epoch:
            return {}
        nll, _ = nll_and_accuracy(model, self.tokenizer, self.items, self.prompt, batch_size=self.cfg.batch_size,
                               max_length=self.max_length)
        answers = generate(model, self.tokenizer, self.items, self.prompt, max_new_tokens=self.cfg.max_new_tokens,
                           batch_size=self.cfg.batch_size)
        prob = float(answer_prob(nll).mean())
        rouge = float(sum(rouge_l(answers, [it.answer for it in self.items], "recall")) / len(self.items))
        return {"known_prob": prob, "known_rouge": rouge, STOP: prob >= self.cfg.prob and rouge >= self.cfg.rouge}


def nll_step(model, batch) -> dict:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                use_cache=False)
    return {"loss": out.loss}


def finetune(model, tokenizer, items: list[QAItem], train_cfg: TrainConfig, prompt: PromptConfig, out_dir: Path,
             resume: bool = False, on_epoch_end=None, progress: bool = True) -> list[dict]:
    """Train ``model`` in place to answer ``items``; returns the per-epoch history."""
    if not items:
        raise PaluError("fine-tuning needs at least one QA item.")
    in_dtype(model, train_cfg.dtype)
    encoded = encode_all(tokenizer, items, prompt, train_cfg.max_length)
    data = EpochData(len(encoded), lambda i, epoch: encoded[i], train_cfg.seed)
    pad = tokenizer.pad_token_id
    return train(model, data, lambda rows: collate(rows, pad), nll_step, train_cfg, out_dir, resume, on_epoch_end,
                 progress)
