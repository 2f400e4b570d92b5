"""What an evaluation runs on, as a config section, and those sets loaded: shared by ``palu eval``,
``palu attack`` and the evaluation after every unlearning epoch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from palu.data.loaders import DataSource
from palu.data.qa import QAItem
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.errors import PaluError
from palu.eval.harness import HarnessTasks
from palu.eval.tofu import SETS


@dataclass
class EvalSets:
    """What an evaluation runs on: shared by ``palu eval``, ``palu attack`` and the evaluation
    after every unlearning epoch.

    Attributes:
        real_authors, world_facts: general-knowledge sets (TOFU's ``*_perturbed`` files); with
            both, model utility is reported. Not evaluated when None.
        holdout: items no model was trained on (``synthetic("holdout")`` for the built-in data);
            gives the membership-inference AUCs and privleak. Not evaluated when None.
        retain_reference: results.json of the retain model on the same data (or an
            open-unlearning TOFU_EVAL.json); forget quality and privleak need it and are reported
            as unavailable without it.
        max_new_tokens: generation length for ROUGE.
        questions: "original", or "paraphrased" to ask the forget questions in other words
            (TOFU's ``paraphrased_question``; every forget item needs one).
        lm_eval: lm-evaluation-harness tasks scored beside (``lm_eval.tasks=[mmlu]``), as
            ``lm-eval/<task>/<metric>``: a utility the selection rule can use
            (``select.utility=lm-eval/mmlu/acc``). None: none.
        fluency_model: a model sharing the evaluated model's tokenizer (the retain model, say) that
            scores the fluency of the forget generations; without it only the model-free fluency
            measures are reported.
        every_epoch: what the evaluation after each unlearning epoch computes: "selection" (what the
            selection rule reads; the whole suite on the starting model and on each epoch that
            becomes the best, so the selected epoch's record is complete) or "all" (the whole suite).
    """

    forget: DataSource = field(default_factory=lambda: synthetic("forget"))
    retain: DataSource = field(default_factory=lambda: synthetic("retain"))
    real_authors: DataSource | None = None
    world_facts: DataSource | None = None
    holdout: DataSource | None = None
    retain_reference: str | None = None
    batch_size: int = 16
    max_new_tokens: int = 200
    max_length: int = 512
    questions: Literal["original", "paraphrased"] = "original"
    fluency_model: str | None = None
    lm_eval: HarnessTasks | None = None
    every_epoch: Literal["selection", "all"] = "selection"

    def options(self) -> dict:
        return {"batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens, "max_length": self.max_length}


def eval_sets(cfg: EvalSets, synthetic_cfg: SyntheticConfig) -> dict[str, list[QAItem]]:
    """The evaluation sets the config names, loaded, by name in ``SETS`` (the optional ones left out when None)."""
    sources = {name: getattr(cfg, name) for name in SETS}
    documents = [name for name, source in sources.items() if source is not None and source.kind == "text"]
    if documents:
        raise PaluError(f"the TOFU metrics ask questions, and {documents[0]} holds documents (kind: text); evaluate "
                        "a model on documents with `palu eval suite=muse`.")
    sets = {name: load_items(source, synthetic_cfg) for name, source in sources.items() if source is not None}
    if cfg.questions == "paraphrased" and "forget" in sets:
        missing = [item.source for item in sets["forget"] if not item.paraphrased_question]
        if missing:
            raise PaluError(f"{len(missing)} forget items have no paraphrased question (first: {missing[0]}); "
                            "use a source with paraphrased_question, or questions=original.")
        sets["forget"] = [replace(item, question=item.paraphrased_question) for item in sets["forget"]]
    return sets
