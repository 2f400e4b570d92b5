"""Two CPU processes (gloo) reach the same weights as one process with the same effective batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, processes: int, batch_size: int, grad_accum: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), str(out), str(batch_size),
           str(grad_accum)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = torch.load(out / "weights.pt")
    saved = load_file(out / "model" / "model.safetensors")  # written once, whole, with every rank calling
    assert all(torch.equal(saved[k], v) for k, v in weights.items())
    return weights


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_match_one_with_the_same_effective_batch(tmp_path):
    """2 processes x 4 examples average two per-process means, exactly as 1 process x 4 x 2 accumulation
    steps does; tolerance 1e-5 covers float summation order."""
    two = run(tmp_path / "two", processes=2, batch_size=4)
    one = run(tmp_path / "one", processes=1, batch_size=4, grad_accum=2)
    assert max_diff(one, two) < 1e-5
    other = run(tmp_path / "big", processes=1, batch_size=8)  # a different batching visibly differs
    assert max_diff(other, two) > 1e-4
