"""The Markdown tables of benchmarks/results/tofu_mini.md, from the stages' JSON files."""

from __future__ import annotations

from palu.eval.core import format_value

COLUMNS = (("forget_quality", "forget quality"), ("model_utility", "model utility"),
           ("forget_Q_A_Prob", "forget Prob"), ("forget_Q_A_ROUGE", "forget ROUGE"),
           ("forget_truth_ratio", "forget TR"), ("exact_memorization", "forget EM"),
           ("fluency_token_prob", "fluency"), ("fluency_distinct_2", "distinct-2"), ("privleak", "privleak"))


def cell(value) -> str:
    if isinstance(value, (int, str)):
        return str(value)
    return "n/a" if value is None else format_value(value)


def comparison_table(table: dict) -> str:
    """One row per model: the final evaluation, the utility ratio to the full model, and the attacks."""
    full_mu = (table.get("full", {}).get("eval") or {}).get("model_utility")
    head = ["model", "selected (lr, epoch)", *(label for _, label in COLUMNS), "MU / full",
            "relearned: forget Prob (FQ)", "4-bit: forget Prob (FQ)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        ev = row.get("eval") or {}
        chosen = row.get("selected")
        picked = _picked(chosen) if chosen else ("" if name in ("full", "retain") else "none kept the utility floor")
        ratio = ev.get("model_utility") / full_mu if ev.get("model_utility") and full_mu else None
        attack = row.get("attack") or {}
        attacked = [_attacked(attack.get(key)) for key in ("relearn", "quantize_4bit")]
        cells = [name, picked, *(cell(ev.get(key)) for key, _ in COLUMNS), cell(ratio), *attacked]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _picked(chosen: dict) -> str:
    """lr and epoch, then a searched run's other settings (the equal search's knobs)."""
    knobs = {k: v for k, v in (chosen.get("settings") or {}).items() if k != "lr"}
    shown = ", ".join(f"{k} {cell(v)}" for k, v in knobs.items())
    return f"{chosen['lr']:g}, {chosen['epoch']}" + (f" ({shown})" if shown else "")


def _attacked(summary: dict | None) -> str:
    if not summary:
        return ""
    return f"{cell(summary.get('forget_Q_A_Prob'))} ({cell(summary.get('forget_quality'))})"


def grid_table(rows: list[dict], ks: list[str], ns: list[str], show) -> str:
    """K (rows) by N (columns), each cell rendered by ``show(cell)``."""
    by = {(r["K"], r["N"]): r for r in rows}
    lines = ["| K \\ N | " + " | ".join(ns) + " |", "|" + "---|" * (len(ns) + 1)]
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(show(by.get((k, n), {})) for n in ns) + " |")
    return "\n".join(lines)


def selected(key: str):
    """A cell's selected-epoch value of ``key`` ("floor" where no epoch kept the utility floor)."""
    return lambda row: cell(row[key]) if key in row else "floor"


def peak_cell(row: dict) -> str:
    """A cell's best forget quality at any epoch, with the utility and forget truth ratio there."""
    top = row.get("peak")
    return "" if not top else (f"{cell(top['forget_quality'])} (MU {cell(top['model_utility'])}, "
                               f"TR {cell(top['forget_truth_ratio'])})")


def search_summary(found: dict) -> str:
    """Both Pareto fronts, and how the sweep's covers the grid's."""
    def rows(front: list[dict]) -> list[str]:
        if not front:
            return ["(empty: no run kept the utility floor)"]
        keys = [k for k in ("lr", "alpha", "top_k", "first_n", "run", "epoch") if any(k in p for p in front)]
        out = ["| forget quality | model utility | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
        out += [f"| {cell(p['forget_quality'])} | {cell(p['utility'])} | "
                + " | ".join(cell(p.get(k)) for k in keys) + " |"
                for p in front]
        return out
    hv, n = found["hypervolume"], found["trials"]
    return "\n".join([
        f"Sweep trials: {n['run']} run, {n['pruned']} pruned (utility collapsed), {n['kept_floor']} kept the utility "
        "floor (the search's constraint).",
        f"Grid front points matched or beaten by a sweep point: {found['grid_points_matched']} of "
        f"{len(found['grid_front'])}. Hypervolume above the utility floor: sweep {hv['sweep']:.4g}, "
        f"grid {hv['grid']:.4g}.",
        "", "Sweep front:", "", *rows(found["sweep_front"]), "", "Grid front:", "", *rows(found["grid_front"])])


def equal_summary(found: dict) -> str:
    """The Pareto front of every trial's selected epoch across methods, and where PALU stands on it."""
    front = found["front"]
    lines = [f"Pareto front of the {len(found['plane'])} trials that kept the utility floor (each at its selected "
             "epoch), across methods:", "", "| method | trial | epoch | forget quality | model utility |",
             "|---|---|---|---|---|"]
    lines += [f"| {p['method']} | {p['trial']} | {p['epoch']} | {cell(p['forget_quality'])} | {cell(p['utility'])} |"
              for p in front]
    on_front = sorted({p["method"] for p in front})
    palu = [p for p in found["plane"] if p["method"].startswith("palu")]
    best = max(palu, key=lambda p: p["forget_quality"], default=None)
    where = ("no PALU trial kept the utility floor" if best is None else
             f"PALU's best kept trial: forget quality {cell(best['forget_quality'])} at utility "
             f"{cell(best['utility'])} ({best['method']}, {best['trial']})")
    start = (f" Each method's first {found['startup']} trials were TPE's random start, the other "
             f"{found['trials'] - found['startup']} drawn from its model of the study." if "startup" in found else "")
    rest = found.get("unsearched")
    partial = (f" Still to be searched: {', '.join(rest)}; the front and the ranking hold only among the methods "
               "above." if rest else "")
    return "\n".join([*lines, "", f"Methods on the front: {', '.join(on_front) or 'none'}. {where}.{start}{partial}"])
