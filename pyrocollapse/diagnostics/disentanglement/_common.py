"""Helpers shared by the disentanglement metrics: input checks and JSON conversion.

Every metric reads ``codes`` ``(N, K)`` and ``factors`` ``(N, F)`` through
:func:`_check_pair`, decides which factors are discrete with :func:`_discrete_mask`
(using :data:`MAX_DISCRETE_VALUES`), turns columns into integer class or equal-width bin
labels, and reports NaN as ``None`` in its JSON-safe dictionaries; MIG and SAP share the
best-minus-second-best gap, SAP and DCI the seeded train / test split and the
chance-adjusted balanced accuracy. Nothing here is public apart from
:data:`MAX_DISCRETE_VALUES`, which the package re-exports.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_float, check_int

#: A factor column with at most this many distinct values (and at most half as many as
#: rows) is taken as discrete when ``discrete_factors=None``.
MAX_DISCRETE_VALUES = 20


# ======================================================================================
# JSON
# ======================================================================================
def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _json_list(values: np.ndarray) -> list[Any]:
    arr = np.asarray(values)
    if arr.ndim == 0:
        return _json_float(arr)  # type: ignore[return-value]
    if arr.dtype.kind in "iub":
        return arr.tolist()
    return [_json_list(v) for v in arr] if arr.ndim > 1 else [_json_float(v) for v in arr]


# ======================================================================================
# Input checks
# ======================================================================================
def _as_matrix(name: str, value: object, *, min_rows: int = 2) -> np.ndarray:
    """``value`` as a finite float64 array of shape ``(N, C)`` with ``N >= min_rows``."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a {value.dtype} tensor")
        arr = value.detach().cpu().to(torch.float64).numpy()
    else:
        if isinstance(value, (str, bytes, Mapping)) or value is None:
            raise TypeError(
                f"{name} must be a 2-D torch.Tensor or numpy array of real numbers, "
                f"got {type(value).__name__}"
            )
        try:
            raw = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a 2-D torch.Tensor or numpy array of real numbers: {err}"
            ) from None
        if raw.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers (int or float), got dtype {raw.dtype}")
        arr = raw.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got shape {tuple(arr.shape)}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_pair(codes: object, factors: object, *, min_rows: int = 2) -> tuple[np.ndarray, ...]:
    z = _as_matrix("codes", codes, min_rows=min_rows)
    f = _as_matrix("factors", factors, min_rows=min_rows)
    if len(z) != len(f):
        raise ValueError(
            f"codes and factors must have the same number of rows, got {len(z)} and {len(f)}"
        )
    return z, f


def _discrete_mask(value: object, factors: np.ndarray) -> np.ndarray:
    """The ``(F,)`` bool mask of discrete factors from ``discrete_factors``."""
    n, n_factors = factors.shape
    if value is None:
        mask = np.zeros(n_factors, dtype=bool)
        for j in range(n_factors):
            distinct = len(np.unique(factors[:, j]))
            mask[j] = distinct <= MAX_DISCRETE_VALUES and 2 * distinct <= n
        return mask
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(
        value, (Sequence, np.ndarray, torch.Tensor)
    ):
        raise TypeError(
            "discrete_factors must be None, a sequence of F bools or a sequence of factor "
            f"column indices, got {type(value).__name__}"
        )
    items = list(np.asarray(value).tolist()) if not isinstance(value, Sequence) else list(value)
    if items and all(isinstance(v, (bool, np.bool_)) for v in items):
        if len(items) != n_factors:
            raise ValueError(
                f"discrete_factors as a mask must have F={n_factors} entries, got {len(items)}"
            )
        return np.asarray(items, dtype=bool)
    mask = np.zeros(n_factors, dtype=bool)
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(
                "discrete_factors must be a sequence of bools or of int column indices, "
                f"got the entry {v!r}"
            )
        if not -n_factors <= int(v) < n_factors:
            raise ValueError(
                f"discrete_factors holds the column {v}, outside [0, {n_factors}) factors"
            )
        mask[int(v)] = True
    return mask


def _names(value: object, n_factors: int) -> tuple[str, ...]:
    if value is None:
        return tuple(f"factor_{j}" for j in range(n_factors))
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"factor_names must be a sequence of str, got {type(value).__name__}")
    names = tuple(value)
    if not all(isinstance(v, str) for v in names):
        raise TypeError(f"factor_names must be a sequence of str, got {names!r}")
    if len(names) != n_factors:
        raise ValueError(f"factor_names has {len(names)} names but factors has {n_factors} columns")
    return names


def _check_fraction(name: str, value: object) -> float:
    value = check_float(name, value, minimum=0.0, maximum=1.0)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    return value


def _check_seed(value: object) -> int:
    return check_int("seed", value, minimum=0)


# ======================================================================================
# Histograms and information
# ======================================================================================
def _bin_labels(x: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin index in ``[0, bins)`` of each value of ``x`` (``(N,)``)."""
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(len(x), dtype=np.int64)
    inner = np.linspace(lo, hi, bins + 1)[1:-1]
    return np.searchsorted(inner, x, side="right").astype(np.int64)


def _class_labels(x: np.ndarray) -> np.ndarray:
    """Index in ``[0, C)`` of each value of ``x`` among its ``C`` distinct values."""
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _factor_labels(factors: np.ndarray, discrete: np.ndarray, bins: int) -> list[np.ndarray]:
    return [
        _class_labels(factors[:, j]) if discrete[j] else _bin_labels(factors[:, j], bins)
        for j in range(factors.shape[1])
    ]


def _gaps(matrix: np.ndarray, defined: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Per column of ``(K, F)`` ``matrix``: best minus second best (second = 0 when
    ``K = 1``) and the best row; NaN / -1 where ``defined`` is False."""
    n_codes, n_factors = matrix.shape
    gaps = np.full(n_factors, np.nan)
    best = [-1] * n_factors
    for j in range(n_factors):
        if not defined[j]:
            continue
        order = np.argsort(-matrix[:, j], kind="stable")
        second = matrix[order[1], j] if n_codes > 1 else 0.0
        gaps[j] = matrix[order[0], j] - second
        best[j] = int(order[0])
    return gaps, tuple(best)


def _mean_defined(values: np.ndarray, what: str) -> float:
    ok = np.isfinite(values)
    if not ok.any():
        raise ValueError(f"{what} is undefined: every factor column is constant")
    return float(values[ok].mean())


# ======================================================================================
# Train / test splits and classifier scores
# ======================================================================================
def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train / test row indices, each non-empty."""
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _adjusted_balanced_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes of ``truth``, rescaled so that chance
    (``1 / C``) is 0 and perfect is 1; NaN when ``truth`` holds a single class."""
    classes = np.unique(truth)
    if len(classes) < 2:
        return math.nan
    recall = np.array([np.mean(pred[truth == c] == c) for c in classes])
    chance = 1.0 / len(classes)
    return float((recall.mean() - chance) / (1.0 - chance))
