"""The learnable diagonal Gaussian prior (``learnable``), and the diagonal-Normal body it
shares with :class:`~pyrocollapse.priors.ARDPrior`.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrocollapse._validation import check_float
from pyrocollapse.priors.base import PRIORS, Prior, _inverse_softplus

__all__ = ["LearnableGaussianPrior"]


class _DiagonalNormalPrior(Prior):
    """Shared body of the learnable diagonal Normals N(mu, diag(s^2)).

    ``s = softplus(raw_scale) + min_scale`` (positive by construction); ``mu`` is a
    learnable ``loc`` parameter or a zero buffer.
    """

    def __init__(
        self, latent_dim: int, *, learn_loc: bool, init_scale: float, min_scale: float
    ) -> None:
        super().__init__(latent_dim)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
        if init_scale <= self.min_scale:
            raise ValueError(f"init_scale must be > min_scale={self.min_scale}, got {init_scale}")
        zeros = torch.zeros(self.latent_dim)
        if learn_loc:
            self.loc = nn.Parameter(zeros)
        else:
            self.register_buffer("loc", zeros)
        raw = _inverse_softplus(init_scale - self.min_scale)
        self.raw_scale = nn.Parameter(raw.expand(self.latent_dim).clone())

    def _scale(self) -> torch.Tensor:
        return softplus(self.raw_scale) + self.min_scale

    @property
    def scales(self) -> torch.Tensor:
        """The prior standard deviations s_d, shape ``(latent_dim,)``, detached."""
        return self._scale().detach()

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self._scale()).to_event(1)


@PRIORS.register("learnable")
class LearnableGaussianPrior(_DiagonalNormalPrior):
    """p(z) = N(mu, diag(sigma^2)) with learnable mean and diagonal scale.

    The scale is ``softplus(raw) + min_scale``, positive by construction.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    init_scale : float
        Initial sigma (all dimensions), > ``min_scale``. mu starts at 0, so the prior
        starts as N(0, init_scale^2 I).
    min_scale : float
        Floor on sigma, for numerical stability (>= 0).

    Notes
    -----
    A learnable Gaussian prior is equivalent to N(0, I) up to an affine reparametrisation
    of z that the decoder can absorb, so by itself it rarely prevents collapse; its value
    is as a baseline and as a readable diagnostic (``loc``, :attr:`scales`).

    References
    ----------
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS (the learnable-prior baseline).
    """

    def __init__(
        self, latent_dim: int, *, init_scale: float = 1.0, min_scale: float = 1e-5
    ) -> None:
        super().__init__(latent_dim, learn_loc=True, init_scale=init_scale, min_scale=min_scale)
