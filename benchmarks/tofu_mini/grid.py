"""The paper's two findings at TOFU-mini scale: does the prefix suffice (N), does top-K suffice (K)?

Every cell is a PALU run with the GPT-4o spans at the comparison's selected PALU learning rate,
alpha 2, 5 epochs, evaluated after every epoch and reduced to its selected epoch by the same rule
as the comparison. Each cell also keeps its peak: the epoch with the best forget quality at any
utility, which separates how far a setting forgets from what it costs. The target variant
(vocabulary mean against the mean of the K logits) runs at the default K = 50, N = 3.
"""

from __future__ import annotations

from pathlib import Path

from compare import PALU, Comparison

from palu.io import read_json

KS = (1, 10, 50, 1000, -1)  # -1: the whole vocabulary
NS = (1, 3, 5, -1)  # -1: every token of every span


def label(value: int) -> str:
    return "all" if value < 0 else str(value)


def peak(run: Path) -> dict:
    """The epoch with the best forget quality whatever its utility: how far forgetting goes at all."""
    top = max((r for r in read_json(run / "history.json") if r["epoch"] > 0), key=lambda r: r["forget_quality"])
    return {key: top[key] for key in ("epoch", "forget_quality", "model_utility", "forget_truth_ratio",
                                      "forget_Q_A_Prob")}


def run_grid(cmp: Comparison, lr: float) -> dict:
    forget = cmp.forget_source("palu (GPT-4o spans)")
    folder = cmp.out / "grid"
    cells = []
    for k in KS:
        for n in NS:
            run = cmp.train(folder / f"K{label(k)}-N{label(n)}", {**PALU, "top_k": k, "first_n": n}, forget, lr)
            cells.append({"K": label(k), "N": label(n), "folder": str(run), **(cmp.best([(run, lr)]) or {}),
                          "peak": peak(run)})
    variants = {}
    for target in ("mean", "local_mean"):
        run = cmp.train(folder / f"target-{target}", {**PALU, "target": target}, forget, lr)
        variants[target] = {**(cmp.best([(run, lr)]) or {}), "peak": peak(run)}
    return {"lr": lr, "cells": cells, "targets": variants}
