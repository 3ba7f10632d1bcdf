"""The DCI scores (disentanglement, completeness, informativeness): :func:`dci`.

In the framework of Eastwood & Williams (2018), one predictor per factor
(gradient-boosted trees or the lasso, from scikit-learn, which is imported on first use
so that importing the package stays cheap) is fitted from all standardised code
dimensions on a training split; its importances fill the ``(K, F)`` importance matrix,
whose normalised row and column entropies give disentanglement and completeness, and its
held-out score the informativeness. The module is private (the package exports the
function under the same name); import
``from pyrocollapse.diagnostics.disentanglement import dci``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.diagnostics.disentanglement._common import (
    _adjusted_balanced_accuracy,
    _check_fraction,
    _check_pair,
    _check_seed,
    _class_labels,
    _discrete_mask,
    _names,
    _split,
)
from pyrocollapse.diagnostics.disentanglement.results import DCIResult

__all__ = ["dci"]

_REGRESSORS = ("gbt", "lasso")


def _entropy_base(p: np.ndarray, base: int) -> float:
    """Entropy of the distribution ``p`` (sums to 1) in base ``base`` (0 when base 1)."""
    if base <= 1:
        return 0.0
    q = p[p > 0]
    return float(-(q * np.log(q)).sum() / math.log(base))


def _r2(truth: np.ndarray, pred: np.ndarray) -> float:
    resid = float(((truth - pred) ** 2).sum())
    total = float(((truth - truth.mean()) ** 2).sum())
    if total <= 0.0:
        return math.nan
    return 1.0 - resid / total


def _standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


def _fit_gbt(
    z: np.ndarray,
    target: np.ndarray,
    is_discrete: bool,
    train: np.ndarray,
    test: np.ndarray,
    options: dict[str, Any],
) -> tuple[np.ndarray, float]:
    # scikit-learn is imported on first use: importing this module stays cheap.
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if is_discrete:
        y = _class_labels(target)
        if len(np.unique(y[train])) < 2:
            return np.zeros(z.shape[1]), math.nan
        model = GradientBoostingClassifier(**options).fit(z[train], y[train])
        score = _adjusted_balanced_accuracy(y[test], model.predict(z[test]))
    else:
        if float(np.ptp(target[train])) <= 0:
            return np.zeros(z.shape[1]), math.nan
        model = GradientBoostingRegressor(**options).fit(z[train], target[train])
        score = _r2(target[test], model.predict(z[test]))
    return np.asarray(model.feature_importances_, dtype=np.float64), score


def _fit_lasso(
    z: np.ndarray,
    target: np.ndarray,
    is_discrete: bool,
    train: np.ndarray,
    test: np.ndarray,
    options: dict[str, Any],
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Lasso

    if is_discrete:
        y = _class_labels(target)
        if len(np.unique(y[train])) < 2:
            return np.zeros(z.shape[1]), math.nan
        onehot = np.eye(int(y.max()) + 1)[y]
        targets = _standardise(onehot, train)
        model = Lasso(**options).fit(z[train], targets[train])
        coef = np.atleast_2d(model.coef_)
        importance = np.abs(coef).sum(axis=0)
        pred = np.argmax(model.predict(z[test]).reshape(len(test), -1), axis=1)
        return importance, _adjusted_balanced_accuracy(y[test], pred)
    if float(np.ptp(target[train])) <= 0:
        return np.zeros(z.shape[1]), math.nan
    t = _standardise(target[:, None], train)[:, 0]
    model = Lasso(**options).fit(z[train], t[train])
    return np.abs(np.asarray(model.coef_, dtype=np.float64)), _r2(t[test], model.predict(z[test]))


def dci(
    codes: object,
    factors: object,
    *,
    regressor: str = "gbt",
    discrete_factors: object = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    n_estimators: int = 100,
    max_depth: int = 3,
    alpha: float = 0.01,
    factor_names: Sequence[str] | None = None,
) -> DCIResult:
    """Disentanglement, completeness and informativeness (Eastwood & Williams, 2018).

    One predictor per factor is fitted from all code dimensions on a training split;
    its importances form column ``f`` of the ``(K, F)`` importance matrix ``R`` and its
    held-out score the factor's informativeness. Disentanglement and completeness are
    one minus normalised entropies of the rows and columns of ``R`` (see
    :class:`DCIResult`).

    Parameters
    ----------
    codes : torch.Tensor or numpy.ndarray
        Shape ``(N, K)``, real. Standardised with the training rows' mean and standard
        deviation before fitting.
    factors : torch.Tensor or numpy.ndarray
        Shape ``(N, F)``, real.
    regressor : {"gbt", "lasso"}
        ``"gbt"``: gradient-boosted trees (``sklearn.ensemble.GradientBoostingRegressor``
        for continuous factors, ``GradientBoostingClassifier`` for discrete ones),
        importance = impurity-based feature importance (each column sums to 1).
        ``"lasso"``: L1-penalised linear regression on the standardised factor (for a
        discrete factor, on its standardised one-hot classes, predicting the class with
        the largest output), importance = absolute weight (summed over classes).
    discrete_factors : None, sequence of bool or sequence of int
        Which factor columns are discrete (see :func:`mig`).
    test_fraction : float
        Share of rows held out for informativeness, strictly in (0, 1).
    seed : int
        Seed of the split and of the trees' subsampling (>= 0).
    n_estimators, max_depth : int
        Boosting stages and tree depth for ``"gbt"`` (>= 1).
    alpha : float
        L1 penalty for ``"lasso"`` (> 0), on standardised codes and targets.
    factor_names : sequence of str, optional
        ``F`` names for the result.

    Returns
    -------
    DCIResult
        Disentanglement and completeness in [0, 1]; informativeness at most 1.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the shapes disagree, values are not finite or an option is out of range.
    """
    z, f = _check_pair(codes, factors, min_rows=4)
    regressor = check_choice("regressor", regressor, _REGRESSORS)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    seed = _check_seed(seed)
    n_estimators = check_int("n_estimators", n_estimators, minimum=1)
    max_depth = check_int("max_depth", max_depth, minimum=1)
    alpha = check_float("alpha", alpha, minimum=0.0, strict_minimum=True)
    discrete = _discrete_mask(discrete_factors, f)
    names = _names(factor_names, f.shape[1])
    train, test = _split(len(z), test_fraction, seed)
    zs = _standardise(z, train)
    n_codes, n_factors = z.shape[1], f.shape[1]
    if regressor == "gbt":
        fit = _fit_gbt
        options: dict[str, Any] = {
            "n_estimators": n_estimators,
            "max_depth": max_depth,
            "random_state": seed,
        }
        details: dict[str, Any] = {"n_estimators": n_estimators, "max_depth": max_depth}
    else:
        fit = _fit_lasso
        options = {"alpha": alpha, "max_iter": 10_000, "random_state": seed}
        details = {"alpha": alpha}
    importance = np.zeros((n_codes, n_factors))
    informativeness = np.full(n_factors, np.nan)
    for j in range(n_factors):
        importance[:, j], informativeness[j] = fit(
            zs, f[:, j], bool(discrete[j]), train, test, options
        )
    importance = np.maximum(importance, 0.0)
    d_k, rho, c_f = _dci_from_importance(importance)
    total = float(importance.sum())
    ok = np.isfinite(informativeness)
    return DCIResult(
        disentanglement=float((rho * d_k).sum()) if total > 0 else 0.0,
        completeness=float(c_f.mean()),
        informativeness=float(informativeness[ok].mean()) if ok.any() else math.nan,
        per_code_disentanglement=d_k,
        code_weights=rho,
        per_factor_completeness=c_f,
        per_factor_informativeness=informativeness,
        importance=importance,
        regressor=regressor,
        factor_names=names,
        discrete=tuple(bool(d) for d in discrete),
        details={"test_fraction": test_fraction, "seed": seed, **details},
    )


def _dci_from_importance(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-code disentanglement ``(K,)``, code weights ``(K,)`` and per-factor
    completeness ``(F,)`` of a non-negative ``(K, F)`` importance matrix."""
    n_codes, n_factors = r.shape
    row = r.sum(axis=1)
    col = r.sum(axis=0)
    total = float(r.sum())
    d_k = np.array(
        [
            1.0 - _entropy_base(r[k] / row[k], n_factors) if row[k] > 0 else 0.0
            for k in range(n_codes)
        ]
    )
    rho = row / total if total > 0 else np.zeros(n_codes)
    c_f = np.array(
        [
            1.0 - _entropy_base(r[:, j] / col[j], n_codes) if col[j] > 0 else 0.0
            for j in range(n_factors)
        ]
    )
    return d_k, rho, c_f
