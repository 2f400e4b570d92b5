"""The frozen reference, computed once before training instead of kept in memory beside the model.

Stored per example: the reference's final hidden states at answer positions ([n, d], on the CPU,
in the model's dtype: d numbers per token instead of |V| log-probs). With a frozen copy of the
output layer (:meth:`palu.methods.common.Head.frozen_copy`) every reference logit an objective
needs is recomputed on demand. Methods that compare inner activations (RMU) ask for another
layer's states the same way.
"""

from __future__ import annotations

import math

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from palu.batching import length_batches, restore_order
from palu.data.labels import Encoded, collate
from palu.distributed import process_state
from palu.methods.common import answer_positions, hidden_state


@torch.no_grad()
def reference_hidden(model, examples: list[Encoded], pad_id: int, batch_size: int = 16,
                     progress: bool = False, index: int = -1) -> list[torch.Tensor]:
    """Hidden states of ``model`` at each example's answer positions, batched by length.

    ``index`` picks the entry of ``hidden_states`` (-1: final, post-norm; see
    :func:`palu.methods.common.hidden_state`). Runs on the training device; with several
    processes each computes a share and all of them receive every example's states. Every
    process runs as many forward passes, since a sharded model gathers its weights for each
    with all of them taking part.
    """
    state = process_state()
    was_training = model.training
    model.eval()
    model.to(state.device)
    batches = length_batches([len(e.input_ids) for e in examples], batch_size, longest_first=False,
                             shard=(state.process_index, state.num_processes))  # every process gets short and long ones
    passes = math.ceil(math.ceil(len(examples) / state.num_processes) / batch_size)  # the first process's share
    computed = []
    for number, idx in enumerate(tqdm(batches + [[0]] * (passes - len(batches)), desc="reference",
                                      disable=not (progress and state.is_main_process), leave=False)):
        batch = {k: v.to(state.device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        hidden = hidden_state(model, batch, index)[:, :-1]
        mask = answer_positions(batch)
        if number < len(batches):  # the others only keep in step
            computed.append((idx, [hidden[row][mask[row]].cpu() for row in range(len(idx))]))
    if state.num_processes > 1:
        computed = gather_object(computed)
    model.train(was_training)
    return restore_order(len(examples), computed)
