"""What one traced site gives the estimators: its log density per data point (masks
applied, Bernoulli likelihoods fused), and for a latent site q(z|x), p(z) and the
guide's draw on each chunk of data (:class:`SiteDraw`, :func:`site_draws`), with masked
rows left out, conditional priors detected and moved to innovation coordinates."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask

from pyrocollapse._distributions import as_vector, strip_mask, take_rows, unwrap
from pyrocollapse.diagnostics._plates import data_plate_name
from pyrocollapse.diagnostics._programs import (
    _check_inputs,
    _chunks,
    _latent_names,
    _Layout,
    _probe,
    _rows,
    _run,
    _setup_device,
)
from pyrocollapse.program_data import ProgramArgs


def _log_prob(fn: dist.Distribution, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)``, fused for factorised Bernoulli likelihoods.

    The decoder of a binary-data VAE is ``Bernoulli(logits).to_event(r)``; its generic
    log_prob (binary cross-entropy against the broadcast data) takes about eight
    elementwise passes over (draws x points x features), the largest cost of importance
    sampling after the decoder itself. ``sum_f x_f l_f - softplus(l_f)`` is the same
    quantity in two passes (one a batched dot product).
    """
    base = fn.base_dist if isinstance(fn, dist.Independent) else None
    if type(base) is dist.Bernoulli and "logits" in base.__dict__:
        r = fn.reinterpreted_batch_ndims
        logits = base.logits
        v = value.to(logits.dtype)
        if v.dim() < r or tuple(v.shape[-r:]) != tuple(logits.shape[-r:]):
            return fn.log_prob(value)
        lf, vf = logits.flatten(-r), v.flatten(-r) if v.dim() > r else v.reshape(1, -1)
        dot = torch.einsum("...i,...i->...", lf, vf)
        return dot - torch.nn.functional.softplus(lf).sum(-1)
    return fn.log_prob(value)


def _site_log_prob(site: dict[str, Any], fn: Any = None, value: Any = None) -> torch.Tensor:
    """log density of a trace site (masks applied, scales not)."""
    fn = site["fn"] if fn is None else fn
    lp = _log_prob(fn, site["value"] if value is None else value)
    if site["mask"] is not None:
        lp = scale_and_mask(lp, mask=site["mask"])
    return lp


def _per_point(
    values: torch.Tensor, site: dict[str, Any], layout: _Layout, *, particles: bool
) -> torch.Tensor:
    """Sum a site's per-element tensor (e.g. its log density, batch-shaped) over every
    dimension except the particle and data dimensions: shape ``(P, B)`` or ``(B,)``."""
    data_dim = -1
    if layout.data_plate is not None:
        frame = next((f for f in site["cond_indep_stack"] if f.name == layout.data_plate), None)
        if frame is None:
            raise ValueError(
                f"site {site['name']!r} lies outside the data plate {layout.data_plate!r}, so "
                "its density cannot be split per observation; this estimator needs every "
                "model site inside the data plate (no global latent variables)"
            )
        data_dim = frame.dim
    full = layout.nesting + (1 if particles else 0)
    if values.dim() > full:
        values = values.sum(tuple(range(values.dim() - full)))
    values = values.reshape((1,) * (full - values.dim()) + tuple(values.shape))
    keep = {full + data_dim}
    if particles:
        keep.add(0)
    drop = tuple(d for d in range(full) if d not in keep)
    return values.sum(drop) if drop else values


def latent_site_names(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    device: str | torch.device | None = None,
) -> list[str]:
    """Latent sites shared by guide and model, in guide order (traced on 2 data points).

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a chunk of the data's arguments, ``model(*args, **kwargs)``.
    data : torch.Tensor, tuple, list, dict or DataLoader
        Shape ``(N, ...)``, or the programs' arguments in any form
        :mod:`pyrocollapse.program_data` accepts; only the first two data points are
        traced.
    device : str, torch.device or None
        Device the two points are moved to (``None``: where the data are).
    """
    x, _ = _check_inputs(data, 1, model, guide)
    dev = _setup_device(model, guide, x, device)
    return _latent_names(*_probe(model, guide, x, dev))


@dataclass
class SiteDraw:
    """q(z|x) and p(z) of one latent site on one chunk of data.

    ``q`` and ``p`` have batch shape ``(B,)`` (``p`` may be broadcastable) and event
    shape ``(D,)``; ``z`` is the guide's draw, shape ``(B, D)``. Rows masked out (by
    ``poutine.mask`` or a masked distribution, e.g. the padded steps of a sequence) are
    left out, so ``B`` counts the rows that take part. A scalar latent per point is one
    dimension (``D = 1``).

    ``conditional``: the prior depends on other latents (``p(z_t | z_{t-1})``,
    ``p(z | z_top)``). ``innovation``: such a prior is a diagonal Normal, and q, p and z
    are given in the prior's standardised coordinates ``u = (z - E_p[z | parents]) /
    sd_p[z | parents]`` at the guide's draws of the parents, in which p is N(0, I): KL is
    unchanged by this change of variables, and activity and mutual information measure
    what x tells about z beyond its parents (a site whose q equals its conditional prior
    reads collapsed).
    """

    q: dist.Distribution
    p: dist.Distribution
    z: torch.Tensor
    conditional: bool = False
    innovation: bool = False


#: ``_site_draw(plate=...)``'s default: find the data plate from the traces.
_FIND = object()


class SiteSkipped(ValueError):
    """A latent site the per-data-point collapse diagnostics do not apply to; the
    message says why (raised by :func:`_site_draw`, listed by :func:`diagnose`)."""


def _row_mask(g: dict[str, Any], q: Any, p: Any, batch: int, device: torch.device) -> Any:
    """Rows of a chunk that take part: the site's mask and those of masked
    distributions, reduced to shape ``(B,)``; ``None`` when every row does."""
    keep = None
    for m in (g["mask"], q, p):
        if isinstance(m, dist.Distribution):
            m = strip_mask(m)[1]
        if m is None:
            continue
        m = torch.as_tensor(m, device=device)
        if m.dim() == 0:
            m = m.expand(batch)
        elif m.shape[-1] != batch:
            m = m.expand(*m.shape[:-1], batch)
        m = m.reshape(-1, batch).all(0) if m.dim() > 1 else m.bool()
        keep = m if keep is None else keep & m
    if keep is None or bool(keep.all()):
        return None
    return keep


def _innovation(q: Any, p: Any, z: torch.Tensor) -> tuple[Any, Any, torch.Tensor] | None:
    """q, p and z in the standardised coordinates of a diagonal-Normal prior, or ``None``
    where p is not one."""
    base = p.base_dist if isinstance(p, dist.Independent) else None
    if not isinstance(base, dist.Normal) or p.reinterpreted_batch_ndims != 1:
        return None
    loc = base.loc.expand(z.shape)
    scale = base.scale.expand(z.shape)
    u = (z - loc) / scale
    qb = q.base_dist if isinstance(q, dist.Independent) else None
    if isinstance(qb, dist.Normal) and q.reinterpreted_batch_ndims == 1:
        qu = dist.Normal((qb.loc - loc) / scale, qb.scale / scale).to_event(1)
    else:
        shift = dist.transforms.AffineTransform(-loc / scale, 1.0 / scale, event_dim=1)
        qu = dist.TransformedDistribution(q, [shift])
    pu = dist.Normal(torch.zeros_like(u), torch.ones_like(u)).to_event(1)
    return qu, pu, u


def _site_draw(
    model_tr: Any,
    guide_tr: Any,
    site: str,
    batch: int,
    *,
    flags: bool = True,
    plate: Any = _FIND,
) -> SiteDraw:
    """The :class:`SiteDraw` of ``site`` on one traced chunk of ``batch`` points (the
    reason raised where the diagnostics do not apply). ``plate``: the chunk's data plate
    (:func:`~pyrocollapse.diagnostics.sites.data_plate_name`, which a caller drawing
    several sites from one chunk finds once), found here by default. ``flags=False`` leaves
    :attr:`SiteDraw.conditional` ``False`` where p is not a diagonal Normal instead of
    scoring a draw under p at every point to find it (a flow prior's two passes of its
    transforms): only a diagonal-Normal conditional prior changes q, p and z (to
    innovation coordinates), so the estimates are the same either way."""
    if site not in guide_tr.nodes or site not in model_tr.nodes:
        names = _latent_names(model_tr, guide_tr)
        raise ValueError(
            f"latent site {site!r} is not a sample site of both guide and model; "
            f"latent sites found: {', '.join(map(repr, names)) or 'none'}"
        )
    g, m = guide_tr.nodes[site], model_tr.nodes[site]
    q, p, z = g["fn"], m["fn"], g["value"]
    aux = guide_tr.nodes.get(f"{site}_unconstrained")
    if isinstance(unwrap(q), dist.Delta) and aux is not None and aux["infer"].get("is_auxiliary"):
        # AutoNormal: the Delta carries a draw of the auxiliary site pushed to the
        # support; q(z | x) is that auxiliary distribution pushed the same way
        q = dist.TransformedDistribution(
            aux["fn"], [torch.distributions.biject_to(m["fn"].support)]
        )
    if isinstance(unwrap(q), dist.Delta):
        raise SiteSkipped(
            f"latent site {site!r} has a point-mass guide ({type(unwrap(q)).__name__}): q(z|x) "
            "puts all its mass on one value, so KL per dimension, active units and mutual "
            "information, which compare densities, are not defined for it. Diagnose a guide "
            "with a density (e.g. Normal), or read the point estimates themselves"
        )
    if not q.has_rsample and len(q.event_shape) <= 1 and q.support.is_discrete:
        raise SiteSkipped(
            f"latent site {site!r} is discrete ({type(unwrap(q)).__name__}); per-dimension "
            "estimators apply to continuous latents. diagnose() reports a discrete site with "
            "its exact KL and mutual information"
        )
    if plate is _FIND:
        plate = data_plate_name(model_tr, guide_tr)
    if plate is not None and not any(f.name == plate for f in g["cond_indep_stack"]):
        raise SiteSkipped(
            f"latent site {site!r} lies outside the data plate {plate!r} (a global latent): "
            "per-data-point collapse does not apply to it; diagnose() reports its KL(q || p) "
            "and posterior contraction 1 - Var_q/Var_p instead"
        )
    keep = _row_mask(g, q, p, batch, z.device)
    q, p = strip_mask(q)[0], strip_mask(p)[0]
    if len(q.event_shape) == 0 and tuple(q.batch_shape) == (batch,):
        q, p, z = as_vector(q), as_vector(p), z.unsqueeze(-1)
    if len(q.event_shape) != 1 or tuple(q.batch_shape) != (batch,):
        raise SiteSkipped(
            f"latent site {site!r} must have batch shape (N,) from one data plate over dim -1 "
            f"and event shape (latent_dim,); on a chunk of N={batch} points it has batch "
            f"shape {tuple(q.batch_shape)} and event shape {tuple(q.event_shape)}. Try one of "
            "the following fixes:\n"
            "- declare the latent dimensions as an event: .to_event(1) on the site's "
            "distribution\n"
            "- sample the site inside pyro.plate('data', x.shape[0]), sized by the chunk, not "
            "by a fixed number of points (diagnostics run on chunks of batch_size points)"
        )
    if keep is not None:
        idx = keep.nonzero().squeeze(-1)
        try:
            q, z = take_rows(q, idx), z[idx]
            if len(p.batch_shape) and p.batch_shape[0] == batch:
                p = take_rows(p, idx)
        except NotImplementedError as e:
            raise SiteSkipped(
                f"latent site {site!r} is masked, but the masked rows of its "
                f"{type(q).__name__} guide cannot be left out: {e}"
            ) from None
    normal_prior = (
        isinstance(p, dist.Independent)
        and isinstance(p.base_dist, dist.Normal)
        and p.reinterpreted_batch_ndims == 1
    )  # the priors _innovation moves to
    conditional = _varies_over_points(p, z) if flags or normal_prior else False
    innovation = False
    if conditional:
        moved = _innovation(q, p, z)
        if moved is not None:
            q, p, z = moved
            innovation = True
    return SiteDraw(q, p, z, conditional, innovation)


def site_draws(
    model: Callable,
    guide: Callable,
    data: Any,
    site: str,
    batch_size: int = 256,
    *,
    device: str | torch.device | None = None,
) -> Iterator[SiteDraw]:
    """Yield :class:`SiteDraw` for ``site`` over consecutive chunks of ``data`` (any form
    :mod:`pyrocollapse.program_data` accepts)."""
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    device = _setup_device(model, guide, x, device)
    seen = False
    last: tuple[Any, Any] | None = None
    for xb in _chunks(x, batch_size, device):
        with torch.no_grad():
            model_tr, guide_tr = _run(model, guide, xb)
        last = (model_tr, guide_tr)
        if site not in guide_tr.nodes and site not in model_tr.nodes:
            continue  # a site of some chunks only (a later time step of short sequences)
        seen = True
        d = _site_draw(model_tr, guide_tr, site, _chunk_rows(model_tr, xb))
        if d.z.shape[0]:  # a chunk whose rows are all masked at this site has none
            yield d
    if not seen and last is not None:
        _site_draw(*last, site, 0)  # raises the explanatory error


def _chunk_rows(model_tr: Any, xb: ProgramArgs) -> int:
    """Rows of the data plate as traced (a subsampling plate traces fewer than the
    chunk's rows), else the chunk's rows."""
    from pyrocollapse.elbo import data_plate_frame

    frame = data_plate_frame(model_tr)
    return frame[1] if frame is not None else _rows(xb)


def _shared_over_points(p: dist.Distribution, batch: int) -> bool:
    """Whether ``p``, batch ``(B,)`` and event ``(D,)``, is a diagonal Normal whose
    parameters are one row broadcast over the ``batch`` points (a prior expanded into the
    data plate, e.g. N(0, I)), so that it cannot differ between points; found from the
    parameters' layout (no batch dimension, or a stride of 0 along it), which
    :func:`_varies_over_points` otherwise finds by scoring a draw at every point.
    ``False`` where the layout does not tell."""
    if not isinstance(p, dist.Independent) or p.reinterpreted_batch_ndims != 1:
        return False
    base = p.base_dist
    if type(base) is not dist.Normal or base.loc.dim() > 2 or base.scale.dim() > 2:
        return False
    for t in (base.loc, base.scale):
        if t.dim() == 2 and t.shape[0] == batch and batch > 1 and t.stride(0) != 0:
            return False
    return True


def _varies_over_points(p: dist.Distribution, z: torch.Tensor) -> bool:
    """Whether p(z) differs between the points of a chunk (a conditional prior)."""
    if z.shape[0] < 2:
        return False
    if _shared_over_points(p, z.shape[0]):
        return False
    lp = p.log_prob(z[:1].expand_as(z))
    if lp.dim() == 0:
        return False
    return not bool(torch.allclose(lp, lp.reshape(-1)[:1].expand_as(lp), rtol=1e-5, atol=1e-6))
