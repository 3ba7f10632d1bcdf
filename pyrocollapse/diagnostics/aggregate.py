"""The aggregate posterior q(z) = (1/N) sum_n q(z|x_n): the mutual information I_q(x; z)
(:func:`mutual_information`, its result :class:`MutualInformation`: InfoNCE and
leave-one-out estimates, their bracket, the marginal KL and per-dimension values) and
:func:`aggregate_posterior_kl` KL(q(z) || p(z)).

The blockwise density of q(z) lives in :mod:`~pyrocollapse.diagnostics._aggregate_posterior`,
and the total-only fast path of ``fit``'s monitor in
:mod:`~pyrocollapse.diagnostics._mi_totals`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics._aggregate_posterior import _AggregatePosterior
from pyrocollapse.diagnostics._bootstrap import _bootstrap_counts, _check_bootstrap, _interval
from pyrocollapse.diagnostics._programs import _numpy
from pyrocollapse.diagnostics._site_draws import SiteDraw, _varies_over_points, site_draws
from pyrocollapse.diagnostics.densities import _marginal, prior_marginals_of


@dataclass
class MutualInformation:
    """I_q(x; z) under the empirical data distribution and the aggregate posterior.

    All information quantities are in nats.

    Attributes
    ----------
    total : float
        I_q(x; z), the plug-in estimate with the aggregate q(z) = (1/N) sum_j q(z|x_j)
        over the N diagnosed points, each point's own component included. This is the
        InfoNCE (contrastive) estimate: at most ``log_n``, and biased low unless I_q is
        small against log N (see :attr:`saturated`).
    per_dim : numpy.ndarray or None
        I_q(x; z_d) per dimension (shape ``(D,)``), where q has univariate marginals.
    aggregate_kl : float
        KL(q(z) || p(z)), the "marginal KL" of ELBO surgery (Hoffman & Johnson 2016): the
        Monte Carlo mean of log q(z) - log p(z) over the draws, *not* clipped at 0, so that
        ``KL = total + aggregate_kl`` holds draw for draw. For an unconditional prior the
        quantity estimated is a divergence (>= 0) and a negative estimate is Monte Carlo
        noise: judge it against :attr:`aggregate_kl_stderr`. For a conditional prior
        (:attr:`conditional_prior`, e.g. the ``"z"`` site of a
        :class:`~pyrocollapse.priors.HierarchicalPrior`) it is
        ``E_x E_q[log q(z) - log p(z | parents)]`` at the guide's draws of the parents,
        which is not a divergence and can be genuinely negative (a conditional prior can
        be closer to q(z|x) than the aggregate q(z) is).
    aggregate_kl_per_dim : numpy.ndarray or None
        KL(q(z_d) || p(z_d)) per dimension, where per-dimension marginals exist.
    num_samples : int
        Draws of z per data point used.
    ci : tuple[float, float] or None
        Interval at level ``ci_level`` for the population I_q(x; z) (x from the
        distribution the N points were drawn from):
        ``[total - z_a * total_stderr, upper + z_a * upper_stderr]``, z_a the two-sided
        normal quantile, clipped below at 0 and widened where needed to contain
        ``total``; the upper end is ``inf`` where :attr:`upper` is. ``total`` is biased
        low and ``upper`` high, so each end errs on its own side; it is always computed
        (``bootstrap`` does not affect it). See :func:`mutual_information`.
    aggregate_kl_ci : tuple[float, float] or None
        Basic (pivotal) bootstrap interval of ``aggregate_kl`` (with ``bootstrap > 0``).
    per_dim_stderr : numpy.ndarray or None
        Monte Carlo standard error of ``per_dim`` over the draws used for it.
    per_dim_draws : int
        Number of draws the per-dimension estimates average over.
    stderr : float
        Monte Carlo standard error of ``total + aggregate_kl`` (the sample mean of
        log q(z|x) - log p(z) over the draws), the yardstick for the KL identity.
    aggregate_kl_stderr : float
        Monte Carlo standard error of :attr:`aggregate_kl` (the standard deviation of the
        per-draw terms over the square root of their number; ``nan`` for a single draw).
        It holds the aggregate posterior fixed, so it does not include the bias of
        log q(z) at small N.
    conditional_prior : bool
        Whether p(z) differs between data points (it depends on other latents).
    total_stderr : float
        Standard error of ``total`` over data points (delta method): sd_n(g_n) / sqrt(N)
        with g_n the mean over point n's draws of log q(z|x_n) - log q(z). This is the
        influence function of the plug-in functional (the derivative through the
        aggregate, E_q(z)[q(z|x)/q(z) - 1], integrates to zero), and the spread of g_n
        includes the Monte Carlo noise of the draws. ``nan`` for N = 1.
    upper : float
        Leave-one-out ("L1Out", Poole et al. 2019) estimate: as ``total`` with the
        point's own component removed from the aggregate,
        log q(z|x_n) - log((1/(N-1)) sum_{j != n} q(z|x_j)), biased upward (an upper bound
        on the population I_q in expectation); the other components are summed apart from
        the own one, so it keeps full precision however small their share. ``inf`` only
        where, for some draw, no other component has any density, and for N = 1.
    upper_stderr : float
        Standard error of ``upper`` over data points, as for ``total_stderr`` (``nan``
        where ``upper`` is infinite).
    log_n : float
        log N, the largest value ``total`` can take.
    saturated : bool
        ``log_n - total < 1``: the own component holds, in geometric mean over the draws,
        more than e^-1 of the aggregate density at its own draws (``log_n - total`` is
        the mean of -log of that share). ``total`` then mostly reflects N, and I_q is
        only known to be at least about ``ci[0]``.
    points_needed : float or None
        Where :attr:`saturated`: a number of data points whose log exceeds the upper end
        of :attr:`ci` by 1 nat (``exp(ci[1] + 1)``, rounded up), enough to resolve the
        interval; where that end is infinite, ``exp(total + 2)``, which is only a floor
        (at least this many points are needed). ``None`` where not saturated.
    """

    total: float
    per_dim: np.ndarray | None
    aggregate_kl: float
    aggregate_kl_per_dim: np.ndarray | None
    num_samples: int
    ci: tuple[float, float] | None = None
    aggregate_kl_ci: tuple[float, float] | None = None
    per_dim_stderr: np.ndarray | None = None
    per_dim_draws: int = 0
    stderr: float = math.nan
    aggregate_kl_stderr: float = math.nan
    conditional_prior: bool = False
    total_stderr: float = math.nan
    upper: float = math.nan
    upper_stderr: float = math.nan
    log_n: float = math.nan
    saturated: bool = False
    points_needed: float | None = None


def _exp(x: float) -> float:
    """``exp(x)`` rounded up to a whole number, ``inf`` instead of overflowing."""
    return math.inf if x > 700 else float(math.ceil(math.exp(x)))


def _point_stats(terms: torch.Tensor, n: int) -> tuple[float, float]:
    """Mean of per-draw ``terms`` (rows grouped by point, ``(n * S,)``) and its standard
    error over points, sd_n(mean of the point's draws) / sqrt(n) (``nan`` for n = 1)."""
    g = terms.view(n, -1).mean(1)
    se = float(g.std() / math.sqrt(n)) if n > 1 else math.nan
    return float(terms.mean()), se


def _mi_interval(
    total: float, se: float, upper: float, upper_se: float, level: float
) -> tuple[float, float]:
    """``[total - z se, upper + z upper_se]`` clipped below at 0, containing ``total``."""
    z = NormalDist().inv_cdf((1 + level) / 2)
    lo = max(0.0, total - z * se) if math.isfinite(se) else 0.0
    hi = upper + z * upper_se if math.isfinite(upper) else math.inf
    return min(lo, total), max(hi, total)


def _mi_from_draws(
    draws: Sequence[SiteDraw],
    num_samples: int,
    per_dim_draws: int | None,
    bootstrap: int,
    ci_level: float,
    *,
    prior_dims: bool = True,
) -> MutualInformation:
    """The estimates of :func:`mutual_information` from one sweep's draws;
    ``prior_dims=False`` leaves out the per-dimension marginal KLs and with them the
    prior's marginals, which a flow prior estimates at some cost (``fit``'s monitor,
    which reads the total only)."""
    agg = _AggregatePosterior([d.q for d in draws])
    zs, cond, prior, cond_d, prior_d = [], [], [], [], []
    per_dim = all(m is not None for m in agg.marginals)
    prior_marginals = None
    if per_dim and prior_dims:
        try:
            prior_marginals = prior_marginals_of(draws, "")
        except NotImplementedError:
            prior_marginals = None
    p_per_dim = prior_marginals is not None
    for d in draws:
        z = d.q.sample((num_samples,))  # (S, B, D)
        zs.append(z.transpose(0, 1).reshape(-1, z.shape[-1]))
        cond.append(d.q.log_prob(z).T.reshape(-1))
        prior.append(d.p.log_prob(z).expand(z.shape[:-1]).T.reshape(-1))
        if per_dim:
            cond_d.append(_marginal(d.q).log_prob(z).transpose(0, 1).reshape(-1, z.shape[-1]))  # type: ignore[union-attr]
        if p_per_dim:
            lp = prior_marginals(d.p, z).expand(z.shape)  # type: ignore[misc]
            prior_d.append(lp.transpose(0, 1).reshape(-1, z.shape[-1]))
    z = torch.cat(zs)  # (M, D), rows grouped by point
    cond_t, prior_t = torch.cat(cond).double(), torch.cat(prior).double()
    n, m = agg.n, z.shape[0]
    point = torch.arange(m, device=z.device) // num_samples
    agg.select_precision(z, point)
    weights = torch.ones(1, n, dtype=torch.float64, device=z.device)
    if bootstrap:
        weights = torch.cat([weights, _bootstrap_counts(n, bootstrap, z.device)])
    log_q, log_rest = agg.log_prob(z, weights, own=point)  # (M, 1 + R), (M,)
    # InfoNCE (own component in the aggregate) and L1Out (own component left out)
    mi, mi_se = _point_stats(cond_t - log_q[:, 0], n)
    # log_rest keeps full relative precision (the own component is summed apart), so
    # the leave-one-out estimate is finite unless no other component has any mass
    alone = ~torch.isfinite(log_rest)
    if n > 1 and not bool(alone.any()):
        upper, upper_se = _point_stats(cond_t - log_rest + math.log(n - 1), n)
    else:
        upper, upper_se = math.inf, math.nan
    ci = _mi_interval(mi, mi_se, upper, upper_se, ci_level)
    log_n = math.log(n)
    saturated = log_n - mi < 1.0
    needed = None
    if saturated:
        needed = _exp(ci[1] + 1.0) if math.isfinite(ci[1]) else _exp(mi + 2.0)
    agg_terms = log_q[:, 0] - prior_t
    agg_kl = float(agg_terms.mean())
    agg_se = float(agg_terms.std() / math.sqrt(m)) if m > 1 else math.nan
    conditional = any(d.conditional or _varies_over_points(d.p, d.z) for d in draws)
    agg_ci = None
    if bootstrap:
        c = weights[1:, point]  # (R, M)
        lq = log_q[:, 1:].T
        kl_r = torch.where(c > 0, c * (lq - prior_t), 0.0).sum(1) / m
        agg_ci = _interval(kl_r, ci_level, agg_kl)
    mi_d = agg_kl_d = stderr = None
    used = 0
    if per_dim:
        rows = torch.arange(m, device=z.device)
        if per_dim_draws is not None and m > per_dim_draws:
            rows = torch.randperm(m, device=z.device)[:per_dim_draws]
        used = int(rows.numel())
        log_qd = agg.log_prob_per_dim(z[rows])
        terms = torch.cat(cond_d)[rows].double() - log_qd
        mi_d = _numpy(terms.mean(0))
        stderr = _numpy(terms.std(0) / math.sqrt(used)) if used > 1 else None
        if p_per_dim:
            agg_kl_d = _numpy((log_qd - torch.cat(prior_d)[rows].double()).mean(0))
    diff = cond_t - prior_t
    total_se = float(diff.std() / math.sqrt(m)) if m > 1 else math.nan
    return MutualInformation(
        mi,
        mi_d,
        agg_kl,
        agg_kl_d,
        num_samples,
        ci,
        agg_ci,
        stderr,
        used,
        total_se,
        agg_se,
        conditional,
        total_stderr=mi_se,
        upper=upper,
        upper_stderr=upper_se,
        log_n=log_n,
        saturated=saturated,
        points_needed=needed,
    )


def mutual_information(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    num_samples: int = 1,
    batch_size: int = 256,
    per_dim_draws: int | None = 2048,
    bootstrap: int = 0,
    ci_level: float = 0.95,
    device: str | torch.device | None = None,
) -> MutualInformation:
    """I_q(x; z) = E_x E_{q(z|x)}[log q(z|x) - log q(z)], q(z) = (1/N) sum_n q(z|x_n).

    The aggregate posterior is taken over the whole of ``data`` (He et al. 2019) and
    evaluated blockwise with a running logsumexp: cost O(N * num_samples * N) in matrix
    products, memory O(N * latent_dim) plus one block. Also returns KL(q(z) || p(z)),
    estimated with the same draws, so that ``E_x KL(q(z|x) || p(z)) = I_q +
    KL(q(z) || p(z))`` (Hoffman & Johnson 2016) can be checked.

    The per-dimension values I_q(x; z_d) and KL(q(z_d) || p(z_d)) need the univariate
    aggregate q(z_d) of every dimension, a (draws x N x D) computation that has no
    matrix-product shortcut; they average over a random subset of ``per_dim_draws`` of
    the ``N * num_samples`` draws (against the full aggregate), and their Monte Carlo
    standard error is reported.

    **Bounds and interval.** The estimate of log q(z) includes the point's own posterior,
    which makes ``total`` the InfoNCE (contrastive) estimate with critic log q(z|x): at
    most log N, and in expectation a lower bound on the population I_q (biased low,
    markedly so when I_q is not small against log N). Leaving the own component out,
    log q_{-n}(z) = log((1/(N-1)) sum_{j != n} q(z|x_j)), gives the leave-one-out
    ("L1Out") estimate ``upper``, in expectation an upper bound (Jensen's inequality over
    the other points); its sum comes from the same block pass (the own component is held
    out of the running sums and added back, O(M) extra work per block). Each has a
    delta-method standard error over data points: the influence function of the plug-in
    functional is g(x) - I with g(x) = E_q(z|x)[log q(z|x) - log q(z)] (the derivative
    through the aggregate, E_q(z)[q(z|x)/q(z)] - 1, is zero), estimated by the spread
    of the per-point means of the draws, sd_n(g_n) / sqrt(N), which includes the draws'
    Monte Carlo noise. Since the lower estimate errs low and the upper errs high, the
    bracket ``ci = [total - z_a se(total), upper + z_a se(upper)]`` (clipped below at 0,
    always containing ``total``) covers the population I_q at least at about the nominal
    level from either side: close to nominal when I_q << log N (where the two agree),
    conservative as I_q nears log N, where the single-estimate bootstrap interval
    under-covers (the bias is not a sampling fluctuation it can see). ``upper`` is
    infinite, and the interval unbounded above, only when for some draw no other
    component has any density.

    When log N - total < 1 nat the result is flagged ``saturated``: ``total`` then mostly
    reflects N, I_q is only known to be at least about ``ci[0]``, and ``points_needed``
    says how many points would resolve it (see :class:`MutualInformation`).

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        Draws of z per data point.
    per_dim_draws : int or None
        Draws used for the per-dimension estimates (``None``: all).
    bootstrap : int
        Nonparametric bootstrap replicates over data points (0: none). Each replicate
        reweights both the averaged points *and* the aggregate's components by the same
        resampling counts, i.e. it recomputes the plug-in estimate on the resampled
        empirical distribution, so the interval accounts for the aggregate posterior
        being estimated from the sample; all replicates come from the same block pass
        (one extra matrix product per block), with the draws of z held fixed. The
        intervals are basic (pivotal) bootstrap intervals: resampling duplicates points,
        which biases replicates downward just as finite N biases the estimate, and the
        pivot corrects this to first order (percentile intervals under-cover badly).
        The bootstrap gives ``aggregate_kl_ci`` only: the interval for I_q is the bracket
        above, computed whether or not ``bootstrap > 0`` (a bootstrap interval about
        ``total`` alone under-covers as I_q approaches log N, and lay entirely above
        log N for saturated estimates).
    ci_level : float
        Nominal coverage of the intervals.

    Returns
    -------
    MutualInformation

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Hoffman & Johnson (2016). ELBO surgery: yet another way to carve up the variational
    evidence lower bound. NIPS Workshop on Advances in Approximate Bayesian Inference.
    Efron & Tibshirani (1993). An Introduction to the Bootstrap. Chapman & Hall.
    Poole, Ozair, van den Oord, Alemi, Tucker (2019). On Variational Bounds of Mutual
    Information. ICML.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    if per_dim_draws is not None:
        per_dim_draws = check_int("per_dim_draws", per_dim_draws, minimum=2)
    bootstrap, ci_level = _check_bootstrap(bootstrap, ci_level)
    draws = list(site_draws(model, guide, data, site, batch_size, device=device))
    with torch.no_grad():
        return _mi_from_draws(draws, num_samples, per_dim_draws, bootstrap, ci_level)


def aggregate_posterior_kl(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    num_samples: int = 1,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """KL(q(z) || p(z)) between the aggregate posterior and the prior (nats).

    Estimated as E_{q(z)}[log q(z) - log p(z)] with the blockwise aggregate posterior of
    :func:`mutual_information`; see there for details. The Monte Carlo estimate is not
    clipped at 0: near 0 it can come out slightly negative, and for a conditional prior
    it is not a divergence at all (see :attr:`MutualInformation.aggregate_kl`);
    ``mutual_information(...).aggregate_kl_stderr`` gives its standard error.

    References
    ----------
    Hoffman & Johnson (2016). ELBO surgery. NIPS Workshop on Advances in Approximate
    Bayesian Inference.
    """
    return mutual_information(
        model,
        guide,
        data,
        site=site,
        num_samples=num_samples,
        batch_size=batch_size,
        per_dim_draws=2,
        device=device,
    ).aggregate_kl
