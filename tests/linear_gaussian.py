"""A linear-Gaussian encoder with closed-form KL, mutual information and marginal KL.

Data x ~ N(0, Sigma) (population) in ``x_dim`` dimensions; guide q(z|x) = N(A x, diag(s^2));
prior p(z) = N(0, I); model p(x|z) = N(W z, I). With the population as the data
distribution:

* E_x KL(q(z|x) || p(z)) per dimension = 0.5 (s_d^2 + (A Sigma A^T)_dd - 1 - log s_d^2)
* I(x; z) = 0.5 log det(A Sigma A^T + S) - 0.5 log det S, S = diag(s^2)
* I(x; z_d) = 0.5 log(((A Sigma A^T)_dd + s_d^2) / s_d^2)
* KL(q(z) || p(z)) = 0.5 (tr C - D - log det C), C = A Sigma A^T + S
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian:
    def __init__(self, A: torch.Tensor, s: torch.Tensor, sigma: torch.Tensor) -> None:
        self.A, self.s, self.sigma = A.double(), s.double(), sigma.double()
        self.latent_dim, self.x_dim = A.shape

    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(self.sigma)
        return (torch.randn(n, self.x_dim, generator=g, dtype=torch.float64) @ chol.T).float()

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1))
            w = torch.ones(self.x_dim, self.latent_dim) / self.latent_dim
            pyro.sample("x", dist.Normal(z @ w.T, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.float().T
            pyro.sample("z", dist.Normal(loc, self.s.float().expand_as(loc)).to_event(1))

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
