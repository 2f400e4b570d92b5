"""Training with every weight split across the processes: FSDP full sharding (FSDP2) and DeepSpeed ZeRO-3.

A sharded model holds 1/n of each weight per process and gathers a module's weights only while
that module runs. palu's losses read the output layer outside its forward pass (the fused head
loss, gold-token logits, the frozen reference head), so :func:`whole_output_layer` gathers it
through the sharding library itself and keeps it gathered until the backward pass has ended
(:func:`release`): gradients reach the shards through the library's own reduce-scatter, and
nothing frees the layer while a later part of the backward pass still reads it. The model is
gathered in full only to be saved (:func:`full_state_dict`).
"""

from __future__ import annotations

from accelerate.state import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.environment import parse_flag_from_env
from torch import nn
from torch.distributed.fsdp import FSDPModule

from palu.errors import PaluError


def apply_accelerate_config(accelerator) -> None:
    """Apply the FSDP or DeepSpeed config of ``accelerate launch`` to CPU processes too.

    accelerate applies either only on accelerator devices and runs CPU processes as plain data
    parallel, without a word; FSDP2 and DeepSpeed both run on CPUs with gloo.
    """
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    state = accelerator.state
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        plugin = FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise PaluError("FSDP on CPU processes needs FSDP2: set fsdp_version: 2 in the accelerate config "
                            "(examples/accelerate/fsdp_full_shard.yaml), or run on GPUs.")
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin = plugin
        kind = DistributedType.FSDP
    elif parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")  # takes over the process group accelerate started
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision(accelerator.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
        kind = DistributedType.DEEPSPEED
    else:
        return
    state.distributed_type = PartialState().distributed_type = kind  # as accelerate records it for GPUs


def is_sharded(model) -> bool:
    """Whether ``model``'s weights are split across the processes (FSDP2 or ZeRO-3)."""
    return isinstance(model, FSDPModule) or any(hasattr(p, "ds_id") for p in model.parameters())


def whole_output_layer(model) -> nn.Module:
    """``model``'s output layer, its weight (and bias) whole on this process until :func:`release`.

    FSDP2: the FSDP group holding the layer is gathered if it is not already (accelerate's FSDP2
    keeps it gathered from the forward pass to the backward one, so this usually costs nothing) and
    told to stay so through the forward passes that follow and the backward pass, whose
    post-backward step would otherwise free it while another part of the backward pass still reads
    it. ZeRO-3: the layer's parameters are gathered and marked external, which DeepSpeed's module
    hooks, releasing a module's own parameters after each use, leave in place.
    """
    layer = model.get_output_embeddings()
    owner = _fsdp_owner(model, layer)
    if owner is not None:
        owner.set_reshard_after_forward(False, recurse=False)
        owner.set_reshard_after_backward(False, recurse=False)
        owner.unshard()
    zero3 = [p for p in layer.parameters() if hasattr(p, "ds_id")]
    for p in zero3:
        if not p.is_external_param:
            p.is_external_param = p.palu_pinned = True
    if zero3:
        zero3[0].all_gather(param_list=zero3)  # those not whole yet
    return layer


def release(model) -> None:
    """Shard again what :func:`whole_output_layer` kept gathered; call it after each backward pass, so
    that the optimizer sees the parameters as it knows them and the next gather sees its update."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    pinned = [p for p in model.parameters() if getattr(p, "palu_pinned", False)]
    for p in pinned:
        p.is_external_param = p.palu_pinned = False
    if pinned:
        pinned[0].partition(param_list=pinned)


def full_state_dict(model) -> dict | None:
    """Every weight of a sharded ``model`` in full, on the CPU of the main process ({} on the others);
    every process must call it. None when ``model`` is not sharded: it saves its own weights."""
    if isinstance(model, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_sharded(model):
        return None
    from deepspeed.runtime.zero import GatheredParameters

    main = PartialState().is_main_process
    full = {}
    for prefix, module in model.named_modules():  # one module's weights in full at a time
        own = dict(module.named_parameters(prefix=prefix, recurse=False))
        with GatheredParameters(list(own.values())):
            if main:
                full.update({name: p.detach().to("cpu", copy=True) for name, p in own.items()})
    if not main:
        return {}
    saved = model.state_dict().keys()  # persistent buffers are whole on every process
    return full | {name: b.detach().to("cpu", copy=True) for name, b in model.named_buffers() if name in saved}


def _fsdp_owner(model: nn.Module, layer: nn.Module) -> FSDPModule | None:
    """The innermost FSDP2 module around ``layer`` (whose group holds its weights), if any."""
    if not isinstance(model, FSDPModule):
        return None
    path = next(name for name, module in model.named_modules() if module is layer).split(".")
    for depth in range(len(path), -1, -1):
        module = model.get_submodule(".".join(path[:depth]))
        if isinstance(module, FSDPModule):
            return module
    return None

