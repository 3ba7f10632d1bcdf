"""Cheap argument checks shared by the public API.

Each check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value, and
the message names the argument, the value received and what is accepted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, checking type and lower bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """Return ``value`` as a finite float within bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_hidden(name: str, value: object) -> tuple[int, ...]:
    """Return a tuple of positive layer widths."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value),)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of positive ints, got {type(value).__name__}")
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


def check_data(
    name: str,
    x: object,
    *,
    event_shape: tuple[int, ...] | None = None,
    floating: bool = True,
    allow_empty: bool = False,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a data tensor of shape ``(N, *event_shape)``.

    Checks that ``x`` is a tensor, of a floating dtype (or integer where ``floating`` is
    False), non-empty, and with the trailing shape ``event_shape``; and, unless
    ``finite=False`` (for hot loops: the scan reads every value), that it is finite.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (e.g. torch.float32), got {x.dtype}")
    if not floating and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype (e.g. torch.long), got {x.dtype}")
    if event_shape is not None:
        expected = len(event_shape) + 1
        if x.dim() != expected or tuple(x.shape[1:]) != tuple(event_shape):
            raise ValueError(
                f"{name} must have shape (N, {', '.join(map(str, event_shape))}), "
                f"got {tuple(x.shape)}"
            )
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one row")
    if finite and floating and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values")
    return x


def check_device(name: str, device: object) -> torch.device | None:
    """Return ``device`` as a :class:`torch.device` that exists on this machine, or ``None``.

    Accepts ``None`` (returned unchanged: the caller keeps the data's device), a string
    such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``, or a :class:`torch.device`. Raises
    ``TypeError`` for any other type and ``ValueError`` naming ``name`` for a string that
    is not a device, for the ``meta`` device (it holds no values), and for a device this
    machine does not have (``"cuda"`` without a GPU, ``"cuda:3"`` with one GPU), so that
    the mistake surfaces before any work instead of deep inside a traced program.
    """
    if device is None:
        return None
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"{name} {device!r} is not a torch device; use None (the data's device), "
                "'cpu', 'cuda' or 'cuda:<index>'"
            ) from None
    if not isinstance(device, torch.device):
        raise TypeError(
            f"{name} must be None, a str such as 'cpu' or 'cuda:0', or a torch.device; got "
            f"{type(device).__name__} {device!r}"
        )
    if device.type == "meta":
        raise ValueError(f"{name} 'meta' holds no values; use 'cpu' or an accelerator")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"{name} {str(device)!r} is not available: torch finds no CUDA device on this "
                "machine (torch.cuda.is_available() is False); use 'cpu' or None"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{name} {str(device)!r} is not available: this machine has {count} CUDA "
                f"device(s), 'cuda:0' to 'cuda:{count - 1}'"
            )
        return device
    if device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise ValueError(
                f"{name} {str(device)!r} is not available on this machine ({reason}); use "
                "'cpu' or None"
            ) from None
    return device


def module_device(obj: object) -> torch.device | None:
    """The device of the tensors of a module (or of the module a bound method belongs to).

    ``obj`` may be an :class:`torch.nn.Module` or a bound method of one (``vae.model``);
    the device of its first parameter or buffer is returned, or ``None`` when ``obj`` is
    neither or holds no tensors (a plain function, a parameter-free module).
    """
    module = getattr(obj, "__self__", obj)
    if not isinstance(module, torch.nn.Module):
        return None
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


def program_modules(*fns: object) -> list[torch.nn.Module]:
    """The ``nn.Module`` s behind Pyro programs, each listed once: a program that is a
    module, the module a bound method belongs to (``vae.model``), one wrapped by
    ``functools.partial``, and modules a function's closure holds."""
    out: list[torch.nn.Module] = []
    for fn in fns:
        fn = getattr(fn, "func", fn)  # functools.partial
        candidates = [fn, getattr(fn, "__self__", None)]
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                candidates.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        for m in candidates:
            if isinstance(m, torch.nn.Module) and not any(m is o for o in out):
                out.append(m)
    return out


def program_dtype(*fns: object) -> torch.dtype:
    """The floating dtype the programs compute in, which their data should take.

    The dtype of the first floating parameter (else buffer) of the modules behind
    ``fns`` (see :func:`program_modules`); for programs without modules, that of the
    first floating parameter in Pyro's param store (hand-written ``pyro.param`` ones, once
    created); else ``torch.get_default_dtype()``.
    """
    modules = program_modules(*fns)
    for tensors in ([p for m in modules for p in m.parameters()],
                    [b for m in modules for b in m.buffers()]):  # fmt: skip
        for t in tensors:
            if t.is_floating_point():
                return t.dtype
    import pyro

    for _, value in pyro.get_param_store().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_type(name: str, value: object, types: type | tuple[type, ...], expected: str) -> object:
    """Return ``value`` if it is an instance of ``types``; ``expected`` reads e.g. ``"a History"``."""
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def check_columns(name: str, table: object, columns: Iterable[str]) -> object:
    """Return ``table`` if it is a pandas DataFrame holding every one of ``columns``."""
    import pandas as pd

    check_type(name, table, pd.DataFrame, "a pandas DataFrame")
    missing = [c for c in columns if c not in table.columns]  # type: ignore[attr-defined]
    if missing:
        raise ValueError(
            f"{name} lacks the column(s) {', '.join(map(repr, missing))}; it has "
            f"{', '.join(map(repr, table.columns)) or 'none'}"  # type: ignore[attr-defined]
        )
    return table
