"""The validation layer of loadkit's files: scenarios, the reference server's config and the
sweep table are all checked here, by pydantic, against declared types, and every error is
told the same way: the field's path, what was expected, and the bad value
(``tiers.free.requests: must be >= 1, got 0``).

Why pydantic (v2): it validates plain frozen dataclasses as well as its own models, so a
table whose file shape is the model's shape needs no second declaration (adding a field is
one annotated line with a docstring); its errors are structured (the location as a path,
the input, the constraint that failed), so the messages are ours rather than the library's;
discriminated unions, strict scalars and refused unknown fields are built in; it is
well kept and already installed with the ``openai`` client. msgspec is faster but its errors
are prose without the bad value; attrs + cattrs would add two libraries for the same result.
Validation speed does not matter here: a file is read once per run.

Scalars are strict (``"60"`` is not 60, ``true`` is not 1, an integer is a number), numbers
are finite, unknown fields are refused by name. A rule that spans fields raises
``invalid(...)`` or ``problem(...)`` from a validator and is reported like the others.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le
from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Strict, TypeAdapter
from pydantic import ValidationError as _PydanticError
from pydantic_core import PydanticCustomError

T = TypeVar("T")

# ---------------------------------------------------------------------------------------
# Field types shared by every file

Int = Annotated[int, Strict()]
Count = Annotated[int, Strict(), Ge(1)]
"""An integer >= 1."""
NonNegativeInt = Annotated[int, Strict(), Ge(0)]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Positive = Annotated[float, Strict(), AllowInfNan(False), Gt(0)]
NonNegative = Annotated[float, Strict(), AllowInfNan(False), Ge(0)]
Share = Annotated[float, Strict(), AllowInfNan(False), Ge(0), Le(1)]
"""A fraction in [0, 1]."""
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


def _trimmed(v: str) -> str:
    if not v or v != v.strip():
        raise invalid("expected a non-empty string without surrounding spaces", v)
    return v


def _label(v: str) -> str:
    if not v or any(c.isspace() for c in v) or len(v) > 64:
        raise invalid("expected a label: no spaces, 1 to 64 characters", v)
    return v


def _secret(v: str) -> str:
    if not v or any(c.isspace() for c in v):
        raise invalid("expected a key without whitespace", v)
    return v


Name = Annotated[str, Strict(), AfterValidator(_trimmed)]
"""A non-empty string without surrounding spaces."""
Label = Annotated[str, Strict(), AfterValidator(_label)]
"""A key's or tier's label: no spaces, at most 64 characters."""
SecretKey = Annotated[str, Strict(), AfterValidator(_secret)]
"""An access key: never shown in an error (declare its field with ``repr=False``)."""


DERIVED: Mapping[str, Any] = {"derived": True}
"""Metadata of a dataclass field that is not written in the file (a table's name)."""


class Table(BaseModel):
    """A table of a file whose shape differs from the model it becomes (the model's
    dataclass is validated directly where the shapes match)."""

    # Schemas are built on first use, not at import (the Locust users import the model).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# ---------------------------------------------------------------------------------------
# Rules that span fields


def invalid(expected: str, value: Any, at: str = "") -> PydanticCustomError:
    """An error to raise from a validator: ``PATH[.at]: expected, got value``."""
    return PydanticCustomError("loadkit", "{text}", {"text": expected, "value": value, "at": at})


def problem(text: str, at: str = "") -> PydanticCustomError:
    """An error whose ``text`` says it all (it names the value itself, if any)."""
    return PydanticCustomError("loadkit", "{text}", {"text": text, "at": at})


# ---------------------------------------------------------------------------------------
# Validating, and telling what is wrong


class Invalid(ValueError):
    """A file or value that does not fit its schema; the message is the one to show."""


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def validate(
    tp: type[T], data: object, *, root: str = "", context: Mapping[str, Any] | None = None
) -> T:
    """``data`` validated as ``tp`` (a ``Table``, a dataclass or an annotated type), or
    ``Invalid`` naming the first wrong field, under ``root`` (a path prefix)."""
    try:
        return typing.cast(
            T, _adapter(typing.cast(Hashable, tp)).validate_python(data, context=context)
        )
    except _PydanticError as exc:
        # ``from None``: pydantic's own text repeats every input, keys included.
        raise Invalid(describe(exc, tp, root)) from None


def validate_value(annotation: Any, data: object, *, root: str) -> Any:
    """``data`` validated as ``annotation`` (such as ``Positive``), or ``Invalid``."""
    try:
        return _adapter(annotation).validate_python(data)
    except _PydanticError as exc:
        raise Invalid(describe(exc, annotation, root)) from None


def describe(exc: _PydanticError, tp: Any, root: str = "") -> str:
    """The first error of ``exc`` (validating ``tp``) as ``path: expected, got value``."""
    err = exc.errors(include_url=False)[0]
    spot = _locate(tp, err["loc"])
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    path = _join(_join(root, spot.path), ctx.get("at", ""))
    if err["type"] == "loadkit":
        text = str(ctx["text"])
        shown = "value" in ctx
        value = ctx.get("value")
    else:
        text = _explain(err["type"], ctx, spot)
        shown = err["type"] not in _NO_VALUE
        value = err["input"]
    if shown:
        text += " (the value is not shown: keys are secret)" if spot.secret else f", got {value!r}"
    return f"{path}: {text}" if path else text


_NO_VALUE = {"missing", "extra_forbidden", "unexpected_keyword_argument"}

_PHRASES = {
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dataclass_type": "expected a table",
}


def _explain(kind: str, ctx: dict[str, Any], spot: _Spot) -> str:
    if kind in _PHRASES:
        return _PHRASES[kind]
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return _bound(op, ctx[key])
    if kind == "missing":
        return f"required ({_phrase(spot.doc)})" if spot.doc else "required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown field (expected one of {', '.join(spot.siblings)})"
    if kind == "literal_error":
        return f"expected {ctx['expected']}"
    if kind == "too_short":
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"expected at least {n} entries"
    return kind.replace("_", " ")


def _bound(op: str, limit: float) -> str:
    return "must be a positive number" if (op, limit) == (">", 0) else f"must be {op} {limit:g}"


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


# ---------------------------------------------------------------------------------------
# From pydantic's error location to a path a user recognises


@dataclasses.dataclass
class _Spot:
    path: str = ""
    siblings: tuple[str, ...] = ()  # the fields of the table the location ends in
    doc: str = ""
    secret: bool = False


def _locate(tp: Any, loc: Sequence[int | str]) -> _Spot:
    """Walk ``loc`` through the declared types: list indexes print as ``[i]``, union tags
    and dict-key markers are dropped, and the last field's table, docstring and secrecy
    are noted for the message."""
    spot = _Spot()
    for part in loc:
        if part == "[key]":  # the dict key itself is wrong: the path already ends in it
            continue
        tp = _strip(tp)
        table = _fields(tp)
        if table is not None:
            spot.siblings = tuple(table)
            tp, spot.doc, spot.secret = table.get(str(part), (Any, "", False))
            spot.path = _join(spot.path, str(part))
            continue
        spot.doc, spot.secret = "", False
        member = _tagged_member(tp, part)
        if member is not None:
            tp = member
        elif get_origin(tp) in (list, tuple, Sequence):
            spot.path += f"[{part}]"
            tp = get_args(tp)[0]
        else:
            spot.path = _join(spot.path, str(part))
            args = get_args(tp)
            tp = args[1] if get_origin(tp) in (dict, Mapping) and len(args) == 2 else Any
    return spot


def _join(path: str, part: str) -> str:
    if not part:
        return path
    if not path or part.startswith("["):
        return path + part
    return f"{path}.{part}"


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` as ``X``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if _is_union(tp):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _fields(tp: Any) -> dict[str, tuple[Any, str, bool]] | None:
    """name -> (type, docstring, secret) of a table or a validated dataclass."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        docs = _attribute_docs(tp)
        return {
            name: (f.annotation, docs.get(name, ""), f.repr is False)
            for name, f in tp.model_fields.items()
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        docs = _attribute_docs(tp)
        return {
            f.name: (hints[f.name], docs.get(f.name, ""), not f.repr)
            for f in dataclasses.fields(tp)
            if f.init and "derived" not in f.metadata
        }
    return None


@functools.cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's annotated attributes; read only to word an
    error (reading them for every table at import would cost more than all the rest)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return {}
    docs: dict[str, str] = {}
    stmts = body.body if isinstance(body, ast.ClassDef) else []
    for prev, stmt in itertools.pairwise(stmts):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            docs[prev.target.id] = inspect.cleandoc(stmt.value.value)
    return docs


def _phrase(doc: str) -> str:
    """A docstring's first sentence as a phrase to put in parentheses."""
    first = " ".join(doc.replace("``", "").split()).split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:] if first[1:2].islower() else first


def _tagged_member(tp: Any, tag: int | str) -> Any:
    """The member of a discriminated union whose ``Literal`` tag is ``tag``, if any."""
    if not _is_union(tp):
        return None
    for member in get_args(tp):
        table = _fields(_strip(member)) or {}
        for ann, _, _ in table.values():
            ann = _strip(ann)
            if get_origin(ann) is Literal and get_args(ann) == (tag,):
                return _strip(member)
    return None
