"""Batched forward passes over sequences of different lengths.

Scoring, generation, the contrast annotator and the training reference all batch the same way:
sequences of similar length share a batch (little padding), each batch is padded on the side its
pass needs, and the per-batch results are put back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def length_batches(lengths: Sequence[int], batch_size: int | None = None, max_tokens: int | None = None,
                   longest_first: bool = True, shard: tuple[int, int] = (0, 1)) -> list[list[int]]:
    """Indices into ``lengths``, in batches of similar length; equal lengths keep their input order.

    Longest first by default, so an out-of-memory error shows on the first batch. A batch holds
    ``batch_size`` indices or, with ``max_tokens``, as many as fit that budget at its first (widest)
    length. ``shard=(i, n)`` keeps every n-th index of the sorted order from the i-th, so each of
    n processes gets short and long sequences alike.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i] if longest_first else lengths[i])
    order = order[shard[0] :: shard[1]]
    if max_tokens is None:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if not longest_first:
        raise ValueError("length_batches: a token budget needs the longest sequences first.")
    batches, start = [], 0
    while start < len(order):
        batches.append(order[start : start + max(1, max_tokens // max(lengths[order[start]], 1))])
        start += len(batches[-1])
    return batches


def pad(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``seqs`` as one [B, T] long tensor padded with ``value``, and its attention mask (on the CPU).

    Right padding keeps every token at its unpadded position (a forward pass numbers positions from
    the left); left padding ends every row at the same place, where generation continues.
    """
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def restore_order(n: int, results: Iterable[tuple[Sequence[int], Iterable[Any]]], fill: Any = None) -> list:
    """Per-batch results, each (indices, one value per index), as one list of ``n`` in input order;
    ``fill`` where no batch gave a value (a skipped sequence)."""
    out = [fill] * n
    for idx, values in results:
        for i, value in zip(idx, values, strict=True):
            out[i] = value
    return out
