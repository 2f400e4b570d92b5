"""Which of several processes this one is: training, the reference states and the run folder agree on it."""

from __future__ import annotations

import torch
from accelerate.state import PartialState


def process_state() -> PartialState:
    """This process's place among the training processes; on CPUs several processes use gloo.

    Created with the same ``cpu`` flag as the training loop's accelerator, since the first creation
    fixes the distributed setup for the whole process.
    """
    return PartialState(cpu=not torch.accelerator.is_available())
