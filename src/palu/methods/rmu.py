"""RMU: Representation Misdirection for Unlearning (Li et al., "The WMDP Benchmark", ICML 2024,
arXiv 2403.03218).

At one inner layer, the forget answers' activations are steered to a fixed random direction
scaled by ``steering_coeff`` (scrambling what later layers read from them) while the retain
answers' activations are held at the frozen model's, precomputed once like the final-layer
reference. Both terms are masked MSEs over the answer positions, averaged per sequence and then
over the batch (open-unlearning's reduction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from palu.errors import PaluError
from palu.methods.common import (
    Head,
    Method,
    MethodOptions,
    Setup,
    answer_positions,
    hidden_state,
    register,
    sequence_means,
)
from palu.methods.space import Knob

WMDP_LAYER = 7


@dataclass
class RMUConfig(MethodOptions):
    """RMU's options.

    Attributes:
        layer: the decoder block whose output is steered (0-based). None: block 7, as in the WMDP
            setting, or the last block of a shallower model; an explicit block must exist. The
            last block's output is taken after the final norm, as the model reports it.
        steering_coeff: c, the norm of the target activation ``c * u`` (open-unlearning: 20;
            WMDP used 6.5 on Zephyr-7B); it should be comparable to the activation norms at ``layer``.
        alpha: weight of the retain term.
        trainable: regular expressions searched in parameter names; only matching parameters are
            trained, the rest are frozen for the run. ["all"] trains everything the loss reaches (the
            blocks up to ``layer`` and the embeddings; the rest gets no gradient). The WMDP setting
            is ``['layers\\.(5|6|7)\\.mlp\\.down_proj\\.weight']``.
    """

    name: str = "rmu"

    layer: int | None = None
    steering_coeff: float = 20.0
    alpha: float = 1.0
    trainable: list[str] = field(default_factory=lambda: ["all"])

    def __post_init__(self) -> None:
        for pattern in self.trainable:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PaluError(f"method.trainable: {pattern!r} is not a regular expression ({exc}).") from None


def resolve_layer(cfg: RMUConfig, model) -> int:
    """The steered block for this model: the default clipped to its depth, an explicit one checked."""
    depth = model.config.num_hidden_layers
    if cfg.layer is None:
        return min(WMDP_LAYER, depth - 1)
    if not 0 <= cfg.layer < depth:
        raise PaluError(f"method.layer={cfg.layer} is out of range: the model has {depth} layers (0..{depth - 1}).")
    return cfg.layer


def trainable_names(cfg: RMUConfig, model, layer: int) -> set[str]:
    """Names of the parameters ``cfg.trainable`` selects; "all" means all that block ``layer``'s output
    depends on: the later blocks and the head get no gradient from RMU's loss, and plain data parallel
    refuses parameters that get none."""
    if cfg.trainable == ["all"]:
        return reaching(model, layer)
    names = [name for name, _ in model.named_parameters()]
    chosen = {name for name in names if any(re.search(p, name) for p in cfg.trainable)}
    if not chosen:
        raise PaluError(f"method.trainable {cfg.trainable} matches no parameter; names look like "
                        f"{', '.join(names[:3])}.")
    return chosen


def reaching(model, layer: int) -> set[str]:
    """Names of the trainable parameters block ``layer``'s output depends on, found by differentiating it
    on a two-token input."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    ids = torch.zeros((1, 2), dtype=torch.long, device=model.device)
    with torch.enable_grad():
        out = hidden_state(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, layer + 1)
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    return {name for (name, _), grad in zip(named, grads) if grad is not None}


def rmu_prepare(cfg: RMUConfig, model, forget, seed: int) -> Setup:
    """The resolved layer, the seeded direction u (uniform entries, then unit norm, as in WMDP)
    and the frozen model's activations there on retain examples."""
    layer = resolve_layer(cfg, model)
    u = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    return Setup(retain_references={"ref_layer_hidden": layer + 1}, trainable=trainable_names(cfg, model, layer),
                 state={"layer": layer, "direction": u / u.norm()})


def answer_activations(model, batch: dict, layer: int) -> torch.Tensor:
    """Output of block ``layer`` at the answer positions [N, d], row-major."""
    return hidden_state(model, batch, layer + 1)[:, :-1][answer_positions(batch)]


def masked_mse(a: torch.Tensor, b: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean over sequences of each one's mean over answer positions of the squared error averaged over d."""
    return sequence_means(((a.float() - b.float()) ** 2).mean(-1), batch).mean()


def rmu_loss(model, batch: dict, ref_head: Head, cfg: RMUConfig, layer: int,
             direction: torch.Tensor) -> dict[str, torch.Tensor]:
    """``L_f + alpha * R``: MSE to ``c * u`` on forget, MSE to the frozen activations on retain."""
    forget, retain = batch["forget"], batch["retain"]
    h = answer_activations(model, forget, layer)
    forget_term = masked_mse(h, cfg.steering_coeff * direction.to(h.device), forget)
    ret = masked_mse(answer_activations(model, retain, layer), retain["ref_layer_hidden"], retain)
    return {"loss": forget_term + cfg.alpha * ret, "forget": forget_term.detach(), "retain": ret.detach()}


SPACE = {"steering_coeff": Knob(1.0, 50.0, source="WMDP: 6.5 on Zephyr-7B; open-unlearning: 20")}

register(Method("rmu", RMUConfig, rmu_loss, rmu_prepare, space=SPACE))
