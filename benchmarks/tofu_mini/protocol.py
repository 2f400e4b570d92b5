"""TOFU-mini: the data, the two cached models and the evaluation sets every stage shares.

Built only from TOFU's files (``--data``, default ../shared/data/tofu) and palu's own commands:

- ``data/``: full.json and the split's retain set (retain99, retain95 or retain90 for forget01, 05,
  10) without 10 held-out authors (items 3400-3599 of full.json, outside forget10 and
  retain_perturbed), and those authors as holdout.json. TOFU's own holdout
  sets are not among its files here; holding out authors gives the membership-inference metrics
  (privleak) a set no model has seen.
- ``tokenizer/``: a byte-level BPE (8k) trained on the training texts.
- ``full/``: a Llama-architecture model (hidden 256, 4 layers) trained from scratch on full (less
  the holdout) plus real_authors and world_facts, so the utility sets measure retained
  knowledge. Training stops once forget05 answer probability and ROUGE-L recall both reach 0.9,
  whatever the split: every split unlearns from the same full model.
- ``retain95/`` (``retain99/``, ``retain90/``): the same recipe on the split's retain set (less the
  holdout) plus the two sets; it stops once it knows its own retain_perturbed items to the same
  level. It is the model the unlearned one should become.
- ``compare-<forget>/eval-retain/``: the retain model's evaluation, the reference of forget quality
  and privleak (and the retain row of the comparison).

With ``pretrain`` (the second regime, a model that knows the language), the tokenizer also learns
from general English text (``--pretrain-data``: MUSE-News's BBC articles, about 3,500 of them), a
``pretrained/`` model learns that text from scratch first (one pass, a tenth of it warm-up), and
the full and retain models are fine-tuned from it rather than from scratch.

Both models and the reference are cached: a finished run is reused, an interrupted one resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from palu.commands.eval import Config as EvalConfig
from palu.commands.eval import run_eval
from palu.commands.finetune import Config as FinetuneConfig
from palu.commands.finetune import run_finetune, scratch_train
from palu.data.loaders import DataSource, json_rows, load_qa
from palu.data.qa import item_texts
from palu.io import read_json, write_json, write_text
from palu.models import train_bpe_tokenizer
from palu.runs import MODEL_DIR, is_finished
from palu.train.finetune import EarlyStop
from palu.train.loop import TrainConfig

log = logging.getLogger("tofu_mini")
HOLDOUT = range(3400, 3600)  # authors 171-180 of full.json
MAX_EPOCHS = 15
PRETRAIN_EPOCHS = 1  # 3M tokens of BBC news: enough for ordinary wording, and it fits in a sitting
MODEL_THREADS, PRETRAIN_THREADS = 1, 2  # per model process: fixed, so a rebuild gives the same weights
VOCAB = 8000
EVAL_OPTIONS = dict(batch_size=32, max_new_tokens=128, max_length=256)
RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def float32(train: TrainConfig) -> TrainConfig:
    """Every TOFU-mini training step in float32: palu's default turns bf16 autocast on where the CPU
    has bf16 instructions, which would make the models and trials depend on the machine."""
    return replace(train, bf16="false")


class Protocol:
    """Paths and cached artefacts of one TOFU-mini working folder."""

    def __init__(self, tofu: Path, workdir: Path, forget: str = "forget05", pretrain: Path | None = None):
        self.tofu, self.workdir, self.forget, self.retain = Path(tofu), Path(workdir), forget, RETAIN[forget]
        self.args = (tofu, workdir, forget, pretrain)  # to make the same protocol in another process
        self.pretrain = sorted(Path(pretrain).glob("*.jsonl")) if pretrain else []
        if pretrain and not self.pretrain:
            raise SystemExit(f"no general text (*.jsonl of {{\"text\"}}) in {pretrain}")
        needed = dict.fromkeys(("full", "forget05", self.retain, forget, f"{forget}_perturbed", "retain_perturbed",
                                "real_authors", "world_facts"))
        missing = [name for name in needed if not (self.tofu / f"{name}.json").is_file()]
        if missing:
            raise SystemExit(f"TOFU files missing in {self.tofu}: {', '.join(missing)}.json")

    def source(self, name: str, limit: int | None = None) -> DataSource:
        return DataSource(str(self.tofu / f"{name}.json"), limit=limit)

    def prepared(self, name: str) -> DataSource:
        return DataSource(str(self.workdir / "data" / f"{name}.json"))

    @property
    def retain_set(self) -> DataSource:
        """The split's retain set, less the held-out authors: what unlearning must keep."""
        return self.prepared(self.retain)

    def prepare_data(self) -> None:
        """full and the split's retain set without the held-out authors, and those authors as the holdout."""
        folder, retain = self.workdir / "data", self.workdir / "data" / f"{self.retain}.json"
        if (folder / "holdout.json").is_file() and retain.is_file():
            return
        full = _rows(self.tofu / "full.json")
        holdout = [full[i] for i in HOLDOUT]
        drop = {row["question"] for row in holdout}
        if not (folder / "holdout.json").is_file():
            write_json(folder / "full.json", [r for r in full if r["question"] not in drop])
            write_json(folder / "holdout.json", holdout)
        if not retain.is_file():
            write_json(retain, [r for r in _rows(self.tofu / f"{self.retain}.json") if r["question"] not in drop])

    def general(self) -> list[DataSource]:
        return [self.source("real_authors"), self.source("world_facts")]

    @property
    def tokenizer(self) -> Path:
        return self.workdir / "tokenizer"

    def train_tokenizer(self) -> None:
        if (self.tokenizer / "tokenizer.json").is_file():
            return
        sources = (self.prepared("full"), *self.general(), *self.general_text())
        items = [it for source in sources for it in load_qa(source)]
        train_bpe_tokenizer(item_texts(items), VOCAB).save_pretrained(str(self.tokenizer))

    def general_text(self) -> list[DataSource]:
        """The general English text of the pretraining regime (none without it), gathered in one file
        without the empty articles (MUSE-News's forget.jsonl has one), which palu refuses as documents."""
        if not self.pretrain:
            return []
        path = self.workdir / "data" / "general_text.jsonl"
        if not path.is_file():
            rows = [row for source in self.pretrain for row in _rows(source)]
            kept = [row for row in rows if row.get("text", "").strip()]
            log.info("general text: %d articles from %d files (%d empty left out)", len(kept), len(self.pretrain),
                     len(rows) - len(kept))
            write_text(path, "".join(json.dumps({"text": row["text"]}) + "\n" for row in kept))
        return [DataSource(str(path), kind="text")]

    def pretrained(self) -> str:
        """The model the full and retain models start from: "scratch", or the one pretrained on general text."""
        if not self.pretrain:
            return "scratch"
        if not is_finished(self.workdir / "pretrained"):
            start = time.time()
            train = replace(float32(scratch_train()), epochs=PRETRAIN_EPOCHS, warmup_epochs=0.1, max_length=256)
            run_finetune(FinetuneConfig(model="scratch", tokenizer=str(self.tokenizer), data=self.general_text(),
                                        output_dir=str(self.workdir / "pretrained"), train=train),
                         resume=True, progress=False)
            log.info("pretrained on %d files of general text in %.0f s", len(self.pretrain), time.time() - start)
        return str(self.model("pretrained"))

    def model(self, name: str) -> Path:
        return self.workdir / name / MODEL_DIR

    def train(self, name: str, data: DataSource, knows: DataSource) -> Path:
        start_from = self.pretrained()
        cfg = FinetuneConfig(model=start_from, tokenizer=str(self.tokenizer), data=[data, *self.general()],
                             output_dir=str(self.workdir / name), train=float32(scratch_train()),
                             early_stop=EarlyStop(knows, prob=0.9, rouge=0.9, from_epoch=8))
        cfg.train.epochs = MAX_EPOCHS
        if is_finished(self.workdir / name):
            return self.model(name)
        start = time.time()
        path = run_finetune(cfg, resume=True, progress=False)
        last = read_json(self.workdir / name / "history.json")[-1]
        log.info("model %s: %d epochs, known Prob %.3f ROUGE %.3f, %.0f s", name, last["epoch"],
                 last.get("known_prob", float("nan")), last.get("known_rouge", float("nan")), time.time() - start)
        return path

    def fingerprint(self) -> dict[str, str]:
        """Each model's weights as a SHA-256: results recorded on other weights (the models rebuilt on
        another CPU or torch, whose arithmetic differs) must not be mixed with results on these."""
        return {name: _sha256(self.workdir / name / MODEL_DIR) for name in ("full", self.retain)}

    def eval_config(self, model: Path | str, output_dir: Path | str, reference: bool = True) -> EvalConfig:
        """The evaluation of every stage: forget (perturbed), retain_perturbed, the two general sets, holdout."""
        return EvalConfig(
            model=str(model), output_dir=str(output_dir),
            forget=self.source(f"{self.forget}_perturbed"), retain=self.source("retain_perturbed"),
            real_authors=self.source("real_authors_perturbed"), world_facts=self.source("world_facts_perturbed"),
            holdout=self.prepared("holdout"), retain_reference=str(self.reference) if reference else None,
            fluency_model=str(self.model(self.retain)), **EVAL_OPTIONS)

    @property
    def evaluations(self) -> Path:
        """Where the runs and evaluations on this forget split live."""
        return self.workdir / f"compare-{self.forget}"

    @property
    def reference(self) -> Path:
        return self.evaluations / "eval-retain" / "results.json"

    def train_model(self, name: str) -> Path | str:
        """The pretrained model, the full model or the split's retain model."""
        if name == "pretrained":
            return self.pretrained()
        if name == "full":
            return self.train("full", self.prepared("full"), self.source("forget05"))
        return self.train(self.retain, self.retain_set, self.source("retain_perturbed", limit=200))

    def build(self) -> None:
        """Data, tokenizer, the models and the retain model's evaluation (all cached).

        Each model trains in a process of its own with a fixed number of threads, which changes the
        arithmetic: a later sitting that lost the cache rebuilds the same weights bit for bit, so the
        equal stage's records of this machine stay valid (``equal.py``). The full and retain models
        train at once, on one thread each, after the pretrained model (two threads) they start from."""
        self.prepare_data()
        self.train_tokenizer()
        if self.pretrain and not is_finished(self.workdir / "pretrained"):
            _in_processes(self.args, ["pretrained"], PRETRAIN_THREADS)
        _in_processes(self.args, [name for name in ("full", self.retain) if not is_finished(self.workdir / name)],
                      MODEL_THREADS)
        if not self.reference.is_file():
            run_eval(self.eval_config(self.model(self.retain), self.reference.parent, reference=False), overwrite=True,
                     progress=False)


def _in_processes(args: tuple, names: list[str], threads: int) -> None:
    """Train the models ``names`` of ``Protocol(*args)`` at once, one process each with ``threads`` threads."""
    if names:
        with ProcessPoolExecutor(len(names), mp_context=get_context("spawn")) as pool:
            for done in pool.map(_train_model, [args] * len(names), names, [threads] * len(names)):
                log.info("model ready: %s", done)


def _train_model(args: tuple, name: str, threads: int) -> Path | str:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    return Protocol(*args).train_model(name)


def _sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        with weights.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _rows(path: Path) -> list[dict]:
    return [row for _, row in json_rows(path)]
