"""MUSE-mini: the corpora, the two cached models and the MUSE evaluation sets every stage shares.

Built only from MUSE-News's BBC articles (``--data``, default ../shared/data/muse_news/raw) and
palu's own commands:

- ``data/``: article excerpts (the opening of each article, cut at a sentence end, at most
  ``EXCERPT_CHARS`` characters) as JSON Lines of ``{"text"}``. Four deletion requests of
  ``--request-size`` articles each (request 1 from forget.jsonl, requests 2-4 from
  sust_forget_2..4.jsonl), a retain corpus and a holdout corpus no model sees. An article that
  appears in more than one file (the shipped sets overlap) is used at most once.
- ``tokenizer/``: a byte-level BPE (8k) trained on the target model's training texts.
- ``target/``: a Llama-architecture model (hidden 256, 4 layers) trained from scratch on the four
  requests and the retain corpus until it has them by heart.
- ``retain/``: the same recipe on the retain corpus alone: the model unlearning should approach.
- ``eval-r1/``, ``eval-all/``: MUSE-News-shaped evaluation folders on request 1 (the comparison)
  and on all four requests (the C5 and C6 curves). VerbMem: each forget excerpt's first
  ``PROMPT_WORDS`` words as the prompt, the rest as the continuation. KnowMem in cloze form (a
  model trained only on raw text never saw a question): the start of a sentence up to a name,
  number or date that ``palu annotate annotator=rules`` marks, with that span as the answer; on
  the forget excerpts (C2) and on retain excerpts (C4). PrivLeak: the forget excerpts against the
  holdout excerpts.
- ``eval-*/retain-results/``: the retain model's MUSE results, PrivLeak's reference.

Everything is cached: a finished run is reused, an interrupted one resumes.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from palu.annotate import annotate
from palu.commands.finetune import Config as FinetuneConfig
from palu.commands.finetune import run_finetune
from palu.commands.muse import Config as MuseConfig
from palu.commands.muse import run_muse
from palu.data.loaders import DataSource, load_qa
from palu.data.qa import QAItem
from palu.eval.muse import MuseSets
from palu.io import read_json, write_json, write_text
from palu.models import train_bpe_tokenizer
from palu.runs import MODEL_DIR, SUMMARY, is_finished
from palu.train.loop import TrainConfig

log = logging.getLogger("muse_mini")
FILES = ("forget.jsonl", "sust_forget_2.jsonl", "sust_forget_3.jsonl", "sust_forget_4.jsonl")
EXCERPT_CHARS = 1000
MIN_EXCERPT_CHARS = 600
PROMPT_WORDS = 40
CLOZE_PER_DOCUMENT = 3
MIN_CLOZE_WORDS = 5
VOCAB = 8000
MAX_LENGTH = 320  # tokens: every excerpt fits one training window
SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")


def excerpt(text: str) -> str | None:
    """The article's opening up to the last sentence end within EXCERPT_CHARS (None if too short)."""
    head = " ".join(text.split())[: EXCERPT_CHARS + 1]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    cut = head[: ends[-1]].strip() if ends else ""
    return cut if len(cut) >= MIN_EXCERPT_CHARS else None


class Protocol:
    """Paths and cached artefacts of one MUSE-mini working folder."""

    def __init__(self, raw: Path, workdir: Path, request_size: int = 10, retain_size: int = 80,
                 holdout_size: int = 40, epochs: int = 60):
        self.raw, self.workdir = Path(raw), Path(workdir)
        self.request_size, self.retain_size, self.holdout_size, self.epochs = (request_size, retain_size,
                                                                              holdout_size, epochs)
        missing = [name for name in FILES if not (self.raw / name).is_file()]
        if missing:
            raise SystemExit(f"MUSE-News corpora missing in {self.raw}: {', '.join(missing)}")

    # data
    def corpus(self, name: str) -> Path:
        return self.workdir / "data" / f"{name}.jsonl"

    def source(self, name: str) -> DataSource:
        return DataSource(str(self.corpus(name)), kind="text")

    @property
    def requests(self) -> list[str]:
        return [f"request-{i}" for i in range(1, len(FILES) + 1)]

    def prepare_data(self) -> None:
        """Excerpts for the four requests, the retain and the holdout corpus, each article used once."""
        if all(self.corpus(n).is_file() for n in (*self.requests, "retain", "holdout")):
            return
        seen: set[str] = set()
        counts = {}
        pools = []
        for name in FILES:
            texts = [json.loads(line)["text"] for line in (self.raw / name).read_text().splitlines() if line.strip()]
            counts.update({t: counts.get(t, 0) + 1 for t in texts})
            pools.append(texts)
        unique = lambda pool: [e for t in pool if counts[t] == 1 and (e := excerpt(t)) and e not in seen]
        picked = {}
        for name, pool in zip(self.requests, pools):
            picked[name] = unique(pool)[: self.request_size]
            seen.update(picked[name])
        rest = [e for pool in pools for e in unique(pool)]
        picked["retain"] = rest[: self.retain_size]
        seen.update(picked["retain"])
        picked["holdout"] = [e for e in rest if e not in seen][: self.holdout_size]
        for name, texts in picked.items():
            if len(texts) < {"retain": self.retain_size, "holdout": self.holdout_size}.get(name, self.request_size):
                raise SystemExit(f"not enough distinct articles for {name}: {len(texts)}")
            write_text(self.corpus(name), "".join(json.dumps({"text": t}) + "\n" for t in texts))

    def texts(self, name: str) -> list[str]:
        return [item.answer for item in load_qa(self.source(name))]

    # models
    @property
    def tokenizer(self) -> Path:
        return self.workdir / "tokenizer"

    def train_tokenizer(self) -> None:
        if not (self.tokenizer / "tokenizer.json").is_file():
            texts = [t for name in (*self.requests, "retain") for t in self.texts(name)]
            train_bpe_tokenizer(texts, VOCAB).save_pretrained(str(self.tokenizer))

    def model(self, name: str) -> Path:
        return self.workdir / name / MODEL_DIR

    def train(self, name: str, corpora: list[str]) -> Path:
        if is_finished(self.workdir / name):
            return self.model(name)
        cfg = FinetuneConfig(model="scratch", tokenizer=str(self.tokenizer), data=[self.source(c) for c in corpora],
                             output_dir=str(self.workdir / name),
                             train=TrainConfig(epochs=self.epochs, lr=1e-3, batch_size=16, schedule="cosine",
                                               warmup_epochs=2, max_length=MAX_LENGTH))
        return run_finetune(cfg, resume=True, progress=False)

    # evaluation sets
    def eval_dir(self, scope: str) -> Path:
        return self.workdir / f"eval-{scope}"

    def reference(self, scope: str) -> Path:
        return self.eval_dir(scope) / "retain-results" / "results.json"

    def muse_sets(self, scope: str, reference: bool = True) -> MuseSets:
        return MuseSets(path=str(self.eval_dir(scope)), retain_reference=str(self.reference(scope)) if reference
                        else None, knowmem_prompt="cloze", batch_size=16, max_length=MAX_LENGTH)

    def write_eval_sets(self, scope: str, forget: list[str]) -> None:
        """A MUSE-News-shaped folder: VerbMem and cloze KnowMem on ``forget``, KnowMem on retain, PrivLeak."""
        folder = self.eval_dir(scope)
        if (folder / "privleak" / "holdout.json").is_file():
            return
        texts = [t for name in forget for t in self.texts(name)]
        retain = self.texts("retain")[: 3 * self.request_size]
        verbmem = []
        for text in texts:
            words = list(re.finditer(r"\S+", text))
            cut = words[PROMPT_WORDS].start()
            verbmem.append({"prompt": text[:cut], "gt": text[cut:]})
        sets = {"verbmem/forget": verbmem, "knowmem/forget_qa": cloze_items(texts), "knowmem/forget_qa_icl": [],
                "knowmem/retain_qa": cloze_items(retain), "knowmem/retain_qa_icl": [],
                "privleak/forget": texts, "privleak/holdout": self.texts("holdout")}
        for name, rows in sets.items():  # holdout last: it marks the folder complete
            write_json(folder / f"{name}.json", rows)

    def evaluate(self, model: Path, scope: str, folder: Path, reference: bool = True) -> dict:
        """``palu eval suite=muse`` of ``model`` on ``scope``'s sets into ``folder`` (cached); the summary."""
        if not (folder / SUMMARY).is_file():
            sets = self.muse_sets(scope, reference)
            run_muse(MuseConfig(model=str(model), output_dir=str(folder), **vars(sets)), overwrite=True,
                     progress=False)
        return read_json(folder / SUMMARY)

    def build(self) -> dict:
        """Data, tokenizer, both models, the evaluation sets and the retain model's results (all cached);
        the two models' MUSE results on request 1."""
        self.prepare_data()
        self.train_tokenizer()
        self.train("target", [*self.requests, "retain"])
        self.train("retain", ["retain"])
        self.write_eval_sets("r1", self.requests[:1])
        self.write_eval_sets("all", self.requests)
        for scope in ("r1", "all"):
            self.evaluate(self.model("retain"), scope, self.reference(scope).parent, reference=False)
        return {name: self.evaluate(self.model(name), "r1", self.eval_dir("r1") / f"{name}-results")
                for name in ("target", "retain")}


def cloze_items(texts: list[str]) -> list[dict]:
    """KnowMem in cloze form: for up to CLOZE_PER_DOCUMENT spans the rules annotator marks in each
    text (names, numbers, dates), the sentence up to the span as the question and the span as the
    answer; sentences too short to cue anything are skipped."""
    documents = [QAItem(None, text, source=f"excerpt {i}") for i, text in enumerate(texts)]
    annotated, _ = annotate(documents, "rules")
    rows = []
    for item in annotated:
        text, kept = item.answer, 0
        starts = [0] + [m.end() for m in SENTENCE_END.finditer(text)]
        for span in item.spans:
            sentence = max(s for s in starts if s <= span.start)
            question = text[sentence : span.start].rstrip()
            if len(question.split()) >= MIN_CLOZE_WORDS and kept < CLOZE_PER_DOCUMENT:
                rows.append({"question": question, "answer": span.text(text)})
                kept += 1
    return rows
