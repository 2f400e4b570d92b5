"""The one training loop: accelerate, AdamW, warm-up then decay, accumulation, per-epoch hook,
a checkpoint each epoch and resume. Fine-tuning and every unlearning method run through it."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pickle
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from safetensors import SafetensorError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from palu.config import require
from palu.errors import PaluError
from palu.io import read_json, write_json
from palu.runs import CHECKPOINT, CHECKPOINT_STATE, LOGS, saved_config
from palu.sharding import apply_accelerate_config, release

STOP = "stopped_early"  # an epoch hook returning {STOP: True} ends training after that epoch


@dataclass
class TrainConfig:
    """Optimisation settings shared by fine-tuning and unlearning.

    Attributes:
        epochs: passes over the (forget) data.
        lr: peak learning rate of AdamW.
        batch_size: examples per process and step (for unlearning: forget examples, each paired
            with one retain example).
        grad_accum: steps whose gradients are summed before an update.
        warmup_epochs: linear warm-up length in epochs (official PALU recipe: 1).
        schedule: decay after warm-up: "linear" (official), "cosine" or "constant".
        weight_decay: AdamW weight decay (official: 0.01).
        max_grad_norm: gradient clipping (0 disables it).
        max_length: longest tokenised example; longer answers are cut at the end, with a warning.
        bf16: bf16 autocast: "auto" (where the device supports bf16, and always with bfloat16 weights),
            "true" or "false".
        dtype: the type of the weights, their gradients and AdamW's states: "float32" (float32 master
            weights; the computation is bf16 under autocast) or "bfloat16" (everything in bf16, as the
            official PALU code trains: half the memory for weights, gradients and optimizer states, but
            an update smaller than bf16's precision of a weight is lost). The model is loaded in it.
        gradient_checkpointing: trade compute for activation memory.
        seed: seeds initialisation of the data order, the forget/retain pairing and dropout.
        report_to: an experiment tracker (through accelerate) that receives every loss term each
            ``log_every`` steps, each epoch's record (losses and evaluation metrics) and the run's
            config as hyper-parameters, under the output folder's name; "none" sends nothing.
            TensorBoard writes to ``<output_dir>/logs``; the others use their own settings.
        log_every: optimiser steps between two logs of the loss terms to the tracker.
    """

    epochs: int = 5
    lr: float = 1e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_epochs: float = 1.0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 512
    bf16: str = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False
    seed: int = 0
    report_to: Literal["none", "tensorboard", "wandb", "mlflow", "trackio"] = "none"
    log_every: int = 10

    def __post_init__(self) -> None:
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise PaluError(f"train.bf16 must be auto, true or false, not {self.bf16!r}.")
        if self.dtype == "bfloat16" and str(self.bf16).lower() == "false":
            raise PaluError("train.dtype=bfloat16 computes in bf16, so train.bf16=false cannot hold: leave train.bf16 "
                            "at auto, or set train.dtype=float32 to compute in float32.")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise PaluError("train.epochs, train.batch_size and train.grad_accum must be at least 1.")
        require(self.lr > 0, "lr", "a positive number", self.lr)
        for name in ("warmup_epochs", "weight_decay", "max_grad_norm"):
            require(getattr(self, name) >= 0, name, "zero or more", getattr(self, name))
        require(self.max_length >= 2, "max_length", "at least 2 tokens", self.max_length)
        require(self.log_every >= 1, "log_every", "at least 1", self.log_every)


class EpochData(Dataset):
    """Examples in a fresh seeded order each epoch, so a resumed run sees exactly the same batches.

    ``fetch(index, epoch)`` builds one example; shuffling lives here rather than in a sampler so
    that accelerate can shard the (sequential) loader across processes deterministically.
    """

    def __init__(self, size: int, fetch: Callable[[int, int], object], seed: int):
        self.size, self.fetch, self.seed = size, fetch, seed
        self.use_epoch(0)

    def use_epoch(self, epoch: int) -> None:
        """Fix the order (and pairing) of ``epoch``; not named set_epoch, which accelerate calls itself."""
        self.epoch = epoch
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.order = torch.randperm(self.size, generator=gen).tolist()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        return self.fetch(self.order[i], self.epoch)


def mixed_precision(cfg: TrainConfig) -> str:
    """bf16 autocast where it helps: CUDA with bf16 support, a CPU with native bf16 instructions, or bf16
    weights on any device (they compute in bf16 anyway; autocast keeps softmax and losses in float32)."""
    setting = str(cfg.bf16).lower()
    if setting != "auto":
        return "bf16" if setting == "true" else "no"
    if cfg.dtype == "bfloat16":
        return "bf16"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else "no"


def _cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text() or "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def train(model, data: EpochData, collate: Callable, step: Callable, cfg: TrainConfig, out_dir: Path,
          resume: bool = False, on_epoch_end: Callable | None = None, progress: bool = True,
          stateful: tuple = (), on_prepared: Callable | None = None) -> list[dict]:
    """Optimise ``step(model, batch) -> {"loss": ..., other logged terms}`` over ``data``.

    After every epoch: ``on_epoch_end(epoch, model)`` may return metrics to log (with ``STOP: True``
    to end training early), then a checkpoint (model, optimizer, scheduler, RNG, history) replaces
    the previous one in ``out_dir/checkpoint``.
    Returns the per-epoch history (mean of each logged term, plus the hook's metrics).
    ``stateful`` objects (with ``state_dict``/``load_state_dict``) are checkpointed with the model; those
    with ``after_update()`` are called after each optimizer update (PDU's dual step).
    ``on_prepared(model)`` runs once the model is on its device (and sharded, with an FSDP2 or ZeRO-3
    config), before any update or resumed state: where a frozen reference is computed.
    """
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:  # accelerate would only warn
        raise PaluError(f"train.report_to={cfg.report_to} needs the {cfg.report_to} package: "
                        f"pip install {cfg.report_to} (or set train.report_to=none).")
    set_seed(cfg.seed)
    # each run sets up accelerate afresh (other precisions, a sharding config applied again); the process group stays
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mixed_precision(cfg),
                              cpu=not torch.accelerator.is_available(),  # cpu: several CPU processes use gloo
                              log_with=None if cfg.report_to == "none" else cfg.report_to,
                              project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                                  logging_dir=str(Path(out_dir) / LOGS)))
    apply_accelerate_config(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # it clips in its own step; "auto": max_grad_norm
        accelerator.state.deepspeed_plugin.fill_match("gradient_clipping", must_match=False,
                                                      gradient_clipping=cfg.max_grad_norm)
    if cfg.report_to != "none":
        accelerator.init_trackers(Path(out_dir).resolve().name, config=hyperparameters(out_dir, cfg))
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # counted as on one process: accelerate steps a prepared scheduler once per process per update
    updates_per_epoch = math.ceil(math.ceil(len(data) / cfg.batch_size) / cfg.grad_accum)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule, optimizer,
        num_warmup_steps=round(cfg.warmup_epochs * updates_per_epoch),
        num_training_steps=cfg.epochs * updates_per_epoch,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    params = [p for p in model.parameters() if p.requires_grad]  # sharding replaces the parameters
    if on_prepared is not None:
        on_prepared(accelerator.unwrap_model(model))
        release(model)
    if stateful:
        accelerator.register_for_checkpointing(*stateful)
    ckpt = Path(out_dir) / CHECKPOINT
    history = _load_checkpoint(accelerator, ckpt) if resume else []
    guard = FiniteGuard(accelerator, ckpt, len(history))
    model.train()
    first = cfg.epochs if history and history[-1].get(STOP) else len(history)
    for epoch in range(first, cfg.epochs):
        data.use_epoch(epoch)
        sums: dict[str, float] = defaultdict(float)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and accelerator.is_main_process))
        for index, batch in enumerate(bar, 1):
            with accelerator.accumulate(model):
                losses = step(model, batch)
                guard.check(losses["loss"], "the loss", epoch + 1, index)
                accelerator.backward(losses["loss"])
                release(model)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)  # DeepSpeed: its last step's, a float
                    guard.check(torch.as_tensor(norm), "the gradient norm", epoch + 1, index)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    for obj in stateful:
                        if hasattr(obj, "after_update"):
                            obj.after_update()
            terms = {name: float(value.detach()) for name, value in losses.items()}
            for name, value in terms.items():
                sums[name] += value
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if cfg.report_to != "none" and index % cfg.log_every == 0:
                accelerator.log({f"train/{k}": v for k, v in terms.items()}, step=epoch * len(loader) + index)
        guard.check_weights(params, epoch + 1)
        record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
        record.update({k: v / max(len(loader), 1) for k, v in sums.items()})
        if on_epoch_end is not None:
            model.eval()
            record.update(on_epoch_end(epoch + 1, accelerator.unwrap_model(model)) or {})
            model.train()
        history.append(record)
        if cfg.report_to != "none":
            accelerator.log({f"epoch/{k}": v for k, v in record.items() if _is_number(v) and k != "epoch"},
                            step=(epoch + 1) * len(loader))
        _save_checkpoint(accelerator, ckpt, history)
        guard.finished = len(history)
        if record.get(STOP):
            break
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group, which palu reuses
        tracker.finish()
    model = accelerator.unwrap_model(model)
    model.eval()
    if cfg.gradient_checkpointing:
        _checkpointing(model, False)
    return history


def hyperparameters(out_dir: Path, cfg: TrainConfig) -> dict:
    """The run's config (its config.yaml, else the training settings) as flat scalars, as trackers take them."""
    config = saved_config(out_dir) or dataclasses.asdict(cfg)

    def flat(node, prefix: str = ""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from flat(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node if isinstance(node, (bool, int, float, str)) else str(node)

    return dict(flat(config))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class FiniteGuard:
    """Stops a diverging run: a non-finite loss, gradient norm or weight ends training with a message
    naming the epoch and step, before the bad update is applied or saved. The checkpoint of the last
    finished epoch stays as it was, and the run is never marked finished."""

    def __init__(self, accelerator: Accelerator, ckpt: Path, finished: int):
        self.accelerator, self.ckpt, self.finished = accelerator, ckpt, finished

    def check(self, value: torch.Tensor, what: str, epoch: int, step: int) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(value.detach()).all() else 1.0, device=value.device)
        if self.accelerator.num_processes > 1:  # every process must stop together
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() > 0:
            self._stop(f"epoch {epoch}, step {step}: {what} is {float(value.detach().float().sum())}")

    def check_weights(self, params: list[torch.Tensor], epoch: int) -> None:
        if not all(bool(torch.isfinite(p.detach()).all()) for p in params):
            self._stop(f"epoch {epoch}: the weights are no longer finite")

    def _stop(self, what: str) -> None:
        kept = (f"the checkpoint after epoch {self.finished} is kept in {self.ckpt}" if self.finished else
                "no epoch had finished, so nothing was saved")
        raise PaluError(f"training diverged at {what}; the run stops unfinished ({kept}). Lower train.lr or check the "
                        "method's options, then start again with --overwrite (or --resume --allow-config-change).")


def _load_checkpoint(accelerator: Accelerator, ckpt: Path) -> list[dict]:
    """The history of the checkpoint in ``ckpt`` after loading its state, or [] when there is none.

    A swap interrupted between its two renames leaves the previous checkpoint as ``checkpoint.old``.
    """
    old = ckpt.with_name(CHECKPOINT + ".old")
    if accelerator.is_main_process and not ckpt.exists() and (old / CHECKPOINT_STATE).exists():
        old.rename(ckpt)
    accelerator.wait_for_everyone()
    if not (ckpt / CHECKPOINT_STATE).exists():
        return []
    try:
        history = read_json(ckpt / CHECKPOINT_STATE)["history"]
        accelerator.load_state(str(ckpt))
    except (PaluError, KeyError, TypeError, RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError,
            SafetensorError) as e:
        detail = " ".join(str(e).split())[:200]
        raise PaluError(f"{ckpt}: the checkpoint is damaged or incomplete ({type(e).__name__}: {detail}); it cannot be "
                        "resumed. Start the run again with --overwrite.") from None
    accelerator.print(f"resuming after epoch {len(history)} from {ckpt}")
    return history


def _checkpointing(model, on: bool) -> None:
    """Activation checkpointing on or off (transformers 5 renamed gradient_ to activation_checkpointing)."""
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if on else 'disable'}")()
    model.config.use_cache = not on


def _save_checkpoint(accelerator: Accelerator, ckpt: Path, history: list[dict]) -> None:
    """Write the new checkpoint beside the old one, then swap, so an interruption loses at most an epoch."""
    tmp = ckpt.with_name(CHECKPOINT + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its part before the swap
    if accelerator.is_main_process:
        write_json(tmp / CHECKPOINT_STATE, {"history": history})
        old = ckpt.with_name(CHECKPOINT + ".old")
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            ckpt.rename(old)
        tmp.rename(ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
