"""KL annealing: :class:`AnnealedELBO` (CLI name ``annealed``)."""

from __future__ import annotations

from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.jit import JitMode
from pyrocollapse.schedules import Schedule


@ELBOS.register("annealed")
class AnnealedELBO(BaseELBO):
    """ELBO with the KL weight following a schedule (KL annealing / warm-up).

    ``loss = -(E_q[log p(x|z)] - beta_t * KL(q(z|x) || p(z)))`` with ``beta_t =
    schedule(t)``, t the number of ``loss_and_grads`` calls so far.

    Parameters
    ----------
    schedule : Schedule or float
        E.g. ``Linear(warmup_steps=1000)`` or ``Cyclical(period=500, n_cycles=4)``.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    References
    ----------
    Bowman et al. (2016). Generating Sentences from a Continuous Space. CoNLL.
    Fu et al. (2019). Cyclical Annealing Schedule. NAACL.
    """

    def __init__(
        self,
        schedule: Schedule | float,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(
            schedule,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )
