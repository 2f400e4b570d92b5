"""The commands behind the CLI, as plain functions on typed configs (usable from Python too)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from palu.adapters import AdapterConfig, add_adapter, for_saving
from palu.config import build, require
from palu.data.loaders import DataSource
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.errors import PaluError
from palu.eval.core import summary
from palu.eval.tofu import SETS, evaluate_tofu
from palu.io import read_json, write_json
from palu.methods import get_method
from palu.models import load_model, load_tokenizer, require_model, tiny_llama, train_bpe_tokenizer
from palu.runs import MODEL_DIR, Reuse, finish, is_finished, run_folder
from palu.train.finetune import EarlyStop, StopWhenKnown, finetune
from palu.train.loop import TrainConfig
from palu.train.selection import EpochEvaluator, SelectionRule
from palu.train.unlearn import unlearn

log = logging.getLogger(__name__)
SCRATCH = "scratch"


@dataclass
class ScratchConfig:
    """A small Llama built from scratch (``model: scratch``): about 5M parameters at the defaults."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    vocab_size: int = 8000
    max_positions: int = 512

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "max_positions"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        require(self.hidden % self.heads == 0, "hidden", f"a multiple of heads ({self.heads})",
                self.hidden)


def scratch_train() -> TrainConfig:
    """Memorising QA from scratch: a high learning rate and cosine decay."""
    return TrainConfig(epochs=15, lr=1e-3, batch_size=16, schedule="cosine", warmup_epochs=1, max_length=256)


@dataclass
class FinetuneConfig:
    """``palu finetune``: train a target ("full") or retain model on QA data.

    Attributes:
        model: a hub id or folder to start from, or "scratch" for a new small Llama.
        tokenizer: defaults to the model's; with "scratch" and none given, a byte-level BPE is
            trained on the data.
        data: one or more sources, concatenated (e.g. TOFU full + real_authors + world_facts).
        train: defaults suit a model from scratch; use lr around 1e-5 for a pretrained model.
        early_stop: stop once the model knows a set (e.g. the forget set), before ``train.epochs``.
    """

    model: str = SCRATCH
    tokenizer: str | None = None
    data: list[DataSource] = field(default_factory=lambda: [synthetic("full")])
    output_dir: str = "runs/finetune"
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=scratch_train)
    early_stop: EarlyStop | None = None


@dataclass
class UnlearnConfig:
    """``palu unlearn``: remove the forget set from a model with PALU or another registered method.

    Attributes:
        model: the model to unlearn from (hub id or folder); it is also the frozen reference.
        method: ``name`` plus that method's options (see ``palu.methods``).
        peft: train a LoRA adapter instead of all weights (``peft=lora``).
        eval: evaluate after every epoch on these sets (and the starting model first); the best
            epoch by ``select`` is saved in ``<output_dir>/best``. None: no evaluation.
        select: the rule that picks the best epoch (see ``palu.train.selection``).
    """

    model: str = ""
    tokenizer: str | None = None
    forget: DataSource = field(default_factory=lambda: synthetic("forget"))
    retain: DataSource = field(default_factory=lambda: synthetic("retain"))
    method: dict = field(default_factory=lambda: {"name": "palu"})
    peft: AdapterConfig | None = None
    eval: EvalSets | None = None
    select: SelectionRule = field(default_factory=SelectionRule)
    output_dir: str = "runs/unlearn"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=1e-5, batch_size=8))


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
        fluency_model: a model sharing the evaluated model's tokenizer (the retain model, say) that
            scores the fluency of the forget generations; without it only the model-free fluency
            measures are reported.
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
    questions: str = "original"
    fluency_model: str | None = None

    def __post_init__(self) -> None:
        if self.questions not in ("original", "paraphrased"):
            raise PaluError(f"questions must be 'original' or 'paraphrased', not {self.questions!r}.")

    def options(self) -> dict:
        return {"batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens, "max_length": self.max_length}


@dataclass
class EvalConfig(EvalSets):
    """``palu eval``: the TOFU metrics of a model on forget and retain data, and on the optional sets."""

    model: str = ""
    tokenizer: str | None = None
    output_dir: str = "runs/eval"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


def load_configured(cfg):
    return load_model(cfg.model), load_tokenizer(cfg.tokenizer or cfg.model)


def qa_texts(items: list[QAItem]) -> list[str]:
    texts = []
    for it in items:
        texts += [it.question, it.answer, it.paraphrased_answer or "", it.paraphrased_question or "", *it.perturbed_answers]
    return [t for t in texts if t]


def run_finetune(cfg: FinetuneConfig, overwrite: bool = False, resume: bool = False, progress: bool = True,
                 allow_config_change: bool = False) -> Path:
    """Fine-tune and save; returns the saved model folder."""
    with run_folder(cfg.output_dir, "finetune", cfg, Reuse(overwrite, resume, allow_config_change)) as out:
        if is_finished(out):
            log.info("%s is already finished", out)
            return out / MODEL_DIR
        items = [it for source in cfg.data for it in load_items(source, cfg.synthetic)]
        if cfg.model == SCRATCH:
            tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_bpe_tokenizer(qa_texts(items),
                                                                                          cfg.scratch.vocab_size)
            s = cfg.scratch
            model = tiny_llama(len(tok), s.hidden, s.layers, s.heads, s.max_positions, tokenizer=tok,
                               seed=cfg.train.seed)
        else:
            model, tok = load_configured(cfg)
        stop = None
        if cfg.early_stop is not None:
            stop = StopWhenKnown(cfg.early_stop, load_items(cfg.early_stop.data, cfg.synthetic), tok, cfg.prompt,
                                 cfg.train.max_length)
        history = finetune(model, tok, items, cfg.train, cfg.prompt, out, resume, on_epoch_end=stop,
                           progress=progress)
        return finish(out, model, tok, history)


def method_config(options: dict):
    """The typed config of the method named in ``options["name"]``."""
    options = dict(options)
    spec = get_method(options.pop("name", "palu"))
    return spec.name, build(spec.config, options, "method")


def run_unlearn(cfg: UnlearnConfig, overwrite: bool = False, resume: bool = False, progress: bool = True,
                stop=None, allow_config_change: bool = False) -> Path:
    """Unlearn and save; returns the saved model folder. ``stop`` sees the per-epoch evaluations
    (with ``cfg.eval``) and may raise to end the run early."""
    require_model(cfg)
    name, mcfg = method_config(cfg.method)
    with run_folder(cfg.output_dir, "unlearn", cfg, Reuse(overwrite, resume, allow_config_change)) as out:
        if is_finished(out):
            log.info("%s is already finished", out)
            return out / MODEL_DIR
        forget, retain = load_items(cfg.forget, cfg.synthetic), load_items(cfg.retain, cfg.synthetic)
        model, tok = load_configured(cfg)
        if cfg.peft is not None:
            model = add_adapter(model, cfg.peft)
        evaluator = None
        if cfg.eval is not None:
            reference = read_json(cfg.eval.retain_reference) if cfg.eval.retain_reference else None
            evaluator = EpochEvaluator(tok, eval_sets(cfg.eval, cfg.synthetic), cfg.prompt, reference, out,
                                       cfg.select, stop=stop, **cfg.eval.options())
            evaluator.evaluate(0, model)
        history = unlearn(model, tok, forget, retain, name, mcfg, cfg.train, cfg.prompt, out, resume,
                          on_epoch_end=evaluator, progress=progress)
        if evaluator is not None:
            history = [evaluator.records[0], *history]
        return finish(out, for_saving(model, cfg.peft), tok, history)


def eval_sets(cfg: EvalSets, synthetic_cfg: SyntheticConfig) -> dict[str, list[QAItem]]:
    """The evaluation sets the config names, loaded, by name in ``SETS`` (the optional ones left out when None)."""
    sources = {name: getattr(cfg, name) for name in SETS}
    sets = {name: load_items(source, synthetic_cfg) for name, source in sources.items() if source is not None}
    if cfg.questions == "paraphrased" and "forget" in sets:
        missing = [item.source for item in sets["forget"] if not item.paraphrased_question]
        if missing:
            raise PaluError(f"{len(missing)} forget items have no paraphrased question (first: {missing[0]}); "
                            "use a source with paraphrased_question, or questions=original.")
        sets["forget"] = [replace(item, question=item.paraphrased_question) for item in sets["forget"]]
    return sets


def run_eval(cfg: EvalConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Evaluate, write ``results.json`` (per item) and ``summary.json``; returns the results."""
    require_model(cfg)
    with run_folder(cfg.output_dir, "eval", cfg, Reuse(overwrite)) as out:
        reference = read_json(cfg.retain_reference) if cfg.retain_reference else None
        sets = eval_sets(cfg, cfg.synthetic)
        model, tok = load_configured(cfg)
        scorer = load_model(cfg.fluency_model) if cfg.fluency_model else None
        results = evaluate_tofu(model, tok, sets, cfg.prompt, reference, progress=progress, fluency_model=scorer,
                                **cfg.options())
        write_json(out / "results.json", results)
        write_json(out / "summary.json", summary(results))
        return results
