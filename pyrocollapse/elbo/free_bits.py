"""Free bits: :class:`FreeBitsELBO` (CLI name ``freebits``)."""

from __future__ import annotations

import logging

import torch

from pyrocollapse._validation import check_choice, check_float
from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.elbo.terms import ELBOTerms
from pyrocollapse.jit import JitMode
from pyrocollapse.schedules import Schedule


@ELBOS.register("freebits")
class FreeBitsELBO(BaseELBO):
    """Free bits: KL below a floor of ``free_bits`` nats is not penalised.

    ``loss = -(E_q[log p(x|z)] - beta * sum_j max(lambda, E_x[KL_j]))`` where j runs over
    the latent dimensions of every site (``per="dimension"``) or over the sites
    (``per="site"``), and E_x is the average over the minibatch, as in the paper. With
    the batch summed this is ``sum_j max(lambda * N, sum_n KL_nj)`` for a batch standing
    for N points. A group whose average KL is below the floor gets no KL gradient.

    Parameters
    ----------
    free_bits : float
        The floor lambda, nats per data point per group (>= 0). 0 is exactly the ELBO:
        nothing is clamped, so Monte Carlo KL estimates below zero are kept.
    per : {"dimension", "site"}
        Group the KL per latent dimension or per site. Under ``"dimension"`` a site whose
        q or p does not factorise over the event dimension (a discrete site, a mixture
        or full-covariance prior) is floored as one group; the objective logs this once
        per site and lists such sites in :attr:`per_site_fallback`.
    kl_weight : Schedule or float
        beta, a constant or a schedule (annealing composes with free bits).
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``kl_floored`` and ``kl_floored/<site>``, the penalised KL after the floor
    (summed over the batch). Weights: ``kl_weight`` and ``free_bits``.

    References
    ----------
    Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016). Improved Variational
    Inference with Inverse Autoregressive Flow. NeurIPS.
    """

    _hyperparameters = ("free_bits", "per")

    def __init__(
        self,
        free_bits: float = 0.5,
        per: str = "dimension",
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.free_bits = check_float("free_bits", free_bits, minimum=0.0)
        self.per = check_choice("per", per, ("dimension", "site"))
        #: Sites floored as one group under ``per="dimension"`` because their q or p does
        #: not factorise over the event dimension (a discrete site, a full-covariance or
        #: mixture prior); each is logged once.
        self.per_site_fallback: list[str] = []
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
        return {"kl_weight": self.beta, "free_bits": self.free_bits}

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        extras: dict[str, torch.Tensor] = {}
        for name, t in terms.latent.items():
            if self.per == "dimension" and t.kl_per_dim is not None:
                kl = t.total_per_dim
            else:
                if self.per == "dimension" and name not in self.per_site_fallback:
                    self.per_site_fallback.append(name)
                    logging.getLogger("pyrocollapse").warning(
                        "FreeBitsELBO(per='dimension'): latent site %r has no KL per dimension "
                        "(q %s or p %s does not factorise over the event dimension); its KL is "
                        "floored as one group (free bits per site)",
                        name,
                        type(t.q).__name__,
                        type(t.p).__name__,
                    )
                kl = t.total
            if self.free_bits > 0:
                kl = torch.clamp(kl, min=self.free_bits * t.weight)
            extras[f"kl_floored/{name}"] = kl.sum()
        floored = sum(extras.values(), torch.zeros(()))
        extras["kl_floored"] = floored
        return -(terms.reconstruction - self.beta * floored - terms.auxiliary), extras
