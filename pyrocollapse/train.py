"""Training: :func:`fit` a Pyro model/guide pair with any ELBO, recording a :class:`History`.

``fit`` runs the ELBO's ``differentiable_loss`` under one ``torch.optim`` optimiser over
the parameters the model and guide use (found from their ``param`` sites, so plain
``pyro.param`` statements, ``pyro.module`` and ``PyroModule`` parameters all train).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine

from pyrocollapse._validation import check_data, check_float, check_int

__all__ = ["Callback", "EpochRecord", "History", "PrintProgress", "collect_params", "fit"]


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
        ``reconstruction``, ``kl``, ``kl/<site>``, variant extras), plus ``kl_weight``
        (at the epoch's last step), ``time`` (seconds since training began) and
        ``epoch_time``; monitoring metrics (``active_units/<site>``, ``mi/<site>``) when on.
    kl_per_dim : dict[str, numpy.ndarray]
        Per latent site, the epoch-average KL per dimension (nats per data point), shape
        ``(latent_dim,)``.
    """

    epoch: int
    values: dict[str, float]
    kl_per_dim: dict[str, np.ndarray] = field(default_factory=dict)


class History:
    """Per-epoch training record returned by :func:`fit`."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def append(self, record: EpochRecord) -> None:
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
            print(
                f"epoch {record.epoch:>4}/{state.epochs}  ELBO {v['elbo']:.3f}  "
                f"recon {v['reconstruction']:.3f}  KL {v['kl']:.3f}  "
                f"beta {v['kl_weight']:.3f}{extra}  ({v['time']:.1f}s)",
                file=self.file or sys.stdout,
                flush=True,
            )


@dataclass
class TrainState:
    """What callbacks see: the model/guide, loss, optimiser, history and settings."""

    model: Callable
    guide: Callable
    loss: Any
    optimizer: torch.optim.Optimizer
    history: History
    epochs: int
    epoch: int = 0
    step: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


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
    """Build a torch optimiser from ``None`` (Adam, lr 1e-3), a ``pyro.optim.PyroOptim``
    (its torch constructor and arguments), or a callable ``params -> Optimizer``."""
    params = list(params)
    if not params:
        raise ValueError("model and guide have no trainable parameters (no param sites found)")
    if optim is None:
        return torch.optim.Adam(params, lr=1e-3)
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


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def fit(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    loss: Any,
    optim: Any = None,
    epochs: int,
    batch_size: int = 128,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    monitor: Any = "default",
    monitor_size: int = 512,
    clip_norm: float | None = None,
) -> History:
    """Train ``model``/``guide`` on ``data`` by stochastic variational inference.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking one batch ``x`` of shape ``(B, ...)``; e.g. ``vae.model`` and
        ``vae.guide``, or functions written by hand.
    data : torch.Tensor
        Shape ``(N, ...)``; shuffled and split into minibatches along dim 0 every epoch.
    loss : pyro.infer.ELBO
        Any Pyro ELBO with ``differentiable_loss``; pyrocollapse ELBOs also report their
        components and advance their KL schedule once per step.
    optim : None, pyro.optim.PyroOptim or callable
        Optimiser factory; default Adam with lr 1e-3.
    epochs : int
        Number of passes over the data (>= 1).
    batch_size : int
        Minibatch size (>= 1); the last minibatch may be smaller.
    seed : int or None
        Seeds Pyro/torch RNGs and the shuffling: the same seed and initial parameters
        give the same history.
    progress : bool
        Show a tqdm progress bar (only on a terminal).
    callbacks : iterable of Callback
        Hooks run at train begin / epoch end / train end.
    monitor : "default", None or list of str
        Latent sites whose active units and mutual information are computed each epoch on
        a fixed subset of ``monitor_size`` points (``"default"``: the sites the ELBO
        reports; ``None`` turns monitoring off).
    monitor_size : int
        Size of the fixed monitoring subset.
    clip_norm : float or None
        Clip the global gradient norm to this value.

    Returns
    -------
    History
        One :class:`EpochRecord` per epoch (per-data-point ELBO, reconstruction, KL, KL
        weight, time, KL per dimension, AU and MI when monitored).
    """
    data = check_data("data", data, floating=False) if _is_int(data) else check_data("data", data)
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    monitor_size = check_int("monitor_size", monitor_size, minimum=2)
    if clip_norm is not None:
        clip_norm = check_float("clip_norm", clip_norm, minimum=0.0, strict_minimum=True)
    if not hasattr(loss, "differentiable_loss"):
        raise TypeError(f"loss must be a pyro.infer.ELBO, got {type(loss).__name__}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    if seed is not None:
        pyro.set_rng_seed(check_int("seed", seed, minimum=0))
    gen = torch.Generator().manual_seed(
        seed if seed is not None else int(torch.randint(2**31, ()).item())
    )

    n = data.shape[0]
    guide_params, model_params = collect_params(model, guide, data[: min(n, batch_size)])
    optimizer = make_optimizer(optim, guide_params + model_params)
    history = History()
    state = TrainState(model, guide, loss, optimizer, history, epochs)
    state.extras["params"] = (guide_params, model_params)
    monitor_idx = torch.randperm(n, generator=gen)[: min(n, monitor_size)]
    monitor_x = data[monitor_idx]

    from tqdm.auto import tqdm

    bar = tqdm(
        total=epochs, desc="training", unit="epoch", disable=(not progress) or None, leave=True
    )
    start = time.perf_counter()
    for cb in callbacks:
        cb.on_train_begin(state)
    try:
        for epoch in range(1, epochs + 1):
            state.epoch = epoch
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            per_dim: dict[str, torch.Tensor] = {}
            seen = 0.0
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                xb = data[perm[i : i + batch_size]]
                comps, dims = _train_step(state, xb, clip_norm)
                seen += comps.get("num_data", float(len(xb)))
                for k, v in comps.items():
                    if k not in ("kl_weight", "num_data"):
                        sums[k] = sums.get(k, 0.0) + v
                for k, v in dims.items():
                    per_dim[k] = per_dim[k] + v if k in per_dim else v.clone()
            values = {k: v / seen for k, v in sums.items()}
            values["kl_weight"] = float(getattr(loss, "beta", 1.0))
            values["epoch_time"] = time.perf_counter() - t0
            values["time"] = time.perf_counter() - start
            if monitor is not None:
                values.update(_monitor(model, guide, monitor_x, monitor, list(per_dim)))
            record = EpochRecord(epoch, values, {k: (v / seen).numpy() for k, v in per_dim.items()})
            history.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{values[k]:.2f}" for k in ("elbo", "kl") if k in values})
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(state, record)) or stop
            if stop:
                break
    finally:
        bar.close()
    for cb in callbacks:
        cb.on_train_end(state)
    return history


def _is_int(x: object) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dtype != torch.bool


def _train_step(
    state: TrainState, xb: torch.Tensor, clip_norm: float | None
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One optimisation step; returns the ELBO components and batch KL per dimension."""
    loss_fn = state.loss
    state.optimizer.zero_grad(set_to_none=True)
    loss = loss_fn.differentiable_loss(state.model, state.guide, xb)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss ({float(loss.detach())}) at epoch {state.epoch}, step {state.step + 1}"
        )
    loss.backward()
    if clip_norm is not None:
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    state.optimizer.step()
    if hasattr(loss_fn, "step"):
        loss_fn.step()
    state.step += 1
    last = getattr(loss_fn, "last", None)
    if last is not None:
        return dict(last.components), dict(last.kl_per_dim)
    value = float(loss.detach())
    return {"loss": value, "elbo": -value, "num_data": float(len(xb))}, {}


def _monitor(
    model: Callable, guide: Callable, x: torch.Tensor, monitor: Any, default_sites: list[str]
) -> dict[str, float]:
    from pyrocollapse.diagnostics import active_units, mutual_information

    sites = default_sites if monitor == "default" else list(monitor)
    out: dict[str, float] = {}
    for site in sites:
        au = active_units(model, guide, x, site=site)
        out[f"active_units/{site}"] = float(au.active.sum())
        out[f"mi/{site}"] = float(
            mutual_information(model, guide, x, site=site, num_samples=1).total
        )
    return out
