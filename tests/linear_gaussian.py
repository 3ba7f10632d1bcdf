"""Linear-Gaussian models with closed-form diagnostics, for statistical tests.

``LinearGaussian``: data x ~ N(0, Sigma) (population) in ``x_dim`` dimensions; guide
q(z|x) = N(A x, diag(s^2)); prior p(z) = N(0, I); model p(x|z) = N(W z, I). With the
population as the data distribution:

* E_x KL(q(z|x) || p(z)) per dimension = 0.5 (s_d^2 + (A Sigma A^T)_dd - 1 - log s_d^2)
* I(x; z) = 0.5 log det(A Sigma A^T + S) - 0.5 log det S, S = diag(s^2)
* I(x; z_d) = 0.5 log(((A Sigma A^T)_dd + s_d^2) / s_d^2)
* KL(q(z) || p(z)) = 0.5 (tr C - D - log det C), C = A Sigma A^T + S
* datapoints-as-chains R-hat: R_d^2 -> 1 + v_d / s_d^2 with v_d = (A Sigma A^T)_dd, for
  any chain length S, as the number of chains grows; so ln R_d = I(x; z_d)
* decoder Fisher information about z: W^T W (unit observation noise), whatever z

``PPCA``: x = W z + mu + eps, z ~ N(0, I), eps ~ N(0, sigma^2 I): exact marginal
N(mu, W W^T + sigma^2 I) and exact Gaussian posterior, with guides that are exact (full
covariance) or mean-field with chosen errors; the exact ELBO of a mean-field guide is
log p(x) - KL(q || p(z|x)).

``TwoLayer``: z_top ~ N(0, I); z | z_top ~ N(B z_top, tau^2 I); x | z ~ N(V z, I), with
linear guides for both layers, for hierarchical (conditional-prior) checks.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian:
    def __init__(
        self,
        A: torch.Tensor,
        s: torch.Tensor,
        sigma: torch.Tensor,
        W: torch.Tensor | None = None,
    ) -> None:
        self.A, self.s, self.sigma = A.double(), s.double(), sigma.double()
        self.latent_dim, self.x_dim = A.shape
        if W is None:
            W = torch.ones(self.x_dim, self.latent_dim) / self.latent_dim
        self.W = W.double()

    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(self.sigma)
        return (torch.randn(n, self.x_dim, generator=g, dtype=torch.float64) @ chol.T).float()

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.float().T, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.float().T
            pyro.sample("z", dist.Normal(loc, self.s.float().expand_as(loc)).to_event(1))

    def guide_mvn(self, x: torch.Tensor) -> None:
        """The same q(z|x), written as a multivariate Normal (takes the generic paths)."""
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.float().T
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=torch.diag(self.s.float())))

    # closed forms --------------------------------------------------------------------
    @property
    def _asa(self) -> torch.Tensor:
        return self.A @ self.sigma @ self.A.T

    def kl_per_dim(self) -> torch.Tensor:
        s2 = self.s**2
        return 0.5 * (s2 + torch.diagonal(self._asa) - 1 - torch.log(s2))

    def mi(self) -> float:
        S = torch.diag(self.s**2)
        return float(0.5 * (torch.logdet(self._asa + S) - torch.logdet(S)))

    def mi_per_dim(self) -> torch.Tensor:
        s2 = self.s**2
        return 0.5 * torch.log((torch.diagonal(self._asa) + s2) / s2)

    def aggregate_kl(self) -> float:
        C = self._asa + torch.diag(self.s**2)
        return float(0.5 * (torch.trace(C) - self.latent_dim - torch.logdet(C)))

    def rhat_per_dim(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Large-N limit of the classic R-hat with observations as chains: sqrt(1 + v/s^2).

        With ``x`` given, v is the sample variance (ddof=1) of E_q[z_d | x] over those
        observations instead of the population variance.
        """
        if x is None:
            v = torch.diagonal(self._asa)
        else:
            v = (x.double() @ self.A.T).var(0, unbiased=True)
        return torch.sqrt(1 + v / self.s**2)

    def decoder_fisher(self) -> torch.Tensor:
        """Diagonal of the Fisher information of p(x|z) = N(W z, I) about z: sum_f W_fd^2."""
        return (self.W**2).sum(0)


class PPCA:
    """Probabilistic PCA with closed-form marginal likelihood and posterior."""

    def __init__(self, W: torch.Tensor, mu: torch.Tensor, sigma: float) -> None:
        self.W, self.mu, self.sigma = W.double(), mu.double(), float(sigma)
        self.x_dim, self.latent_dim = W.shape

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.x_dim, generator=g, dtype=torch.float64)
        return (z @ self.W.T + self.mu + self.sigma * eps).float()

    def model(self, x: torch.Tensor) -> None:
        W, mu = self.W.float(), self.mu.float()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, self.sigma).to_event(1), obs=x)

    # exact quantities ----------------------------------------------------------------
    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mu, W W^T + sigma^2 I) per row, float64."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.x_dim, dtype=torch.float64)
        return dist.MultivariateNormal(self.mu, cov).log_prob(x.double())

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z|x) = N(mean, cov): mean (N, D), cov (D, D)."""
        M = self.W.T @ self.W + self.sigma**2 * torch.eye(self.latent_dim, dtype=torch.float64)
        Minv = torch.linalg.inv(M)
        mean = (x.double() - self.mu) @ self.W @ Minv.T
        return mean, self.sigma**2 * Minv

    def mean_field_scale(self) -> torch.Tensor:
        """The KL(q || p)-optimal mean-field scale: 1 / sqrt(diag of the precision)."""
        _, cov = self.posterior(torch.zeros(1, self.x_dim))
        return torch.diagonal(torch.linalg.inv(cov)).rsqrt()

    def exact_guide(self):
        def guide(x: torch.Tensor) -> None:
            mean, cov = self.posterior(x)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.MultivariateNormal(mean.float(), cov.float()))

        return guide

    def mean_field_guide(self, *, scale_factor: float = 1.0, shift: float = 0.0):
        """q(z|x) = N(E[z|x] + shift, (scale_factor * mean_field_scale)^2), diagonal."""
        scale = (scale_factor * self.mean_field_scale()).float()

        def guide(x: torch.Tensor) -> None:
            mean, _ = self.posterior(x)
            loc = mean.float() + shift
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, scale.expand_as(loc)).to_event(1))

        return guide

    def mean_field_elbo(
        self, x: torch.Tensor, *, scale_factor: float = 1.0, shift: float = 0.0
    ) -> torch.Tensor:
        """Exact ELBO per row of the mean-field guide: log p(x) - KL(q || p(z|x))."""
        mean, cov = self.posterior(x)
        scale = scale_factor * self.mean_field_scale()
        prec = torch.linalg.inv(cov)
        d = self.latent_dim
        diff = torch.full_like(mean, shift)
        kl = 0.5 * (
            torch.sum(torch.diagonal(prec) * scale**2)
            + (diff @ prec * diff).sum(1)
            - d
            + torch.logdet(cov)
            - 2 * torch.log(scale).sum()
        )
        return self.log_marginal(x) - kl


class TwoLayer:
    """z_top ~ N(0, I_k); z | z_top ~ N(B z_top, tau^2 I_d); x | z ~ N(V z, I)."""

    def __init__(self, B: torch.Tensor, V: torch.Tensor, tau: float) -> None:
        self.B, self.V, self.tau = B.float(), V.float(), float(tau)
        self.d, self.k = B.shape
        self.x_dim = V.shape[0]
        g = torch.Generator().manual_seed(1)
        self.Az = 0.5 * torch.randn(self.d, self.x_dim, generator=g)
        self.At = 0.3 * torch.randn(self.k, self.x_dim, generator=g)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        zt = torch.randn(n, self.k, generator=g)
        z = zt @ self.B.T + self.tau * torch.randn(n, self.d, generator=g)
        return z @ self.V.T + torch.randn(n, self.x_dim, generator=g)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            zt = pyro.sample("z_top", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))
            z = pyro.sample("z", dist.Normal(zt @ self.B.T, self.tau).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.V.T, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            lt = x @ self.At.T
            pyro.sample("z_top", dist.Normal(lt, torch.full_like(lt, 0.7)).to_event(1))
            lz = x @ self.Az.T
            pyro.sample("z", dist.Normal(lz, torch.full_like(lz, 0.6)).to_event(1))


def log_normal_pdf(x: torch.Tensor, loc: torch.Tensor, scale: float) -> torch.Tensor:
    """Sum over the last axis of log N(x; loc, scale^2)."""
    return (-0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
