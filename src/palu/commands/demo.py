"""`palu demo`: the whole story offline on the built-in data, in minutes on a laptop CPU.

Train a tiny target model on all authors and a retain model without the forget authors,
unlearn the forget authors from the target with PALU, and compare the three.
Every stage is a run folder of its own, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from palu.adapters import AdapterConfig
from palu.commands import eval as eval_command
from palu.commands import finetune, unlearn
from palu.commands.eval import run_eval
from palu.commands.finetune import ScratchConfig, run_finetune, scratch_train
from palu.commands.unlearn import run_unlearn
from palu.config import load_config
from palu.data.prompts import PromptConfig
from palu.data.qa import item_texts
from palu.data.sources import SyntheticConfig, synthetic
from palu.data.synthetic import synthetic_splits
from palu.eval.core import format_value
from palu.eval.sets import EvalSets
from palu.io import read_json, replacing_dir, write_json
from palu.methods import METHODS
from palu.methods.common import MethodOptions
from palu.methods.palu import PaluConfig
from palu.models import train_bpe_tokenizer
from palu.runs import RESULTS, SUMMARY, TOKENIZER_DIR, Reuse, evaluation_dir, run_folder
from palu.train.loop import TrainConfig

HELP = "train tiny full and retain models on the built-in data, unlearn with PALU, compare (offline)"
RESUMABLE = True

COLUMNS = [  # (metric key, column title)
    ("forget_quality", "forget quality"),
    ("forget_Q_A_Prob", "forget Prob"),
    ("forget_Q_A_ROUGE", "forget ROUGE"),
    ("exact_memorization", "forget EM"),
    ("retain_Q_A_Prob", "retain Prob"),
    ("retain_Q_A_ROUGE", "retain ROUGE"),
    ("privleak", "privleak"),
]


@dataclass
class Config:
    """``palu demo``: every stage's settings; the defaults finish in minutes on 2 CPU cores.

    Attributes:
        finetune: training of the target and retain models from scratch.
        unlearn: training settings of the unlearning run.
        method: the unlearning method and its options.
        peft: unlearn through a LoRA adapter (``peft=lora``) instead of all weights.
        retain_eval_items: retain items evaluated (the first ones), to keep evaluation quick.
        max_new_tokens: generation length for ROUGE (the built-in answers are short).
        eval_every_epoch: evaluate the unlearning run after every epoch and keep its best epoch
            (see ``palu.train.selection``); slower, and what the report's per-epoch plots show.
    """

    output_dir: str = "palu-demo"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    finetune: TrainConfig = field(default_factory=scratch_train)
    unlearn: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=5e-4, batch_size=8,
                                                                     warmup_epochs=1, max_length=256))
    method: MethodOptions = field(default_factory=lambda: PaluConfig(top_k=50, first_n=3, alpha=2.0))
    peft: AdapterConfig | None = None
    retain_eval_items: int = 100
    max_new_tokens: int = 64
    eval_every_epoch: bool = False


def compared_methods(cfg: Config, compare: bool) -> dict[str, MethodOptions]:
    """{row name: method options}: the configured method, and with ``compare`` every registered one
    (the configured options for its own method, the defaults for the others)."""
    if not compare:
        return {"unlearned": cfg.method}
    return {name: cfg.method if name == cfg.method.name else METHODS[name].config() for name in METHODS}


def run_demo(cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True,
             compare: bool = False, allow_config_change: bool = False) -> dict:
    """Run every stage (skipping finished ones) and return {model: {metric: value}}.

    With ``compare``, every registered method unlearns the same full model with the same
    training settings, one row each.
    """
    with run_folder(cfg.output_dir, "demo", cfg, Reuse(overwrite, resume, allow_config_change)) as out:
        return _stages(cfg, out, progress, compare)


def _stages(cfg: Config, out: Path, progress: bool, compare: bool) -> dict:
    tok_dir = out / TOKENIZER_DIR
    if not (tok_dir / "tokenizer.json").exists():
        s = cfg.synthetic
        splits = synthetic_splits(s.n_authors, s.forget_authors, s.holdout_authors, s.seed)
        texts = item_texts(splits.retain + splits.forget + splits.holdout)
        with replacing_dir(tok_dir) as tmp:
            train_bpe_tokenizer(texts, cfg.scratch.vocab_size).save_pretrained(tmp)
    common = dict(synthetic=cfg.synthetic, prompt=cfg.prompt)
    models = {}
    for name, split in (("retain", "retain"), ("full", "full")):
        ft = finetune.Config(model="scratch", tokenizer=str(tok_dir), data=[synthetic(split)],
                             output_dir=str(out / name), scratch=cfg.scratch, train=cfg.finetune, **common)
        models[name] = run_finetune(ft, resume=True, progress=progress)
    reference = str(evaluation_dir(out, "retain") / RESULTS)
    sets = EvalSets(retain=synthetic("retain", cfg.retain_eval_items), holdout=synthetic("holdout"),
                    retain_reference=reference, fluency_model=str(models["retain"]), max_new_tokens=cfg.max_new_tokens,
                    max_length=max(cfg.finetune.max_length, cfg.unlearn.max_length))

    def evaluate(name: str) -> dict:
        run = evaluation_dir(out, name)
        if not (run / SUMMARY).exists():
            own = {**vars(sets), "retain_reference": None if name == "retain" else reference}
            run_eval(eval_command.Config(**own, model=str(models[name]), output_dir=str(run), **common), overwrite=True,
                     progress=progress)
        return read_json(run / SUMMARY)

    table = {"retain": evaluate("retain")}  # the reference: no forget quality against itself
    for name, method in compared_methods(cfg, compare).items():
        ul = unlearn.Config(model=str(models["full"]), method=method, peft=cfg.peft, output_dir=str(out / name),
                           train=cfg.unlearn, eval=sets if cfg.eval_every_epoch else None, **common)
        models[name] = run_unlearn(ul, resume=True, progress=progress)
    table.update({name: evaluate(name) for name in models if name != "retain"})
    write_json(out / SUMMARY, table)
    return table


def render_table(table: dict) -> str:
    """The demo's comparison as a plain-text table (also used by the CLI)."""
    header = ["model"] + [title for _, title in COLUMNS]
    rows = [[name] + [format_value(values.get(key)) for key, _ in COLUMNS] for name, values in table.items()]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def arguments(parser) -> None:
    parser.add_argument("--compare", action="store_true", help="unlearn with PALU and every baseline; one table")


def main(args) -> str:
    cfg = load_config(Config, args.config, args.overrides)
    table = run_demo(cfg, args.overwrite, args.resume, not args.quiet, args.compare, args.allow_config_change)
    return f"{render_table(table)}\n\nall outputs in {Path(cfg.output_dir).resolve()}"
