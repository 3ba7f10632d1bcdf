"""Which latent sites a program has, and the diagnostics of the ones that are not
continuous per-data-point latents: discrete local sites and global sites.

* A **local** latent lies in the data plate (the outermost plate around the observed
  sites): one value per data point. Continuous ones get the per-dimension estimators of
  this package; **discrete** ones (the M2 VAE's class ``y``) get their exact KL and the
  mutual information of the categorical aggregate posterior.
* A **global** latent lies outside the data plate (the eight-schools ``mu`` and
  ``tau``, an autoguide's regression weights, LDA's topics). Per-data-point collapse does
  not apply to it; what does is whether the data inform it at all: its KL(q || p) and
  its posterior contraction ``1 - Var_q / Var_p`` per element (Betancourt 2018), near 0
  when the posterior is the prior.
* Other sites (point masses, shapes the estimators cannot read) are listed with the
  reason, never an exception.

References
----------
Betancourt (2018). A Conceptual Introduction to Hamiltonian Monte Carlo (posterior
contraction and z-scores). arXiv:1701.02434.
Kingma, Rezende, Mohamed, Welling (2014). Semi-Supervised Learning with Deep Generative
Models. NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine

from pyrocollapse._distributions import strip_mask
from pyrocollapse._records import CONTRACTION_THRESHOLD as CONTRACTION_THRESHOLD
from pyrocollapse._records import GlobalSite
from pyrocollapse.diagnostics._plates import data_plate_name
from pyrocollapse.diagnostics._programs import _numpy, _run, eval_mode
from pyrocollapse.diagnostics._site_draws import _row_mask

__all__ = ["DiscreteSite", "GlobalSite", "data_plate_name", "site_kinds"]


def site_kinds(model_tr: Any, guide_tr: Any) -> dict[str, str]:
    """Per latent site (sampled by guide and model, guide order): ``"local"``,
    ``"discrete"`` or ``"global"``."""
    plate = data_plate_name(model_tr, guide_tr)
    out: dict[str, str] = {}
    for name, site in guide_tr.nodes.items():
        if site["type"] != "sample" or name not in model_tr.nodes:
            continue
        if site["infer"].get("is_auxiliary"):
            continue
        inside = plate is None or any(f.name == plate for f in site["cond_indep_stack"])
        q = strip_mask(site["fn"])[0]
        if not inside:
            out[name] = "global"
        elif not q.has_rsample and q.support.is_discrete:
            out[name] = "discrete"
        else:
            out[name] = "local"
    return out


# --------------------------------------------------------------------------------------
# Discrete local sites
# --------------------------------------------------------------------------------------
@dataclass
class DiscreteDraw:
    """log q(y = k | x) and log p(y = k) of one chunk over the site's support, shapes
    ``(B, K)`` and ``(B or 1, K)`` (masked rows left out)."""

    log_q: torch.Tensor
    log_p: torch.Tensor


def discrete_draw(model_tr: Any, guide_tr: Any, site: str, batch: int) -> DiscreteDraw:
    """The support probabilities of a discrete site on one chunk.

    Raises
    ------
    ValueError
        For a site without a finite support Pyro can enumerate (a Poisson count).
    """
    g, m = guide_tr.nodes[site], model_tr.nodes[site]
    keep = _row_mask(g, g["fn"], m["fn"], batch, g["value"].device)
    q, p = strip_mask(g["fn"])[0], strip_mask(m["fn"])[0]
    if tuple(q.batch_shape) != (batch,):
        raise ValueError(
            f"discrete site {site!r} has batch shape {tuple(q.batch_shape)} on a chunk of "
            f"{batch} points; one value per data point is needed"
        )
    try:
        support = q.enumerate_support(expand=False)
    except NotImplementedError:
        raise ValueError(
            f"discrete site {site!r} ({type(q).__name__}) has no finite support to enumerate, "
            "so its exact KL and mutual information cannot be summed"
        ) from None
    log_q = q.log_prob(support).reshape(support.shape[0], -1).T  # (B, K)
    log_p = p.log_prob(support).reshape(support.shape[0], -1).T  # (B or 1, K)
    if keep is not None:
        log_q = log_q[keep]
        log_p = log_p[keep] if log_p.shape[0] == batch else log_p
    return DiscreteDraw(log_q, log_p)


@dataclass
class DiscreteSite:
    """Exact diagnostics of a discrete local site.

    Attributes
    ----------
    kl : float
        E_x KL(q(y|x) || p(y)), nats (exact sum over the support).
    kl_per_point : numpy.ndarray
        Shape ``(N,)``.
    mi : float
        I_q(x; y) = H(q(y)) - E_x H(q(y|x)) with the aggregate q(y) = mean_x q(y|x):
        exact for the N points (at most log K and log N).
    aggregate_kl : float
        KL(q(y) || p(y)) (for an unconditional prior; ``kl = mi + aggregate_kl``).
    spread : float
        sum_k Var_x q(y = k | x): how much the class probabilities move with x (0 when
        q(y|x) is the same for every point).
    """

    kl: float
    kl_per_point: np.ndarray
    mi: float
    aggregate_kl: float
    spread: float


def discrete_summary(draws: Sequence[DiscreteDraw]) -> DiscreteSite:
    """:class:`DiscreteSite` from the draws of every chunk."""
    log_q = torch.cat([d.log_q for d in draws]).double()
    log_p = torch.cat([d.log_p.expand(d.log_q.shape) for d in draws]).double()
    probs = log_q.exp()
    kl = torch.where(probs > 0, probs * (log_q - log_p), 0.0).sum(1)
    mean = probs.mean(0)
    log_mean = mean.log()
    entropy_each = -torch.where(probs > 0, probs * log_q, 0.0).sum(1)
    entropy_mean = -torch.where(mean > 0, mean * log_mean, 0.0).sum()
    mi = float(entropy_mean - entropy_each.mean())
    lp = log_p.mean(0)  # the prior where it does not vary (else a summary only)
    agg_kl = float(torch.where(mean > 0, mean * (log_mean - lp), 0.0).sum())
    spread = float(probs.var(0, unbiased=False).sum()) if probs.shape[0] > 1 else 0.0
    return DiscreteSite(float(kl.mean()), _numpy(kl), max(mi, 0.0), agg_kl, spread)


# --------------------------------------------------------------------------------------
# Global sites (the record, GlobalSite, lives in pyrocollapse._records)
# --------------------------------------------------------------------------------------
def global_summaries(
    model: Callable,
    guide: Callable,
    xb: Any,
    sites: Sequence[str],
    num_draws: int = 200,
) -> dict[str, GlobalSite]:
    """:class:`GlobalSite` of each of ``sites`` from ``num_draws`` runs of the guide (with
    the model replayed) and of the model alone, on the chunk ``xb``.

    One run at a time: programs need not broadcast over a sample dimension.
    """
    if not sites:
        return {}
    post: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    prior: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    kls: dict[str, list[float]] = {s: [] for s in sites}
    with torch.no_grad():
        for _ in range(num_draws):
            model_tr, guide_tr = _run(model, guide, xb)
            for s in sites:
                g, m = guide_tr.nodes[s], model_tr.nodes[s]
                post[s].append(_unconstrained(m, g["value"]))
                kls[s].append(float(_log_density(g) - _log_density(m)))
            with poutine.block(), eval_mode(model, guide):
                alone = poutine.trace(model).get_trace(*xb.args, **xb.kwargs)
            for s in sites:
                prior[s].append(_unconstrained(alone.nodes[s], alone.nodes[s]["value"]))
    out = {}
    for s in sites:
        q, p = torch.stack(post[s]), torch.stack(prior[s])
        var_q, var_p = q.var(0), p.var(0)
        contraction = torch.where(var_p > 0, 1.0 - var_q / var_p, torch.nan)
        k = torch.tensor(kls[s], dtype=torch.float64)
        out[s] = GlobalSite(
            s,
            tuple(post_shape(guide_tr, s)),
            float(k.mean()),
            float(k.std() / math.sqrt(len(k))) if len(k) > 1 else math.nan,
            _numpy(contraction),
            _numpy(var_q.sqrt()),
            _numpy(var_p.sqrt()),
            num_draws,
        )
    return out


def _unconstrained(model_site: dict[str, Any], value: torch.Tensor) -> torch.Tensor:
    """``value`` in the unconstrained coordinates of the model site's support (log of a
    scale, logit of a probability), flattened, float64: variances there are finite for
    heavy-tailed priors such as a half-Cauchy."""
    from torch.distributions import biject_to

    v = value.double()
    try:
        v = biject_to(model_site["fn"].support).inv(v)
    except NotImplementedError:
        pass
    return v.reshape(-1)


def post_shape(trace: Any, site: str) -> torch.Size:
    """Shape of one draw of ``site`` in ``trace``."""
    return trace.nodes[site]["value"].shape


def _log_density(site: dict[str, Any]) -> torch.Tensor:
    """Summed log density of a trace site (masks applied)."""
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = torch.where(torch.as_tensor(site["mask"]).expand(lp.shape), lp, 0.0)
    return lp.sum()
