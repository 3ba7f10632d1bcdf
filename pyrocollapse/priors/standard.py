"""The standard Normal prior p(z) = N(0, I) (command-line name ``standard``)."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyrocollapse.priors.base import PRIORS, Prior

__all__ = ["StandardNormalPrior"]


@PRIORS.register("standard")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I): the usual VAE prior, with no parameters.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.

    References
    ----------
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_loc", torch.zeros(self.latent_dim))
        self.register_buffer("_scale", torch.ones(self.latent_dim))

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self._loc, self._scale).to_event(1)
