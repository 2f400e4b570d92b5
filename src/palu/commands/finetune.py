"""``palu finetune``: train a target ("full") or retain model on QA data, from a checkpoint or from scratch."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from palu.config import load_config, require
from palu.data.loaders import DataSource
from palu.data.prompts import PromptConfig
from palu.data.qa import item_texts
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.models import load_model_and_tokenizer, load_tokenizer, tiny_llama, train_bpe_tokenizer
from palu.runs import MODEL_DIR, Reuse, finish, is_finished, run_folder
from palu.train.finetune import EarlyStop, StopWhenKnown, finetune
from palu.train.loop import TrainConfig

HELP = "train a target (full) or retain model on QA data or documents"
RESUMABLE = True
log = logging.getLogger(__name__)
SCRATCH = "scratch"


@dataclass
class ScratchConfig:
    """A small Llama built from scratch (``model: scratch``): about 5M parameters at the defaults."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    vocab_size: int = 8000
    max_positions: int = 512

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "max_positions"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        require(self.hidden % self.heads == 0, "hidden", f"a multiple of heads ({self.heads})",
                self.hidden)


def scratch_train() -> TrainConfig:
    """Memorising QA from scratch: a high learning rate and cosine decay."""
    return TrainConfig(epochs=15, lr=1e-3, batch_size=16, schedule="cosine", warmup_epochs=1, max_length=256)


@dataclass
class Config:
    """``palu finetune``: train a target ("full") or retain model on QA data.

    Attributes:
        model: a hub id or folder to start from, or "scratch" for a new small Llama.
        tokenizer: defaults to the model's; with "scratch" and none given, a byte-level BPE is
            trained on the data.
        data: one or more sources, concatenated (e.g. TOFU full + real_authors + world_facts).
        train: defaults suit a model from scratch; use lr around 1e-5 for a pretrained model.
        early_stop: stop once the model knows a set (e.g. the forget set), before ``train.epochs``.
    """

    model: str = SCRATCH
    tokenizer: str | None = None
    data: list[DataSource] = field(default_factory=lambda: [synthetic("full")])
    output_dir: str = "runs/finetune"
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=scratch_train)
    early_stop: EarlyStop | None = None


def run_finetune(cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True,
                 allow_config_change: bool = False) -> Path:
    """Fine-tune and save; returns the saved model folder."""
    with run_folder(cfg.output_dir, "finetune", cfg, Reuse(overwrite, resume, allow_config_change)) as out:
        if is_finished(out):
            log.info("%s is already finished", out)
            return out / MODEL_DIR
        items = [it for source in cfg.data for it in load_items(source, cfg.synthetic)]
        if cfg.model == SCRATCH:
            tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_bpe_tokenizer(item_texts(items),
                                                                                          cfg.scratch.vocab_size)
            s = cfg.scratch
            model = tiny_llama(len(tok), s.hidden, s.layers, s.heads, s.max_positions, tokenizer=tok,
                               seed=cfg.train.seed, dtype=cfg.train.dtype)
        else:
            model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer, cfg.train.dtype)
        stop = None
        if cfg.early_stop is not None:
            stop = StopWhenKnown(cfg.early_stop, load_items(cfg.early_stop.data, cfg.synthetic), tok, cfg.prompt,
                                 cfg.train.max_length)
        history = finetune(model, tok, items, cfg.train, cfg.prompt, out, resume, on_epoch_end=stop,
                           progress=progress)
        return finish(out, model, tok, history)




def main(args) -> str:
    cfg = load_config(Config, args.config, args.overrides)
    saved = run_finetune(cfg, args.overwrite, args.resume, not args.quiet, args.allow_config_change)
    return f"model saved to {saved.resolve()}"
