"""The ELBO plus the minibatch mutual information: :class:`MIRegularizedELBO` (CLI
name ``mi``).
"""

from __future__ import annotations

import torch

from pyrocollapse._validation import check_choice, check_float
from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.elbo.estimators import AGGREGATE_ESTIMATORS, minibatch_mutual_information
from pyrocollapse.elbo.terms import ELBOTerms
from pyrocollapse.jit import JitMode
from pyrocollapse.schedules import Schedule


@ELBOS.register("mi")
class MIRegularizedELBO(BaseELBO):
    """ELBO plus ``alpha`` times the mutual information I_q(x; z), estimated per minibatch.

    ``loss = -(E_q[log p(x|z)] - beta * KL + alpha * N * I_q(x; z))`` with I_q the
    minibatch estimate of :func:`minibatch_mutual_information` from q(z|x) and the
    minibatch aggregate posterior, summed over local latent sites. Since
    ``E_x KL = I_q + KL(q(z) || p(z))`` (Hoffman & Johnson 2016), the objective stops
    penalising the information a latent carries in proportion ``alpha`` and rewards
    latents that carry information, countering collapse. Global latent sites keep their
    plain KL.

    Parameters
    ----------
    alpha : float
        Weight of I_q (>= 0; 0 is the beta-ELBO).
    estimator : {"batch", "stratified", "mws"}
        Estimator of the aggregate posterior (see :func:`log_aggregate_posterior`).
        ``"batch"`` treats the minibatch as the data (He et al. 2019; I_q <= log B);
        the others use the data-set size N read from the plate's subsampling scale.
    kl_weight : Schedule or float
        beta, a constant or a schedule.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``mi_batch`` and ``mi_batch/<site>``: N times the minibatch estimate (so that
    ``fit``'s per-data-point column is I_q in nats). Weights: ``kl_weight``,
    ``mi_weight``. With ``alpha > kl_weight`` and the ``"batch"`` estimator the reward
    saturates at log B. Every site needs at least two rows for a useful estimate.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    Zhao, Song, Ermon (2019). InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders. AAAI.
    Hoffman & Johnson (2016). ELBO surgery. NeurIPS AABI workshop.
    """

    _hyperparameters = ("alpha", "estimator")

    def __init__(
        self,
        alpha: float = 1.0,
        estimator: str = "batch",
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

    @property
    def weights(self) -> dict[str, float]:
        return {"kl_weight": self.beta, "mi_weight": self.alpha}

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, _ = self._local_sites(terms)
        extras: dict[str, torch.Tensor] = {}
        for s in local:
            key = f"mi_batch/{s.name}"
            value = s.total(minibatch_mutual_information(s, self.estimator))
            extras[key] = extras[key] + value if key in extras else value
        mi = sum(extras.values(), torch.zeros(()))
        extras["mi_batch"] = mi
        elbo = terms.reconstruction - self.beta * terms.kl - terms.auxiliary
        return -(elbo + self.alpha * mi), extras
