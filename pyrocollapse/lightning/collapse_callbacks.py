"""The collapse callbacks of :mod:`pyrocollapse.callbacks`, run by Lightning's ``Trainer``.

:class:`LightningCollapseCallback` measures the active units and the mutual information
on a fixed monitoring subset at the end of every training epoch, as
:func:`pyrocollapse.train.fit` does, and hands them to a
:class:`~pyrocollapse.callbacks.CollapseCallback`; its subclasses wrap the ready ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from pyrocollapse._validation import check_int
from pyrocollapse.callbacks import (
    AggressiveOnCollapse,
    Checkpoint,
    CollapseCallback,
    CollapseWarning,
    PosteriorCollapseWarning,
    RollbackOnCollapse,
)
from pyrocollapse.lightning._backend import pl
from pyrocollapse.lightning.module import VAELightningModule
from pyrocollapse.program_data import ProgramData, as_program_data

__all__ = [
    "LightningAggressiveOnCollapse",
    "LightningCollapseCallback",
    "LightningCollapseWarning",
    "LightningRollbackOnCollapse",
]


#: The latest epoch's monitored values per trainer: ``{trainer: (epoch, {site: values})}``,
#: so that several collapse callbacks watching one site measure it once.
_MEASURED: weakref.WeakKeyDictionary[Any, tuple[int, dict[str, dict[str, float]]]] = (
    weakref.WeakKeyDictionary()
)


class LightningCollapseCallback(pl.Callback):
    """A collapse callback of :mod:`pyrocollapse.callbacks`, run by Lightning's ``Trainer``.

    At the end of every training epoch (after its validation) the active units
    ``active_units/<site>`` and the mutual information ``mi/<site>`` are measured on a
    fixed monitoring subset, exactly as :func:`pyrocollapse.train.fit` measures them for
    its callbacks, and handed to ``callback`` (its detector: thresholds, ``patience``,
    ``on_collapse`` and ``on_healthy``) in an :class:`~pyrocollapse.train.EpochRecord`,
    with a :class:`~pyrocollapse.train.TrainState` that holds the module's model, guide,
    objective and Lightning's optimiser. What the callback does to that state is what
    Lightning trains on: it stops training (``trainer.should_stop``) when the callback
    returns ``True``; a rollback restores parameters, optimiser state and KL-schedule
    position in place; and while ``state.aggressive`` is set, every training batch is
    preceded by encoder-only (guide) steps until the encoder's loss stops improving, and
    the mode ends when I_q(x; z) stops rising, as in ``fit`` (He et al. 2019).

    Logs ``collapse/active_units/<site>`` and ``collapse/mi/<site>`` every epoch,
    ``collapse/aggressive`` and ``collapse/inner_steps`` (encoder steps per batch) after
    an aggressive epoch, and ``collapse/rollback_to_epoch`` after a rollback. Under
    several processes rank 0's measurement is broadcast, so that every process decides
    alike. The callback's state (streak, events, aggressive mode, a rollback's saved
    epoch) is saved in Lightning checkpoints and restored on resume.

    Use the subclasses :class:`LightningCollapseWarning`,
    :class:`LightningAggressiveOnCollapse` and :class:`LightningRollbackOnCollapse`, or
    wrap any :class:`~pyrocollapse.callbacks.CollapseCallback` (a subclass of your own).

    Parameters
    ----------
    callback : pyrocollapse.callbacks.CollapseCallback
        The detector and its reaction.
    data : torch.Tensor, tuple, dict, DataLoader or None
        The monitoring data (its first ``monitor_size`` rows). ``None``: the first
        ``monitor_size`` rows of the validation loader, or of the training loader where
        Lightning has loaded no validation data by the end of the first epoch; read once.
    monitor_size : int
        Rows monitored, >= 2. Default 512.
    aggressive_max_inner, aggressive_window : int
        Encoder-only steps per batch at most, and the window over which their loss must
        improve, in aggressive mode (as ``fit``'s options of the same names).

    Attributes
    ----------
    callback : pyrocollapse.callbacks.CollapseCallback
    state : pyrocollapse.train.TrainState or None
        Set up at the end of the first epoch.
    events : list[tuple[int, str]]
        ``callback.events``: ``(epoch, message)`` for every action taken (epochs 1-based).

    Notes
    -----
    Aggressive mode runs in one process without gradient accumulation: with several
    processes, or ``accumulate_grad_batches > 1``, a callback that can turn it on raises
    ``ValueError`` when fitting starts. A rollback rewinds the objective's KL schedule
    (``restore_schedule``) but not ``trainer.global_step``. Monitoring draws from forks
    of torch's RNG, so watching leaves the training draws as they were.
    """

    def __init__(
        self,
        callback: CollapseCallback,
        *,
        data: Any = None,
        monitor_size: int = 512,
        aggressive_max_inner: int = 100,
        aggressive_window: int = 10,
    ) -> None:
        from pyrocollapse.train import _InnerLoop

        super().__init__()
        if not isinstance(callback, CollapseCallback):
            raise TypeError(
                "callback must be a pyrocollapse.callbacks.CollapseCallback (e.g. "
                f"CollapseWarning(min_active_units=1)), got {type(callback).__name__}"
            )
        self.callback = callback
        self.data = data
        self.monitor_size = check_int("monitor_size", monitor_size, minimum=2)
        self._inner = _InnerLoop(
            check_int("aggressive_max_inner", aggressive_max_inner, minimum=1),
            check_int("aggressive_window", aggressive_window, minimum=1),
        )
        self.state: Any = None
        self._x: ProgramData | None = None
        self._source: Any = None
        self._aggressive_epoch = False
        self._inner_steps = self._batches = 0
        self._restored: dict[str, Any] | None = None

    @property
    def events(self) -> list[tuple[int, str]]:
        return self.callback.events

    @property
    def state_key(self) -> str:
        cb = self.callback
        return self._generate_state_key(
            callback=type(cb).__name__,
            site=cb.site,
            min_active_units=cb.min_active_units,
            min_mi=cb.min_mi,
        )

    # -- Lightning hooks -------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, VAELightningModule):
            raise TypeError(
                f"{type(self).__name__} watches a VAELightningModule, got "
                f"{type(pl_module).__name__}"
            )
        if self._can_go_aggressive():
            why = None
            if trainer.world_size > 1:
                why = f"under {trainer.world_size} processes"
            elif trainer.accumulate_grad_batches != 1:
                why = f"with accumulate_grad_batches={trainer.accumulate_grad_batches}"
            if why is not None:
                raise ValueError(
                    f"{type(self).__name__} can switch to aggressive encoder training, which "
                    f"runs in one process without gradient accumulation, not {why}; use "
                    "LightningCollapseWarning or LightningRollbackOnCollapse(then='stop' or "
                    "'continue') there"
                )
        self.state = self._source = None
        self._aggressive_epoch = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._aggressive_epoch = self.state is not None and bool(self.state.aggressive)
        self._inner_steps = self._batches = 0
        if self._aggressive_epoch:
            from pyrocollapse.train import _LoaderSource

            if not self.state.guide_params or not self.state.model_params:
                raise ValueError(
                    "aggressive training alternates encoder (guide) and decoder (model) "
                    f"updates, but the guide has {len(self.state.guide_params)} and the model "
                    f"{len(self.state.model_params)} trainable parameters; both need some"
                )
            if self._source is None:
                self._source = _LoaderSource(trainer.train_dataloader, pl_module.device)
            self._source.new_epoch()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._aggressive_epoch:
            self._inner_steps += self._inner.run(self.state, self._source, None, None)
            self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pyrocollapse.train import EpochRecord

        if self.state is None:
            self._set_up(trainer, pl_module)
        state, site = self.state, self.callback.site
        epoch = trainer.current_epoch + 1
        values, measured = self._measure(trainer, pl_module, epoch)
        logged = dict(values) if measured else {}
        if self._aggressive_epoch:
            values["aggressive"] = 1.0
            values["inner_steps"] = self._inner_steps / max(self._batches, 1)
            logged.update(aggressive=1.0, inner_steps=values["inner_steps"])
        # fit's rule: aggressive mode ends when I_q(x; z) stops rising
        mi = values.get(f"mi/{site}")
        if mi is not None:
            reference = 0.0 if state.previous_mi is None else state.previous_mi
            if self._aggressive_epoch and mi < reference:
                state.aggressive = False
            state.previous_mi = mi
        state.epoch, state.step = epoch, trainer.global_step
        record = EpochRecord(epoch, values)
        state.history.append(record)
        with warnings.catch_warnings():
            if trainer.global_rank != 0:  # one warning per run, not one per process
                warnings.simplefilter("ignore", PosteriorCollapseWarning)
            stop = bool(self.callback.on_epoch_end(state, record))
        if "rollback_to_epoch" in record.values:
            logged["rollback_to_epoch"] = record.values["rollback_to_epoch"]
        if logged:
            pl_module.log_dict(
                {f"collapse/{k}": float(v) for k, v in logged.items()},
                on_step=False,
                on_epoch=True,
            )
        if stop:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        cb = self.callback
        out: dict[str, Any] = {
            "streak": cb.streak,
            "events": [[int(e), str(m)] for e, m in cb.events],
            "aggressive": bool(self.state.aggressive),
            "previous_mi": self.state.previous_mi,
            "inner_steps": int(self.state.inner_steps),
        }
        for name in ("switches", "rollbacks"):
            if hasattr(cb, name):
                out[name] = int(getattr(cb, name))
        saved = getattr(cb, "checkpoint", None)
        if isinstance(saved, Checkpoint):
            out["checkpoint"] = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None

    # -- helpers -----------------------------------------------------------------------------
    def _can_go_aggressive(self) -> bool:
        cb = self.callback
        return isinstance(cb, AggressiveOnCollapse) or getattr(cb, "then", None) == "aggressive"

    def _set_up(self, trainer: pl.Trainer, pl_module: VAELightningModule) -> None:
        """The monitoring data and the TrainState the callback acts on (then the state a
        resumed run saved)."""
        from pyrocollapse.train import History, TrainState, collect_params

        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"{type(self).__name__} acts on one optimiser, the module has "
                f"{len(trainer.optimizers)}"
            )
        self._x = self._monitor_data(trainer).to(pl_module.device)
        model, guide = pl_module.elbo_module.model, pl_module.elbo_module.guide
        head = self._x.head(min(self._x.n, 64))
        with _forked_rng(pl_module.device):
            guide_params, model_params = collect_params(model, guide, *head.args, **head.kwargs)
        configs = trainer.lr_scheduler_configs
        self.state = TrainState(
            model=model,
            guide=guide,
            loss=pl_module.objective,
            optimizer=trainer.optimizers[0],
            history=History(),
            epochs=max(int(trainer.max_epochs or 0), trainer.current_epoch + 1),
            guide_params=guide_params,
            model_params=model_params,
            device=pl_module.device,
            scheduler=configs[0].scheduler if len(configs) == 1 else None,
        )
        self.callback.on_train_begin(self.state)
        restored, self._restored = self._restored, None
        if restored:
            cb, state = self.callback, self.state
            cb.streak = int(restored["streak"])
            cb.events[:] = [(int(e), str(m)) for e, m in restored["events"]]
            state.aggressive = bool(restored["aggressive"])
            state.previous_mi = restored["previous_mi"]
            state.inner_steps = int(restored["inner_steps"])
            for name in ("switches", "rollbacks"):
                if name in restored and hasattr(cb, name):
                    setattr(cb, name, int(restored[name]))
            if "checkpoint" in restored and hasattr(cb, "checkpoint"):
                cb.checkpoint = Checkpoint(**restored["checkpoint"])

    def _monitor_data(self, trainer: pl.Trainer) -> ProgramData:
        from pyrocollapse.train import _LoaderSource

        if self.data is not None:
            x = as_program_data(self.data, "data")
            return x.take(torch.arange(min(x.n, self.monitor_size)))
        loader = trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        if loader is None:
            loader = trainer.train_dataloader
        with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws a seed
            x, _ = _LoaderSource(loader, None).monitor(None, self.monitor_size)
        return x

    def _measure(
        self, trainer: pl.Trainer, pl_module: VAELightningModule, epoch: int
    ) -> tuple[dict[str, float], bool]:
        """``active_units/<site>`` and ``mi/<site>`` this epoch; ``True`` when measured
        here (not taken from another callback watching the same site)."""
        from pyrocollapse.train import _MONITOR_CHUNK, _monitor

        site = self.callback.site
        last = _MEASURED.get(trainer)
        if last is not None and last[0] == epoch and site in last[1]:
            return dict(last[1][site]), False
        model, guide = pl_module.elbo_module.model, pl_module.elbo_module.guide
        with _forked_rng(pl_module.device), torch.no_grad():
            values = _monitor(model, guide, self._x, [site], [], batch_size=_MONITOR_CHUNK)
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        sites = last[1] if last is not None and last[0] == epoch else {}
        sites[site] = dict(values)
        _MEASURED[trainer] = (epoch, sites)
        return dict(values), True


class LightningCollapseWarning(LightningCollapseCallback):
    """Warn (a :class:`~pyrocollapse.callbacks.PosteriorCollapseWarning`) when collapse
    sets in: :class:`pyrocollapse.callbacks.CollapseWarning` under Lightning.

    Parameters
    ----------
    min_active_units, min_mi, site, patience :
        As for :class:`~pyrocollapse.callbacks.CollapseWarning`.
    data, monitor_size :
        As for :class:`LightningCollapseCallback`.
    """

    def __init__(
        self,
        *,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
        data: Any = None,
        monitor_size: int = 512,
    ) -> None:
        super().__init__(
            CollapseWarning(
                min_active_units=min_active_units, min_mi=min_mi, site=site, patience=patience
            ),
            data=data,
            monitor_size=monitor_size,
        )


class LightningAggressiveOnCollapse(LightningCollapseCallback):
    """Switch to aggressive inference-network training when collapse sets in:
    :class:`pyrocollapse.callbacks.AggressiveOnCollapse` under Lightning.

    From the next epoch every training batch is preceded by encoder-only steps, until
    I_q(x; z) stops rising (He et al. 2019). One process, no gradient accumulation.

    Parameters
    ----------
    max_switches, min_active_units, min_mi, site, patience :
        As for :class:`~pyrocollapse.callbacks.AggressiveOnCollapse`.
    data, monitor_size, aggressive_max_inner, aggressive_window :
        As for :class:`LightningCollapseCallback`.
    """

    def __init__(
        self,
        *,
        max_switches: int | None = 1,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
        data: Any = None,
        monitor_size: int = 512,
        aggressive_max_inner: int = 100,
        aggressive_window: int = 10,
    ) -> None:
        super().__init__(
            AggressiveOnCollapse(
                max_switches=max_switches,
                min_active_units=min_active_units,
                min_mi=min_mi,
                site=site,
                patience=patience,
            ),
            data=data,
            monitor_size=monitor_size,
            aggressive_max_inner=aggressive_max_inner,
            aggressive_window=aggressive_window,
        )


class LightningRollbackOnCollapse(LightningCollapseCallback):
    """Roll back to the last healthy epoch when collapse sets in:
    :class:`pyrocollapse.callbacks.RollbackOnCollapse` under Lightning.

    Restores the parameters, the optimiser state and (``restore_schedule``) the KL
    schedule's position saved after the last healthy epoch, then stops training
    (``then="stop"``), continues, or continues aggressively (one process only).

    Parameters
    ----------
    then, max_rollbacks, restore_schedule, min_active_units, min_mi, site, patience :
        As for :class:`~pyrocollapse.callbacks.RollbackOnCollapse`.
    data, monitor_size, aggressive_max_inner, aggressive_window :
        As for :class:`LightningCollapseCallback`.
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
        data: Any = None,
        monitor_size: int = 512,
        aggressive_max_inner: int = 100,
        aggressive_window: int = 10,
    ) -> None:
        super().__init__(
            RollbackOnCollapse(
                then=then,
                max_rollbacks=max_rollbacks,
                restore_schedule=restore_schedule,
                min_active_units=min_active_units,
                min_mi=min_mi,
                site=site,
                patience=patience,
            ),
            data=data,
            monitor_size=monitor_size,
            aggressive_max_inner=aggressive_max_inner,
            aggressive_window=aggressive_window,
        )


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Draws inside leave torch's RNG (CPU, and ``device``'s when CUDA) as it was."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield
