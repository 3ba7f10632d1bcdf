"""The linear VAE: probabilistic PCA learned by variational inference."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from torch import nn

from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.models.base import MODELS, VAE, vector_input_dim
from pyrocollapse.priors import Prior

if TYPE_CHECKING:
    from pyrocollapse.data import Dataset

__all__ = ["LinearVAE", "PPCASolution"]

_LOG_2PI = math.log(2 * math.pi)

#: Default relative tolerance of the collapse rule ``lambda_i <= beta sigma^2``.
COLLAPSE_RTOL = 1e-6
#: Default absolute tolerance of the collapse rule (in units of the eigenvalues).
COLLAPSE_ATOL = 0.0


def _collapse_rule(lam: torch.Tensor, threshold: float, rtol: object, atol: object) -> torch.Tensor:
    """``lam <= threshold * (1 + rtol) + atol``, elementwise, with the tolerances checked."""
    rtol = check_float("rtol", rtol, minimum=0.0)
    atol = check_float("atol", atol, minimum=0.0)
    return lam <= threshold * (1.0 + rtol) + atol


@dataclass(frozen=True, eq=False)
class PPCASolution:
    """The closed-form optimum of probabilistic PCA and of the linear (beta-)VAE.

    Made by :meth:`LinearVAE.ppca_optimum`. All tensors are float64, on the device of
    the data they were computed from; equality is by identity (tensors have no single
    truth value).

    Attributes
    ----------
    loading : torch.Tensor
        W, shape ``(D, k)``: ``U_k diag(sqrt(max(lambda_i - beta sigma^2, 0)))`` with the
        rotation fixed to the identity, which is the orientation a linear VAE with a
        diagonal posterior converges to (Lucas et al. 2019).
    mean : torch.Tensor
        mu, shape ``(D,)``.
    noise_variance : float
        sigma^2 of the decoder (the MLE, mean of the discarded eigenvalues, unless fixed).
    eigenvalues : torch.Tensor
        All ``D`` eigenvalues of the covariance, in decreasing order.
    basis : torch.Tensor
        U_k, the leading ``k`` eigenvectors as columns, shape ``(D, k)``.
    log_likelihood : float
        Mean log-likelihood per data point of the optimum, ``log N(x | mu, W W^T +
        sigma^2 I)`` averaged over the data (or its expectation under the given
        covariance).
    beta : float
        KL weight the optimum is for (1: pPCA and the plain ELBO).
    """

    loading: torch.Tensor
    mean: torch.Tensor
    noise_variance: float
    eigenvalues: torch.Tensor
    basis: torch.Tensor
    log_likelihood: float
    beta: float = 1.0

    @property
    def latent_dim(self) -> int:
        return int(self.loading.shape[1])

    @property
    def leading_eigenvalues(self) -> torch.Tensor:
        """lambda_1 >= ... >= lambda_k, shape ``(k,)``."""
        return self.eigenvalues[: self.latent_dim]

    @property
    def effective_noise_variance(self) -> float:
        """``beta * sigma^2``: the threshold of the collapse rule."""
        return self.beta * self.noise_variance

    @property
    def collapsed(self) -> torch.Tensor:
        """Boolean mask ``(k,)``: ``lambda_i <= beta sigma^2`` (the analytic collapse rule),
        with the default tolerances of :meth:`collapsed_dimensions`."""
        return self.collapsed_dimensions()

    def collapsed_dimensions(
        self, *, rtol: float = COLLAPSE_RTOL, atol: float = COLLAPSE_ATOL
    ) -> torch.Tensor:
        """The analytic collapse rule with a tolerance for ties at the boundary.

        Direction i collapses iff ``lambda_i <= beta sigma^2 (1 + rtol) + atol``. At the
        boundary ``lambda_i = beta sigma^2`` the direction is collapsed (zero loading, zero
        KL), but the two sides are computed differently (an eigenvalue of the sample
        covariance against the noise MLE or a squared ``noise``) and can differ in their
        last bits either way; the tolerance counts such ties as collapsed.

        Parameters
        ----------
        rtol : float
            Relative tolerance on ``beta sigma^2`` (>= 0; default 1e-6, far above float64
            rounding and far below any difference that matters for the optimum: a
            direction with ``lambda_i = beta sigma^2 (1 + rtol)`` has an expected KL of
            ``log(1 + rtol) / 2 ~ 5e-7`` nats).
        atol : float
            Absolute tolerance in units of the eigenvalues (>= 0; default 0).

        Returns
        -------
        torch.Tensor
            Boolean, shape ``(k,)``.
        """
        return _collapse_rule(self.leading_eigenvalues, self.effective_noise_variance, rtol, atol)

    @property
    def kl_per_dim(self) -> torch.Tensor:
        """E_x KL(q(z_i|x) || p(z_i)) at the optimum, shape ``(k,)``:
        ``max(0, log(lambda_i / (beta sigma^2)) / 2)``, exactly 0 where :attr:`collapsed`."""
        ratio = self.leading_eigenvalues / self.effective_noise_variance
        return torch.where(self.collapsed, 0.0, 0.5 * torch.log(ratio.clamp(min=1.0)))

    @property
    def posterior_scale(self) -> torch.Tensor:
        """Scale of q(z_i|x) at the optimum, ``sqrt(min(beta sigma^2 / lambda_i, 1))``,
        exactly 1 where :attr:`collapsed`."""
        scale = torch.sqrt(
            (self.effective_noise_variance / self.leading_eigenvalues).clamp(max=1.0)
        )
        return torch.where(self.collapsed, 1.0, scale)

    @property
    def encoder_weight(self) -> torch.Tensor:
        """V of q(z|x) = N(V (x - mu), diag(s^2)) at the optimum, shape ``(k, D)``:
        ``M^{-1} W^T`` with ``M = W^T W + beta sigma^2 I``."""
        lam = self.leading_eigenvalues
        gain = torch.sqrt((lam - self.effective_noise_variance).clamp(min=0.0)) / lam
        gain = torch.where(self.collapsed, 0.0, gain)
        return gain[:, None] * self.basis.T

    @property
    def covariance(self) -> torch.Tensor:
        """Model covariance ``W W^T + sigma^2 I``, shape ``(D, D)``."""
        eye = torch.eye(self.loading.shape[0], dtype=self.loading.dtype, device=self.loading.device)
        return self.loading @ self.loading.T + self.noise_variance * eye


@MODELS.register("linear")
class LinearVAE(VAE):
    """The linear VAE, whose optimum is probabilistic PCA (Lucas et al. 2019).

    ::

        p(z) = prior (N(0, I) for the closed forms)
        p(x|z) = N(W z + mu, sigma^2 I)
        q(z|x) = N(V (x - mu), diag(s^2))     (amortised linear mean, data-independent scale)

    Parameters
    ----------
    input_dim : int
        Data dimension D.
    latent_dim : int
        Latent dimension k.
    prior : Prior or None
        p(z); default ``StandardNormalPrior(latent_dim)``. Any prior trains; the closed
        forms (:meth:`marginal_log_likelihood`, :meth:`posterior`, :meth:`analytic_elbo`)
        need a Gaussian prior with diagonal covariance, and :meth:`ppca_optimum` assumes
        N(0, I).
    noise : "learned" or float
        The decoder's observation **standard deviation** sigma: ``"learned"`` (a free
        parameter, initialised at 1) or a fixed positive float.
    init_std : float
        Standard deviation of the random initial W and V.
    name : str or None
        Prefix of the parameters in Pyro's parameter store (see :class:`VAE`).

    Attributes
    ----------
    loading : nn.Parameter
        W, shape ``(input_dim, latent_dim)``.
    loc : nn.Parameter
        mu, shape ``(input_dim,)``, shared by p(x|z) and q(z|x).
    encoder_weight : nn.Parameter
        V, shape ``(latent_dim, input_dim)``.
    posterior_log_scale : nn.Parameter
        log s, shape ``(latent_dim,)``.

    Notes
    -----
    Collapse here is a property of the optimum, not of optimisation: with the prior
    N(0, I) the ELBO has no spurious local optima, its global optimum is the pPCA
    maximum-likelihood solution (Tipping & Bishop 1999), and the ELBO is tight there.
    Writing lambda_1 >= ... >= lambda_D for the eigenvalues of the data covariance, the
    latent direction i keeps ``||W_i||^2 = lambda_i - sigma^2`` and *collapses*
    (``W_i = 0``, ``q(z_i|x) = p(z_i)``) exactly when ``lambda_i <= sigma^2``; a beta-VAE
    replaces sigma^2 by ``beta sigma^2``. With a learned sigma^2 (the mean of the
    discarded eigenvalues) collapse hits only the surplus dimensions beyond the data's
    signal rank; with a fixed, too large sigma^2 it hits every direction below the noise
    floor. At the optimum the expected KL of an active dimension is
    ``log(lambda_i / sigma^2) / 2``.

    References
    ----------
    Tipping & Bishop (1999). Probabilistic Principal Component Analysis. JRSS B.
    Lucas, Tucker, Grosse, Norouzi (2019). Don't Blame the ELBO! A Linear VAE Perspective
    on Posterior Collapse. NeurIPS.

    Examples
    --------
    >>> from pyrocollapse.data import make_ppca
    >>> x = make_ppca(500, seed=0).data
    >>> opt = LinearVAE.ppca_optimum(x, 3)
    >>> vae = LinearVAE(10, 3)
    >>> vae.load_ppca(opt)
    >>> ll = vae.marginal_log_likelihood(x).detach().mean()
    >>> abs(float(ll) - opt.log_likelihood) < 1e-4
    True
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        prior: Prior | None = None,
        *,
        noise: str | float = "learned",
        init_std: float = 0.1,
        name: str | None = None,
    ) -> None:
        super().__init__(latent_dim, prior, name=name)
        self.input_dim = check_int("input_dim", input_dim, minimum=1)
        self.event_shape = (self.input_dim,)
        init_std = check_float("init_std", init_std, minimum=0.0)
        if isinstance(noise, str):
            check_choice("noise", noise, ("learned",))
            self.learned_noise = True
            self.log_noise = nn.Parameter(torch.zeros(()))
        elif isinstance(noise, numbers.Real) and not isinstance(noise, bool):
            sigma = check_float("noise", noise, minimum=0.0, strict_minimum=True)
            self.learned_noise = False
            self.register_buffer("fixed_noise", torch.tensor(sigma))
        else:
            raise TypeError(
                "noise must be 'learned' or a positive float (the observation standard "
                f"deviation sigma), got {type(noise).__name__} {noise!r}"
            )
        d, k = self.input_dim, self.latent_dim
        self.loading = nn.Parameter(torch.randn(d, k) * init_std)
        self.loc = nn.Parameter(torch.zeros(d))
        self.encoder_weight = nn.Parameter(torch.randn(k, d) * init_std)
        self.posterior_log_scale = nn.Parameter(torch.zeros(k))
        self._attach_prior()

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> LinearVAE:
        """A linear VAE over the (flat, float) observations of ``dataset``.

        The Gaussian likelihood is used for every kind of vector data (pPCA of pixel
        intensities is the classic case of Lucas et al. 2019); token data are refused.
        """
        return cls(vector_input_dim(dataset, "linear"), latent_dim, prior, **options)

    # -- parameters ----------------------------------------------------------------------
    @property
    def noise_std(self) -> torch.Tensor:
        """sigma, a scalar tensor (learned or fixed)."""
        return self.log_noise.exp() if self.learned_noise else self.fixed_noise

    @property
    def posterior_scale(self) -> torch.Tensor:
        """s, shape ``(latent_dim,)``."""
        return self.posterior_log_scale.exp()

    # -- encoder / decoder ---------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) = N(V (x - mu), diag(s^2)): batch shape ``(N,)``, event ``(latent_dim,)``."""
        loc = (x - self.loc) @ self.encoder_weight.T
        return dist.Normal(loc, self.posterior_scale.expand_as(loc)).to_event(1)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) = N(W z + mu, sigma^2 I): batch shape ``z.shape[:-1]``, event ``(input_dim,)``."""
        mean = z @ self.loading.T + self.loc
        return dist.Normal(mean, self.noise_std.expand_as(mean)).to_event(1)

    # -- closed forms ------------------------------------------------------------------
    def _gaussian_prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of a diagonal Gaussian prior, each ``(latent_dim,)``."""
        d = self.prior.distribution()
        base = d.base_dist if isinstance(d, dist.Independent) else None
        if (
            isinstance(base, dist.Normal)
            and d.reinterpreted_batch_ndims == 1
            and tuple(d.batch_shape) == ()
        ):
            return (
                base.loc.expand(self.latent_dim),
                base.scale.expand(self.latent_dim),
            )
        raise NotImplementedError(
            f"the linear VAE's closed forms need a Gaussian prior with diagonal covariance "
            f"(e.g. StandardNormalPrior); {type(self.prior).__name__} gives "
            f"{type(d).__name__}"
        )

    def marginal_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) = log N(x | W m + mu, W diag(s_p^2) W^T + sigma^2 I).

        ``m, s_p`` are the prior's mean and scale (0 and 1 for N(0, I)). Differentiable in
        the model's parameters, so it can also be maximised directly.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(N, input_dim)``.

        Returns
        -------
        torch.Tensor
            Shape ``(N,)``, nats.
        """
        x = self.check_input(x)
        m, s = self._gaussian_prior()
        w = self.loading
        eye = torch.eye(self.input_dim, dtype=w.dtype, device=w.device)
        cov = (w * s**2) @ w.T + self.noise_std**2 * eye
        return dist.MultivariateNormal(w @ m + self.loc, covariance_matrix=cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """The exact posterior p(z|x) (a full-covariance Gaussian) under the current W.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(N, input_dim)``.

        Returns
        -------
        MultivariateNormal
            Batch shape ``(N,)``, event shape ``(latent_dim,)``.
        """
        x = self.check_input(x)
        m, s = self._gaussian_prior()
        w, var = self.loading, self.noise_std**2
        precision = torch.diag(s**-2) + w.T @ w / var
        cov = torch.linalg.inv(precision)
        mean = ((x - self.loc) @ w / var + m / s**2) @ cov.T
        return dist.MultivariateNormal(mean, covariance_matrix=cov)

    def analytic_elbo(self, x: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
        """The ELBO ``E_q[log p(x|z)] - beta KL(q(z|x) || p(z))`` in closed form, per point.

        With ``q = N(m_q, diag(s^2))``::

            E_q log p(x|z) = -D/2 log(2 pi sigma^2)
                             - (||x - W m_q - mu||^2 + sum_j s_j^2 ||W_j||^2) / (2 sigma^2)

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(N, input_dim)``.
        beta : float
            KL weight (>= 0).

        Returns
        -------
        torch.Tensor
            Shape ``(N,)``, nats.
        """
        x = self.check_input(x)
        beta = check_float("beta", beta, minimum=0.0)
        m, s = self._gaussian_prior()
        q = self.encode(x).base_dist
        var = self.noise_std**2
        resid = x - q.loc @ self.loading.T - self.loc
        trace = (q.scale**2 * (self.loading**2).sum(0)).sum(-1)
        expected = -0.5 * self.input_dim * (_LOG_2PI + torch.log(var)) - (
            (resid**2).sum(-1) + trace
        ) / (2 * var)
        kl = kl_divergence(q, dist.Normal(m, s)).sum(-1)
        return expected - beta * kl

    @torch.no_grad()
    def load_ppca(self, solution: PPCASolution) -> None:
        """Set every parameter to a closed-form optimum from :meth:`ppca_optimum`.

        Raises ``ValueError`` if the shapes differ or, with fixed noise, if the solution's
        sigma^2 is not this model's.
        """
        if not isinstance(solution, PPCASolution):
            raise TypeError(f"solution must be a PPCASolution, got {type(solution).__name__}")
        if tuple(solution.loading.shape) != (self.input_dim, self.latent_dim):
            raise ValueError(
                f"solution has loading shape {tuple(solution.loading.shape)}, this model needs "
                f"({self.input_dim}, {self.latent_dim})"
            )
        var = solution.noise_variance
        if self.learned_noise:
            self.log_noise.copy_(torch.tensor(0.5 * math.log(var)))
        elif not math.isclose(var, float(self.fixed_noise) ** 2, rel_tol=1e-6):
            raise ValueError(
                f"solution has noise variance {var:.6g} but this model's noise is fixed at "
                f"sigma^2 = {float(self.fixed_noise) ** 2:.6g}; call ppca_optimum(..., "
                f"noise={float(self.fixed_noise):g})"
            )
        dtype = self.loading.dtype
        self.loading.copy_(solution.loading.to(dtype))
        self.loc.copy_(solution.mean.to(dtype))
        self.encoder_weight.copy_(solution.encoder_weight.to(dtype))
        self.posterior_log_scale.copy_(torch.log(solution.posterior_scale).to(dtype))

    @staticmethod
    def ppca_optimum(
        x: torch.Tensor,
        latent_dim: int,
        *,
        noise: float | None = None,
        beta: float = 1.0,
        covariance: bool = False,
        mean: torch.Tensor | None = None,
    ) -> PPCASolution:
        """The closed-form maximum-likelihood pPCA solution (Tipping & Bishop 1999).

        With ``S = U diag(lambda) U^T`` (eigenvalues decreasing)::

            sigma^2 = mean(lambda_{k+1}, ..., lambda_D)       (unless ``noise`` is fixed)
            W = U_k diag(sqrt(max(lambda_i - beta sigma^2, 0)))
            mu = sample mean

        For ``beta != 1`` (fixed noise only) this is the optimum of the linear beta-VAE,
        which is pPCA with noise variance ``beta sigma^2`` (Lucas et al. 2019).

        Parameters
        ----------
        x : torch.Tensor
            Data of shape ``(N, D)`` (``S`` is their maximum-likelihood covariance, divided
            by N) or, with ``covariance=True``, the covariance ``S`` itself ``(D, D)``.
        latent_dim : int
            k, with ``1 <= k <= D`` (``k < D`` when sigma^2 is estimated).
        noise : float or None
            Fixed decoder standard deviation sigma, or ``None`` for its MLE.
        beta : float
            KL weight (> 0); values other than 1 need a fixed ``noise``.
        covariance : bool
            Whether ``x`` is a covariance matrix.
        mean : torch.Tensor or None
            With ``covariance=True``, the data mean ``(D,)`` (default zeros).

        Returns
        -------
        PPCASolution
            ``log_likelihood`` is the mean log-likelihood per data point of ``x`` (or its
            expectation under the covariance).
        """
        k = check_int("latent_dim", latent_dim, minimum=1)
        beta = check_float("beta", beta, minimum=0.0, strict_minimum=True)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        x = x.detach().double()
        if covariance:
            if x.dim() != 2 or x.shape[0] != x.shape[1]:
                raise ValueError(f"covariance must be square (D, D), got {tuple(x.shape)}")
            if not torch.allclose(x, x.T, rtol=0.0, atol=1e-6 * float(x.abs().max()) + 1e-12):
                raise ValueError("covariance must be symmetric")
            cov = 0.5 * (x + x.T)
            d = cov.shape[0]
            mu = (
                torch.zeros(d, dtype=torch.float64, device=x.device)
                if mean is None
                else mean.detach().to(device=x.device, dtype=torch.float64)
            )
            if mu.shape != (d,):
                raise ValueError(f"mean must have shape ({d},), got {tuple(mu.shape)}")
        else:
            if mean is not None:
                raise ValueError("mean is only used with covariance=True (data give their own)")
            if x.dim() != 2 or x.shape[0] < 2:
                raise ValueError(f"x must have shape (N, D) with N >= 2, got {tuple(x.shape)}")
            mu = x.mean(0)
            centred = x - mu
            cov = centred.T @ centred / x.shape[0]
            d = cov.shape[0]
        if not bool(torch.isfinite(cov).all()):
            raise ValueError("x contains NaN or infinite values")
        if k > d:
            raise ValueError(f"latent_dim must be <= D = {d}, got {k}")
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp(min=0.0), evecs.flip(1)
        if noise is None:
            if beta != 1.0:
                raise ValueError(
                    "beta != 1 needs a fixed noise: the linear beta-VAE optimum is pPCA with "
                    "noise variance beta * sigma^2 only for a fixed sigma"
                )
            if k == d:
                raise ValueError(
                    f"latent_dim = D = {d} leaves no eigenvalue to estimate sigma^2 from; "
                    "pass noise or lower latent_dim"
                )
            var = float(evals[k:].mean())
            if var <= 0:
                raise ValueError(
                    f"the data covariance has rank <= latent_dim = {k}, so the noise MLE is 0; "
                    "pass a fixed noise"
                )
        else:
            var = check_float("noise", noise, minimum=0.0, strict_minimum=True) ** 2
        basis = evecs[:, :k]
        # ties at the boundary count as collapsed (exactly zero loading), as in the rule
        gap = torch.where(
            _collapse_rule(evals[:k], beta * var, COLLAPSE_RTOL, COLLAPSE_ATOL),
            0.0,
            evals[:k] - beta * var,
        )
        loading = basis * torch.sqrt(gap)
        model_cov = loading @ loading.T + var * torch.eye(d, dtype=torch.float64, device=x.device)
        logdet = torch.logdet(model_cov)
        fit = torch.trace(torch.linalg.solve(model_cov, cov))
        log_lik = -0.5 * (d * _LOG_2PI + logdet + fit)
        return PPCASolution(loading, mu, var, evals, basis, float(log_lik), beta)

    @staticmethod
    def collapsed_dimensions(
        eigenvalues: torch.Tensor | list[float],
        noise: float,
        *,
        beta: float = 1.0,
        rtol: float = COLLAPSE_RTOL,
        atol: float = COLLAPSE_ATOL,
    ) -> torch.Tensor:
        """The analytic collapse rule: direction i collapses iff ``lambda_i <= beta sigma^2``.

        Ties at the boundary count as collapsed: the comparison is ``lambda_i <= beta
        sigma^2 (1 + rtol) + atol``, so that ``noise = sqrt(lambda_i)`` (whose square
        rounds below ``lambda_i``) gives a collapsed direction, as the optimum has it.

        Parameters
        ----------
        eigenvalues : torch.Tensor or sequence of float
            Covariance eigenvalues lambda_i of the directions the latents can take (the
            leading ``latent_dim`` ones), shape ``(k,)``.
        noise : float
            The decoder's standard deviation sigma (> 0).
        beta : float
            KL weight (> 0).
        rtol, atol : float
            Relative tolerance on ``beta sigma^2`` and absolute tolerance in units of the
            eigenvalues (>= 0); see :meth:`PPCASolution.collapsed_dimensions`.

        Returns
        -------
        torch.Tensor
            Boolean, shape ``(k,)``.

        References
        ----------
        Lucas et al. (2019). Don't Blame the ELBO! NeurIPS.
        """
        lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
        if lam.dim() != 1:
            raise ValueError(f"eigenvalues must be 1-D, got shape {tuple(lam.shape)}")
        if bool((lam < 0).any()) or not bool(torch.isfinite(lam).all()):
            raise ValueError("eigenvalues must be finite and >= 0")
        sigma = check_float("noise", noise, minimum=0.0, strict_minimum=True)
        beta = check_float("beta", beta, minimum=0.0, strict_minimum=True)
        return _collapse_rule(lam, beta * sigma**2, rtol, atol)

    def extra_repr(self) -> str:
        noise = "learned" if self.learned_noise else f"{float(self.fixed_noise):g}"
        return f"input_dim={self.input_dim}, latent_dim={self.latent_dim}, noise={noise}"
