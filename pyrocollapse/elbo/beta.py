"""The beta-VAE objective: :class:`BetaELBO` (CLI name ``beta``)."""

from __future__ import annotations

from pyrocollapse._validation import check_float
from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.jit import JitMode


@ELBOS.register("beta")
class BetaELBO(BaseELBO):
    """beta-VAE objective ``-(E_q[log p(x|z)] - beta * KL)`` with a fixed ``beta >= 0``.

    Parameters
    ----------
    beta : float
        KL weight (>= 0; 0 gives a plain autoencoder with a stochastic encoder).
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    For a Gaussian decoder with fixed variance sigma^2 the objective equals, up to a
    factor and a constant, the ELBO of the same model with noise variance beta sigma^2;
    in a linear VAE a latent direction with data-covariance eigenvalue lambda collapses
    iff ``lambda <= beta sigma^2`` (Lucas et al. 2019).

    References
    ----------
    Higgins et al. (2017). beta-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework. ICLR.
    Lucas, Tucker, Grosse, Norouzi (2019). Don't Blame the ELBO! A Linear VAE Perspective
    on Posterior Collapse. NeurIPS.
    """

    def __init__(
        self,
        beta: float = 1.0,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(
            check_float("beta", beta, minimum=0.0),
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )
