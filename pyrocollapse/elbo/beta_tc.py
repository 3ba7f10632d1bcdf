"""The beta-TCVAE objective: :class:`BetaTCELBO` (CLI name ``betatc``)."""

from __future__ import annotations

from typing import Any

import torch

from pyrocollapse._validation import check_choice, check_float
from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.elbo.estimators import AGGREGATE_ESTIMATORS, total_correlation_decomposition
from pyrocollapse.elbo.terms import ELBOTerms
from pyrocollapse.jit import JitMode
from pyrocollapse.schedules import Schedule


@ELBOS.register("betatc")
class BetaTCELBO(BaseELBO):
    """beta-TCVAE: the KL split into index-code MI, total correlation and dimension-wise
    KL, each weighted.

    ``loss = -(E_q[log p(x|z)] - w (alpha I_q(x; z) + beta TC(z) + gamma sum_d
    KL(q(z_d) || p(z_d))))`` per local latent site (:func:`total_correlation_decomposition`),
    with w the ``kl_weight``. The three terms are Monte Carlo estimates at the guide's
    draw and add up to the Monte Carlo KL, so ``alpha = beta = gamma = 1`` is Pyro's
    ``Trace_ELBO``. Global latent sites keep ``w`` times their KL.

    Parameters
    ----------
    alpha, beta, gamma : float
        Weights of index-code MI, total correlation and dimension-wise KL (>= 0).
        ``beta > 1`` penalises dependence between latent dimensions.
    estimator : {"stratified", "mws", "batch"}
        Estimator of the aggregate posterior and its marginals
        (:func:`log_aggregate_posterior`); ``"stratified"`` (default) is unbiased for
        q(z), ``"mws"`` is the paper's minibatch weighted sampling (its log(NM) offsets
        shift the reported terms but not the gradients). Needs a factorised guide.
    kl_weight : Schedule or float
        w, a constant or a schedule multiplying all three terms.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``index_code_mi``, ``total_correlation``, ``dimwise_kl`` (and ``/<site>``),
    summed over the batch. Weights: ``kl_weight``, ``mi_weight``, ``tc_weight``,
    ``dimwise_kl_weight``.

    References
    ----------
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    Hoffman & Johnson (2016). ELBO surgery. NeurIPS AABI workshop.
    """

    _PARTS = ("index_code_mi", "total_correlation", "dimwise_kl")
    _hyperparameters = ("alpha", "beta", "gamma", "estimator")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        estimator: str = "stratified",
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.alpha = check_float("alpha", alpha, minimum=0.0)
        self.tc_weight = check_float("beta", beta, minimum=0.0)
        self.gamma = check_float("gamma", gamma, minimum=0.0)
        self.estimator = check_choice("estimator", estimator, AGGREGATE_ESTIMATORS)
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    def hyperparameters(self) -> dict[str, Any]:
        # ``beta`` is the base's current KL weight; the TC weight lives in ``tc_weight``
        return {**super().hyperparameters(), "beta": self.tc_weight}

    @property
    def weights(self) -> dict[str, float]:
        return {
            "kl_weight": self.beta,
            "mi_weight": self.alpha,
            "tc_weight": self.tc_weight,
            "dimwise_kl_weight": self.gamma,
        }

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, global_ = self._local_sites(terms)
        coef = dict(zip(self._PARTS, (self.alpha, self.tc_weight, self.gamma), strict=True))
        extras: dict[str, torch.Tensor] = {}
        penalty = sum((t.total for t in global_), torch.zeros(()))
        for s in local:
            rows = total_correlation_decomposition(s, self.estimator)
            for part, r in rows.items():
                total = s.total(r)
                key = f"{part}/{s.name}"
                extras[key] = extras[key] + total if key in extras else total
                extras[part] = extras.get(part, torch.zeros(())) + total
                penalty = penalty + coef[part] * total
        for part in self._PARTS:
            extras.setdefault(part, torch.zeros(()))
        return -(terms.reconstruction - self.beta * penalty - terms.auxiliary), extras
