"""The aggregate posterior q(z) = (1/N) sum_j q(z | x_j) of one latent site as a
density (:class:`_AggregatePosterior`): log q(z), with bootstrap weights and the own
component held apart, and the univariate marginals log q(z_d), evaluated in blocks so
that memory stays O(block) whatever N."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import overload

import pyro.distributions as dist
import torch

from pyrocollapse.diagnostics._constants import _BLOCK, _DIM_BLOCK, _F32_TOLERANCE, _LOG_2PI
from pyrocollapse.diagnostics.densities import _diag_normal, _marginal


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
