"""FactorVAE: total correlation penalised through a density-ratio discriminator.

Kim & Mnih (2018) penalise the total correlation ``TC(z) = KL(q(z) || prod_d q(z_d))`` of
the aggregate posterior. Neither density is available, so a discriminator D learns to
tell draws of q(z) (the guide's draws of a minibatch) from draws of ``prod_d q(z_d)``
(the same draws with each dimension permuted independently across the batch). At its
optimum ``D(z) = q(z) / (q(z) + prod_d q(z_d))``, so its logit estimates
``log q(z) - log prod_d q(z_d)``, whose mean under q(z) is the TC::

    loss = -(E_q[log p(x|z)] - beta KL - gamma * sum_i logit D(z_i))

The discriminator is trained by its own optimiser (Adam, as in the paper) on the
cross-entropy of that classification, one step per gradient evaluation of the objective
(``differentiable_loss`` or ``loss_and_grads`` with gradients enabled); evaluations
without gradients (``loss``, diagnostics) leave it alone. Inside the objective's loss the
discriminator's parameters are held fixed, so the VAE's optimiser never moves them and
the VAE's gradient flows only into the draws ``z``. Because of that side effect the
objective is not compiled (``jit`` is refused).

The β-TCVAE (:class:`~pyrocollapse.elbo.BetaTCELBO`) estimates the same TC in closed
form from the minibatch (minibatch-weighted or stratified sampling); FactorVAE replaces
the estimator by a learned classifier, which scales to large batches and latent spaces
but is biased while the discriminator lags.

References
----------
Kim & Mnih (2018). Disentangling by Factorising. ICML.
Nguyen, Wainwright, Jordan (2010). Estimating divergence functionals and the likelihood
ratio by convex risk minimization. IEEE Trans. Inf. Theory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pyrocollapse._validation import check_float, check_hidden
from pyrocollapse.elbo.base import ELBOS, BaseELBO
from pyrocollapse.elbo.estimators import LocalSite
from pyrocollapse.elbo.terms import ELBOTerms
from pyrocollapse.schedules import Schedule

__all__ = ["FactorVAEELBO", "permute_dims"]


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute every column of ``z`` ``(B, D)`` independently across the rows.

    The rows of the result are draws from the product of the columns' empirical
    marginals, ``prod_d q(z_d)``, when the rows of ``z`` are draws from ``q(z)``.
    """
    if z.dim() != 2:
        raise ValueError(f"z must have shape (B, D), got {tuple(z.shape)}")
    b, d = z.shape
    keys = torch.rand(b, d, device=z.device, generator=generator)
    return torch.gather(z, 0, keys.argsort(dim=0))


class _Discriminator(nn.Module):
    """MLP logit of "this draw comes from q(z)" (vs. from prod_d q(z_d))."""

    def __init__(self, dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        sizes = (dim, *hidden, 1)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


@ELBOS.register("factorvae")
class FactorVAEELBO(BaseELBO):
    """FactorVAE (Kim & Mnih 2018): the ELBO minus ``gamma`` times a discriminator's TC.

    ``loss = -(E_q[log p(x|z)] - beta KL - gamma TC_D(z))`` per local latent site, with
    ``TC_D`` the discriminator's estimate of the total correlation of the aggregate
    posterior, summed over the batch's points like the other terms (scaled by plate
    subsampling). One discriminator per local site, built at the site's first
    evaluation. See :mod:`pyrocollapse.elbo.factor_vae`.

    Parameters
    ----------
    gamma : float
        Weight of the total correlation (>= 0; the paper uses 6.4 to 40 on image data).
    hidden : tuple of int
        Hidden widths of each site's discriminator (LeakyReLU MLP).
    discriminator_lr : float
        Adam learning rate of the discriminators (betas 0.5, 0.9 as in the paper).
    kl_weight : Schedule or float
        beta, a constant or a schedule.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, analytic_kl :
        As for :class:`~pyrocollapse.elbo.BaseELBO`.
    jit : {"auto", False}
        Accepted for a uniform signature; the objective always runs eagerly ("auto" and
        False), since it steps its discriminators as a side effect. ``True`` is refused.

    Notes
    -----
    Extras: ``total_correlation`` (and ``/<site>``): the discriminator's TC estimate
    summed over the batch; ``discriminator_loss`` (and ``/<site>``): its cross-entropy
    (nats per pair of draws, 2 log 2 = 1.386 when it cannot tell them apart). Weights:
    ``kl_weight``, ``tc_weight``. Needs at least two rows per site and batch.
    :meth:`state_dict` holds the discriminators and their optimisers, so ``fit``'s
    checkpoints resume them.

    Examples
    --------
    >>> elbo = FactorVAEELBO(gamma=6.4)
    >>> elbo.hyperparameters()["gamma"]
    6.4
    """

    _hyperparameters = ("gamma", "hidden", "discriminator_lr")
    compilable = False

    def __init__(
        self,
        gamma: float = 6.4,
        hidden: tuple[int, ...] = (256, 256),
        discriminator_lr: float = 1e-4,
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: Any = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.gamma = check_float("gamma", gamma, minimum=0.0)
        self.hidden = check_hidden("hidden", hidden)
        self.discriminator_lr = check_float(
            "discriminator_lr", discriminator_lr, minimum=0.0, strict_minimum=True
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
        self.discriminators = nn.ModuleDict()
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._pending_state: dict[str, Any] | None = None

    @property
    def weights(self) -> dict[str, float]:
        return {"kl_weight": self.beta, "tc_weight": self.gamma}

    # -- discriminators ----------------------------------------------------------------
    def discriminator(self, site: str, dim: int, like: torch.Tensor) -> nn.Module:
        """The discriminator of ``site`` (built on first use for latents of width ``dim``,
        on the device and dtype of ``like``)."""
        key = self._key(site)
        if key not in self.discriminators:
            # initialised from the RNG without advancing it, so that building a
            # discriminator (first use, or after load_state_dict on resume) never shifts
            # the draws of the training run
            devices = [like.device] if like.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                net = _Discriminator(dim, self.hidden).to(device=like.device, dtype=like.dtype)
            self.discriminators[key] = net
            self._optimizers[key] = torch.optim.Adam(
                net.parameters(), lr=self.discriminator_lr, betas=(0.5, 0.9)
            )
            self._restore_pending(key)
        return self.discriminators[key]

    @staticmethod
    def _key(site: str) -> str:
        """The site's key in :attr:`discriminators` (module names cannot contain dots)."""
        return site.replace(".", "_")

    @staticmethod
    def _cross_entropy(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``net`` telling ``z`` (label 1) from ``permute_dims(z)`` (label 0)."""
        logits_q = net(z)
        logits_prod = net(permute_dims(z))
        return F.binary_cross_entropy_with_logits(
            logits_q, torch.ones_like(logits_q)
        ) + F.binary_cross_entropy_with_logits(logits_prod, torch.zeros_like(logits_prod))

    def _train_discriminator(self, key: str, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """One Adam step of the cross-entropy of ``net`` on ``z`` vs. ``permute_dims(z)``."""
        with torch.enable_grad():
            ce = self._cross_entropy(net, z.detach())
            opt = self._optimizers[key]
            opt.zero_grad(set_to_none=True)
            ce.backward(inputs=list(net.parameters()))
            opt.step()
        return ce.detach()

    def _site_tc(self, s: LocalSite) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed TC estimate of the site, discriminator cross-entropy)."""
        z = s.z[s.mask] if not bool(s.mask.all()) else s.z
        if z.shape[0] < 2:
            raise ValueError(
                f"FactorVAEELBO needs at least 2 rows of site {s.name!r} per batch to permute "
                f"its dimensions, got {z.shape[0]}"
            )
        net = self.discriminator(s.name, s.z.shape[-1], s.z)
        # the VAE's loss sees the discriminator with its parameters held fixed: copies,
        # since the discriminator's own step below updates the parameters in place
        frozen = {k: v.detach().clone() for k, v in net.named_parameters()}
        logits = functional_call(net, frozen, (s.z,))
        if torch.is_grad_enabled():
            ce = self._train_discriminator(self._key(s.name), net, z)
        else:  # evaluations without gradients (loss(), diagnostics) leave it alone
            ce = self._cross_entropy(net, z)
        return s.total(logits), ce

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, _ = self._local_sites(terms)
        extras: dict[str, torch.Tensor] = {}
        tc_total = torch.zeros(())
        ce_total = torch.zeros(())
        for s in local:
            tc, ce = self._site_tc(s)
            for name, value in ((f"total_correlation/{s.name}", tc), (f"discriminator_loss/{s.name}", ce)):
                extras[name] = extras[name] + value if name in extras else value
            tc_total = tc_total + tc
            ce_total = ce_total + ce
        extras["total_correlation"] = tc_total
        extras["discriminator_loss"] = ce_total
        elbo = terms.reconstruction - self.beta * terms.kl - terms.auxiliary
        return -(elbo - self.gamma * tc_total), extras

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The discriminators' weights and optimiser states, by site (for checkpoints)."""
        return {
            key: {
                "dim": net.net[0].in_features,
                "weights": net.state_dict(),
                "optimizer": self._optimizers[key].state_dict(),
            }
            for key, net in self.discriminators.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; discriminators not built yet are restored when
        their site is first evaluated."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        self._pending_state = dict(state)
        for key in list(self.discriminators):
            self._restore_pending(key)

    def _restore_pending(self, key: str) -> None:
        if not self._pending_state or key not in self._pending_state:
            return
        saved = self._pending_state.pop(key)
        self.discriminators[key].load_state_dict(saved["weights"])
        self._optimizers[key].load_state_dict(saved["optimizer"])
