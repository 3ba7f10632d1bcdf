"""The mutual information gap, :func:`mig` (Chen et al., 2018).

Codes and continuous factors are cut into equal-width histogram bins, discrete factors
keep their classes, and the plug-in mutual information (nats) of every code dimension
with every factor gives the ``(K, F)`` matrix whose best-minus-second-best gap per factor,
divided by the factor's entropy, is averaged into the score. The module is private (the
package exports the function under the same name); import
``from pyrocollapse.diagnostics.disentanglement import mig``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics.disentanglement._common import (
    _bin_labels,
    _check_pair,
    _discrete_mask,
    _factor_labels,
    _gaps,
    _json_list,
    _mean_defined,
    _names,
)
from pyrocollapse.diagnostics.disentanglement.results import MetricResult

__all__ = ["mig"]


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information in nats of two label vectors of equal length.

    Counts stay integers until the log, so independent labels on a full grid give
    exactly 0 and ``I(a; a)`` is exactly the plug-in entropy of ``a``."""
    n = len(a)
    nb = int(b.max()) + 1
    joint = np.bincount(a * nb + b)
    cells = np.nonzero(joint)[0]
    c_ab = joint[cells]
    c_a = np.bincount(a)[cells // nb]
    c_b = np.bincount(b, minlength=nb)[cells % nb]
    ratio = (c_ab * n) / (c_a * c_b)
    return max(float(np.sum(c_ab / n * np.log(ratio))), 0.0)


def mig(
    codes: object,
    factors: object,
    *,
    discrete_factors: object = None,
    bins: int = 20,
    factor_names: Sequence[str] | None = None,
) -> MetricResult:
    """Mutual information gap (Chen et al., 2018).

    For each factor ``f``, ``MIG_f = (I(z_a; v_f) - I(z_b; v_f)) / H(v_f)`` where ``z_a``
    and ``z_b`` are the code dimensions with the largest and second-largest mutual
    information with ``v_f``; the score is the mean over non-constant factors. Codes are
    discretised into ``bins`` equal-width bins per dimension, continuous factors too,
    discrete factors keep their classes; information is the plug-in estimate from the
    joint histogram (nats).

    Parameters
    ----------
    codes : torch.Tensor or numpy.ndarray
        Shape ``(N, K)``, real: one code per observation (e.g. posterior means).
    factors : torch.Tensor or numpy.ndarray
        Shape ``(N, F)``, real: the true factors of the same observations.
    discrete_factors : None, sequence of bool or sequence of int
        Which factor columns are discrete: ``None`` decides per column (see the module
        notes), a mask of ``F`` bools, or the indices of the discrete columns.
    bins : int
        Equal-width bins per code dimension and per continuous factor (>= 2).
    factor_names : sequence of str, optional
        ``F`` names for the result; ``factor_0, ...`` by default.

    Returns
    -------
    MetricResult
        ``name="mig"``; ``score`` in [0, 1]; ``matrix`` the ``(K, F)`` mutual
        information in nats; ``details["entropy"]`` the ``F`` factor entropies (nats).
        With a single code dimension the second-largest information is taken as 0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the shapes disagree, values are not finite, ``bins < 2`` or every factor is
        constant.

    Notes
    -----
    The plug-in estimate is biased upwards for small ``N`` per bin: independent
    variables get a small positive information of roughly ``(B_z - 1)(B_v - 1) / (2N)``
    nats, so a factor captured by no dimension scores slightly above 0.
    """
    z, f = _check_pair(codes, factors)
    bins = check_int("bins", bins, minimum=2)
    discrete = _discrete_mask(discrete_factors, f)
    names = _names(factor_names, f.shape[1])
    code_labels = [_bin_labels(z[:, k], bins) for k in range(z.shape[1])]
    factor_labels = _factor_labels(f, discrete, bins)
    info = np.array([[_mutual_information(c, v) for v in factor_labels] for c in code_labels])
    entropy = np.array([_mutual_information(v, v) for v in factor_labels])
    defined = entropy > 0
    gaps, best = _gaps(info, defined)
    normalised = np.where(defined, gaps / np.where(defined, entropy, 1.0), np.nan)
    return MetricResult(
        name="mig",
        score=_mean_defined(normalised, "MIG"),
        per_factor=normalised,
        matrix=info,
        best_dims=best,
        factor_names=names,
        discrete=tuple(bool(d) for d in discrete),
        details={"entropy": _json_list(entropy), "bins": bins},
    )
