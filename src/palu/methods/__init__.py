"""Unlearning objectives: each is a typed config plus a loss function, picked by name.

PALU and the baselines it is compared with (see ``docs/methods.md``) all run on the same
data pipeline, precomputed reference and training loop. Each method module registers its method
in ``METHODS`` on import; the import below fixes their order (PALU, then the baselines), which
``palu demo --compare`` and error messages show.
"""

from __future__ import annotations

from palu.config import build
from palu.methods.common import METHODS, Method, MethodOptions, register

# isort: off
# each module registers its method on import, so this order (PALU, then the baselines) is the registry's
from palu.methods import palu, ga, graddiff, npo, simnpo, idkdpo, rmu, wga, pdu, tpo  # noqa: F401, E402
# isort: on

__all__ = ["METHODS", "Method", "MethodOptions", "configure", "get_method", "register"]


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name is an error listing the valid ones."""
    return METHODS[name]


def configure(options: dict) -> MethodOptions:
    """The typed options of the method ``options["name"]`` names (PALU when none), checked as a config
    file's ``method`` section is: ``configure({"name": "npo", "beta": 0.2})``."""
    return build(MethodOptions, options, "method")
