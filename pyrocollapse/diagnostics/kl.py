"""KL(q(z_d|x) || p(z_d)) per latent dimension: :func:`kl_per_dimension`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro.distributions.kl import kl_divergence

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics._programs import _numpy
from pyrocollapse.diagnostics._site_draws import SiteDraw, site_draws
from pyrocollapse.diagnostics.densities import (
    _factorised,
    _joint_kl,
    _marginal,
    _PriorMarginals,
    prior_marginals_of,
)


# --------------------------------------------------------------------------------------
# KL per dimension
# --------------------------------------------------------------------------------------
@dataclass
class KLPerDimension:
    """E_x KL(q(z_d|x) || p(z_d)) per dimension.

    Attributes
    ----------
    per_dim : numpy.ndarray
        Shape ``(D,)``, nats per data point.
    per_point : numpy.ndarray
        Shape ``(N, D)``: the KL of each data point and dimension.
    estimator : str
        ``"analytic"`` (closed form per dimension), ``"monte_carlo"`` (factorised q and p,
        no closed form), or either with the suffix ``"_marginal"`` (q or p does not
        factorise: the KL between their univariate marginals q(z_d|x) and p(z_d)).
        ``"_kde"``: q has no closed-form marginals, so q(z_d|x) is a kernel density
        estimate; ``"_estimated_prior"``: the prior has no closed-form marginals (a
        normalising flow that mixes coordinates), so p(z_d) is estimated from its joint
        density (:class:`~pyrocollapse.diagnostics.densities._PriorMarginals`; exact for
        elementwise flows, which get no suffix).
    joint_per_point : numpy.ndarray or None
        Shape ``(N,)``: the joint KL(q(z|x) || p(z)) of each point. Equals
        ``per_point.sum(1)`` when q and p factorise; not otherwise.
    """

    per_dim: np.ndarray
    per_point: np.ndarray
    estimator: str
    joint_per_point: np.ndarray | None = None

    @property
    def total(self) -> float:
        """E_x KL(q(z|x) || p(z)) in nats (the joint KL; the ELBO's KL term)."""
        if self.joint_per_point is not None:
            return float(self.joint_per_point.mean())
        return float(self.per_dim.sum())

    def fraction_below(self, threshold: float = 0.01) -> np.ndarray:
        """Per dimension, the fraction of data points whose KL is below ``threshold``
        (collapse can be local to some x), shape ``(D,)``."""
        return (self.per_point < threshold).mean(0)


def _kl_from_draws(draws: Sequence[SiteDraw], site: str, num_samples: int) -> KLPerDimension:
    rows, joints = [], []
    monte_carlo = marginal = False
    prior_marginals: _PriorMarginals | None = None
    kde_posterior = False
    for d in draws:
        qm, pm = _marginal(d.q), _marginal(d.p)
        if qm is None:
            # a flow or other transformed guide: Monte Carlo marginals of q(z_d | x)
            prior_marginals = prior_marginals or prior_marginals_of(draws, site)
            rows.append(_kde_marginal_kl(d.q, d.p, prior_marginals, max(num_samples, 64)))
            joints.append(_joint_kl(d.q, d.p, d.z, num_samples))
            kde_posterior = marginal = True
            continue
        factorised = _factorised(d.q) is not None and _factorised(d.p) is not None
        kl = None
        if pm is not None:
            try:
                kl = kl_divergence(qm, pm)
            except NotImplementedError:
                kl = None
        if kl is None:
            prior_marginals = prior_marginals or prior_marginals_of(draws, site)
            zs = qm.sample((num_samples,))
            kl = (qm.log_prob(zs) - prior_marginals(d.p, zs)).mean(0)
            monte_carlo = True
        kl = kl.expand(qm.batch_shape)
        rows.append(kl)
        joints.append(kl.sum(-1) if factorised else _joint_kl(d.q, d.p, d.z, num_samples))
        marginal = marginal or not factorised
    estimator = "monte_carlo" if monte_carlo or kde_posterior else "analytic"
    if kde_posterior:
        estimator += "_kde"
    if prior_marginals is not None and prior_marginals.estimated:
        estimator += "_estimated_prior"
    estimator += "_marginal" if marginal else ""
    per_point = _numpy(torch.cat(rows))
    return KLPerDimension(per_point.mean(0), per_point, estimator, _numpy(torch.cat(joints)))


def _kde_marginal_kl(
    q: Any, p: Any, prior_marginals: _PriorMarginals, num_samples: int
) -> torch.Tensor:
    """KL(q(z_d | x) || p(z_d)) per point and dimension, ``(B, D)``, for a guide without
    closed-form marginals (a normalising flow): ``num_samples`` draws per point, each
    marginal q(z_d | x) a leave-one-out Gaussian kernel density estimate of the other
    draws (Silverman's bandwidth), averaged at the draws against log p(z_d)."""
    zs = q.sample((num_samples,))  # (S, B, D)
    s = zs.shape[0]
    zd = zs.double()
    sd = zd.std(0).clamp_min(1e-8)  # (B, D)
    h = 1.06 * sd * s ** (-0.2)
    u = (zd.unsqueeze(0) - zd.unsqueeze(1)) / h  # (S, S, B, D)
    k = -0.5 * u.square() - h.log() - 0.5 * math.log(2 * math.pi)
    eye = torch.eye(s, dtype=torch.bool, device=zs.device).view(s, s, 1, 1)
    log_q = torch.logsumexp(k.masked_fill(eye, -math.inf), 1) - math.log(s - 1)  # (S, B, D)
    log_p = prior_marginals(p, zs).double().expand(zs.shape)
    return (log_q - log_p).mean(0).to(zs.dtype)


def kl_per_dimension(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    num_samples: int = 64,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> KLPerDimension:
    """KL(q(z_d|x) || p(z_d)) per latent dimension, averaged over the data.

    Analytic when q and p are factorised with a closed-form univariate KL (Normal/Normal
    and the other pairs Pyro's ``kl_divergence`` knows). Otherwise a Monte Carlo estimate
    with ``num_samples`` draws from q per point, using p's per-dimension factor when p
    factorises, and p's univariate *marginal* p(z_d) when it does not (e.g. a
    Gaussian-mixture prior); likewise q's marginal for a full-covariance guide. A prior
    with no closed-form marginals (a normalising flow) that is the same at every point
    gets a kernel density estimate of p(z_d) from 4096 of its draws. The
    estimator used is reported in :attr:`KLPerDimension.estimator`; for a non-factorised
    q or p the per-dimension values need not sum to the joint KL, which is reported
    separately (:attr:`KLPerDimension.joint_per_point`).

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a chunk of the data's arguments, ``model(*args, **kwargs)``.
    data : torch.Tensor, numpy.ndarray, tuple, list, dict or DataLoader
        Shape ``(N, ...)`` (one positional argument); or the programs' arguments: a
        tuple/list (positional) or dict (keyword) whose tensors of shape ``(N, ...)`` are
        chunked together along dim 0, other values passed to every chunk unchanged; or a
        loader of such batches, read once, whole (see :mod:`pyrocollapse.program_data`).
    site : str
        Latent site, batch shape ``(N,)``, event shape ``(D,)``.
    num_samples : int
        Draws per point for the Monte Carlo estimators.
    batch_size : int
        Points per chunk.
    device : str, torch.device or None
        Device each chunk is moved to before tracing; ``None``: where the data are. The
        model is not moved (``vae.to(device)`` first); results come back as NumPy arrays.
        ``ValueError`` for a device this machine lacks or a model on another device.

    Returns
    -------
    KLPerDimension
        ``per_dim`` shape ``(D,)``; ``per_point`` shape ``(N, D)``; nats.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR
    (per-unit KL as a collapse indicator).
    Silverman (1986). Density Estimation for Statistics and Data Analysis. Chapman & Hall
    (the bandwidth of the kernel density fallback).
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    draws = list(site_draws(model, guide, data, site, batch_size, device=device))
    with torch.no_grad():
        return _kl_from_draws(draws, site, num_samples)
