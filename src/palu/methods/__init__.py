"""Unlearning objectives: each is a typed config plus a loss function, picked by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from palu.errors import PaluError
from palu.methods.palu import PaluConfig, palu_loss


@dataclass(frozen=True)
class Method:
    """A registered objective: ``loss(model, batch, ref_head, config) -> {"loss": ..., terms}``."""

    name: str
    config: type
    loss: Callable


METHODS: dict[str, Method] = {}


def register(method: Method) -> None:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise PaluError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}.") from None


register(Method("palu", PaluConfig, palu_loss))
