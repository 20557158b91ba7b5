"""Command-line options generated from config dataclasses.

A config is a dataclass with a docstring under every field; the docstring is
the option's ``--help`` text, so help has one source. Field types map to
argparse types: ``bool`` becomes ``--flag/--no-flag``, ``X | None`` accepts a
value or ``none``, ``Literal[...]`` becomes ``choices``, ``Literal[...] | int``
takes one of the literal words or a number, ``dict[str, float]`` takes
``key=value,key=value``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, get_args, get_origin


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _parse_mapping(text: str) -> dict[str, float]:
    mapping = {}
    for part in text.split(","):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected key=value pairs, found {part!r}")
        key, value = part.split("=", 1)
        try:
            mapping[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}: expected a number, found {value!r}") from None
    return mapping


def _union_of_words_and_numbers(annotation: Any):
    """A converter for ``Literal[...] | int`` (or float): a literal word or a number; else None."""
    if get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    members = get_args(annotation)
    words = [
        word for member in members if get_origin(member) is Literal for word in get_args(member)
    ]
    numbers = [member for member in members if member in (int, float)]
    if not words or not all(
        get_origin(member) is Literal or member in numbers for member in members
    ):
        return None

    def convert(text: str) -> Any:
        if text in words:
            return text
        for number in numbers:
            try:
                return number(text)
            except ValueError:
                continue
        expected = " or ".join([*(repr(word) for word in words), *(n.__name__ for n in numbers)])
        raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}")

    convert.__name__ = "value"
    return convert


def _converter(annotation: Any, optional: bool):
    union = _union_of_words_and_numbers(annotation)
    if union is not None:
        return union
    base = {int: int, float: float, str: str}.get(annotation)
    if get_origin(annotation) is dict:
        base = _parse_mapping
    if base is None:
        base = str

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def _metavar(annotation: Any) -> str:
    simple = {int: "N", float: "X", str: "TEXT"}
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return "|".join(
            "|".join(map(str, get_args(member)))
            if get_origin(member) is Literal
            else simple.get(member, "VALUE")
            for member in get_args(annotation)
        )
    return simple.get(annotation, "K=V,..")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    title: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add one ``--option`` per field of ``cls`` (except ``skip``); ``defaults`` replaces the
    field defaults (in the help and when the option is absent)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    for item in dataclasses.fields(cls):
        if item.name in skip or not item.init:
            continue
        annotation, optional = _unwrap_optional(hints[item.name])
        flag = "--" + item.name.replace("_", "-")
        default = (
            item.default
            if item.default is not dataclasses.MISSING
            else (
                item.default_factory() if item.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
        )
        if defaults and item.name in defaults:
            default = defaults[item.name]
        help_text = docs.get(item.name, "").replace("``", "'")
        if annotation is bool:
            group.add_argument(
                flag,
                dest=item.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{help_text} (default: {default})",
            )
            continue
        kwargs: dict[str, Any] = {
            "dest": item.name,
            "default": default,
            "help": f"{help_text} (default: {default})",
        }
        if get_origin(annotation) is Literal:
            kwargs["choices"] = list(get_args(annotation))
            if optional:
                kwargs["type"] = _converter(str, True)
        else:
            kwargs["type"] = _converter(annotation, optional)
            kwargs["metavar"] = _metavar(annotation)
        group.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments (fields absent from ``args`` keep their defaults)."""
    values = {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(cls)
        if item.init and hasattr(args, item.name)
    }
    values.update(overrides)
    return cls(**values)


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _typed_value(annotation: Any, text: str, where: str) -> Any:
    """``text`` converted to ``annotation`` (bool, int, float, str, X | None, list/tuple of
    those with items joined by '+'); the error names ``where`` and the expected type."""
    annotation, optional = _unwrap_optional(annotation)
    if optional and text.lower() == "none":
        return None
    origin = get_origin(annotation)
    if origin in (list, tuple):
        item_type = get_args(annotation)[0] if get_args(annotation) else str
        items = [_typed_value(item_type, part, where) for part in text.split("+") if part]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        expected = "a bool (true/false, yes/no, on/off, 1/0)"
    elif annotation in (int, float):
        try:
            return annotation(text)
        except ValueError:
            expected = "an integer" if annotation is int else "a number"
    elif get_origin(annotation) is Literal:
        if text in get_args(annotation):
            return text
        expected = "one of " + ", ".join(map(str, get_args(annotation)))
    else:
        return text
    raise argparse.ArgumentTypeError(f"{where}: expected {expected}, found {text!r}")


def parse_typed_mapping(cls: type, text: str, option: str) -> dict[str, Any]:
    """``key=value,key=value`` with each value converted by the type of the field ``key`` of
    the dataclass ``cls``; errors name ``option``, the field and the expected type."""
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls) if item.init]
    values: dict[str, Any] = {}
    for part in text.split(",") if text.strip() else []:
        if "=" not in part:
            raise argparse.ArgumentTypeError(
                f"{option}: expected key=value pairs separated by commas, found {part!r}"
            )
        key, value = (piece.strip() for piece in part.split("=", 1))
        if key not in names:
            raise argparse.ArgumentTypeError(
                f"{option}: {cls.__name__} does not take {key!r}; its arguments are {names}"
            )
        values[key] = _typed_value(hints[key], value, f"{option} {key}")
    return values
