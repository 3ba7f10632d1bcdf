"""Per-dimension densities: univariate marginals of q(z|x) and p(z)
(:func:`marginal_log_prob`; exact marginals of elementwise flows and an importance-sampling
estimate for priors without closed-form marginals, :class:`_PriorMarginals`), the joint
KL per point, and :func:`posterior_densities` for the overlay plot.

The marginals live in :mod:`~pyrocollapse.diagnostics._marginals` and the prior
marginals in :mod:`~pyrocollapse.diagnostics._prior_marginals`; this module re-exports
them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics._constants import _DENSITY_GRID, _DENSITY_POINTS

# The univariate marginals and the prior marginals live in their own modules; the names
# are imported from this one, as before.
from pyrocollapse.diagnostics._marginals import _diag_normal as _diag_normal
from pyrocollapse.diagnostics._marginals import _elementwise_steps as _elementwise_steps
from pyrocollapse.diagnostics._marginals import _factorised as _factorised
from pyrocollapse.diagnostics._marginals import _marginal as _marginal
from pyrocollapse.diagnostics._marginals import marginal_log_prob as marginal_log_prob
from pyrocollapse.diagnostics._prior_marginals import _joint_kl as _joint_kl
from pyrocollapse.diagnostics._prior_marginals import _PriorMarginals as _PriorMarginals
from pyrocollapse.diagnostics._prior_marginals import prior_marginals_of as prior_marginals_of
from pyrocollapse.diagnostics._programs import _check_inputs, _numpy
from pyrocollapse.diagnostics._site_draws import SiteDraw, site_draws


# --------------------------------------------------------------------------------------
# Per-point densities for the overlay plot
# --------------------------------------------------------------------------------------
@dataclass
class PosteriorDensities:
    """q(z_d | x) of a few observations and p(z_d), on a grid per dimension.

    Attributes
    ----------
    grid : numpy.ndarray
        Shape ``(D, G)``: z values per dimension.
    prior : numpy.ndarray
        Shape ``(D, G)``: the prior's marginal density (for a conditional prior, its
        average over the chunk's points at the guide's draws of the parents).
    posterior : numpy.ndarray
        Shape ``(E, D, G)``: q(z_d | x_e) for E observations.
    """

    grid: np.ndarray
    prior: np.ndarray
    posterior: np.ndarray


def _densities_from_draw(
    d: SiteDraw, num_points: int, grid_size: int, prior_marginals: _PriorMarginals | None = None
) -> PosteriorDensities | None:
    qm = _marginal(d.q)
    if qm is None:
        return None
    if prior_marginals is None:
        try:
            prior_marginals = _PriorMarginals([d], "")
        except NotImplementedError:
            return None
    e = min(num_points, d.z.shape[0])
    qs = qm.sample((256,))[:, :e].reshape(-1, d.z.shape[-1])
    ps = d.p.sample((256,))
    ps = (ps[:, :e] if ps.dim() == 3 else ps).reshape(-1, d.z.shape[-1])
    both = torch.cat([qs, ps]).double()
    lo = torch.quantile(both, 0.001, dim=0)
    hi = torch.quantile(both, 0.999, dim=0)
    pad = 0.1 * (hi - lo) + 1e-6
    t = torch.linspace(0, 1, grid_size, dtype=torch.float64, device=both.device)
    grid = (lo - pad)[:, None] + (hi - lo + 2 * pad)[:, None] * t  # (D, G)
    zg = grid.T.unsqueeze(1).to(d.z.dtype)  # (G, 1, D)
    prior = prior_marginals(d.p, zg).exp().mean(1)  # (G, D)
    post = qm.log_prob(zg)[:, :e].exp()  # (G, E, D)
    return PosteriorDensities(_numpy(grid), _numpy(prior.T), _numpy(post.permute(1, 2, 0)))


def _densities(draws: Sequence[SiteDraw], site: str) -> PosteriorDensities | None:
    try:
        prior_marginals = prior_marginals_of(draws, site)
    except NotImplementedError:
        return None
    return _densities_from_draw(draws[0], _DENSITY_POINTS, _DENSITY_GRID, prior_marginals)


def posterior_densities(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    num_points: int = 5,
    grid_size: int = 121,
    device: str | torch.device | None = None,
) -> PosteriorDensities:
    """The marginals q(z_d | x) of the first ``num_points`` observations and p(z_d) on a
    grid per dimension covering both (for the density-overlay plot: a collapsed
    dimension shows every q(z_d | x) on top of p(z_d)).

    Returns
    -------
    PosteriorDensities
        Densities in 1 / (units of z).

    References
    ----------
    Lucas, Tucker, Grosse, Norouzi (2019). Don't Blame the ELBO! A Linear VAE Perspective
    on Posterior Collapse. NeurIPS (collapse as q(z_d|x) = p(z_d)).
    """
    num_points = check_int("num_points", num_points, minimum=1)
    grid_size = check_int("grid_size", grid_size, minimum=2)
    if isinstance(data, torch.Tensor):
        data = data[:num_points]  # only these points are traced (or checked)
    x, _ = _check_inputs(data, 1, model, guide)
    if x.n > num_points:
        x = x.take(torch.arange(num_points))
    draw = next(site_draws(model, guide, x, site, num_points, device=device))
    with torch.no_grad():
        out = _densities_from_draw(draw, num_points, grid_size)
    if out is None:
        raise NotImplementedError(
            f"site {site!r}: density overlays need univariate marginals of q and p; got "
            f"{type(draw.q).__name__} and {type(draw.p).__name__}"
        )
    return out
