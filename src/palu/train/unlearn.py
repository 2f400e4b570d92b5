"""Unlearning: forget examples paired with random retain examples, the reference computed once,
and a registered method's loss, through the shared training loop."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from palu.data.labels import collate, encode_all
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.methods import get_method
from palu.methods.common import Head
from palu.train.loop import EpochData, TrainConfig, train
from palu.train.reference import reference_hidden

log = logging.getLogger(__name__)


def paired_collate(pad_id: int):
    """Batch (forget, forget_ref, retain, retain_ref) tuples into {"forget": ..., "retain": ...}."""

    def side(examples, refs):
        batch = collate(examples, pad_id)
        if refs[0] is not None:
            batch["ref_hidden"] = torch.cat(refs, dim=0)
        return batch

    def fn(rows):
        f, fr, r, rr = zip(*rows)
        return {"forget": side(f, fr), "retain": side(r, rr)}

    return fn


def unlearn(model, tokenizer, forget: list[QAItem], retain: list[QAItem], method: str, method_cfg,
            train_cfg: TrainConfig, prompt: PromptConfig, out_dir: Path, resume: bool = False,
            on_epoch_end=None, progress: bool = True) -> list[dict]:
    """Unlearn ``forget`` from ``model`` in place with the named method; returns the per-epoch history."""
    if not forget or not retain:
        raise PaluError("unlearning needs a non-empty forget set and a non-empty retain set.")
    spec = get_method(method)
    unmarked = [item.source for item in forget if not item.spans]
    if unmarked:
        log.warning("%d of %d forget items have no sensitive span (first: %s); they only get the ordinary-token "
                    "constraint.", len(unmarked), len(forget), unmarked[0])
    forget_enc = encode_all(tokenizer, forget, prompt, train_cfg.max_length)
    retain_enc = encode_all(tokenizer, retain, prompt, train_cfg.max_length)
    ref_head = Head.of(model).frozen_copy()
    pad = tokenizer.pad_token_id
    forget_ref = reference_hidden(model, forget_enc, pad, train_cfg.batch_size, progress)
    needs_retain = getattr(method_cfg, "needs_retain_reference", False)
    retain_ref = reference_hidden(model, retain_enc, pad, train_cfg.batch_size, progress) if needs_retain else None

    def fetch(i: int, epoch: int):
        j = random.Random(f"{train_cfg.seed}:{epoch}:{i}").randrange(len(retain_enc))
        return forget_enc[i], forget_ref[i], retain_enc[j], None if retain_ref is None else retain_ref[j]

    data = EpochData(len(forget_enc), fetch, train_cfg.seed)

    def step(model, batch):
        nonlocal ref_head
        ref_head = ref_head.to(batch["forget"]["input_ids"].device)
        return spec.loss(model, batch, ref_head, method_cfg)

    return train(model, data, paired_collate(pad), step, train_cfg, out_dir, resume, on_epoch_end, progress)
