"""Unlearning: forget examples paired with random retain examples, the reference computed once,
and a registered method's loss, through the shared training loop.

A method may ask for more through its ``prepare`` hook (:class:`palu.methods.common.Setup`):
extra per-forget-example sequences (IdkDPO's refusals), reference states at another layer on
retain examples (RMU), a subset of trainable parameters (RMU) or per-run state (PDU's multiplier).
All of it is built here, once.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from pathlib import Path

import torch

from palu.data.labels import Encoded, collate, encode_all
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem, shared_items
from palu.errors import PaluError
from palu.methods import get_method
from palu.methods.common import Head, Setup
from palu.models import in_dtype
from palu.train.loop import EpochData, TrainConfig, train
from palu.train.reference import reference_hidden

log = logging.getLogger(__name__)


def paired_collate(pad_id: int):
    """Batch rows ``{side: (example, {key: reference states})}`` into ``{side: tensors + references}``."""

    def fn(rows):
        out = {}
        for side in rows[0]:
            examples, refs = zip(*(row[side] for row in rows))
            batch = collate(list(examples), pad_id)
            for key in refs[0]:
                batch[key] = torch.cat([r[key] for r in refs], dim=0)
            out[side] = batch
        return out

    return fn


@contextmanager
def train_only(model, names: set[str] | None):
    """Freeze every parameter not in ``names`` for the duration (None: change nothing)."""
    if names is None:
        yield
        return
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(before[name] and name in names)
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


def unlearn(model, tokenizer, forget: list[QAItem], retain: list[QAItem], method: str, method_cfg,
            train_cfg: TrainConfig, prompt: PromptConfig, out_dir: Path, resume: bool = False,
            on_epoch_end=None, progress: bool = True) -> list[dict]:
    """Unlearn ``forget`` from ``model`` in place with the named method; returns the per-epoch history.

    Forget and retain items may be documents: each of their windows is then one example."""
    if not forget or not retain:
        raise PaluError("unlearning needs a non-empty forget set and a non-empty retain set.")
    shared = shared_items(forget, retain)
    if shared:
        log.warning("%d of %d forget items are also in the retain set (first: %s); unlearning pulls them both ways: "
                    "check the forget and retain splits.", len(shared), len(forget),
                    shared[0].source or shared[0].question)
    spec = get_method(method)
    unmarked = [item.source for item in forget if not item.spans]
    if unmarked and spec.uses_spans:
        log.warning("%d of %d forget items have no sensitive span (first: %s); %s gets no forget term on them.",
                    len(unmarked), len(forget), unmarked[0], spec.name)
    in_dtype(model, train_cfg.dtype)  # before the reference is taken: it is held in the weights' type
    setup = spec.prepare(method_cfg, model, forget, train_cfg.seed) if spec.prepare else Setup()
    if setup.extra and any(item.is_document for item in forget):
        raise PaluError(f"{spec.name} pairs each forget answer with sequences built from its question "
                        f"({', '.join(setup.extra)}), and documents have no question; unlearn documents with "
                        "another method (npo, simnpo, graddiff, palu, ...).")
    pad = tokenizer.pad_token_id

    encode = lambda items: encode_all(tokenizer, items, prompt, train_cfg.max_length)
    per_forget = {"forget": encode(forget), **{name: encode(items) for name, items in setup.extra.items()}}
    retain_enc = encode(retain)
    retain_indices = dict(setup.retain_references)
    if getattr(method_cfg, "needs_retain_reference", False):
        retain_indices["ref_hidden"] = -1
    indices = {**{side: {"ref_hidden": -1} for side in per_forget}, "retain": retain_indices}
    refs: dict[str, list[dict]] = {}
    ref_head = None

    def references(model) -> None:
        """The frozen reference, from the model as training runs it (on its device, sharded or not): its
        output layer and, per example, ``{key: reference hidden states at hidden_states[index]}``."""
        nonlocal ref_head
        ref_head = Head.of(model).frozen_copy()
        for side, enc in {**per_forget, "retain": retain_enc}.items():
            states = {key: reference_hidden(model, enc, pad, train_cfg.batch_size, progress, index)
                      for key, index in indices[side].items()}
            refs[side] = [{key: values[i] for key, values in states.items()} for i in range(len(enc))]

    def fetch(i: int, epoch: int) -> dict[str, tuple[Encoded, dict]]:
        j = random.Random(f"{train_cfg.seed}:{epoch}:{i}").randrange(len(retain_enc))
        row = {side: (enc[i], refs[side][i]) for side, enc in per_forget.items()}
        row["retain"] = (retain_enc[j], refs["retain"][j])
        return row

    data = EpochData(len(per_forget["forget"]), fetch, train_cfg.seed)  # a document gives several windows

    def step(model, batch):
        nonlocal ref_head
        ref_head = ref_head.to(batch["forget"]["input_ids"].device)
        return spec.loss(model, batch, ref_head, method_cfg, **setup.state)

    with train_only(model, setup.trainable):
        stateful = tuple(v for v in setup.state.values() if hasattr(v, "load_state_dict"))
        return train(model, data, paired_collate(pad), step, train_cfg, out_dir, resume, on_epoch_end, progress,
                     stateful, on_prepared=references)
