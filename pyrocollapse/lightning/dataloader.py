"""The ``DataLoader`` of a data tensor or dataset, for Lightning's ``Trainer``."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from pyrocollapse._validation import check_int

__all__ = ["make_dataloader"]


def make_dataloader(
    data: Any,
    *,
    batch_size: int = 128,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over the rows of a data tensor.

    Under DDP, Lightning replaces the sampler with a ``DistributedSampler``, so each
    process sees its own shard (padded to equal length), reshuffled every epoch when
    ``shuffle``.

    Parameters
    ----------
    data : torch.Tensor or pyrocollapse.data.Dataset
        Shape ``(N, *event_shape)``, or a dataset (its ``data``).
    batch_size : int
        Rows per batch (per process under DDP), >= 1.
    shuffle : bool
        Reshuffle the rows every epoch (training); ``False`` for validation.
    drop_last : bool
        Drop a last, incomplete batch.
    num_workers : int
        Loader worker processes, >= 0. In-memory tensors need none (the default).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields one-element lists ``[x]`` with ``x`` of shape ``(batch_size, *event_shape)``,
        which :class:`VAELightningModule` unpacks.
    """
    tensor = getattr(data, "data", data) if not isinstance(data, torch.Tensor) else data
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            "data must be a torch.Tensor of shape (N, ...) or a pyrocollapse.data.Dataset, "
            f"got {type(data).__name__}"
        )
    if tensor.dim() < 1 or len(tensor) == 0:
        raise ValueError(f"data must have at least one row, got shape {tuple(tensor.shape)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_workers = check_int("num_workers", num_workers, minimum=0)
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
    return DataLoader(
        TensorDataset(tensor),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
    )
