"""Posterior-collapse diagnostics for any Pyro model/guide pair.

Everything here works from Pyro traces: the guide is traced on a chunk of data and the
model is replayed on the guide's draws, so the estimators apply to hand-written models as
well as to :mod:`pyrocollapse.models`. A latent site must sit inside one data plate over
dimension 0 (batch shape ``(N,)``) and have event shape ``(latent_dim,)``.

All estimators run without gradients, in chunks of ``batch_size`` data points, so memory
stays bounded whatever ``N``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse._validation import check_data, check_float, check_int

__all__ = [
    "ActiveUnits",
    "KLPerDimension",
    "MutualInformation",
    "active_units",
    "aggregate_posterior_kl",
    "diagnose",
    "kl_per_dimension",
    "latent_site_names",
    "mutual_information",
]


# --------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------
@dataclass
class SiteDraw:
    """q(z|x) and p(z) of one latent site on one chunk of data.

    ``q`` and ``p`` have batch shape ``(B,)`` (``p`` may be broadcastable) and event
    shape ``(D,)``; ``z`` is the guide's draw, shape ``(B, D)``.
    """

    q: dist.Distribution
    p: dist.Distribution
    z: torch.Tensor


def _check_inputs(data: object, batch_size: int) -> tuple[torch.Tensor, int]:
    if isinstance(data, torch.Tensor) and not data.is_floating_point():
        x = check_data("data", data, floating=False)
    else:
        x = check_data("data", data)
    return x, check_int("batch_size", batch_size, minimum=1)


def _traces(model: Callable, guide: Callable, x: torch.Tensor) -> tuple[Any, Any]:
    with torch.no_grad(), poutine.block():
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    return prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr)


def _latent_names(model_tr: Any, guide_tr: Any) -> list[str]:
    return [
        name
        for name, site in guide_tr.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and name in model_tr.nodes
        and not site["infer"].get("is_auxiliary")
    ]


def latent_site_names(model: Callable, guide: Callable, data: torch.Tensor) -> list[str]:
    """Latent sites shared by guide and model, in guide order (traced on 2 data points)."""
    x, _ = _check_inputs(data, 1)
    return _latent_names(*_traces(model, guide, x[:2]))


def site_draws(
    model: Callable, guide: Callable, data: torch.Tensor, site: str, batch_size: int = 256
) -> Iterator[SiteDraw]:
    """Yield :class:`SiteDraw` for ``site`` over consecutive chunks of ``data``."""
    x, batch_size = _check_inputs(data, batch_size)
    for xb in x.split(batch_size):
        model_tr, guide_tr = _traces(model, guide, xb)
        if site not in guide_tr.nodes or site not in model_tr.nodes:
            names = _latent_names(model_tr, guide_tr)
            raise ValueError(
                f"latent site {site!r} is not a sample site of both guide and model; "
                f"latent sites found: {', '.join(map(repr, names)) or 'none'}"
            )
        g, m = guide_tr.nodes[site], model_tr.nodes[site]
        q, p, z = g["fn"], m["fn"], g["value"]
        if len(q.event_shape) != 1 or tuple(q.batch_shape) != (len(xb),):
            raise ValueError(
                f"latent site {site!r} must have batch shape (N,) from one data plate over dim 0 "
                f"and event shape (latent_dim,); got batch {tuple(q.batch_shape)}, event "
                f"{tuple(q.event_shape)} for N={len(xb)}. Try .to_event(1) on the site's distribution."
            )
        yield SiteDraw(q, p, z)


# --------------------------------------------------------------------------------------
# Per-dimension densities
# --------------------------------------------------------------------------------------
def _univariate(d: dist.Distribution) -> dist.Distribution | None:
    if isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1:
        if d.base_dist.event_shape == torch.Size():
            return d.base_dist
    return None


def marginal_log_prob(d: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """log density of each coordinate under the univariate marginals of ``d``.

    Exact for factorised distributions (``Independent`` of univariates) and for mixtures
    (``MixtureSameFamily``) of factorised components.

    Parameters
    ----------
    d : Distribution
        Event shape ``(D,)``.
    z : torch.Tensor
        Shape ``sample_shape + batch_shape + (D,)`` (broadcastable).

    Returns
    -------
    torch.Tensor
        Shape ``broadcast(z.shape)`` with the last axis over dimensions.
    """
    base = _univariate(d)
    if base is not None:
        return base.log_prob(z)
    if isinstance(d, dist.MixtureSameFamily):
        comp = _univariate(d.component_distribution)
        if comp is not None:
            log_w = torch.log_softmax(d.mixture_distribution.logits, -1)  # (..., K)
            lp = comp.log_prob(z.unsqueeze(-2))  # (..., K, D)
            return torch.logsumexp(lp + log_w.unsqueeze(-1), dim=-2)
    raise NotImplementedError(
        f"per-dimension marginals of {type(d).__name__} are not available; they exist for "
        "Independent(univariate) and MixtureSameFamily of such components"
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
        ``"analytic"`` (closed form per dimension), ``"monte_carlo"`` (factorised prior)
        or ``"monte_carlo_marginal"`` (non-factorised prior: its per-dimension marginal).
    """

    per_dim: np.ndarray
    per_point: np.ndarray
    estimator: str

    @property
    def total(self) -> float:
        return float(self.per_dim.sum())

    def fraction_below(self, threshold: float = 0.01) -> np.ndarray:
        """Per dimension, the fraction of data points whose KL is below ``threshold``
        (collapse can be local to some x), shape ``(D,)``."""
        return (self.per_point < threshold).mean(0)


def kl_per_dimension(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    num_samples: int = 64,
    batch_size: int = 256,
) -> KLPerDimension:
    """KL(q(z_d|x) || p(z_d)) per latent dimension, averaged over the data.

    Analytic when q and p are factorised Normals (or any pair with a closed-form
    univariate KL). Otherwise a Monte Carlo estimate with ``num_samples`` draws from q per
    point, using p's per-dimension factor when p factorises, and p's univariate
    *marginal* p(z_d) when it does not (e.g. a Gaussian-mixture prior), as
    :attr:`KLPerDimension.estimator` reports. For a non-factorised prior the per-dimension
    values need not sum to the joint KL.

    Returns
    -------
    KLPerDimension
        ``per_dim`` shape ``(latent_dim,)``; ``per_point`` shape ``(N, latent_dim)``.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    rows, estimator = [], "analytic"
    for draw in site_draws(model, guide, data, site, batch_size):
        q1, p1 = _univariate(draw.q), _univariate(draw.p)
        kl = None
        if q1 is not None and p1 is not None:
            try:
                kl = kl_divergence(q1, p1).expand(q1.batch_shape)
            except NotImplementedError:
                kl = None
        if kl is None:
            if q1 is None:
                raise NotImplementedError(
                    f"site {site!r}: per-dimension KL needs a factorised guide distribution "
                    f"(Independent of univariates), got {type(draw.q).__name__}"
                )
            z = q1.sample((num_samples,))
            estimator = "monte_carlo" if p1 is not None else "monte_carlo_marginal"
            kl = (q1.log_prob(z) - marginal_log_prob(draw.p, z)).mean(0)
        rows.append(kl)
    per_point = torch.cat(rows).cpu().double().numpy()
    return KLPerDimension(per_point.mean(0), per_point, estimator)


# --------------------------------------------------------------------------------------
# Active units
# --------------------------------------------------------------------------------------
@dataclass
class ActiveUnits:
    """Active units (Burda et al. 2016).

    Attributes
    ----------
    variance : numpy.ndarray
        Cov_x(E_q[z_d | x]) per dimension, shape ``(D,)``.
    threshold : float
        A unit is active when its variance exceeds this (0.01 in the paper).
    """

    variance: np.ndarray
    threshold: float

    @property
    def active(self) -> np.ndarray:
        """Boolean mask, shape ``(D,)``."""
        return self.variance > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())


def _posterior_mean(q: dist.Distribution, num_samples: int) -> torch.Tensor:
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((num_samples,)).mean(0)


def active_units(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    threshold: float = 0.01,
    num_samples: int = 64,
    batch_size: int = 256,
) -> ActiveUnits:
    """Variance over data of the posterior mean, per dimension (Burda et al. 2016).

    ``A_d = Cov_x(E_{q(z|x)}[z_d])``; dimension d is active when ``A_d > threshold``.
    The posterior mean is exact when q has one, else a ``num_samples`` Monte Carlo mean.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    """
    threshold = check_float("threshold", threshold, minimum=0.0)
    means = torch.cat(
        [
            _posterior_mean(d.q, num_samples)
            for d in site_draws(model, guide, data, site, batch_size)
        ]
    ).double()
    var = means.var(0, unbiased=False) if means.shape[0] > 1 else torch.zeros(means.shape[1])
    return ActiveUnits(var.cpu().numpy(), threshold)


# --------------------------------------------------------------------------------------
# Mutual information and aggregate-posterior KL
# --------------------------------------------------------------------------------------
@dataclass
class MutualInformation:
    """I_q(x; z) under the empirical data distribution and the aggregate posterior.

    Attributes
    ----------
    total : float
        I_q(x; z) in nats.
    per_dim : numpy.ndarray or None
        I_q(x; z_d) per dimension (shape ``(D,)``), where q factorises.
    aggregate_kl : float
        KL(q(z) || p(z)), the "marginal KL" of ELBO surgery (Hoffman & Johnson 2016).
    aggregate_kl_per_dim : numpy.ndarray or None
        KL(q(z_d) || p(z_d)) per dimension, where per-dimension marginals exist.
    num_samples : int
        Draws of z per data point used.
    """

    total: float
    per_dim: np.ndarray | None
    aggregate_kl: float
    aggregate_kl_per_dim: np.ndarray | None
    num_samples: int


def _logsumexp_pairs(
    qs: Sequence[dist.Distribution], z: torch.Tensor, per_dim: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log sum_n q_n(z_i) over all chunks' distributions for each row z_i.

    ``z`` has shape ``(M, D)``; returns shapes ``(M,)`` and ``(M, D)``.
    """
    total = None
    dims = None
    for q in qs:
        zz = z.unsqueeze(-2)  # (M, 1, D) against batch (B,)
        if per_dim:
            lpd = _univariate(q).log_prob(zz)  # (M, B, D)
            lp = lpd.sum(-1)
            ld = torch.logsumexp(lpd, dim=-2)
            dims = ld if dims is None else torch.logaddexp(dims, ld)
        else:
            lp = q.log_prob(zz)  # (M, B)
        lt = torch.logsumexp(lp, dim=-1)
        total = lt if total is None else torch.logaddexp(total, lt)
    return total, dims  # type: ignore[return-value]


def mutual_information(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    num_samples: int = 1,
    batch_size: int = 256,
) -> MutualInformation:
    """I_q(x; z) = E_x E_{q(z|x)}[log q(z|x) - log q(z)], q(z) = (1/N) sum_n q(z|x_n).

    The aggregate posterior is taken over the whole of ``data`` (He et al. 2019), in
    chunks with a running logsumexp: cost O(N * num_samples * N) in vectorised chunk
    products, memory O(batch_size^2 * D). Also returns KL(q(z) || p(z)), estimated with
    the same draws, so that ``E_x KL(q(z|x) || p(z)) = I_q + KL(q(z) || p(z))`` (Hoffman &
    Johnson 2016) can be checked.

    The estimate of log q(z) includes the point's own posterior, so I_q is bounded above
    by log N; it is biased for small N.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Hoffman & Johnson (2016). ELBO surgery. NeurIPS AABI workshop.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    draws = list(site_draws(model, guide, data, site, batch_size))
    n = sum(d.z.shape[0] for d in draws)
    qs = [d.q for d in draws]
    per_dim = all(_univariate(q) is not None for q in qs)
    try:
        marginal_log_prob(draws[0].p, draws[0].z[:1])
        p_per_dim = per_dim
    except NotImplementedError:
        p_per_dim = False
    log_n = math.log(n)
    sums = {"cond": 0.0, "agg": 0.0, "prior": 0.0}
    dsum: dict[str, torch.Tensor] = {}
    for d in draws:
        with torch.no_grad():
            z = d.q.sample((num_samples,))  # (S, B, D)
            cond = d.q.log_prob(z)  # (S, B)
            prior = d.p.log_prob(z)
            flat = z.reshape(-1, z.shape[-1])
            agg, agg_d = _logsumexp_pairs(qs, flat, per_dim)
            sums["cond"] += float(cond.sum())
            sums["agg"] += float((agg - log_n).sum())
            sums["prior"] += float(prior.sum())
            if per_dim:
                cd = _univariate(d.q).log_prob(z).reshape(-1, z.shape[-1]).sum(0)
                dsum["cond"] = dsum.get("cond", 0) + cd
                dsum["agg"] = dsum.get("agg", 0) + (agg_d - log_n).sum(0)
                if p_per_dim:
                    dsum["prior"] = dsum.get("prior", 0) + marginal_log_prob(d.p, z).reshape(
                        -1, z.shape[-1]
                    ).sum(0)
    m = n * num_samples
    mi = (sums["cond"] - sums["agg"]) / m
    agg_kl = (sums["agg"] - sums["prior"]) / m
    mi_d = ((dsum["cond"] - dsum["agg"]) / m).double().cpu().numpy() if per_dim else None
    agg_d_kl = ((dsum["agg"] - dsum["prior"]) / m).double().cpu().numpy() if p_per_dim else None
    return MutualInformation(mi, mi_d, agg_kl, agg_d_kl, num_samples)


def aggregate_posterior_kl(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    num_samples: int = 1,
    batch_size: int = 256,
) -> float:
    """KL(q(z) || p(z)) between the aggregate posterior and the prior (nats).

    Estimated as E_{q(z)}[log q(z) - log p(z)] with the chunked aggregate posterior of
    :func:`mutual_information`; see there for details.
    """
    return mutual_information(
        model, guide, data, site=site, num_samples=num_samples, batch_size=batch_size
    ).aggregate_kl


# --------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------
def diagnose(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    latent_sites: Sequence[str] | None = ("z",),
    *,
    num_samples: int = 1,
    batch_size: int = 256,
    au_threshold: float = 0.01,
    mi_threshold: float = 0.01,
    max_points: int | None = 5000,
    seed: int | None = 0,
) -> Any:
    """Diagnose posterior collapse of a trained model/guide pair on ``data``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a batch ``x`` (any Pyro model/guide pair).
    data : torch.Tensor
        Shape ``(N, ...)``.
    latent_sites : sequence of str or None
        Latent sites to diagnose; ``None`` means every latent site of the guide.
    num_samples : int
        Draws of z per point for the mutual-information estimate.
    batch_size : int
        Chunk size (memory is O(batch_size^2 * latent_dim)).
    au_threshold : float
        Active-unit threshold on Cov_x(E_q[z_d]) (Burda et al. 2016: 0.01).
    mi_threshold : float
        Nats of I_q(x; z_d) above which an inactive dimension counts as informative.
    max_points : int or None
        Diagnose a random subset of at most this many points (``None``: all).
    seed : int or None
        Seed for the subset and the Monte Carlo draws (the global RNG state is restored).

    Returns
    -------
    CollapseReport
        Per site and dimension: KL, active-unit variance, MI, status; overall verdict.

    Notes
    -----
    The status of dimension d of a site is (rule stated in the report):

    * ``active`` when Cov_x(E_q[z_d]) > ``au_threshold``;
    * ``inactive-but-informative`` when not active but I_q(x; z_d) > ``mi_threshold``
      (the information lives in q's shape, not its mean);
    * ``collapsed`` otherwise: z_d carries no information about x.

    The verdict is ``healthy`` (no collapsed dimension), ``partial collapse`` or ``full
    collapse`` (every dimension of every site collapsed).
    """
    from pyrocollapse.report import CollapseReport, SiteReport

    x, batch_size = _check_inputs(data, batch_size)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    au_threshold = check_float("au_threshold", au_threshold, minimum=0.0)
    mi_threshold = check_float("mi_threshold", mi_threshold, minimum=0.0)
    with _seeded(seed):
        if max_points is not None:
            max_points = check_int("max_points", max_points, minimum=2)
            if x.shape[0] > max_points:
                x = x[torch.randperm(x.shape[0])[:max_points]]
        if latent_sites is None:
            latent_sites = latent_site_names(model, guide, x)
        elif isinstance(latent_sites, str) or not all(isinstance(s, str) for s in latent_sites):
            raise TypeError("latent_sites must be a sequence of site names, e.g. ('z',)")
        if not latent_sites:
            raise ValueError("latent_sites is empty; name at least one latent site")
        sites = {}
        for site in latent_sites:
            kl = kl_per_dimension(model, guide, x, site=site, batch_size=batch_size)
            au = active_units(
                model, guide, x, site=site, threshold=au_threshold, batch_size=batch_size
            )
            mi = mutual_information(
                model, guide, x, site=site, num_samples=num_samples, batch_size=batch_size
            )
            sites[site] = SiteReport.build(site, kl, au, mi, mi_threshold=mi_threshold)
        elbo = _elbo_decomposition(model, guide, x, batch_size)
    return CollapseReport(
        sites=sites,
        elbo=elbo,
        num_points=int(x.shape[0]),
        settings={
            "au_threshold": au_threshold,
            "mi_threshold": mi_threshold,
            "num_samples": num_samples,
            "batch_size": batch_size,
        },
    )


class _seeded:
    """Context manager: seed torch's RNG for reproducible diagnostics, then restore it."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.state = torch.get_rng_state()
        if self.seed is not None:
            torch.manual_seed(check_int("seed", self.seed, minimum=0))

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.state)


def _elbo_decomposition(
    model: Callable, guide: Callable, x: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """Per-data-point ELBO, reconstruction and KL (one draw of z per point)."""
    from pyrocollapse.elbo import PlainELBO

    elbo = PlainELBO()
    totals = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    n = 0.0
    with torch.no_grad(), poutine.block():
        for xb in x.split(batch_size):
            comps = elbo.evaluate(model, guide, xb).components
            for k in totals:
                totals[k] += comps[k]
            n += comps["num_data"]
    return {k: v / n for k, v in totals.items()}
