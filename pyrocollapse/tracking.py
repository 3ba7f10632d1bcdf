"""Experiment tracking: send what :func:`pyrocollapse.train.fit` records to TensorBoard,
MLflow or a tracker of your own.

``fit(..., tracker=t)`` calls

* ``t.log_hparams(dict)`` once before the first epoch, with fit's settings (epochs,
  batch size, seed, optimiser and learning rate, objective and its hyperparameters,
  aggressive mode, device, ...);
* ``t.log_scalars(epoch, dict)`` after every epoch (after the callbacks, so that their
  notes are included), with every value of the epoch's
  :class:`~pyrocollapse.train.EpochRecord`: the History columns (``elbo``,
  ``reconstruction``, ``kl``, ``kl/<site>``, weights, ``lr``, ``time``,
  ``active_units/<site>``, ``mi/<site>``, ...) and the KL per dimension as
  ``kl/<site>/<d>``, exactly the columns of :meth:`History.to_dataframe
  <pyrocollapse.train.History.to_dataframe>` (see :func:`epoch_scalars`);
* when the tracker's ``log_steps`` is ``N >= 1``, ``t.log_scalars(step, dict)`` every
  ``N`` decoder (outer) steps with the step's per-data-point terms and weights, each
  name prefixed ``step/`` (``step/loss``, ``step/elbo``, ``step/kl``, ``step/kl_weight``,
  ``step/lr``, ...), ``step`` counting decoder steps from the start of training.

``fit`` does not close the tracker: whoever made it does (``close()``, or use it as a
context manager), so one tracker can follow several calls.

A tracker is a :class:`Tracker` subclass or any object with ``log_scalars`` (and,
optionally, ``log_hparams``, ``close`` and ``log_steps``).

Example
-------
>>> from pyrocollapse.tracking import MemoryTracker
>>> tracker = MemoryTracker()
>>> tracker.log_scalars(1, {"elbo": -90.0, "kl": 3.5})
>>> tracker.scalars
[(1, {'elbo': -90.0, 'kl': 3.5})]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MLflowTracker",
    "MemoryTracker",
    "TensorBoardTracker",
    "Tracker",
    "TrackerLike",
    "check_tracker",
    "epoch_scalars",
    "flatten_hparams",
]


@runtime_checkable
class TrackerLike(Protocol):
    """What ``fit`` needs of a tracker (``log_hparams``, ``close`` and ``log_steps`` are
    used where present)."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...


class Tracker:
    """Base class of trackers: receives scalars and hyperparameters from ``fit``.

    Subclasses implement :meth:`log_scalars`, and :meth:`log_hparams` and :meth:`close`
    where they have something to do.

    Parameters
    ----------
    log_steps : int
        Also log the loss every this many decoder steps (0, the default: per epoch only).
    """

    def __init__(self, *, log_steps: int = 0) -> None:
        self.log_steps = _check_log_steps(log_steps)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (name -> value) at ``step``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_scalars()")

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Record the run's settings (nested dicts allowed; see :func:`flatten_hparams`)."""

    def close(self) -> None:
        """Flush and release what the tracker holds."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryTracker(Tracker):
    """Keeps everything in lists (for tests and notebooks).

    Attributes
    ----------
    scalars : list[tuple[int, dict[str, float]]]
        Every :meth:`log_scalars` call, in order (per-step calls hold ``step/`` names).
    hparams : dict
        The merged :meth:`log_hparams` calls, flattened.
    closed : bool
    """

    def __init__(self, *, log_steps: int = 0) -> None:
        super().__init__(log_steps=log_steps)
        self.scalars: list[tuple[int, dict[str, float]]] = []
        self.hparams: dict[str, Any] = {}
        self.closed = False

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.scalars.append((int(step), dict(scalars)))

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams.update(flatten_hparams(hparams))

    def close(self) -> None:
        self.closed = True

    def epochs(self) -> list[tuple[int, dict[str, float]]]:
        """The per-epoch calls (those without ``step/`` names)."""
        return [(s, d) for s, d in self.scalars if not any(k.startswith("step/") for k in d)]

    def steps(self) -> list[tuple[int, dict[str, float]]]:
        """The per-step calls (``log_steps``)."""
        return [(s, d) for s, d in self.scalars if any(k.startswith("step/") for k in d)]


class TensorBoardTracker(Tracker):
    """Write to TensorBoard event files through ``torch.utils.tensorboard.SummaryWriter``.

    Needs the ``tensorboard`` package (``pip install tensorboard``); without it the
    constructor raises an ``ImportError`` saying so. View with ``tensorboard --logdir
    <log_dir>``.

    Every scalar becomes a tag of its own (``elbo``, ``kl/z``, ``kl/z/3``, ``mi/z``,
    ``step/loss``, ...). The hyperparameters are kept and written on :meth:`close`, to
    TensorBoard's HParams tab, with the last epoch's ``elbo``, ``reconstruction``,
    ``kl``, ``active_units/<site>`` and ``mi/<site>`` as its metrics (``final/<name>``).

    Parameters
    ----------
    log_dir : path or None
        Folder of the event files (``None``: ``runs/<date>_<host><comment>``, as
        ``SummaryWriter`` chooses).
    log_steps : int
        As for :class:`Tracker`.
    comment : str
        Suffix of the default ``log_dir``.
    flush_secs : float
        Seconds between flushes of the event file to disk.

    Attributes
    ----------
    writer : torch.utils.tensorboard.SummaryWriter
    log_dir : str
    """

    def __init__(
        self,
        log_dir: Any = None,
        *,
        log_steps: int = 0,
        comment: str = "",
        flush_secs: float = 30,
    ) -> None:
        super().__init__(log_steps=log_steps)
        summary_writer = _summary_writer()
        self.writer = summary_writer(
            log_dir=None if log_dir is None else str(log_dir),
            comment=comment,
            flush_secs=flush_secs,
        )
        self.log_dir = str(self.writer.log_dir)
        self._hparams: dict[str, Any] = {}
        self._final: dict[str, float] = {}
        self._closed = False

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        step = int(step)
        per_step = False
        for name, value in scalars.items():
            per_step = per_step or str(name).startswith("step/")
            self.writer.add_scalar(str(name), float(value), global_step=step)
        if not per_step:
            self._final = {
                f"final/{k}": float(v) for k, v in scalars.items() if _is_final_metric(str(k))
            }

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._hparams.update(flatten_hparams(hparams))

    def flush(self) -> None:
        """Write what is buffered to the event file now."""
        self.writer.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._hparams:
            values = {k: _hparam_value(v) for k, v in self._hparams.items()}
            final = {k: v for k, v in self._final.items() if math.isfinite(v)}
            self.writer.add_hparams(values, final, run_name=".")
        self.writer.close()


class MLflowTracker(Tracker):
    """Log to MLflow: scalars as metrics (``mlflow.log_metrics``), hyperparameters as
    parameters (``mlflow.log_params``).

    Needs the ``mlflow`` package (``pip install mlflow``); without it the constructor
    raises an ``ImportError`` saying so. Logs to the active MLflow run when there is
    one (and leaves it open on :meth:`close`); else starts a run, which :meth:`close`
    ends.

    Metric names keep what MLflow allows (letters, digits, ``_ - . / :`` and spaces);
    other characters become ``_``. A parameter already logged in the run is not logged
    again (MLflow refuses to change one); values are written as text, cut to 500
    characters.

    Parameters
    ----------
    experiment : str or None
        Experiment name (``mlflow.set_experiment``); ``None``: the current one.
    run_name : str or None
        Name of the run started (when none is active).
    tracking_uri : str or None
        ``mlflow.set_tracking_uri`` (``None``: MLflow's default, e.g. ``MLFLOW_TRACKING_URI``
        or ``./mlruns``).
    tags : dict or None
        Tags of the run started.
    log_steps : int
        As for :class:`Tracker`.

    Attributes
    ----------
    run : mlflow.ActiveRun
        The run logged to.
    """

    def __init__(
        self,
        *,
        experiment: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        log_steps: int = 0,
    ) -> None:
        super().__init__(log_steps=log_steps)
        mlflow = _mlflow()
        self._mlflow = mlflow
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if experiment is not None:
            mlflow.set_experiment(experiment)
        active = mlflow.active_run()
        self._owns_run = active is None
        self.run = (
            mlflow.start_run(run_name=run_name, tags=None if tags is None else dict(tags))
            if active is None
            else active
        )
        self._params: dict[str, str] = {}
        self._closed = False

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        metrics = {_mlflow_key(str(k)): float(v) for k, v in scalars.items()}
        if metrics:
            self._mlflow.log_metrics(metrics, step=int(step))

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        new = {}
        for k, v in flatten_hparams(hparams).items():
            key = _mlflow_key(k)
            if key not in self._params:
                text = str(v)
                new[key] = text if len(text) <= 500 else text[:497] + "..."
        if new:
            self._mlflow.log_params(new)
            self._params.update(new)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_run:
            self._mlflow.end_run()


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def epoch_scalars(record: Any) -> dict[str, float]:
    """Every value of an :class:`~pyrocollapse.train.EpochRecord` as one flat dict: its
    ``values`` and, per latent site, the KL per dimension as ``kl/<site>/<d>`` (the
    columns of :meth:`History.to_dataframe <pyrocollapse.train.History.to_dataframe>`
    but ``epoch``)."""
    out = {str(k): float(v) for k, v in record.values.items()}
    for site, arr in record.kl_per_dim.items():
        for d, v in enumerate(arr):
            out[f"kl/{site}/{d}"] = float(v)
    return out


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to ``outer.inner`` names; ``None``, numbers, strings and
    bools kept, anything else (lists, tuples, objects) as its ``str``."""
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a dict, got {type(hparams).__name__}")
    out: dict[str, Any] = {}
    for k, v in hparams.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_hparams(v, name + "."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[name] = v
        else:
            out[name] = str(v)
    return out


def check_tracker(tracker: object) -> Any:
    """``tracker`` checked: ``None`` or an object with a callable ``log_scalars``."""
    if tracker is None:
        return None
    if isinstance(tracker, type):
        raise TypeError(
            f"tracker must be a tracker instance, got the class {tracker.__name__}; create one, "
            f"e.g. tracker={tracker.__name__}(...)"
        )
    if not callable(getattr(tracker, "log_scalars", None)):
        raise TypeError(
            "tracker must be None or a pyrocollapse.tracking.Tracker (an object with "
            f"log_scalars(step, dict)), got {type(tracker).__name__}"
        )
    _check_log_steps(getattr(tracker, "log_steps", 0), "tracker.log_steps")
    return tracker


def _check_log_steps(value: object, name: str = "log_steps") -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0: per epoch only), got {value!r}")
    return int(value)


_FINAL = ("elbo", "reconstruction", "kl")


def _is_final_metric(name: str) -> bool:
    return name in _FINAL or name.startswith(("active_units/", "mi/"))


def _hparam_value(value: Any) -> Any:
    """A value TensorBoard's HParams accept (bool, int, float or str)."""
    if value is None:
        return "None"
    return value if isinstance(value, (bool, int, float, str)) else str(value)


_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-./: ]")


def _mlflow_key(name: str) -> str:
    return _MLFLOW_BAD.sub("_", name)


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "TensorBoardTracker needs the tensorboard package, which is not installed: "
            f"pip install tensorboard ({e})"
        ) from e
    return SummaryWriter


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as e:
        raise ImportError(
            f"MLflowTracker needs the mlflow package, which is not installed: pip install mlflow ({e})"
        ) from e
    return mlflow
