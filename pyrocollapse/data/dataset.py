"""The :class:`Dataset` record every loader returns, and what builds and indexes one.

A :class:`Dataset` holds the data tensor, what kind of values it holds (which decides the
likelihood a model should use), image and token bookkeeping, the true latent factors when
they are known, and JSON-safe metadata; it validates all of them on construction.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import torch

from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.data.tokens import BOS_ID, EOS_ID, PAD_ID, _check_vocab

__all__ = ["KINDS", "Dataset", "RowIndex", "StrPath"]

#: The accepted values of :attr:`Dataset.kind`.
KINDS: tuple[str, ...] = ("binary", "unit_interval", "real", "tokens")


StrPath: TypeAlias = str | os.PathLike[str]
RowIndex: TypeAlias = "torch.Tensor | np.ndarray | slice | Sequence[int]"


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An immutable dataset of ``N`` rows plus everything a model and a diagnostic need.

    Parameters
    ----------
    data : torch.Tensor
        Shape ``(N, *event_shape)``. ``float32`` for the kinds ``"binary"``,
        ``"unit_interval"`` and ``"real"``; ``int64`` token ids of shape ``(N, max_len)``,
        padded with ``pad_id``, for ``"tokens"``.
    name : str
        Short name, e.g. ``"digits"``.
    kind : str
        One of :data:`KINDS`: ``"binary"`` (values in {0, 1}), ``"unit_interval"``
        (values in [0, 1]), ``"real"`` or ``"tokens"``.
    event_shape : tuple of int
        ``data.shape[1:]``, e.g. ``(64,)`` for flattened 8x8 digits.
    image_shape : tuple of int, optional
        Channel-first image shape ``(1, H, W)`` for image data, with
        ``prod(image_shape) == prod(event_shape)``; ``None`` otherwise.
    factors : torch.Tensor, optional
        Shape ``(N, F)``, floating: the true generative factors when known.
    factor_names : tuple of str
        ``F`` names of the factor columns; defaults to ``factor_0, ...`` when ``factors``
        is given without names.
    vocab : tuple of str, optional
        Index -> token string, starting with :data:`SPECIAL_TOKENS`. Required for, and
        only allowed with, ``kind="tokens"``.
    lengths : torch.Tensor, optional
        Shape ``(N,)``, ``int64``: true sequence lengths including ``<bos>`` and
        ``<eos>``. Required for, and only allowed with, ``kind="tokens"``.
    pad_id : int
        Padding id of token data; always :data:`PAD_ID` (0).
    metadata : dict
        Free-form JSON-serialisable description (source, seed, generator parameters).

    Raises
    ------
    TypeError
        If a field has the wrong type or dtype, or ``metadata`` is not JSON-serialisable.
    ValueError
        If the fields disagree with each other (row counts, shapes, value ranges, token
        layout).

    Notes
    -----
    Equality and hashing are by identity (tensors have no single truth value). Tensors
    are not copied, so do not modify them in place.
    """

    data: torch.Tensor
    name: str
    kind: str
    event_shape: tuple[int, ...]
    image_shape: tuple[int, ...] | None = None
    factors: torch.Tensor | None = None
    factor_names: tuple[str, ...] = ()
    vocab: tuple[str, ...] | None = None
    lengths: torch.Tensor | None = None
    pad_id: int = PAD_ID
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- validation --------------------------------------------------------------------
    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(self.data).__name__}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if not self.name:
            raise ValueError("name must be a non-empty str")
        check_choice("kind", self.kind, KINDS)
        if self.data.dim() < 1 or self.data.shape[0] == 0:
            raise ValueError(
                f"data must have shape (N, *event_shape) with N >= 1, got {tuple(self.data.shape)}"
            )
        event_shape = _as_shape("event_shape", self.event_shape)
        if event_shape != tuple(self.data.shape[1:]):
            raise ValueError(
                f"event_shape {event_shape} does not match data.shape[1:] = "
                f"{tuple(self.data.shape[1:])}"
            )
        object.__setattr__(self, "event_shape", event_shape)
        self._check_values()
        self._check_image_shape()
        self._check_factors()
        self._check_tokens()
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"metadata must be JSON-serialisable: {err}") from None

    def _check_values(self) -> None:
        x = self.data
        if self.kind == "tokens":
            if x.dtype != torch.int64:
                raise TypeError(
                    f"data of a 'tokens' dataset must be int64 token ids, got {x.dtype}"
                )
            if x.dim() != 2:
                raise ValueError(
                    f"data of a 'tokens' dataset must have shape (N, max_len), got {tuple(x.shape)}"
                )
            return
        if x.dtype != torch.float32:
            raise TypeError(
                f"data of a {self.kind!r} dataset must be float32, got {x.dtype} "
                "(convert with .float())"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"data contains {int((~torch.isfinite(x)).sum())} NaN or infinite values"
            )
        if self.kind == "binary" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("data of a 'binary' dataset must contain only 0 and 1")
        if self.kind == "unit_interval" and not (float(x.min()) >= 0 and float(x.max()) <= 1):
            raise ValueError(
                f"data of a 'unit_interval' dataset must lie in [0, 1], got values in "
                f"[{float(x.min())}, {float(x.max())}]"
            )

    def _check_image_shape(self) -> None:
        if self.image_shape is None:
            return
        if self.kind == "tokens":
            raise ValueError("image_shape must be None for a 'tokens' dataset")
        image_shape = _as_shape("image_shape", self.image_shape)
        if math.prod(image_shape) != math.prod(self.event_shape):
            raise ValueError(
                f"image_shape {image_shape} has {math.prod(image_shape)} elements but "
                f"event_shape {self.event_shape} has {math.prod(self.event_shape)}"
            )
        object.__setattr__(self, "image_shape", image_shape)

    def _check_factors(self) -> None:
        names = self.factor_names
        if isinstance(names, str) or not isinstance(names, (tuple, list)):
            raise TypeError(f"factor_names must be a tuple of str, got {type(names).__name__}")
        if not all(isinstance(s, str) for s in names):
            raise TypeError(f"factor_names must be a tuple of str, got {names!r}")
        f = self.factors
        if f is None:
            if names:
                raise ValueError("factor_names were given but factors is None")
            object.__setattr__(self, "factor_names", ())
            return
        if not isinstance(f, torch.Tensor) or not f.is_floating_point():
            got = f.dtype if isinstance(f, torch.Tensor) else type(f).__name__
            raise TypeError(f"factors must be a floating torch.Tensor, got {got}")
        if f.dim() != 2 or f.shape[0] != len(self):
            raise ValueError(f"factors must have shape (N={len(self)}, F), got {tuple(f.shape)}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError("factors contain NaN or infinite values")
        if not names:
            names = tuple(f"factor_{i}" for i in range(f.shape[1]))
        if len(names) != f.shape[1]:
            raise ValueError(
                f"factor_names has {len(names)} names but factors has {f.shape[1]} columns"
            )
        object.__setattr__(self, "factor_names", tuple(names))

    def _check_tokens(self) -> None:
        if self.kind != "tokens":
            if self.vocab is not None or self.lengths is not None:
                raise ValueError(
                    f"vocab and lengths are only allowed for kind='tokens', not {self.kind!r}"
                )
            return
        if self.vocab is None or self.lengths is None:
            raise ValueError("a 'tokens' dataset needs both vocab and lengths")
        vocab = _check_vocab(self.vocab)
        object.__setattr__(self, "vocab", vocab)
        if self.pad_id != PAD_ID:
            raise ValueError(f"pad_id must be {PAD_ID} (the id of '<pad>'), got {self.pad_id!r}")
        lengths, x = self.lengths, self.data
        if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int64:
            got = lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__
            raise TypeError(f"lengths must be an int64 torch.Tensor, got {got}")
        max_len = x.shape[1]
        if lengths.shape != (len(self),):
            raise ValueError(
                f"lengths must have shape (N={len(self)},), got {tuple(lengths.shape)}"
            )
        _raise_on_rows(
            (lengths < 2) | (lengths > max_len), f"lengths must lie in [2, max_len={max_len}]"
        )
        _raise_on_rows(
            ((x < 0) | (x >= len(vocab))).any(1), f"token ids must lie in [0, {len(vocab)})"
        )
        inside = torch.arange(max_len) < lengths[:, None]
        _raise_on_rows(
            ((x != PAD_ID) & ~inside).any(1) | ((x == PAD_ID) & inside).any(1),
            "padding must fill exactly the positions >= lengths",
        )
        eos = x.gather(1, (lengths - 1)[:, None]).squeeze(1)
        _raise_on_rows(
            (x[:, 0] != BOS_ID) | ((x == BOS_ID).sum(1) != 1),
            "every sequence must start with the only <bos>",
        )
        _raise_on_rows(
            (eos != EOS_ID) | ((x == EOS_ID).sum(1) != 1),
            "every sequence must have its only <eos> at position lengths - 1",
        )

    # -- behaviour ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        extra = f", vocab_size={len(self.vocab)}" if self.vocab is not None else ""
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}, "
            f"event_shape={self.event_shape}{extra})"
        )

    def subset(self, index: RowIndex) -> Dataset:
        """Rows ``index`` of every per-row field (data, factors, lengths).

        Parameters
        ----------
        index : slice, torch.Tensor, numpy.ndarray or sequence of int
            A slice, a 1-D array of row numbers (negative numbers count from the end) or
            a 1-D boolean mask of length ``N``.

        Returns
        -------
        Dataset
            Same name, kind and metadata; ``M`` rows, where ``M >= 1``.

        Raises
        ------
        TypeError
            If ``index`` is a single int, floating or otherwise not a row index.
        IndexError
            If a row number is out of range.
        ValueError
            If ``index`` is not 1-D, a mask has the wrong length, or no row is selected.
        """
        return self._take(_row_index(index, len(self)), copy.deepcopy(self.metadata))

    def split(self, valid_fraction: float = 0.1, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Randomly partition the rows into a training and a validation part.

        Parameters
        ----------
        valid_fraction : float
            Fraction of rows in the validation part, ``0 < valid_fraction < 1``; the
            validation size is ``round(valid_fraction * N)``.
        seed : int
            Seed of the permutation (a private ``torch.Generator``).

        Returns
        -------
        (Dataset, Dataset)
            ``(train, valid)``: disjoint, together all rows, each in the original row
            order, with ``metadata["split"]`` set to ``"train"`` / ``"valid"``.

        Raises
        ------
        ValueError
            If ``valid_fraction`` is not in (0, 1) or either part would be empty.
        """
        valid_fraction = check_float(
            "valid_fraction", valid_fraction, minimum=0.0, strict_minimum=True
        )
        if valid_fraction >= 1:
            raise ValueError(f"valid_fraction must be < 1, got {valid_fraction}")
        seed = check_int("seed", seed, minimum=0)
        n = len(self)
        n_valid = round(valid_fraction * n)
        if not 1 <= n_valid <= n - 1:
            raise ValueError(
                f"valid_fraction={valid_fraction} of {n} rows gives {n_valid} validation and "
                f"{n - n_valid} training rows; both parts must be non-empty"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        train_rows, valid_rows = perm[n_valid:].sort().values, perm[:n_valid].sort().values
        split_metadata = {**copy.deepcopy(self.metadata), "split_seed": seed}
        train = self._take(train_rows, {**split_metadata, "split": "train"})
        valid = self._take(valid_rows, {**split_metadata, "split": "valid"})
        return train, valid

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary.

        Returns
        -------
        dict
            ``name``, ``kind``, ``n``, ``event_shape``, ``image_shape``, ``dtype``,
            ``vocab_size`` (``None`` unless tokens), ``max_len`` and ``mean_length``
            (tokens only), ``factor_names`` and a copy of ``metadata``.
        """
        summary: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "n": len(self),
            "event_shape": list(self.event_shape),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "dtype": str(self.data.dtype).removeprefix("torch."),
            "vocab_size": None if self.vocab is None else len(self.vocab),
            "factor_names": list(self.factor_names),
        }
        if self.lengths is not None:
            summary["max_len"] = int(self.data.shape[1])
            summary["mean_length"] = float(self.lengths.double().mean())
        summary["metadata"] = copy.deepcopy(self.metadata)
        return summary

    def _take(self, rows: slice | torch.Tensor, metadata: dict[str, Any]) -> Dataset:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return dataclasses.replace(
            self,
            data=self.data[rows],
            factors=pick(self.factors),
            lengths=pick(self.lengths),
            metadata=metadata,
        )


def _float_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float32)


def _as_shape(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, (torch.Size, tuple, list)):
        return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))
    raise TypeError(f"{name} must be a tuple of positive ints, got {type(value).__name__}")


def _raise_on_rows(bad: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` naming the first row where ``bad`` (N,) is true."""
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise ValueError(f"{message}; violated in {len(rows)} row(s), first row {int(rows[0])}")


def _row_index(index: object, n: int) -> slice | torch.Tensor:
    if isinstance(index, slice):
        selected = range(n)[index]
        if len(selected) == 0:
            raise ValueError(f"index {index} selects no rows of {n}")
        # tensors do not take negative slice steps; spell those rows out
        return torch.tensor(selected) if selected.step < 0 else index
    if isinstance(index, (bool, np.bool_, numbers.Integral)):
        raise TypeError(
            "index must be a slice or a 1-D array of rows, not a single int; use [i] or "
            "slice(i, i + 1)"
        )
    if isinstance(index, torch.Tensor):
        rows = index.detach().cpu()
    elif isinstance(index, (np.ndarray, Sequence)) and not isinstance(index, str):
        array = np.asarray(index)
        if array.size == 0:
            raise ValueError("index selects no rows")
        if array.dtype.kind not in "biu":
            raise TypeError(f"index must hold ints or bools, got dtype {array.dtype}")
        rows = torch.from_numpy(array.copy())
    else:
        raise TypeError(
            f"index must be a slice, torch.Tensor, numpy.ndarray or sequence of int, got "
            f"{type(index).__name__}"
        )
    if rows.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(rows.shape)}")
    if rows.dtype == torch.bool:
        if rows.shape[0] != n:
            raise ValueError(f"a boolean index must have length N={n}, got {rows.shape[0]}")
        rows = torch.nonzero(rows).flatten()
    elif rows.is_floating_point() or rows.is_complex():
        raise TypeError(f"index must hold ints or bools, got {rows.dtype}")
    rows = rows.long()
    if rows.numel() == 0:
        raise ValueError("index selects no rows")
    if bool(((rows < -n) | (rows >= n)).any()):
        raise IndexError(f"index holds rows outside [-{n}, {n}) for a dataset of {n} rows")
    return rows


def _image_dataset(
    pixels: np.ndarray,
    *,
    name: str,
    binarize: bool,
    factors: np.ndarray,
    factor_names: tuple[str, ...],
    metadata: dict[str, Any],
) -> Dataset:
    """Flatten ``pixels`` of shape ``(N, H, W)`` in [0, 1] into a ``(1, H, W)`` image dataset."""
    n, height, width = pixels.shape
    flat = pixels.reshape(n, height * width)
    if binarize:
        flat = (flat >= 0.5).astype(np.float64)
    return Dataset(
        data=_float_tensor(flat),
        name=name,
        kind="binary" if binarize else "unit_interval",
        event_shape=(height * width,),
        image_shape=(1, height, width),
        factors=_float_tensor(factors),
        factor_names=factor_names,
        metadata=metadata,
    )
