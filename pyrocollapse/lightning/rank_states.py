"""A callback with which every process of a run saves its replica's state (to compare)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyrocollapse.lightning._backend import pl
from pyrocollapse.lightning.module import _batch_data, _rows

__all__ = ["RankStateDump"]


class RankStateDump(pl.Callback):
    """Each process writes ``dirpath/rank{global_rank}.pt`` when fitting ends.

    A check that data-parallel training kept the replicas identical: compare the files
    of the ranks (see ``tests/lightning/test_lightning.py``). Each file holds a dict with

    ``start`` / ``final``
        The module's ``state_dict`` (on the CPU) when fitting started (after DDP's
        broadcast from rank 0) and when it ended.
    ``global_step``, ``objective_step_count``
        Optimisation steps taken, and the KL schedule's step counter.
    ``rows_seen``, ``data_sum``
        Rows of training data this process saw and their sum (ranks see different shards).

    Parameters
    ----------
    dirpath : str or os.PathLike
        Folder to write into (created if missing).
    """

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        super().__init__()
        if not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(f"dirpath must be a path, got {type(dirpath).__name__}")
        self.dirpath = Path(dirpath)
        self._start: dict[str, torch.Tensor] = {}
        self._rows = 0
        self._sum = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = _cpu_state(pl_module)
        self._rows, self._sum = 0, 0.0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        call = _batch_data(batch)
        self._rows += _rows(call)
        self._sum += sum(float(t.double().sum()) for t in call.tensors())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pyrocollapse._io import atomic_write

        state = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "start": self._start,
            "final": _cpu_state(pl_module),
            "global_step": trainer.global_step,
            "objective_step_count": getattr(
                getattr(pl_module, "objective", None), "step_count", None
            ),
            "rows_seen": self._rows,
            "data_sum": self._sum,
        }
        atomic_write(
            self.dirpath / f"rank{trainer.global_rank}.pt", lambda tmp: torch.save(state, tmp)
        )


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
