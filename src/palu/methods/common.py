"""What every unlearning objective shares: hidden states, the output head, answer positions,
the frozen reference and the retain term. Methods are loss functions on top of these.

The frozen original model is never kept in memory during training. Everything an objective needs
from it is fixed, so :func:`palu.train.reference.reference_hidden` computes it once: the
reference's final hidden states at answer positions and a frozen copy of its output layer.
Reference logits at any answer position are then one matrix product away.

Each method module registers its objective in ``METHODS`` where it defines it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from palu.config import Choice, require
from palu.data.labels import IGNORE_INDEX
from palu.data.qa import QAItem
from palu.methods.head import Head, Rows, head_loss
from palu.methods.space import Knob
from palu.registry import Registry


def hidden_state(model, batch: dict, index: int = -1) -> torch.Tensor:
    """Hidden states [B, T, d] at entry ``index`` of the model's ``hidden_states`` (0: embeddings,
    i: output of block i-1, -1: final and post-norm), computing logits for one position only.

    Runs through the model's own forward so wrappers (DDP, PEFT) see the call.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[index]


def final_hidden(model, batch: dict) -> torch.Tensor:
    """Final (post-norm) hidden states [B, T, d]."""
    return hidden_state(model, batch, -1)


def answer_positions(batch: dict) -> torch.Tensor:
    """Mask [B, T-1] of positions whose next token is an answer token (after the causal shift)."""
    return batch["labels"][:, 1:] != IGNORE_INDEX


def at_answers(hidden: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at answer positions [N, d] and their target token ids [N], row-major order."""
    mask = answer_positions(batch)
    return hidden[:, :-1][mask], batch["labels"][:, 1:][mask]


def answer_lengths(batch: dict) -> torch.Tensor:
    """Number of answer positions of each sequence [B]: len(y)."""
    return answer_positions(batch).sum(1)


def sequence_sums(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-sequence sums [B] of per-position ``values`` [N] given at the answer positions, row-major."""
    rows = answer_positions(batch).nonzero()[:, 0]
    return values.new_zeros(batch["labels"].shape[0]).index_add(0, rows, values)


def sequence_means(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-sequence means [B] over each sequence's answer positions."""
    return sequence_sums(values, batch) / answer_lengths(batch).clamp_min(1)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy [N] in float32."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def answer_rows(model, batch: dict, kind: str = "nll", scale: float = 1.0) -> Rows:
    """The final hidden states at ``batch``'s answer positions as rows of the fused head loss, scored by
    the answer tokens' NLL ("nll") or by KL(P_ref || P_theta) against ``batch["ref_hidden"]`` ("kl")."""
    h, targets = at_answers(final_hidden(model, batch), batch)
    if kind == "nll":
        return Rows(h, "ce", targets=targets, scale=scale)
    return Rows(h, "reverse_kl", ref_h=batch["ref_hidden"], scale=scale)


def answer_nll(model, batch: dict) -> torch.Tensor:
    """NLL(y): the mean answer-token negative log-likelihood over the batch (a zero in the graph if none),
    through the fused head loss, so the answer logits are never all held at once."""
    return head_loss(Head.of(model), [answer_rows(model, batch)])[0]


def sequence_logprob(h: torch.Tensor, batch: dict, head: Head) -> torch.Tensor:
    """pi(y) [B]: each sequence's summed answer-token log-probability, from hidden states ``h`` [N, d]
    at its answer positions. With ``batch["ref_hidden"]`` and the frozen head this is pi_ref, so
    sequence-level methods need no reference model in memory."""
    targets = batch["labels"][:, 1:][answer_positions(batch)]
    return -sequence_sums(token_nll(head.logits(h), targets), batch)


def log_ratio(model, batch: dict, ref_head: Head) -> torch.Tensor:
    """pi_theta(y) - pi_ref(y) [B] on ``batch``, which must carry ``ref_hidden``."""
    h, _ = at_answers(final_hidden(model, batch), batch)
    return sequence_logprob(h, batch, Head.of(model)) - sequence_logprob(batch["ref_hidden"], batch, ref_head)


def preference_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """``-(2/beta) mean logsigma(beta * margin)``: the NPO / DPO form (0 if there is no margin)."""
    return -(2.0 / beta) * mean_or_zero(F.logsigmoid(beta * margin.float()), margin)


def mean_or_zero(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of ``values``, or a zero that still belongs to the graph when there are none."""
    return values.mean() if values.numel() else like.sum() * 0.0


def retain_loss(model, batch: dict, ref_head: Head | None, kind: str) -> torch.Tensor:
    """Retain term on a retain batch: mean answer-token NLL, or KL(P_ref || P_theta) ("kl").

    The KL direction is open-unlearning's; it is averaged over answer positions only.
    """
    return head_loss(Head.of(model), [answer_rows(model, batch, kind)], ref_head)[0]



@dataclass
class MethodOptions(Choice):
    """The ``method`` section of a config: ``name`` picks the method (``method=npo``), and the other
    options are that method's own, typed and checked like every other option.

    Attributes:
        name: the method (see ``palu.methods``).
    """

    name: str = "palu"

    @classmethod
    def choice(cls, name: str) -> type:
        import palu.methods  # noqa: F401 (its modules register the methods)

        return METHODS[name].config

    @classmethod
    def names(cls) -> list[str]:
        import palu.methods  # noqa: F401

        return list(METHODS.names())


@dataclass
class RetainOptions(MethodOptions):
    """The retain term's kind, shared by every objective that has ``R``.

    Attributes:
        retain_loss: "nll" (mean answer-token NLL on the retain example) or "kl"
            (KL(P_ref || P_theta) on it; the reference hidden states on retain are then precomputed).
    """

    retain_loss: Literal["nll", "kl"] = "nll"

    @property
    def needs_retain_reference(self) -> bool:
        return self.retain_loss == "kl"


@dataclass
class WeightedOptions(RetainOptions):
    """Options of the objectives ``gamma * L_f + alpha * R`` (open-unlearning's defaults: both 1).

    Attributes:
        gamma: weight of the forget term.
        alpha: weight of the retain term.
    """

    gamma: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        for name in ("gamma", "alpha"):
            require(getattr(self, name) >= 0, name, "zero or more", getattr(self, name))


def weighted_total(model, batch: dict, ref_head: Head, forget: torch.Tensor, cfg: WeightedOptions) -> dict:
    """``gamma * L_f + alpha * R`` with its logged terms, for a forget term computed by the method."""
    ret = retain_loss(model, batch["retain"], ref_head, cfg.retain_loss)
    return {"loss": cfg.gamma * forget + cfg.alpha * ret, "forget": forget.detach(), "retain": ret.detach()}


@dataclass
class Setup:
    """What a method needs built once before training, beyond paired forget/retain batches whose
    forget side carries ``ref_hidden`` (and the retain side too when ``needs_retain_reference``).

    A method's ``prepare(cfg, model, forget_items, seed) -> Setup`` returns it; ``unlearn`` builds it.

    Attributes:
        extra: per forget example, another item (e.g. the same question with another answer):
            ``batch[name]`` then holds them collated, with their own ``ref_hidden``.
        retain_references: more reference states on retain examples: ``{batch key: index into
            hidden_states}`` (see :func:`hidden_state`), at the answer positions.
        trainable: names of the parameters to train; the others are frozen during training
            (None: train all).
        state: keyword arguments for every loss call (fixed tensors, or objects the loss updates).
    """

    extra: dict[str, list[QAItem]] = field(default_factory=dict)
    retain_references: dict[str, int] = field(default_factory=dict)
    trainable: set[str] | None = None
    state: dict[str, Any] = field(default_factory=dict)



@dataclass(frozen=True)
class Method:
    """A registered objective: ``loss(model, batch, ref_head, config, **setup.state) -> {"loss": ..., terms}``.

    ``prepare(config, model, forget_items, seed) -> Setup`` (optional) declares what the method
    needs built once before training beyond the forget/retain batches (see :class:`Setup`);
    ``palu.train.unlearn`` builds it. ``uses_spans``: the loss reads the sensitive spans, so forget
    items without any are worth a warning. ``space``: the options ``palu sweep`` searches besides the
    learning rate (see :mod:`palu.methods.space`).
    """

    name: str
    config: type
    loss: Callable
    prepare: Callable | None = None
    uses_spans: bool = False
    space: dict[str, Knob] = field(default_factory=dict)


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Make ``method`` available by its name (``palu unlearn method.name=...``)."""
    return METHODS.add(method.name, method)
