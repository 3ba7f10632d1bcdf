"""Univariate marginals of a distribution over ``(D,)``: :func:`marginal_log_prob` (closed
forms) and the exact marginals of elementwise flows.

Re-exported by :mod:`pyrocollapse.diagnostics.densities` (and :func:`marginal_log_prob` by
:mod:`pyrocollapse.diagnostics`); import the names from there.
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as pdt
import torch
import torch.distributions.transforms as tdt
from pyro.distributions.transforms.spline import ConditionedSpline


# --------------------------------------------------------------------------------------
# Per-dimension densities
# --------------------------------------------------------------------------------------
def _factorised(d: dist.Distribution) -> dist.Distribution | None:
    """The univariate base of ``Independent(base, 1)``, else ``None``."""
    if isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1:
        if d.base_dist.event_shape == torch.Size():
            return d.base_dist
    return None


def _marginal(d: dist.Distribution) -> dist.Distribution | None:
    """Univariate marginals of ``d`` as one distribution with batch ``(..., D)``, where
    they are a standard family: factorised distributions and (low-rank) multivariate
    Normals. ``None`` otherwise (mixtures are handled by :func:`marginal_log_prob`)."""
    base = _factorised(d)
    if base is not None:
        return base
    if isinstance(d, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        return dist.Normal(d.loc, d.variance.sqrt())
    return None


def _diag_normal(d: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    base = _factorised(d)
    if isinstance(base, dist.Normal):
        shape = torch.broadcast_shapes(
            base.loc.shape, base.scale.shape, (*d.batch_shape, *d.event_shape)
        )
        return base.loc.expand(shape), base.scale.expand(shape)
    return None


def marginal_log_prob(d: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """log density of each coordinate under the univariate marginals of ``d``.

    Exact for factorised distributions (``Independent`` of univariates), for
    (low-rank) multivariate Normals and for mixtures (``MixtureSameFamily``) of such
    components.

    Parameters
    ----------
    d : Distribution
        Event shape ``(D,)``.
    z : torch.Tensor
        Shape ``sample_shape + batch_shape + (D,)`` (broadcastable).

    Returns
    -------
    torch.Tensor
        Shape ``broadcast(z.shape)`` with the last axis over dimensions (nats).
    """
    if not isinstance(d, dist.Distribution):
        raise TypeError(f"d must be a torch Distribution, got {type(d).__name__}")
    base = _marginal(d)
    if base is not None:
        return base.log_prob(z)
    if isinstance(d, dist.MixtureSameFamily):
        comp = _marginal(d.component_distribution)
        if comp is not None:
            log_w = torch.log_softmax(d.mixture_distribution.logits, -1)  # (..., K)
            lp = comp.log_prob(z.unsqueeze(-2))  # (..., K, D)
            return torch.logsumexp(lp + log_w.unsqueeze(-1), dim=-2)
    raise NotImplementedError(
        f"per-dimension marginals of {type(d).__name__} are not available; they exist for "
        "Independent(univariate), (LowRank)MultivariateNormal and MixtureSameFamily of such "
        "components"
    )


# --------------------------------------------------------------------------------------
# Exact marginals of elementwise flows
# --------------------------------------------------------------------------------------
#: Transforms that map each coordinate on its own (a diagonal Jacobian) whatever their
#: parameters: with event_dim 0 in domain and codomain, their ``log_abs_det_jacobian`` is
#: elementwise. Other transforms (autoregressive, coupling, Planar, Radial, Householder,
#: ...) mix coordinates; an unknown transform is never assumed elementwise.
_ELEMENTWISE_TRANSFORMS: tuple[type, ...] = (
    tdt.AffineTransform,
    tdt.ExpTransform,
    tdt.SigmoidTransform,
    tdt.TanhTransform,
    tdt.SoftplusTransform,
    tdt.PowerTransform,
    pdt.ELUTransform,
    pdt.LeakyReLUTransform,
    pdt.SoftplusTransform,
    pdt.PositivePowerTransform,
    ConditionedSpline,  # pyro's elementwise rational-quadratic Spline and its conditioned form
)


def _elementwise_steps(t: Any) -> list[tuple[str, Any]] | None:
    """``t`` as a chain of steps that keep coordinates apart: ``("map", transform)`` with
    an elementwise log-Jacobian, or ``("perm", permutation)`` (``y = x[..., perm]``).
    ``None`` when some part of ``t`` mixes coordinates or is not known to keep them apart."""
    if isinstance(t, tdt.ComposeTransform):
        steps: list[tuple[str, Any]] = []
        for part in t.parts:
            sub = _elementwise_steps(part)
            if sub is None:
                return None
            steps += sub
        return steps
    if isinstance(t, tdt.IndependentTransform):
        return _elementwise_steps(t.base_transform)
    if isinstance(t, tdt._InverseTransform):
        inner = _elementwise_steps(t._inv)
        if inner is None:
            return None
        return [
            ("perm", torch.argsort(s)) if kind == "perm" else ("map", s.inv)
            for kind, s in reversed(inner)
        ]
    if isinstance(t, pdt.Permute):
        return [("perm", t.permutation)] if t.dim == -1 else None
    if isinstance(t, tdt.AffineTransform):
        if t.event_dim:  # the same map, its log-Jacobian not summed over the event
            t = tdt.AffineTransform(t.loc, t.scale, event_dim=0)
        return [("map", t)]
    if (
        isinstance(t, _ELEMENTWISE_TRANSFORMS)
        and t.domain.event_dim == 0
        and t.codomain.event_dim == 0
        and t.bijective
    ):
        return [("map", t)]
    return None


def _base_marginal_log_prob(base: dist.Distribution, x: torch.Tensor) -> torch.Tensor:
    """Per-coordinate marginal log density of a flow's base distribution."""
    if base.event_shape == torch.Size():
        return base.log_prob(x)  # a batch of univariates made an event by the transforms
    if len(base.event_shape) == 1:
        return _exact_marginal_log_prob(base, x)
    raise NotImplementedError(f"base distribution with event shape {tuple(base.event_shape)}")


def _transformed_marginal_log_prob(d: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """Exact log p(z_d) of a flow whose transforms all keep coordinates apart
    (:func:`_elementwise_steps`) over a base with exact marginals: with x = T^{-1}(z),
    p(z_d) = p_base(x_j) |d x_j / d z_d|, where j is the base coordinate that
    permutations carry to d."""
    if not isinstance(d, torch.distributions.TransformedDistribution) or len(d.event_shape) != 1:
        raise NotImplementedError(f"{type(d).__name__} is not a flow on vectors")
    steps: list[tuple[str, Any]] = []
    for t in d.transforms:
        sub = _elementwise_steps(t)
        if sub is None:
            raise NotImplementedError(
                f"the flow's {type(t).__name__} is not known to act on each coordinate alone"
            )
        steps += sub
    y = z
    log_det = torch.zeros_like(z)  # log |d y_j / d x_j| so far, by current position j
    origin = torch.arange(z.shape[-1], device=z.device)  # position in z of current j
    for kind, t in reversed(steps):
        if kind == "perm":  # y = x[..., perm], so x = y[..., argsort(perm)]
            back = torch.argsort(t.to(z.device))
            y, log_det, origin = y[..., back], log_det[..., back], origin[back]
        else:
            x = t.inv(y)
            log_det = log_det + t.log_abs_det_jacobian(x, y)
            y = x
    lp = _base_marginal_log_prob(d.base_dist, y) - log_det
    # NaN where z_d lies outside the flow's range (a logit of 1.5): zero density there
    lp = lp.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    return lp[..., torch.argsort(origin)]


def _exact_marginal_log_prob(d: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """:func:`marginal_log_prob`, or the exact marginals of an elementwise flow."""
    try:
        return marginal_log_prob(d, z)
    except NotImplementedError:
        return _transformed_marginal_log_prob(d, z)
