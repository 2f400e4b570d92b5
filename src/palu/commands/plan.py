"""``palu plan``: will an unlearning run fit? Peak memory per device, from the model's config alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from palu.adapters import AdapterConfig
from palu.config import load_config, require
from palu.methods.common import MethodOptions
from palu.methods.palu import PaluConfig
from palu.models import load_model_config, require_model
from palu.plan import GIB, Estimate, Setting, Shape, estimate, fitting_changes, model_shape
from palu.train.loop import TrainConfig

HELP = "estimate the peak memory per device of an unlearning run from the model's config (no weights read)"
RESUMABLE = False
ROWS = (("weights", "weights"), ("gradients", "gradients"), ("optimizer states", "optimizer"),
        ("reference", "reference"), ("activations", "activations"), ("update temporaries", "update"),
        ("peak per device", "peak"), ("+ CUDA runtime", "runtime"), ("total", "total"))


@dataclass
class Config:
    """``palu plan``: the peak memory per device of ``palu unlearn`` with these options, for PALU's
    structure and for the usual one that keeps a second full model as the reference.

    Attributes:
        model: a folder with a config.json, or a hub id (its config from the local cache, else the hub).
            No weights are read.
        method: the method, as for ``palu unlearn`` (``method=npo``).
        peft: a LoRA adapter, as for ``palu unlearn`` (``peft=lora``).
        train: the training options, as for ``palu unlearn``; the estimate reads batch_size,
            max_length (every sequence is taken at this length: an upper bound), dtype, bf16 (auto
            counts as a device with bf16), gradient_checkpointing and grad_accum.
        processes: processes training together, one device each.
        sharding: how they split the training state: "no_shard" (DDP: each holds all of it),
            "shard_grad_op" (ZeRO-2: gradients and optimizer states split) or "full_shard"
            (ZeRO-3, FSDP: the weights too).
        device: "cuda" (adds the CUDA runtime, which torch's allocation counts leave out) or "cpu".
        memory: the device's memory in GiB (an A100 40GB: 40); the plan then says whether the run
            fits and, if not, the fewest option changes that make it fit.
    """

    model: str = ""
    method: MethodOptions = field(default_factory=PaluConfig)
    peft: AdapterConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    processes: int = 1
    sharding: Literal["no_shard", "shard_grad_op", "full_shard"] = "no_shard"
    device: Literal["cuda", "cpu"] = "cuda"
    memory: float | None = None

    def __post_init__(self) -> None:
        require(self.processes >= 1, "processes", "at least 1", self.processes)
        if self.memory is not None:
            require(self.memory > 0, "memory", "a positive number of GiB", self.memory)


def run_plan(cfg: Config) -> str:
    """The plan as text: the model, the setting, the table and, with ``memory``, whether it fits."""
    require_model(cfg)
    shape = model_shape(load_model_config(cfg.model), cfg.peft)
    setting = Setting(cfg.train, cfg.method.name, cfg.peft is not None, cfg.processes, cfg.sharding, cfg.device)
    palu, second = estimate(shape, setting), estimate(shape, setting, second_model=True)
    lines = [describe_model(cfg.model, shape), describe_setting(setting, cfg.peft), "",
             table({"palu": palu, "second model": second}, cfg.device == "cuda"), "",
             "The peak is less than the sum: during backward the gradients take the memory that the last forward "
             "pass's activations free."]
    if cfg.memory is not None:
        lines.append(fit(shape, setting, palu, second, cfg.memory))
    return "\n".join(lines)


def describe_model(name: str, shape: Shape) -> str:
    size = f"{shape.params / 1e9:.2f}B" if shape.params >= 1e9 else f"{shape.params / 1e6:.1f}M"
    return (f"{name}: {size} parameters ({shape.layers} layers, hidden {shape.hidden}, MLP {shape.intermediate}, "
            f"vocabulary {shape.vocab:,})")


def describe_setting(s: Setting, peft: AdapterConfig | None) -> str:
    t = s.train
    precision = {"float32": "float32 weights, no autocast", "autocast": "float32 weights, bf16 autocast",
                 "bfloat16": "bfloat16 weights"}[s.precision]
    parts = [f"method {s.method}", f"LoRA r={peft.r}" if peft else "full fine-tuning", precision,
             f"batch {t.batch_size} x {t.max_length} tokens"]
    if t.grad_accum > 1:
        parts.append(f"{t.grad_accum} accumulated steps")
    if t.gradient_checkpointing:
        parts.append("gradient checkpointing")
    parts.append(f"{s.processes} process{'es' if s.processes > 1 else ''}"
                 + (f" ({s.sharding})" if s.processes > 1 else "") + f" on {s.device}")
    return "; ".join(parts)


def table(columns: dict[str, Estimate], cuda: bool) -> str:
    """One row per part, one column per structure, in GiB."""
    rows = [(label, [f"{getattr(e, key) / GIB:.2f} GiB" for e in columns.values()]) for label, key in ROWS
            if cuda or key not in ("runtime", "total")]
    width = max(len(label) for label, _ in rows)
    cells = [max(len(name), *(len(r[1][i]) for r in rows)) for i, name in enumerate(columns)]
    line = lambda label, values: "  ".join([label.ljust(width), *(v.rjust(w) for v, w in zip(values, cells))])
    return "\n".join([line("", list(columns)), *(line(label, values) for label, values in rows)])


def fit(shape: Shape, s: Setting, palu: Estimate, second: Estimate, memory: float) -> str:
    """Whether each structure fits in ``memory`` GiB, and for palu the fewest changes that make it fit."""
    room = memory * GIB
    verdict = lambda e: "fits" if e.total <= room else "does not fit"
    text = f"On a {memory:g} GiB device: palu {verdict(palu)}"
    if palu.total > room:
        changes = fitting_changes(shape, s, room)
        text += (f"; it fits with {' '.join(changes)}" if changes else
                 ", whatever the options; spread it over more devices (processes=N sharding=full_shard)")
    return f"{text}. The second-model structure {verdict(second)}."


def main(args) -> str:
    return run_plan(load_config(Config, args.config, args.overrides))
