"""Plain JSON values of the frozen dataclasses that analysis results are made of, and back.

Every result type subclasses ``JsonRecord``: ``to_dict()`` gives the summary.json shape
(keys in field order, enums as their value, numpy scalars as Python numbers, NaN and
infinities as null) and ``from_dict()`` reads it back, checking every value's type and
naming the path of the first one that does not fit, so an old or hand-edited summary.json
is either read faithfully or refused with a one-line reason."""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

_OMIT_NONE = "omit_none"
_FLATTEN = "flatten"


class FormatError(ValueError):
    """A JSON value that does not have the shape of the result type (names the path)."""


def omit_none() -> Any:
    """A field whose key is left out of the JSON while it is None (and read as None when
    absent)."""
    return dataclasses.field(default=None, metadata={_OMIT_NONE: True})


def flatten() -> Any:
    """A record-valued field whose keys are written into (and read from) the enclosing object
    at this position, as if they were its own."""
    return dataclasses.field(metadata={_FLATTEN: True})


_PLAIN = (str, int, bool, type(None))


def to_plain(x: Any) -> Any:
    """A JSON-ready value: records as dicts, tuples as lists, enums as their value, numpy
    scalars as Python numbers, NaN and infinities as None."""
    kind = type(x)
    if kind in _PLAIN:  # most values (request ids, counts); exact types, so enums go on
        return x
    if kind is float:
        return x if math.isfinite(x) else None
    if isinstance(x, JsonRecord):
        return x.to_dict()
    if isinstance(x, list | tuple):
        return [to_plain(v) for v in x]
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, Mapping):
        return {str(k): to_plain(v) for k, v in x.items()}
    return x


class JsonRecord:
    """Base of the frozen dataclasses that appear in summary.json.

    A class with several shapes in one list (the two kinds of limit entry) sets ``json_tag``
    to the key and value that tell its shape apart."""

    json_tag: ClassVar[tuple[str, str] | None] = None
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is one

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, how in _layout(type(self)):
            value = getattr(self, name)
            if how == _FLATTEN:
                out.update(value.to_dict())
            elif value is None and how == _OMIT_NONE:
                continue
            else:
                out[name] = to_plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        if not isinstance(data, Mapping):
            raise FormatError(f"{path or 'the top level'}: expected an object, got {_show(data)}")
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            where = f"{path}.{f.name}" if path else f.name
            if f.metadata.get(_FLATTEN):
                kwargs[f.name] = from_plain(data, hints[f.name], path)
            elif f.name in data:
                kwargs[f.name] = from_plain(data[f.name], hints[f.name], where)
            elif f.metadata.get(_OMIT_NONE):
                kwargs[f.name] = None
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise FormatError(f"{where}: missing")
        return cls(**kwargs)


_LAYOUT: dict[type, list[tuple[str, str | None]]] = {}
_HINTS: dict[type, dict[str, Any]] = {}


def _layout(cls: type[JsonRecord]) -> list[tuple[str, str | None]]:
    """Each field's name and how it is written (flattened, omitted while None, or plainly)."""
    layout = _LAYOUT.get(cls)
    if layout is None:
        layout = _LAYOUT[cls] = [(f.name, _how(f)) for f in dataclasses.fields(cls)]
    return layout


def _how(f: dataclasses.Field[Any]) -> str | None:
    if f.metadata.get(_FLATTEN):
        return _FLATTEN
    if f.metadata.get(_OMIT_NONE):
        return _OMIT_NONE
    return None


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def from_plain(value: Any, hint: Any, path: str) -> Any:
    """``value`` (parsed JSON) as the type ``hint``; FormatError naming ``path`` otherwise."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return _union(value, typing.get_args(hint), path)
    if hint is type(None):
        if value is not None:
            raise FormatError(f"{path}: expected null, got {_show(value)}")
        return None
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_dict(value, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in hint)
            raise FormatError(f"{path}: {_show(value)} is not one of {allowed}") from None
    if origin is tuple:
        return _tuple(value, typing.get_args(hint), path)
    if origin is dict:
        _, value_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise FormatError(f"{path}: expected an object, got {_show(value)}")
        return {str(k): from_plain(v, value_hint, f"{path}.{k}") for k, v in value.items()}
    return _scalar(value, hint, path)


def _union(value: Any, options: tuple[Any, ...], path: str) -> Any:
    if value is None and type(None) in options:
        return None
    options = tuple(o for o in options if o is not type(None))
    if len(options) == 1:
        return from_plain(value, options[0], path)
    tagged = [o for o in options if isinstance(o, type) and issubclass(o, JsonRecord)]
    if tagged and isinstance(value, Mapping):
        for o in tagged:
            assert o.json_tag is not None, f"{o.__name__} needs a json_tag to be told apart"
            key, tag = o.json_tag
            if value.get(key) == tag:
                return o.from_dict(value, path)
        key = tagged[0].json_tag[0] if tagged[0].json_tag else "?"
        tags = ", ".join(o.json_tag[1] for o in tagged if o.json_tag)
        raise FormatError(f"{path}.{key}: {_show(value.get(key))} is not one of {tags}")
    errors = []
    for o in options:
        try:
            return from_plain(value, o, path)
        except FormatError as exc:
            errors.append(str(exc))
    raise FormatError(errors[0])


def _tuple(value: Any, args: tuple[Any, ...], path: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise FormatError(f"{path}: expected a list, got {_show(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(from_plain(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise FormatError(f"{path}: expected {len(args)} items, got {len(value)}")
    return tuple(
        from_plain(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _scalar(value: Any, hint: Any, path: str) -> Any:
    # bool is an int to Python but never a number in summary.json
    is_bool = isinstance(value, bool)
    if hint is bool:
        ok, expected = is_bool, "true or false"
    elif hint is int:
        ok, expected = isinstance(value, int) and not is_bool, "an integer"
    elif hint is float:
        ok, expected = isinstance(value, int | float) and not is_bool, "a number"
    elif hint is str:
        ok, expected = isinstance(value, str), "a string"
    else:
        raise TypeError(f"{path}: no JSON reading for {hint!r}")
    if not ok:
        raise FormatError(f"{path}: expected {expected}, got {_show(value)}")
    return value
