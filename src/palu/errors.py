"""User-facing errors: the CLI prints these as one line, without a stack trace.

``explain`` is the one place that turns the errors of the operating system, torch and the loaders
palu uses into such a line; anything it does not know is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class PaluError(Exception):
    """Bad input or configuration; the message names the file, line or item and what to do."""


RESUME = "then run the same command with --resume to continue from the last finished epoch"
ADVICE = {
    errno.ENOSPC: f"the disk is full; free some space, {RESUME}",
    errno.EDQUOT: f"the disk quota is used up; free some space, {RESUME}",
    errno.EROFS: "the file system is read-only; choose an output folder on a writable disk",
    errno.EACCES: "permission denied; choose a path you can write to",
    errno.EPERM: "permission denied; choose a path you can write to",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.ENOENT: "no such file or folder; check the path",
}
DISK_FULL = ("No space left on device", "StorageFull", "os error 28", "file write failed")


def os_error(exc: OSError, path: str | Path | None = None) -> PaluError:
    """A one-line message for an operating-system error on ``path``, with what to do about it."""
    where = path if path is not None else (exc.filename or "a file")
    return PaluError(f"{where}: {ADVICE.get(exc.errno, exc.strerror or str(exc))}.")


def explain(exc: BaseException) -> PaluError | None:
    """The user-facing form of ``exc``, or None when it is not a user's error (a bug)."""
    if isinstance(exc, PaluError):
        return exc
    if isinstance(exc, OSError) and exc.errno in ADVICE:
        return os_error(exc)
    text = str(exc)
    if any(marker in text for marker in DISK_FULL):  # torch and safetensors wrap ENOSPC in their own errors
        return PaluError(f"a file could not be written ({text.splitlines()[0][:200]}); the disk is probably full: "
                         f"free some space, {RESUME}.")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return PaluError("out of memory; lower train.batch_size (raise train.grad_accum to keep the effective "
                         "batch), train.max_length or the evaluation batch_size, or use peft=lora.")
    return None
