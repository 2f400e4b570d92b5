"""``palu attack``: the TOFU metrics of an unlearned model under robustness attacks (see ``palu.eval.attacks``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

from palu.commands import eval as eval_command
from palu.config import load_config, require
from palu.data.qa import QAItem
from palu.errors import PaluError
from palu.eval.attacks import ATTACKS, BITS, quantize, relearn_indices, restrict_reference
from palu.eval.core import format_value, summary
from palu.eval.sets import eval_sets
from palu.eval.tofu import evaluate_tofu
from palu.io import read_json, write_json
from palu.models import load_model_and_tokenizer, require_model
from palu.runs import RELEARN_DIR, RESULTS, SUMMARY, Reuse, finish, run_folder
from palu.train.finetune import finetune
from palu.train.loop import TrainConfig

HELP = "evaluate an unlearned model under relearning, quantization and paraphrase attacks"
RESUMABLE = False
log = logging.getLogger(__name__)
UNATTACKED = "none"
TABLE_METRICS = ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_quality",
                 "exact_memorization", "extraction_strength", "privleak")


def relearn_train() -> TrainConfig:
    """A short relearning run at a pretrained model's learning rate; raise lr (~1e-3) for models from scratch."""
    return TrainConfig(epochs=3, lr=1e-5, batch_size=4, warmup_epochs=0, schedule="constant")


@dataclass
class Config(eval_command.Config):
    """``palu attack``: the TOFU metrics of an unlearned model under robustness attacks.

    The model, tokenizer, evaluation sets, retain reference and evaluation options are those of
    ``palu eval`` (``EvalConfig``).

    Attributes:
        attacks: which of ``relearn``, ``quantize`` and ``paraphrase`` to run (all by default).
        relearn_items: forget items the attacker fine-tunes on; None: 10% of the forget set, at
            least 1, drawn at random with ``relearn.seed`` (so they span the forget authors).
            They are left out of the forget set for every row, the unattacked one included, so
            that all rows score the same items and relearning is judged only on facts it did not
            train on: scoring the trained items would measure fresh memorisation, not recovery.
        relearn: the relearning run (through the shared training loop); the relearned model is
            saved under ``<output_dir>/relearn``.
        quantize_bits: weight widths to try, each 8 or 4. With bitsandbytes and a CUDA GPU, its
            int8 (no outlier threshold) and NF4 (blocks of 64) layers; otherwise a symmetric
            round-to-nearest round trip per output channel (``round_trip``). The results record which.
    """

    output_dir: str = "runs/attack"
    attacks: list[Literal["relearn", "quantize", "paraphrase"]] = field(default_factory=lambda: list(ATTACKS))
    relearn_items: int | None = None
    relearn: TrainConfig = field(default_factory=relearn_train)
    quantize_bits: list[Literal[8, 4]] = field(default_factory=lambda: list(BITS))

    def __post_init__(self) -> None:
        if self.relearn_items is not None:
            require(self.relearn_items >= 1, "relearn_items", "at least 1 (or null for 10% of the forget set)",
                    self.relearn_items)


@dataclass
class _Run:
    """What every row of one ``run_attack`` shares. ``scored``: the forget positions every row scores."""

    cfg: Config
    sets: dict[str, list[QAItem]]
    reference: dict | None
    scored: list[int]
    out: Path
    progress: bool

    def score(self, model, tok, indices: list[int] | None = None, paraphrase: bool = False) -> dict:
        """The TOFU suite on the forget items at ``indices`` (default ``scored``) and the other sets;
        with ``paraphrase``, on the forget items alone, asked their paraphrased questions."""
        indices = self.scored if indices is None else indices
        forget = [self.sets["forget"][i] for i in indices]
        if paraphrase:
            sets = {"forget": [replace(item, question=item.paraphrased_question) for item in forget]}
        else:
            sets = {**self.sets, "forget": forget}
        c = self.cfg
        metrics = evaluate_tofu(model, tok, sets, c.prompt, restrict_reference(self.reference, indices), c.batch_size,
                                c.max_new_tokens, c.max_length, progress=self.progress)
        return {"forget_indices": indices, "metrics": metrics}

    def load(self, dtype: str = "auto"):
        """A fresh copy of the model under attack, and its tokenizer: no attack sees another's changes."""
        return load_model_and_tokenizer(self.cfg.model, self.cfg.tokenizer, dtype)

    def unattacked(self) -> dict:
        return self.score(*self.load())

    def relearned(self, relearned: list[int]) -> dict:
        model, tok = self.load(self.cfg.relearn.dtype)
        folder = self.out / RELEARN_DIR
        items = [self.sets["forget"][i] for i in relearned]
        history = finetune(model, tok, items, self.cfg.relearn, self.cfg.prompt, folder, progress=self.progress)
        finish(folder, model, tok, history)
        return {**self.score(model, tok), "relearned_indices": relearned, "history": history}

    def quantized(self, bits: int) -> dict:
        model, tok = self.load()
        backend = quantize(model, bits)
        return {**self.score(model, tok), "backend": backend}

    def paraphrased(self, indices: list[int]) -> dict:
        asked = set(indices)
        missing = [i for i in self.scored if i not in asked]
        if missing:
            log.warning("%d of %d forget items have no paraphrased question; the paraphrase attack skips them "
                        "(listed in results.json).", len(missing), len(self.scored))
        model, tok = self.load()
        return {**self.score(model, tok, indices, paraphrase=True), "without_paraphrased_question": missing}


def run_attack(cfg: Config, overwrite: bool = False, progress: bool = True) -> dict[str, dict]:
    """Score the unattacked model (row "none") and each attack; returns {row: {metric: value}}.

    Rows: "none", then in the order of ``cfg.attacks`` "relearn", "quantize_8bit"/"quantize_4bit"
    and "paraphrase". After every row, ``results.json`` (per row: the per-item results under
    "metrics", "forget_indices" (the forget-set position of each scored item) and what the attack
    did) and ``summary.json`` are rewritten, so an interrupted run keeps its finished rows.
    """
    require_model(cfg)
    sets = eval_sets(cfg, cfg.synthetic)
    n = len(sets["forget"])
    relearned = relearn_indices(n, cfg.relearn_items, cfg.relearn.seed) if "relearn" in cfg.attacks else []
    scored = sorted(set(range(n)) - set(relearned))
    paraphrased = [i for i in scored if sets["forget"][i].paraphrased_question]
    if "paraphrase" in cfg.attacks and not paraphrased:
        raise PaluError(f"the paraphrase attack needs paraphrased questions, and none of the {len(scored)} forget "
                        "items scored has one; add them (field paraphrased_question) or leave paraphrase out of "
                        "attacks.")
    reference = read_json(cfg.retain_reference) if cfg.retain_reference else None
    with run_folder(cfg.output_dir, "attack", cfg, Reuse(overwrite)) as out:
        run = _Run(cfg, sets, reference, scored, out, progress)
        rows = {UNATTACKED: run.unattacked}
        for name in cfg.attacks:
            if name == "relearn":
                rows[name] = partial(run.relearned, relearned)
            elif name == "quantize":
                rows.update({f"quantize_{bits}bit": partial(run.quantized, bits) for bits in cfg.quantize_bits})
            else:
                rows[name] = partial(run.paraphrased, paraphrased)
        results: dict[str, dict] = {}
        table: dict[str, dict] = {}
        for row, attack in rows.items():
            log.info("attack: %s", row)
            results[row] = attack()
            table[row] = summary(results[row]["metrics"])
            write_json(out / RESULTS, results)
            write_json(out / SUMMARY, table)
        return table


def attack_table(table: Mapping[str, Mapping[str, float | None]]) -> str:
    """The forget metrics (rows) under each attack (columns) beside the unattacked model's ("none"),
    the change from it in brackets, as plain text."""
    base = table.get(UNATTACKED, {})
    metrics = [m for m in TABLE_METRICS if any(m in values for values in table.values())]
    header = ["metric", *table]
    rows = [[m] + [_cell(values.get(m), None if row == UNATTACKED else base.get(m)) for row, values in table.items()]
            for m in metrics]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    legend = ("in brackets: the change from none; a rise in forget Prob, ROUGE, exact_memorization or "
              "extraction_strength is forgotten knowledge coming back")
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows), "", legend])


def _cell(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return format_value(value)
    change = value - base
    return f"{format_value(value)} ({'-' if change < 0 else '+'}{format_value(abs(change))})"


def main(args) -> str:
    cfg = load_config(Config, args.config, args.overrides)
    table = run_attack(cfg, args.overwrite, not args.quiet)
    return f"{attack_table(table)}\n\nresults in {Path(cfg.output_dir).resolve()}"
