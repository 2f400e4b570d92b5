"""What `palu sweep` may search for a method: each method declares its own knobs beside its config.

A knob is a range (searched on a log scale unless ``log=False``) or a list of choices, with the
source its default bounds come from. The learning rate is every method's knob and belongs to the
sweep (:data:`LR`), so every method is tuned over the same learning rates. A user narrows or widens
a knob with ``space.NAME=[...]``, and may add any other option of the method as a list of choices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from palu.config import typed_options
from palu.errors import PaluError


@dataclass(frozen=True)
class Knob:
    """One searched option: ``low..high`` (``integer`` for whole numbers), or ``choices``.

    Attributes:
        low, high: the range's bounds (inclusive).
        log: search the range on a log scale (both bounds must then be positive).
        integer: the option takes whole numbers.
        choices: the values to choose among, instead of a range.
        source: where the default bounds or choices come from.
    """

    low: float | None = None
    high: float | None = None
    log: bool = True
    integer: bool = False
    choices: tuple = ()
    source: str = ""

    @property
    def is_range(self) -> bool:
        return not self.choices

    def given(self, name: str, values: list) -> Knob:
        """This knob with the bounds (a range) or the choices the user gave as ``space.NAME``."""
        if self.is_range:
            ok = (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)
                  and (0 < values[0] if self.log else True) and values[0] <= values[1])
            if not ok:
                low = "0 < low <= high" if self.log else "low <= high"
                raise PaluError(f"space.{name} must be a range [low, high] with {low}, not {values!r}.")
            return dataclasses.replace(self, low=values[0], high=values[1], source="given")
        if not isinstance(values, list) or not values:
            raise PaluError(f"space.{name} must be a non-empty list of choices, not {values!r}.")
        return dataclasses.replace(self, choices=tuple(values), source="given")

    def suggest(self, trial, name: str) -> Any:
        """The value an Optuna trial draws for this knob."""
        if not self.is_range:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        shown = (f"{self.low:g}..{self.high:g}{' (log)' if self.log else ''}" if self.is_range
                 else ", ".join(map(str, self.choices)))
        return f"{shown}{f'  [{self.source}]' if self.source else ''}"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


LR = Knob(1e-4, 1e-3, source="tiny models trained from scratch; pretrained models want about 1e-6..5e-5")


@dataclass
class _LearningRate:
    lr: float


def typed_space(options, given: dict) -> dict:
    """The user's ``space`` with each value typed as the option itself is (``1e-4`` on the command
    line is a string until then); a name that is not an option of the method is an error naming
    the valid ones."""
    fields = {f.name for f in dataclasses.fields(options)} - {"name"}
    typed = {}
    for name, values in given.items():
        if name not in fields | {"lr"}:
            valid = ", ".join(["lr", *sorted(fields)])
            raise PaluError(f"space.{name}: {options.name} has no option {name!r}; a sweep of {options.name} "
                            f"can search: {valid}.")
        cls = _LearningRate if name == "lr" else type(options)
        typed[name] = ([typed_options(cls, {name: v}, "space")[name] for v in values] if isinstance(values, list)
                       else values)
    return typed


def search_space(declared: dict[str, Knob], options, given: dict[str, list]) -> dict[str, Knob]:
    """The knobs a sweep searches: the learning rate and the method's declared knobs, with the user's
    (typed) ``space.NAME`` bounds or choices on top; another option of the method is searched among
    the choices given for it."""
    knobs = {"lr": LR, **declared}
    for name, values in given.items():
        knobs[name] = (knobs[name] if name in knobs else Knob(choices=(getattr(options, name),))).given(name, values)
    return knobs
