"""General utility and hazardous knowledge through lm-evaluation-harness (MMLU, WMDP, ... or a task of
your own), run on the model palu already holds, with results in palu's shape.

Each task metric becomes ``lm-eval/<task>/<metric>`` (``lm-eval/mmlu/acc``) with the harness's own
direction and its per-document values, so the report and the selection rule treat it like any other
metric (``select.utility=lm-eval/mmlu/acc``). The harness is an optional extra: ``pip install
'palu[lm-eval]'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from palu.config import require
from palu.errors import PaluError
from palu.eval.metrics import METRICS, MetricSpec, register, result

PREFIX = "lm-eval"


@dataclass
class HarnessTasks:
    """Which lm-evaluation-harness tasks to score, and how.

    Attributes:
        tasks: the harness's task names (``[mmlu]``, ``[wmdp_bio, wmdp_cyber, mmlu]``) or your own.
        num_fewshot: examples in each prompt (None: each task's default).
        limit: documents per task (a whole number), or a fraction of them (below 1); None: all.
        batch_size: the harness's batch size.
        include_path: a folder of your own task YAML files, beside the harness's tasks.
    """

    tasks: list[str] = field(default_factory=lambda: ["mmlu"])
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 8
    include_path: str | None = None

    def __post_init__(self) -> None:
        require(len(self.tasks) >= 1, "tasks", "a list of at least one task", self.tasks)
        if self.limit is not None:
            require(self.limit > 0, "limit", "a positive number of documents or fraction", self.limit)


def evaluate_harness(model, tokenizer, cfg: HarnessTasks) -> dict[str, dict]:
    """The harness's tasks on ``model`` (in memory, not loaded again), as palu results."""
    tasks, limit = cfg.tasks, int(cfg.limit) if cfg.limit is not None and cfg.limit >= 1 else cfg.limit
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise PaluError("the lm-eval suite needs lm-evaluation-harness: pip install 'palu[lm-eval]' "
                        "(or pip install lm-eval).") from None
    manager = TaskManager(include_path=cfg.include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise PaluError(f"lm-eval has no task {unknown[0]!r}; name tasks as `lm-eval --tasks list` shows them, or "
                        "point include_path at a folder of your own task YAML files.")
    harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    try:
        out = lm_eval.simple_evaluate(model=harness, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=True, verbosity="ERROR")
    except OSError as e:  # the tasks' data sets live on the hub
        raise PaluError(f"lm-eval could not load the data of {', '.join(tasks)} ({e}); the harness reads its data "
                        "sets from the Hugging Face hub: run it online once, or use a task with local data.") from None
    results = {}
    for task, metrics in out["results"].items():
        directions = out.get("higher_is_better", {}).get(task, {})
        samples = out.get("samples", {}).get(task, [])
        for key, value in metrics.items():
            metric, _, filtered = key.partition(",")
            if metric == "alias" or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            name = f"{PREFIX}/{task}/{metric}" + ("" if filtered in ("", "none") else f"/{filtered}")
            if name not in METRICS:
                register(MetricSpec(name, directions.get(metric), f"lm-evaluation-harness {task}: {metric}",
                                    aggregation=f"as the harness aggregates {task}"))
            per_doc = {s["doc_id"]: s[metric] for s in samples if s.get("filter", "none") == (filtered or "none")
                       and isinstance(s.get(metric), (int, float))}
            results[name] = result(name, value, per_doc)
    return results
