"""Data sources of :func:`~pyrocollapse.train.fit`: data held in memory, or a loader."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import (
    check_data,
    check_int,
)
from pyrocollapse.program_data import (
    ProgramArgs,
    ProgramData,
    as_program_args,
    as_program_data,
    is_batch_source,
)


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


def _is_int(x: object) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dtype != torch.bool
