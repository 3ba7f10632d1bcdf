"""The arguments of Pyro programs: the ``data`` that :func:`~pyrocollapse.fit` and the
diagnostics accept, split into the batches that ``model(*args, **kwargs)`` takes.

Pyro programs take whatever arguments their author chose, as ``SVI.step(*args,
**kwargs)`` passes them: one tensor ``x`` (a VAE), ``(xs, ys)`` (a conditional VAE),
``xs`` with ``ys=None`` for unlabelled batches (the semi-supervised M2 VAE), or
sequences, masks and lengths (a deep Markov model). The forms of ``data`` accepted:

* a ``torch.Tensor`` (or NumPy array) of shape ``(N, ...)``: one positional argument;
* a tuple or list: positional arguments, ``model(*data)``;
* a dict with string keys: keyword arguments, ``model(**data)``;
* a ``torch.utils.data.DataLoader``, or any other re-iterable of batches, whose batches
  are a tensor, a tuple/list (positional arguments) or a dict (keyword arguments).

In a tuple, list or dict held in memory, every tensor (or NumPy array) with at least one
dimension is *batched*: split along dim 0, which must have the same size N in all of
them; every other value (``None``, numbers, strings, 0-d tensors) is passed unchanged
to every batch. NumPy arrays become tensors. Floating data take the floating dtype of the
model's parameters when the caller passes it (``dtype``; fit, the diagnostics and the
summaries do), said once on the ``"pyrocollapse"`` logger at INFO; integer data (counts,
token ids) stay integer. Without ``dtype``, floating NumPy arrays take torch's default
dtype and tensors keep theirs. Sparse tensors, tensors on the ``meta`` device and 0-d
data are refused with an error naming the argument.

:class:`ProgramData` is such data held in memory (minibatches, chunks, row subsets);
:class:`ProgramArgs` is one call's arguments. :func:`as_program_data` and
:func:`as_program_args` build them, checking the values and naming the argument at fault.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_data

__all__ = ["ProgramArgs", "ProgramData", "as_program_args", "as_program_data", "is_batch_source"]

#: A position in the arguments: ``("arg", i)`` for ``args[i]``, ``("kw", name)`` for a keyword.
Slot = tuple[str, Any]

_ACCEPTED = (
    "a torch.Tensor, a NumPy array, a tuple/list of positional arguments, a dict of keyword "
    "arguments, or a torch.utils.data.DataLoader (or other re-iterable) of such batches"
)


def _label(name: str, slot: Slot) -> str:
    kind, key = slot
    return f"{name}[{key!r}]" if kind == "kw" else f"{name}[{key}]"


def _describe_value(v: object) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
    if v is None or isinstance(v, (bool, int, float, str)):
        return repr(v)
    return type(v).__name__


@dataclass(frozen=True)
class ProgramArgs:
    """The arguments of one call, ``model(*args, **kwargs)``.

    Attributes
    ----------
    args : tuple
        Positional arguments.
    kwargs : dict[str, Any]
        Keyword arguments.
    rows : int or None
        Number of rows (size of dim 0 of the batched tensors) where known: batches cut
        from :class:`ProgramData`; ``None`` for a loader's batch, whose tensors need not
        share a leading size (e.g. time-major sequences next to their lengths).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None

    def items(self) -> Iterator[tuple[Slot, Any]]:
        """Every argument with its slot, positional ones first."""
        for i, v in enumerate(self.args):
            yield ("arg", i), v
        for k, v in self.kwargs.items():
            yield ("kw", k), v

    def tensors(self) -> list[torch.Tensor]:
        """The tensor arguments, in order."""
        return [v for _, v in self.items() if isinstance(v, torch.Tensor)]

    def call(self, fn: Callable[..., Any]) -> Any:
        """``fn(*args, **kwargs)``."""
        return fn(*self.args, **self.kwargs)

    def to(self, device: torch.device | None) -> ProgramArgs:
        """Every tensor argument moved to ``device`` (``None``: unchanged)."""
        if device is None or all(t.device == device for t in self.tensors()):
            return self
        nb = device.type == "cuda"

        def move(v: Any) -> Any:
            return v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v

        return ProgramArgs(
            tuple(move(v) for v in self.args),
            {k: move(v) for k, v in self.kwargs.items()},
            self.rows,
        )

    @property
    def single_tensor(self) -> torch.Tensor | None:
        """The argument when the call takes exactly one positional tensor, else ``None``."""
        if len(self.args) == 1 and not self.kwargs and isinstance(self.args[0], torch.Tensor):
            return self.args[0]
        return None

    def leading_size(self) -> int | None:
        """``rows``, else dim 0 of the first tensor with a dimension (``None``: none)."""
        if self.rows is not None:
            return self.rows
        for t in self.tensors():
            if t.dim() >= 1:
                return int(t.shape[0])
        return None

    def describe(self) -> str:
        """A short description such as ``"args (tensor (8, 4) float32, None)"``."""
        parts = [_describe_value(v) for v in self.args]
        parts += [f"{k}={_describe_value(v)}" for k, v in self.kwargs.items()]
        return f"({', '.join(parts)})"

    def to_payload(self) -> dict[str, Any]:
        """Tensors moved to the host and plain values, for ``torch.save`` (``weights_only``)."""

        def host(v: Any) -> Any:
            return v.detach().cpu() if isinstance(v, torch.Tensor) else v

        return {
            "args": [host(v) for v in self.args],
            "kwargs": {k: host(v) for k, v in self.kwargs.items()},
            "rows": self.rows,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ProgramArgs:
        """Inverse of :meth:`to_payload`."""
        return cls(tuple(payload["args"]), dict(payload["kwargs"]), payload.get("rows"))


@dataclass(frozen=True)
class _Part:
    """Arguments whose batched slots share the leading size ``n``."""

    template: ProgramArgs
    batched: tuple[Slot, ...]
    n: int

    def _with(self, values: dict[Slot, torch.Tensor], rows: int) -> ProgramArgs:
        args = tuple(values.get(("arg", i), v) for i, v in enumerate(self.template.args))
        kwargs = {k: values.get(("kw", k), v) for k, v in self.template.kwargs.items()}
        return ProgramArgs(args, kwargs, rows)

    def _get(self, slot: Slot) -> torch.Tensor:
        kind, key = slot
        return self.template.args[key] if kind == "arg" else self.template.kwargs[key]

    def take(self, idx: torch.Tensor) -> ProgramArgs:
        values = {}
        for s in self.batched:
            t = self._get(s)
            values[s] = t[idx.to(t.device)]
        return self._with(values, int(idx.numel()))

    def slice(self, start: int, stop: int) -> ProgramArgs:
        stop = min(stop, self.n)
        return self._with({s: self._get(s)[start:stop] for s in self.batched}, stop - start)

    def split(self, size: int) -> Iterator[ProgramArgs]:
        pieces = {s: self._get(s).split(size) for s in self.batched}
        for i in range(len(next(iter(pieces.values())))):
            values = {s: p[i] for s, p in pieces.items()}
            yield self._with(values, int(next(iter(values.values())).shape[0]))

    def signature(self) -> tuple[Any, ...]:
        """What two parts must share to be concatenated."""
        out: list[Any] = [len(self.template.args), tuple(self.template.kwargs)]
        for slot, v in self.template.items():
            if slot in self.batched:
                out.append((slot, tuple(v.shape[1:]), v.dtype, v.device))
            elif isinstance(v, torch.Tensor):
                out.append((slot, "tensor", id(v)))
            else:
                try:
                    hash(v)
                    out.append((slot, type(v), v))
                except TypeError:
                    out.append((slot, "object", id(v)))
        return tuple(out)


class ProgramData:
    """Program arguments held in memory, batched along dim 0: a data set of ``n`` rows.

    Usually one block of arguments whose batched tensors share the leading size; data
    read from a loader whose batches differ in which arguments they pass (the M2 VAE's
    labelled batches with ``ys`` and unlabelled ones with ``ys=None``) is a sequence of
    such blocks, and chunks never straddle two blocks.

    Build it with :func:`as_program_data`.
    """

    def __init__(self, parts: list[_Part], *, name: str = "data", plain: bool = False) -> None:
        if not parts:
            raise ValueError(f"{name} holds no rows")
        self.parts = parts
        self.name = name
        #: True when the data was given as one plain tensor (the classic form)
        self.plain = plain

    @property
    def n(self) -> int:
        """Number of rows (data points along dim 0)."""
        return sum(p.n for p in self.parts)

    def __len__(self) -> int:
        return self.n

    @property
    def tensor(self) -> torch.Tensor | None:
        """The data tensor when the data is one positional tensor, else ``None``."""
        if len(self.parts) == 1:
            return self.parts[0].template.single_tensor
        return None

    @property
    def device(self) -> torch.device:
        """The device of the first batched tensor."""
        part = self.parts[0]
        return part._get(part.batched[0]).device

    def to(self, device: torch.device | None) -> ProgramData:
        """Every tensor moved to ``device`` (``None``: unchanged)."""
        if device is None:
            return self
        parts = [_Part(p.template.to(device), p.batched, p.n) for p in self.parts]
        return ProgramData(parts, name=self.name, plain=self.plain)

    def describe(self) -> str:
        """The arguments of the first block with their full shapes."""
        extra = f" (and {len(self.parts) - 1} more block(s))" if len(self.parts) > 1 else ""
        return self.parts[0].template.describe() + extra

    def chunks(self, size: int, device: torch.device | None = None) -> Iterator[ProgramArgs]:
        """Consecutive chunks of at most ``size`` rows, each moved to ``device``."""
        for part in self.parts:
            for chunk in part.split(size):
                yield chunk.to(device)

    def head(self, k: int) -> ProgramArgs:
        """The first ``min(k, rows of the first block)`` rows, as one call's arguments."""
        return self.parts[0].slice(0, k)

    def take(self, idx: torch.Tensor) -> ProgramData:
        """Rows ``idx`` (a 1-d index tensor into ``range(n)``), in that order within a block."""
        if len(self.parts) == 1:
            return ProgramData(
                [_part_of(self.parts[0].take(idx))], name=self.name, plain=self.plain
            )
        parts, start = [], 0
        idx = idx.cpu()
        for part in self.parts:
            mine = idx[(idx >= start) & (idx < start + part.n)] - start
            if mine.numel():
                parts.append(_part_of(part.take(mine)))
            start += part.n
        return ProgramData(parts, name=self.name)

    def rows(self, idx: torch.Tensor) -> ProgramArgs:
        """Rows ``idx`` of a single-block data set as one call's arguments."""
        if len(self.parts) != 1:
            raise ValueError(
                f"{self.name} passes different arguments in different batches, so rows of "
                "several batches cannot make one call"
            )
        return self.parts[0].take(idx)

    def to_payload(self) -> list[dict[str, Any]]:
        """The blocks, for ``torch.save`` with ``weights_only`` loading."""
        return [p.template.to_payload() for p in self.parts]

    @classmethod
    def from_payload(cls, payload: list[dict[str, Any]], name: str = "data") -> ProgramData:
        """Inverse of :meth:`to_payload`."""
        return cls([_part_of(ProgramArgs.from_payload(p)) for p in payload], name=name)


def _part_of(args: ProgramArgs) -> _Part:
    """A block from arguments already checked (batched = tensors with a dimension)."""
    batched = tuple(s for s, v in args.items() if isinstance(v, torch.Tensor) and v.dim() >= 1)
    n = args.leading_size()
    return _Part(ProgramArgs(args.args, args.kwargs, n), batched, int(n or 0))


# --------------------------------------------------------------------------------------
# Building and checking
# --------------------------------------------------------------------------------------
def is_batch_source(data: object) -> bool:
    """Whether ``data`` is a loader (a ``DataLoader`` or another re-iterable of batches)
    rather than data held in memory."""
    if isinstance(data, torch.utils.data.DataLoader):
        return True
    if isinstance(data, (torch.Tensor, np.ndarray, tuple, list, dict, str, bytes)):
        return False
    return isinstance(data, Iterable)


_log = logging.getLogger("pyrocollapse")
#: (argument, dtype given, dtype used) conversions already reported on the logger.
_ANNOUNCED: set[tuple[str, str, str]] = set()


def _announce(name: str, given: object, used: torch.dtype) -> None:
    """Say once per argument and dtypes that floating data were converted."""
    stem = re.sub(r" batch \d+", " batch", name)  # a loader's batches: one message
    key = (stem, str(given), str(used))
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        _log.info(
            "%s: converted floating data of dtype %s to %s, the dtype of the model's parameters",
            stem,
            str(given).replace("torch.", ""),
            str(used).replace("torch.", ""),
        )


def _check_kind(name: str, t: torch.Tensor) -> None:
    """Dense tensors holding values: sparse and ``meta`` tensors are refused."""
    if t.layout != torch.strided:
        raise TypeError(
            f"{name} is a sparse tensor (layout {str(t.layout).replace('torch.', '')}); pass a "
            "dense tensor, e.g. x.to_dense()"
        )
    if t.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device, which holds shapes but no values; pass the data "
            "itself (on 'cpu' or an accelerator)"
        )


def _as_tensor(name: str, v: Any, dtype: torch.dtype | None = None) -> Any:
    """NumPy arrays as tensors; floating data in ``dtype`` (where given: else NumPy floats
    in the default dtype, tensors unchanged); other values as given."""
    if isinstance(v, np.ndarray):
        if v.dtype == object or v.dtype.kind in "USV":
            raise TypeError(
                f"{name} is a NumPy array of dtype {v.dtype}; pass numbers (a numeric array or "
                "a tensor)"
            )
        if v.dtype.kind == "c":
            raise TypeError(f"{name} is a NumPy array of complex dtype {v.dtype}; pass real data")
        if v.dtype.kind == "f":
            target = torch.get_default_dtype() if dtype is None else dtype
            t = torch.as_tensor(v)
            if t.dtype != target and dtype is not None:
                _announce(name, f"numpy.{v.dtype}", target)
            return _converted(name, t, target)
        return torch.as_tensor(v)
    if isinstance(v, torch.Tensor):
        _check_kind(name, v)
        if v.is_complex():
            raise TypeError(f"{name} has complex dtype {v.dtype}; pass real data")
        if dtype is not None and v.is_floating_point() and v.dtype != dtype:
            _announce(name, v.dtype, dtype)
            return _converted(name, v, dtype)
    return v


def _converted(name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``; a ``ValueError`` where finite values overflow it."""
    if t.dtype == dtype:
        return t
    out = t.to(dtype)
    if torch.finfo(dtype).max < torch.finfo(t.dtype).max:
        before = torch.isfinite(t)
        lost = int((before & ~torch.isfinite(out)).sum())
        if lost:
            raise ValueError(
                f"{name} holds {lost} value(s) too large for {str(dtype).replace('torch.', '')}, "
                "the dtype of the model's parameters; rescale the data or convert the model "
                f"(e.g. vae.to({dtype}))"
            )
    return out


def _check_tensor(name: str, t: torch.Tensor, *, check_values: bool) -> None:
    """Non-empty along dim 0; finite when floating (with ``check_values``)."""
    if t.dim() >= 1 and t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); need at least one row")
    if check_values and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values")


def _check_plain(name: str, x: torch.Tensor) -> torch.Tensor:
    """The classic single-tensor data: floating (finite) or integer, non-empty."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have shape (N, ...) with a data dimension, got a 0-d tensor")
    if not x.is_floating_point():
        return check_data(name, x, floating=False)
    return check_data(name, x)


def _structured(
    name: str,
    data: tuple | list | dict,
    *,
    check_values: bool,
    dtype: torch.dtype | None = None,
) -> ProgramArgs:
    """Arguments from a tuple/list (positional) or dict (keyword), NumPy converted."""
    if isinstance(data, dict):
        if not data:
            raise ValueError(
                f"{name} is an empty dict; pass the model's keyword arguments, e.g. "
                "{'xs': xs, 'ys': ys}"
            )
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise TypeError(
                f"{name} (a dict of keyword arguments) must have str keys, got {bad[0]!r}"
            )
        out = ProgramArgs(
            (), {k: _as_tensor(f"{name}[{k!r}]", v, dtype) for k, v in data.items()}
        )
    else:
        if not data:
            raise ValueError(
                f"{name} is an empty {type(data).__name__}; pass the model's positional "
                "arguments, e.g. (xs, ys)"
            )
        out = ProgramArgs(
            tuple(_as_tensor(f"{name}[{i}]", v, dtype) for i, v in enumerate(data))
        )
    single = len(out.args) == 1 and not out.kwargs  # e.g. a TensorDataset(x) batch, (x,)
    for slot, v in out.items():
        if isinstance(v, torch.Tensor):
            _check_tensor(name if single else _label(name, slot), v, check_values=check_values)
    return out


def as_program_args(
    batch: object,
    name: str = "batch",
    *,
    check_values: bool = True,
    dtype: torch.dtype | None = None,
) -> ProgramArgs:
    """One batch of a loader as one call's arguments.

    Parameters
    ----------
    batch : torch.Tensor, numpy.ndarray, tuple, list or dict
        A tensor ``x`` (``model(x)``), a tuple/list (``model(*batch)``) or a dict
        (``model(**batch)``). Tensors need not share a leading size (time-major
        sequences may come with their lengths).
    name : str
        How errors name the batch.
    check_values : bool
        Check floating tensors for NaN and infinity (they are always checked non-empty).
    dtype : torch.dtype or None
        The floating dtype of the model's parameters: floating tensors and NumPy arrays
        are converted to it (said once on the ``"pyrocollapse"`` logger); integer ones
        stay as they are. ``None``: tensors keep their dtype.

    Returns
    -------
    ProgramArgs
    """
    _check_dtype(dtype)
    batch = _as_tensor(name, batch, dtype)
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise ValueError(
                f"{name} is a 0-d tensor; batches need a leading batch dimension (B, ...)"
            )
        _check_tensor(name, batch, check_values=check_values)
        return ProgramArgs((batch,))
    if isinstance(batch, (tuple, list, dict)):
        return _structured(name, batch, check_values=check_values, dtype=dtype)
    raise TypeError(
        f"{name} must be a tensor x, a tuple/list of positional arguments or a dict of keyword "
        f"arguments, got {type(batch).__name__}"
    )


def _in_memory(
    name: str,
    data: object,
    tensor_check: Callable[[str, torch.Tensor], torch.Tensor],
    dtype: torch.dtype | None = None,
) -> ProgramData:
    """A tensor, NumPy array, tuple/list or dict as :class:`ProgramData`."""
    data = _as_tensor(name, data, dtype)
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError(
                f"{name} must have shape (N, ...) with a data dimension, got a 0-d tensor"
            )
        x = tensor_check(name, data)
        n = int(x.shape[0])
        return ProgramData(
            [_Part(ProgramArgs((x,), {}, n), (("arg", 0),), n)], name=name, plain=True
        )
    if not isinstance(data, (tuple, list, dict)):
        raise TypeError(f"{name} must be {_ACCEPTED}; got {type(data).__name__}")
    args = _structured(name, data, check_values=True, dtype=dtype)
    sizes = _leading_sizes(name, args)
    if not sizes:
        kinds = ", ".join(_describe_value(v) for _, v in args.items())
        raise TypeError(
            f"{name} ({type(data).__name__} of {kinds}) holds no tensor or NumPy array with a "
            "data dimension to split into batches; pass the batched arguments as tensors of "
            "shape (N, ...)"
        )
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} has {v}" for k, v in sizes.items())
        raise ValueError(
            f"the batched arguments of {name} must share their leading size N (dim 0 is split "
            f"into batches); {listed} rows. Try one of the following fixes:\n"
            "- pass every per-data-point tensor with the data dimension first\n"
            "- pass a value that is the same for every batch as a 0-d tensor, a number or "
            "None\n- for time-major or ragged data, pass a DataLoader (fit) whose batches "
            "the programs take as they come"
        )
    return ProgramData([_part_of(args)], name=name)


def _leading_sizes(name: str, args: ProgramArgs) -> dict[str, int]:
    """Per batched tensor argument (ndim >= 1), labelled for messages, its leading size."""
    return {
        _label(name, s): int(v.shape[0])
        for s, v in args.items()
        if isinstance(v, torch.Tensor) and v.dim() >= 1
    }


def _merge(name: str, batches: list[ProgramArgs]) -> ProgramData:
    """Loader batches as blocks: consecutive batches passing the same arguments are
    concatenated along dim 0."""
    parts: list[_Part] = []
    for i, b in enumerate(batches):
        sizes = _leading_sizes(f"{name} batch {i}", b)
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k} has {v}" for k, v in sizes.items())
            raise ValueError(
                f"diagnostics split data into chunks along dim 0 of every tensor argument, but "
                f"the tensors of {name} batch {i} do not share their leading size ({listed} "
                "rows). Pass the data with the data dimension first (e.g. batch-major "
                "sequences, with the model transposing them)"
            )
        part = _part_of(b)
        if parts and parts[-1].signature() == part.signature():
            prev = parts[-1]
            merged = {s: torch.cat([prev._get(s), part._get(s)]) for s in prev.batched}
            parts[-1] = _part_of(prev._with(merged, prev.n + part.n))
        else:
            parts.append(part)
    return ProgramData(parts, name=name)


def as_program_data(
    data: object,
    name: str = "data",
    *,
    tensor_check: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> ProgramData:
    """``data`` in any accepted form as :class:`ProgramData` (held in memory).

    Parameters
    ----------
    data : torch.Tensor, numpy.ndarray, tuple, list, dict, DataLoader or ProgramData
        See the module docstring. A loader is read once, whole, and its batches
        concatenated (consecutive batches that pass the same arguments); reading it
        leaves torch's global RNG as it was (a ``DataLoader`` iterator draws a seed from
        it, and a shuffling one without its own generator shuffles with it).
    name : str
        How errors name the data.
    tensor_check : callable or None
        ``(name, x) -> x``: the check of data given as one tensor (default: a floating
        tensor must be finite, any tensor non-empty with a data dimension).

    Returns
    -------
    ProgramData

    Raises
    ------
    TypeError
        For a value of another type, a dict with non-str keys, data holding no tensor
        with a data dimension, or a sparse or complex tensor.
    ValueError
        For empty data, NaN or infinite values, or batched tensors whose leading sizes
        differ (naming each argument and its size); 0-d data, tensors on the ``meta``
        device, and values that overflow ``dtype``.
    """
    _check_dtype(dtype)
    if isinstance(data, ProgramData):
        return data
    if is_batch_source(data):
        if isinstance(data, Iterator):  # read once: iter(data) is data
            raise TypeError(
                f"{name} is an iterator ({type(data).__name__}), which can be read only once; "
                "pass a DataLoader, a list of batches wrapped in a DataLoader, or the data "
                "itself"
            )
        # DataLoader iterators draw their base seed from torch's global RNG: read under a
        # fork of it, so that reading data leaves seeded draws where they were
        with torch.random.fork_rng(devices=[]):
            batches = [
                as_program_args(b, f"{name} batch {i}", dtype=dtype)
                for i, b in enumerate(data)  # type: ignore[call-overload]
            ]
        if not batches:
            raise ValueError(f"{name} (a {type(data).__name__}) yielded no batches")
        return _merge(name, batches)
    return _in_memory(name, data, tensor_check or _check_plain, dtype)


def _check_dtype(dtype: object) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
