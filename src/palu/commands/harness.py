"""``palu eval suite=lm-eval``: lm-evaluation-harness tasks on a model (see ``palu.eval.harness``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from palu.config import require
from palu.eval.harness import evaluate_harness
from palu.models import load_model_and_tokenizer, require_model
from palu.runs import Reuse, run_folder, write_results


@dataclass
class Config:
    """``palu eval suite=lm-eval``: general utility (MMLU) or hazardous knowledge (WMDP) of a model.

    Attributes:
        tasks: the harness's task names (``[mmlu]``, ``[wmdp_bio, wmdp_cyber, mmlu]``) or your own.
        num_fewshot: examples in each prompt (None: each task's default).
        limit: documents per task (a whole number), or a fraction of them (below 1); None: all.
        batch_size: the harness's batch size.
        include_path: a folder of your own task YAML files, beside the harness's tasks.
    """

    model: str = ""
    tokenizer: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["mmlu"])
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 8
    include_path: str | None = None
    output_dir: str = "runs/eval_lm"

    def __post_init__(self) -> None:
        require(len(self.tasks) >= 1, "tasks", "a list of at least one task", self.tasks)
        if self.limit is not None:
            require(self.limit > 0, "limit", "a positive number of documents or fraction", self.limit)


def run_harness(cfg: Config, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Evaluate, write ``results.json`` (per document) and ``summary.json``; returns the results."""
    require_model(cfg)
    with run_folder(cfg.output_dir, "eval", cfg, Reuse(overwrite)) as out:
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer)
        limit = int(cfg.limit) if cfg.limit is not None and cfg.limit >= 1 else cfg.limit
        results = evaluate_harness(model, tokenizer, cfg.tasks, cfg.num_fewshot, limit, cfg.batch_size,
                                   cfg.include_path)
        return write_results(out, results)
