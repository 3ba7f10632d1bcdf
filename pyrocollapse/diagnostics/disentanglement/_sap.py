"""The separated attribute predictability, :func:`sap` (Kumar et al., 2018).

Each code dimension alone predicts each factor, by the squared correlation for a
continuous factor and by a held-out, chance-adjusted balanced accuracy of a per-bin
majority classifier for a discrete one; the score is the mean over factors of the gap
between the two best dimensions. The module is private (the package exports the
function under the same name); import ``from pyrocollapse.diagnostics.disentanglement import sap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics.disentanglement._common import (
    _adjusted_balanced_accuracy,
    _check_fraction,
    _check_pair,
    _check_seed,
    _class_labels,
    _discrete_mask,
    _gaps,
    _mean_defined,
    _names,
    _split,
)
from pyrocollapse.diagnostics.disentanglement.results import MetricResult

__all__ = ["sap"]


def _bin_classifier_score(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, bins: int
) -> float:
    """Chance-adjusted balanced test accuracy of the classifier that predicts, in each
    equal-width bin of the 1-D code ``x`` (edges from the training rows), the majority
    training class (the overall majority class in empty bins)."""
    xt, yt = x[train], y[train]
    lo, hi = float(xt.min()), float(xt.max())
    n_classes = int(y.max()) + 1
    overall = int(np.argmax(np.bincount(yt, minlength=n_classes)))
    if hi <= lo:
        pred = np.full(len(test), overall)
    else:
        inner = np.linspace(lo, hi, bins + 1)[1:-1]
        bin_train = np.searchsorted(inner, xt, side="right")
        counts = np.zeros((bins, n_classes), dtype=np.int64)
        np.add.at(counts, (bin_train, yt), 1)
        majority = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), overall)
        pred = majority[np.searchsorted(inner, x[test], side="right")]
    return _adjusted_balanced_accuracy(y[test], pred)


def _squared_correlation(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    if sxx <= 0.0 or syy <= 0.0:
        return 0.0
    return min(float(xc @ yc) ** 2 / (sxx * syy), 1.0)


def sap(
    codes: object,
    factors: object,
    *,
    discrete_factors: object = None,
    bins: int = 20,
    test_fraction: float = 0.3,
    seed: int = 0,
    factor_names: Sequence[str] | None = None,
) -> MetricResult:
    """Separated attribute predictability (Kumar et al., 2018).

    A score ``S[k, f]`` says how well code dimension ``k`` alone predicts factor ``f``;
    ``SAP_f`` is the gap between the two best dimensions and the score is the mean over
    non-constant factors.

    * Continuous factor: the R^2 of the least-squares line from ``z_k`` to ``v_f``, i.e.
      the squared Pearson correlation (in-sample; two parameters cannot overfit).
    * Discrete factor: a one-dimensional classifier (majority class in each of ``bins``
      equal-width bins of ``z_k``, fitted on a training split) is scored by its balanced
      accuracy on the held-out rows, adjusted for chance (``(acc - 1/C) / (1 - 1/C)``)
      and clipped at 0, so unrelated dimensions score about 0 whatever the number of
      classes ``C``.

    Parameters
    ----------
    codes : torch.Tensor or numpy.ndarray
        Shape ``(N, K)``, real.
    factors : torch.Tensor or numpy.ndarray
        Shape ``(N, F)``, real.
    discrete_factors : None, sequence of bool or sequence of int
        Which factor columns are discrete (see :func:`mig`).
    bins : int
        Bins of the per-dimension classifier for discrete factors (>= 2).
    test_fraction : float
        Share of rows held out to score the classifiers, strictly in (0, 1).
    seed : int
        Seed of the train / test split (>= 0).
    factor_names : sequence of str, optional
        ``F`` names for the result.

    Returns
    -------
    MetricResult
        ``name="sap"``; ``score`` in [0, 1]; ``matrix`` the ``(K, F)`` scores ``S`` in
        [0, 1]. With a single code dimension the second-best score is taken as 0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the shapes disagree, values are not finite, an option is out of range or
        every factor is constant.
    """
    z, f = _check_pair(codes, factors, min_rows=4)
    bins = check_int("bins", bins, minimum=2)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    seed = _check_seed(seed)
    discrete = _discrete_mask(discrete_factors, f)
    names = _names(factor_names, f.shape[1])
    train, test = _split(len(z), test_fraction, seed)
    n_codes, n_factors = z.shape[1], f.shape[1]
    scores = np.zeros((n_codes, n_factors))
    defined = np.zeros(n_factors, dtype=bool)
    for j in range(n_factors):
        if discrete[j]:
            y = _class_labels(f[:, j])
            defined[j] = len(np.unique(y[test])) > 1
            if defined[j]:
                for k in range(n_codes):
                    s = _bin_classifier_score(z[:, k], y, train, test, bins)
                    scores[k, j] = max(s, 0.0)
        else:
            defined[j] = float(np.ptp(f[:, j])) > 0
            for k in range(n_codes):
                scores[k, j] = _squared_correlation(z[:, k], f[:, j])
    gaps, best = _gaps(scores, defined)
    return MetricResult(
        name="sap",
        score=_mean_defined(gaps, "SAP"),
        per_factor=gaps,
        matrix=scores,
        best_dims=best,
        factor_names=names,
        discrete=tuple(bool(d) for d in discrete),
        details={"bins": bins, "test_fraction": test_fraction, "seed": seed},
    )
