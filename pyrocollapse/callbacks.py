"""Collapse-aware callbacks for :func:`pyrocollapse.train.fit`.

Each callback watches the collapse indicators ``fit`` records at the end of every epoch
on its fixed monitoring subset, the number of active units ``active_units/<site>``
(Burda et al. 2016) and the mutual information ``mi/<site>`` (He et al. 2019), and acts
when they drop below thresholds:

* :class:`CollapseWarning` warns (a :class:`PosteriorCollapseWarning`);
* :class:`AggressiveOnCollapse` switches ``fit`` into aggressive inference-network
  training (He et al. 2019), which ``fit`` ends by itself when I_q stops rising;
* :class:`RollbackOnCollapse` restores the parameters and optimiser state of the last
  healthy epoch, then stops, continues or continues aggressively.

They share one detector, :class:`CollapseCallback`; a new reaction to collapse is a
subclass overriding :meth:`CollapseCallback.on_collapse`.

What they do is kept in their ``events``; the actions that no warning announces (a
switch to aggressive mode, a rollback) are also INFO records of the
``"pyrocollapse.callbacks"`` logger.

Example
-------
>>> from pyrocollapse.callbacks import CollapseWarning, RollbackOnCollapse
>>> callbacks = [CollapseWarning(min_active_units=2), RollbackOnCollapse(min_mi=0.05)]
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from pyrocollapse._validation import check_bool, check_choice, check_float, check_int, check_type
from pyrocollapse.train import Callback, EpochRecord, TrainState

__all__ = [
    "AggressiveOnCollapse",
    "Checkpoint",
    "CollapseCallback",
    "CollapseWarning",
    "PosteriorCollapseWarning",
    "RollbackOnCollapse",
]

_log = logging.getLogger("pyrocollapse.callbacks")


class PosteriorCollapseWarning(UserWarning):
    """Issued when the monitored collapse indicators drop below their thresholds."""


class CollapseCallback(Callback):
    """Base of the collapse-aware callbacks: detects collapse, subclasses react.

    An epoch counts as *collapsed* when ``active_units/<site> < min_active_units`` or
    ``mi/<site> < min_mi`` (either threshold may be ``None``, not both). After
    ``patience`` collapsed epochs in a row :meth:`on_collapse` is called (and again every
    further collapsed epoch); after a healthy one, :meth:`on_healthy`.

    Parameters
    ----------
    min_active_units : int or None
        Fewest active units (variance of the posterior mean above 0.01) a healthy
        epoch has, >= 1. Default 1: collapse means no active unit at all.
    min_mi : float or None
        Smallest I_q(x; z) in nats a healthy epoch has (>= 0).
    site : str
        Latent site to watch; ``fit`` must monitor it (its default does for the sites
        the objective reports; else pass ``monitor=[site]``).
    patience : int
        Collapsed epochs in a row before acting (>= 1), against noisy estimates.

    Attributes
    ----------
    events : list[tuple[int, str]]
        ``(epoch, message)`` for every action taken.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """

    def __init__(
        self,
        *,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
    ) -> None:
        if min_active_units is None and min_mi is None:
            raise ValueError(
                f"{type(self).__name__} needs a threshold: give min_active_units, min_mi or both"
            )
        self.min_active_units = (
            None
            if min_active_units is None
            else check_int("min_active_units", min_active_units, minimum=1)
        )
        self.min_mi = None if min_mi is None else check_float("min_mi", min_mi, minimum=0.0)
        if not isinstance(site, str):
            raise TypeError(
                f"site must be a latent site name (str), got {type(site).__name__} {site!r}"
            )
        if not site:
            raise ValueError("site must be a non-empty latent site name such as 'z', got ''")
        self.site = site
        self.patience = check_int("patience", patience, minimum=1)
        self.streak = 0
        self.events: list[tuple[int, str]] = []

    # -- detection -----------------------------------------------------------------------
    def reasons(self, record: EpochRecord) -> list[str]:
        """Why ``record`` counts as collapsed (empty when healthy).

        Raises
        ------
        ValueError
            When the record lacks a monitored value this callback needs.
        """
        out = []
        checks = (
            ("active_units", self.min_active_units, "active units", "{:g}"),
            ("mi", self.min_mi, "I_q(x; z)", "{:.4g} nats"),
        )
        for prefix, threshold, label, fmt in checks:
            if threshold is None:
                continue
            key = f"{prefix}/{self.site}"
            if key not in record.values:
                monitored = sorted(
                    {k.split("/", 1)[1] for k in record.values if k.startswith("mi/")}
                )
                raise ValueError(
                    f"{type(self).__name__} watches {key!r}, but epoch {record.epoch} has no such "
                    f"value (monitored sites: {', '.join(map(repr, monitored)) or 'none'}). Pass "
                    f"monitor=[{self.site!r}] to fit, or site= one of the monitored sites"
                )
            value = record.values[key]
            if value < threshold:
                out.append(
                    f"{label} of {self.site!r} {fmt.format(value)} < {fmt.format(threshold)}"
                )
        return out

    # -- Callback hooks ------------------------------------------------------------------
    def on_train_begin(self, state: TrainState) -> None:
        self.streak = 0

    def on_epoch_end(self, state: TrainState, record: EpochRecord) -> bool | None:
        reasons = self.reasons(record)
        if not reasons:
            self.streak = 0
            return self.on_healthy(state, record)
        self.streak += 1
        if self.streak >= self.patience:
            return self.on_collapse(state, record, reasons)
        return None

    # -- reactions -----------------------------------------------------------------------
    def on_healthy(self, state: TrainState, record: EpochRecord) -> bool | None:
        """Called after a healthy epoch; return True to stop training."""
        return None

    def on_collapse(
        self, state: TrainState, record: EpochRecord, reasons: list[str]
    ) -> bool | None:
        """Called after each collapsed epoch once ``patience`` is reached; return True to
        stop training."""
        raise NotImplementedError(f"{type(self).__name__} must implement on_collapse()")

    def _note(self, epoch: int, message: str, *, log: bool = True) -> str:
        """Add ``(epoch, message)`` to :attr:`events` and, unless ``log=False`` (a
        warning says it instead), make it an INFO record of the
        ``"pyrocollapse.callbacks"`` logger."""
        self.events.append((epoch, message))
        if log:
            _log.info("%s: %s", type(self).__name__, message)
        return message


class CollapseWarning(CollapseCallback):
    """Warn with a :class:`PosteriorCollapseWarning` when collapse sets in.

    Warns once per collapse episode (when ``patience`` collapsed epochs in a row are
    reached), and again only after a healthy epoch. Parameters as
    :class:`CollapseCallback`.
    """

    def on_collapse(self, state: TrainState, record: EpochRecord, reasons: list[str]) -> None:
        if self.streak == self.patience:
            message = self._note(
                record.epoch,
                f"posterior collapse at epoch {record.epoch}: " + "; ".join(reasons),
                log=False,
            )
            warnings.warn(message, PosteriorCollapseWarning, stacklevel=4)


class AggressiveOnCollapse(CollapseCallback):
    """Switch ``fit`` to aggressive inference-network training when collapse sets in.

    Sets ``state.aggressive``; from the next epoch ``fit`` updates the encoder alone
    until its loss stops improving before every decoder step, and ends the mode when
    I_q(x; z) stops rising (He et al. 2019; see :func:`pyrocollapse.train.fit`).

    Parameters
    ----------
    max_switches : int or None
        How many times to switch the mode on (>= 1; ``None``: every time collapse is
        detected while the mode is off). Default 1: aggressive phases are expensive.
    min_active_units, min_mi, site, patience :
        As for :class:`CollapseCallback`.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """

    def __init__(
        self,
        *,
        max_switches: int | None = 1,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
    ) -> None:
        super().__init__(
            min_active_units=min_active_units, min_mi=min_mi, site=site, patience=patience
        )
        self.max_switches = (
            None if max_switches is None else check_int("max_switches", max_switches, minimum=1)
        )
        self.switches = 0

    def on_train_begin(self, state: TrainState) -> None:
        super().on_train_begin(state)
        self.switches = 0

    def on_collapse(self, state: TrainState, record: EpochRecord, reasons: list[str]) -> None:
        if state.aggressive or (
            self.max_switches is not None and self.switches >= self.max_switches
        ):
            return
        state.aggressive = True
        self.switches += 1
        self._note(
            record.epoch,
            f"aggressive encoder training from epoch {record.epoch + 1}: " + "; ".join(reasons),
        )


@dataclass
class Checkpoint:
    """An in-memory copy of the training state at the end of one epoch.

    Holds copies of the trainable parameters, the optimiser state, the learning-rate
    scheduler's state (when fit has one), the objective's step count (its schedule
    position) and the previous-epoch MI. Module buffers (e.g. batch
    norm statistics) are not parameters and are not copied.
    """

    epoch: int
    params: list[torch.Tensor]
    optimizer: dict[str, Any]
    loss_step: int | None
    previous_mi: float | None
    scheduler: dict[str, Any] | None = None

    @classmethod
    def take(cls, state: TrainState) -> Checkpoint:
        """Copy ``state`` now."""
        check_type("state", state, TrainState, "a TrainState (the state fit hands to callbacks)")
        with torch.no_grad():
            params = [p.detach().clone() for p in state.guide_params + state.model_params]
        return cls(
            state.epoch,
            params,
            copy.deepcopy(state.optimizer.state_dict()),
            getattr(state.loss, "step_count", None),
            state.previous_mi,
            None if state.scheduler is None else copy.deepcopy(state.scheduler.state_dict()),
        )

    def restore(self, state: TrainState, *, schedule: bool = True) -> None:
        """Write the copy back into the live tensors, optimiser and objective."""
        with torch.no_grad():
            for live, saved in zip(
                state.guide_params + state.model_params, self.params, strict=True
            ):
                live.copy_(saved)
        state.optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if self.scheduler is not None and state.scheduler is not None:
            state.scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        if schedule and self.loss_step is not None:
            state.loss.step_count = self.loss_step
        state.previous_mi = self.previous_mi


class RollbackOnCollapse(CollapseCallback):
    """Roll back to the last healthy epoch when collapse sets in.

    After every healthy epoch an in-memory :class:`Checkpoint` is taken (parameters,
    optimiser state, the objective's schedule position). When collapse is detected
    the checkpoint is restored, the collapsed epoch's record gets the note
    ``rollback_to_epoch``, and training

    * stops (``then="stop"``, default): the model is left at its last healthy state;
    * continues (``then="continue"``), e.g. to see whether collapse recurs;
    * continues in aggressive mode (``then="aggressive"``), the remedy of He et al.
      (2019) for a lagging inference network.

    Without a healthy epoch yet there is nothing to restore: a
    :class:`PosteriorCollapseWarning` says so and ``then`` applies.

    Parameters
    ----------
    then : {"stop", "continue", "aggressive"}
        What to do after rolling back.
    max_rollbacks : int
        With ``then`` other than ``"stop"``, stop training when collapse is detected
        again after this many rollbacks (>= 1).
    restore_schedule : bool
        Also rewind the objective's KL schedule to the checkpoint (default); ``False``
        keeps its current position.
    min_active_units, min_mi, site, patience :
        As for :class:`CollapseCallback`.

    Attributes
    ----------
    checkpoint : Checkpoint or None
        The last healthy state.
    rollbacks : int
        Rollbacks done in this run.
    """

    def __init__(
        self,
        *,
        then: str = "stop",
        max_rollbacks: int = 3,
        restore_schedule: bool = True,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
    ) -> None:
        super().__init__(
            min_active_units=min_active_units, min_mi=min_mi, site=site, patience=patience
        )
        self.then = check_choice("then", then, ("stop", "continue", "aggressive"))
        self.max_rollbacks = check_int("max_rollbacks", max_rollbacks, minimum=1)
        self.restore_schedule = check_bool("restore_schedule", restore_schedule)
        self.checkpoint: Checkpoint | None = None
        self.rollbacks = 0

    def on_train_begin(self, state: TrainState) -> None:
        super().on_train_begin(state)
        self.checkpoint = None
        self.rollbacks = 0

    def on_healthy(self, state: TrainState, record: EpochRecord) -> None:
        self.checkpoint = Checkpoint.take(state)

    def on_collapse(self, state: TrainState, record: EpochRecord, reasons: list[str]) -> bool:
        why = "; ".join(reasons)
        ckpt = self.checkpoint
        if ckpt is None:
            message = self._note(
                record.epoch,
                f"posterior collapse at epoch {record.epoch} ({why}) before any healthy epoch: "
                "nothing to roll back to",
                log=False,
            )
            warnings.warn(message, PosteriorCollapseWarning, stacklevel=4)
            record.values["rollback_to_epoch"] = math.nan
            return self.then == "stop"
        ckpt.restore(state, schedule=self.restore_schedule)
        record.values["rollback_to_epoch"] = float(ckpt.epoch)
        self.streak = 0
        stop = self.then == "stop" or self.rollbacks >= self.max_rollbacks
        self.rollbacks += 1
        if not stop and self.then == "aggressive":
            state.aggressive = True
        self._note(
            record.epoch,
            f"collapse at epoch {record.epoch} ({why}): restored epoch {ckpt.epoch}, "
            + ("stopped" if stop else f"then {self.then}"),
        )
        return stop
