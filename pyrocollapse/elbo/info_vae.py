"""InfoVAE with an MMD divergence: :class:`InfoVAEELBO` (CLI name ``infovae``)."""

from __future__ import annotations

import torch

from pyrocollapse._validation import check_choice, check_float
from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.elbo.estimators import KERNELS, mmd
from pyrocollapse.elbo.terms import ELBOTerms
from pyrocollapse.jit import JitMode
from pyrocollapse.schedules import Schedule


@ELBOS.register("infovae")
class InfoVAEELBO(BaseELBO):
    """InfoVAE with a maximum-mean-discrepancy divergence (MMD-VAE).

    ``loss = -(E_q[log p(x|z)] - (1 - alpha) beta KL - (alpha + lambda - 1) N MMD^2(q(z),
    p(z)))``, Zhao et al.'s objective with D = MMD^2 between the aggregate posterior
    (the guide's draws over the minibatch) and the prior (as many fresh draws from the
    model site's distribution, reparameterised where possible so learnable priors
    train). ``alpha`` sets the preference for information in z (``alpha = 1`` drops the
    per-point KL), ``lambda`` the weight of the aggregate divergence. Global latent
    sites keep their KL.

    Parameters
    ----------
    alpha : float
        Information preference, <= 1 (so the KL weight ``1 - alpha`` is >= 0).
    lambda_ : float
        Divergence weight, >= 0, with ``alpha + lambda_ - 1 >= 0`` (the MMD weight).
        ``alpha=0, lambda_=1`` is the ELBO.
    kernel : {"imq", "rbf"}
        Kernel of the MMD (:func:`imq_kernel`, :func:`rbf_kernel`).
    bandwidth : float or None
        Kernel scale C (> 0); default ``2 * latent_dim``.
    kl_weight : Schedule or float
        beta, a constant or a schedule multiplying the KL term.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``mmd`` and ``mmd/<site>``: N times the unbiased MMD^2 estimate (the
    per-data-point column is MMD^2). Weights: ``kl_weight`` (the effective
    ``(1 - alpha) beta``) and ``mmd_weight``. Drawing the prior samples uses the global
    torch RNG, so results are deterministic given the seed.

    References
    ----------
    Zhao, Song, Ermon (2019). InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders. AAAI.
    Gretton, Borgwardt, Rasch, Schoelkopf, Smola (2012). A Kernel Two-Sample Test. JMLR.
    Tolstikhin, Bousquet, Gelly, Schoelkopf (2018). Wasserstein Auto-Encoders. ICLR.
    """

    _hyperparameters = ("alpha", "lambda_", "kernel", "bandwidth")

    def __init__(
        self,
        alpha: float = 0.0,
        lambda_: float = 1000.0,
        kernel: str = "imq",
        bandwidth: float | None = None,
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.alpha = check_float("alpha", alpha, maximum=1.0)
        self.lambda_ = check_float("lambda_", lambda_, minimum=0.0)
        if self.alpha + self.lambda_ - 1.0 < 0:
            raise ValueError(
                f"alpha + lambda_ - 1 (the MMD weight) must be >= 0, got alpha={self.alpha}, "
                f"lambda_={self.lambda_}; e.g. alpha=0, lambda_=1 is the ELBO"
            )
        self.kernel = check_choice("kernel", kernel, KERNELS)
        self.bandwidth = (
            None
            if bandwidth is None
            else check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
        )
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
    def mmd_weight(self) -> float:
        """``alpha + lambda_ - 1``."""
        return self.alpha + self.lambda_ - 1.0

    @property
    def weights(self) -> dict[str, float]:
        return {"kl_weight": (1.0 - self.alpha) * self.beta, "mmd_weight": self.mmd_weight}

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, global_ = self._local_sites(terms)
        extras: dict[str, torch.Tensor] = {}
        for s in local:
            prior = s.sample_prior()
            d = mmd(s.z[s.mask], prior[s.mask], kernel=self.kernel, bandwidth=self.bandwidth)
            value = s.total(d.expand(s.mask.shape))  # N MMD^2
            key = f"mmd/{s.name}"
            extras[key] = extras[key] + value if key in extras else value
        divergence = sum(extras.values(), torch.zeros(()))
        extras["mmd"] = divergence
        names = dict.fromkeys(s.name for s in local)
        local_kl = sum((terms.latent[n].total for n in names), torch.zeros(()))
        global_kl = sum((t.total for t in global_), torch.zeros(()))
        kl = (1.0 - self.alpha) * self.beta * local_kl + self.beta * global_kl
        elbo = terms.reconstruction - kl - terms.auxiliary
        return -(elbo - self.mmd_weight * divergence), extras
