"""The layout of a run folder, shared by every command.

    <run>/config.yaml     the resolved config
    <run>/history.json    per-epoch losses (and metrics, when evaluated during training)
    <run>/model/          save_pretrained model and tokenizer
    <run>/checkpoint/     the latest epoch's training state, removed once the run is finished
    <run>/DONE            written last: a run without it is unfinished and can be resumed
"""

from __future__ import annotations

import shutil
from pathlib import Path

from palu.config import dump
from palu.io import write_json, write_text
from palu.train.loop import CHECKPOINT

MODEL_DIR = "model"
DONE = "DONE"


def is_finished(run: str | Path) -> bool:
    return (Path(run) / DONE).exists()


def save_config(run: str | Path, cfg) -> None:
    write_text(Path(run) / "config.yaml", dump(cfg))


def finish(run: str | Path, model, tokenizer, history: list[dict]) -> Path:
    """Save the trained model and its history, drop the checkpoint, mark the run finished."""
    run = Path(run)
    model.save_pretrained(run / MODEL_DIR)
    tokenizer.save_pretrained(run / MODEL_DIR)
    write_json(run / "history.json", history)
    shutil.rmtree(run / CHECKPOINT, ignore_errors=True)
    (run / DONE).write_text("")
    return run / MODEL_DIR
