"""Files that are never half-written and output folders that are never silently overwritten."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from palu.errors import PaluError


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PaluError(f"{path}: no such file.") from None
    except json.JSONDecodeError as exc:
        raise PaluError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None


def prepare_output_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create an output folder; refuse a non-empty one unless resuming or ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise PaluError(f"{path} exists and is not empty; pass --overwrite to replace it or --resume to continue it.")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
