"""The comparison: PALU (GPT-4o spans and palu's own contrast spans) and every baseline, each with
the same tuning budget and the same selection rule, then scored, attacked and reported.

Tuning: each method runs at the first ``budget`` learning rates of ``LRS`` (5 epochs, batch 8, one
warm-up epoch, linear decay), evaluated after every epoch. The selection rule is palu's default
(``palu.train.selection``): among all epochs of all the method's runs whose model utility stays at
or above 0.95 of the full model's, the best forget quality; the earliest epoch breaks ties. The
selected model is then evaluated once more with the holdout (privleak) and the fluency scorer, and
attacked (relearning on 10% of the forget items; 4-bit weights).

Every run starts from the full model, whose evaluation (epoch 0) is computed once and shared.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from protocol import EVAL_OPTIONS, Protocol, float32

from palu.annotate import annotate
from palu.commands.annotate import write_spans
from palu.commands.attack import Config as AttackConfig
from palu.commands.attack import relearn_train, run_attack
from palu.commands.eval import run_eval
from palu.commands.unlearn import Config as UnlearnConfig
from palu.commands.unlearn import run_unlearn
from palu.data.loaders import DataSource, load_qa
from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig
from palu.eval.sets import EvalSets, eval_sets
from palu.eval.suites import tofu_suite
from palu.io import read_json, write_json
from palu.methods import configure
from palu.models import load_model, load_tokenizer
from palu.runs import new_run
from palu.train.loop import TrainConfig
from palu.train.selection import BEST_DIR, EpochEvaluator, SelectionRule, best_epoch, epoch_path, share_start

log = logging.getLogger("tofu_mini")
LRS = (3e-4, 1e-4, 3e-5, 1e-3, 5e-5, 2e-3, 5e-4, 2e-4, 1e-5, 7e-4, 1.5e-3, 3e-3)  # in the order they are tried
PALU = {"name": "palu", "top_k": 50, "first_n": 3, "alpha": 2.0}
METHODS = {
    "palu (GPT-4o spans)": PALU,
    "palu (contrast spans)": PALU,
    **{name: {"name": name} for name in ("ga", "graddiff", "npo", "simnpo", "idkdpo", "rmu", "wga", "pdu", "tpo")},
}
RULE = SelectionRule()


def selected(folder: Path) -> dict | None:
    """What a finished final evaluation or attack was run on (None when there is none)."""
    done = (folder / "summary.json").is_file() and (folder / "selected.json").is_file()
    return read_json(folder / "selected.json") if done else None


def slug(name: str) -> str:
    return name.replace(" (", "-").replace(")", "").replace(" ", "-").replace("GPT-4o-spans", "gpt4o").lower()


class Comparison:
    def __init__(self, protocol: Protocol, budget: int, epochs: int):
        self.p, self.budget, self.epochs = protocol, budget, epochs
        self.out = protocol.evaluations

    def forget_source(self, method: str) -> DataSource:
        """forget items with the spans the method reads: the paper's GPT-4o spans (re-anchored by the
        file annotator), or those of palu's contrast annotator on the full model."""
        kind = "contrast" if "contrast" in method else "gpt4o"
        path = self.p.workdir / "spans" / f"{self.p.forget}_{kind}.jsonl"
        if not path.is_file():
            items = load_qa(self.p.source(self.p.forget))
            if kind == "contrast":
                items, report = annotate(items, "contrast", model=str(self.p.model("full")))
            else:
                gpt4o = self.p.tofu.parent / "tofu_annotations" / f"{self.p.forget}_gpt4o.jsonl"
                items, report = annotate(items, "file", path=str(gpt4o))
            log.info("spans (%s): %s", kind, report.summary().splitlines()[0])
            write_spans(path, items)
        return DataSource(str(path))

    def epoch_sets(self) -> EvalSets:
        """The per-epoch evaluation: forget quality and model utility (holdout and fluency come once, at the end)."""
        ev = self.p.eval_config(self.p.model("full"), "")
        return EvalSets(forget=ev.forget, retain=ev.retain, real_authors=ev.real_authors, world_facts=ev.world_facts,
                        retain_reference=ev.retain_reference, **EVAL_OPTIONS)

    def start_record(self) -> Path:
        """The full model's per-epoch evaluation, computed once and given to every run as its epoch 0.

        On one thread, like the runs' own per-epoch evaluations (one worker per core): the thread
        count moves values by float rounding, and the start sets every run's utility floor."""
        path = epoch_path(self.out / "start", 0)
        if not path.is_file():
            sets = self.epoch_sets()
            full = str(self.p.model("full"))
            tok = load_tokenizer(full)
            suite = tofu_suite(tok, eval_sets(sets, SyntheticConfig()), PromptConfig(),
                               read_json(sets.retain_reference), **sets.options())
            evaluator, threads = EpochEvaluator(suite, tok, self.out / "start", RULE), torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                evaluator.evaluate(0, load_model(full))
            finally:
                torch.set_num_threads(threads)
        return path

    def start_run(self, folder: Path) -> None:
        """``folder`` as a `palu unlearn` run that resumes, holding the full model's evaluation as epoch 0."""
        new_run(folder, "unlearn")
        share_start(folder, self.start_record())

    def run(self, method: str, lr: float) -> Path:
        return self.train(self.out / "runs" / slug(method) / f"lr-{lr:g}", METHODS[method],
                          self.forget_source(method), lr)

    def train(self, folder: Path, method: dict, forget: DataSource, lr: float) -> Path:
        """One unlearning run from the full model, evaluated after every epoch (cached, resumable)."""
        self.start_run(folder)
        cfg = UnlearnConfig(model=str(self.p.model("full")), forget=forget, retain=self.p.retain_set,
                            method=configure(method), eval=self.epoch_sets(), select=RULE, output_dir=str(folder),
                            train=self.unlearn_train(lr))
        run_unlearn(cfg, resume=True, progress=False)
        return folder

    def unlearn_train(self, lr: float = TrainConfig.lr) -> TrainConfig:
        """Every unlearning run's training: 5 epochs, batch 8, one warm-up epoch, float32."""
        return float32(TrainConfig(epochs=self.epochs, lr=lr, batch_size=8, warmup_epochs=1,
                                   max_length=256))

    def select(self, method: str) -> tuple[Path, dict] | None:
        """The method's selected epoch over all its runs, by the same rule as within one run."""
        best = self.best([(self.run(method, lr), lr) for lr in LRS[: self.budget]])
        return None if best is None else (Path(best["run"]), best)

    def best(self, runs: list[tuple[Path, float]]) -> dict | None:
        """The selected epoch among the evaluated epochs of ``runs`` (folder, lr), with its run and lr."""
        records = [{**r, "run": str(folder), "lr": lr} for folder, lr in runs
                   for r in read_json(folder / "history.json") if r["epoch"] > 0 and "forget_quality" in r]
        return best_epoch([read_json(self.start_record())["summary"], *records], RULE)

    def final(self, method: str, run: Path, best: dict, tag: str = "") -> dict:
        """The selected model evaluated with everything, then attacked (redone when the selection changed);
        ``tag`` keeps another stage's final evaluations apart."""
        model = run / BEST_DIR
        chosen = {"run": str(run), "epoch": best["epoch"]}
        ev, attacks = self.out / f"eval-{tag}{slug(method)}", self.out / f"attack-{tag}{slug(method)}"
        if selected(ev) != chosen:
            run_eval(self.p.eval_config(model, ev), overwrite=True, progress=False)
            write_json(ev / "selected.json", chosen)
        if selected(attacks) != chosen:
            base = self.p.eval_config(model, attacks)
            cfg = AttackConfig(**{**vars(base), "retain": None, "real_authors": None, "world_facts": None,
                                  "holdout": None, "fluency_model": None}, attacks=["relearn", "quantize"],
                               quantize_bits=[4], relearn=float32(replace(relearn_train(), lr=1e-3)))
            run_attack(cfg, overwrite=True, progress=False)
            write_json(attacks / "selected.json", chosen)
        return {"eval": read_json(ev / "summary.json"), "attack": read_json(attacks / "summary.json")}

    def references(self) -> dict:
        """The full and retain models with the final evaluation (the retain one is the protocol's), as rows."""
        full = self.out / "eval-full"
        if not (full / "summary.json").is_file():
            run_eval(self.p.eval_config(self.p.model("full"), full), overwrite=True, progress=False)
        return {name: {"eval": read_json(self.out / f"eval-{name}" / "summary.json")} for name in ("full", "retain")}

    def run_all(self) -> dict:
        table = self.references()
        for method in METHODS:
            log.info("compare: %s", method)
            chosen = self.select(method)
            if chosen is None:
                table[method] = {"selected": None}
                continue
            run, best = chosen
            table[method] = {"selected": {"run": str(run.relative_to(self.out)), "lr": best["lr"],
                                          "epoch": best["epoch"]}, **self.final(method, run, best)}
            write_json(self.out / "comparison.json", table)
        write_json(self.out / "comparison.json", table)
        write_json(self.out / "summary.json", {name: row.get("eval") for name, row in table.items()})
        return table
