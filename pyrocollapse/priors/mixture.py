"""The Gaussian-mixture prior (command-line name ``mixture``)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrocollapse._validation import check_data, check_float, check_int
from pyrocollapse.priors.base import PRIORS, Prior, _inverse_softplus
from pyrocollapse.priors.distributions import DiagonalNormalMixture

__all__ = ["MixturePrior"]


def _kmeans_pp(points: torch.Tensor, k: int) -> torch.Tensor:
    """k-means++ seeding: ``k`` rows of ``points`` (shape ``(N, d)``), spread out.

    The first row is chosen uniformly, each next one with probability proportional to its
    squared distance to the nearest chosen row (Arthur & Vassilvitskii 2007). Uses the
    global torch RNG; returns shape ``(k, d)``.
    """
    chosen = [points[torch.randint(len(points), (), device=points.device)]]
    dist2 = ((points - chosen[0]) ** 2).sum(-1)
    for _ in range(1, k):
        idx = torch.multinomial(dist2 + 1e-12, 1).squeeze()
        chosen.append(points[idx])
        dist2 = torch.minimum(dist2, ((points - points[idx]) ** 2).sum(-1))
    return torch.stack(chosen)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """Gaussian-mixture prior p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)).

    Weights, means and diagonal scales are learnable (``softmax(logits)``,
    ``means``, ``softplus(raw_scales) + min_scale``); ``log_prob`` is exact (logsumexp
    over components, through :class:`pyro.distributions.MixtureSameFamily`).

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    n_components : int
        Number of components K (>= 1).
    learn_weights : bool
        Learn the mixture weights; ``False`` keeps them uniform (1/K).
    init_spread : float
        Means are seeded k-means++-style from N(0, init_spread^2 I) draws, so they start
        spread out rather than on top of each other (> 0). :meth:`init_components`
        re-initialises them from latent codes instead.
    init_scale : float
        Initial sigma of every component (> ``min_scale``).
    min_scale : float
        Floor on the component scales (>= 0).

    Notes
    -----
    The KL between a Gaussian q(z|x) and a mixture has no closed form: ELBOs use the
    Monte Carlo estimate log q(z) - log p(z), and per-dimension diagnostics use the
    univariate mixture marginals (:meth:`marginal`). The prior does not factorise.

    References
    ----------
    Dilokthanakul et al. (2016). Deep Unsupervised Clustering with Gaussian Mixture
    Variational Autoencoders. arXiv:1611.02648.
    Jiang et al. (2017). Variational Deep Embedding (VaDE). IJCAI.
    """

    factorized = False

    def __init__(
        self,
        latent_dim: int,
        n_components: int = 10,
        learn_weights: bool = True,
        *,
        init_spread: float = 2.0,
        init_scale: float = 1.0,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(latent_dim)
        self.n_components = check_int("n_components", n_components, minimum=1)
        if not isinstance(learn_weights, bool):
            raise TypeError(f"learn_weights must be a bool, got {learn_weights!r}")
        init_spread = check_float("init_spread", init_spread, minimum=0.0, strict_minimum=True)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
        if init_scale <= self.min_scale:
            raise ValueError(f"init_scale must be > min_scale={self.min_scale}, got {init_scale}")
        k, d = self.n_components, self.latent_dim
        self.means = nn.Parameter(_kmeans_pp(torch.randn(max(64, 16 * k), d) * init_spread, k))
        raw = _inverse_softplus(init_scale - self.min_scale)
        self.raw_scales = nn.Parameter(raw.expand(k, d).clone())
        self.learn_weights = learn_weights
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(k))
        else:
            self.register_buffer("logits", torch.zeros(k))

    def _scales(self) -> torch.Tensor:
        return softplus(self.raw_scales) + self.min_scale

    @torch.no_grad()
    def init_components(self, z: torch.Tensor, *, iterations: int = 25) -> torch.Tensor:
        """Initialise the components by k-means on latent codes ``z`` (e.g. encoder means).

        k-means++ seeding and ``iterations`` Lloyd steps; then the means become the
        centroids, the scales the within-cluster standard deviations and, when weights
        are learned, the weights the cluster fractions (the initialisation of VaDE, Jiang
        et al. 2017). Gradient training of a mixture from a random start can leave
        components stranded far from the data; this start avoids it.

        Parameters
        ----------
        z : torch.Tensor
            Codes of shape ``(N, latent_dim)`` with ``N >= n_components``.
        iterations : int
            Lloyd iterations (>= 0).

        Returns
        -------
        torch.Tensor
            Cluster index of each code, shape ``(N,)``.
        """
        z = check_data("z", z, event_shape=(self.latent_dim,)).to(self.means)
        iterations = check_int("iterations", iterations, minimum=0)
        k = self.n_components
        if z.shape[0] < k:
            raise ValueError(f"z must have at least n_components={k} rows, got {z.shape[0]}")
        centres = _kmeans_pp(z, k)
        for _ in range(iterations + 1):
            assign = torch.cdist(z, centres).argmin(-1)
            onehot = nn.functional.one_hot(assign, k).to(z)  # (N, K)
            counts = onehot.sum(0)
            filled = counts > 0
            centres[filled] = (onehot.T @ z)[filled] / counts[filled, None]
        var = (onehot.T @ z**2) / counts.clamp(min=1)[:, None] - centres**2
        floor = max(1e-3, 2 * self.min_scale)
        fallback = z.std(0) / k  # clusters of fewer than two codes
        std = torch.where((counts > 1)[:, None], var.clamp(min=0).sqrt(), fallback).clamp(min=floor)
        self.means.copy_(centres)
        self.raw_scales.copy_(_inverse_softplus(std - self.min_scale))
        if self.learn_weights:
            self.logits.copy_(torch.log(counts.clamp(min=1) / counts.sum()))
        return assign

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights pi, shape ``(n_components,)``, detached."""
        return torch.softmax(self.logits.detach(), -1)

    @property
    def scales(self) -> torch.Tensor:
        """Component scales sigma, shape ``(n_components, latent_dim)``, detached."""
        return self._scales().detach()

    def distribution(self) -> dist.TorchDistribution:
        components = dist.Normal(self.means, self._scales()).to_event(1)
        return DiagonalNormalMixture(dist.Categorical(logits=self.logits), components)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, n_components={self.n_components}, "
            f"learn_weights={self.learn_weights}"
        )
