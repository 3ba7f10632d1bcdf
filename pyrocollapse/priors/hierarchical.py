"""The two-level hierarchical prior (command-line name ``hierarchical``)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import DenseNN, pyro_method
from torch.nn.functional import softplus

from pyrocollapse._validation import check_choice, check_float, check_hidden, check_int
from pyrocollapse.priors.base import PRIORS, Prior, _check_name

__all__ = ["PROPOSALS", "HierarchicalPrior"]


#: Accepted values of ``HierarchicalPrior.log_prob(proposal=...)``.
PROPOSALS = ("defensive", "guide", "prior")


@PRIORS.register("hierarchical")
class HierarchicalPrior(Prior):
    """Two-level prior: ``t ~ N(0, I_top)``, ``z | t ~ N(mu(t), diag(sigma(t)^2))``.

    ``mu`` and ``sigma`` come from a small MLP (``sigma = softplus(.) + min_scale``). The
    prior samples two sites, ``f"{name}_top"`` (t) and ``name`` (z), and supplies the
    matching guide piece: :meth:`guide` samples ``f"{name}_top"`` from an amortised
    ``q(t | z) = N(m(z), diag(s(z)^2))`` (a second small MLP owned by the prior), so a
    model/guide pair with this prior trains under SVI unchanged.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    top_dim : int or None
        Dimension of t (>= 1); default ``max(1, latent_dim // 2)``.
    hidden : tuple[int, ...]
        Hidden widths of the network t -> (mu, sigma) (at least one layer).
    guide_hidden : tuple[int, ...] or None
        Hidden widths of the network z -> q(t | z); default ``hidden``.
    min_scale : float
        Floor on sigma and on the scale of q(t | z) (>= 0).

    Notes
    -----
    The marginal p(z) = E_{p(t)}[p(z | t)] is intractable: :meth:`log_prob` returns an
    importance-sampled *estimate* (stochastic; unbiased for p(z) itself, hence a lower
    bound on log p(z) in expectation, by Jensen), and :meth:`distribution` is not
    available. :meth:`sample` draws exactly (ancestral sampling).

    In a trained model the site ``name`` carries the *conditional* p(z | t), so
    per-dimension diagnostics of ``"z"`` (e.g. ``diagnose(..., latent_sites=("z",
    "z_top"))``) report KL(q(z|x) || p(z | t)) at the guide's draw of t, and those of
    ``"z_top"`` report KL(q(t | z) || N(0, I)).

    The guide samples z before t (q(z|x) q(t|z)) while the model conditions z on t, so the
    guide is not mean-field: an ELBO must not replace the z term by the closed-form
    KL(q(z|x) || p(z | t)) at a t drawn given z. The :mod:`pyrocollapse.elbo` objectives
    detect this from the order of the sites and use the Monte Carlo term for z, as
    ``pyro.infer.Trace_ELBO`` does; ``pyro.infer.TraceMeanField_ELBO`` would be biased.

    References
    ----------
    Sønderby et al. (2016). Ladder Variational Autoencoders. NeurIPS.
    Klushyn et al. (2019). Learning Hierarchical Priors in VAEs. NeurIPS.
    Hesterberg (1995). Weighted Average Importance Sampling and Defensive Mixture
    Distributions. Technometrics (the defensive proposal of :meth:`log_prob`).
    """

    factorized = False

    def __init__(
        self,
        latent_dim: int,
        top_dim: int | None = None,
        hidden: tuple[int, ...] = (32,),
        *,
        guide_hidden: tuple[int, ...] | None = None,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(latent_dim)
        if top_dim is None:
            top_dim = max(1, self.latent_dim // 2)
        self.top_dim = check_int("top_dim", top_dim, minimum=1)
        hidden = self._check_layers("hidden", hidden)
        guide_hidden = (
            hidden if guide_hidden is None else self._check_layers("guide_hidden", guide_hidden)
        )
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        d, t = self.latent_dim, self.top_dim
        self.net = DenseNN(t, list(hidden), param_dims=[d, d])
        self.guide_net = DenseNN(d, list(guide_hidden), param_dims=[t, t])
        self.register_buffer("_top_loc", torch.zeros(t))
        self.register_buffer("_top_scale", torch.ones(t))

    @staticmethod
    def _check_layers(name: str, value: object) -> tuple[int, ...]:
        layers = check_hidden(name, value)
        if not layers:
            raise ValueError(f"{name} must have at least one hidden layer, got {value!r}")
        return layers

    # -- the three distributions ---------------------------------------------------------
    def top_distribution(self) -> dist.TorchDistribution:
        """p(t) = N(0, I_top): batch shape ``()``, event shape ``(top_dim,)``."""
        return dist.Normal(self._top_loc, self._top_scale).to_event(1)

    def conditional(self, z_top: torch.Tensor) -> dist.TorchDistribution:
        """p(z | t): batch shape ``z_top.shape[:-1]``, event shape ``(latent_dim,)``."""
        loc, raw = self.net(z_top)
        return dist.Normal(loc, softplus(raw) + self.min_scale).to_event(1)

    def posterior(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The guide piece q(t | z): batch shape ``z.shape[:-1]``, event shape ``(top_dim,)``."""
        loc, raw = self.guide_net(z)
        return dist.Normal(loc, softplus(raw) + self.min_scale).to_event(1)

    # -- Pyro programs ---------------------------------------------------------------------
    def forward(self, name: str = "z") -> torch.Tensor:
        """Sample ``f"{name}_top"`` then ``name`` inside the caller's plates; return z."""
        name = _check_name(name)
        z_top = pyro.sample(f"{name}_top", self.top_distribution())
        return pyro.sample(name, self.conditional(z_top))

    @pyro_method
    def guide(self, name: str, z: torch.Tensor) -> None:
        """Sample ``f"{name}_top"`` from q(t | z), inside the caller's plates."""
        name = _check_name(name)
        self._check_z(z)
        pyro.sample(f"{name}_top", self.posterior(z))

    def distribution(self) -> dist.TorchDistribution:
        raise NotImplementedError(
            "HierarchicalPrior has no tractable p(z) distribution; use log_prob(z, "
            "num_samples=...) (an importance-sampled estimate), sample(n), or "
            "conditional(z_top) for p(z | z_top)"
        )

    def marginal(self, dim: int) -> dist.TorchDistribution:
        raise NotImplementedError("HierarchicalPrior has no closed-form univariate marginal p(z_d)")

    # -- densities and draws -----------------------------------------------------------------
    def log_prob(
        self, z: torch.Tensor, num_samples: int = 128, *, proposal: str = "defensive"
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(z) (stochastic).

        ``log (1/S) sum_s p(z | t_s) p(t_s) / r(t_s | z)`` with S = ``num_samples`` draws
        t_s from the proposal r. The inner average is unbiased for p(z), so the estimate
        is a lower bound on log p(z) in expectation; the gap shrinks as S grows and as r
        approaches p(t | z). Differentiable (reparameterised draws).

        Parameters
        ----------
        z : torch.Tensor
            Shape ``batch_shape + (latent_dim,)``.
        num_samples : int
            Importance samples S per point (>= 1); memory is O(S * batch * latent_dim).
        proposal : {"defensive", "guide", "prior"}
            ``"guide"``: r = q(t | z), the amortised guide piece (tight once trained).
            ``"prior"``: r = p(t). ``"defensive"`` (default): ceil(S/2) draws from q(t|z)
            and the rest from p(t), weighted by the mixture density, so the weights stay
            bounded by 2 p(z | t) even while q is untrained (Hesterberg 1995).

        Returns
        -------
        torch.Tensor
            Shape ``batch_shape`` (nats).
        """
        self._check_z(z)
        s = check_int("num_samples", num_samples, minimum=1)
        proposal = check_choice("proposal", proposal, PROPOSALS)
        batch = z.shape[:-1]
        prior_t = self.top_distribution()
        q = self.posterior(z)
        # draws: n_q from q(t | z), n_p from p(t); r is the matching mixture density
        n_q = {"guide": s, "prior": 0, "defensive": (s + 1) // 2}[proposal]
        n_p = s - n_q
        draws, log_r_parts = [], []
        if n_q:
            draws.append(q.rsample((n_q,)))
        if n_p:
            draws.append(prior_t.expand(batch).rsample((n_p,)))
        t = torch.cat(draws)  # (S, *batch, top_dim)
        log_p_t = prior_t.log_prob(t)
        if n_q:
            log_r_parts.append(q.log_prob(t) + math.log(n_q / s))
        if n_p:
            log_r_parts.append(log_p_t + math.log(n_p / s))
        log_r = torch.logsumexp(torch.stack(log_r_parts), 0)
        log_w = self.conditional(t).log_prob(z) + log_p_t - log_r
        return torch.logsumexp(log_w, 0) - math.log(s)

    def sample(self, n: int) -> torch.Tensor:
        """Ancestral draws t ~ p(t), z ~ p(z | t), shape ``(n, latent_dim)``."""
        n = check_int("n", n, minimum=1)
        with torch.no_grad():
            return self.conditional(self.top_distribution().sample((n,))).sample()

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, top_dim={self.top_dim}"
