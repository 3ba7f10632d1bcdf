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
"""

from __future__ import annotations

import contextlib
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

from pyrocollapse._validation import check_data, check_device, check_float, check_int

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

#: File name of the checkpoint ``fit`` writes into ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
#: Format tag stored in every checkpoint (checked on resume).
_CHECKPOINT_FORMAT = "pyrocollapse.fit/1"


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
        step, averaged over the epoch); monitoring metrics (``active_units/<site>``,
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
    """Print one line every ``every`` epochs (for logs where no progress bar is shown)."""

    def __init__(self, every: int = 1, file: Any = None) -> None:
        self.every = check_int("every", every, minimum=1)
        self.file = file

    def on_epoch_end(self, state: TrainState, record: EpochRecord) -> None:
        if record.epoch % self.every == 0 or record.epoch == state.epochs:
            v = record.values
            extra = "".join(f"  {k} {v[k]:.2f}" for k in ("active_units/z", "mi/z") if k in v)
            if v.get("aggressive"):
                extra += f"  [aggressive: {v['inner_steps']:.0f} encoder steps per step]"
            print(
                f"epoch {record.epoch:>4}/{state.epochs}  ELBO {v['elbo']:.3f}  "
                f"recon {v['reconstruction']:.3f}  KL {v['kl']:.3f}  "
                f"beta {v['kl_weight']:.3f}{extra}  ({v['time']:.1f}s)",
                file=self.file or sys.stdout,
                flush=True,
            )


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
    # set once Pyro's validation has run on a step of this fit call
    _validated: bool = field(default=False, init=False, repr=False)
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

    Traces the guide and the model replayed on it once.

    Returns
    -------
    (guide_params, model_params) : tuple[list[Tensor], list[Tensor]]
        Unconstrained leaf tensors, each listed once (a tensor used by both is listed
        with the guide).
    """
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

    def leaves(trace: Any) -> list[torch.Tensor]:
        out = []
        for site in trace.nodes.values():
            if site["type"] != "param":
                continue
            v = site["value"]
            u = v.unconstrained() if hasattr(v, "unconstrained") else v
            if isinstance(u, torch.Tensor) and u.requires_grad and id(u) not in seen:
                seen.add(id(u))
                out.append(u)
        return out

    return leaves(guide_tr), leaves(model_tr)


def make_optimizer(optim: Any, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """Build a torch optimiser from ``None``, a ``pyro.optim.PyroOptim`` (its torch
    constructor and arguments), or a callable ``params -> Optimizer``.

    ``None`` gives Adam with lr 1e-3, fused (one kernel for all parameters) where torch
    supports it for the parameters' devices and dtypes, else the default implementation.
    """
    params = list(params)
    if not params:
        raise ValueError("model and guide have no trainable parameters (no param sites found)")
    if optim is None:
        return torch.optim.Adam(params, lr=1e-3, fused=_fused_supported(params) or None)
    if isinstance(optim, pyro.optim.PyroOptim):
        args = optim.pt_optim_args
        if callable(args):
            raise ValueError("fit needs pyro.optim arguments as a dict, not a per-param callable")
        return optim.pt_optim_constructor(params, **args)
    if isinstance(optim, torch.optim.Optimizer):
        raise TypeError(
            "optim must be a factory, not an optimizer instance: pass e.g. "
            "functools.partial(torch.optim.Adam, lr=1e-3) or pyro.optim.Adam({'lr': 1e-3})"
        )
    if callable(optim):
        opt = optim(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"optim(params) must return a torch.optim.Optimizer, got {type(opt).__name__}"
            )
        return opt
    raise TypeError(
        "optim must be None, a pyro.optim.PyroOptim or a callable params -> torch.optim.Optimizer; "
        f"got {type(optim).__name__}"
    )


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


def _batch_to(x: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    if device is None or x.device == device:
        return x
    return x.to(device, non_blocking=device.type == "cuda")


# --------------------------------------------------------------------------------------
# Data sources: a tensor or a DataLoader
# --------------------------------------------------------------------------------------
class _TensorSource:
    """Minibatches of an ``(N, ...)`` tensor, reshuffled every epoch with fit's generator.

    The tensor stays where it is; each minibatch is moved to the device as it is used.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, device: torch.device | None):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.n = data.shape[0]

    def first_batch(self, monitor_size: int) -> torch.Tensor:
        return _batch_to(self.data[: min(self.n, self.batch_size)], self.device)

    def monitor(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(self.n, generator=gen)[: min(self.n, size)]
        return _batch_to(self.data[idx], self.device), idx

    def restore_monitor(self, saved: dict[str, Any]) -> torch.Tensor:
        idx = saved.get("indices")
        if not isinstance(idx, torch.Tensor):
            raise ValueError(
                "the checkpoint was written by fit on a DataLoader, but data is a tensor; resume "
                "with the same kind of data"
            )
        if idx.numel() and int(idx.max()) >= self.n:
            raise ValueError(
                f"the checkpoint's monitoring subset uses row {int(idx.max())}, but data has "
                f"{self.n} rows; resume with the data the run started with"
            )
        return _batch_to(self.data[idx], self.device)

    def new_epoch(self) -> None:
        pass

    def epoch(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=gen)
        for i in range(0, self.n, self.batch_size):
            yield _batch_to(self.data[perm[i : i + self.batch_size]], self.device)

    def random_batch(self, gen: torch.Generator) -> torch.Tensor:
        """Rows drawn uniformly with replacement, O(batch_size) whatever N."""
        rows = torch.randint(self.n, (min(self.n, self.batch_size),), generator=gen)
        return _batch_to(self.data[rows], self.device)

    def generators(self) -> list[torch.Generator]:
        return []


class _LoaderSource:
    """Minibatches from a ``torch.utils.data.DataLoader`` (one epoch = one pass).

    A batch is a tensor ``x`` or a tuple/list whose first element is ``x`` (as a
    ``TensorDataset`` gives); it is moved to the device as it is used.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device | None):
        self.loader, self.device = loader, device
        self._head: list[torch.Tensor] | None = None
        self._inner: Iterator[Any] | None = None

    def _x(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, (tuple, list)) and batch:
            batch = batch[0]
        if not isinstance(batch, torch.Tensor):
            raise TypeError(
                "data (a DataLoader) must yield tensors x or tuples/lists whose first element is "
                f"x, got {type(batch).__name__}"
            )
        return _batch_to(batch, self.device)

    def _read_head(self, size: int) -> list[torch.Tensor]:
        """The first batches of one pass, up to ``size`` rows (validated: finite, non-empty)."""
        if self._head is None:
            head: list[torch.Tensor] = []
            rows = 0
            for batch in self.loader:
                x = self._x(batch)
                if x.dim() == 0:
                    raise ValueError(
                        "data (a DataLoader) yielded a 0-d tensor; batches need a leading "
                        "batch dimension (B, ...)"
                    )
                head.append(x)
                rows += x.shape[0]
                if rows >= size:
                    break
            if not head:
                raise ValueError("data (a DataLoader) yielded no batches")
            for i, x in enumerate(head):
                if _is_int(x):
                    check_data(f"data batch {i}", x, floating=False)
                else:
                    check_data(f"data batch {i}", x)
            self._head = head
        return self._head

    def first_batch(self, monitor_size: int) -> torch.Tensor:
        return self._read_head(monitor_size)[0]

    def monitor(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, None]:
        return torch.cat(self._read_head(size))[:size], None

    def restore_monitor(self, saved: dict[str, Any]) -> torch.Tensor:
        x = saved.get("x")
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                "the checkpoint was written by fit on a tensor, but data is a DataLoader; resume "
                "with the same kind of data"
            )
        return _batch_to(x, self.device)

    def new_epoch(self) -> None:
        self._inner = None

    def epoch(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        for batch in self.loader:
            yield self._x(batch)

    def random_batch(self, gen: torch.Generator) -> torch.Tensor:
        """The next batch of a separate pass over the loader, restarted at every epoch (so
        that a resumed run draws what the uninterrupted one drew) and when exhausted."""
        for _ in range(2):
            if self._inner is None:
                self._inner = iter(self.loader)
            try:
                return self._x(next(self._inner))
            except StopIteration:
                self._inner = None
        raise ValueError("data (a DataLoader) yielded no batches")

    def generators(self) -> list[torch.Generator]:
        """The loader's own shuffling generators (saved in checkpoints)."""
        out: list[torch.Generator] = []
        for g in (
            getattr(self.loader, "generator", None),
            getattr(self.loader.sampler, "generator", None),
        ):
            if isinstance(g, torch.Generator) and not any(g is o for o in out):
                out.append(g)
        return out


def _make_source(
    data: object, batch_size: int | None, device: torch.device | None
) -> _TensorSource | _LoaderSource:
    if isinstance(data, torch.utils.data.DataLoader):
        if batch_size is not None and batch_size != data.batch_size:
            raise ValueError(
                f"batch_size={batch_size!r} cannot apply to a DataLoader, whose batches are its "
                f"own (batch_size={data.batch_size}); leave batch_size unset or build the "
                "DataLoader with the batch size wanted"
            )
        return _LoaderSource(data, device)
    if isinstance(data, torch.Tensor):
        data = (
            check_data("data", data, floating=False) if _is_int(data) else check_data("data", data)
        )
        size = 128 if batch_size is None else check_int("batch_size", batch_size, minimum=1)
        return _TensorSource(data, size, device)
    raise TypeError(
        f"data must be a torch.Tensor or a torch.utils.data.DataLoader, got {type(data).__name__}"
    )


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def fit(
    model: Callable,
    guide: Callable,
    data: torch.Tensor | torch.utils.data.DataLoader,
    *,
    loss: Any,
    optim: Any = None,
    epochs: int,
    batch_size: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    monitor: Any = "default",
    monitor_size: int = 512,
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
) -> History:
    """Train ``model``/``guide`` on ``data`` by stochastic variational inference.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking one batch ``x`` of shape ``(B, ...)``; e.g. ``vae.model`` and
        ``vae.guide``, or functions written by hand.
    data : torch.Tensor or torch.utils.data.DataLoader
        A tensor of shape ``(N, ...)``, shuffled (with ``seed``) and split into
        minibatches of ``batch_size`` rows along dim 0 every epoch; or a ``DataLoader``,
        for data larger than memory, whose batches are used as they come: one epoch is one
        pass over the loader, and each batch is a tensor ``x`` of shape ``(B, ...)`` or a
        tuple/list whose first element is ``x`` (as a ``TensorDataset`` yields; the rest is
        ignored). An ``IterableDataset`` streaming batches works (with ``batch_size=None``
        in the loader). With a loader, the first batches are checked (finite, non-empty)
        and later ones are not.
    loss : pyro.infer.ELBO
        Any Pyro ELBO with ``differentiable_loss``; pyrocollapse ELBOs also report their
        components and weights and advance their KL schedule once per (decoder) step.
    optim : None, pyro.optim.PyroOptim or callable
        Optimiser factory; default Adam with lr 1e-3 (fused where torch supports it for
        the parameters' device and dtype).
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
        Show a tqdm progress bar (only on a terminal).
    callbacks : iterable of Callback
        Hooks run at train begin / epoch end / train end (see
        :mod:`pyrocollapse.callbacks` for collapse-aware ones).
    monitor : "default", None or list of str
        Latent sites whose active units and mutual information are computed each epoch on
        a fixed subset of ``monitor_size`` points (``"default"``: the sites the ELBO
        reports per dimension, or, for an objective that reports none such as Pyro's
        stock ELBOs, every latent site of shape ``(batch, latent_dim)``, others being
        skipped; ``None`` turns monitoring off, except for the mutual information that
        aggressive mode needs). The subset is a random one of tensor data (drawn once,
        with ``seed``) or the first ``monitor_size`` rows a DataLoader yields.
    monitor_size : int
        Size of the fixed monitoring subset (>= 2).
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
        Notes), as tensors and plain Python values only. Without ``resume``, a folder
        that already holds a checkpoint is refused, so a run never overwrites another's.
    checkpoint_every : int
        Epochs between checkpoints (>= 1).
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
    optimiser's state, the objective's ``step_count`` (its schedule position; also its
    ``state_dict()`` where it has one), the :class:`TrainState` counters (``step``,
    ``aggressive``, ``inner_steps``, ``previous_mi``), the torch (CPU and CUDA), NumPy
    and ``random`` RNG states, the shuffling generator, the generators of a DataLoader
    (``loader.generator`` and its sampler's), the monitoring subset (row indices, or
    the rows of a DataLoader) and the History. It is read with
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
    epochs = check_int("epochs", epochs, minimum=1)
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
    if not hasattr(loss, "differentiable_loss"):
        raise TypeError(f"loss must be a pyro.infer.ELBO, got {type(loss).__name__}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    path, saved = _open_checkpoint(checkpoint_dir, resume)
    if saved is not None and saved["epoch"] > epochs:
        raise ValueError(
            f"epochs={epochs} is less than the {saved['epoch']} epochs already in the checkpoint "
            f"{str(path)!r}; epochs is the total wanted, counting those"
        )
    device = _resolve_device(device)
    source = _make_source(data, batch_size, device)
    if seed is not None:
        pyro.set_rng_seed(check_int("seed", seed, minimum=0))
    gen = torch.Generator().manual_seed(
        seed if seed is not None else int(torch.randint(2**31, ()).item())
    )

    modules = _modules_of(model, guide)
    if device is not None:
        for m in modules:
            m.to(device)
    guide_params, model_params = collect_params(model, guide, source.first_batch(monitor_size))
    if device is not None:
        _move_in_place(guide_params + model_params, device)
    optimizer = make_optimizer(optim, guide_params + model_params)
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
        validate=bool(validate),
        device=device,
    )
    state._rng_devices = sorted(
        {p.device.index or 0 for p in guide_params + model_params if p.device.type == "cuda"}
    )
    monitor_x, monitor_idx = source.monitor(gen, monitor_size)
    first_epoch, elapsed = 1, 0.0
    if saved is not None:
        monitor_x = source.restore_monitor(saved["monitor"])
        monitor_idx = saved["monitor"].get("indices")
        elapsed = _restore_checkpoint(saved, state, modules, gen, source, path)
        first_epoch = saved["epoch"] + 1

    from tqdm.auto import tqdm

    bar = tqdm(
        total=epochs,
        initial=first_epoch - 1,
        desc="training",
        unit="epoch",
        disable=(not progress) or None,
        leave=True,
    )
    start = time.perf_counter() - elapsed
    for cb in callbacks:
        cb.on_train_begin(state)
    try:
        for epoch in range(first_epoch, epochs + 1):
            state.epoch = epoch
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
                    inner_total += inner.run(state, source, gen, clip_norm, clip_value)
                    comps, dims = _train_step(
                        state, xb, clip_norm, state.model_params, clip_value=clip_value
                    )
                else:
                    comps, dims = _train_step(state, xb, clip_norm, clip_value=clip_value)
                outer += 1
                seen += comps.get("num_data", float(len(xb)))
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
            values["epoch_time"] = time.perf_counter() - t0
            values["time"] = time.perf_counter() - start
            if monitor is not None:
                values.update(_monitor(model, guide, monitor_x, monitor, list(per_dim)))
            if aggressive_epoch and not any(k.startswith("mi/") for k in values):
                # aggressive mode needs I_q even when monitoring is off
                values.update(_monitor(model, guide, monitor_x, None, [], au=False))
            mi = [v for k, v in values.items() if k.startswith("mi/")]
            if mi:
                current = float(sum(mi))
                reference = 0.0 if state.previous_mi is None else state.previous_mi
                if aggressive_epoch and current < reference:
                    state.aggressive = False  # I_q stopped rising: back to joint updates
                state.previous_mi = current
            kl_dims = {k: (v / seen).detach().cpu().numpy() for k, v in per_dim.items()}
            record = EpochRecord(epoch, values, kl_dims)
            history.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{values[k]:.2f}" for k in ("elbo", "kl") if k in values})
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(state, record)) or stop
            if path is not None and (stop or epoch == epochs or epoch % checkpoint_every == 0):
                elapsed = time.perf_counter() - start
                _write_checkpoint(
                    path, state, modules, gen, source, monitor_x, monitor_idx, elapsed
                )
            if stop:
                break
    finally:
        bar.close()
    for cb in callbacks:
        cb.on_train_end(state)
    return history


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
    xb: torch.Tensor,
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
    with pyro.validation_enabled(checks):
        loss = loss_fn.differentiable_loss(state.model, state.guide, xb)
    state._validated = True
    if params is None:
        loss.backward()
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
    else:
        loss.backward(inputs=list(params))
    norm = _grad_norm(params, clip_norm)
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clip_value)
    loss = loss.detach()
    # the norm is >= 0 or NaN: the sum is finite exactly when both are (barring overflow)
    if not bool(torch.isfinite(norm + loss.to(norm.device))):
        _raise_non_finite(state, xb, params, loss, norm, rng, outer)
    state.optimizer.step()
    if outer:
        if hasattr(loss_fn, "step"):
            loss_fn.step()
        state.step += 1
    last = getattr(loss_fn, "last", None)
    if last is not None:
        return dict(last.components), dict(last.kl_per_dim)
    value = float(loss)
    return {"loss": value, "elbo": -value, "num_data": float(len(xb))}, {}


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
    xb: torch.Tensor,
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
    xb: torch.Tensor,
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
            ev = evaluate(state.model, state.guide, xb)
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
    ``_TensorSource.random_batch`` and ``_LoaderSource.random_batch``); every ``window``
    steps the mean per-data-point loss of the window is compared with the previous
    window's, and the loop stops when it got worse (the authors'
    ``burn_pre_loss - burn_cur_loss < 0``) or after ``max_inner`` steps.
    """

    max_inner: int
    window: int

    def run(
        self,
        state: TrainState,
        source: _TensorSource | _LoaderSource,
        gen: torch.Generator,
        clip_norm: float | None,
        clip_value: float | None = None,
    ) -> int:
        previous, current, count = math.inf, 0.0, 0.0
        steps = 0
        while steps < self.max_inner:
            xb = source.random_batch(gen)
            comps, _ = _train_step(
                state, xb, clip_norm, state.guide_params, outer=False, clip_value=clip_value
            )
            steps += 1
            current += comps["loss"]
            count += comps.get("num_data", float(len(xb)))
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
    """Load a checkpoint with ``weights_only=True`` (tensors and plain values only)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read the checkpoint {str(path)!r} (loaded with weights_only=True, which "
            f"accepts tensors and plain Python values only): {e}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{str(path)!r} is not a fit checkpoint of format {_CHECKPOINT_FORMAT!r} "
            f"(found {found!r})"
        )
    return payload


def _atomic_save(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed
    over ``path``: a crash leaves either the old or the new checkpoint, never a torn one."""
    from pyrocollapse._io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
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
    source: _TensorSource | _LoaderSource,
    monitor_x: torch.Tensor,
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
        "monitor": (
            {"x": monitor_x.detach().cpu()} if monitor_idx is None else {"indices": monitor_idx}
        ),
        "history": _history_payload(state.history),
    }
    _atomic_save(path, payload)
    state.checkpoint = str(path)


def _restore_checkpoint(
    saved: dict[str, Any],
    state: TrainState,
    modules: Sequence[torch.nn.Module],
    gen: torch.Generator,
    source: _TensorSource | _LoaderSource,
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
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(
            f"the checkpoint {str(path)!r} does not fit this model, guide and optimiser: {e}"
        ) from e
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
    state.checkpoint = str(path)
    return float(saved["elapsed"])


def _monitor(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    monitor: Any,
    default_sites: list[str],
    *,
    au: bool = True,
) -> dict[str, float]:
    """Active units and MI per site on the monitoring subset ``x``.

    ``monitor``: ``"default"`` (``default_sites``, the sites the objective reports; when
    it reports none, every latent site, skipping those the estimators cannot take, such
    as sites without a ``(batch, latent_dim)`` shape), ``None`` (every latent site of the
    guide) or a list of site names. ``au=False`` computes the mutual information only.
    """
    from pyrocollapse.diagnostics import active_units, latent_site_names, mutual_information

    lenient = monitor == "default" and not default_sites
    if monitor == "default" and default_sites:
        sites = default_sites
    elif monitor is None or lenient:
        sites = latent_site_names(model, guide, x)
    else:
        sites = list(monitor)
    out: dict[str, float] = {}
    for site in sites:
        try:
            values = {}
            if au:
                values[f"active_units/{site}"] = float(
                    active_units(model, guide, x, site=site).active.sum()
                )
            values[f"mi/{site}"] = float(
                mutual_information(model, guide, x, site=site, num_samples=1).total
            )
        except ValueError:
            if not lenient:
                raise
            continue  # a site the per-dimension estimators do not apply to
        out.update(values)
    return out
