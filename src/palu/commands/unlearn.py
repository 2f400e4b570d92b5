"""``palu unlearn``: remove the forget set from a model with PALU or a baseline."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from palu.adapters import AdapterConfig, add_adapter, for_saving
from palu.config import load_config
from palu.data.loaders import DataSource
from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig, load_items, synthetic
from palu.eval.muse import MuseSets
from palu.eval.sets import EvalSets, eval_sets
from palu.eval.suites import Suite, combined, harness_suite, muse_suite, tofu_suite
from palu.io import read_json, write_json, write_text
from palu.methods.common import MethodOptions
from palu.methods.palu import PaluConfig
from palu.models import load_model_and_tokenizer, load_model_config, load_tokenizer, require_model
from palu.runs import DONE, MODEL_DIR, REQUESTS, Reuse, finish, is_finished, request_dir, run_folder
from palu.train.loop import TrainConfig
from palu.train.selection import EpochEvaluator, SelectionRule
from palu.train.unlearn import unlearn

HELP = "remove the forget set from a model with PALU or a baseline"
RESUMABLE = True
log = logging.getLogger(__name__)


@dataclass
class Config:
    """``palu unlearn``: remove the forget set from a model with PALU or another registered method.

    Attributes:
        model: the model to unlearn from (hub id or folder); it is also the frozen reference.
        method: the method (``method=npo``) and its options (``method.beta=0.2``; see ``palu.methods``).
        peft: train a LoRA adapter instead of all weights (``peft=lora``).
        eval: evaluate after every epoch on these sets with TOFU's suite (and the starting model
            first); the best epoch by ``select`` is saved in ``<output_dir>/best``. None: no evaluation.
        eval_muse: evaluate after every epoch with MUSE's suite (documents), beside or instead of
            ``eval``; select by its metrics (``select.metric=forget_verbmem_ROUGE
            select.utility=retain_knowmem_ROUGE``). None: none.
        select: the rule that picks the best epoch (see ``palu.train.selection``).
        requests: deletion requests that arrive one after another: forget sets unlearned in this
            order, each from the model the one before left, instead of ``forget``. Each request is a
            run of its own in ``<output_dir>/request-N`` (evaluated after every epoch with
            ``eval``); the last one's model is the result. A resumed run skips finished requests.
    """

    model: str = ""
    tokenizer: str | None = None
    forget: DataSource = field(default_factory=lambda: synthetic("forget"))
    retain: DataSource = field(default_factory=lambda: synthetic("retain"))
    method: MethodOptions = field(default_factory=PaluConfig)
    peft: AdapterConfig | None = None
    eval: EvalSets | None = None
    eval_muse: MuseSets | None = None
    select: SelectionRule = field(default_factory=SelectionRule)
    output_dir: str = "runs/unlearn"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=1e-5, batch_size=8))
    requests: list[DataSource] = field(default_factory=list)


def run_unlearn(cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True,
                stop=None, allow_config_change: bool = False) -> Path:
    """Unlearn and save; returns the saved model folder. ``stop`` sees the per-epoch evaluations
    (with ``cfg.eval``) and may raise to end the run early."""
    require_model(cfg)
    with run_folder(cfg.output_dir, "unlearn", cfg, Reuse(overwrite, resume, allow_config_change)) as out:
        if cfg.requests:
            return _in_turn(cfg, out, progress, stop)
        if is_finished(out):
            log.info("%s is already finished", out)
            return out / MODEL_DIR
        forget, retain = load_items(cfg.forget, cfg.synthetic), load_items(cfg.retain, cfg.synthetic)
        model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer, cfg.train.dtype)
        if cfg.peft is not None:
            model = add_adapter(model, cfg.peft)
        evaluator = None
        if cfg.eval is not None or cfg.eval_muse is not None:
            evaluator = EpochEvaluator(epoch_suite(cfg, tok, progress), tok, out, cfg.select, stop=stop,
                                       every_epoch=cfg.eval.every_epoch if cfg.eval else "selection")
            evaluator.evaluate(0, model)
        history = unlearn(model, tok, forget, retain, cfg.method.name, cfg.method, cfg.train, cfg.prompt, out, resume,
                          on_epoch_end=evaluator, progress=progress)
        if evaluator is not None:
            history = [evaluator.records[0], *history]
        return finish(out, for_saving(model, cfg.peft), tok, history)


def check_inputs(cfg: Config) -> None:
    """Read what a run reads before it starts (the model's config, the tokenizer, the data, the evaluation
    sets and the retain reference), so a command that starts many runs (``palu sweep``) fails on a bad
    path with its own message before it writes anything."""
    require_model(cfg)
    load_model_config(cfg.model)
    load_tokenizer(cfg.tokenizer or cfg.model)
    for source in [*(cfg.requests or [cfg.forget]), cfg.retain]:
        load_items(source, cfg.synthetic)
    if cfg.eval is not None:
        eval_sets(cfg.eval, cfg.synthetic)
    for sets in (cfg.eval, cfg.eval_muse):
        if sets is not None and sets.retain_reference:
            read_json(sets.retain_reference)


def epoch_suite(cfg: Config, tokenizer, progress: bool) -> Suite:
    """The evaluation after every epoch: TOFU's suite (with its lm-eval tasks) and/or MUSE's."""
    reference = lambda path: read_json(path) if path else None
    suites = []
    if cfg.eval is not None:
        suites.append(tofu_suite(tokenizer, eval_sets(cfg.eval, cfg.synthetic), cfg.prompt,
                                 reference(cfg.eval.retain_reference), progress, **cfg.eval.options()))
        if cfg.eval.lm_eval is not None:
            suites.append(harness_suite(tokenizer, cfg.eval.lm_eval))
    if cfg.eval_muse is not None:
        suites.append(muse_suite(tokenizer, cfg.eval_muse, reference(cfg.eval_muse.retain_reference), progress))
    return combined(*suites)


def main(args) -> str:
    cfg = load_config(Config, args.config, args.overrides)
    saved = run_unlearn(cfg, args.overwrite, args.resume, not args.quiet, allow_config_change=args.allow_config_change)
    return f"unlearned model saved to {saved.resolve()}"


def _in_turn(cfg: Config, out: Path, progress: bool, stop) -> Path:
    """Unlearn ``cfg.requests`` one after another, each from the previous request's model; returns the
    last model. Each request resumes (or skips, when finished) in its own folder."""
    model = cfg.model
    steps = []
    for number, request in enumerate(cfg.requests, 1):
        step = replace(cfg, model=model, tokenizer=cfg.tokenizer or cfg.model, forget=request, requests=[],
                       output_dir=str(request_dir(out, number)))
        log.info("request %d of %d: %s", number, len(cfg.requests), request.name)
        model = str(run_unlearn(step, resume=True, progress=progress, stop=stop))
        steps.append({"request": number, "forget": request.path, "split": request.split, "model": model})
    write_json(out / REQUESTS, steps)
    write_text(out / DONE, "")
    return Path(model)
