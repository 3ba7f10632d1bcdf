"""The aggregate posterior q(z): :func:`mutual_information` I_q(x; z) and
:func:`aggregate_posterior_kl` KL(q(z) || p(z))."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from statistics import NormalDist
from typing import Any, overload

import numpy as np
import pyro.distributions as dist
import torch
from torch.nn.utils.rnn import pad_sequence

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics._tracing import (
    _BLOCK,
    _DIM_BLOCK,
    _F32_TOLERANCE,
    _LOG_2PI,
    SiteDraw,
    _bootstrap_counts,
    _check_bootstrap,
    _interval,
    _numpy,
    _varies_over_points,
    site_draws,
)
from pyrocollapse.diagnostics.densities import _diag_normal, _marginal, prior_marginals_of


# --------------------------------------------------------------------------------------
# Aggregate posterior: mutual information and marginal KL
# --------------------------------------------------------------------------------------
class _AggregatePosterior:
    """The aggregate posterior q(z) = (1/N) sum_j q(z | x_j) of one site, evaluated in
    blocks of (draws x components) so that memory stays O(block) whatever N.

    For diagonal-Normal q the joint log densities of a block come from one matrix
    product: with centred coordinates, -0.5 * sum_d (z_d - mu_jd)^2 / s_jd^2 expands into
    ``[z^2, z] @ [-0.5 / s^2, mu / s^2]^T + c_j``. It runs in float32 unless the
    expansion's rounding error, checked on each draw's own component, exceeds
    ``_F32_TOLERANCE`` nats (very small posterior scales), then in float64. Other
    distributions use their ``log_prob`` broadcast over the block.
    """

    def __init__(self, qs: Sequence[dist.Distribution]) -> None:
        self.qs = list(qs)
        self.sizes = [int(q.batch_shape[0]) for q in self.qs]
        self.n = sum(self.sizes)
        params = [_diag_normal(q) for q in self.qs]
        self.normal = all(p is not None for p in params)
        self.marginals = [_marginal(q) for q in self.qs]
        self.dtype = torch.float32
        if self.normal:
            self.loc = torch.cat([p[0] for p in params])  # type: ignore[index]
            self.scale = torch.cat([p[1] for p in params])  # type: ignore[index]
            self.center = self.loc.double().mean(0)
            self._expanded: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- fast path -----------------------------------------------------------------------
    def _expansion(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if dtype not in self._expanded:
            loc = self.loc.double() - self.center
            scale = self.scale.double()
            prec = scale.pow(-2)
            weights = torch.cat([-0.5 * prec, loc * prec], 1).T.contiguous()  # (2D, N)
            const = (
                -0.5 * (loc.pow(2) * prec).sum(1)
                - scale.log().sum(1)
                - 0.5 * loc.shape[1] * _LOG_2PI
            )
            self._expanded[dtype] = (weights.to(dtype), const.to(dtype))
        return self._expanded[dtype]

    def _features(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        zc = z.double() - self.center
        return torch.cat([zc.pow(2), zc], 1).to(dtype)

    def select_precision(self, z: torch.Tensor, own: torch.Tensor) -> None:
        """Use float32 unless its error on each draw's own component exceeds tolerance."""
        if not self.normal:
            return
        exact = dist.Normal(self.loc[own].double(), self.scale[own].double()).log_prob(z.double())
        weights, const = self._expansion(torch.float32)
        approx = (self._features(z, torch.float32) * weights.T[own]).sum(1) + const[own]
        err = float((approx.double() - exact.sum(1)).abs().max())
        self.dtype = torch.float32 if err <= _F32_TOLERANCE else torch.float64

    # -- blocks ----------------------------------------------------------------------------
    def _query_rows(self, per_dim: bool, dim: int) -> int:
        """Draws per block: as many as fit ``_BLOCK`` entries against every component
        (one block per chunk for small N), at least 256 (64 per dimension) for large N."""
        per_row = (max(self.sizes) if not self.normal else self.n) * (dim if per_dim else 1)
        if not self.normal:
            return max(1, 4 * _BLOCK // per_row)
        if per_dim:
            return max(16, _DIM_BLOCK // per_row)
        return max(256, _BLOCK // per_row)

    def _blocks(self, z: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """(components, L) with L[i, j] = log q_j(z_i), shape ``(M, len(components))``."""
        if self.normal:
            weights, const = self._expansion(self.dtype)
            feats = self._features(z, self.dtype)
            width = max(1, _BLOCK // z.shape[0])
            for j in range(0, self.n, width):
                cols = slice(j, min(j + width, self.n))
                yield cols, torch.addmm(const[cols], feats, weights[:, cols])
            return
        start = 0
        for q, size in zip(self.qs, self.sizes):
            yield slice(start, start + size), q.log_prob(z.unsqueeze(-2))
            start += size

    def _dim_blocks(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """L[d, i, j] = log q_j(z_id) under the univariate marginals, ``(D, M, cols)``."""
        if self.normal:
            zt = z.T.unsqueeze(-1)  # (D, M, 1)
            loc, scale = self.loc.T, self.scale.T  # (D, N)
            width = max(1, _DIM_BLOCK // (z.shape[0] * z.shape[1]))
            for j in range(0, self.n, width):
                cols = slice(j, j + width)
                yield (
                    (zt - loc[:, None, cols])
                    .div_(scale[:, None, cols])
                    .square_()
                    .mul_(-0.5)
                    .sub_(scale[:, None, cols].log() + 0.5 * _LOG_2PI)
                )
            return
        for m in self.marginals:
            yield m.log_prob(z.unsqueeze(-2)).permute(2, 0, 1)  # type: ignore[union-attr]

    # -- reductions --------------------------------------------------------------------------
    @overload
    def log_prob(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor: ...

    @overload
    def log_prob(
        self, z: torch.Tensor, weights: torch.Tensor, own: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def log_prob(
        self, z: torch.Tensor, weights: torch.Tensor, own: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``log (1/N) sum_j w_rj q_j(z_i)`` for rows ``z`` ``(M, D)`` and non-negative
        weights ``(R, N)``; shape ``(M, R)``. With ``w = 1`` this is log q(z).

        With ``own`` (``(M,)``, the component each row was drawn from) the own component
        is kept out of the running sums and added back at the end, and the pair
        ``(log_q, log_rest)`` is returned, ``log_rest = log sum_{j != own_i} w_0j q_j(z_i)``
        ``(M,)`` under the first row of ``weights`` (not divided by anything; ``-inf``
        where no other component has mass). The running maximum is then taken over the
        other components only, so the leave-one-out sum keeps full relative precision
        however much of the mass the own component holds; it costs O(M) per block on top
        of the same pass.
        """
        rows = self._query_rows(False, z.shape[1])
        out, rest = [], []
        owns = own.split(rows) if own is not None else repeat(None)
        for zi, oi in zip(z.split(rows), owns):
            m = torch.full((zi.shape[0],), -math.inf, dtype=torch.float64, device=z.device)
            acc = torch.zeros(zi.shape[0], weights.shape[0], dtype=torch.float64, device=z.device)
            own_lp = torch.full_like(m, -math.inf)
            for cols, block in self._blocks(zi):
                if oi is not None:  # move the own component out of the block
                    block = block.contiguous()
                    inside = (oi >= cols.start) & (oi < cols.stop)
                    at = (oi - cols.start).clamp(0, block.shape[1] - 1)[:, None]
                    value = block.gather(1, at).squeeze(1)
                    own_lp = torch.where(inside, value.double(), own_lp)
                    block.scatter_(1, at, torch.where(inside, -math.inf, value)[:, None])
                mb = block.amax(1)
                shift = torch.where(mb == -math.inf, 0.0, mb)
                block = (
                    block.sub_(shift[:, None]).exp_()
                    if block.is_contiguous()
                    else (block - shift[:, None]).exp()
                )
                part = (block @ weights[:, cols].T.to(block.dtype)).double()
                acc, m = _merge(acc, m, part, mb.double())
            if oi is not None:
                rest.append(acc[:, 0].log() + m)
                acc, m = _merge(acc, m, weights[:, oi].T, own_lp)
            out.append(acc.clamp_min(1e-300).log() + m[:, None])
        log_q = torch.cat(out) - math.log(self.n)
        return log_q if own is None else (log_q, torch.cat(rest))

    def _dim_params(self) -> tuple[torch.Tensor, ...]:
        """Per dimension ``(D, N)``: a = 1/(s sqrt 2), -mu a, and c - bound with
        c = -log s - log(2 pi)/2 and bound = max_j c_j ``(D,)``, so that
        log q_j(z_d) = bound + (c - bound) - (z a - mu a)^2 <= bound."""
        if not hasattr(self, "_dim_cache"):
            scale, loc = self.scale.T, self.loc.T
            a = (scale * math.sqrt(2.0)).reciprocal()
            c = -scale.log() - 0.5 * _LOG_2PI
            bound = c.amax(1)
            self._dim_cache = (a, -loc * a, c - bound[:, None], bound)
        return self._dim_cache

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z_id)`` under the aggregate's univariate marginals, shape ``(M, D)``.

        For diagonal Normals each block costs four fused elementwise passes: the log
        densities are shifted by their upper bound max_j c_jd instead of a running max,
        and a chunk whose sum underflows is recomputed with the running max.
        """
        rows = self._query_rows(True, z.shape[1])
        out = []
        for zi in z.split(rows):
            if not self.normal:
                out.append(self._per_dim_running_max(zi))
                continue
            a, neg_b, shift, bound = self._dim_params()
            zt = zi.T.unsqueeze(-1)  # (D, M, 1)
            acc = torch.zeros(zi.shape[::-1], dtype=torch.float64, device=z.device)
            width = max(1, _DIM_BLOCK // (zi.shape[0] * zi.shape[1]))
            for j in range(0, self.n, width):
                cols = slice(j, j + width)
                t = torch.addcmul(neg_b[:, None, cols], zt, a[:, None, cols])
                block = torch.addcmul(shift[:, None, cols], t, t, value=-1.0)
                acc += block.exp_().sum(2).double()
            if bool((acc == 0).any()):
                out.append(self._per_dim_running_max(zi))
            else:
                out.append((acc.log() + bound.double()[:, None]).T)
        return torch.cat(out) - math.log(self.n)

    def _per_dim_running_max(self, zi: torch.Tensor) -> torch.Tensor:
        m = torch.full(zi.shape[::-1], -math.inf, dtype=torch.float64, device=zi.device)
        acc = torch.zeros(zi.shape[::-1], dtype=torch.float64, device=zi.device)
        for block in self._dim_blocks(zi):
            mb = block.amax(2)
            part = (block - mb[..., None]).exp_().sum(2).double()
            mb = mb.double()
            mn = torch.maximum(m, mb)
            acc = acc * (m - mn).exp() + part * (mb - mn).exp()
            m = mn
        return (acc.clamp_min(1e-300).log() + m).T


def _merge(
    acc: torch.Tensor, m: torch.Tensor, part: torch.Tensor, mb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running logsumexp: ``acc * e^m + part * e^mb`` as ``(acc', m')``, with ``m`` and
    ``mb`` ``(M,)`` and either allowed to be ``-inf`` (an empty or massless part)."""
    mn = torch.maximum(m, mb)
    keep = torch.where(m == -math.inf, 0.0, (m - mn).exp())
    add = torch.where(mb == -math.inf, 0.0, (mb - mn).exp())
    return acc * keep[:, None] + part * add[:, None], mn


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


@dataclass
class _TotalDraws:
    """The draws of :func:`_mi_total_draws` for one site: the chunks' posteriors ``qs``
    and their draws ``samples`` (``(S, B, D)`` each); the draws as rows ``z`` ``(M, D)``
    (grouped by point, ``num_samples`` each); for diagonal-Normal posteriors their
    location and scale ``(N, D)`` (else ``None``); and the draws' log densities under
    their own posteriors ``cond`` ``(M,)`` (float64), computed on first use."""

    qs: list[dist.Distribution]
    samples: list[torch.Tensor]
    z: torch.Tensor
    num_samples: int
    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    _cond: torch.Tensor | None = None

    @property
    def cond(self) -> torch.Tensor:
        """log q(z | x) of each draw under its own posterior, ``(M,)``, float64, as
        :func:`_mi_from_draws` computes it."""
        if self._cond is None:
            self._cond = torch.cat(
                [q.log_prob(z).T.reshape(-1) for q, z in zip(self.qs, self.samples)]
            ).double()
        return self._cond


def _normal_params(q: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of a diagonal Normal ``Independent(Normal, 1)`` whose parameters
    have its full shape ``(B, D)`` (a guide's encoder output); ``None`` otherwise (the
    general test is :func:`~pyrocollapse.diagnostics.densities._diag_normal`)."""
    if not isinstance(q, dist.Independent) or q.reinterpreted_batch_ndims != 1:
        return None
    base = q.base_dist
    if not isinstance(base, dist.Normal) or base.event_shape != torch.Size():
        return None
    shape = (*q.batch_shape, *q.event_shape)
    if base.loc.shape != shape or base.scale.shape != shape:
        return None
    return base.loc, base.scale


def _normal_chunks(draws: Sequence[SiteDraw]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """:func:`_normal_params` of every chunk's q(z|x), or ``None`` unless all have them."""
    params = [_normal_params(d.q) for d in draws]
    return None if any(p is None for p in params) else params  # type: ignore[return-value]


def _mi_total_draws(
    draws: Sequence[SiteDraw],
    num_samples: int,
    per_dim_draws: int | None,
    params: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> _TotalDraws:
    """The random part of :func:`_mi_total_from_draws`: ``num_samples`` draws of z per
    point from each chunk's q(z|x), then the permutation with which :func:`_mi_from_draws`
    picks the ``per_dim_draws`` draws of its per-dimension values (drawn and discarded
    here), so that torch's global RNG is used exactly as there. ``params``: the chunks'
    :func:`_normal_chunks` where the caller has them (found here otherwise); a diagonal
    Normal is drawn from with the call its ``sample`` makes (``torch.normal`` on the
    expanded parameters), the same values."""
    qs = [d.q for d in draws]
    if params is None:
        params = _normal_chunks(draws)
    if params is not None:
        per_dim = True  # a diagonal Normal has univariate marginals
        samples = []
        with torch.no_grad():
            for loc, scale in params:
                shape = (num_samples, *loc.shape)
                samples.append(torch.normal(loc.expand(shape), scale.expand(shape)))
    else:
        per_dim = all(marginal is not None for marginal in _AggregatePosterior(qs).marginals)
        samples = [q.sample((num_samples,)) for q in qs]  # (S, B, D) each
    z = torch.cat([s.transpose(0, 1).reshape(-1, s.shape[-1]) for s in samples])  # (M, D)
    m = z.shape[0]
    if per_dim and per_dim_draws is not None and m > per_dim_draws:
        torch.randperm(m, device=z.device)  # the RNG draw of _mi_from_draws' subset
    t = _TotalDraws(qs, samples, z, num_samples)
    if params is not None:
        t.loc = torch.cat([loc for loc, _ in params])
        t.scale = torch.cat([scale for _, scale in params])
    return t


def _mi_total(t: _TotalDraws) -> float:
    """The InfoNCE total of one site's :class:`_TotalDraws`, computed as
    :func:`_mi_from_draws` computes it (the same value to the last bit)."""
    agg, z = _AggregatePosterior(t.qs), t.z
    point = torch.arange(z.shape[0], device=z.device) // t.num_samples
    agg.select_precision(z, point)
    weights = torch.ones(1, agg.n, dtype=torch.float64, device=z.device)
    log_q, _ = agg.log_prob(z, weights, own=point)
    return float((t.cond - log_q[:, 0]).mean())


#: Most (draws x components) entries of one site for :func:`_mi_totals` (a subset of 512
#: points); larger sites go through :func:`_mi_total`'s blockwise pass.
_BATCH_ENTRIES = 2**18
#: Most entries of one batched pass (16 MB per float64 temporary); more sites are split.
_BATCH_TOTAL = 2**21


def _batchable(t: _TotalDraws) -> bool:
    """Whether :func:`_mi_totals` evaluates the site: :func:`_normal_params` posteriors
    and at most :data:`_BATCH_ENTRIES` (draws x components)."""
    return t.loc is not None and t.loc.shape[0] * t.z.shape[0] <= _BATCH_ENTRIES


def _mi_totals(ts: Sequence[_TotalDraws]) -> list[float | None]:
    """:func:`_mi_total` of the :func:`_batchable` sites among ``ts``, in float64 and
    batched over sites.

    Sites of the same latent dimension, draws per point, dtype and device are evaluated
    together: their components and draws are padded to the largest site, and one
    batched matrix product gives every site's log densities (the quadratic-form
    expansion of :class:`_AggregatePosterior`, in each site's centred coordinates,
    padded components at -inf), reduced with one logsumexp; the draws' densities under
    their own posteriors come from the same parameters. It is the same estimate from
    the same draws as :func:`_mi_total`, without its float32 pass and float32/float64
    check: the two agree to float32 rounding (about 1e-6 nats per unit of log density).

    Returns
    -------
    list[float or None]
        I_q(x; z) per site (nats) in the order of ``ts``; ``None`` for a site that is
        not batchable (left to :func:`_mi_total`).
    """
    out: list[float | None] = [None] * len(ts)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, t in enumerate(ts):
        if _batchable(t):
            key = (t.z.shape[1], t.num_samples, t.z.dtype, t.z.device)
            groups.setdefault(key, []).append(i)
    for idx in groups.values():
        size = max(ts[i].z.shape[0] for i in idx) * max(ts[i].loc.shape[0] for i in idx)  # type: ignore[union-attr]
        step = max(1, _BATCH_TOTAL // size)
        for j in range(0, len(idx), step):
            part = idx[j : j + step]
            for i, total in zip(part, _batched_totals([ts[i] for i in part])):
                out[i] = total
    return out


def _batched_totals(ts: Sequence[_TotalDraws]) -> list[float]:
    """InfoNCE totals of sites with diagonal-Normal posteriors of one dimension, in one
    batched float64 pass (see :func:`_mi_totals`)."""
    if len(ts) == 1:  # nothing to pad
        t = ts[0]
        loc, scale = t.loc.double()[None], t.scale.double()[None]  # type: ignore[union-attr]
        z = t.z.double()[None]
        comp = rows = None
        n = float(loc.shape[1])
        center = loc.mean(1, keepdim=True)
    else:
        device = ts[0].z.device
        sizes = [t.loc.shape[0] for t in ts]  # type: ignore[union-attr]
        draws = [t.z.shape[0] for t in ts]
        loc = pad_sequence([t.loc.double() for t in ts], batch_first=True)  # type: ignore[union-attr]
        scale = pad_sequence(
            [t.scale.double() for t in ts],  # type: ignore[union-attr]
            batch_first=True,
            padding_value=1.0,
        )
        z = pad_sequence([t.z.double() for t in ts], batch_first=True)  # (K, M, D)
        n = torch.tensor(sizes, dtype=torch.float64, device=device)[:, None]  # (K, 1)
        m = torch.tensor(draws, dtype=torch.float64, device=device)[:, None]
        comp = torch.arange(loc.shape[1], device=device) < n  # (K, N)
        rows = torch.arange(z.shape[1], device=device) < m  # (K, M)
        # each site centred on its own components' mean, as the aggregate's expansion is
        center = (loc * comp[..., None]).sum(1, keepdim=True) / n[..., None]
    loc, z = loc - center, z - center
    # each draw's density under its own component (rows grouped by point)
    own = torch.arange(z.shape[1], device=z.device) // ts[0].num_samples
    own_loc, own_scale = loc[:, own], scale[:, own]  # (K, M, D)
    cond = -0.5 * ((z - own_loc) / own_scale).pow(2) - own_scale.log()
    cond = cond.sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI  # (K, M)
    prec = scale.pow(-2)
    weights = torch.cat([-0.5 * prec, loc * prec], -1)  # (K, N, 2D)
    const = -0.5 * (loc.pow(2) * prec).sum(-1) - scale.log().sum(-1)  # (K, N)
    const = const - 0.5 * loc.shape[-1] * _LOG_2PI
    if comp is not None:
        const = const.masked_fill(~comp, -math.inf)  # padding: no density anywhere
    feats = torch.cat([z.pow(2), z], -1)  # (K, M, 2D)
    log_dens = torch.baddbmm(const.unsqueeze(1), feats, weights.transpose(1, 2))  # (K, M, N)
    terms = cond - torch.logsumexp(log_dens, -1)  # (K, M), + log N below
    if rows is None:
        return [float(terms.mean()) + math.log(n)]
    totals = terms.masked_fill(~rows, 0.0).sum(1) / m[:, 0] + n[:, 0].log()
    return totals.tolist()


def _mi_total_from_draws(
    draws: Sequence[SiteDraw], num_samples: int, per_dim_draws: int | None
) -> float:
    """:attr:`MutualInformation.total` of :func:`_mi_from_draws` (same arguments, no
    bootstrap), and nothing else: what ``fit``'s monitor records.

    The draws of z, the float32/float64 choice and the block pass with the own component
    held apart are those of :func:`_mi_from_draws`, so the value is the same to the last
    bit, and so is the use of torch's global RNG (:func:`_mi_total_draws`). What it
    leaves out is what the total does not need: the prior's densities (the marginal KL;
    for a flow prior two passes of its transforms), the per-dimension aggregate, the
    leave-one-out bound and the standard errors.

    Returns
    -------
    float
        The InfoNCE estimate of I_q(x; z), nats.
    """
    return _mi_total(_mi_total_draws(draws, num_samples, per_dim_draws))


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
