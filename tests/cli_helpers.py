"""What the tests of bad input share: a tiny `palu unlearn` from the command line, and the check that
an error is one line, with no traceback, that says what it must."""

from __future__ import annotations

from palu.cli import main

TINY_UNLEARN = ["synthetic.n_authors=4", "synthetic.forget_authors=1", "synthetic.holdout_authors=1",
                "forget.limit=4", "retain.limit=4", "train.epochs=1", "train.batch_size=2", "train.max_length=256",
                "--quiet", "--threads=1"]


def unlearn(model, out, *extra) -> int:
    """`palu unlearn` of the built-in forget set from ``model`` into ``out``; its exit code."""
    return main(["unlearn", f"model={model}", f"output_dir={out}", *TINY_UNLEARN, *extra])


def one_line_error(capsys, *words) -> str:
    """The command's stderr, checked to be one line, without a traceback, holding every one of ``words``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err
