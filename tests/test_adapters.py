"""LoRA unlearning: only the adapter trains, the saved model loads back, merged or as an adapter."""

from __future__ import annotations

import pytest
import torch

from palu.adapters import AdapterConfig, add_adapter, for_saving
from palu.commands.demo import Config as DemoConfig
from palu.config import load_config
from palu.data.prompts import PromptConfig
from palu.data.synthetic import synthetic_splits
from palu.errors import PaluError
from palu.methods.palu import PaluConfig
from palu.models import load_model, train_bpe_tokenizer
from palu.train.loop import TrainConfig
from palu.train.unlearn import unlearn


@pytest.fixture(scope="module")
def setup():
    splits = synthetic_splits(n_authors=3, forget_authors=1, holdout_authors=1, seed=5)
    tok = train_bpe_tokenizer([t for it in splits.retain + splits.forget for t in (it.question, it.answer)], 500)
    return splits, tok


def test_lora_unlearning_trains_only_the_adapter_and_saves(setup, tiny_model, tmp_path):
    splits, tok = setup
    tiny_model(tok).save_pretrained(tmp_path / "base")
    base = load_model(str(tmp_path / "base"))  # an adapter records where its base model lives
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = add_adapter(base, AdapterConfig(r=4))
    unlearn(model, tok, splits.forget, splits.retain, "palu", PaluConfig(top_k=5, first_n=2),
            TrainConfig(epochs=2, lr=1e-2, batch_size=8, warmup_epochs=0, bf16="false"), PromptConfig(), tmp_path / "r",
            progress=False)
    changed = [n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, torch.zeros_like(p))]
    assert changed, "the adapter did not train"
    for name, value in model.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, original[key]), name

    adapter_dir, merged_dir = tmp_path / "adapter", tmp_path / "merged"
    probe = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    with torch.no_grad():
        expected = model(probe).logits
    for_saving(model, AdapterConfig(save="adapter")).save_pretrained(adapter_dir)
    merged = for_saving(model, AdapterConfig(save="merged"))
    merged.save_pretrained(merged_dir)
    with torch.no_grad():
        assert torch.allclose(load_model(str(merged_dir)).eval()(probe).logits, expected, atol=1e-5)
        assert torch.allclose(load_model(str(adapter_dir)).eval()(probe).logits, expected, atol=1e-5)


def test_peft_shorthand_and_validation():
    cfg = load_config(DemoConfig, None, ["peft=lora", "peft.r=4"])
    assert cfg.peft == AdapterConfig(r=4)
    assert load_config(DemoConfig, None, []).peft is None
    with pytest.raises(PaluError, match="peft.save"):
        load_config(DemoConfig, None, ["peft=lora", "peft.save=both"])
