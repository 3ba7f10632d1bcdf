"""Training: :func:`fit` a Pyro model/guide pair with any ELBO, recording a :class:`History`.

``fit`` runs the ELBO's ``differentiable_loss`` under one ``torch.optim`` optimiser over
the parameters the model and guide use (found from their ``param`` sites, so plain
``pyro.param`` statements, ``pyro.module`` and ``PyroModule`` parameters all train).

With ``aggressive=True`` (or when a callback such as
:class:`pyrocollapse.callbacks.AggressiveOnCollapse` sets ``state.aggressive``) it trains
the inference network aggressively, as He et al. (2019) propose against posterior
collapse: before each decoder update the encoder alone is updated until its loss stops
improving, and the mode ends once the mutual information I_q(x; z) stops rising.

``fit`` also runs on any torch device (``device="cuda"``), streams data from a
``torch.utils.data.DataLoader``, writes resumable checkpoints (``checkpoint_dir``,
``resume=True``: a resumed run repeats the uninterrupted one bit for bit) and stops with
a :class:`NonFiniteLossError` naming the epoch, step and ELBO term when a loss or a
gradient stops being finite.

While it trains, ``fit`` shows progress bars over epochs and over the steps of each
epoch on a terminal, and logs periodic lines (the ``"pyrocollapse.train"`` logger)
elsewhere; ``tracker=`` sends every epoch's values to TensorBoard, MLflow or a tracker
of your own (:mod:`pyrocollapse.tracking`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)
from pyro.poutine.messenger import Messenger

from pyrocollapse._validation import (
    check_bool,
    check_choice,
    check_data,
    check_device,
    check_float,
    check_int,
    program_dtype,
)
from pyrocollapse.program_data import (
    ProgramArgs,
    ProgramData,
    as_program_args,
    as_program_data,
    is_batch_source,
)
from pyrocollapse.tracking import check_tracker, epoch_scalars

__all__ = [
    "CHECKPOINT_NAME",
    "Callback",
    "EpochRecord",
    "History",
    "NonFiniteLossError",
    "PrintProgress",
    "TrainState",
    "collect_params",
    "fit",
]

_log = logging.getLogger("pyrocollapse")

#: File name of the checkpoint ``fit`` writes into ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
#: Format tag stored in every checkpoint's payload (checked on resume).
_CHECKPOINT_FORMAT = "pyrocollapse.fit/2"
#: The payload format of pyrocollapse up to 0.1, written without a checksum (still read).
_LEGACY_FORMAT = "pyrocollapse.fit/1"
#: First line of a checkpoint file; the second is ``sha256 <hex digest>`` of the rest.
_CHECKPOINT_MAGIC = b"PYROCOLLAPSE-FIT-CHECKPOINT 2\n"


# --------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------
@dataclass
class EpochRecord:
    """One epoch of training.

    Attributes
    ----------
    epoch : int
        1-based epoch number.
    values : dict[str, float]
        Per-data-point averages over the epoch of every ELBO component (``elbo``,
        ``reconstruction``, ``kl``, ``kl/<site>``, variant extras such as ``mi_batch`` or
        ``iwae``), plus the objective's weights at the end of the epoch (``kl_weight``
        and variant weights such as ``mi_weight``), ``time`` (seconds since training
        began), ``epoch_time``, ``aggressive`` (1.0 when the epoch trained the encoder
        aggressively, else 0.0) and ``inner_steps`` (encoder-only steps per decoder
        step, averaged over the epoch), ``lr`` (the learning rate of the optimiser's
        first parameter group in the epoch's last step); monitoring metrics (``active_units/<site>``,
        ``mi/<site>``) when on. Callbacks may add notes (e.g. ``rollback_to_epoch``).
    kl_per_dim : dict[str, numpy.ndarray]
        Per latent site, the epoch-average KL per dimension (nats per data point), shape
        ``(latent_dim,)``.
    """

    epoch: int
    values: dict[str, float]
    kl_per_dim: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.epoch = check_int("epoch", self.epoch, minimum=1)
        for name in ("values", "kl_per_dim"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise TypeError(
                    f"{name} must be a dict keyed by column or site name, got "
                    f"{type(value).__name__}"
                )


class History:
    """Per-epoch training record returned by :func:`fit`."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def append(self, record: EpochRecord) -> None:
        """Add one epoch's record."""
        if not isinstance(record, EpochRecord):
            raise TypeError(f"record must be an EpochRecord, got {type(record).__name__}")
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> EpochRecord:
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    def column(self, name: str) -> np.ndarray:
        """Values of one column over epochs, shape ``(epochs,)`` (NaN where missing)."""
        return np.array([r.values.get(name, math.nan) for r in self.records], dtype=float)

    def kl_matrix(self, site: str = "z") -> np.ndarray:
        """KL per dimension over training, shape ``(latent_dim, epochs)`` (nats per point)."""
        cols = [r.kl_per_dim[site] for r in self.records if site in r.kl_per_dim]
        if not cols:
            raise ValueError(f"no per-dimension KL recorded for site {site!r}")
        return np.stack(cols, axis=1)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per epoch; per-dimension KL as ``kl/<site>/<d>``."""
        import pandas as pd

        rows = []
        for r in self.records:
            row: dict[str, Any] = {"epoch": r.epoch, **r.values}
            for site, arr in r.kl_per_dim.items():
                for d, v in enumerate(arr):
                    row[f"kl/{site}/{d}"] = float(v)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_csv(self, path: str) -> None:
        """Write :meth:`to_dataframe` as CSV (atomically)."""
        from pyrocollapse._io import atomic_write_text

        atomic_write_text(path, self.to_dataframe().to_csv(index=False))

    @classmethod
    def from_dataframe(cls, df: Any) -> History:
        """Rebuild a History from :meth:`to_dataframe` output (e.g. a saved CSV)."""
        if "epoch" not in getattr(df, "columns", ()):
            raise ValueError(
                "df needs an 'epoch' column, as History.to_dataframe writes; got columns "
                f"{', '.join(map(str, getattr(df, 'columns', []))) or 'none'}"
            )
        hist = cls()
        for _, row in df.iterrows():
            values: dict[str, float] = {}
            per_dim: dict[str, dict[int, float]] = {}
            for k, v in row.items():
                if k == "epoch":
                    continue
                parts = str(k).split("/")
                if len(parts) == 3 and parts[0] == "kl" and parts[2].isdigit():
                    per_dim.setdefault(parts[1], {})[int(parts[2])] = float(v)
                elif not (isinstance(v, float) and math.isnan(v)):
                    values[str(k)] = float(v)
            kl = {s: np.array([d[i] for i in sorted(d)]) for s, d in per_dim.items()}
            hist.append(EpochRecord(int(row["epoch"]), values, kl))
        return hist


# --------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------
class Callback:
    """Hooks called by :func:`fit`. Return ``True`` from :meth:`on_epoch_end` to stop."""

    def on_train_begin(self, state: TrainState) -> None:
        """Before the first epoch."""

    def on_epoch_end(self, state: TrainState, record: EpochRecord) -> bool | None:
        """After each epoch; ``record`` is already in ``state.history``."""
        return None

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch (also after an early stop)."""


class PrintProgress(Callback):
    """Print one line every ``every`` epochs (for logs where no progress bar is shown).

    The lines go to ``file`` (default: standard output), as the caller asked for them;
    ``fit(progress=True)`` itself logs similar lines through the ``"pyrocollapse.train"``
    logger when its output is not a terminal.
    """

    def __init__(self, every: int = 1, file: Any = None) -> None:
        self.every = check_int("every", every, minimum=1)
        self.file = file

    def on_epoch_end(self, state: TrainState, record: EpochRecord) -> None:
        if record.epoch % self.every == 0 or record.epoch == state.epochs:
            print(_epoch_line(record, state.epochs), file=self.file or sys.stdout, flush=True)


def _epoch_line(record: EpochRecord, epochs: int) -> str:
    """One line summing up an epoch: ``epoch   3/60  ELBO ...  recon ...  KL ...  beta
    ...`` with the monitored ``active_units/z`` and ``mi/z``, aggressive mode's encoder
    steps and the time since training began (values missing from the record are left
    out)."""
    v = record.values
    parts = [f"epoch {record.epoch:>4}/{epochs}"]
    for key, label in (("elbo", "ELBO"), ("reconstruction", "recon"), ("kl", "KL")):
        if key in v:
            parts.append(f"{label} {v[key]:.3f}")
    if "kl_weight" in v:
        parts.append(f"beta {v['kl_weight']:.3f}")
    parts += [f"{k} {v[k]:.2f}" for k in ("active_units/z", "mi/z") if k in v]
    if v.get("aggressive"):
        parts.append(f"[aggressive: {v.get('inner_steps', 0.0):.0f} encoder steps per step]")
    if "time" in v:
        parts.append(f"({v['time']:.1f}s)")
    return "  ".join(parts)


#: Seconds between the plain progress lines ``fit(progress=True)`` logs when its output
#: is not a terminal (at most one line per interval within an epoch).
PROGRESS_INTERVAL = 30.0
#: How often (seconds) a terminal's step bar is redrawn during aggressive mode's
#: encoder-only steps, which do not move the bar.
_BAR_REFRESH = 0.5
_progress_log = logging.getLogger("pyrocollapse.train")


class _Progress:
    """What ``fit`` shows while it trains.

    * ``"bar"`` (``progress=True`` with output on a terminal, as tqdm decides): a bar
      over epochs and, below it, one over the steps of the current epoch, whose
      postfix counts aggressive mode's encoder-only steps;
    * ``"log"`` (``progress=True`` elsewhere: a log file, a pipe): INFO records of the
      ``"pyrocollapse.train"`` logger: one when training starts; within an epoch, at
      most one every :data:`PROGRESS_INTERVAL` seconds, checked after every step
      (encoder-only ones included), saying where the epoch is; and the
      :func:`_epoch_line` of every tenth of the epochs, of the last one, and of any
      epoch that ends :data:`PROGRESS_INTERVAL` seconds or more after the previous line;
    * ``"off"`` (``progress=False``): nothing.
    """

    def __init__(self, enabled: bool, epochs: int, first_epoch: int, steps: int | None) -> None:
        self.epochs, self.steps = epochs, steps
        self.mode = "off"
        self.bar: Any = None
        self.step_bar: Any = None
        self.epoch = first_epoch
        self.step = 0  # outer steps done in the current epoch
        self.inner = 0  # encoder-only steps done in the current epoch
        self.epoch_start = self.last_line = self.last_refresh = time.monotonic()
        self.every = max(1, epochs // 10)
        if not enabled:
            return
        from tqdm.auto import tqdm

        bar = tqdm(
            total=epochs,
            initial=first_epoch - 1,
            desc="training",
            unit="epoch",
            disable=None,  # tqdm's own test: on only when its output is a terminal
            leave=True,
        )
        if bar.disable:
            bar.close()
            self.mode = "log"
            done = f", resuming after epoch {first_epoch - 1}" if first_epoch > 1 else ""
            each = f" of {steps} steps" if steps is not None else ""
            _progress_log.info("training %d epochs%s%s", epochs, each, done)
            return
        self.mode, self.bar = "bar", bar
        self.step_bar = tqdm(total=steps, desc=f"epoch {first_epoch}", unit="step", leave=False)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.step, self.inner = epoch, 0, 0
        self.epoch_start = time.monotonic()
        if self.step_bar is not None:
            self.step_bar.set_description_str(f"epoch {epoch}", refresh=False)
            self.step_bar.set_postfix_str("", refresh=False)
            self.step_bar.reset(total=self.steps)  # redraws

    def outer_step(self) -> None:
        """After each decoder (or joint) step."""
        if self.mode == "off":
            return
        self.step += 1
        if self.step_bar is not None:
            self.step_bar.update(1)
        else:
            self._maybe_line()

    def inner_step(self) -> None:
        """After each encoder-only step of aggressive mode."""
        if self.mode == "off":
            return
        self.inner += 1
        if self.step_bar is not None:
            now = time.monotonic()
            if now - self.last_refresh >= _BAR_REFRESH:
                self.last_refresh = now
                self.step_bar.set_postfix_str(f"{self.inner} encoder steps", refresh=False)
                self.step_bar.refresh()
        else:
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        if now - self.last_line < PROGRESS_INTERVAL:
            return
        self.last_line = now
        into = now - self.epoch_start
        if self.steps:
            where = f"step {self.step}/{self.steps} ({100 * self.step / self.steps:.0f}%)"
        else:
            where = f"step {self.step}"
        text = f"epoch {self.epoch}/{self.epochs}: {where}, {into:.0f}s into the epoch"
        if self.steps and self.step:
            text += f", about {into / self.step * (self.steps - self.step):.0f}s left"
        if self.inner:
            text += f"; aggressive mode: {self.inner} encoder steps so far this epoch"
        _progress_log.info("%s", text)

    def end_epoch(self, record: EpochRecord, last: bool) -> None:
        """After the epoch's callbacks; ``last``: no epoch follows."""
        if self.bar is not None:
            self.bar.update(1)
            v = record.values
            self.bar.set_postfix({k: f"{v[k]:.2f}" for k in ("elbo", "kl") if k in v})
        elif self.mode == "log":
            now = time.monotonic()
            due = record.epoch % self.every == 0 or now - self.last_line >= PROGRESS_INTERVAL
            if last or due:
                self.last_line = now
                _progress_log.info("%s", _epoch_line(record, self.epochs))

    def close(self) -> None:
        for bar in (self.step_bar, self.bar):
            if bar is not None:
                bar.close()
        self.step_bar = self.bar = None


@dataclass
class TrainState:
    """What callbacks see and may change: the model/guide, loss, optimiser, history and
    settings of the running :func:`fit`.

    Attributes
    ----------
    model, guide : callable
        The Pyro programs being trained.
    loss : pyro.infer.ELBO
        The objective.
    optimizer : torch.optim.Optimizer
        One optimiser over ``guide_params + model_params``.
    history : History
        Records so far.
    epochs : int
        Epochs requested (the total, counting epochs run before a resume).
    epoch : int
        Current epoch (1-based).
    step : int
        Decoder (outer) optimisation steps taken; the objective's schedule advances with it.
    aggressive : bool
        Whether the next epoch trains the encoder aggressively (He et al. 2019). ``fit``
        clears it when the mutual information stops rising; callbacks may set it.
    inner_steps : int
        Encoder-only steps taken in aggressive mode so far.
    previous_mi : float or None
        I_q(x; z) measured at the end of the previous epoch (summed over monitored
        sites), the reference aggressive mode compares with.
    guide_params, model_params : list[torch.Tensor]
        The encoder (guide) and decoder (model) parameters, as :func:`collect_params`
        finds them.
    validate : bool
        Run Pyro's validation on every step (else on the first step only).
    extras : dict
        Free space for callbacks.
    device : torch.device or None
        The device ``fit`` moved parameters and batches to (``None``: nothing moved).
    batch : int
        1-based index of the current minibatch within the epoch.
    checkpoint : str or None
        Path of the last checkpoint written (or resumed from) in this run.
    scheduler : torch.optim.lr_scheduler.LRScheduler, ReduceLROnPlateau or None
        The learning-rate scheduler of ``optimizer`` (from a ``pyro.optim.PyroLRScheduler``
        or ``fit``'s ``scheduler``), or ``None``.
    """

    model: Callable
    guide: Callable
    loss: Any
    optimizer: torch.optim.Optimizer
    history: History
    epochs: int
    epoch: int = 0
    step: int = 0
    aggressive: bool = False
    inner_steps: int = 0
    previous_mi: float | None = None
    guide_params: list[torch.Tensor] = field(default_factory=list)
    model_params: list[torch.Tensor] = field(default_factory=list)
    validate: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    batch: int = 0
    checkpoint: str | None = None
    scheduler: Any = None
    # set once Pyro's validation has run on a step of this fit call
    _validated: bool = field(default=False, init=False, repr=False)
    # per-parameter clipping of a PyroOptim's clip_args: (param, {"clip_norm": ...})
    _param_clip: list[tuple[torch.Tensor, dict[str, float]]] = field(
        default_factory=list, init=False, repr=False
    )
    # "epoch" or "step": when the scheduler steps
    _scheduler_step: str = field(default="epoch", init=False, repr=False)
    # for objectives that do not report num_data: the model wrapped to count data points
    _counter: Any = field(default=None, init=False, repr=False)
    _counted_model: Any = field(default=None, init=False, repr=False)
    _num_data: float = field(default=1.0, init=False, repr=False)
    # learning rate (first parameter group) of the last optimiser step
    _lr: float = field(default=math.nan, init=False, repr=False)
    # CUDA devices whose RNG state a step snapshots (to replay a failing step)
    _rng_devices: list[int] = field(default_factory=list, init=False, repr=False)


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN or infinite during :func:`fit`.

    Raised before the optimiser steps, so the parameters keep their values from before
    the failing step; a checkpoint written earlier is left intact.

    Attributes
    ----------
    epoch, step : int
        The 1-based epoch, and the 1-based decoder (outer) step that failed; an
        encoder-only step of aggressive mode counts towards the next outer step.
    kind : {"loss", "gradient"}
        Whether the loss value or (with a finite loss) its gradient was not finite.
    term : {"reconstruction", "kl", "extra"} or None
        The ELBO term found responsible, by re-evaluating the same minibatch with the
        same random draws and checking the reconstruction, KL and remaining ("extra":
        auxiliary guide sites and variant terms) parts separately; ``None`` when the
        objective does not expose its terms (a stock Pyro ELBO) or the re-evaluation did
        not reproduce the failure.
    site : str or None
        The sample site of the failing term, where one site was found.
    checkpoint : str or None
        The last good checkpoint of the run (``None`` when none was written).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int,
        kind: str,
        term: str | None,
        site: str | None,
        checkpoint: str | None,
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.kind = kind
        self.term = term
        self.site = site
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------------------
# Parameters and optimiser
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------
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


class _PlateCounter(Messenger):
    """Records how many data points a model run stands for, as a stock Pyro ELBO sees it:
    at the first observed site, the size of its outermost plate (the one entered first;
    a vectorised particle plate excluded) times the site's scale (plate subsampling and
    ``poutine.scale``). With no plate around it, 1."""

    def __init__(self) -> None:
        super().__init__()
        self.value: float | None = None

    def _postprocess_message(self, msg: dict[str, Any]) -> None:
        if self.value is not None or msg["type"] != "sample" or not msg["is_observed"]:
            return
        frames = [
            f for f in msg["cond_indep_stack"] if f.vectorized and f.name not in _PARTICLE_PLATES
        ]
        if not frames:
            self.value = 1.0
            return
        outer = max(frames, key=lambda f: -f.dim)  # the leftmost dim: entered first
        scale = msg["scale"]
        scale = float(scale.mean()) if isinstance(scale, torch.Tensor) else float(scale)
        self.value = float(outer.size) * scale


#: Names of the vectorised particle plates of Pyro's ELBOs and of pyrocollapse's.
_PARTICLE_PLATES = frozenset({"num_particles_vectorized", "_pyrocollapse_particles"})


# --------------------------------------------------------------------------------------
# Data sources: data held in memory, or a loader
# --------------------------------------------------------------------------------------
def _check_fit_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    """Data given as one tensor: floating and finite, or integer (not bool); non-empty."""
    return check_data(name, x, floating=False) if _is_int(x) else check_data(name, x)


class _MemorySource:
    """Minibatches of data held in memory (:class:`~pyrocollapse.program_data.ProgramData`:
    every batched argument cut along dim 0 by the same rows), reshuffled every epoch with
    fit's generator.

    The data stay where they are; each minibatch is moved to the device as it is used.
    """

    def __init__(self, data: ProgramData, batch_size: int, device: torch.device | None):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.n = data.n

    def first_batch(self, monitor_size: int) -> ProgramArgs:
        return self.data.head(min(self.n, self.batch_size)).to(self.device)

    def monitor(self, gen: torch.Generator, size: int) -> tuple[ProgramData, torch.Tensor]:
        idx = torch.randperm(self.n, generator=gen)[: min(self.n, size)]
        return self.data.take(idx).to(self.device), idx

    def restore_monitor(self, saved: dict[str, Any]) -> ProgramData:
        idx = saved.get("indices")
        if not isinstance(idx, torch.Tensor):
            raise ValueError(
                "the checkpoint was written by fit on a DataLoader, but data is held in memory; "
                "resume with the same kind of data"
            )
        if idx.numel() and int(idx.max()) >= self.n:
            raise ValueError(
                f"the checkpoint's monitoring subset uses row {int(idx.max())}, but data has "
                f"{self.n} rows; resume with the data the run started with"
            )
        return self.data.take(idx).to(self.device)

    def new_epoch(self) -> None:
        pass

    def steps_per_epoch(self) -> int | None:
        return -(-self.n // self.batch_size)

    def epoch(self, gen: torch.Generator) -> Iterator[ProgramArgs]:
        perm = torch.randperm(self.n, generator=gen)
        for i in range(0, self.n, self.batch_size):
            yield self.data.rows(perm[i : i + self.batch_size]).to(self.device)

    def random_batch(self, gen: torch.Generator) -> ProgramArgs:
        """Rows drawn uniformly with replacement, O(batch_size) whatever N."""
        rows = torch.randint(self.n, (min(self.n, self.batch_size),), generator=gen)
        return self.data.rows(rows).to(self.device)

    def generators(self) -> list[torch.Generator]:
        return []


class _LoaderSource:
    """Minibatches from a ``torch.utils.data.DataLoader`` or another re-iterable of
    batches (one epoch = one pass).

    A batch is a tensor ``x`` (``model(x)``), a tuple/list (``model(*batch)``) or a dict
    (``model(**batch)``); every tensor in it is moved to the device as it is used.
    """

    def __init__(
        self, loader: Iterable[Any], device: torch.device | None, dtype: torch.dtype | None = None
    ):
        self.loader, self.device, self.dtype = loader, device, dtype
        self._head: list[ProgramArgs] | None = None
        self._inner: Iterator[Any] | None = None

    def _args(self, batch: Any, i: int | None = None, *, check_values: bool = False) -> ProgramArgs:
        name = "data batch" if i is None else f"data batch {i}"
        if not isinstance(batch, (torch.Tensor, np.ndarray, tuple, list, dict)):
            raise TypeError(
                "data (a DataLoader) must yield tensors x, tuples/lists of positional arguments "
                f"or dicts of keyword arguments, got {type(batch).__name__}"
            )
        return as_program_args(batch, name, check_values=check_values, dtype=self.dtype).to(
            self.device
        )

    def _read_head(self, size: int) -> list[ProgramArgs]:
        """The first batches of one pass, up to ``size`` rows (validated: finite, non-empty)."""
        if self._head is None:
            head: list[ProgramArgs] = []
            rows = 0
            for i, batch in enumerate(self.loader):
                if isinstance(batch, torch.Tensor) and batch.dim() == 0:
                    raise ValueError(
                        "data (a DataLoader) yielded a 0-d tensor; batches need a leading "
                        "batch dimension (B, ...)"
                    )
                args = self._args(batch, i, check_values=True)
                head.append(args)
                rows += args.leading_size() or 1
                if rows >= size:
                    break
            if not head:
                raise ValueError("data (a DataLoader) yielded no batches")
            self._head = head
        return self._head

    def first_batch(self, monitor_size: int) -> ProgramArgs:
        return self._read_head(monitor_size)[0]

    def monitor(self, gen: torch.Generator, size: int) -> tuple[ProgramData, None]:
        data = _merge_batches("data", self._read_head(size))
        return data.take(torch.arange(min(data.n, size))), None

    def restore_monitor(self, saved: dict[str, Any]) -> ProgramData:
        if "x" in saved and isinstance(saved["x"], torch.Tensor):
            return as_program_data(saved["x"], dtype=self.dtype).to(self.device)
        if "batches" in saved:
            return ProgramData.from_payload(saved["batches"]).to(self.device)
        raise ValueError(
            "the checkpoint was written by fit on data held in memory, but data is a "
            "DataLoader; resume with the same kind of data"
        )

    def new_epoch(self) -> None:
        self._inner = None

    def steps_per_epoch(self) -> int | None:
        """``len(loader)`` where the loader knows it (``None``: an iterable dataset)."""
        try:
            n = len(self.loader)  # type: ignore[arg-type]
        except (TypeError, NotImplementedError):
            return None
        return n if isinstance(n, int) and n > 0 else None

    def epoch(self, gen: torch.Generator) -> Iterator[ProgramArgs]:
        for batch in self.loader:
            yield self._args(batch)

    def random_batch(self, gen: torch.Generator) -> ProgramArgs:
        """The next batch of a separate pass over the loader, restarted at every epoch (so
        that a resumed run draws what the uninterrupted one drew) and when exhausted."""
        for _ in range(2):
            if self._inner is None:
                self._inner = iter(self.loader)
            try:
                return self._args(next(self._inner))
            except StopIteration:
                self._inner = None
        raise ValueError("data (a DataLoader) yielded no batches")

    def generators(self) -> list[torch.Generator]:
        """The loader's own shuffling generators (saved in checkpoints)."""
        out: list[torch.Generator] = []
        sampler = getattr(self.loader, "sampler", None)
        for g in (getattr(self.loader, "generator", None), getattr(sampler, "generator", None)):
            if isinstance(g, torch.Generator) and not any(g is o for o in out):
                out.append(g)
        return out


def _merge_batches(name: str, batches: list[ProgramArgs]) -> ProgramData:
    from pyrocollapse.program_data import _merge

    return _merge(name, batches)


def _make_source(
    data: object,
    batch_size: int | None,
    device: torch.device | None,
    dtype: torch.dtype | None = None,
) -> _MemorySource | _LoaderSource:
    if is_batch_source(data):
        if isinstance(data, torch.utils.data.DataLoader):
            if batch_size is not None and batch_size != data.batch_size:
                raise ValueError(
                    f"batch_size={batch_size!r} cannot apply to a DataLoader, whose batches are "
                    f"its own (batch_size={data.batch_size}); leave batch_size unset or build "
                    "the DataLoader with the batch size wanted"
                )
        else:
            if isinstance(data, Iterator):  # read once: iter(data) is data
                raise TypeError(
                    f"data is an iterator ({type(data).__name__}), which can be read only once, "
                    "but fit reads the data once per epoch; pass a DataLoader, another "
                    "re-iterable of batches, or the data itself"
                )
            if batch_size is not None:
                raise ValueError(
                    f"batch_size={batch_size!r} cannot apply to data that yields its own "
                    f"batches ({type(data).__name__}); leave batch_size unset"
                )
        return _LoaderSource(data, device, dtype)  # type: ignore[arg-type]
    program = as_program_data(data, "data", tensor_check=_check_fit_tensor, dtype=dtype)
    size = 128 if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    return _MemorySource(program, size, device)


def _signature_hint(e: TypeError, batch: ProgramArgs) -> TypeError | None:
    """A clearer error when the programs do not take the arguments a batch holds."""
    text = str(e)
    if batch.single_tensor is not None or not any(
        w in text for w in ("positional argument", "keyword argument")
    ):
        return None
    return TypeError(
        f"{text}\n\nfit calls model(*args, **kwargs) and guide(*args, **kwargs) with the "
        f"arguments of each batch, here {batch.describe()}: a tuple/list is passed as "
        "positional arguments, a dict as keyword arguments. (A DataLoader yielding tuples "
        "passes all its elements; pyrocollapse up to 0.1.0 passed only the first.) Try one of "
        "the following fixes:\n"
        "- give the model and guide a signature taking them all, e.g. def model(xs, ys=None)\n"
        "- yield dicts of keyword arguments, e.g. {'xs': xs, 'ys': ys}, with the names the "
        "programs take\n"
        "- pass only what the programs take, e.g. TensorDataset(xs) instead of "
        "TensorDataset(xs, ys)"
    )


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def fit(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    loss: Any,
    optim: Any = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    scheduler_step: str = "epoch",
    epochs: int,
    batch_size: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] | None = (),
    monitor: Any = "default",
    monitor_size: int | None = None,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    aggressive: bool = False,
    aggressive_max_inner: int = 100,
    aggressive_window: int = 10,
    validate: bool = False,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    tracker: Any = None,
) -> History:
    """Train ``model``/``guide`` on ``data`` by stochastic variational inference.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``SVI.step`` calls them, ``model(*args, **kwargs)`` with
        the arguments of one batch: ``vae.model`` and ``vae.guide`` (one tensor ``x`` of
        shape ``(B, ...)``), a conditional VAE's ``model(xs, ys)``, an M2 VAE's
        ``model(xs, ys=None)``, a deep Markov model's ``model(seqs, mask, lengths)``, or
        functions written by hand.
    data : tensor, NumPy array, tuple, list, dict, DataLoader or re-iterable of batches
        Floating data of any dtype (float64, as NumPy makes by default, float16,
        bfloat16, ...) are converted to the floating dtype of the parameters of the
        modules behind ``model`` and ``guide`` (else of Pyro's param store, else torch's
        default dtype), which the ``"pyrocollapse"`` logger says once at INFO; integer
        data (counts, token ids) stay integer. Sparse tensors, tensors on the ``meta``
        device and 0-d data are refused. Held in memory: a tensor of shape ``(N, ...)`` (one positional argument), a
        tuple/list (positional arguments) or a dict (keyword arguments), shuffled (with
        ``seed``) and split into minibatches of ``batch_size`` rows every epoch. In a
        tuple/list/dict every tensor or NumPy array with a dimension is cut along dim 0,
        which must have the same size N in all of them (else ``ValueError`` naming each
        argument and its size); other values (``None``, numbers, strings, 0-d tensors)
        go to every minibatch unchanged; floating NumPy arrays become tensors of the
        default dtype. Or streamed: a ``torch.utils.data.DataLoader`` (or any other
        re-iterable of batches, e.g. a list of batches is *not* one: a list is positional
        arguments) whose batches are used as they come: one epoch is one pass, and each
        batch is a tensor ``x`` (``model(x)``), a tuple/list (``model(*batch)``: a
        ``TensorDataset(xs, ys)`` gives ``model(xs, ys)``) or a dict
        (``model(**batch)``). A loader's tensors need not share a leading size
        (time-major ``(T, B, D)`` sequences may come with their ``(B,)`` lengths). An
        ``IterableDataset`` streaming batches works (with ``batch_size=None`` in the
        loader). With a loader, the first batches are checked (finite, non-empty) and
        later ones are not. *Changed:* a loader yielding tuples passes every element as
        a positional argument; up to pyrocollapse 0.1.0 only the first was passed. A
        model that does not take them fails with a ``TypeError`` saying how to fix it.
    loss : pyro.infer.ELBO
        Any Pyro ELBO with ``differentiable_loss``; pyrocollapse ELBOs also report their
        components and weights and advance their KL schedule once per (decoder) step.
    optim : None, pyro.optim.PyroOptim, pyro.optim.PyroLRScheduler or callable
        The optimiser, never substituted (anything else is a ``TypeError``/``ValueError``
        naming what is accepted):

        * ``None``: Adam with lr 1e-3 (fused where torch supports it for the
          parameters' device and dtype);
        * a ``pyro.optim`` optimiser (``Adam``, ``ClippedAdam``, ``SGD``,
          ``AdagradRMSProp``, ``DCTAdam``, ``RMSprop``, ``Adagrad``, ...): its torch
          optimiser with its arguments. A per-parameter callable of arguments is called
          as Pyro calls it, with each parameter's name (``param_name``, or
          ``(module_name, param_name)``; names from the param sites) and gives one
          parameter group per parameter; ``clip_args`` clip each parameter's gradient
          before the step, as Pyro does;
        * a ``pyro.optim.PyroLRScheduler`` (``ExponentialLR``, ``StepLR``,
          ``OneCycleLR``, ``ReduceLROnPlateau``, ...): the torch optimiser from its
          ``"optimizer"`` and ``"optim_args"``, and the torch scheduler from the
          scheduler constructor with the remaining arguments, stepped as
          ``scheduler_step`` says;
        * a callable ``params -> torch.optim.Optimizer`` (e.g.
          ``functools.partial(torch.optim.SGD, lr=0.1)``), with ``scheduler`` for a
          schedule.
    scheduler : callable or None
        ``optimizer -> torch.optim.lr_scheduler.LRScheduler`` (or ``ReduceLROnPlateau``),
        e.g. ``lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10)``, for an
        ``optim`` without its own scheduler; a ``PyroLRScheduler`` with ``scheduler`` is a
        ``ValueError``.
    scheduler_step : {"epoch", "step"}
        When the scheduler steps: once at the end of every epoch (default; as Pyro's
        documentation steps a ``PyroLRScheduler``), or after every decoder (outer)
        optimisation step (e.g. for ``OneCycleLR`` sized in steps). Encoder-only steps of
        aggressive mode do not step it. ``ReduceLROnPlateau`` is given the epoch's mean
        per-data-point loss (or the step's). The learning rate of the first parameter
        group in the epoch's last step is recorded as the History column ``lr``.
    epochs : int
        Number of passes over the data (>= 1); with ``resume``, the total wanted,
        counting the epochs already in the checkpoint.
    batch_size : int or None
        Minibatch size for tensor data (>= 1; default 128); the last minibatch may be
        smaller. With a DataLoader the loader's batches are used: leave it ``None``.
    seed : int or None
        Seeds Pyro/torch/NumPy/``random`` RNGs and the shuffling: the same seed and
        initial parameters give the same history. A loader that shuffles draws from the
        global torch RNG, which ``seed`` fixes, unless it has its own ``generator``;
        seed that generator too (e.g. ``DataLoader(..., shuffle=True,
        generator=torch.Generator().manual_seed(0))``). Loaders with worker processes
        are deterministic only when their datasets are.
    progress : bool
        Show progress. On a terminal (as tqdm decides): a tqdm bar over the epochs and
        one over the steps of the current epoch, whose postfix counts aggressive mode's
        encoder-only steps. Elsewhere (output to a file or a pipe): INFO records of
        the ``"pyrocollapse.train"`` logger (shown once logging is configured, e.g.
        ``logging.basicConfig(level=logging.INFO)``): one at the start, one at most
        every :data:`PROGRESS_INTERVAL` (30) seconds within an epoch saying which step
        it is at (and how many encoder steps aggressive mode took), and a summary of
        every tenth epoch, the last one, and any epoch ending 30 s or more after the
        previous line. ``False``: nothing.
    callbacks : iterable of Callback or None
        Hooks run at train begin / epoch end / train end (see
        :mod:`pyrocollapse.callbacks` for collapse-aware ones); ``None`` or ``()``: none.
        A single callback goes in a list, ``callbacks=[cb]``.
    monitor : "default", None or list of str
        Latent sites whose active units and mutual information are computed each epoch on
        a fixed subset of ``monitor_size`` points (``"default"``: the sites the ELBO
        reports per dimension, or, for an objective that reports none such as Pyro's
        stock ELBOs, every local latent site the estimators apply to, others (global
        sites, point masses) being skipped; ``None`` turns monitoring off, except for
        the mutual information that aggressive mode needs; a list: exactly those sites,
        raising the reason for one that cannot be monitored). A discrete site gets its
        exact ``mi/<site>`` and no active units. One pass of guide and model over the
        subset (in chunks of ``max(512, batch_size)`` points) serves every site; the
        History records the total MI per site, not per dimension. The subset is a random
        one of tensor data (drawn once, with ``seed``) or the first ``monitor_size`` rows a DataLoader yields (whose
        batches must then share a leading size in each batch, as diagnostics cut every
        argument along dim 0; pass ``monitor=None`` for time-major batches).
    monitor_size : int or None
        Size of the fixed monitoring subset (>= 2). ``None`` (default): a sixteenth of
        in-memory data, at least 64 and at most 512 points (all of them when there are
        fewer), which keeps the monitor near 5 % of an epoch (``benchmarks/monitor.py``);
        512 for a DataLoader.
    clip_norm : float or None
        Clip the global (L2) gradient norm of the parameters being updated to this value
        (> 0), as ``torch.nn.utils.clip_grad_norm_``.
    clip_value : float or None
        Clip every gradient element to ``[-clip_value, clip_value]`` (> 0), after
        ``clip_norm`` where both are given.
    aggressive : bool
        Start in aggressive inference-network mode (He et al. 2019, Algorithm 1).
        While on, every outer step first updates only the encoder (guide parameters) on
        fresh random minibatches until its loss stops improving, then updates only the
        decoder (model parameters) once on the epoch's next minibatch. At the end of
        each aggressive epoch I_q(x; z) is measured on the monitoring subset, and the
        mode ends as soon as it is lower than at the end of the previous epoch (0
        before the first); training then updates both together. The encoder's fresh
        minibatches are rows drawn uniformly from tensor data, or the batches of a
        separate pass over a DataLoader, started anew every epoch.
    aggressive_max_inner : int
        Cap on encoder-only steps per outer step (>= 1; the authors use 100).
    aggressive_window : int
        The inner loop compares the mean per-data-point loss of consecutive windows of
        this many encoder steps and stops when a window is worse than the previous one
        (>= 1; the authors' image code uses 10, their text code 15).
    validate : bool
        Pyro's validation (shape and support checks of every site, where enabled with
        ``pyro.enable_validation``, the default) runs on the first step, which catches a
        malformed model or data at once, and on every later step only with
        ``validate=True``: it costs about half a millisecond a step.
    device : str, torch.device or None
        Train on this device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...):
        the modules behind ``model`` and ``guide`` (the ``nn.Module``/``PyroModule``
        they are methods of, with their buffers) and every parameter the programs use,
        including plain ``pyro.param`` ones, are moved there in place, and each
        minibatch is moved as it is used (the data set itself stays where it is).
        Hand-written programs must create new tensors (initial values, constants) on
        the device themselves, e.g. from ``x.device``. ``None`` (default) moves nothing.
        A device that is not available is a ``ValueError`` listing the available ones.
    checkpoint_dir : str, path or None
        Folder for a checkpoint, ``<checkpoint_dir>/checkpoint.pt``, written
        atomically (temporary file, flushed to disk, then renamed over the previous one)
        every ``checkpoint_every`` epochs and after the last epoch run (also after a
        callback stopped training). It holds everything that ``resume`` needs (see
        Notes), as tensors and plain Python values only, after a header with the sha256
        digest of those bytes: a truncated, altered or incomplete checkpoint is a
        ``ValueError`` naming the file and what is wrong, never a silent resume. Without ``resume``, a folder
        that already holds a checkpoint is refused, so a run never overwrites another's.
    checkpoint_every : int
        Epochs between checkpoints (>= 1).
    tracker : pyrocollapse.tracking.Tracker or None
        Sends the run to an experiment tracker (see :mod:`pyrocollapse.tracking`:
        :class:`~pyrocollapse.tracking.TensorBoardTracker`,
        :class:`~pyrocollapse.tracking.MLflowTracker`, or any object with
        ``log_scalars(step, dict)``): ``log_hparams`` with fit's settings before the first
        epoch, ``log_scalars(epoch, ...)`` with every value of each epoch's record (the
        :meth:`History.to_dataframe` columns, KL per dimension as ``kl/<site>/<d>``)
        after the epoch's callbacks, and, when ``tracker.log_steps`` is ``N >= 1``,
        ``log_scalars(step, ...)`` every ``N`` decoder steps with the step's
        per-data-point terms named ``step/<name>``. ``fit`` does not close it. After a
        resume only the epochs trained in this call are sent.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` (required) up to ``epochs``
        epochs in all; the run then yields the same per-epoch losses, bit for bit on the
        same machine, and the same final parameters as an uninterrupted run with the same
        seed. Pass a model and guide built as for the original run (their parameters are
        overwritten) and the same data. Without a checkpoint in the folder yet, training
        starts from scratch, so one command line serves the first start and every
        restart. The checkpoint's training state (aggressive mode, schedule position,
        History) takes precedence over ``aggressive``. A checkpoint of a different model
        (parameter count or shapes) or optimiser class is a ``ValueError``.

    Returns
    -------
    History
        One :class:`EpochRecord` per epoch (per-data-point ELBO, reconstruction, KL,
        variant extras, weights, time, KL per dimension, aggressive-mode columns, AU and
        MI when monitored); after a resume, including the checkpoint's epochs.

    Raises
    ------
    NonFiniteLossError
        (A ``FloatingPointError``.) When a step's loss or gradient is NaN or infinite:
        before the optimiser steps, so the parameters keep their last finite values and
        the last checkpoint is untouched. The message names the epoch, the step, the
        ELBO term (reconstruction, KL or extra) and the last checkpoint.

    Notes
    -----
    Encoder-only and decoder-only updates use the one optimiser: gradients are computed
    only for the parameter group being updated (``backward(inputs=...)``), and torch
    optimisers skip parameters without a gradient, so their moments stay untouched.
    Encoder steps do not advance the objective's schedule (as in the authors' code,
    the KL weight moves once per outer step).

    Every step checks the loss and the global gradient norm for NaN and infinity with
    a single device-to-host synchronisation. On a failure the minibatch is evaluated
    again with the torch RNG state from before the step, and the reconstruction, KL
    and remaining terms (and their gradients) are checked one by one to name the
    culprit; this costs nothing until something fails.

    A checkpoint holds: the parameters (in :func:`collect_params` order), the state
    dicts (parameters and buffers) of the modules behind ``model`` and ``guide``, the
    optimiser's state, the learning-rate scheduler's state, the objective's ``step_count`` (its schedule position; also its
    ``state_dict()`` where it has one), the :class:`TrainState` counters (``step``,
    ``aggressive``, ``inner_steps``, ``previous_mi``), the torch (CPU and CUDA), NumPy
    and ``random`` RNG states, the shuffling generator, the generators of a DataLoader
    (``loader.generator`` and its sampler's), the monitoring subset (row indices for data
    held in memory, or the arguments of a DataLoader's first rows) and the History.

    Per-data-point values divide the epoch's sums by the number of data points its
    batches stand for: the ``num_data`` a pyrocollapse objective reports (from the traced
    plates), or, for a stock Pyro ELBO, the size of the outermost plate around the
    model's first observed site times that site's scale (plate subsampling), read from
    each step's run of the model (1 when the site lies in no plate). Never the length of
    the first argument: a time-major ``(T, B, D)`` batch in a plate of size B counts B. It is read with
    ``torch.load(weights_only=True)``, which cannot execute code. Not saved: callbacks'
    own state (they start afresh with :meth:`Callback.on_train_begin`; a resumed run
    repeats an uninterrupted one exactly when callbacks keep no state that changes the
    training), buffers of modules reached only through ``pyro.module`` in hand-written
    programs, and the position inside an epoch (checkpoints are written between
    epochs).

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
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
    callbacks = _check_callbacks(callbacks)
    tracker = check_tracker(tracker)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    scheduler_step = check_choice("scheduler_step", scheduler_step, ("epoch", "step"))
    path, saved = _open_checkpoint(checkpoint_dir, resume)
    if saved is not None and saved["epoch"] > epochs:
        raise ValueError(
            f"epochs={epochs} is less than the {saved['epoch']} epochs already in the checkpoint "
            f"{str(path)!r}; epochs is the total wanted, counting those"
        )
    device = _resolve_device(device)
    source = _make_source(data, batch_size, device, program_dtype(model, guide))
    if seed is not None:
        pyro.set_rng_seed(seed)
    gen = torch.Generator().manual_seed(
        seed if seed is not None else int(torch.randint(2**31, ()).item())
    )

    modules = _modules_of(model, guide)
    if device is not None:
        for m in modules:
            m.to(device)
    if monitor_size is None:
        n = getattr(source, "n", None)
        monitor_size = 512 if n is None else max(2, min(512, max(64, n // 16), n))
    first = source.first_batch(monitor_size)
    try:
        guide_named, model_named = _collect_named_params(model, guide, *first.args, **first.kwargs)
    except TypeError as e:
        hint = _signature_hint(e, first)
        if hint is None:
            raise
        raise hint from e
    guide_params = [p for _, p in guide_named]
    model_params = [p for _, p in model_named]
    if device is not None:
        _move_in_place(guide_params + model_params, device)
    optimizer, lr_scheduler, param_clip = make_optimization(
        optim,
        guide_params + model_params,
        [n for n, _ in guide_named + model_named],
        scheduler=scheduler,
    )
    history = History()
    state = TrainState(
        model,
        guide,
        loss,
        optimizer,
        history,
        epochs,
        aggressive=aggressive,
        guide_params=guide_params,
        model_params=model_params,
        validate=validate,
        device=device,
        scheduler=lr_scheduler,
    )
    state._param_clip = param_clip
    state._scheduler_step = scheduler_step
    if not _reports_terms(loss):
        state._counter = _PlateCounter()
        state._counted_model = state._counter(model)
    state._rng_devices = sorted(
        {p.device.index or 0 for p in guide_params + model_params if p.device.type == "cuda"}
    )
    monitor_error: ValueError | None = None
    try:
        monitor_x, monitor_idx = source.monitor(gen, monitor_size)
    except ValueError as e:  # batches the diagnostics cannot cut along dim 0
        if monitor is not None or aggressive:
            raise ValueError(
                f"{e}. fit monitors active units and mutual information on the first "
                "monitor_size rows of the data; pass monitor=None to turn monitoring off"
            ) from e
        monitor_x, monitor_idx, monitor_error = None, None, e
    first_epoch, elapsed = 1, 0.0
    if saved is not None:
        if monitor_x is not None:
            monitor_x = source.restore_monitor(saved["monitor"])
        monitor_idx = saved["monitor"].get("indices")
        elapsed = _restore_checkpoint(saved, state, modules, gen, source, path)
        first_epoch = saved["epoch"] + 1

    log_steps = 0
    if tracker is not None:
        log_steps = int(getattr(tracker, "log_steps", 0) or 0)
        log_hparams = getattr(tracker, "log_hparams", None)
        if callable(log_hparams):
            log_hparams(
                _fit_hparams(
                    state,
                    epochs=epochs,
                    batch_size=getattr(
                        source, "batch_size", getattr(data, "batch_size", None)
                    ),
                    seed=seed,
                    aggressive_max_inner=inner.max_inner,
                    aggressive_window=inner.window,
                    clip_norm=clip_norm,
                    clip_value=clip_value,
                    monitor_size=monitor_size,
                    resumed_after=first_epoch - 1,
                )
            )
    shown = _Progress(progress, epochs, first_epoch, source.steps_per_epoch())
    start = time.perf_counter() - elapsed
    for cb in callbacks:
        cb.on_train_begin(state)
    try:
        for epoch in range(first_epoch, epochs + 1):
            state.epoch = epoch
            shown.begin_epoch(epoch)
            aggressive_epoch = state.aggressive
            if aggressive_epoch:
                _check_aggressive(state)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            per_dim: dict[str, torch.Tensor] = {}
            seen = 0.0
            outer = inner_total = 0
            not_summed = {*_weights(loss), "num_data"}  # weights are recorded, not summed
            source.new_epoch()
            for i, xb in enumerate(source.epoch(gen), start=1):
                state.batch = i
                if aggressive_epoch:
                    inner_total += inner.run(
                        state, source, gen, clip_norm, clip_value, on_step=shown.inner_step
                    )
                    comps, dims = _train_step(
                        state, xb, clip_norm, state.model_params, clip_value=clip_value
                    )
                else:
                    comps, dims = _train_step(state, xb, clip_norm, clip_value=clip_value)
                outer += 1
                shown.outer_step()
                if log_steps and state.step % log_steps == 0:
                    tracker.log_scalars(state.step, _step_scalars(comps, not_summed, state._lr))
                seen += comps["num_data"]
                for k, v in comps.items():
                    if k not in not_summed:
                        sums[k] = sums.get(k, 0.0) + v
                for k, v in dims.items():
                    per_dim[k] = per_dim[k] + v if k in per_dim else v.clone()
            if outer == 0:
                raise ValueError(f"data (a DataLoader) yielded no batches in epoch {epoch}")
            values = {k: v / seen for k, v in sums.items()}
            values.update(_weights(loss))
            values["aggressive"] = float(aggressive_epoch)
            values["inner_steps"] = inner_total / outer
            values["lr"] = state._lr
            values["epoch_time"] = time.perf_counter() - t0
            values["time"] = time.perf_counter() - start
            if monitor_x is None and (monitor is not None or aggressive_epoch):
                raise ValueError(
                    f"{monitor_error}. Aggressive mode measures the mutual information on "
                    "the first monitor_size rows of the data, which must be cut along dim 0"
                )
            chunk = max(_MONITOR_CHUNK, getattr(source, "batch_size", 0))
            # Pyro's validation as on the training steps: on the first epoch's or always
            checks = is_validation_enabled() and (state.validate or epoch == first_epoch)
            with pyro.validation_enabled(checks):
                if monitor is not None:
                    values.update(
                        _monitor(model, guide, monitor_x, monitor, list(per_dim), batch_size=chunk)
                    )
                if aggressive_epoch and not any(k.startswith("mi/") for k in values):
                    # aggressive mode needs I_q even when monitoring is off
                    values.update(
                        _monitor(model, guide, monitor_x, None, [], au=False, batch_size=chunk)
                    )
                    if not any(k.startswith("mi/") for k in values):
                        raise ValueError(
                            "aggressive mode compares I_q(x; z) between epochs, but no latent "
                            "site of the guide is one whose mutual information can be "
                            "measured (a local site with one value per data point); train "
                            "with aggressive=False"
                        )
            mi = [v for k, v in values.items() if k.startswith("mi/")]
            if mi:
                current = float(sum(mi))
                reference = 0.0 if state.previous_mi is None else state.previous_mi
                if aggressive_epoch and current < reference:
                    state.aggressive = False  # I_q stopped rising: back to joint updates
                state.previous_mi = current
            kl_dims = {k: (v / seen).detach().cpu().numpy() for k, v in per_dim.items()}
            if state.scheduler is not None and scheduler_step == "epoch":
                _step_scheduler(state.scheduler, values.get("loss", -values.get("elbo", 0.0)))
            record = EpochRecord(epoch, values, kl_dims)
            history.append(record)
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(state, record)) or stop
            shown.end_epoch(record, last=stop or epoch == epochs)
            if tracker is not None:
                tracker.log_scalars(epoch, epoch_scalars(record))
            if path is not None and (stop or epoch == epochs or epoch % checkpoint_every == 0):
                elapsed = time.perf_counter() - start
                _write_checkpoint(
                    path, state, modules, gen, source, monitor_x, monitor_idx, elapsed
                )
            if stop:
                break
    finally:
        shown.close()
    for cb in callbacks:
        cb.on_train_end(state)
    return history


def _fit_hparams(state: TrainState, **settings: Any) -> dict[str, Any]:
    """What ``fit`` gives ``tracker.log_hparams``: its settings, the optimiser, scheduler
    and objective (with ``loss.hyperparameters()`` where the objective has it)."""
    loss = state.loss
    out: dict[str, Any] = dict(settings)
    out["optimizer"] = type(state.optimizer).__name__
    out["lr"] = _current_lr(state.optimizer)
    out["scheduler"] = None if state.scheduler is None else type(state.scheduler).__name__
    out["aggressive"] = bool(state.aggressive)
    out["device"] = None if state.device is None else str(state.device)
    out["loss"] = type(loss).__name__
    hyper = getattr(loss, "hyperparameters", None)
    if callable(hyper):
        try:
            described = hyper()
        except Exception:  # a description must never stop training
            described = None
        if isinstance(described, dict):
            out["objective"] = described
    return out


def _step_scalars(comps: dict[str, float], not_summed: set[str], lr: float) -> dict[str, float]:
    """One decoder step's terms per data point (and its weights, learning rate) as
    ``step/<name>``, for ``tracker.log_steps``."""
    n = max(float(comps.get("num_data", 1.0)), 1e-12)
    out = {f"step/{k}": float(v) / n for k, v in comps.items() if k not in not_summed}
    out.update({f"step/{k}": float(v) for k, v in comps.items() if k in not_summed})
    out.pop("step/num_data", None)
    out["step/lr"] = float(lr)
    return out


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
            f"monitor must list latent site names as str, got {type(bad[0]).__name__} "
            f"{bad[0]!r}"
        )
    return list(monitor)


def _reports_terms(loss: Any) -> bool:
    """Whether the objective reports its components (a pyrocollapse ELBO: ``last``)."""
    return hasattr(loss, "last") and hasattr(loss, "evaluate")


def _step_scheduler(scheduler: Any, loss: float) -> None:
    """One step of a torch scheduler; ``ReduceLROnPlateau`` gets the loss."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(loss)
    else:
        scheduler.step()


def _is_int(x: object) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dtype != torch.bool


def _weights(loss: Any) -> dict[str, float]:
    """The objective's current weights (``{"kl_weight": 1.0}`` for a stock Pyro ELBO)."""
    weights = getattr(loss, "weights", None)
    return dict(weights) if isinstance(weights, dict) else {"kl_weight": 1.0}


def _check_aggressive(state: TrainState) -> None:
    if not state.guide_params or not state.model_params:
        raise ValueError(
            "aggressive training alternates encoder (guide) and decoder (model) updates, but "
            f"the guide has {len(state.guide_params)} and the model {len(state.model_params)} "
            "trainable parameters; both need some"
        )


def _train_step(
    state: TrainState,
    xb: ProgramArgs,
    clip_norm: float | None,
    params: Sequence[torch.Tensor] | None = None,
    *,
    outer: bool = True,
    clip_value: float | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One optimisation step; returns the ELBO components and batch KL per dimension.

    ``params``: update only these (``None``: all). ``outer``: a decoder/joint step, which
    advances the objective's schedule and ``state.step``; encoder-only inner steps do not.
    Raises :class:`NonFiniteLossError` before the optimiser steps when the loss or the
    gradient norm is not finite (one host synchronisation per step).
    """
    loss_fn = state.loss
    state.optimizer.zero_grad(set_to_none=True)
    checks = is_validation_enabled() and (state.validate or not state._validated)
    rng = _rng_snapshot(state._rng_devices)
    counter = state._counter
    model = state.model
    if counter is not None:
        counter.value = None
        model = state._counted_model
    with pyro.validation_enabled(checks):
        try:
            loss = loss_fn.differentiable_loss(model, state.guide, *xb.args, **xb.kwargs)
        except TypeError as e:
            hint = None if state._validated else _signature_hint(e, xb)
            if hint is None:
                raise
            raise hint from e
    state._validated = True
    if params is None:
        loss.backward()
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
    else:
        loss.backward(inputs=list(params))
    norm = _grad_norm(params, clip_norm)
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clip_value)
    if state._param_clip:
        _clip_per_param(state._param_clip, params)
    loss = loss.detach()
    # the norm is >= 0 or NaN: the sum is finite exactly when both are (barring overflow)
    if not bool(torch.isfinite(norm + loss.to(norm.device))):
        _raise_non_finite(state, xb, params, loss, norm, rng, outer)
    state._lr = _current_lr(state.optimizer)
    state.optimizer.step()
    last = getattr(loss_fn, "last", None) if counter is None else None
    if last is not None:
        comps, dims = dict(last.components), dict(last.kl_per_dim)
    else:
        if counter is not None and counter.value is not None:
            state._num_data = counter.value  # else (a compiled model) the last one seen
        value = float(loss)
        comps, dims = {"loss": value, "elbo": -value, "num_data": state._num_data}, {}
    if outer:
        if hasattr(loss_fn, "step"):
            loss_fn.step()
        state.step += 1
        if state.scheduler is not None and state._scheduler_step == "step":
            _step_scheduler(state.scheduler, comps["loss"] / max(comps["num_data"], 1e-12))
    return comps, dims


def _clip_per_param(
    clip: Sequence[tuple[torch.Tensor, dict[str, float]]], params: Sequence[torch.Tensor]
) -> None:
    """A ``PyroOptim``'s ``clip_args``: each parameter's gradient clipped on its own."""
    updating = {id(p) for p in params}
    for p, args in clip:
        if p.grad is None or id(p) not in updating:
            continue
        if "clip_norm" in args:
            torch.nn.utils.clip_grad_norm_(p, args["clip_norm"])
        if "clip_value" in args:
            torch.nn.utils.clip_grad_value_(p, args["clip_value"])


def _grad_norm(params: Sequence[torch.Tensor], clip_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients (before clipping), clipping them to ``clip_norm``."""
    if clip_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    first = grads[0]
    if all(g.device == first.device and g.dtype == first.dtype for g in grads):
        # one fused kernel; get_total_norm adds ~20 us of grouping in Python per step
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:  # torch >= 2.6
        return get_total_norm(grads)
    norms = [torch.linalg.vector_norm(g).to(grads[0].device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def _rng_snapshot(cuda: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Torch RNG states (CPU, and the given CUDA devices) before a step, to replay it."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in cuda]


def _raise_non_finite(
    state: TrainState,
    xb: ProgramArgs,
    params: Sequence[torch.Tensor],
    loss: torch.Tensor,
    norm: torch.Tensor,
    rng: tuple[torch.Tensor, list[torch.Tensor]],
    outer: bool,
) -> None:
    """Name the failing term and raise :class:`NonFiniteLossError`."""
    kind = "loss" if not bool(torch.isfinite(loss)) else "gradient"
    step = state.step + 1
    where = f"epoch {state.epoch}, step {step} (minibatch {state.batch} of the epoch"
    where += ")" if outer else ", an encoder-only step of aggressive mode before it)"
    what = f"loss {float(loss)}" if kind == "loss" else f"gradient (global norm {float(norm)})"
    term, site, detail = _find_non_finite_term(state, xb, params, rng, kind)
    if state.checkpoint is not None:
        last = f"the last good checkpoint, {state.checkpoint!r}, is intact"
    else:
        last = "no checkpoint was written (pass checkpoint_dir to fit to keep one)"
    raise NonFiniteLossError(
        f"non-finite {what} at {where}: {detail}. The parameters keep their values from "
        f"before this step; {last}. Try a lower learning rate, clip_norm, or a model whose "
        "likelihood and prior stay finite",
        epoch=state.epoch,
        step=step,
        kind=kind,
        term=term,
        site=site,
        checkpoint=state.checkpoint,
    )


def _find_non_finite_term(
    state: TrainState,
    xb: ProgramArgs,
    params: Sequence[torch.Tensor],
    rng: tuple[torch.Tensor, list[torch.Tensor]],
    kind: str,
) -> tuple[str | None, str | None, str]:
    """Re-evaluate the failing minibatch with the RNG state from before the step and
    check the reconstruction, KL and remaining terms (or their gradients) one by one.

    Returns ``(term, site, description)``; ``term`` is ``"reconstruction"``, ``"kl"``,
    ``"extra"`` or ``None`` (not found).
    """
    # the uncompiled evaluation where the objective has one: it keeps the terms
    evaluate = getattr(state.loss, "evaluate_eager", None) or getattr(state.loss, "evaluate", None)
    name = type(state.loss).__name__
    if evaluate is None:
        why = f"the objective ({name}) does not expose its terms; use a pyrocollapse ELBO to have "
        return None, None, why + "the failing term named"
    cpu, cuda = rng
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=state._rng_devices))
            stack.enter_context(warnings.catch_warnings())
            stack.enter_context(pyro.validation_enabled(False))
            warnings.simplefilter("ignore")
            torch.set_rng_state(cpu)
            for i, s in zip(state._rng_devices, cuda, strict=True):
                torch.cuda.set_rng_state(s, i)
            ev = evaluate(state.model, state.guide, *xb.args, **xb.kwargs)
            n = len(ev.terms)
            if n == 0:
                why = f"the evaluation of {name} exposes no terms, so the failing term could not "
                return None, None, why + "be identified"
            parts: list[tuple[str, str | None, torch.Tensor]] = []
            for t in ev.terms:
                parts += [("reconstruction", k, v / n) for k, v in t.observed.items()]
                parts += [("kl", k, lt.total / n) for k, lt in t.latent.items()]
            parts.append(("extra", None, ev.loss))  # the whole loss: blamed on the rest
            for term, site, value in parts:
                label = (
                    f"the {_TERM_NAMES[term]} of site {site!r}"
                    if site
                    else f"an extra term ({_EXTRA})"
                )
                if kind == "loss" and not bool(torch.isfinite(value)):
                    if site is None:
                        label = f"the reconstruction and KL terms are finite; {label}"
                    return term, site, f"{label} is {float(value)}"
                if kind == "gradient" and value.requires_grad:
                    grads = torch.autograd.grad(
                        value, list(params), retain_graph=True, allow_unused=True
                    )
                    if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
                        if site is None:
                            label = f"the reconstruction and KL gradients are finite; {label}"
                        return term, site, f"{label} has a non-finite gradient"
    except Exception as e:  # the diagnosis must never hide the original failure
        return None, None, f"the failing term could not be identified (re-evaluation raised {e!r})"
    why = "re-evaluating the minibatch with the same random draws gave finite values, so the "
    return None, None, why + "failing term could not be identified"


_TERM_NAMES = {"reconstruction": "reconstruction term", "kl": "KL term", "extra": "extra term"}
#: What "extra" covers: everything in the loss besides reconstruction and KL.
_EXTRA = "auxiliary guide-only sites or a term the objective adds"


@dataclass
class _InnerLoop:
    """The encoder-only loop of aggressive training (He et al. 2019, Algorithm 1).

    Updates the guide parameters on fresh random minibatches (see
    ``_MemorySource.random_batch`` and ``_LoaderSource.random_batch``); every ``window``
    steps the mean per-data-point loss of the window is compared with the previous
    window's, and the loop stops when it got worse (the authors'
    ``burn_pre_loss - burn_cur_loss < 0``) or after ``max_inner`` steps.
    """

    max_inner: int
    window: int

    def run(
        self,
        state: TrainState,
        source: _MemorySource | _LoaderSource,
        gen: torch.Generator,
        clip_norm: float | None,
        clip_value: float | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> int:
        previous, current, count = math.inf, 0.0, 0.0
        steps = 0
        while steps < self.max_inner:
            xb = source.random_batch(gen)
            comps, _ = _train_step(
                state, xb, clip_norm, state.guide_params, outer=False, clip_value=clip_value
            )
            steps += 1
            if on_step is not None:
                on_step()
            current += comps["loss"]
            count += comps["num_data"]
            if steps % self.window == 0:
                mean = current / count
                if previous - mean < 0:
                    break
                previous, current, count = mean, 0.0, 0.0
        state.inner_steps += steps
        return steps


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------
def _open_checkpoint(
    checkpoint_dir: str | os.PathLike[str] | None, resume: bool
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint path, and the checkpoint to resume from (``None``: start afresh)."""
    if checkpoint_dir is None:
        if resume:
            raise ValueError(
                "resume=True needs checkpoint_dir, the folder holding the checkpoint to continue from"
            )
        return None, None
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint_dir must be a path (str or os.PathLike) or None, got "
            f"{type(checkpoint_dir).__name__}"
        )
    folder = Path(checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir {str(folder)!r} exists and is not a folder")
    path = folder / CHECKPOINT_NAME
    if not path.exists():
        return path, None
    if not resume:
        raise ValueError(
            f"checkpoint_dir {str(folder)!r} already holds a checkpoint ({CHECKPOINT_NAME}); pass "
            "resume=True to continue from it, or choose another folder"
        )
    return path, _read_checkpoint(path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint: every failure is a ``ValueError`` naming the file.

    The file is :data:`_CHECKPOINT_MAGIC`, a line ``sha256 <hex digest>`` and the bytes
    of the ``torch.save``-d payload; the digest is checked before the payload is loaded
    with ``weights_only=True`` (tensors and plain values only, never code), then every
    field is checked (:func:`_check_payload`). A file of pyrocollapse up to 0.1 (a bare
    ``torch.save`` archive, format ``pyrocollapse.fit/1``) has no checksum: it is
    read, its fields checked, and the ``"pyrocollapse"`` logger says so.
    """
    where = f"the checkpoint {str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {where}: {e}") from e
    if raw.startswith(_CHECKPOINT_MAGIC):
        header, sep, body = raw[len(_CHECKPOINT_MAGIC) :].partition(b"\n")
        if not sep or not header.startswith(b"sha256 "):
            raise ValueError(
                f"{where} is corrupt or truncated: its second line is not 'sha256 <digest>'"
            )
        stored = header[len(b"sha256 ") :].decode("ascii", errors="replace")
        if hashlib.sha256(body).hexdigest() != stored:
            raise ValueError(
                f"{where}: checksum mismatch: the file is corrupt (truncated or altered; "
                f"{len(body)} payload bytes). Resume from another copy, or start afresh in "
                "another checkpoint_dir"
            )
        payload = _load_payload(io.BytesIO(body), where)
    elif raw.startswith(b"PK"):  # a bare torch.save archive: pyrocollapse up to 0.1
        payload = _load_payload(io.BytesIO(raw), where)
        if isinstance(payload, dict) and payload.get("format") == _LEGACY_FORMAT:
            _log.info("%s was written without a checksum (format %s)", where, _LEGACY_FORMAT)
    elif raw and _CHECKPOINT_MAGIC.startswith(raw):
        raise ValueError(f"{where} is corrupt: truncated to {len(raw)} bytes, within its header")
    else:
        what = "an empty file" if not raw else f"a file starting with {raw[:16]!r}"
        raise ValueError(
            f"cannot read {where}: it is {what}, not a fit checkpoint (which starts with "
            f"{_CHECKPOINT_MAGIC.strip().decode()!r})"
        )
    if not isinstance(payload, dict) or payload.get("format") not in (
        _CHECKPOINT_FORMAT,
        _LEGACY_FORMAT,
    ):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{str(path)!r} is not a fit checkpoint of format {_CHECKPOINT_FORMAT!r} "
            f"(found {found!r})"
        )
    _check_payload(payload, where)
    return payload


def _load_payload(f: io.BytesIO, where: str) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read {where} (loaded with weights_only=True, which accepts tensors and "
            f"plain Python values only): {e}"
        ) from e


_Real = (int, float)
_OptReal = (int, float, type(None))
#: The fields of a checkpoint payload: a type (or types), a nested dict of fields, or
#: ``[spec]`` for a list whose every item matches ``spec``.
_PAYLOAD_FIELDS: dict[str, Any] = {
    "format": str,
    "epoch": int,
    "elapsed": _Real,
    "params": [torch.Tensor],
    "num_guide_params": int,
    "modules": [dict],
    "optimizer_class": str,
    "optimizer": {"state": dict, "param_groups": [dict]},
    "loss": {"step_count": (int, type(None))},
    "state": {"step": int, "aggressive": bool, "inner_steps": int, "previous_mi": _OptReal},
    "rng": {
        "torch": torch.Tensor,
        "cuda": dict,
        "random": {"version": int, "state": torch.Tensor, "gauss_next": _OptReal},
        "numpy": {
            "name": str,
            "keys": torch.Tensor,
            "pos": int,
            "has_gauss": int,
            "cached_gaussian": _Real,
        },
    },
    "generator": torch.Tensor,
    "loader_generators": [torch.Tensor],
    "monitor": dict,
    "scheduler_class": (str, type(None)),
    "scheduler": (dict, type(None)),
    "history": [{"epoch": int, "values": dict, "kl_per_dim": dict}],
}


def _check_fields(value: Any, spec: Any, field: str, where: str) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ValueError(
                f"{where} is malformed: field {field!r} is a {type(value).__name__}, expected "
                "a dict"
            )
        for key, sub in spec.items():
            name = f"{field}.{key}" if field else key
            if key not in value:
                raise ValueError(f"{where} is malformed: missing field {name!r}")
            _check_fields(value[key], sub, name, where)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise ValueError(
                f"{where} is malformed: field {field!r} is a {type(value).__name__}, expected "
                "a list"
            )
        for i, item in enumerate(value):
            _check_fields(item, spec[0], f"{field}[{i}]", where)
    else:
        types = spec if isinstance(spec, tuple) else (spec,)
        bad_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or bad_bool:
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ValueError(
                f"{where} is malformed: field {field!r} is a {type(value).__name__}, expected "
                f"{expected}"
            )


def _check_payload(payload: dict[str, Any], where: str) -> None:
    """Every field :func:`_restore_checkpoint` reads, present and of its type."""
    _check_fields(payload, _PAYLOAD_FIELDS, "", where)
    epoch, history = payload["epoch"], payload["history"]
    if epoch < 1 or len(history) != epoch:
        raise ValueError(
            f"{where} is malformed: it is at epoch {epoch} but holds {len(history)} History "
            "record(s), one per epoch"
        )
    if not 0 <= payload["num_guide_params"] <= len(payload["params"]):
        raise ValueError(
            f"{where} is malformed: num_guide_params={payload['num_guide_params']} for "
            f"{len(payload['params'])} parameter tensors"
        )


def _atomic_save(path: Path, payload: dict[str, Any]) -> None:
    """The payload serialised with ``torch.save``, after :data:`_CHECKPOINT_MAGIC` and its
    sha256 digest, written to a temporary file beside ``path``, flushed to disk, then
    renamed over ``path``: a crash leaves either the old or the new checkpoint, never a
    torn one, and a file altered later fails its checksum."""
    from pyrocollapse._io import atomic_write

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = _CHECKPOINT_MAGIC + b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def _rng_payload(cuda: Sequence[int]) -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and ``random`` RNG states as tensors and plain values
    (``weights_only`` refuses NumPy arrays)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global)
    return {
        "torch": torch.get_rng_state(),
        "cuda": {int(i): torch.cuda.get_rng_state(i) for i in cuda},
        "random": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def _restore_rng(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    for i, s in saved["cuda"].items():
        if torch.cuda.is_available() and int(i) < torch.cuda.device_count():
            torch.cuda.set_rng_state(s, int(i))
    r = saved["random"]
    random.setstate((r["version"], tuple(int(v) for v in r["state"].tolist()), r["gauss_next"]))
    n = saved["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global state Pyro's seed sets)
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )


def _history_payload(history: History) -> list[dict[str, Any]]:
    """The History as plain floats and tensors (exact: float64 values, arrays' dtypes kept)."""
    out = []
    for r in history:
        values = {}
        for k, v in r.values.items():
            try:
                values[str(k)] = float(v)
            except (TypeError, ValueError):
                raise TypeError(
                    f"epoch {r.epoch}'s value {k!r} is a {type(v).__name__}; History values must "
                    "be numbers to be checkpointed (a callback may have added it)"
                ) from None
        kl = {str(k): torch.from_numpy(np.array(v)) for k, v in r.kl_per_dim.items()}
        out.append({"epoch": int(r.epoch), "values": values, "kl_per_dim": kl})
    return out


def _write_checkpoint(
    path: Path,
    state: TrainState,
    modules: Sequence[torch.nn.Module],
    gen: torch.Generator,
    source: _MemorySource | _LoaderSource,
    monitor_x: ProgramData | None,
    monitor_idx: torch.Tensor | None,
    elapsed: float,
) -> None:
    """Write everything :func:`fit` needs to continue bit for bit (see its Notes)."""
    loss_state: dict[str, Any] = {"step_count": getattr(state.loss, "step_count", None)}
    if callable(getattr(state.loss, "state_dict", None)):
        loss_state["state_dict"] = state.loss.state_dict()
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "epoch": int(state.epoch),
        "elapsed": float(elapsed),
        "params": [p.detach().cpu() for p in state.guide_params + state.model_params],
        "num_guide_params": len(state.guide_params),
        "modules": [m.state_dict() for m in modules],
        "optimizer_class": type(state.optimizer).__name__,
        "optimizer": state.optimizer.state_dict(),
        "loss": loss_state,
        "state": {
            "step": int(state.step),
            "aggressive": bool(state.aggressive),
            "inner_steps": int(state.inner_steps),
            "previous_mi": None if state.previous_mi is None else float(state.previous_mi),
        },
        "rng": _rng_payload(state._rng_devices),
        "generator": gen.get_state(),
        "loader_generators": [g.get_state() for g in source.generators()],
        "monitor": _monitor_payload(monitor_x, monitor_idx),
        "scheduler_class": (None if state.scheduler is None else type(state.scheduler).__name__),
        "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
        "history": _history_payload(state.history),
    }
    _atomic_save(path, payload)
    state.checkpoint = str(path)


def _monitor_payload(
    monitor_x: ProgramData | None, monitor_idx: torch.Tensor | None
) -> dict[str, Any]:
    """The monitoring subset in a checkpoint: row indices for data held in memory, the
    rows themselves for a loader (``"x"``: one tensor; ``"batches"``: the arguments)."""
    if monitor_idx is not None:
        return {"indices": monitor_idx}
    if monitor_x is None:
        return {}
    tensor = monitor_x.tensor
    if tensor is not None:
        return {"x": tensor.detach().cpu()}
    return {"batches": monitor_x.to_payload()}


def _restore_checkpoint(
    saved: dict[str, Any],
    state: TrainState,
    modules: Sequence[torch.nn.Module],
    gen: torch.Generator,
    source: _MemorySource | _LoaderSource,
    path: Path,
) -> float:
    """Load ``saved`` into the live run after checking that it fits; returns the training
    time (seconds) the checkpoint had used."""
    params = state.guide_params + state.model_params
    now = [tuple(p.shape) for p in params]
    then = [tuple(t.shape) for t in saved["params"]]
    if now != then:
        if len(now) != len(then):
            why = f"it holds {len(then)} parameter tensors, the model and guide have {len(now)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(now, then)) if a != b)
            why = f"parameter {i} has shape {then[i]} there and {now[i]} here"
        raise ValueError(
            f"the checkpoint {str(path)!r} does not match this model and guide: {why}. Resume "
            "with a model and guide built as for the original run, or use another checkpoint_dir"
        )
    if len(saved["modules"]) != len(modules):
        raise ValueError(
            f"the checkpoint {str(path)!r} holds the state of {len(saved['modules'])} module(s) "
            f"behind model and guide, but {len(modules)} are reachable now; pass model and guide "
            "as in the original run (e.g. vae.model and vae.guide)"
        )
    if saved["optimizer_class"] != type(state.optimizer).__name__:
        raise ValueError(
            f"the checkpoint {str(path)!r} holds the state of a {saved['optimizer_class']} "
            f"optimiser, but optim builds a {type(state.optimizer).__name__}; resume with the "
            "original optim"
        )
    then_sched = saved.get("scheduler_class")
    now_sched = None if state.scheduler is None else type(state.scheduler).__name__
    if then_sched != now_sched:
        raise ValueError(
            f"the checkpoint {str(path)!r} holds "
            + ("no learning-rate scheduler" if then_sched is None else f"a {then_sched} scheduler")
            + ", but optim and scheduler build "
            + ("none" if now_sched is None else f"a {now_sched}")
            + "; resume with the original optim and scheduler"
        )
    generators = source.generators()
    if len(saved["loader_generators"]) != len(generators):
        raise ValueError(
            f"the checkpoint {str(path)!r} holds {len(saved['loader_generators'])} DataLoader "
            f"generator state(s), but data has {len(generators)}; resume with a DataLoader built "
            "as for the original run"
        )
    try:
        for m, sd in zip(modules, saved["modules"], strict=True):
            m.load_state_dict(sd)
        with torch.no_grad():
            for p, t in zip(params, saved["params"], strict=True):
                p.copy_(t)
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(
            f"the checkpoint {str(path)!r} does not fit this model, guide and optimiser: {e}"
        ) from e
    try:
        loss_state = saved["loss"]
        if loss_state.get("step_count") is not None and hasattr(state.loss, "step_count"):
            state.loss.step_count = loss_state["step_count"]
        if "state_dict" in loss_state and callable(getattr(state.loss, "load_state_dict", None)):
            state.loss.load_state_dict(loss_state["state_dict"])
        s = saved["state"]
        state.step, state.aggressive = s["step"], s["aggressive"]
        state.inner_steps, state.previous_mi = s["inner_steps"], s["previous_mi"]
        state.epoch = saved["epoch"]
        state.history.records = [
            EpochRecord(
                r["epoch"], dict(r["values"]), {k: v.numpy() for k, v in r["kl_per_dim"].items()}
            )
            for r in saved["history"]
        ]
        _restore_rng(saved["rng"])
        gen.set_state(saved["generator"])
        for g, s in zip(generators, saved["loader_generators"], strict=True):
            g.set_state(s)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, OverflowError) as e:
        raise ValueError(
            f"the checkpoint {str(path)!r} is malformed: its training state cannot be restored "
            f"({type(e).__name__}: {e})"
        ) from e
    state.checkpoint = str(path)
    return float(saved["elapsed"])


#: Points per traced chunk of the monitoring subset (at least; fit's batch size if larger):
#: the default subset of 512 points is traced in one call of guide and model.
_MONITOR_CHUNK = 512
#: Draws for the per-dimension MI, which the History does not record: as few as the
#: estimator takes, so that the monitor pays only for the total I_q(x; z).
_MONITOR_PER_DIM_DRAWS = 2
#: Active-unit threshold (Burda et al. 2016) and draws for a Monte Carlo posterior mean,
#: as :func:`pyrocollapse.diagnostics.active_units` uses by default.
_MONITOR_AU_THRESHOLD, _MONITOR_AU_SAMPLES = 0.01, 64


def _monitor(
    model: Callable,
    guide: Callable,
    x: ProgramData,
    monitor: Any,
    default_sites: list[str],
    *,
    au: bool = True,
    batch_size: int = _MONITOR_CHUNK,
) -> dict[str, float]:
    """Active units and MI per site on the monitoring subset ``x``, from one pass of
    guide and model over it (chunks of at least ``batch_size`` points).

    ``monitor``: ``"default"`` (``default_sites``, the sites the objective reports per
    dimension; when it reports none, every local latent site the estimators apply to;
    sites that cannot be monitored are skipped silently), ``None`` (every local latent
    site, skipping likewise: the MI aggressive mode needs) or a list of site names (exactly
    those; one that cannot be monitored raises the reason). A continuous site gets
    ``active_units/<site>`` (unless ``au=False``) and ``mi/<site>`` (one draw of z per
    point, total over dimensions); a discrete site ``mi/<site>`` only (exact). The
    draws come from torch's global RNG, in site order, as in :func:`~pyrocollapse.
    diagnostics.active_units` and :func:`~pyrocollapse.diagnostics.mutual_information`;
    the MI is their ``total`` and nothing else (no prior densities, per-dimension
    values or bounds), and for diagonal-Normal sites it is computed in one batched
    float64 pass over all sites of one dimension (the steps of a sequence model), which
    agrees with the estimator's float32 pass to about 1e-6 nats.
    """
    from pyrocollapse.diagnostics import _sweep
    from pyrocollapse.diagnostics.activity import _active_count, _au_from_draws
    from pyrocollapse.diagnostics.aggregate import (
        _batchable,
        _mi_total,
        _mi_total_draws,
        _mi_totals,
        _normal_chunks,
        _TotalDraws,
    )
    from pyrocollapse.diagnostics.sites import discrete_summary

    strict = monitor is not None and monitor != "default"
    wanted = list(monitor) if strict else None
    sweep = _sweep(model, guide, x, wanted, max(batch_size, 1), None, elbo_terms=False)
    if wanted is not None:
        sites = wanted
    else:
        found = [s for s in sweep.kinds if s in sweep.draws or s in sweep.discrete]
        if monitor == "default" and default_sites:
            sites = [s for s in default_sites if s in found]
        else:
            sites = found
    out: dict[str, float] = {}
    # per site in order, the draws of torch's RNG (AU's Monte Carlo means, then MI's z);
    # the MI totals of the diagonal-Normal sites afterwards, batched over sites
    pending: dict[str, _TotalDraws] = {}
    with torch.no_grad():
        for site in sites:
            try:
                if site in sweep.discrete:
                    out[f"mi/{site}"] = float(discrete_summary(sweep.discrete[site]).mi)
                    continue
                # a chunk whose rows are all masked at this site (short sequences) has none
                draws = [d for d in sweep.draws[site] if d.z.shape[0] > 0]
                if not draws:
                    continue
                values = {}
                params = _normal_chunks(draws)  # diagonal Normals: exact means, no draws
                if au and params is None:
                    activity = _au_from_draws(
                        draws, _MONITOR_AU_THRESHOLD, _MONITOR_AU_SAMPLES, 0, 0.95
                    )
                    values[f"active_units/{site}"] = float(activity.active.sum())
                elif au:
                    means = torch.cat([loc for loc, _ in params])
                    count = _active_count(means, _MONITOR_AU_THRESHOLD)
                    values[f"active_units/{site}"] = float(count)
                t = _mi_total_draws(draws, 1, _MONITOR_PER_DIM_DRAWS, params)
                if _batchable(t):
                    pending[site] = t
                else:
                    values[f"mi/{site}"] = _mi_total(t)
            except (ValueError, NotImplementedError):
                if strict:
                    raise
                continue  # a site the estimators do not apply to
            out.update(values)
        totals = dict(zip(pending, _mi_totals(list(pending.values()))))
        for site, t in pending.items():
            total = totals[site]
            out[f"mi/{site}"] = _mi_total(t) if total is None else total
    order = {s: i for i, s in enumerate(sites)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0].split("/", 1)[1]]))
