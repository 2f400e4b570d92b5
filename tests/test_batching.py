"""Length batching: the helpers against one sequence at a time, and batched passes that use them."""

import random

import numpy as np
import pytest
import torch

from palu.annotate.contrast import _logprobs
from palu.batching import length_batches, pad, restore_order
from palu.data.labels import encode
from palu.data.prompts import PromptConfig
from palu.data.qa import QAItem
from palu.train.reference import reference_hidden

# lengths with ties (3 four times, 6 and 1 twice) and an empty sequence
LENGTHS = [3, 6, 1, 3, 8, 3, 6, 0, 1, 3, 5]
SEQS = [[random.Random(i).randrange(1, 50) for _ in range(n)] for i, n in enumerate(LENGTHS)]


def _slow(seq: list[int]) -> list[int]:
    """A toy position-dependent "forward pass" on one unpadded sequence: position-weighted running sums."""
    return [sum((p + 1) * t for p, t in enumerate(seq[: k + 1])) for k in range(len(seq))]


def _batched(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same pass on a padded batch: positions counted over real tokens, padding masked out."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ((positions + 1) * ids * mask).cumsum(1)


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 5, 100])
def test_padded_batches_match_one_sequence_at_a_time_in_input_order(left, batch_size):
    results = []
    for idx in length_batches(LENGTHS, batch_size):
        ids, mask = pad([SEQS[i] for i in idx], value=99, left=left)
        out = _batched(ids, mask)
        width = ids.shape[1]  # left padding ends every row at the last column, right padding starts it at the first
        rows = [out[row, width - len(SEQS[i]) :] if left else out[row, : len(SEQS[i])] for row, i in enumerate(idx)]
        results.append((idx, [row.tolist() for row in rows]))
    assert restore_order(len(SEQS), results) == [_slow(seq) for seq in SEQS]


def test_pad_puts_tokens_on_the_chosen_side():
    ids, mask = pad([[1, 2, 3], [4], []], value=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad([[1, 2, 3], [4], []], value=7, left=True)
    assert ids.tolist() == [[1, 2, 3], [7, 7, 4], [7, 7, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_length_batches_sort_by_length_keep_ties_in_order_and_shard(batch_size):
    for longest_first in (True, False):
        batches = length_batches(LENGTHS, batch_size, longest_first=longest_first)
        flat = [i for b in batches for i in b]
        sign = -1 if longest_first else 1
        assert flat == sorted(range(len(LENGTHS)), key=lambda i: (sign * LENGTHS[i], i))
        assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
        shards = [length_batches(LENGTHS, batch_size, longest_first=longest_first, shard=(r, 3)) for r in range(3)]
        assert [[i for b in s for i in b] for s in shards] == [flat[r::3] for r in range(3)]
    assert length_batches([], batch_size) == []


def test_token_budget_batches_fit_their_widest_row():
    for budget in (1, 7, 12, 100):
        batches = length_batches(LENGTHS, max_tokens=budget)
        assert [i for b in batches for i in b] == length_batches(LENGTHS, len(LENGTHS))[0]
        for b in batches:
            assert len(b) == 1 or len(b) * max(LENGTHS[i] for i in b) <= budget
            assert len(b) == max(1, budget // max(LENGTHS[b[0]], 1)) or b is batches[-1]
    with pytest.raises(ValueError, match="longest"):
        length_batches(LENGTHS, max_tokens=10, longest_first=False)


def test_restore_order_fills_skipped_indices():
    assert restore_order(4, [([2, 0], ["c", "a"])], fill="-") == ["a", "-", "c", "-"]
    with pytest.raises(ValueError):
        restore_order(2, [([0, 1], ["a"])])


# --- batched passes against one item at a time -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny(bpe_tokenizer, tiny_model):
    return bpe_tokenizer, tiny_model(bpe_tokenizer, layers=2).eval()


def test_contrast_logprobs_match_one_request_at_a_time(tiny):
    """Left padding with explicit positions under token budgets gives each request's unpadded numbers."""
    tok, model = tiny
    rng = random.Random(0)
    requests = [([rng.randrange(len(tok)) for _ in range(n)], min(k, n - 1))
                for n, k in [(5, 2), (9, 4), (5, 0), (2, 1), (9, 9), (5, 3), (12, 1)]]
    slow = []
    for ids, n in requests:
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        slow.append(np.array([float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids))]))
    for budget in (1, 10, 20, 4096):
        fast = _logprobs(model, requests, budget)
        for f, s in zip(fast, slow):
            assert f.shape == s.shape and np.allclose(f, s, atol=1e-5)


def test_reference_hidden_matches_one_example_at_a_time(tiny):
    tok, model = tiny
    items = [QAItem("Where was Hina Ameen born?", "In Karachi."), QAItem("Who?", "Basil Mahfouz Al-Kuwaiti."),
             QAItem("What genre does Hina Ameen write in?", "Geology."), QAItem("Which book?", "Granite Glossary.")]
    examples = [encode(tok, it, PromptConfig(), 64) for it in items]
    one = reference_hidden(model, examples, tok.pad_token_id, batch_size=1)
    for batch_size in (3, 4):
        for a, b in zip(reference_hidden(model, examples, tok.pad_token_id, batch_size=batch_size), one):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
