"""``palu eval suite=lm-eval``: lm-evaluation-harness tasks on a model (see ``palu.eval.harness``)."""

from __future__ import annotations

from dataclasses import dataclass

from palu.eval.harness import HarnessTasks, evaluate_harness
from palu.models import load_model_and_tokenizer, require_model
from palu.runs import Reuse, run_folder, write_results


@dataclass
class Config(HarnessTasks):
    """``palu eval suite=lm-eval``: general utility (MMLU) or hazardous knowledge (WMDP) of a model."""

    model: str = ""
    tokenizer: str | None = None
    output_dir: str = "runs/eval_lm"


def run_harness(cfg: Config, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Evaluate, write ``results.json`` (per document) and ``summary.json``; returns the results."""
    require_model(cfg)
    with run_folder(cfg.output_dir, "eval", cfg, Reuse(overwrite)) as out:
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer)
        return write_results(out, evaluate_harness(model, tokenizer, cfg))
