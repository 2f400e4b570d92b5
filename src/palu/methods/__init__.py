"""Unlearning objectives: each is a typed config plus a loss function, picked by name.

PALU and the baselines it is compared with (see ``shared/docs/baselines.md``) all run on the same
data pipeline, precomputed reference and training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from palu.errors import PaluError
from palu.methods.ga import GAConfig, ga_loss
from palu.methods.graddiff import GradDiffConfig, graddiff_loss
from palu.methods.idkdpo import IdkDPOConfig, idkdpo_loss, idkdpo_prepare
from palu.methods.npo import NPOConfig, npo_loss
from palu.methods.palu import PaluConfig, palu_loss
from palu.methods.pdu import PDUConfig, pdu_loss, pdu_prepare
from palu.methods.rmu import RMUConfig, rmu_loss, rmu_prepare
from palu.methods.simnpo import SimNPOConfig, simnpo_loss
from palu.methods.tpo import TPOConfig, tpo_loss
from palu.methods.wga import WGAConfig, wga_loss


@dataclass(frozen=True)
class Method:
    """A registered objective: ``loss(model, batch, ref_head, config, **setup.state) -> {"loss": ..., terms}``.

    ``prepare(config, model, forget_items, seed) -> Setup`` (optional) declares what the method
    needs built once before training beyond the forget/retain batches (see
    :class:`palu.methods.common.Setup`); ``palu.train.unlearn`` builds it. ``uses_spans``: the loss
    reads the sensitive spans, so forget items without any are worth a warning.
    """

    name: str
    config: type
    loss: Callable
    prepare: Callable | None = None
    uses_spans: bool = False


METHODS: dict[str, Method] = {}


def register(method: Method) -> None:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise PaluError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}.") from None


register(Method("palu", PaluConfig, palu_loss, uses_spans=True))
register(Method("ga", GAConfig, ga_loss))
register(Method("graddiff", GradDiffConfig, graddiff_loss))
register(Method("npo", NPOConfig, npo_loss))
register(Method("simnpo", SimNPOConfig, simnpo_loss))
register(Method("idkdpo", IdkDPOConfig, idkdpo_loss, idkdpo_prepare))
register(Method("rmu", RMUConfig, rmu_loss, rmu_prepare))
register(Method("wga", WGAConfig, wga_loss))
register(Method("pdu", PDUConfig, pdu_loss, pdu_prepare))
register(Method("tpo", TPOConfig, tpo_loss, uses_spans=True))
