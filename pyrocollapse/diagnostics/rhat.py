"""R-hat with the data points as chains: :func:`datapoint_rhat`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics._programs import _numpy
from pyrocollapse.diagnostics._site_draws import SiteDraw, site_draws


# --------------------------------------------------------------------------------------
# Datapoints-as-chains R-hat
# --------------------------------------------------------------------------------------
@dataclass
class DatapointRhat:
    """Classic R-hat per latent dimension with each observation's draws as one chain.

    Attributes
    ----------
    per_dim : numpy.ndarray
        Shape ``(D,)``; 1 when q(z_d | x) does not depend on x.
    num_samples : int
        Draws per observation (chain length).
    num_chains : int
        Observations (chains).
    """

    per_dim: np.ndarray
    num_samples: int
    num_chains: int

    @property
    def log(self) -> np.ndarray:
        """ln R-hat, shape ``(D,)``: equals I(x; z_d) for a linear-Gaussian encoder."""
        return np.log(self.per_dim)


def _rhat_from_draws(draws: Sequence[SiteDraw], num_samples: int) -> DatapointRhat:
    means, within = [], []
    for d in draws:
        z = d.q.sample((num_samples,)).double()  # (S, B, D)
        means.append(z.mean(0))
        within.append(z.var(0, unbiased=True))
    chain_means = torch.cat(means)
    n, s = chain_means.shape[0], num_samples
    if n < 2:
        raise ValueError(f"datapoint R-hat needs at least 2 observations (chains), got {n}")
    w = torch.cat(within).mean(0)
    b = s * chain_means.var(0, unbiased=True)
    rhat = ((b / w + s - 1) / s).sqrt()
    return DatapointRhat(_numpy(rhat), s, n)


def datapoint_rhat(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    num_samples: int = 10,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> DatapointRhat:
    """R-hat per latent dimension treating each observation's q(z|x) draws as a chain.

    With N observations as chains of S draws from q(z_d | x_n), the classic
    (non-split, non-rank-normalised) potential scale reduction factor is
    ``R^2 = (B / W + S - 1) / S`` with W the mean within-chain variance and B = S times
    the variance of the chain means: exactly ArviZ's ``rhat(..., method="identity")``,
    computed here in chunks. It is ~1 when the dimension's posterior does not depend on x
    (collapse). As N grows, ``R^2 -> 1 + v_d / s_d^2`` for every S, where v_d is the
    variance over data of E_q[z_d | x] and s_d^2 the mean posterior variance; for a
    linear-Gaussian encoder ``ln R = 0.5 ln(1 + v_d / s_d^2) = I(x; z_d)``, the
    dimension's mutual information in nats.

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        Draws per observation (>= 2).

    Returns
    -------
    DatapointRhat

    References
    ----------
    Gelman & Rubin (1992). Inference from Iterative Simulation Using Multiple Sequences.
    Statistical Science 7(4).
    Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021). Rank-normalization, folding, and
    localization: An improved R-hat. Bayesian Analysis (the "identity" variant is their
    classic R-hat).
    """
    num_samples = check_int("num_samples", num_samples, minimum=2)
    draws = list(site_draws(model, guide, data, site, batch_size, device=device))
    with torch.no_grad():
        return _rhat_from_draws(draws, num_samples)
