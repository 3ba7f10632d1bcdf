"""The importance-weighted bound: :class:`IWAEELBO` (CLI name ``iwae``)."""

from __future__ import annotations

import math

import torch

from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.elbo.estimators import importance_log_weights
from pyrocollapse.elbo.terms import ELBOTerms
from pyrocollapse.jit import JitMode
from pyrocollapse.schedules import Schedule


@ELBOS.register("iwae")
class IWAEELBO(BaseELBO):
    """The importance-weighted bound, per data point, with vectorised particles.

    ``L_K = sum_b log (1/K) sum_k w_kb``, ``w_kb = p(x_b, z_kb) / q(z_kb | x_b)``, with
    ``z_kb ~ q(z | x_b)`` drawn in one vectorised particle plate. Each data point gets
    its own importance weights, so ``L_1`` is the ELBO and ``L_K`` rises with K towards
    log p(x) (Burda et al. 2016). Pyro's ``RenyiELBO(alpha=0)`` instead weighs whole
    traces, ``log (1/K) sum_k prod_b w_kb``, which for a batch of B points is a far
    looser bound. Plate subsampling scales each point's term; masks remove a site's
    contribution to a point's weights. Every sample site must lie in the data plate
    (the plate at dim -1) and guide sites must be reparameterised.

    Parameters
    ----------
    num_particles : int
        K, importance samples per data point (>= 1).
    kl_weight : Schedule or float
        beta: the weights become ``p(x|z) (p(z)/q(z|x))^beta`` (warm-up for importance
        weighted bounds as in Sønderby et al. 2016); only beta = 1 gives the bound.
    max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO` (the particle plate is added outside the model's plates).

    Notes
    -----
    Extras: ``iwae``, the bound summed over the batch. The base's ``elbo``,
    ``reconstruction`` and ``kl`` columns are averages over the K particles of the
    single-sample terms. The gradient is the standard reparameterised IWAE gradient,
    whose signal-to-noise ratio for the guide falls as K grows (Rainforth et al. 2018).

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Sønderby, Raiko, Maaløe, Sønderby, Winther (2016). Ladder Variational Autoencoders.
    NeurIPS.
    Rainforth et al. (2018). Tighter Variational Bounds are Not Necessarily Better. ICML.
    """

    def __init__(
        self,
        num_particles: int = 5,
        *,
        kl_weight: Schedule | float = 1.0,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        if vectorize_particles is not True:
            raise ValueError(
                f"IWAEELBO needs vectorize_particles=True, got {vectorize_particles!r}: the bound "
                "log (1/K) sum_k w_k combines the K importance weights of each data point, so "
                "the K particles must be drawn together in one plate"
            )
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_w, scale = importance_log_weights(terms, kl_weight=self.beta)
        k = log_w.shape[0]
        bound = ((torch.logsumexp(log_w, dim=0) - math.log(k)) * scale).sum()
        return -bound, {"iwae": bound}
