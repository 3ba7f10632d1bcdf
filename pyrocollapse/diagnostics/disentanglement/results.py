"""The result records of the disentanglement metrics.

:class:`MetricResult` (MIG and SAP), :class:`DCIResult`, :class:`FactorVAEResult` and
:class:`DisentanglementResult` (all of them, from :func:`disentanglement`) are frozen
dataclasses holding the headline scores, the per-factor and per-dimension parts they
come from (numpy arrays with the shapes documented on each class) and a ``to_dict()``
that gives a JSON-safe dictionary, NaN written as ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyrocollapse.diagnostics.disentanglement._common import _json_float, _json_list

__all__ = ["DCIResult", "DisentanglementResult", "FactorVAEResult", "MetricResult"]


@dataclass(frozen=True, eq=False)
class MetricResult:
    """The score of :func:`mig` or :func:`sap`, with its per-factor parts.

    Attributes
    ----------
    name : str
        ``"mig"`` or ``"sap"``.
    score : float
        The metric, in [0, 1] (1 = every factor captured by exactly one code dimension):
        the mean of ``per_factor`` over factors where it is defined.
    per_factor : numpy.ndarray
        Shape ``(F,)``: the gap between the best and the second-best code dimension for
        each factor (normalised mutual information for MIG, predictability for SAP);
        NaN for a constant factor, which carries no information.
    matrix : numpy.ndarray
        Shape ``(K, F)``: the pairwise quantity the gaps are taken from. For MIG the
        mutual information I(code_k; factor_f) in nats; for SAP the predictability of
        factor ``f`` from code dimension ``k`` alone (R^2 or chance-adjusted balanced
        accuracy, in [0, 1]).
    best_dims : tuple of int
        ``F`` entries: the code dimension that best captures each factor (-1 where the
        factor is constant).
    factor_names : tuple of str
        ``F`` names of the factors.
    discrete : tuple of bool
        ``F`` flags: whether each factor was treated as discrete.
    details : dict
        Metric-specific extras (JSON-safe): for MIG the factor entropies ``entropy``
        (nats) and ``bins``; for SAP ``bins`` and ``test_fraction``.
    """

    name: str
    score: float
    per_factor: np.ndarray
    matrix: np.ndarray
    best_dims: tuple[int, ...]
    factor_names: tuple[str, ...]
    discrete: tuple[bool, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary (NaN becomes ``None``; arrays become lists)."""
        return {
            "name": self.name,
            "score": _json_float(self.score),
            "per_factor": dict(zip(self.factor_names, _json_list(self.per_factor))),
            "matrix": _json_list(self.matrix),
            "best_dims": dict(zip(self.factor_names, self.best_dims)),
            "factor_names": list(self.factor_names),
            "discrete": list(self.discrete),
            "details": dict(self.details),
        }


@dataclass(frozen=True, eq=False)
class DCIResult:
    """Disentanglement, completeness and informativeness (Eastwood & Williams, 2018).

    Attributes
    ----------
    disentanglement : float
        In [0, 1]: ``sum_k rho_k * D_k`` with ``D_k = 1 - H_F(P_k)``, where ``P_k`` is
        code dimension ``k``'s importance row normalised over the ``F`` factors, ``H_F``
        the entropy in base ``F`` and ``rho_k`` the dimension's share of the total
        importance. 1 when each dimension predicts a single factor. 0 when no dimension
        has any importance.
    completeness : float
        In [0, 1]: the mean over factors of ``C_f = 1 - H_K(P~_f)``, where ``P~_f`` is
        factor ``f``'s importance column normalised over the ``K`` code dimensions.
        1 when each factor is predicted from a single dimension.
    informativeness : float
        The mean over factors of the held-out prediction score: R^2 for continuous
        factors, balanced accuracy adjusted for chance (0 = chance, 1 = perfect) for
        discrete ones. At most 1; can be slightly negative for a useless code.
    per_code_disentanglement : numpy.ndarray
        Shape ``(K,)``: ``D_k``.
    code_weights : numpy.ndarray
        Shape ``(K,)``: ``rho_k`` (sums to 1, or all zero).
    per_factor_completeness : numpy.ndarray
        Shape ``(F,)``: ``C_f``.
    per_factor_informativeness : numpy.ndarray
        Shape ``(F,)``: the held-out score of each factor's predictor.
    importance : numpy.ndarray
        Shape ``(K, F)``, non-negative: the importance of code dimension ``k`` for
        predicting factor ``f`` (tree feature importances, or absolute lasso weights on
        standardised codes and targets).
    regressor : str
        ``"gbt"`` or ``"lasso"``.
    factor_names : tuple of str
    discrete : tuple of bool
    details : dict
        ``test_fraction``, ``seed`` and the predictor settings.
    """

    disentanglement: float
    completeness: float
    informativeness: float
    per_code_disentanglement: np.ndarray
    code_weights: np.ndarray
    per_factor_completeness: np.ndarray
    per_factor_informativeness: np.ndarray
    importance: np.ndarray
    regressor: str
    factor_names: tuple[str, ...]
    discrete: tuple[bool, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary (NaN becomes ``None``; arrays become lists)."""
        names = self.factor_names
        return {
            "disentanglement": _json_float(self.disentanglement),
            "completeness": _json_float(self.completeness),
            "informativeness": _json_float(self.informativeness),
            "per_code_disentanglement": _json_list(self.per_code_disentanglement),
            "code_weights": _json_list(self.code_weights),
            "per_factor_completeness": dict(zip(names, _json_list(self.per_factor_completeness))),
            "per_factor_informativeness": dict(
                zip(names, _json_list(self.per_factor_informativeness))
            ),
            "importance": _json_list(self.importance),
            "regressor": self.regressor,
            "factor_names": list(names),
            "discrete": list(self.discrete),
            "details": dict(self.details),
        }


@dataclass(frozen=True, eq=False)
class FactorVAEResult:
    """The FactorVAE score (Kim & Mnih, 2018) and its majority-vote classifier.

    Attributes
    ----------
    score : float
        In [0, 1]: the classifier's accuracy on the evaluation votes (equal to
        ``eval_accuracy``). Chance is about ``1 / F``; 0 when no code dimension is
        active.
    train_accuracy : float
        The classifier's accuracy on the votes it was built from.
    eval_accuracy : float
        Its accuracy on separate votes.
    votes : numpy.ndarray
        Shape ``(K, F)``, int: how often dimension ``k`` had the least normalised
        variance in a training batch whose factor ``f`` was fixed.
    eval_votes : numpy.ndarray
        Shape ``(K, F)``, int: the same for the evaluation batches.
    dim_to_factor : tuple of int
        ``K`` entries: the factor the classifier predicts for each code dimension (the
        most voted one; for a dimension without training votes, the factor fixed most
        often overall).
    active_dims : tuple of int
        The code dimensions taking part (global standard deviation above
        ``prune_threshold`` times the largest one, and non-zero).
    global_std : numpy.ndarray
        Shape ``(K,)``: the standard deviation of each code dimension over the data.
    factor_names : tuple of str
    details : dict
        ``batch_size``, ``n_train_votes``, ``n_eval_votes``, ``n_variance``,
        ``prune_threshold``, ``seed``.
    """

    score: float
    train_accuracy: float
    eval_accuracy: float
    votes: np.ndarray
    eval_votes: np.ndarray
    dim_to_factor: tuple[int, ...]
    active_dims: tuple[int, ...]
    global_std: np.ndarray
    factor_names: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary (NaN becomes ``None``; arrays become lists)."""
        return {
            "score": _json_float(self.score),
            "train_accuracy": _json_float(self.train_accuracy),
            "eval_accuracy": _json_float(self.eval_accuracy),
            "votes": _json_list(self.votes),
            "eval_votes": _json_list(self.eval_votes),
            "dim_to_factor": list(self.dim_to_factor),
            "active_dims": list(self.active_dims),
            "global_std": _json_list(self.global_std),
            "factor_names": list(self.factor_names),
            "details": dict(self.details),
        }


@dataclass(frozen=True, eq=False)
class DisentanglementResult:
    """All disentanglement metrics of one code, from :func:`disentanglement`.

    Attributes
    ----------
    mig : MetricResult
    sap : MetricResult
    dci : DCIResult
    factorvae : FactorVAEResult or None
        ``None`` when it was not asked for.
    num_points : int
        ``N``, the rows scored.
    code_dim : int
        ``K``.
    factor_names : tuple of str
    discrete : tuple of bool
    """

    mig: MetricResult
    sap: MetricResult
    dci: DCIResult
    factorvae: FactorVAEResult | None
    num_points: int
    code_dim: int
    factor_names: tuple[str, ...]
    discrete: tuple[bool, ...]

    def scores(self) -> dict[str, float | None]:
        """The headline numbers, flat: ``mig``, ``sap``, ``dci_disentanglement``,
        ``dci_completeness``, ``dci_informativeness`` and ``factorvae_score`` (``None``
        when not computed or undefined)."""
        return {
            "mig": _json_float(self.mig.score),
            "sap": _json_float(self.sap.score),
            "dci_disentanglement": _json_float(self.dci.disentanglement),
            "dci_completeness": _json_float(self.dci.completeness),
            "dci_informativeness": _json_float(self.dci.informativeness),
            "factorvae_score": (
                None if self.factorvae is None else _json_float(self.factorvae.score)
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary: ``scores`` (see :meth:`scores`) and every metric's
        own :meth:`to_dict` under ``mig``, ``sap``, ``dci`` and ``factorvae``."""
        return {
            "scores": self.scores(),
            "mig": self.mig.to_dict(),
            "sap": self.sap.to_dict(),
            "dci": self.dci.to_dict(),
            "factorvae": None if self.factorvae is None else self.factorvae.to_dict(),
            "num_points": self.num_points,
            "code_dim": self.code_dim,
            "factor_names": list(self.factor_names),
            "discrete": list(self.discrete),
        }
