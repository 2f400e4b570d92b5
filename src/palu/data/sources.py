"""One way to get QA items for every command: the built-in synthetic data or any loader source."""

from __future__ import annotations

from dataclasses import dataclass

from palu.data.loaders import DataSource, load_qa
from palu.data.qa import QAItem
from palu.errors import PaluError

SYNTHETIC = "synthetic"
SYNTHETIC_SPLITS = ("forget", "retain", "holdout", "full")


@dataclass
class SyntheticConfig:
    """The built-in fictitious-author data (``path: synthetic``); 20 QA items per author.

    Attributes:
        n_authors: authors in all.
        forget_authors: the last authors, forming the forget split.
        holdout_authors: authors before them that no model is trained on (membership inference).
        seed: the data are a function of the seed.
    """

    n_authors: int = 40
    forget_authors: int = 4
    holdout_authors: int = 4
    seed: int = 0


def load_items(source: DataSource, synthetic: SyntheticConfig) -> list[QAItem]:
    """Items of ``source``; ``path: synthetic`` with split forget, retain, holdout or full (retain + forget)."""
    if source.path != SYNTHETIC:
        return load_qa(source)
    from palu.data.synthetic import synthetic_splits

    if source.split not in SYNTHETIC_SPLITS:
        raise PaluError(f"the synthetic data has the splits {', '.join(SYNTHETIC_SPLITS)}, not {source.split!r}.")
    splits = synthetic_splits(synthetic.n_authors, synthetic.forget_authors, synthetic.holdout_authors, synthetic.seed)
    items = splits.retain + splits.forget if source.split == "full" else getattr(splits, source.split)
    return items[: source.limit] if source.limit is not None else items


def synthetic(split: str, limit: int | None = None) -> DataSource:
    return DataSource(path=SYNTHETIC, split=split, limit=limit)
