"""LoRA (through peft) as an option for every unlearning method.

With an adapter the base weights stay frozen, so the frozen output layer needs no copy: the
reference is the model with the adapter at its initial, zero-effect state, whose hidden states
palu caches once before training like for full fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from palu.config import require


@dataclass
class AdapterConfig:
    """A LoRA adapter (``peft=lora`` on the command line).

    Attributes:
        name: the adapter type; "lora".
        r: rank of the update matrices.
        alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input.
        target_modules: module names to adapt, or ["all-linear"] (every linear layer but the output layer).
        save: "merged" saves a plain model with the adapter folded in; "adapter" saves only the adapter.
    """

    name: Literal["lora"] = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    save: Literal["merged", "adapter"] = "merged"

    def __post_init__(self) -> None:
        require(self.r >= 1, "r", "at least 1", self.r)


def add_adapter(model, cfg: AdapterConfig):
    """Wrap ``model`` with a fresh LoRA adapter; only the adapter's weights train."""
    from peft import LoraConfig, get_peft_model

    modules = cfg.target_modules[0] if cfg.target_modules == ["all-linear"] else cfg.target_modules
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=modules,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def for_saving(model, cfg: AdapterConfig | None):
    """What to ``save_pretrained``: the model itself, or the base model with the adapter merged in."""
    if cfg is None or cfg.save == "adapter":
        return model
    return model.merge_and_unload()
