"""Moving the modules and parameters :func:`~pyrocollapse.train.fit` trains to a device."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from pyrocollapse._validation import (
    check_device,
)


def _resolve_device(device: object) -> torch.device | None:
    """``device`` checked (:func:`~pyrocollapse._validation.check_device`: a ``ValueError``
    for a device this machine lacks) and made canonical (``"cuda"`` -> ``cuda:<current>``),
    so that it compares equal to the device of the tensors moved there."""
    device = check_device("device", device)
    if device is None or device.type == "cpu":
        return device
    return torch.empty(0, device=device).device


def _modules_of(*fns: Callable) -> list[torch.nn.Module]:
    """The ``nn.Module`` objects behind ``fns``: each one that is a module itself or a
    method bound to one (``vae.model`` -> ``vae``), each listed once."""
    out: list[torch.nn.Module] = []
    for fn in fns:
        m = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(m, torch.nn.Module) and not any(m is o for o in out):
            out.append(m)
    return out


def _move_in_place(tensors: Iterable[torch.Tensor], device: torch.device) -> None:
    """Move leaf tensors to ``device`` keeping their identity (so that Pyro's param store,
    modules and the optimiser keep referring to them)."""
    with torch.no_grad():
        for t in tensors:
            if t.device == device:
                continue
            moved = t.data.to(device)
            if not torch._has_compatible_shallow_copy_type(t, moved):
                raise ValueError(
                    f"cannot move a parameter of shape {tuple(t.shape)} from {t.device} to device "
                    f"{str(device)!r} in place; create the model's parameters on {device} instead"
                )
            t.data = moved
