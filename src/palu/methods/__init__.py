"""Unlearning objectives: each is a typed config plus a loss function, picked by name.

PALU and the baselines it is compared with (see ``shared/docs/baselines.md``) all run on the same
data pipeline, precomputed reference and training loop. Each method module registers its method
in ``METHODS`` on import; the import below fixes their order (PALU, then the baselines), which
``palu demo --compare`` and error messages show.
"""

from __future__ import annotations

from palu.methods import palu, ga, graddiff, npo, simnpo, idkdpo, rmu, wga, pdu, tpo  # noqa: F401  (in this order)
from palu.methods.common import METHODS, Method, register

__all__ = ["METHODS", "Method", "get_method", "register"]


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name is an error listing the valid ones."""
    return METHODS[name]
