"""``palu eval suite=muse``: the MUSE metrics of a model (see ``palu.eval.muse``)."""

from __future__ import annotations

from dataclasses import dataclass

from palu.eval.muse import MuseSets, evaluate_muse
from palu.io import read_json
from palu.models import load_model_and_tokenizer, require_model
from palu.runs import Reuse, run_folder, write_results


@dataclass
class Config(MuseSets):
    """``palu eval suite=muse``: the MUSE metrics of a model (the sets and scoring: see ``MuseSets``)."""

    model: str = ""
    tokenizer: str | None = None
    output_dir: str = "runs/eval_muse"


def run_muse(cfg: Config, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Evaluate, write ``results.json`` (per item) and ``summary.json`` into a fresh folder; returns the results.

    Data and reference are read before the model is loaded, so that their errors come at once.
    """
    require_model(cfg)
    with run_folder(cfg.output_dir, "eval", cfg, Reuse(overwrite)) as out:
        reference = read_json(cfg.retain_reference) if cfg.retain_reference else None
        data = cfg.load()
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer)
        results = evaluate_muse(model, tokenizer, data, reference, cfg.batch_size, cfg.max_length, progress,
                                cfg.rules, cfg.knowmem_prompt)
        return write_results(out, results)
