"""Fine-tuning a target ("full") or retain model on QA data: answer-token NLL through the shared loop."""

from __future__ import annotations

from pathlib import Path

from palu.data.labels import collate, encode_all
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.train.loop import EpochData, TrainConfig, train


def nll_step(model, batch) -> dict:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                use_cache=False)
    return {"loss": out.loss}


def finetune(model, tokenizer, items: list[QAItem], train_cfg: TrainConfig, prompt: PromptConfig, out_dir: Path,
             resume: bool = False, on_epoch_end=None, progress: bool = True) -> list[dict]:
    """Train ``model`` in place to answer ``items``; returns the per-epoch history."""
    if not items:
        raise PaluError("fine-tuning needs at least one QA item.")
    encoded = encode_all(tokenizer, items, prompt, train_cfg.max_length)
    data = EpochData(len(encoded), lambda i, epoch: encoded[i], train_cfg.seed)
    pad = tokenizer.pad_token_id
    return train(model, data, lambda rows: collate(rows, pad), nll_step, train_cfg, out_dir, resume, on_epoch_end,
                 progress)
