"""What palu picks by name (unlearning methods, annotators, metrics) lives in a ``Registry``.

Each entry is added where it is defined, so a new method, annotator or metric touches one module;
every registry refuses a name taken twice and answers an unknown name with the valid ones, since
names come from users' configs and command lines.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from palu.errors import PaluError

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Entries of one ``kind`` by name, iterated in the order they were added.

    A read-only mapping, except that ``registry[name]`` raises a PaluError listing the valid names
    (``get`` still returns None). ``sources``: modules that add entries but are not imported
    wherever the registry is read; the first read imports them, so the registry is always whole.
    ``sort``: list names alphabetically (in ``names()`` and errors) rather than in order added.
    """

    def __init__(self, kind: str, sources: Iterable[str] = (), sort: bool = False):
        self.kind = kind
        self.sort = sort
        self._sources = list(sources)
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name`` and return it."""
        if name in self._entries:
            raise PaluError(f"{self.kind} {name!r} is already registered; pick another name.")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The valid names, as users are shown them."""
        self._load()
        return sorted(self._entries) if self.sort else list(self._entries)

    def __getitem__(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise PaluError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}.")
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        self._load()
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def _load(self) -> None:
        while self._sources:  # popped before importing, so a source that reads the registry is not imported twice
            importlib.import_module(self._sources.pop(0))
