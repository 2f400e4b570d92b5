"""Typed configs for every command: a YAML file, then ``key=value`` overrides, then validation.

Each section is a dataclass whose fields carry the defaults (the one place defaults live); an
unknown key is an error that lists the valid ones. The resolved config is saved beside every result.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from palu.errors import PaluError
from palu.io import read_text


class OptionError(PaluError):
    """An option's value outside its allowed range; ``build`` names the option by its full dotted path."""

    def __init__(self, option: str, rule: str, value):
        self.option, self.rule, self.value = option, rule, value
        super().__init__(f"{option} must be {rule}, not {value!r}.")

    def within(self, section: str) -> OptionError:
        return OptionError(f"{section}.{self.option}", self.rule, self.value)


def require(ok: bool, option: str, rule: str, value) -> None:
    """Refuse a section's option (named relative to its section) outside its allowed range, in the one
    wording every option uses."""
    if not ok:
        raise OptionError(option, rule, value)


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.lr=1e-5", "method=npo"]`` -> nested dict; values are read as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise PaluError(f"cannot read the override {pair!r}; write it as key=value (e.g. train.lr=1e-5).")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise PaluError(f"cannot read the value of the override {pair!r} ({getattr(exc, 'problem', None) or exc}); "
                            "quote it, or write lists as [a, b] and sections as {key: value}.") from None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if isinstance(node.get(part), str):  # `peft=lora peft.r=4`: the name, then options
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PaluError(f"override {pair!r} sets inside {part!r}, which is not a section.")
        node[leaf] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PaluError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    if not isinstance(data, dict):
        raise PaluError(f"{path}: a config file must hold a mapping of options.")
    return data


class Choice:
    """A section whose type is chosen by its ``name`` option (``method=npo``: NPO's options). A direct
    subclass is the section's type: its ``name`` field holds the default choice, and ``choice(name)``
    returns the dataclass for a name (an unknown name is an error listing the valid ones)."""

    @classmethod
    def choice(cls, name: str) -> type:
        raise NotImplementedError

    @classmethod
    def names(cls) -> list[str]:
        raise NotImplementedError


def build(cls: type, data: dict | None, where: str = "config") -> Any:
    """Make a ``cls`` dataclass from a plain dict, recursively, with errors that name the option.

    For a :class:`Choice`, the dataclass built is the one its ``name`` option picks."""
    data = dict(data or {})
    if _is_choice(cls):
        cls = _chosen(cls, data, where)
    kwargs = typed_options(cls, data, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for name, f in fields.items():  # nested sections not given: their defaults, still validated
        if name not in kwargs and dataclasses.is_dataclass(hints[name]) and f.default_factory is dataclasses.MISSING \
                and f.default is dataclasses.MISSING:
            kwargs[name] = build(hints[name], {}, name)
    try:
        return cls(**kwargs)
    except OptionError as exc:
        raise (exc.within(where) if where != "config" else exc) from None
    except TypeError as exc:
        raise PaluError(f"{where}: {exc}".replace("__init__()", cls.__name__)) from None


def typed_options(cls: type, data: dict, where: str = "config") -> dict:
    """``data`` checked against the fields of the ``cls`` dataclass (unknown options, types, allowed
    values) and converted to their types, without making a ``cls``: what ``build`` passes it, and how
    options of a class that does work when made (an annotator) are checked up front."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PaluError(f"{where}: unknown option {unknown[0]!r}; valid options: {', '.join(fields) or 'none'}.")
    hints = typing.get_type_hints(cls)
    return {name: _convert(hints[name], _onto_default(fields[name], value),
                           f"{where}.{name}" if where != "config" else name) for name, value in data.items()}


def _is_choice(cls: type) -> bool:
    """Is ``cls`` a section type whose dataclass its ``name`` picks (not one of the choices)?"""
    return cls in Choice.__subclasses__()


def _chosen(base: type, data: dict, where: str) -> type:
    name = data.setdefault("name", next(f.default for f in dataclasses.fields(base) if f.name == "name"))
    return base.choice(str(name))


def _onto_default(f: dataclasses.Field, value):
    """A partial section (``retain.limit=3``) keeps the section's other defaults.

    A mapping that names another method than the default's replaces it: options of one method
    do not apply to another.
    """
    if not isinstance(value, dict):
        return value
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return value
    if dataclasses.is_dataclass(default):
        default = dataclasses.asdict(default)
    if not isinstance(default, dict) or value.get("name", default.get("name")) != default.get("name"):
        return value
    return merge(default, value)


def _convert(hint, value, where: str):
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if value not in args:
            raise PaluError(f"{where} must be one of {', '.join(map(str, args))}, not {value!r}.")
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _convert(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(hint)}:
            value = {"name": value}  # `method=npo`, `peft=lora`: a section picked by its name
        if not isinstance(value, dict):
            raise PaluError(f"{where} is a section; give it as a mapping of options.")
        return build(hint, value, where)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items)] if args else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise PaluError(f"{where} must be true or false, not {value!r}.")
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError, OverflowError):
            raise PaluError(f"{where} must be a number, not {value!r}.") from None
        if not math.isfinite(number):
            raise PaluError(f"{where} must be a finite number, not {value!r}.")
        if hint is int and number != float(value):
            raise PaluError(f"{where} must be a whole number, not {value!r}.")
        return number
    if hint is str:
        return str(value)
    return value


def load_config(cls: type, path: str | None, overrides: list[str]) -> Any:
    """The ``cls`` config from an optional YAML file plus command-line overrides."""
    return build(cls, raw_config(path, overrides))


def raw_config(path: str | None, overrides: list[str]) -> dict:
    """The options of an optional YAML file with command-line overrides on top, not yet typed."""
    data = read_yaml(path) if path else {}
    over = parse_overrides(overrides)
    for section in ("method", "peft"):  # `method=npo`, `peft=lora` pick one by name
        if isinstance(over.get(section), str):
            over[section] = {"name": over[section]}
    if isinstance(over.get("method"), dict) and "name" in over["method"] and isinstance(data.get("method"), dict) \
            and data["method"].get("name") != over["method"]["name"]:
        data = {**data, "method": {}}  # another method: the file's method options no longer apply
    return merge(data, over)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type, prefix: str = "", instance=None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) of every option of the ``cls`` dataclass (defaults from
    ``instance`` when given), nested sections flattened, meanings read from the "Attributes:" of
    the docstrings: what ``palu VERB --help`` lists."""
    rows = []
    hints = typing.get_type_hints(cls)
    texts = _attribute_docs(cls)
    for f in (f for f in dataclasses.fields(cls) if f.init):
        key, hint, text = f"{prefix}{f.name}", hints[f.name], texts.get(f.name, "")
        default = getattr(instance, f.name) if instance is not None else _default(f)
        section = _section_type(hint)
        if section is None:
            rows.append((key, _type_name(hint), _show(default), text))
        elif _is_choice(section):
            names = section.names()
            rows.append((key, "section", "", f"{text} Its name picks one of: {', '.join(names)}."))
            rows.append((f"{key}.name", "str", _show(default.name), ""))
            for name in names:
                chosen = section.choice(name)
                rows += [(k, kind, shown, f"({key}={name}) {meaning}".strip())
                         for k, kind, shown, meaning in describe(chosen, f"{key}.", default if name == default.name
                                                                 else chosen())
                         if k != f"{key}.name"]
        elif dataclasses.is_dataclass(default):
            rows.append((key, "section", "", text))
            rows += describe(section, f"{key}.", default)
        else:  # an optional section, or a list of them: its options, at their own defaults
            rows.append((key, _type_name(hint), _show(default if not isinstance(default, list) else
                                                      [dataclasses.asdict(d) for d in default]), text))
            rows += describe(section, f"{key}[]." if typing.get_origin(hint) is list else f"{key}.")
    return rows


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _section_type(hint) -> type | None:
    """The dataclass a field holds (alone, optional, or as a list), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list[{', '.join(_type_name(a) for a in typing.get_args(hint))}]"
    if dataclasses.is_dataclass(hint):
        return "section"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _show(value) -> str:
    """A default as it would be written in a config file."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return repr(value)


def _attribute_docs(cls: type) -> dict[str, str]:
    """``name: meaning`` from the "Attributes:" sections of ``cls`` and its bases (``a, b: text`` names two)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.cleandoc(klass.__doc__ or "") if "__doc__" in vars(klass) else ""
        lines = doc.split("\n")
        if "Attributes:" not in lines:
            continue
        current: list[str] = []
        for line in lines[lines.index("Attributes:") + 1:]:
            if line and not line.startswith(" "):
                break
            match = re.match(r"^    ([\w, ]+): (.*)$", line)
            if match:
                current = [n.strip() for n in match.group(1).split(",")]
                for name in current:
                    out[name] = match.group(2).strip()
            elif line.strip() and current:
                for name in current:
                    out[name] += " " + line.strip()
    return out
