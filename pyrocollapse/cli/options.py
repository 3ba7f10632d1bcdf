"""``KEY=VALUE`` options of the command line, typed by their parameter's annotation.

:func:`parse_options` turns the repeatable ``--prior-option``, ``--model-option``, ... flags
into keyword arguments of the class or function they configure: each value is converted to
the type its parameter is annotated with (through jsonargparse, imported only when a value
is converted), or guessed by :func:`_coerce` where there is no annotation.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from typing import Any


def _coerce(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(_coerce(t) for t in text.split(",") if t)
    return text


def parse_options(
    pairs: Sequence[str], target: Callable[..., Any], what: str, skip: Sequence[str] = ()
) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into keyword arguments of ``target``.

    Each value is converted to the type its parameter is annotated with (typed by
    jsonargparse: ``n_components=10`` an int, ``hidden=256,128`` or ``hidden=[256, 128]``
    a tuple, ``name=none`` the string "none" for a ``str`` and ``None`` only where the
    annotation admits it as ``null``); unannotated parameters get the best guess
    (bool/None/int/float/comma tuple). Unknown keys and values of the wrong type raise
    ``ValueError`` naming the option and the accepted keys or type.
    """
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise TypeError(
            f"pairs must be a list of KEY=VALUE strings, got {type(pairs).__name__} {pairs!r}"
        )
    params = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", *skip)
    ]
    hints = _annotations(target)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{what} option {pair!r} must look like KEY=VALUE")
        if key not in params:
            raise ValueError(
                f"unknown {what} option {key!r}; accepted: {', '.join(params) or 'none'}"
            )
        out[key] = _typed_value(value, hints.get(key), f"{what} option {key}")
    return out


def _annotations(target: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hints of ``target``'s parameters (``{}`` where they cannot be
    resolved)."""
    import typing

    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: no hints, best guess
        return {}


def _is_sequence(annotation: Any) -> bool:
    import collections.abc
    import typing

    origin = typing.get_origin(annotation)
    if origin in (tuple, list, collections.abc.Sequence):
        return True
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if str in members:  # "a,b" is then a string, not a list written with commas
        return False
    return any(_is_sequence(a) for a in members)


def _typed_value(text: str, annotation: Any, label: str) -> Any:
    """``text`` converted to the constructor parameter's annotated type with jsonargparse
    (the library behind LightningCLI): JSON syntax quotes and nests (``'"none"'``,
    ``[256, 128]``), a sequence may also be written ``256,128``, and a value that does
    not fit the type is a ``ValueError`` naming the option and the type. Unannotated
    parameters keep the best guess of :func:`_coerce`."""
    if annotation is None or annotation is Any:
        return _coerce(text)
    from jsonargparse import ArgumentParser

    value = text.strip()
    if _is_sequence(annotation) and value and value[0] not in "[(" and value != "null":
        value = f"[{value}]"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=annotation)
    try:
        return parser.parse_args(["--value", value]).value
    except (argparse.ArgumentError, ValueError, TypeError):
        name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        raise ValueError(f"{label}={text!r} is not a valid {name}") from None
