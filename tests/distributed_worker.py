"""Run by tests/test_distributed.py, plainly, under torchrun or under `accelerate launch`: load a saved tiny
model, fine-tune it or unlearn from it with each method named, and save the result.

argv: the model folder, the output folder, batch size, accumulation steps, "sharded" or "whole" (what the
weights must be during training), then the methods ("finetune": fine-tuning on the forget set; "NAME:default":
the method with its defaults rather than the options below). Each method
starts from the saved model, loaded as `palu unlearn` loads it, and writes <output>/<method>/weights.pt
(gathered in full) and <output>/<method>/model (saved by palu).
"""

import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from palu.data.prompts import PromptConfig
from palu.data.synthetic import synthetic_splits
from palu.distributed import process_state
from palu.methods import get_method
from palu.models import load_model_and_tokenizer
from palu.runs import save_model
from palu.train.finetune import finetune
from palu.train.loop import TrainConfig
from palu.train.unlearn import unlearn


def share(p: torch.Tensor) -> tuple[int, int]:
    """How many of the parameter's numbers this process holds, and how many it has (FSDP2, ZeRO-3 or whole)."""
    if isinstance(p, DTensor):
        return p.to_local().numel(), p.numel()
    if hasattr(p, "ds_id"):
        return p.ds_tensor.numel(), p.ds_numel
    return p.numel(), p.numel()


def gathered(model) -> dict:
    """The weights in full, each process taking part."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters(list(model.parameters())):
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in model.state_dict().items()}


# npo: gold-token logits and the fused KL retain term; rmu: its recipe's blocks only (an embedding row that only
# padding reaches gets a gradient of rounding noise, which Adam turns into a full step of either sign)
OPTIONS = {"palu": {"top_k": 5, "first_n": 2}, "npo": {"retain_loss": "kl"}, "rmu": {"trainable": ["mlp"]}}
start, out, batch_size, grad_accum, layout, methods = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
torch.set_num_threads(1)
process_state()  # as `palu unlearn` does before loading the model
splits = synthetic_splits(n_authors=4, forget_authors=1, holdout_authors=1, seed=11)
cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=batch_size, grad_accum=grad_accum, warmup_epochs=0, bf16="false", max_grad_norm=1.0)
for method in methods:
    model, tok = load_model_and_tokenizer(start)
    if method == "finetune":
        finetune(model, tok, splits.forget[:16], cfg, PromptConfig(), out / method, progress=False)
    else:
        name = method.partition(":")[0]  # "rmu:default": the method with its own defaults, not OPTIONS'
        options = get_method(name).config(**OPTIONS.get(method, {}))
        unlearn(model, tok, splits.forget[:16], splits.retain, name, options, cfg, PromptConfig(), out / method,
                progress=False)
    shares = {name: share(p) for name, p in model.named_parameters()}
    if layout == "sharded":  # each process holds its own part of every weight, and only that
        whole = [name for name, (held, size) in shares.items() if held >= size]
        assert not whole, f"{method}: not sharded: {whole}"
    else:
        assert all(held == size for held, size in shares.values())
    weights = gathered(model)
    save_model(out / method / "model", model, tok)  # every rank calls it, as run_unlearn's finish does
    if int(os.environ.get("RANK", 0)) == 0:
        torch.save(weights, out / method / "weights.pt")
