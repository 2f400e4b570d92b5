"""Files that are never half-written, and reading that names the file and line of whatever is wrong."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from palu.errors import PaluError, os_error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file (a leading byte-order mark is accepted: it is valid UTF-8), with errors that
    name the file (and line, for bad bytes) and say what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PaluError(f"{path}: no such {what}.") from None
    except IsADirectoryError:
        raise PaluError(f"{path} is a folder; give the path of a {what}.") from None
    except OSError as e:
        raise PaluError(f"{path}: cannot read it ({e.strerror or e}); check the path and its permissions.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PaluError(f"{path}:{line}: not UTF-8 text; re-save the {what} as UTF-8.") from None


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    parent_ready(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise os_error(e, path) from None
    try:
        os.fchmod(fd, FILE_MODE)  # as a plain open() would: mkstemp makes the file private
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def copy_file(source: str | Path, target: str | Path) -> Path:
    """Copy a text file atomically, so a reader (another sweep worker, say) never sees half of it."""
    return write_text(target, read_text(source))


@contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """A fresh folder to fill in place of ``path``; it replaces ``path`` only once the block ends
    without error, so an interruption leaves the old folder (or none), never half of a new one."""
    path = Path(path)
    parent_ready(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except OSError as e:
        raise os_error(e, path) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | Path, what: str = "JSON file"):
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PaluError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None


def parent_ready(path: Path) -> None:
    """Create ``path``'s parent folders, or say plainly why they cannot be (a file in the way, ...)."""
    for ancestor in reversed(path.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise PaluError(f"{path}: {ancestor} is a file, not a folder; choose another path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path.parent) from None


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
