"""The automatic-relevance-determination prior (command-line name ``ard``)."""

from __future__ import annotations

import torch

from pyrocollapse._validation import check_float
from pyrocollapse.priors.base import PRIORS
from pyrocollapse.priors.learnable import _DiagonalNormalPrior

__all__ = ["ARDPrior"]


@PRIORS.register("ard")
class ARDPrior(_DiagonalNormalPrior):
    """Automatic relevance determination: p(z) = N(0, diag(s^2)) with learnable s_d.

    Each latent dimension has its own learnable prior scale ``s_d = softplus(raw_d) +
    min_scale``, so training can shrink the prior of a dimension the decoder does not use
    and switch it off.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    init_scale : float
        Initial s_d (all dimensions), > ``min_scale``.
    min_scale : float
        Floor on s_d (>= 0).

    Notes
    -----
    Two collapse signals, both per dimension: a learned scale :attr:`scales` driven to
    ~0 (:meth:`switched_off`), and a posterior q(z_d | x) equal to the prior (zero
    KL(q(z_d|x) || p(z_d)) for every x, see :func:`pyrocollapse.diagnostics.kl_per_dimension`).
    Under ARD a dimension that is switched off typically shows both at once: q(z_d | x)
    shrinks together with s_d, so its KL can stay small while the scale collapses.

    References
    ----------
    MacKay (1994). Bayesian Nonlinear Modeling for the Prediction Competition. ASHRAE
    Transactions 100(2).
    Neal (1996). Bayesian Learning for Neural Networks. Springer.
    Bishop (1999). Bayesian PCA. NeurIPS.
    """

    def __init__(
        self, latent_dim: int, *, init_scale: float = 1.0, min_scale: float = 1e-5
    ) -> None:
        super().__init__(latent_dim, learn_loc=False, init_scale=init_scale, min_scale=min_scale)

    def relevance(self) -> torch.Tensor:
        """Relevance of each dimension, ``s_d / max_d s_d`` in (0, 1], shape ``(latent_dim,)``."""
        s = self.scales
        return s / s.max()

    def switched_off(self, threshold: float = 0.05) -> torch.Tensor:
        """Mask of the dimensions whose prior scale ``s_d < threshold``.

        Returns
        -------
        torch.Tensor
            Boolean, shape ``(latent_dim,)``.
        """
        threshold = check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        return self.scales < threshold
