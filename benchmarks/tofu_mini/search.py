"""`palu sweep` against a grid: does a 30-run multi-objective search find a front at least as good?

The sweep searches lr, alpha, K and N (PALU, GPT-4o spans) for forget quality and model utility,
with the selection rule's utility floor as a constraint, so its front, like the grid's, holds only
runs that keep 95% of the full model's utility.
The grid is every PALU run the other stages made (the comparison's learning rates and the K x N
cells), each reduced to its selected epoch. Both fronts are compared point by point (is each grid
point matched or beaten on both objectives by a sweep point?) and by their hypervolume above the
utility floor.
"""

from __future__ import annotations

from pathlib import Path

from compare import PALU, RULE, Comparison

from palu.commands.sweep import Config as SweepConfig
from palu.commands.sweep import run_sweep
from palu.commands.unlearn import Config as UnlearnConfig
from palu.io import read_json
from palu.methods import configure


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on both forget quality and utility (ties kept once)."""
    front = []
    for p in points:
        if not any(dominates(q, p) for q in points) and not any(same(p, q) for q in front):
            front.append(p)
    return sorted(front, key=lambda p: -p["forget_quality"])


def dominates(a: dict, b: dict) -> bool:
    return (a["forget_quality"] >= b["forget_quality"] and a["utility"] >= b["utility"]
            and (a["forget_quality"] > b["forget_quality"] or a["utility"] > b["utility"]))


def same(a: dict, b: dict) -> bool:
    return a["forget_quality"] == b["forget_quality"] and a["utility"] == b["utility"]


def hypervolume(front: list[dict], floor: float) -> float:
    """Area dominated by the front above (forget quality 0, utility ``floor``)."""
    area, best_fq = 0.0, 0.0
    for p in sorted(front, key=lambda p: -p["utility"]):
        if p["utility"] > floor and p["forget_quality"] > best_fq:
            area += (p["forget_quality"] - best_fq) * (p["utility"] - floor)
            best_fq = p["forget_quality"]
    return area


def grid_points(cmp: Comparison, runs: list[tuple[Path, float]]) -> list[dict]:
    points = []
    for folder, lr in runs:
        best = cmp.best([(folder, lr)])
        if best is not None:
            points.append({"run": str(folder.relative_to(cmp.out)), "lr": lr, "epoch": best["epoch"],
                           "forget_quality": best["forget_quality"], "utility": best["model_utility"]})
    return points


def run_search(cmp: Comparison, grid_runs: list[tuple[Path, float]], budget: int) -> dict:
    base = UnlearnConfig(model=str(cmp.p.model("full")), forget=cmp.forget_source("palu (GPT-4o spans)"),
                         retain=cmp.p.retain_set, method=configure(PALU), eval=cmp.epoch_sets(), select=RULE,
                         train=cmp.unlearn_train())
    cfg = SweepConfig(unlearn=base, space={"lr": [1e-4, 3e-3]}, trials=budget,
                      output_dir=str(cmp.out / "sweep"))
    found = run_sweep(cfg)
    trials = trial_counts(Path(cfg.output_dir))
    grid = pareto(grid_points(cmp, grid_runs))
    floor = RULE.utility_floor * read_json(cmp.start_record())["summary"]["model_utility"]
    matched = [g for g in grid if any(dominates(s, g) or same(s, g) for s in found)]
    return {"trials": trials, "sweep_front": found, "grid_runs": len(grid_runs), "grid_front": grid,
            "grid_points_matched": len(matched), "hypervolume": {"sweep": hypervolume(found, floor),
                                                                  "grid": hypervolume(grid, floor)}}


def trial_counts(sweep: Path) -> dict:
    """How the study's trials ended: finished, pruned, and finished keeping the utility floor."""
    import optuna

    study = optuna.load_study(study_name="palu", storage=f"sqlite:///{sweep / 'study.db'}")
    done = [t for t in study.trials if t.state.is_finished()]
    return {"run": len(done), "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
            "kept_floor": sum(t.state == optuna.trial.TrialState.COMPLETE and t.constraints.get("utility_floor", 0) <= 0
                              for t in done)}
