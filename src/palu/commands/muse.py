"""``palu eval suite=muse``: the MUSE metrics of a model (see ``palu.eval.muse``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from palu.eval.muse import MUSE_NEWS, evaluate_muse, load_muse
from palu.io import read_json
from palu.models import load_model_and_tokenizer, require_model
from palu.runs import Reuse, run_folder, write_results


@dataclass
class Config:
    """``palu eval suite=muse``: the MUSE metrics of a model.

    Attributes:
        path: a folder laid out like MUSE-News (knowmem/, verbmem/, privleak/), or a hub id
            (MUSE-News by default).
        retain_reference: results.json of the retain model's MUSE run; privleak needs it and is
            reported as unavailable without it.
        verbmem_limit, knowmem_limit, privleak_limit: keep the first N items of each set, for quick
            runs (0 skips the set's metrics).
        max_length: cut privleak texts to this many tokens (None: as the rules do).
        rules: whose scoring to follow: "muse" (MUSE's released code, the default) or
            "open-unlearning" (stemmed ROUGE, whole VerbMem reference, stripped texts, privleak
            texts cut to 2,048 tokens); see docs/metrics.md. ROUGE is reported 0-1 under both.
    """

    model: str = ""
    tokenizer: str | None = None
    path: str = MUSE_NEWS
    retain_reference: str | None = None
    output_dir: str = "runs/eval_muse"
    batch_size: int = 16
    verbmem_limit: int | None = None
    knowmem_limit: int | None = None
    privleak_limit: int | None = None
    max_length: int | None = None
    rules: Literal["muse", "open-unlearning"] = "muse"


def run_muse(cfg: Config, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Evaluate, write ``results.json`` (per item) and ``summary.json`` into a fresh folder; returns the results.

    Data and reference are read before the model is loaded, so that their errors come at once.
    """
    require_model(cfg)
    with run_folder(cfg.output_dir, "eval", cfg, Reuse(overwrite)) as out:
        reference = read_json(cfg.retain_reference) if cfg.retain_reference else None
        data = load_muse(cfg.path, cfg.verbmem_limit, cfg.knowmem_limit, cfg.privleak_limit)
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer)
        results = evaluate_muse(model, tokenizer, data, reference, cfg.batch_size, cfg.max_length, progress,
                                cfg.rules)
        return write_results(out, results)
