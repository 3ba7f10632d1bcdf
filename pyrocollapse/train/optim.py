"""Parameters and optimiser: :func:`collect_params`, :func:`make_optimizer` and
:func:`make_optimization`."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)


def collect_params(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Find the trainable tensors that ``guide`` and ``model`` use.

    Traces the guide and the model replayed on it once, on ``*args, **kwargs``.

    Returns
    -------
    (guide_params, model_params) : tuple[list[Tensor], list[Tensor]]
        Unconstrained leaf tensors, each listed once (a tensor used by both is listed
        with the guide).
    """
    guide_named, model_named = _collect_named_params(model, guide, *args, **kwargs)
    return [p for _, p in guide_named], [p for _, p in model_named]


def _collect_named_params(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """:func:`collect_params` with each tensor's param site name (its Pyro param-store
    name, e.g. ``"encoder$$$fc.weight"`` for ``pyro.module("encoder", net)``)."""
    for name, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise TypeError(f"{name} must be a callable Pyro program, got {type(fn).__name__}")
    with poutine.block():
        guide_tr = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
        guide_full = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(
            poutine.replay(model, trace=guide_full), param_only=True
        ).get_trace(*args, **kwargs)
    seen: set[int] = set()

    def leaves(trace: Any) -> list[tuple[str, torch.Tensor]]:
        out = []
        for name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            v = site["value"]
            u = v.unconstrained() if hasattr(v, "unconstrained") else v
            if isinstance(u, torch.Tensor) and u.requires_grad and id(u) not in seen:
                seen.add(id(u))
                out.append((str(name), u))
        return out

    return leaves(guide_tr), leaves(model_tr)


#: What ``optim`` may be (named in every refusal).
_OPTIM_KINDS = (
    "None (Adam, lr 1e-3), a pyro.optim optimiser (pyro.optim.Adam({'lr': 1e-3}), "
    "ClippedAdam, SGD, ..., with a dict of arguments or a per-parameter callable), a "
    "pyro.optim.PyroLRScheduler (pyro.optim.ExponentialLR({'optimizer': torch.optim.Adam, "
    "'optim_args': {'lr': 1e-2}, 'gamma': 0.9}), StepLR, OneCycleLR, ReduceLROnPlateau, ...) "
    "or a callable params -> torch.optim.Optimizer (e.g. functools.partial(torch.optim.Adam, "
    "lr=1e-3))"
)

_SCHEDULER_TYPES: tuple[type, ...] = (
    torch.optim.lr_scheduler.LRScheduler,
    torch.optim.lr_scheduler.ReduceLROnPlateau,
)


def make_optimizer(
    optim: Any,
    params: Sequence[torch.Tensor],
    names: Sequence[str] | None = None,
) -> torch.optim.Optimizer:
    """Build the torch optimiser that :func:`fit` steps (without a scheduler).

    Parameters
    ----------
    optim : None, pyro.optim.PyroOptim or callable
        See :func:`fit`. ``None`` gives Adam with lr 1e-3, fused (one kernel for all
        parameters) where torch supports it for the parameters' devices and dtypes, else
        the default implementation. A ``pyro.optim.PyroLRScheduler`` gives its optimiser
        (use :func:`make_optimization` to get the scheduler too).
    params : sequence of torch.Tensor
        The parameters, in order.
    names : sequence of str or None
        Their Pyro param-store names, needed by a per-parameter callable of arguments.

    Returns
    -------
    torch.optim.Optimizer
    """
    return make_optimization(optim, params, names)[0]


def make_optimization(
    optim: Any,
    params: Sequence[torch.Tensor],
    names: Sequence[str] | None = None,
    *,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> tuple[torch.optim.Optimizer, Any, list[tuple[torch.Tensor, dict[str, float]]]]:
    """The optimiser, learning-rate scheduler and per-parameter clipping :func:`fit` uses.

    Never substitutes: every ``optim`` that is not understood is refused with a
    ``TypeError`` or ``ValueError`` naming what is accepted.

    Parameters
    ----------
    optim, scheduler :
        As for :func:`fit`.
    params : sequence of torch.Tensor
        The parameters, in order.
    names : sequence of str or None
        Their Pyro param-store names (as the param sites name them), for a
        per-parameter callable of arguments, which Pyro calls with ``param_name`` (one
        argument, ``"$$$"`` written ``"."``) or ``(module_name, param_name)`` (two).

    Returns
    -------
    (optimizer, scheduler, clip) : tuple
        One ``torch.optim.Optimizer`` over every parameter (one parameter group per
        parameter with a per-parameter callable); the torch scheduler or ``None``; and
        ``(param, {"clip_norm": ..., "clip_value": ...})`` pairs from a ``PyroOptim``'s
        ``clip_args``, which Pyro applies to each parameter separately before its step.
    """
    params = list(params)
    if not params:
        raise ValueError("model and guide have no trainable parameters (no param sites found)")
    if names is not None and len(names) != len(params):
        raise ValueError(f"names has {len(names)} entries for {len(params)} parameters")
    if scheduler is not None and not callable(scheduler):
        raise TypeError(
            "scheduler must be None or a callable optimizer -> torch.optim.lr_scheduler."
            f"LRScheduler (e.g. functools.partial(torch.optim.lr_scheduler.StepLR, "
            f"step_size=10)); got {type(scheduler).__name__}"
        )
    sched: Any = None
    clip: list[tuple[torch.Tensor, dict[str, float]]] = []
    if optim is None:
        opt = torch.optim.Adam(params, lr=1e-3, fused=_fused_supported(params) or None)
    elif isinstance(optim, pyro.optim.PyroOptim):
        if isinstance(optim, pyro.optim.HorovodOptimizer):
            raise TypeError(
                "optim must not be a pyro.optim.HorovodOptimizer: fit trains in one process; "
                "for several processes use pyrocollapse.lightning. optim may be " + _OPTIM_KINDS
            )
        kind = type(optim).__name__
        opt = _pyro_optimizer(optim, params, names, kind)
        clip = _pyro_clip(optim, params, names)
        if isinstance(optim, pyro.optim.PyroLRScheduler):
            if scheduler is not None:
                raise ValueError(
                    "optim is a pyro.optim.PyroLRScheduler, which brings its own scheduler, "
                    "and scheduler is given too; pass one of them (e.g. optim=pyro.optim."
                    "Adam({...}) with scheduler=..., or the PyroLRScheduler alone)"
                )
            ctor = optim.pt_scheduler_constructor
            try:
                sched = ctor(opt, **optim.kwargs)
            except (TypeError, ValueError, KeyError) as e:
                raise type(e)(
                    f"optim ({kind} over {getattr(ctor, '__name__', ctor)}) could not build its "
                    f"scheduler from the arguments {sorted(optim.kwargs)}: {e}"
                ) from e
    elif isinstance(optim, torch.optim.Optimizer):
        raise TypeError(
            "optim must be a factory, not an optimizer instance: pass e.g. "
            "functools.partial(torch.optim.Adam, lr=1e-3) or pyro.optim.Adam({'lr': 1e-3})"
        )
    elif isinstance(optim, _SCHEDULER_TYPES):
        raise TypeError(
            "optim must not be a learning-rate scheduler instance: pass the optimiser as optim "
            "and the scheduler as a factory, scheduler=lambda opt: torch.optim.lr_scheduler."
            "StepLR(opt, step_size=10), or a pyro.optim.PyroLRScheduler as optim"
        )
    elif callable(optim):
        opt = optim(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"optim(params) must return a torch.optim.Optimizer, got {type(opt).__name__}"
            )
    else:
        raise TypeError(
            "optim must be None, a pyro.optim.PyroOptim or a callable params -> "
            f"torch.optim.Optimizer; got {type(optim).__name__}. Accepted: {_OPTIM_KINDS}"
        )
    if scheduler is not None:
        sched = scheduler(opt)
        if not isinstance(sched, _SCHEDULER_TYPES):
            raise TypeError(
                "scheduler(optimizer) must return a torch.optim.lr_scheduler.LRScheduler or "
                f"ReduceLROnPlateau, got {type(sched).__name__}"
            )
        if sched.optimizer is not opt:
            raise ValueError(
                "scheduler(optimizer) must schedule the optimizer it is given, not another one"
            )
    return opt, sched, clip


def _pyro_args(
    optim: Any, args: Any, names: Sequence[str] | None, params: Sequence[torch.Tensor], kind: str
) -> list[dict[str, Any]]:
    """Per parameter, the arguments of a ``PyroOptim``'s ``args`` (dict or callable)."""
    if isinstance(args, dict):
        return [args] * len(params)
    if not callable(args):
        raise TypeError(
            f"optim ({kind}) arguments must be a dict or a per-parameter callable, got "
            f"{type(args).__name__}"
        )
    if names is None:
        raise ValueError(
            f"optim ({kind}) has a per-parameter callable of arguments, which Pyro calls with "
            "each parameter's name, but no names are available here; fit finds them from "
            "the param sites (pass optim to fit), or use a dict of arguments"
        )
    argc = len(inspect.signature(args).parameters)
    out = []
    for name in names:
        value = (
            args(normalize_param_name(name))
            if argc == 1
            else args(module_from_param_with_module_name(name), user_param_name(name))
        )
        if not isinstance(value, dict):
            raise TypeError(
                f"optim ({kind}): the per-parameter callable must return a dict of arguments, "
                f"got {type(value).__name__} for parameter {name!r}"
            )
        out.append(value)
    return out


def _pyro_optimizer(
    optim: Any, params: Sequence[torch.Tensor], names: Sequence[str] | None, kind: str
) -> torch.optim.Optimizer:
    """The torch optimiser of a ``PyroOptim``: one over all parameters with its dict of
    arguments, or one parameter group per parameter with a per-parameter callable."""
    ctor = optim.pt_optim_constructor
    args = optim.pt_optim_args
    per_param = _pyro_args(optim, args, names, params, kind)
    try:
        if isinstance(args, dict):
            return ctor(params, **args)
        return ctor([{"params": [p], **a} for p, a in zip(params, per_param, strict=True)])
    except (TypeError, ValueError, KeyError) as e:
        raise type(e)(
            f"optim ({kind} over {getattr(ctor, '__name__', ctor)}) could not build its "
            f"optimiser: {e}"
        ) from e


def _pyro_clip(
    optim: Any, params: Sequence[torch.Tensor], names: Sequence[str] | None
) -> list[tuple[torch.Tensor, dict[str, float]]]:
    """A ``PyroOptim``'s ``clip_args``, per parameter (only those with something to do)."""
    clip_args = getattr(optim, "pt_clip_args", None)
    if not clip_args:
        return []
    per_param = _pyro_args(optim, clip_args, names, params, type(optim).__name__ + " clip_args")
    out = []
    for p, a in zip(params, per_param, strict=True):
        unknown = set(a) - {"clip_norm", "clip_value"}
        if unknown:
            raise ValueError(
                f"optim's clip_args accept clip_norm and clip_value, got {sorted(unknown)}"
            )
        kept = {k: float(v) for k, v in a.items() if v is not None}
        if kept:
            out.append((p, kept))
    return out


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group."""
    lr = optimizer.param_groups[0].get("lr", math.nan)
    return float(lr)


def _fused_supported(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch has fused Adam kernels for every parameter's device and dtype."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: fused kernels on CUDA only
        devices = {"cuda"}
    return all(
        p.is_floating_point() and not p.is_sparse and p.device.type in devices for p in params
    )


def _step_scheduler(scheduler: Any, loss: float) -> None:
    """One step of a torch scheduler; ``ReduceLROnPlateau`` gets the loss."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(loss)
    else:
        scheduler.step()
