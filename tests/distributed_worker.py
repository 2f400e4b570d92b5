"""Run by tests/test_distributed.py under torchrun: unlearn a tiny model and save its weights."""

import sys
from pathlib import Path

import torch

from palu.data.prompts import PromptConfig
from palu.data.synthetic import synthetic_splits
from palu.methods.palu import PaluConfig
from palu.models import tiny_llama, train_bpe_tokenizer
from palu.runs import save_model
from palu.train.loop import TrainConfig
from palu.train.unlearn import unlearn

out, batch_size, grad_accum = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
splits = synthetic_splits(n_authors=4, forget_authors=1, holdout_authors=1, seed=11)
tok = train_bpe_tokenizer([t for it in splits.retain + splits.forget for t in (it.question, it.answer)], 500)
model = tiny_llama(len(tok), hidden=32, layers=1, heads=2, tokenizer=tok, seed=0)
cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=batch_size, grad_accum=grad_accum, warmup_epochs=0, bf16="false", max_grad_norm=0)
unlearn(model, tok, splits.forget[:16], splits.retain, "palu", PaluConfig(top_k=5, first_n=2), cfg, PromptConfig(),
        out, progress=False)
save_model(out / "model", model, tok)  # every rank calls it, as run_unlearn's finish does
if int(__import__("os").environ.get("RANK", 0)) == 0:
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "weights.pt")
