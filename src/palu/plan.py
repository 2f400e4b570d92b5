"""Peak memory per device of an unlearning step, from a model's config alone (no weights are read).

The estimate follows palu's structure: the reference is a frozen copy of the output layer plus d
numbers per answer token (none of it under LoRA), and the losses over the full vocabulary go through
the chunked head loss, so no [tokens, |V|] logits are held. Beside it, the same run with the usual
structure: a second full model as the reference and full-vocabulary logits of both models.
``docs/memory.md`` gives the formula term by term and how it was checked against measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

import torch
from transformers import AutoModelForCausalLM

from palu.adapters import AdapterConfig
from palu.errors import PaluError
from palu.methods.head import chunk_rows
from palu.train.loop import TrainConfig

GIB = 2**30
CUDA_RUNTIME = GIB  # the CUDA context and library workspaces: on the card, outside max_memory_allocated

# Bytes each decoder layer keeps for backward per token, as (per hidden unit, per MLP unit, per position of
# the sequence): the tensors a Hugging Face Llama layer saves, counted with torch's saved-tensor hooks.
# "autocast" is float32 weights under bf16 autocast. Under LoRA the frozen linear layers keep less, but
# peft holds the adapters in float32, so bf16 inputs are kept again in float32 for them.
ACTIVATIONS = {
    (False, "float32"): (40, 16, 4), (False, "autocast"): (34, 8, 2), (False, "bfloat16"): (24, 8, 2),
    (True, "float32"): (32, 16, 4), (True, "autocast"): (28, 8, 2), (True, "bfloat16"): (40, 10, 2),
}
# What each forward pass with gradients of a step holds at the output layer: "fused" (the chunked head
# loss: a float32 gradient of the output layer; PALU and TPO compute their ordinary-token and retain
# terms in one such call, after the retain pass), "logits" (full-vocabulary log-probabilities of every
# answer token, kept for backward) or "hidden" (a loss on hidden states only). Passes in forward order;
# backward runs through the last one first.
METHOD_PASSES = {
    "palu": ("hidden", "fused"), "ga": ("fused",), "graddiff": ("fused", "fused"), "npo": ("logits", "fused"),
    "simnpo": ("logits", "fused"), "idkdpo": ("logits", "logits", "fused"), "rmu": ("hidden", "hidden"),
    "wga": ("logits", "fused"), "pdu": ("logits", "fused"), "tpo": ("hidden", "fused"),
}
LOGIT_BYTES = 8  # per answer token and vocabulary entry: a float32 log-softmax kept, and its gradient
# the usual structure: both models' logits, log-softmaxes and their difference on forget; logits and a
# log-softmax on retain (per token and vocabulary entry, measured)
SECOND_MODEL_LOGIT_BYTES = (20, 8)
HEAD_CHUNK_TEMPORARIES = 2  # one chunk's logits and their gradient, in reused buffers (3 with reverse KL)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model, read from its config.

    Attributes:
        params: every parameter (tied ones once).
        linear: parameters of the linear layers other than the output layer (autocast keeps a bf16
            copy of each per forward pass).
        largest: the largest parameter tensor.
        lora, lora_largest: the LoRA adapter's parameters and its largest matrix (used with ``peft=lora``).
    """

    params: int
    linear: int
    largest: int
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    lora: int
    lora_largest: int


def model_shape(config, adapter: AdapterConfig | None = None) -> Shape:
    """The :class:`Shape` of the causal LM that ``config`` describes, with ``adapter`` (default: palu's
    LoRA), built on the meta device: exact counts for any architecture transformers knows, no memory."""
    adapter = adapter or AdapterConfig()
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise PaluError(f"the config describes no causal language model transformers can build "
                        f"({' '.join(str(exc).split())[:200]}).") from None
    head = model.get_output_embeddings()
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    targets = adapter.target_modules
    adapted = [m for name, m in linears.items()
               if targets == ["all-linear"] or any(name == t or name.endswith(f".{t}") for t in targets)]
    if not adapted:
        raise PaluError(f"peft.target_modules={targets} names no linear layer of this model; name some "
                        "(e.g. [q_proj, v_proj]) or use [all-linear].")
    text = config.get_text_config()
    return Shape(params=sum(p.numel() for p in model.parameters()),
                 linear=sum(p.numel() for m in linears.values() for p in m.parameters()),
                 largest=max(p.numel() for p in model.parameters()), vocab=head.out_features, hidden=head.in_features,
                 layers=text.num_hidden_layers,
                 intermediate=getattr(text, "intermediate_size", None) or 4 * head.in_features,
                 lora=sum(adapter.r * (m.in_features + m.out_features) for m in adapted),
                 lora_largest=max(adapter.r * max(m.in_features, m.out_features) for m in adapted))


@dataclass(frozen=True)
class Setting:
    """How the run trains: what the estimate reads of ``palu plan``'s options."""

    train: TrainConfig
    method: str = "palu"
    lora: bool = False
    processes: int = 1
    sharding: str = "no_shard"
    device: str = "cuda"

    @property
    def precision(self) -> str:
        """The precision: "float32", "autocast" (float32 weights, bf16 autocast) or "bfloat16".
        ``train.bf16=auto`` counts as a device with bf16: an Ampere or newer GPU, a CPU with AVX512-BF16 or AMX."""
        if self.train.dtype == "bfloat16":
            return "bfloat16"
        return "float32" if str(self.train.bf16).lower() == "false" else "autocast"


@dataclass(frozen=True)
class Estimate:
    """Bytes per device of each part, and the peak: less than their sum, because during backward the
    gradients fill the memory that the activations of the last forward pass free."""

    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    update: int
    peak: int
    runtime: int

    @property
    def total(self) -> int:
        """The peak plus what the device's runtime holds outside torch's allocations."""
        return self.peak + self.runtime


def estimate(shape: Shape, s: Setting, second_model: bool = False) -> Estimate:
    """Peak memory per device of a training step of ``s`` on a model of ``shape``; with ``second_model``,
    of the usual structure that keeps the reference as a second full model."""
    t = s.train
    width = 2 if t.dtype == "bfloat16" else 4  # bytes of a weight, of its gradient and of each AdamW state
    split_state = s.processes if s.sharding != "no_shard" else 1
    split_weights = s.processes if s.sharding == "full_shard" else 1
    if s.lora:  # peft keeps the adapter in float32
        trained, trained_width, largest = shape.lora, 4, shape.lora_largest
    else:
        trained, trained_width, largest = shape.params, width, shape.largest
    head = shape.vocab * shape.hidden
    weights = shape.params * width // split_weights + (shape.lora * 4 if s.lora else 0)
    if split_weights > 1:  # a layer gathered for its computation and the next one prefetched; the output
        weights += (2 * shape.linear // shape.layers + head) * width  # layer, gathered for the whole step
    gradients = trained * trained_width // split_state
    if split_state > 1 and not s.lora:  # the output layer's whole gradient, until it is reduce-scattered
        gradients += head * width
    if s.processes > 1 and s.sharding == "no_shard":  # DDP's gradient buckets
        gradients *= 2
    optimizer = 2 * trained * trained_width // split_state
    tokens = t.batch_size * t.max_length  # every sequence at max_length: an upper bound
    if second_model:
        reference = shape.params * width // split_weights
        kinds = ("second-forget", "second-retain")
    else:  # the frozen output layer (LoRA never changes it: no copy) and the batch's reference states
        reference = (0 if s.lora else head * width) + tokens * shape.hidden * width
        kinds = METHOD_PASSES[s.method]
    passes = [_pass_bytes(shape, s, kind, tokens) for kind in kinds]
    head_grad = 0 if s.lora else 4 * head  # backward's float32 gradient of the output layer, before it is added
    if s.device == "cuda":
        update = trained * trained_width // split_state  # AdamW's foreach temporary: one per parameter
    else:
        update = 2 * largest * trained_width  # AdamW's loop over parameters: two temporaries of one
    # the last pass's head loss at work: a few float32 [rows, |V|] temporaries of one chunk
    forward = sum(passes) + (HEAD_CHUNK_TEMPORARIES * min(tokens, chunk_rows(shape.vocab)) * shape.vocab * 4
                             if kinds[-1] == "fused" else 0)
    if t.grad_accum > 1:  # the gradients live across the accumulated steps
        forward += gradients
        backward = gradients + sum(passes) + head_grad
    else:
        backward = sum(passes[:-1]) + max(passes[-1], gradients) + head_grad
    peak = weights + optimizer + reference + max(forward, backward, gradients + update)
    return Estimate(weights, gradients, optimizer, reference, sum(passes), update, peak,
                    CUDA_RUNTIME if s.device == "cuda" else 0)


def _pass_bytes(shape: Shape, s: Setting, kind: str, tokens: int) -> int:
    """What one forward pass with gradients keeps for backward: its layers' activations, the bf16 copies
    of the weights under autocast, and at the output layer what ``kind`` says."""
    t = s.train
    per_hidden, per_mlp, per_position = ACTIVATIONS[(s.lora, s.precision)]
    layer = per_hidden * shape.hidden + per_mlp * shape.intermediate + per_position * t.max_length
    copies = 2 * shape.linear if s.precision == "autocast" else 0
    if t.gradient_checkpointing:  # each layer's input, and one layer recomputed at a time
        residual = 2 if s.precision == "bfloat16" else 4
        out = tokens * (shape.layers * residual * shape.hidden + layer) + copies // shape.layers
    else:
        out = tokens * shape.layers * layer + copies
    if kind == "fused" and not s.lora:
        out += 4 * shape.vocab * shape.hidden
    elif kind == "logits":
        out += LOGIT_BYTES * tokens * shape.vocab
    elif kind.startswith("second"):
        out += SECOND_MODEL_LOGIT_BYTES[kind == "second-retain"] * tokens * shape.vocab
    return out


def fitting_changes(shape: Shape, s: Setting, memory: int) -> list[str] | None:
    """The fewest options that bring ``s`` within ``memory`` bytes per device (``[]``: it fits as it is;
    None: nothing tried does). Among as many changes, those that change the run least come first: the
    same updates (checkpointing, then one sequence at a time with accumulation), then precision, then
    an adapter."""
    t = s.train
    options = [(text, change) for text, change, useful in (
        ("train.gradient_checkpointing=true", {"gradient_checkpointing": True}, not t.gradient_checkpointing),
        (f"train.batch_size=1 train.grad_accum={t.batch_size * t.grad_accum}",
         {"batch_size": 1, "grad_accum": t.batch_size * t.grad_accum}, t.batch_size > 1),
        ("train.dtype=bfloat16" + (" train.bf16=auto" if str(t.bf16).lower() == "false" else ""),
         {"dtype": "bfloat16", "bf16": "auto"}, t.dtype != "bfloat16"),
        ("peft=lora", None, not s.lora)) if useful]
    for size in range(len(options) + 1):
        for chosen in combinations(options, size):
            tried = s
            for _, change in chosen:
                tried = replace(tried, lora=True) if change is None else \
                    replace(tried, train=replace(tried.train, **change))
            if estimate(shape, tried).total <= memory:
                return [text for text, _ in chosen]
    return None
