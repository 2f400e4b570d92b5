"""The run folder shared by every command: its layout (every file name in it is spelled here and
nowhere else), and the rules that keep what is in it safe.

    <run>/.palu              marks a folder palu made, naming the command; palu deletes no other folder
    <run>/.palu.lock         locked while a command works in the folder, so two runs never share one
    <run>/config.yaml        the resolved config
    <run>/history.json       per-epoch losses (and metrics, when evaluated during training)
    <run>/model/             save_pretrained model and tokenizer
    <run>/checkpoint/        the latest epoch's training state, removed once the run is finished
    <run>/DONE               written last: a run without it is unfinished and can be resumed
    <run>/results.json       an evaluation's per-item results; summary.json its aggregates
    <run>/eval/epoch-N.json  the evaluation after epoch N (0: the starting model)
    <run>/best/, best.json   the best epoch's model and record under the selection rule
    <run>/logs/              an experiment tracker's files (train.report_to=tensorboard)
    <run>/relearn/           an attack's relearned model (a run folder of its own)
    <run>/request-N/, requests.json   each deletion request's run, and the list of their models
    <curve>/size-N/ or requests/, eval-step-N/, curve.json, curve.md   a MUSE C5/C6 curve
    <demo>/tokenizer/, <demo>/eval-<model>/   the demo's shared tokenizer and its evaluations
    <sweep>/study.db, pareto.json, start-eval.json, trial-NNN/   a sweep's study, front, shared
                             starting-model evaluation and trials

An existing folder is replaced only with ``--overwrite``, and only when palu made it, it is not
the current, home or root folder (or above them), and it holds none of the command's inputs.
``--resume`` continues a run only under the config it was started with, unless the user accepts
the change (``--allow-config-change``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from palu.config import build, dump, to_dict
from palu.distributed import process_state
from palu.errors import PaluError, os_error
from palu.eval.core import summary
from palu.io import parent_ready, read_json, read_text, replacing_dir, write_json, write_text
from palu.sharding import full_state_dict

MARKER = ".palu"
LOCK = ".palu.lock"
OWN = (MARKER, LOCK)  # files that do not make a folder "not empty"
CONFIG = "config.yaml"
HISTORY = "history.json"
MODEL_DIR = "model"
CHECKPOINT = "checkpoint"
CHECKPOINT_STATE = "state.json"  # inside the checkpoint: the history up to it
DONE = "DONE"
RESULTS = "results.json"
SUMMARY = "summary.json"
EVAL_DIR = "eval"
BEST_DIR = "best"
BEST_RECORD = "best.json"
RELEARN_DIR = "relearn"
TOKENIZER_DIR = "tokenizer"
EVAL_PREFIX = "eval-"
STUDY = "study.db"
FRONT = "pareto.json"
START_EVAL = "start-eval.json"
REPORT = "report.html"
LOGS = "logs"  # an experiment tracker's files (TensorBoard's events)
REQUESTS = "requests.json"
CURVE, CURVE_TABLE = "curve.json", "curve.md"


def epoch_path(run: str | Path, epoch: int) -> Path:
    """Where a run keeps its evaluation after ``epoch`` (epoch 0: the starting model)."""
    return Path(run) / EVAL_DIR / f"epoch-{epoch}.json"


def epoch_records(run: str | Path) -> list[dict]:
    """The per-epoch evaluation summaries a run has written, in epoch order."""
    paths = Path(run, EVAL_DIR).glob("epoch-*.json")
    return sorted((read_json(p)["summary"] for p in paths), key=lambda record: record["epoch"])


def evaluation_dir(parent: str | Path, model: str) -> Path:
    """The folder of the evaluation of ``model`` beside it (the demo's ``eval-full``, say)."""
    return Path(parent) / f"{EVAL_PREFIX}{model}"


def request_dir(run: str | Path, number: int) -> Path:
    """Where a run of several deletion requests unlearns its ``number``-th (from 1)."""
    return Path(run) / f"request-{number}"


def trial_dir(sweep: str | Path, number: int) -> Path:
    return Path(sweep) / f"trial-{number:03d}"


def write_results(run: str | Path, results: dict) -> dict:
    """An evaluation's per-item results and their aggregates, each written atomically."""
    write_json(Path(run) / RESULTS, results)
    write_json(Path(run) / SUMMARY, summary(results))
    return results


@dataclasses.dataclass(frozen=True)
class Reuse:
    """What the user allows to happen to an existing run folder (the CLI's flags)."""

    overwrite: bool = False
    resume: bool = False
    allow_config_change: bool = False


@contextmanager
def run_folder(path: str | Path, command: str, cfg=None, reuse: Reuse = Reuse(), shared: bool = False,
               ignore: tuple[str, ...] = ()) -> Iterator[Path]:
    """Prepare ``path`` as ``command``'s run folder and hold its lock while the block runs.

    ``cfg`` is saved as ``config.yaml`` (and compared with the saved one on resume; ``ignore`` lists
    dotted options that may change). ``shared``: several workers of one command may use the folder
    at once (``palu sweep``), but no other command. In a multi-process run only the main process
    claims the folder.
    """
    path = Path(path).expanduser()
    state = process_state()
    if not state.is_main_process:
        state.wait_for_everyone()
        yield path
        return
    made = [p for p in (path, *path.parents) if not p.exists()]  # the folders this call creates
    make_folder(path)
    lock_existed = (path / LOCK).exists()
    with _locked(path, shared and not reuse.overwrite):
        fresh = not any(p.name not in OWN for p in path.iterdir())
        try:
            _claim(path, command, cfg, reuse, ignore)
            if state.num_processes > 1:
                state.wait_for_everyone()
            yield path
        except BaseException:
            if fresh:  # a command that failed before writing anything leaves the folder as it found it
                _undo_start(path, made)
            elif not lock_existed and _marker(path) is None:  # a refused folder of the user's: no trace
                (path / LOCK).unlink(missing_ok=True)
            raise


def make_folder(path: Path) -> None:
    """Create the folder ``path``, or say in one line why it cannot be."""
    if path.exists() and not path.is_dir():
        raise PaluError(f"{path} is a file, not a folder; choose another output_dir.")
    parent_ready(path / "x")


def new_run(path: Path, command: str) -> Path:
    """An empty run folder of ``command`` that a later ``run_folder(..., resume)`` takes as its own."""
    make_folder(path)
    write_json(path / MARKER, {"command": command})
    return path


def is_finished(run: str | Path) -> bool:
    return (Path(run) / DONE).exists()


def save_config(run: str | Path, cfg) -> None:
    write_text(Path(run) / CONFIG, dump(cfg))


def finish(run: str | Path, model, tokenizer, history: list[dict]) -> Path:
    """Save the trained model and its history, drop the checkpoint, mark the run finished."""
    run = Path(run)
    save_model(run / MODEL_DIR, model, tokenizer)
    write_json(run / HISTORY, history)
    shutil.rmtree(run / CHECKPOINT, ignore_errors=True)
    write_text(run / DONE, "")
    return run / MODEL_DIR


def save_model(folder: Path, model, tokenizer) -> Path:
    """``save_pretrained`` of both into ``folder``, which holds all of them or what it held before.

    Every process of a multi-process run calls it; the main one writes while the others wait (and help
    gather the weights of a sharded model)."""
    state = process_state()
    weights = full_state_dict(model)
    if state.is_main_process:
        with replacing_dir(folder) as tmp:
            try:
                model.save_pretrained(tmp, state_dict=weights)
                tokenizer.save_pretrained(tmp)
            except OSError as e:
                raise os_error(e, folder) from None
    state.wait_for_everyone()
    return folder


def _claim(path: Path, command: str, cfg, reuse: Reuse, ignore: tuple[str, ...]) -> None:
    """Refuse, clear or adopt the folder's contents as ``reuse`` allows; then mark it and save ``cfg``."""
    entries = [p for p in path.iterdir() if p.name not in OWN]
    made_by = _marker(path)
    if entries and reuse.overwrite:
        _check_deletable(path, made_by, cfg)
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif entries and not reuse.resume:
        raise PaluError(f"{path} exists and is not empty; pass --overwrite to replace it or --resume to continue it "
                        "(or choose another output_dir).")
    elif entries:
        _check_resumable(path, command, made_by, cfg, reuse.allow_config_change, ignore)
    new_run(path, command)
    if cfg is not None:
        save_config(path, cfg)


def _undo_start(path: Path, made: list[Path]) -> None:
    """Remove what the start of a run wrote, and the folders it created, unless something else is there."""
    if any(p.name not in (*OWN, CONFIG) for p in path.iterdir()):
        return
    for name in (MARKER, CONFIG, LOCK):
        (path / name).unlink(missing_ok=True)
    for folder in made:  # innermost first
        if any(folder.iterdir()):
            return
        folder.rmdir()


def _marker(path: Path) -> str | None:
    """The command that made ``path`` (None: palu did not make it)."""
    try:
        return json.loads((path / MARKER).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_deletable(path: Path, made_by: str | None, cfg) -> None:
    here = path.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if here == cwd or here in cwd.parents or here == home or here in home.parents or here == Path(here.anchor):
        raise PaluError(f"{path} is the current, home or root folder (or holds one); palu never deletes it. "
                        "Choose a new output_dir.")
    if made_by is None:
        raise PaluError(f"{path} holds files palu did not write (it has no {MARKER} file); palu only replaces its own "
                        "run folders. Move or delete it yourself, or choose another output_dir.")
    for key, value in _local_paths(cfg):
        if value == here or here in value.parents:
            raise PaluError(f"{path} holds this command's input {key}={value}; replacing the folder would delete it. "
                            "Choose another output_dir, or copy the input elsewhere first.")


def _check_resumable(path: Path, command: str, made_by: str | None, cfg, allow_change: bool,
                     ignore: tuple[str, ...]) -> None:
    """Refuse to resume another command's folder, a folder palu did not make (one without a marker
    counts as palu's when its config.yaml is exactly this run's), or a changed config unless allowed."""
    if made_by is not None and made_by != command:
        raise PaluError(f"{path} is a `palu {made_by}` run folder, not a `palu {command}` one; choose another "
                        "output_dir (or pass --overwrite to replace it).")
    saved = saved_config(path)
    changes = None if cfg is None or saved is None else config_changes(_as_read_today(saved, cfg), _plain(cfg), ignore)
    if made_by is None and changes != []:
        raise PaluError(f"{path} holds files palu did not write; --resume continues only a palu run. "
                        "Choose another output_dir.")
    if changes and not allow_change:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise PaluError(f"{path} was started with another config ({shown}). Resume with the same options, start a "
                        "new output_dir, or pass --allow-config-change to continue under the new ones.")


def saved_config(path: str | Path) -> dict | None:
    """The config a run folder was started with (None: none, or not a readable mapping)."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        return None
    try:
        saved = yaml.safe_load(read_text(path / CONFIG, "config file"))
    except yaml.YAMLError:
        return None
    return saved if isinstance(saved, dict) else None


def _as_read_today(saved: dict, cfg) -> dict:
    """A saved config as this version of palu reads it: an option added since the run started takes its
    default, so leaving it there is no change. One that no longer reads compares as saved."""
    try:
        return _plain(build(type(cfg), saved))
    except PaluError:
        return saved


def _plain(cfg) -> dict:
    """``cfg`` as its saved config.yaml reads back, so the two compare like with like."""
    return yaml.safe_load(dump(cfg))


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """The options that differ between two configs, as ``key: old -> new`` (dotted keys). Where the
    run lives is not one of them: a run folder that was moved is the same run."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        if name in ignore or key == "output_dir":
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and a.get("name") != b.get("name"):
            out.append(f"{name}.name: {a.get('name')!r} -> {b.get('name')!r}")  # another method: its own options
        elif isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, ignore, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _local_paths(cfg) -> Iterator[tuple[str, Path]]:
    """Every option of ``cfg`` (but the output folder) that names an existing local file or folder."""
    if cfg is None:
        return

    def walk(node, prefix: str):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{prefix[:-1]}[{i}].")
        elif isinstance(node, str) and node and not prefix.endswith("output_dir."):
            candidate = Path(node).expanduser()
            try:
                if candidate.exists():
                    yield prefix[:-1], candidate.resolve()
            except OSError:
                return

    yield from walk(to_dict(cfg), "")


@contextmanager
def _locked(path: Path, shared: bool) -> Iterator[None]:
    """Hold ``path``'s lock: exclusive, or shared with other workers of the same study."""
    try:
        fh = open(path / LOCK, "a+")
    except OSError as e:
        raise os_error(e, path) from None
    with fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = fh.read().strip()
            raise PaluError(f"{path} is in use by another palu command{f' (process {who})' if who else ''}; wait for "
                            "it to finish, or choose another output_dir.") from None
        if not shared:
            fh.truncate(0)
            fh.write(str(os.getpid()))
            fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
