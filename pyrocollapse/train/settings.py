"""The arguments of :func:`~pyrocollapse.train.fit`, checked in one place:
:class:`_Settings`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyrocollapse._validation import check_bool, check_choice, check_float, check_int
from pyrocollapse.tracking import check_tracker
from pyrocollapse.train.callback import Callback
from pyrocollapse.train.step import _InnerLoop


@dataclass
class _Settings:
    """``fit``'s arguments after checking (see :func:`~pyrocollapse.train.fit` for each);
    ``inner`` is aggressive mode's encoder loop built from ``aggressive_max_inner`` and
    ``aggressive_window``."""

    epochs: int
    batch_size: int | None
    seed: int | None
    progress: bool
    validate: bool
    monitor: Any
    monitor_size: int | None
    clip_norm: float | None
    clip_value: float | None
    aggressive: bool
    resume: bool
    inner: _InnerLoop
    callbacks: list[Callback]
    tracker: Any
    checkpoint_every: int
    scheduler_step: str


def _check_arguments(
    model: Callable,
    guide: Callable,
    *,
    loss: Any,
    scheduler: object,
    scheduler_step: object,
    epochs: object,
    batch_size: object,
    seed: object,
    progress: object,
    callbacks: object,
    monitor: object,
    monitor_size: object,
    clip_norm: object,
    clip_value: object,
    aggressive: object,
    aggressive_max_inner: object,
    aggressive_window: object,
    validate: object,
    checkpoint_every: object,
    resume: object,
    tracker: object,
) -> _Settings:
    """Check ``fit``'s arguments in a fixed order (the first bad one raises a
    ``TypeError``/``ValueError`` naming it and what is accepted) and return them checked."""
    for label, program in (("model", model), ("guide", guide)):
        if not callable(program):
            raise TypeError(
                f"{label} must be a callable Pyro program (e.g. vae.{label}), got "
                f"{type(program).__name__}"
            )
    epochs = check_int("epochs", epochs, minimum=1)
    progress = check_bool("progress", progress)
    validate = check_bool("validate", validate)
    if seed is not None:
        seed = check_int("seed", seed, minimum=0)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    if scheduler is not None and not callable(scheduler):
        raise TypeError(
            "scheduler must be None or a callable optimizer -> torch.optim.lr_scheduler."
            f"LRScheduler, got {type(scheduler).__name__}"
        )
    monitor = _check_monitor(monitor)
    if monitor_size is not None:
        monitor_size = check_int("monitor_size", monitor_size, minimum=2)
    if clip_norm is not None:
        clip_norm = check_float("clip_norm", clip_norm, minimum=0.0, strict_minimum=True)
    if clip_value is not None:
        clip_value = check_float("clip_value", clip_value, minimum=0.0, strict_minimum=True)
    for name, flag in (("aggressive", aggressive), ("resume", resume)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    inner = _InnerLoop(
        check_int("aggressive_max_inner", aggressive_max_inner, minimum=1),
        check_int("aggressive_window", aggressive_window, minimum=1),
    )
    if isinstance(loss, type):
        raise TypeError(
            f"loss must be a pyro.infer.ELBO instance, got the class {loss.__name__}; create "
            f"one, e.g. loss={loss.__name__}()"
        )
    if not hasattr(loss, "differentiable_loss"):
        raise TypeError(f"loss must be a pyro.infer.ELBO, got {type(loss).__name__}")
    return _Settings(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        validate=validate,
        monitor=monitor,
        monitor_size=monitor_size,
        clip_norm=clip_norm,
        clip_value=clip_value,
        aggressive=aggressive,
        resume=resume,
        inner=inner,
        callbacks=_check_callbacks(callbacks),
        tracker=check_tracker(tracker),
        checkpoint_every=check_int("checkpoint_every", checkpoint_every, minimum=1),
        scheduler_step=check_choice("scheduler_step", scheduler_step, ("epoch", "step")),
    )


def _check_callbacks(callbacks: object) -> list[Callback]:
    """``callbacks`` as a list of :class:`Callback` (``None``: none)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        raise TypeError(
            f"callbacks must be an iterable of Callback instances, got a single "
            f"{type(callbacks).__name__}; pass callbacks=[{type(callbacks).__name__}(...)]"
        )
    if isinstance(callbacks, (str, bytes, dict)) or not isinstance(callbacks, Iterable):
        raise TypeError(
            "callbacks must be an iterable of Callback instances (e.g. a list) or None, got "
            f"{type(callbacks).__name__}"
        )
    out = list(callbacks)
    for cb in out:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    return out


def _check_monitor(monitor: object) -> Any:
    """``monitor``: ``"default"``, ``None`` or a list/tuple of site names (str)."""
    if monitor is None or (isinstance(monitor, str) and monitor == "default"):
        return monitor
    if isinstance(monitor, str):
        raise ValueError(
            f"monitor must be 'default', None or a list of latent site names; got the str "
            f"{monitor!r} (for that one site pass monitor=[{monitor!r}])"
        )
    if not isinstance(monitor, (list, tuple)):
        raise TypeError(
            "monitor must be 'default', None or a list of latent site names, got "
            f"{type(monitor).__name__}"
        )
    bad = [s for s in monitor if not isinstance(s, str)]
    if bad:
        raise TypeError(
            f"monitor must list latent site names as str, got {type(bad[0]).__name__} {bad[0]!r}"
        )
    return list(monitor)
