"""Training: :func:`fit` a Pyro model/guide pair with any ELBO, recording a :class:`History`.

``fit`` runs the ELBO's ``differentiable_loss`` under one ``torch.optim`` optimiser over
the parameters the model and guide use (found from their ``param`` sites, so plain
``pyro.param`` statements, ``pyro.module`` and ``PyroModule`` parameters all train).

With ``aggressive=True`` (or when a callback such as
:class:`pyrocollapse.callbacks.AggressiveOnCollapse` sets ``state.aggressive``) it trains
the inference network aggressively, as He et al. (2019) propose against posterior
collapse: before each decoder update the encoder alone is updated until its loss stops
improving, and the mode ends once the mutual information I_q(x; z) stops rising.
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
from pyro.infer.util import is_validation_enabled

from pyrocollapse._validation import check_data, check_float, check_int

__all__ = [
    "Callback",
    "EpochRecord",
    "History",
    "PrintProgress",
    "TrainState",
    "collect_params",
    "fit",
]


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
        Epochs requested.
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
    aggressive: bool = False,
    aggressive_max_inner: int = 100,
    aggressive_window: int = 10,
    validate: bool = False,
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
        components and weights and advance their KL schedule once per (decoder) step.
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
        Hooks run at train begin / epoch end / train end (see
        :mod:`pyrocollapse.callbacks` for collapse-aware ones).
    monitor : "default", None or list of str
        Latent sites whose active units and mutual information are computed each epoch on
        a fixed subset of ``monitor_size`` points (``"default"``: the sites the ELBO
        reports; ``None`` turns monitoring off, except for the mutual information that
        aggressive mode needs).
    monitor_size : int
        Size of the fixed monitoring subset.
    clip_norm : float or None
        Clip the global gradient norm (of the parameters being updated) to this value.
    validate : bool
        Pyro's validation (shape and support checks of every site, where enabled with
        ``pyro.enable_validation``, the default) runs on the first step, which catches a
        malformed model or data at once, and on every later step only with
        ``validate=True``: it costs about half a millisecond a step.
    aggressive : bool
        Start in aggressive inference-network mode (He et al. 2019, Algorithm 1).
        While on, every outer step first updates only the encoder (guide parameters) on
        fresh random minibatches until its loss stops improving, then updates only the
        decoder (model parameters) once on the epoch's next minibatch. At the end of
        each aggressive epoch I_q(x; z) is measured on the monitoring subset, and the
        mode ends as soon as it is lower than at the end of the previous epoch (0
        before the first); training then updates both together.
    aggressive_max_inner : int
        Cap on encoder-only steps per outer step (>= 1; the authors use 100).
    aggressive_window : int
        The inner loop compares the mean per-data-point loss of consecutive windows of
        this many encoder steps and stops when a window is worse than the previous one
        (>= 1; the authors' image code uses 10, their text code 15).

    Returns
    -------
    History
        One :class:`EpochRecord` per epoch (per-data-point ELBO, reconstruction, KL,
        variant extras, weights, time, KL per dimension, aggressive-mode columns, AU and
        MI when monitored).

    Notes
    -----
    Encoder-only and decoder-only updates use the one optimiser: gradients are computed
    only for the parameter group being updated (``backward(inputs=...)``), and torch
    optimisers skip parameters without a gradient, so their moments stay untouched.
    Encoder steps do not advance the objective's schedule (as in the authors' code,
    the KL weight moves once per outer step).

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    data = check_data("data", data, floating=False) if _is_int(data) else check_data("data", data)
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    monitor_size = check_int("monitor_size", monitor_size, minimum=2)
    if clip_norm is not None:
        clip_norm = check_float("clip_norm", clip_norm, minimum=0.0, strict_minimum=True)
    if not isinstance(aggressive, bool):
        raise TypeError(
            f"aggressive must be a bool, got {type(aggressive).__name__} {aggressive!r}"
        )
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
    if seed is not None:
        pyro.set_rng_seed(check_int("seed", seed, minimum=0))
    gen = torch.Generator().manual_seed(
        seed if seed is not None else int(torch.randint(2**31, ()).item())
    )

    n = data.shape[0]
    guide_params, model_params = collect_params(model, guide, data[: min(n, batch_size)])
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
    )
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
            aggressive_epoch = state.aggressive
            if aggressive_epoch:
                _check_aggressive(state)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            per_dim: dict[str, torch.Tensor] = {}
            seen = 0.0
            outer = inner_total = 0
            not_summed = {*_weights(loss), "num_data"}  # weights are recorded, not summed
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                xb = data[perm[i : i + batch_size]]
                if aggressive_epoch:
                    inner_total += inner.run(state, data, batch_size, gen, clip_norm)
                    comps, dims = _train_step(state, xb, clip_norm, state.model_params)
                else:
                    comps, dims = _train_step(state, xb, clip_norm)
                outer += 1
                seen += comps.get("num_data", float(len(xb)))
                for k, v in comps.items():
                    if k not in not_summed:
                        sums[k] = sums.get(k, 0.0) + v
                for k, v in dims.items():
                    per_dim[k] = per_dim[k] + v if k in per_dim else v.clone()
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
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One optimisation step; returns the ELBO components and batch KL per dimension.

    ``params``: update only these (``None``: all). ``outer``: a decoder/joint step, which
    advances the objective's schedule and ``state.step``; encoder-only inner steps do not.
    """
    loss_fn = state.loss
    state.optimizer.zero_grad(set_to_none=True)
    checks = is_validation_enabled() and (
        state.validate or (state.step == 0 and state.inner_steps == 0)
    )
    with pyro.validation_enabled(checks):
        loss = loss_fn.differentiable_loss(state.model, state.guide, xb)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss ({float(loss.detach())}) at epoch {state.epoch}, step {state.step + 1}"
        )
    if params is None:
        loss.backward()
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
    else:
        loss.backward(inputs=list(params))
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    state.optimizer.step()
    if outer:
        if hasattr(loss_fn, "step"):
            loss_fn.step()
        state.step += 1
    last = getattr(loss_fn, "last", None)
    if last is not None:
        return dict(last.components), dict(last.kl_per_dim)
    value = float(loss.detach())
    return {"loss": value, "elbo": -value, "num_data": float(len(xb))}, {}


@dataclass
class _InnerLoop:
    """The encoder-only loop of aggressive training (He et al. 2019, Algorithm 1).

    Updates the guide parameters on fresh random minibatches (indices drawn uniformly,
    in O(batch_size) whatever the data size); every ``window`` steps the
    mean per-data-point loss of the window is compared with the previous window's, and
    the loop stops when it got worse (the authors' ``burn_pre_loss - burn_cur_loss < 0``)
    or after ``max_inner`` steps.
    """

    max_inner: int
    window: int

    def run(
        self,
        state: TrainState,
        data: torch.Tensor,
        batch_size: int,
        gen: torch.Generator,
        clip_norm: float | None,
    ) -> int:
        n = data.shape[0]
        previous, current, count = math.inf, 0.0, 0.0
        steps = 0
        while steps < self.max_inner:
            xb = data[torch.randint(n, (min(n, batch_size),), generator=gen)]
            comps, _ = _train_step(state, xb, clip_norm, state.guide_params, outer=False)
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

    ``monitor``: ``"default"`` (``default_sites``: the sites the objective reports),
    ``None`` (every latent site of the guide) or a list of site names. ``au=False``
    computes the mutual information only.
    """
    from pyrocollapse.diagnostics import active_units, latent_site_names, mutual_information

    if monitor == "default":
        sites = default_sites
    elif monitor is None:
        sites = latent_site_names(model, guide, x)
    else:
        sites = list(monitor)
    out: dict[str, float] = {}
    for site in sites:
        if au:
            out[f"active_units/{site}"] = float(
                active_units(model, guide, x, site=site).active.sum()
            )
        out[f"mi/{site}"] = float(
            mutual_information(model, guide, x, site=site, num_samples=1).total
        )
    return out
