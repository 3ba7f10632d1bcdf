"""The InfoNCE total of :func:`~pyrocollapse.diagnostics.mutual_information` and nothing
else, what ``fit``'s monitor records: the same draws and value as the full estimator
(:func:`_mi_total`, :func:`_mi_total_from_draws`), and for diagonal-Normal sites one
batched float64 pass over many sites (:func:`_mi_totals`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from torch.nn.utils.rnn import pad_sequence

from pyrocollapse.diagnostics._aggregate_posterior import _AggregatePosterior
from pyrocollapse.diagnostics._constants import _LOG_2PI
from pyrocollapse.diagnostics._site_draws import SiteDraw


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
