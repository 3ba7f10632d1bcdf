"""Hooks of :func:`~pyrocollapse.train.fit`: :class:`Callback` and :class:`PrintProgress`."""

from __future__ import annotations

import sys
from typing import Any

from pyrocollapse._validation import (
    check_int,
)
from pyrocollapse.train.history import EpochRecord
from pyrocollapse.train.state import TrainState


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
