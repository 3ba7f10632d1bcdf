"""Active units (Burda et al. 2016): :func:`active_units`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.diagnostics._bootstrap import _bootstrap_counts, _check_bootstrap, _interval
from pyrocollapse.diagnostics._programs import _numpy
from pyrocollapse.diagnostics._site_draws import SiteDraw, site_draws


# --------------------------------------------------------------------------------------
# Active units
# --------------------------------------------------------------------------------------
@dataclass
class ActiveUnits:
    """Active units (Burda et al. 2016).

    Attributes
    ----------
    variance : numpy.ndarray
        Cov_x(E_q[z_d | x]) per dimension, shape ``(D,)``, in squared units of z.
    threshold : float
        A unit is active when its variance exceeds this (0.01 in the paper).
    count_ci : tuple[float, float] or None
        Bootstrap percentile interval of the number of active units.
    probability_active : numpy.ndarray or None
        Shape ``(D,)``: the fraction of bootstrap replicates in which each unit is active.
    variance_ci : numpy.ndarray or None
        Shape ``(2, D)``: bootstrap percentile interval of each variance.
    """

    variance: np.ndarray
    threshold: float
    count_ci: tuple[float, float] | None = None
    probability_active: np.ndarray | None = None
    variance_ci: np.ndarray | None = None

    @property
    def active(self) -> np.ndarray:
        """Boolean mask, shape ``(D,)``."""
        return self.variance > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())


def _posterior_mean(q: dist.Distribution, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E_q[z] per point ``(B, D)`` and the Monte Carlo error variance of that mean
    (zeros when it is exact; else the sample variance over ``num_samples``)."""
    try:
        mean = q.mean
        return mean, torch.zeros_like(mean)
    except NotImplementedError:
        zs = q.sample((num_samples,))
        return zs.mean(0), zs.var(0) / num_samples


def _au_from_draws(
    draws: Sequence[SiteDraw],
    threshold: float,
    num_samples: int,
    bootstrap: int,
    ci_level: float,
) -> ActiveUnits:
    pairs = [_posterior_mean(d.q, num_samples) for d in draws]
    means = torch.cat([m for m, _ in pairs]).double()
    # a Monte Carlo mean (a flow guide) adds its error variance to Cov_x(E_q[z]):
    # subtract its average, so that a guide equal to the prior reads 0, not ~Var_q / S
    noise = torch.cat([e for _, e in pairs]).double().mean(0)
    means = means - means.mean(0)
    n = means.shape[0]
    var = (
        (means.pow(2).mean(0) - noise).clamp_min(0.0)
        if n > 1
        else torch.zeros(means.shape[1], dtype=torch.float64, device=means.device)
    )
    if bootstrap == 0 or n < 2:
        return ActiveUnits(_numpy(var), threshold)
    counts = _bootstrap_counts(n, bootstrap, means.device)
    m1 = counts @ means / n  # (R, D)
    var_r = (counts @ means.pow(2) / n - m1.pow(2) - noise).clamp_min(0.0)
    active_r = var_r > threshold
    count_ci = _interval(active_r.sum(1).double(), ci_level)
    q = torch.tensor([(1 - ci_level) / 2, (1 + ci_level) / 2], dtype=torch.float64, device="cpu")
    return ActiveUnits(
        _numpy(var),
        threshold,
        count_ci,
        _numpy(active_r.double().mean(0)),
        _numpy(torch.quantile(var_r.cpu(), q, dim=0)),
    )


def _active_count(means: torch.Tensor, threshold: float) -> int:
    """Active units from exact posterior means ``(N, D)`` (diagonal Normals: their
    locations), computed as :func:`_au_from_draws` computes them without a bootstrap."""
    means = means.double()
    if means.shape[0] < 2:
        return 0
    var = (means - means.mean(0)).pow(2).mean(0).clamp_min(0.0)
    return int((var > threshold).sum())


def active_units(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    threshold: float = 0.01,
    num_samples: int = 64,
    batch_size: int = 256,
    bootstrap: int = 0,
    ci_level: float = 0.95,
    device: str | torch.device | None = None,
) -> ActiveUnits:
    """Variance over data of the posterior mean, per dimension (Burda et al. 2016).

    ``A_d = Cov_x(E_{q(z|x)}[z_d])``; dimension d is active when ``A_d > threshold``.
    The posterior mean is exact when q has one, else a ``num_samples`` Monte Carlo mean.

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`.
    threshold : float
        Activity threshold in squared units of z (the paper's 0.01).
    num_samples : int
        Draws for the posterior mean where q has no closed-form mean.
    bootstrap : int
        Nonparametric bootstrap replicates over data points (0: none), giving
        :attr:`ActiveUnits.count_ci`, :attr:`ActiveUnits.variance_ci` and
        :attr:`ActiveUnits.probability_active`. Computed by one matrix product with the
        resampling counts (no loop over replicates).
    ci_level : float
        Coverage of the percentile intervals.

    Returns
    -------
    ActiveUnits

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Efron & Tibshirani (1993). An Introduction to the Bootstrap. Chapman & Hall.
    """
    threshold = check_float("threshold", threshold, minimum=0.0)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    bootstrap, ci_level = _check_bootstrap(bootstrap, ci_level)
    draws = list(site_draws(model, guide, data, site, batch_size, device=device))
    with torch.no_grad():
        return _au_from_draws(draws, threshold, num_samples, bootstrap, ci_level)
