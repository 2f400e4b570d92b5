"""The `palu` command: a table of verbs, each a module of ``palu.commands``.

Each verb takes ``--config FILE.yaml`` plus ``key=value`` overrides (``train.lr=1e-5``, ``method=palu``)
and prints where its outputs went; ``palu VERB --help`` lists every option with its type, default and
meaning. Errors in the input, the files or the machine (a full disk) are printed as one line, not a
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap

from palu.config import describe
from palu.errors import PaluError, explain

# each a module palu.commands.<verb>
VERBS = ("demo", "finetune", "unlearn", "eval", "annotate", "attack", "sweep", "curve", "report", "plan")


def default_threads() -> int:
    """Half the cores: torch threads slow down sharply when they compete with another busy process."""
    return max(1, (os.cpu_count() or 2) // 2)


def command(verb: str):
    return importlib.import_module(f"palu.commands.{verb}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="palu", description="Targeted unlearning for language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        module = command(verb)
        config = getattr(module, "Config", None)
        rows = [*describe(config), *getattr(module, "more_options", list)()] if config is not None else []
        c = sub.add_parser(verb, help=module.HELP, description=module.HELP, epilog=options_help(rows),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if config is not None:
            c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-5")
            c.add_argument("--config", metavar="FILE.yaml", help="a YAML config; overrides apply on top")
            c.add_argument("--threads", type=int, default=None,
                           help=f"CPU threads for torch (default: PALU_THREADS or {default_threads()})")
            c.add_argument("--quiet", action="store_true", help="no progress bars")
            c.add_argument("--trust-remote-code", action="store_true",
                           help="let a model folder or hub repository run its own Python code (off by default)")
        if getattr(module, "RESUMABLE", False):
            c.add_argument("--resume", action="store_true", help="continue an interrupted run in its output folder")
        if getattr(module, "RESUMABLE", False) or verb == "sweep":
            c.add_argument("--allow-config-change", action="store_true",
                           help="continue a run under options other than those it was started with (refused "
                                "by default)")
        c.add_argument("--overwrite", action="store_true",
                       help="replace an existing output that palu wrote (never a folder it did not make)")
        c.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        if hasattr(module, "arguments"):
            module.arguments(c)
    return p


def options_help(rows: list[tuple[str, str, str, str]]) -> str | None:
    """A verb's options, one each: dotted key, type and default, then the meaning."""
    if not rows:
        return None
    lines = []
    for key, kind, default, text in rows:
        lines.append(f"  {key}: {kind}" + (f" = {default}" if kind != "section" else ""))
        lines += textwrap.wrap(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "options (key=value, or in --config FILE.yaml):\n" + "\n".join(lines)


def setup(args) -> None:
    import torch
    import transformers

    from palu.models import trust_remote_code

    threads = getattr(args, "threads", None)
    threads = threads if threads is not None else int(os.environ.get("PALU_THREADS", default_threads()))
    if threads < 1:
        raise PaluError(f"--threads must be at least 1, not {threads}.")
    torch.set_num_threads(threads)
    trust_remote_code(getattr(args, "trust_remote_code", False))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("palu").setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)  # overrides may come before or after the options
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides += extra
    for flag in ("resume", "allow_config_change", "quiet"):
        setattr(args, flag, getattr(args, flag, False))
    try:
        if args.allow_config_change and not args.resume and args.command != "sweep":
            raise PaluError("--allow-config-change goes with --resume.")
        setup(args)
        print(command(args.command).main(args))
    except Exception as exc:  # a user's error is one line; a bug keeps its traceback
        error = explain(exc)
        if error is None or args.debug:
            raise
        print(f"palu {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"palu {args.command}: interrupted; run it again with --resume to continue.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
