"""The standard ELBO, :class:`PlainELBO` (CLI name ``elbo``)."""

from __future__ import annotations

from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.jit import JitMode


@ELBOS.register("elbo")
class PlainELBO(BaseELBO):
    """The standard ELBO (KL weight 1), through the shared machinery.

    ``loss = -(E_q[log p(x|z)] - KL(q(z|x) || p(z)))``. Equals Pyro's
    ``TraceMeanField_ELBO`` (analytic KL) on the same trace, and ``Trace_ELBO`` where no
    closed-form KL exists.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Examples
    --------
    >>> import pyro, torch
    >>> from pyrocollapse.models import MLPVAE
    >>> vae = MLPVAE(8, 2, hidden=(16,))
    >>> x = torch.rand(32, 8)
    >>> elbo = PlainELBO()  # jit="auto": compiled once a run is long enough
    >>> losses = [elbo.loss(vae.model, vae.guide, x) for _ in range(3)]
    >>> elbo.compiled.compilations  # three calls are not
    0

    References
    ----------
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    """

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(
            1.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )
