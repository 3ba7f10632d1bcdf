"""Posterior-collapse diagnostics for any Pyro model/guide pair.

Everything here works from Pyro traces: the guide is traced on a chunk of data and the
model is replayed on the guide's draws, so the estimators apply to hand-written models as
well as to :mod:`pyrocollapse.models`, and to several latent sites (hierarchical models).

What the programs must look like
--------------------------------
* ``model(x)`` and ``guide(x)`` take one chunk ``x`` of shape ``(B, ...)`` of the data,
  whose dim 0 indexes observations.
* A latent site to diagnose lies in one data plate over dim -1 (batch shape ``(B,)``) and
  has event shape ``(latent_dim,)`` (e.g. ``dist.Normal(loc, scale).to_event(1)``).
* Estimators that need the model's density per observation (:func:`iw_log_likelihood`,
  :func:`psis_khat`, :func:`decoder_sensitivity`, :func:`posterior_mean_space`) need every
  model site inside that data plate (no global latent variables), and programs that
  broadcast over one extra batch dimension on the left: they run all draws of a chunk at
  once in a vectorised particle plate, as Pyro's ``vectorize_particles=True`` does.

Hierarchical models
-------------------
Every metric is computed per latent site. For a site whose prior depends on another
latent (``z ~ p(z | z_top)``) the "prior" of that site is the conditional prior at the
guide's draw of its parents, so its KL is the term the ELBO subtracts,
``E_q[KL(q(z|x, .) || p(z | z_top))]``, and the identity ``KL = I_q(x; z) + marginal KL``
holds with that conditional prior. Likewise, a guide site that depends on another latent
draw is represented by that conditional at one draw. :func:`diagnose` flags such sites
(``SiteReport.conditional_prior``).

Chunking, memory and speed
--------------------------
All estimators run without gradients (except the ``"score"`` decoder sensitivity, which
differentiates with respect to z only) in chunks of ``batch_size`` points. The aggregate
posterior q(z) = (1/N) sum_n q(z | x_n) is evaluated in blocks of at most ``2**18`` pairs,
so memory is O(N * latent_dim) whatever N while the cost stays O(N^2 * num_samples) in
matrix products. Vectorised model runs hold at most ``2**14`` (draws x points) rows.

Devices and reproducibility
---------------------------
Every estimator takes ``device``: ``None`` (default) runs where the data are; a device
(``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`) moves each chunk of
``batch_size`` points there just before it is traced, so the data set itself may stay in
host memory. The model and guide are *not* moved: put their parameters on the device
first (``vae.to("cuda")``). A device this machine lacks raises ``ValueError`` before any
work, and so does a model (a ``PyroModule`` whose bound ``model`` / ``guide`` are passed)
whose parameters sit on another device than the one the chunks go to. Results always
come back on the host, as NumPy arrays, whatever the device. Estimators draw from
torch's global RNG (seed it with ``pyro.set_rng_seed``); :func:`diagnose` seeds it
itself (CPU and, when it runs there, the CUDA device) and restores the previous state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse._validation import (
    check_choice,
    check_data,
    check_device,
    check_float,
    check_int,
    module_device,
)

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "ActiveUnits",
    "DatapointRhat",
    "DecoderSensitivity",
    "ImportanceWeightedLogLikelihood",
    "KLPerDimension",
    "LatentTraversal",
    "MutualInformation",
    "PSISDiagnostic",
    "PosteriorDensities",
    "PosteriorMeanSpace",
    "SiteDraw",
    "active_units",
    "aggregate_posterior_kl",
    "datapoint_rhat",
    "decoder_sensitivity",
    "diagnose",
    "iw_log_likelihood",
    "kl_per_dimension",
    "latent_site_names",
    "latent_traversal",
    "marginal_log_prob",
    "mutual_information",
    "posterior_densities",
    "posterior_mean_space",
    "psis_khat",
    "reconstruction_means",
    "site_draws",
]

#: Every estimator :func:`diagnose` can run.
ESTIMATORS = ("kl", "au", "mi", "rhat", "sensitivity", "psis", "iw")
#: The ones it runs by default: those that cost about one pass of the guide and model.
DEFAULT_ESTIMATORS = ("kl", "au", "mi", "rhat", "sensitivity")

_PARTICLES = "_pyrocollapse_particles"
#: Entries per block of the pairwise (draw x component) log-density matrices: small
#: enough to stay in cache (measured: 2**17-2**18 runs about twice as fast as 2**21).
_BLOCK = 2**18
#: Entries per block of the per-dimension (dimension x draw x component) pass.
_DIM_BLOCK = 2**17
#: (draws x points) rows per vectorised model run.
_PARTICLE_ROWS = 2**14
#: What a report keeps for its figures: the posterior-mean space of this many points, and
#: the densities of this many observations on grids of this many points.
_MEAN_SPACE_POINTS = 500
_DENSITY_POINTS, _DENSITY_GRID = 5, 121
#: Largest error (nats) tolerated from the float32 expansion of the Gaussian quadratic form.
_F32_TOLERANCE = 1e-3
_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------
# Inputs, devices, seeds
# --------------------------------------------------------------------------------------
def _check_inputs(data: object, batch_size: object) -> tuple[torch.Tensor, int]:
    if isinstance(data, torch.Tensor) and not data.is_floating_point():
        x = check_data("data", data, floating=False)
    else:
        x = check_data("data", data)
    return x, check_int("batch_size", batch_size, minimum=1)


def _check_device(device: object) -> torch.device | None:
    """``device`` checked with :func:`pyrocollapse._validation.check_device`."""
    return check_device("device", device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, ``"cuda"`` meaning the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _setup_device(
    model: Callable, guide: Callable, x: torch.Tensor, device: object
) -> torch.device | None:
    """Check ``device`` and that the programs' modules live where the chunks will go.

    Returns the checked device (``None``: the data's device). Only programs that are
    modules or bound methods of modules (``vae.model``) can be checked; for plain
    functions a mismatch surfaces as torch's own error.
    """
    dev = _check_device(device)
    target = x.device if dev is None else dev
    for label, fn in (("model", model), ("guide", guide)):
        where = module_device(fn)
        if where is not None and not _same_device(where, target):
            source = "the data's device (device=None)" if dev is None else f"device={str(dev)!r}"
            raise ValueError(
                f"the {label}'s parameters are on {where} but the data chunks go to {target}, "
                f"{source}. Try one of the following fixes:\n"
                f"- move the model first: vae.to({str(target)!r})\n"
                f"- or run where the model is: pass device={str(where)!r}"
            )
    return dev


def _effective_device(x: torch.Tensor, device: torch.device | None) -> torch.device:
    return x.device if device is None else device


def _chunks(
    x: torch.Tensor, batch_size: int, device: torch.device | None
) -> Iterator[torch.Tensor]:
    for xb in x.split(batch_size):
        yield xb if device is None else xb.to(device)


class _seeded:
    """Context manager: seed torch's RNG for reproducible diagnostics, then restore it.

    ``torch.manual_seed`` seeds the CPU generator and every CUDA generator; the state of
    the CPU generator and, when ``device`` is a CUDA device, of that device's generator
    is restored on exit.
    """

    def __init__(self, seed: int | None, device: torch.device | None = None) -> None:
        self.seed = None if seed is None else check_int("seed", seed, minimum=0)
        self.cuda = device if device is not None and device.type == "cuda" else None

    def __enter__(self) -> None:
        self.state = torch.get_rng_state()
        self.cuda_state = None if self.cuda is None else torch.cuda.get_rng_state(self.cuda)
        if self.seed is not None:
            torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.cuda)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


# --------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """How the programs use plates.

    ``nesting``: batch dimensions the programs use (the particle plate goes left of them).
    ``data_plate``: name of the plate over observations (dim -1 of the latent sites), or
    ``None`` where the latent sites sit in no plate (dim -1 is then taken as the data dim).
    """

    nesting: int
    data_plate: str | None


def _vectorised(fn: Callable, particles: int | None, nesting: int) -> Callable:
    if particles is None:
        return fn

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(_PARTICLES, particles, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


def _run(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    particles: int | None = None,
    nesting: int = 1,
    guide_trace: Any = None,
    values: dict[str, torch.Tensor] | None = None,
) -> tuple[Any, Any]:
    """Trace the guide on ``x`` (or reuse ``guide_trace``) and the model replayed on it.

    ``particles`` wraps the programs in a vectorised plate of that size (only the model
    when ``guide_trace`` is given); ``values`` replaces the guide's values of some sites
    before the replay. Gradients follow the caller's grad mode.
    """
    with poutine.block():
        if guide_trace is None:
            guide_trace = poutine.trace(_vectorised(guide, particles, nesting)).get_trace(x)
        replay = guide_trace
        if values:
            replay = guide_trace.copy()
            for name, value in values.items():
                replay.nodes[name] = {**replay.nodes[name], "value": value}
        model_trace = poutine.trace(
            poutine.replay(_vectorised(model, particles, nesting), trace=replay)
        ).get_trace(x)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _sample_sites(trace: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            yield name, site


def _latent_names(model_tr: Any, guide_tr: Any) -> list[str]:
    return [
        name
        for name, site in _sample_sites(guide_tr)
        if not site["is_observed"]
        and name in model_tr.nodes
        and not site["infer"].get("is_auxiliary")
    ]


def _observed_names(model_tr: Any) -> list[str]:
    return [name for name, site in _sample_sites(model_tr) if site["is_observed"]]


#: Exceptions of a failed probe run that get the probe's context added to their message.
_PROBE_ERRORS = (ValueError, TypeError, RuntimeError, IndexError)


def _expected_shape(model: Callable) -> str:
    """``" (the model takes (N, 64))"`` when the program belongs to a ready model."""
    shape = getattr(getattr(model, "__self__", None), "event_shape", None)
    if isinstance(shape, tuple) and all(isinstance(v, int) for v in shape) and shape:
        return f"; the model takes (N, {', '.join(map(str, shape))})"
    return ""


def _probe(
    model: Callable, guide: Callable, x: torch.Tensor, device: torch.device | None = None
) -> tuple[Any, Any]:
    """Trace guide and model on the first two points of ``x`` (moved to ``device``).

    The probe finds the latent sites and the plates; when it fails, the error keeps its
    type and message and says what was traced and how to fix the usual causes (data of
    the wrong shape, a plate sized by a fixed number instead of ``x.shape[0]``).
    """
    probe = x[:2] if device is None else x[:2].to(device)
    try:
        with torch.no_grad():
            return _run(model, guide, probe)
    except _PROBE_ERRORS as e:
        if type(e) not in _PROBE_ERRORS:
            raise
        raise type(e)(
            f"{e}\n\nWhile tracing the model and guide on data[:2] (shape "
            f"{tuple(probe.shape)}; data has shape {tuple(x.shape)}{_expected_shape(model)}), "
            "which the diagnostics do to find the latent sites and plates before running on "
            "chunks of batch_size points. Try one of the following fixes:\n"
            "- pass data with one observation per row of dim 0, with the trailing shape the "
            "model takes (e.g. data.reshape(len(data), -1) for a model of flat vectors)\n"
            "- size the data plate from the batch, pyro.plate('data', x.shape[0]), not from a "
            "fixed number of points: the programs must run on any number of rows"
        ) from e


def _layout(
    model: Callable, guide: Callable, x: torch.Tensor, traces: tuple[Any, Any] | None = None
) -> _Layout:
    """Probe the programs on two points (or read ``traces`` of such a probe): plate
    nesting and the data plate."""
    model_tr, guide_tr = _probe(model, guide, x) if traces is None else traces
    nesting = 1
    for tr in (model_tr, guide_tr):
        for _, site in _sample_sites(tr):
            nesting = max(nesting, len(site["fn"].batch_shape))
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
    data_plate = None
    for name in _latent_names(model_tr, guide_tr):
        frames = [f for f in guide_tr.nodes[name]["cond_indep_stack"] if f.vectorized]
        data_plate = next((f.name for f in frames if f.dim == -1), None)
        if data_plate is not None:
            break
    return _Layout(nesting, data_plate)


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
    data: torch.Tensor,
    *,
    device: str | torch.device | None = None,
) -> list[str]:
    """Latent sites shared by guide and model, in guide order (traced on 2 data points).

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a chunk ``x``.
    data : torch.Tensor
        Shape ``(N, ...)``; only ``data[:2]`` is traced.
    device : str, torch.device or None
        Device the two points are moved to (``None``: where the data are).
    """
    x, _ = _check_inputs(data, 1)
    dev = _setup_device(model, guide, x, device)
    return _latent_names(*_probe(model, guide, x, dev))


@dataclass
class SiteDraw:
    """q(z|x) and p(z) of one latent site on one chunk of data.

    ``q`` and ``p`` have batch shape ``(B,)`` (``p`` may be broadcastable) and event
    shape ``(D,)``; ``z`` is the guide's draw, shape ``(B, D)``.
    """

    q: dist.Distribution
    p: dist.Distribution
    z: torch.Tensor


def _site_draw(model_tr: Any, guide_tr: Any, site: str, batch: int) -> SiteDraw:
    if site not in guide_tr.nodes or site not in model_tr.nodes:
        names = _latent_names(model_tr, guide_tr)
        raise ValueError(
            f"latent site {site!r} is not a sample site of both guide and model; "
            f"latent sites found: {', '.join(map(repr, names)) or 'none'}"
        )
    g, m = guide_tr.nodes[site], model_tr.nodes[site]
    q, p, z = g["fn"], m["fn"], g["value"]
    if len(q.event_shape) != 1 or tuple(q.batch_shape) != (batch,):
        raise ValueError(
            f"latent site {site!r} must have batch shape (N,) from one data plate over dim -1 "
            f"and event shape (latent_dim,); on a chunk of N={batch} points it has batch "
            f"shape {tuple(q.batch_shape)} and event shape {tuple(q.event_shape)}. Try one of "
            "the following fixes:\n"
            "- declare the latent dimensions as an event: .to_event(1) on the site's "
            "distribution\n"
            "- sample the site inside pyro.plate('data', x.shape[0]), sized by the chunk, not "
            "by a fixed number of points (diagnostics run on chunks of batch_size points)"
        )
    return SiteDraw(q, p, z)


def site_draws(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    site: str,
    batch_size: int = 256,
    *,
    device: str | torch.device | None = None,
) -> Iterator[SiteDraw]:
    """Yield :class:`SiteDraw` for ``site`` over consecutive chunks of ``data``."""
    x, batch_size = _check_inputs(data, batch_size)
    device = _setup_device(model, guide, x, device)
    for xb in _chunks(x, batch_size, device):
        with torch.no_grad():
            model_tr, guide_tr = _run(model, guide, xb)
        yield _site_draw(model_tr, guide_tr, site, len(xb))


@dataclass
class _Sweep:
    """One pass of guide and model over the data: draws of the diagnosed sites and the
    per-point sums of the ELBO's terms (every latent site, one draw of z per point)."""

    draws: dict[str, list[SiteDraw]]
    reconstruction: float
    kl: dict[str, float]
    num_points: int
    conditional_prior: dict[str, bool]


def _sweep(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    sites: Sequence[str],
    batch_size: int,
    device: torch.device | None,
) -> _Sweep:
    draws: dict[str, list[SiteDraw]] = {s: [] for s in sites}
    conditional = dict.fromkeys(sites, False)
    recon, kls = 0.0, {}
    for xb in _chunks(x, batch_size, device):
        with torch.no_grad():
            model_tr, guide_tr = _run(model, guide, xb)
            for s in sites:
                d = _site_draw(model_tr, guide_tr, s, len(xb))
                draws[s].append(d)
                conditional[s] = conditional[s] or _varies_over_points(d.p, d.z)
            for name in _observed_names(model_tr):
                recon += float(_site_log_prob(model_tr.nodes[name]).sum())
            for name in _latent_names(model_tr, guide_tr):
                g = guide_tr.nodes[name]
                kl = _joint_kl(g["fn"], model_tr.nodes[name]["fn"], g["value"], 1)
                if g["mask"] is not None:
                    kl = scale_and_mask(kl, mask=g["mask"])
                kls[name] = kls.get(name, 0.0) + float(kl.sum())
    return _Sweep(draws, recon, kls, int(x.shape[0]), conditional)


def _varies_over_points(p: dist.Distribution, z: torch.Tensor) -> bool:
    """Whether p(z) differs between the points of a chunk (a conditional prior)."""
    if z.shape[0] < 2:
        return False
    lp = p.log_prob(z[:1].expand_as(z))
    if lp.dim() == 0:
        return False
    return not bool(torch.allclose(lp, lp.reshape(-1)[:1].expand_as(lp), rtol=1e-5, atol=1e-6))


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


class _PriorMarginals:
    """log p(z_d) of one site's prior, for every chunk of a sweep.

    Exact where :func:`marginal_log_prob` knows the family. Otherwise (a prior with no
    closed-form marginals, such as a normalising flow) and provided the prior is the same
    at every point, a Gaussian kernel density estimate of each p(z_d) from ``num_draws``
    prior draws with Silverman's bandwidth 0.9 min(sd, IQR / 1.34) M^(-1/5): a
    consistent estimate whose smoothing inflates the marginal's variance by about
    ``h^2`` (a few percent for M = 4096). One defensive kernel, the moment-matched
    Gaussian with weight 1 / (M + 1), keeps the far tails Gaussian instead of decaying
    at the bandwidth's rate beyond the last draw.

    The estimate is tabulated once on a grid of ``_GRID`` points per dimension (spacing
    far below the bandwidth) and interpolated linearly, so evaluating it costs O(1) per
    value; values off the grid are computed exactly.

    References
    ----------
    Silverman (1986). Density Estimation for Statistics and Data Analysis. Chapman & Hall.
    """

    _GRID = 2048

    def __init__(self, draws: Sequence[SiteDraw], site: str, num_draws: int = 4096) -> None:
        first = draws[0]
        try:
            marginal_log_prob(first.p, first.z[:1])
            self.kde = None
            return
        except NotImplementedError:
            pass
        if any(_varies_over_points(d.p, d.z) for d in draws):
            raise NotImplementedError(
                f"site {site!r}: its prior {type(first.p).__name__} has no closed-form "
                "per-dimension marginals and depends on other latents, so p(z_d) cannot be "
                "estimated once for all points"
            )
        dim = first.z.shape[-1]
        per_call = max(1, first.z[..., 0].numel())
        samples = first.p.sample((-(-num_draws // per_call),)).reshape(-1, dim)[:num_draws]
        samples = samples.detach().double().cpu()  # the estimate lives on the host
        m = samples.shape[0]
        sd = samples.std(0)
        quartiles = torch.tensor([0.25, 0.75], dtype=samples.dtype, device=samples.device)
        q = torch.quantile(samples, quartiles, dim=0)
        spread = torch.minimum(sd, (q[1] - q[0]) / 1.34)
        spread = torch.where(spread > 0, spread, sd).clamp_min(1e-6)
        self.kde = (samples.T.contiguous(), 0.9 * spread * m ** (-0.2))  # (D, M), (D,)
        self.wide = dist.Normal(samples.mean(0), sd.clamp_min(1e-6))
        # tabulate on a fine grid per dimension (spacing << bandwidth); interpolate
        h = self.kde[1]
        lo = torch.minimum(samples.min(0).values - 8 * h, samples.mean(0) - 10 * sd)
        hi = torch.maximum(samples.max(0).values + 8 * h, samples.mean(0) + 10 * sd)
        t = torch.linspace(0, 1, self._GRID, dtype=torch.float64, device=samples.device)
        grid = lo[:, None] + (hi - lo)[:, None] * t  # (D, G)
        self.lo, self.step = lo, (hi - lo) / (self._GRID - 1)
        self.table = self._exact(grid.T).T.contiguous()  # (D, G)

    @property
    def estimated(self) -> bool:
        """Whether the marginals are a kernel density estimate."""
        return self.kde is not None

    def _exact(self, flat: torch.Tensor) -> torch.Tensor:
        """The estimate's log density at rows ``flat`` ``(K, D)`` (float64), no table."""
        samples, h = self.kde  # type: ignore[misc]
        rows = max(1, _DIM_BLOCK // samples.numel())
        out = []
        for zi in flat.split(rows):
            u = (zi.T.unsqueeze(-1) - samples.unsqueeze(1)) / h[:, None, None]  # (D, K, M)
            out.append(torch.logsumexp(-0.5 * u.square(), 2).T)
        m = samples.shape[1]
        kde = torch.cat(out) - (math.log(m) + h.log() + 0.5 * _LOG_2PI)
        return torch.logaddexp(
            kde + math.log(m / (m + 1)), self.wide.log_prob(flat) - math.log(m + 1)
        )

    def __call__(self, p: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
        """log p(z_d) for ``z`` of shape ``(..., D)``; same shape (nats)."""
        if self.kde is None:
            return marginal_log_prob(p, z)
        flat = z.reshape(-1, z.shape[-1]).double().cpu()
        pos = (flat - self.lo) / self.step  # (K, D)
        inside = (pos >= 0) & (pos <= self._GRID - 1)
        i0 = pos.floor().clamp(0, self._GRID - 2).long()
        w = (pos - i0).clamp(0, 1)
        offset = torch.arange(flat.shape[1], device=flat.device) * self._GRID
        table = self.table.reshape(-1)
        out = torch.lerp(table[i0 + offset], table[i0 + 1 + offset], w)
        if not bool(inside.all()):
            rows = (~inside).any(1)
            out[rows] = torch.where(inside[rows], out[rows], self._exact(flat[rows]))
        return out.reshape(z.shape).to(device=z.device, dtype=z.dtype)


def _joint_kl(
    q: dist.Distribution, p: dist.Distribution, z: torch.Tensor, num_samples: int
) -> torch.Tensor:
    """KL(q || p) per point, shape ``(B,)``: closed form where available, else the Monte
    Carlo mean of log q - log p over the draw ``z`` (``num_samples == 1``) or fresh draws."""
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        zs = z.unsqueeze(0) if num_samples == 1 else q.sample((num_samples,))
        kl = (q.log_prob(zs) - p.log_prob(zs)).mean(0)
    return kl.expand(q.batch_shape)


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
        ``"monte_carlo_kde_marginal"``: the prior has no closed-form marginals (e.g. a
        normalising flow), so p(z_d) is a kernel density estimate from prior draws.
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
    for d in draws:
        qm, pm = _marginal(d.q), _marginal(d.p)
        if qm is None:
            raise NotImplementedError(
                f"site {site!r}: per-dimension KL needs a guide distribution with univariate "
                f"marginals (Independent of univariates or a multivariate Normal), got "
                f"{type(d.q).__name__}"
            )
        factorised = _factorised(d.q) is not None and _factorised(d.p) is not None
        kl = None
        if pm is not None:
            try:
                kl = kl_divergence(qm, pm)
            except NotImplementedError:
                kl = None
        if kl is None:
            prior_marginals = prior_marginals or _PriorMarginals(draws, site)
            zs = qm.sample((num_samples,))
            kl = (qm.log_prob(zs) - prior_marginals(d.p, zs)).mean(0)
            monte_carlo = True
        kl = kl.expand(qm.batch_shape)
        rows.append(kl)
        joints.append(kl.sum(-1) if factorised else _joint_kl(d.q, d.p, d.z, num_samples))
        marginal = marginal or not factorised
    estimator = "monte_carlo" if monte_carlo else "analytic"
    if prior_marginals is not None and prior_marginals.estimated:
        estimator += "_kde"
    estimator += "_marginal" if marginal else ""
    per_point = _numpy(torch.cat(rows))
    return KLPerDimension(per_point.mean(0), per_point, estimator, _numpy(torch.cat(joints)))


def kl_per_dimension(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
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
        Pyro programs taking a chunk ``x``.
    data : torch.Tensor
        Shape ``(N, ...)``.
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


# --------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------
def _bootstrap_counts(n: int, replicates: int, device: torch.device) -> torch.Tensor:
    """Multinomial resampling counts, shape ``(replicates, n)``, float64; each row sums to n."""
    idx = torch.randint(n, (replicates, n), device=device)
    counts = torch.zeros(replicates, n, dtype=torch.float64, device=device)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def _interval(
    values: torch.Tensor, level: float, estimate: float | None = None
) -> tuple[float, float]:
    """Bootstrap interval from replicates ``values`` (first axis): the percentile interval,
    or with ``estimate`` the basic (pivotal) interval ``2 * estimate - quantiles``, which
    corrects to first order a plug-in estimator's bias that the replicates reproduce."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device="cpu")
    lo, hi = (float(v) for v in torch.quantile(values.double().cpu(), q, dim=0))
    if estimate is None:
        return lo, hi
    return 2 * estimate - hi, 2 * estimate - lo


def _check_bootstrap(bootstrap: object, ci_level: object) -> tuple[int, float]:
    bootstrap = check_int("bootstrap", bootstrap, minimum=0)
    ci_level = check_float("ci_level", ci_level, minimum=0.0, maximum=1.0, strict_minimum=True)
    if bootstrap == 1:
        raise ValueError("bootstrap must be 0 (no intervals) or >= 2 replicates, got 1")
    return bootstrap, ci_level


# --------------------------------------------------------------------------------------
# Active units
# --------------------------------------------------------------------------------------
@dataclass
class ActiveUnits:
    """Active units (Burda et al. 2016).

    Attributes
    ----------
    variance : numpy.ndarray
        Cov_x(E_q[z_d | x]) per dimension, shape ``(D,)``, in squared units of z.
    threshold : float
        A unit is active when its variance exceeds this (0.01 in the paper).
    count_ci : tuple[float, float] or None
        Bootstrap percentile interval of the number of active units.
    probability_active : numpy.ndarray or None
        Shape ``(D,)``: the fraction of bootstrap replicates in which each unit is active.
    variance_ci : numpy.ndarray or None
        Shape ``(2, D)``: bootstrap percentile interval of each variance.
    """

    variance: np.ndarray
    threshold: float
    count_ci: tuple[float, float] | None = None
    probability_active: np.ndarray | None = None
    variance_ci: np.ndarray | None = None

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


def _au_from_draws(
    draws: Sequence[SiteDraw],
    threshold: float,
    num_samples: int,
    bootstrap: int,
    ci_level: float,
) -> ActiveUnits:
    means = torch.cat([_posterior_mean(d.q, num_samples) for d in draws]).double()
    means = means - means.mean(0)
    n = means.shape[0]
    var = (
        means.pow(2).mean(0)
        if n > 1
        else torch.zeros(means.shape[1], dtype=torch.float64, device=means.device)
    )
    if bootstrap == 0 or n < 2:
        return ActiveUnits(_numpy(var), threshold)
    counts = _bootstrap_counts(n, bootstrap, means.device)
    m1 = counts @ means / n  # (R, D)
    var_r = counts @ means.pow(2) / n - m1.pow(2)
    active_r = var_r > threshold
    count_ci = _interval(active_r.sum(1).double(), ci_level)
    q = torch.tensor([(1 - ci_level) / 2, (1 + ci_level) / 2], dtype=torch.float64, device="cpu")
    return ActiveUnits(
        _numpy(var),
        threshold,
        count_ci,
        _numpy(active_r.double().mean(0)),
        _numpy(torch.quantile(var_r.cpu(), q, dim=0)),
    )


def active_units(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    threshold: float = 0.01,
    num_samples: int = 64,
    batch_size: int = 256,
    bootstrap: int = 0,
    ci_level: float = 0.95,
    device: str | torch.device | None = None,
) -> ActiveUnits:
    """Variance over data of the posterior mean, per dimension (Burda et al. 2016).

    ``A_d = Cov_x(E_{q(z|x)}[z_d])``; dimension d is active when ``A_d > threshold``.
    The posterior mean is exact when q has one, else a ``num_samples`` Monte Carlo mean.

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`.
    threshold : float
        Activity threshold in squared units of z (the paper's 0.01).
    num_samples : int
        Draws for the posterior mean where q has no closed-form mean.
    bootstrap : int
        Nonparametric bootstrap replicates over data points (0: none), giving
        :attr:`ActiveUnits.count_ci`, :attr:`ActiveUnits.variance_ci` and
        :attr:`ActiveUnits.probability_active`. Computed by one matrix product with the
        resampling counts (no loop over replicates).
    ci_level : float
        Coverage of the percentile intervals.

    Returns
    -------
    ActiveUnits

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Efron & Tibshirani (1993). An Introduction to the Bootstrap. Chapman & Hall.
    """
    threshold = check_float("threshold", threshold, minimum=0.0)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    bootstrap, ci_level = _check_bootstrap(bootstrap, ci_level)
    draws = list(site_draws(model, guide, data, site, batch_size, device=device))
    with torch.no_grad():
        return _au_from_draws(draws, threshold, num_samples, bootstrap, ci_level)


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
    def log_prob(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``log (1/N) sum_j w_rj q_j(z_i)`` for rows ``z`` ``(M, D)`` and non-negative
        weights ``(R, N)``; shape ``(M, R)``. With ``w = 1`` this is log q(z)."""
        rows = self._query_rows(False, z.shape[1])
        out = []
        for zi in z.split(rows):
            m = torch.full((zi.shape[0],), -math.inf, dtype=torch.float64, device=z.device)
            acc = torch.zeros(zi.shape[0], weights.shape[0], dtype=torch.float64, device=z.device)
            for cols, block in self._blocks(zi):
                mb = block.amax(1)
                block = (
                    block.sub_(mb[:, None]).exp_()
                    if block.is_contiguous()
                    else (block - mb[:, None]).exp()
                )
                part = (block @ weights[:, cols].T.to(block.dtype)).double()
                mb = mb.double()
                mn = torch.maximum(m, mb)
                acc = acc * (m - mn).exp()[:, None] + part * (mb - mn).exp()[:, None]
                m = mn
            out.append(acc.clamp_min(1e-300).log() + m[:, None])
        return torch.cat(out) - math.log(self.n)

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


@dataclass
class MutualInformation:
    """I_q(x; z) under the empirical data distribution and the aggregate posterior.

    Attributes
    ----------
    total : float
        I_q(x; z) in nats.
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
    aggregate_kl_stderr : float
        Monte Carlo standard error of :attr:`aggregate_kl` (the standard deviation of the
        per-draw terms over the square root of their number; ``nan`` for a single draw).
        It holds the aggregate posterior fixed, so it does not include the bias of
        log q(z) at small N.
    conditional_prior : bool
        Whether p(z) differs between data points (it depends on other latents).
    aggregate_kl_per_dim : numpy.ndarray or None
        KL(q(z_d) || p(z_d)) per dimension, where per-dimension marginals exist.
    num_samples : int
        Draws of z per data point used.
    ci, aggregate_kl_ci : tuple[float, float] or None
        Bootstrap percentile intervals of ``total`` and ``aggregate_kl``.
    per_dim_stderr : numpy.ndarray or None
        Monte Carlo standard error of ``per_dim`` over the draws used for it.
    per_dim_draws : int
        Number of draws the per-dimension estimates average over.
    stderr : float
        Monte Carlo standard error of ``total + aggregate_kl`` (the sample mean of
        log q(z|x) - log p(z) over the draws), the yardstick for the KL identity.
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


def _mi_from_draws(
    draws: Sequence[SiteDraw],
    num_samples: int,
    per_dim_draws: int | None,
    bootstrap: int,
    ci_level: float,
) -> MutualInformation:
    agg = _AggregatePosterior([d.q for d in draws])
    zs, cond, prior, cond_d, prior_d = [], [], [], [], []
    per_dim = all(m is not None for m in agg.marginals)
    prior_marginals = None
    if per_dim:
        try:
            prior_marginals = _PriorMarginals(draws, "")
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
    log_q = agg.log_prob(z, weights)  # (M, 1 + R)
    mi = float((cond_t - log_q[:, 0]).mean())
    agg_terms = log_q[:, 0] - prior_t
    agg_kl = float(agg_terms.mean())
    agg_se = float(agg_terms.std() / math.sqrt(m)) if m > 1 else math.nan
    conditional = any(_varies_over_points(d.p, d.z) for d in draws)
    ci = agg_ci = None
    if bootstrap:
        c = weights[1:, point]  # (R, M)
        lq = log_q[:, 1:].T
        mi_r = torch.where(c > 0, c * (cond_t - lq), 0.0).sum(1) / m
        kl_r = torch.where(c > 0, c * (lq - prior_t), 0.0).sum(1) / m
        ci, agg_ci = _interval(mi_r, ci_level, mi), _interval(kl_r, ci_level, agg_kl)
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
    )


def mutual_information(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
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

    The estimate of log q(z) includes the point's own posterior, so I_q is bounded above
    by log N; it is biased for small N.

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
        When I_q approaches log N the estimator saturates and intervals under-cover.
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
    data: torch.Tensor,
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


# --------------------------------------------------------------------------------------
# Datapoints-as-chains R-hat
# --------------------------------------------------------------------------------------
@dataclass
class DatapointRhat:
    """Classic R-hat per latent dimension with each observation's draws as one chain.

    Attributes
    ----------
    per_dim : numpy.ndarray
        Shape ``(D,)``; 1 when q(z_d | x) does not depend on x.
    num_samples : int
        Draws per observation (chain length).
    num_chains : int
        Observations (chains).
    """

    per_dim: np.ndarray
    num_samples: int
    num_chains: int

    @property
    def log(self) -> np.ndarray:
        """ln R-hat, shape ``(D,)``: equals I(x; z_d) for a linear-Gaussian encoder."""
        return np.log(self.per_dim)


def _rhat_from_draws(draws: Sequence[SiteDraw], num_samples: int) -> DatapointRhat:
    means, within = [], []
    for d in draws:
        z = d.q.sample((num_samples,)).double()  # (S, B, D)
        means.append(z.mean(0))
        within.append(z.var(0, unbiased=True))
    chain_means = torch.cat(means)
    n, s = chain_means.shape[0], num_samples
    if n < 2:
        raise ValueError(f"datapoint R-hat needs at least 2 observations (chains), got {n}")
    w = torch.cat(within).mean(0)
    b = s * chain_means.var(0, unbiased=True)
    rhat = ((b / w + s - 1) / s).sqrt()
    return DatapointRhat(_numpy(rhat), s, n)


def datapoint_rhat(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    num_samples: int = 10,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> DatapointRhat:
    """R-hat per latent dimension treating each observation's q(z|x) draws as a chain.

    With N observations as chains of S draws from q(z_d | x_n), the classic
    (non-split, non-rank-normalised) potential scale reduction factor is
    ``R^2 = (B / W + S - 1) / S`` with W the mean within-chain variance and B = S times
    the variance of the chain means: exactly ArviZ's ``rhat(..., method="identity")``,
    computed here in chunks. It is ~1 when the dimension's posterior does not depend on x
    (collapse). As N grows, ``R^2 -> 1 + v_d / s_d^2`` for every S, where v_d is the
    variance over data of E_q[z_d | x] and s_d^2 the mean posterior variance; for a
    linear-Gaussian encoder ``ln R = 0.5 ln(1 + v_d / s_d^2) = I(x; z_d)``, the
    dimension's mutual information in nats.

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        Draws per observation (>= 2).

    Returns
    -------
    DatapointRhat

    References
    ----------
    Gelman & Rubin (1992). Inference from Iterative Simulation Using Multiple Sequences.
    Statistical Science 7(4).
    Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021). Rank-normalization, folding, and
    localization: An improved R-hat. Bayesian Analysis (the "identity" variant is their
    classic R-hat).
    """
    num_samples = check_int("num_samples", num_samples, minimum=2)
    draws = list(site_draws(model, guide, data, site, batch_size, device=device))
    with torch.no_grad():
        return _rhat_from_draws(draws, num_samples)


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
        prior_marginals = _PriorMarginals(draws, site)
    except NotImplementedError:
        return None
    return _densities_from_draw(draws[0], _DENSITY_POINTS, _DENSITY_GRID, prior_marginals)


def posterior_densities(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
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
    draw = next(site_draws(model, guide, data[:num_points], site, num_points, device=device))
    with torch.no_grad():
        out = _densities_from_draw(draw, num_points, grid_size)
    if out is None:
        raise NotImplementedError(
            f"site {site!r}: density overlays need univariate marginals of q and p; got "
            f"{type(draw.q).__name__} and {type(draw.p).__name__}"
        )
    return out


# --------------------------------------------------------------------------------------
# Importance sampling: IW log-likelihood, PSIS k-hat, posterior-mean space
# --------------------------------------------------------------------------------------
def _particle_chunks(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    batch_size: int,
    device: torch.device | None,
    layout: _Layout,
) -> Iterator[tuple[slice, Iterator[tuple[Any, Any]]]]:
    """Per data chunk, its points and an iterator of vectorised (model, guide) trace
    pairs that together hold ``num_samples`` draws of every point (no gradients)."""

    def runs(xb: torch.Tensor) -> Iterator[tuple[Any, Any]]:
        k = max(1, min(num_samples, _PARTICLE_ROWS // xb.shape[0]))
        for s in range(0, num_samples, k):
            with torch.no_grad():
                yield _run(
                    model, guide, xb, particles=min(k, num_samples - s), nesting=layout.nesting
                )

    start = 0
    for xb in _chunks(x, batch_size, device):
        yield slice(start, start + xb.shape[0]), runs(xb)
        start += xb.shape[0]


def _log_weights(model_tr: Any, guide_tr: Any, layout: _Layout) -> torch.Tensor:
    """log p(x_n, z) - log q(z | x_n) per particle and point, shape ``(P, B)``."""
    total = 0.0
    for sign, tr in ((1.0, model_tr), (-1.0, guide_tr)):
        for _, site in _sample_sites(tr):
            total = total + sign * _per_point(_site_log_prob(site), site, layout, particles=True)
    return total  # type: ignore[return-value]


@dataclass
class ImportanceWeightedLogLikelihood:
    """The importance-weighted estimate of log p(x) (Burda et al. 2016).

    Attributes
    ----------
    per_point : numpy.ndarray
        Shape ``(N,)``: ``log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n)``, nats.
    elbo_per_point : numpy.ndarray
        Shape ``(N,)``: the mean of the K log weights, an ELBO estimate from the same draws.
    num_samples : int
        K, draws per point.
    """

    per_point: np.ndarray
    elbo_per_point: np.ndarray
    num_samples: int

    @property
    def mean(self) -> float:
        """Average IW log-likelihood per point (nats)."""
        return float(self.per_point.mean())

    @property
    def elbo(self) -> float:
        """Average ELBO per point from the same draws (nats)."""
        return float(self.elbo_per_point.mean())

    @property
    def gap(self) -> float:
        """IW bound minus ELBO: a lower bound on the average KL(q(z|x) || p(z|x))."""
        return self.mean - self.elbo

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over data points."""
        n = len(self.per_point)
        return float(self.per_point.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


@dataclass
class PSISDiagnostic:
    """Pareto-smoothed importance sampling k-hat of the guide, per data point.

    Attributes
    ----------
    khat : numpy.ndarray
        Shape ``(N,)``. Below 0.5: q(z|x_n) is a good importance proposal for p(z|x_n);
        0.5-0.7: usable; above 0.7: poor (Yao et al. 2018). ``inf`` where the tail was too
        short to fit.
    num_samples : int
        Draws per point.
    """

    khat: np.ndarray
    num_samples: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.khat))

    @property
    def max(self) -> float:
        return float(np.max(self.khat))

    def fraction_above(self, threshold: float = 0.7) -> float:
        """Fraction of points whose k-hat exceeds ``threshold``."""
        return float(np.mean(self.khat > threshold))

    def summary(self) -> dict[str, float]:
        """Mean, median, max and the fractions above 0.5 and 0.7."""
        return {
            "mean": self.mean,
            "median": float(np.median(self.khat)),
            "max": self.max,
            "fraction_above_0.5": self.fraction_above(0.5),
            "fraction_above_0.7": self.fraction_above(0.7),
            "num_samples": float(self.num_samples),
        }


@dataclass
class PosteriorMeanSpace:
    """Approximate vs model posterior means per point (He et al. 2019, Fig. 1).

    Attributes
    ----------
    approximate : numpy.ndarray
        Shape ``(N, D)``: E_q[z | x_n].
    model : numpy.ndarray
        Shape ``(N, D)``: E_{p(z|x_n)}[z] by self-normalised importance sampling with q as
        proposal (consistent in the number of draws; trust it where PSIS k-hat < 0.7).
    num_samples : int
        Draws per point.
    """

    approximate: np.ndarray
    model: np.ndarray
    num_samples: int


def _psis_khat(log_w: torch.Tensor) -> torch.Tensor:
    """Pareto k-hat of each column of log weights ``(K, B)``, shape ``(B,)``.

    Row-batched version of :func:`pyro.infer.importance.psis_diagnostic`'s tail fit
    (same tail, cutoff and :func:`pyro.ops.stats.fit_generalized_pareto` estimator).
    """
    lw = log_w.double().T  # (B, K)
    lw = (lw - lw.amax(1, keepdim=True)).sort(1).values
    k = lw.shape[1]
    tail_len = math.ceil(min(0.2 * k, 3.0 * math.sqrt(k)))
    cutoff = lw[:, -tail_len - 1].clamp_min(math.log(1.0e-15))
    tail = lw[:, -tail_len:]
    valid = tail > cutoff[:, None]
    n = valid.sum(1)
    x = torch.where(valid, tail.exp() - cutoff.exp()[:, None], 0.0)
    khat = _fit_generalized_pareto_k(x, valid, n)
    return torch.where(n >= 10, khat, torch.full_like(khat, math.inf))


def _fit_generalized_pareto_k(
    x: torch.Tensor, valid: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """Zhang & Stephens (2009) estimate of the GPD shape k with Vehtari et al.'s prior,
    for each row of ``x`` ``(B, T)`` whose valid entries (a right-aligned, ascending block
    of length ``n``) are the data; as :func:`pyro.ops.stats.fit_generalized_pareto`."""
    t = x.shape[1]
    nf = n.double().clamp_min(1)
    m = 30 + n.double().clamp_min(1).sqrt().floor()  # grid size per row
    j = torch.arange(1, 30 + int(math.sqrt(t)) + 1, dtype=torch.float64, device=x.device)
    grid = j[None, :] <= m[:, None]  # (B, M)
    quartile = (t - n) + torch.floor(nf / 4 - 0.5).long().clamp_min(0)
    x_q = x.gather(1, quartile.clamp_max(t - 1)[:, None]).squeeze(1)
    bs = 1.0 - m[:, None].sqrt() / (j[None, :] - 0.5).sqrt()
    bs = bs / (3.0 * x_q[:, None]) + 1.0 / x[:, -1:]
    logs = torch.log1p(-bs[:, :, None] * x[:, None, :])  # (B, M, T)
    ks = torch.where(valid[:, None, :], logs, 0.0).sum(2) / nf[:, None]
    ls = nf[:, None] * (torch.log(-bs / ks) - (ks + 1.0))
    ls = torch.where(grid, ls, -math.inf)
    diff = ls[:, None, :] - ls[:, :, None]  # [i, j] = L_j - L_i
    weights = torch.where(grid, 1.0 / diff.exp().sum(2), 0.0)
    weights = torch.where(weights > 1.0e-30, weights, 0.0)
    weights = weights / weights.sum(1, keepdim=True)
    b = (torch.where(grid, bs, 0.0) * weights).sum(1)
    k = torch.where(valid, torch.log1p(-b[:, None] * x), 0.0).sum(1) / nf
    return k * nf / (nf + 10.0) + 5.0 / (nf + 10.0)


@dataclass
class _ImportancePass:
    log_likelihood: torch.Tensor  # (N,)
    elbo: torch.Tensor  # (N,)
    khat: torch.Tensor | None  # (N,)
    means: dict[str, tuple[torch.Tensor, torch.Tensor]]  # site -> (approx (N, D), model (N, D))


def _importance_pass(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    batch_size: int,
    device: torch.device | None,
    layout: _Layout,
    *,
    khat: bool = False,
    mean_sites: Sequence[str] = (),
    mean_points: int | None = None,
) -> _ImportancePass:
    """One vectorised importance-sampling pass: per point the IW log-likelihood, the mean
    log weight, optionally PSIS k-hat and self-normalised posterior means of some sites
    (for the first ``mean_points`` points)."""
    ll, el, kh = [], [], []
    sums: dict[str, list[list[torch.Tensor]]] = {s: [[], []] for s in mean_sites}
    for points, runs in _particle_chunks(model, guide, x, num_samples, batch_size, device, layout):
        want_means = mean_sites and (mean_points is None or points.start < mean_points)
        lws, m = [], None
        acc: dict[str, list[torch.Tensor]] = {}
        for model_tr, guide_tr in runs:
            lw = _log_weights(model_tr, guide_tr, layout).double()  # (k, B)
            lws.append(lw)
            if not want_means:
                continue
            mb = lw.amax(0)
            mn = mb if m is None else torch.maximum(m, mb)
            w = (lw - mn).exp()  # (k, B)
            for s in mean_sites:
                site = guide_tr.nodes[s]
                z = site["value"].double()
                qmean = _posterior_mean(site["fn"], 16).double().expand_as(z)
                new = [w.sum(0), (w[..., None] * z).sum(0), qmean.sum(0)]
                if s in acc:
                    scale = (m - mn).exp()  # type: ignore[operator]
                    acc[s] = [
                        acc[s][0] * scale + new[0],
                        acc[s][1] * scale[:, None] + new[1],
                        acc[s][2] + new[2],
                    ]
                else:
                    acc[s] = new
            m = mn
        lw = torch.cat(lws)  # (K, B)
        ll.append(torch.logsumexp(lw, 0) - math.log(num_samples))
        el.append(lw.mean(0))
        if khat:
            kh.append(_psis_khat(lw))
        for s, (sw, swz, sq) in acc.items():
            sums[s][0].append(sq / num_samples)
            sums[s][1].append(swz / sw[:, None])
    means = {}
    for s, (approx, exact) in sums.items():
        a, e = torch.cat(approx), torch.cat(exact)
        if mean_points is not None:
            a, e = a[:mean_points], e[:mean_points]
        means[s] = (a, e)
    return _ImportancePass(torch.cat(ll), torch.cat(el), torch.cat(kh) if khat else None, means)


def _importance_setup(
    model: Callable, guide: Callable, data: object, batch_size: object, device: object
) -> tuple[torch.Tensor, int, torch.device | None, _Layout]:
    x, batch_size = _check_inputs(data, batch_size)
    device = _setup_device(model, guide, x, device)
    return x, batch_size, device, _layout(model, guide, x, _probe(model, guide, x, device))


def iw_log_likelihood(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    num_samples: int = 100,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> ImportanceWeightedLogLikelihood:
    """The importance-weighted estimate of log p(x) with the guide as proposal.

    ``log p(x_n) ~ log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n)``, z_k ~ q(z | x_n): a lower
    bound in expectation that increases with K and converges to log p(x_n) (Burda et al.
    2016). Every latent site of the programs is sampled jointly (hierarchical models
    included) and every model site must lie in the data plate. Runs chunked over data
    and draws: each vectorised model run holds at most ``2**14`` (draws x points) rows;
    its cost is that of ``N * K`` decoder passes.

    Parameters
    ----------
    model, guide, data, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        K, draws per point.

    Returns
    -------
    ImportanceWeightedLogLikelihood
        Per-point estimates (nats) and the ELBO from the same draws.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    x, batch_size, device, layout = _importance_setup(model, guide, data, batch_size, device)
    res = _importance_pass(model, guide, x, num_samples, batch_size, device, layout)
    return ImportanceWeightedLogLikelihood(
        _numpy(res.log_likelihood), _numpy(res.elbo), num_samples
    )


def _check_psis_samples(name: str, num_samples: object) -> int:
    num_samples = check_int(name, num_samples, minimum=1)
    if num_samples < 50:
        raise ValueError(
            f"{name} must be >= 50 for PSIS k-hat (the Pareto tail needs at least 10 of the "
            f"largest weights), got {num_samples}"
        )
    return num_samples


def psis_khat(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    num_samples: int = 200,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> PSISDiagnostic:
    """Pareto-smoothed importance sampling k-hat of q(z | x_n) against p(z | x_n), per point.

    For each observation the log importance weights ``log p(x_n, z_k) - log q(z_k | x_n)``
    of ``num_samples`` draws are computed in one vectorised pass (no Python loop over
    points), and the generalised-Pareto shape k of their upper tail is fitted as
    :func:`pyro.infer.importance.psis_diagnostic` does for a whole data set, row-batched.
    A high k-hat says the guide is a poor approximation of that point's posterior, so a
    dimension that looks collapsed there may reflect the guide, not the model.

    Parameters
    ----------
    model, guide, data, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        Draws per point (>= 50; Pyro's default for the whole-data diagnostic is 1000).

    Returns
    -------
    PSISDiagnostic

    References
    ----------
    Yao, Vehtari, Simpson, Gelman (2018). Yes, but Did It Work?: Evaluating Variational
    Inference. ICML.
    Vehtari, Simpson, Gelman, Yao, Gabry (2024). Pareto Smoothed Importance Sampling. JMLR.
    Zhang & Stephens (2009). A new and efficient estimation method for the generalized
    Pareto distribution. Technometrics.
    """
    num_samples = _check_psis_samples("num_samples", num_samples)
    x, batch_size, device, layout = _importance_setup(model, guide, data, batch_size, device)
    res = _importance_pass(model, guide, x, num_samples, batch_size, device, layout, khat=True)
    return PSISDiagnostic(_numpy(res.khat), num_samples)  # type: ignore[arg-type]


def posterior_mean_space(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    num_samples: int = 100,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> PosteriorMeanSpace:
    """Approximate posterior mean E_q[z|x] against the model posterior mean E_p[z|x].

    The model posterior mean is the self-normalised importance-sampling estimate
    ``sum_k w_k z_k / sum_k w_k`` with q as proposal, from the draws of
    :func:`iw_log_likelihood`. In the "posterior mean space" plot of He et al. (2019), a
    lagging inference network shows points off the diagonal with E_q near 0 while E_p
    varies; collapse shows every point at the prior's mean.

    Returns
    -------
    PosteriorMeanSpace
        Shapes ``(N, D)``, units of z.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    x, batch_size = _check_inputs(data, batch_size)
    device = _setup_device(model, guide, x, device)
    traces = _probe(model, guide, x, device)
    names = _latent_names(*traces)
    if site not in names:
        raise ValueError(
            f"site must be a latent site of both guide and model, got {site!r}; "
            f"latent sites found: {', '.join(map(repr, names)) or 'none'}"
        )
    layout = _layout(model, guide, x, traces)
    res = _importance_pass(
        model, guide, x, num_samples, batch_size, device, layout, mean_sites=(site,)
    )
    approx, exact = res.means[site]
    return PosteriorMeanSpace(_numpy(approx), _numpy(exact), num_samples)


# --------------------------------------------------------------------------------------
# Decoder probes: sensitivity, traversals, reconstructions
# --------------------------------------------------------------------------------------
@dataclass
class DecoderSensitivity:
    """How much the model's conditionals change when z moves along each dimension.

    Attributes
    ----------
    per_dim : numpy.ndarray
        Shape ``(D,)``: E_x E_{q(z|x)}[F_dd(z)], the diagonal of the Fisher information
        about z of the model's other sites (nats per squared unit of z). Exactly 0 for a
        dimension the model ignores.
    per_site : dict[str, numpy.ndarray]
        Each measured site's contribution, shape ``(D,)`` (they sum to ``per_dim``).
    method : str
        ``"score"`` or ``"finite_difference"``.
    step : float or None
        The finite-difference step in units of z.
    num_samples : int
        Draws of z (and of the sites' values, for ``"score"``) per point.
    """

    per_dim: np.ndarray
    per_site: dict[str, np.ndarray]
    method: str
    step: float | None
    num_samples: int


def _target_sites(model_tr: Any, site: str, targets: Sequence[str] | None) -> list[str]:
    names = [n for n, _ in _sample_sites(model_tr) if n != site]
    if targets is None:
        return names
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(
            f"targets {missing} are not sample sites of the model other than {site!r}; "
            f"available: {', '.join(map(repr, names)) or 'none'}"
        )
    return list(targets)


def _sensitivity_score(
    model: Callable,
    guide: Callable,
    xb: torch.Tensor,
    site: str,
    layout: _Layout,
    num_samples: int,
    targets: Sequence[str] | None,
) -> dict[str, torch.Tensor]:
    with torch.no_grad(), poutine.block():
        guide_tr = poutine.trace(_vectorised(guide, num_samples, layout.nesting)).get_trace(xb)
    if site not in guide_tr.nodes:
        raise ValueError(f"latent site {site!r} is not a sample site of the guide")
    z = guide_tr.nodes[site]["value"].detach().clone().requires_grad_(True)
    out = {}
    with torch.enable_grad():
        model_tr, _ = _run(
            model,
            guide,
            xb,
            particles=num_samples,
            nesting=layout.nesting,
            guide_trace=guide_tr,
            values={site: z},
        )
        names = _target_sites(model_tr, site, targets)
        for i, name in enumerate(names):
            s = model_tr.nodes[name]
            with torch.no_grad():
                value = s["fn"].sample()
            lp = _site_log_prob(s, value=value)
            if not lp.requires_grad:
                out[name] = torch.zeros(z.shape[1:], dtype=torch.float64, device=z.device)
                continue
            (g,) = torch.autograd.grad(
                lp.sum(), z, retain_graph=i < len(names) - 1, allow_unused=True
            )
            out[name] = (
                torch.zeros(z.shape[1:], dtype=torch.float64, device=z.device)
                if g is None
                else g.double().pow(2).mean(0)
            )
    return out


def _sensitivity_fd(
    model: Callable,
    guide: Callable,
    xb: torch.Tensor,
    site: str,
    layout: _Layout,
    num_samples: int,
    step: float,
    targets: Sequence[str] | None,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for _ in range(num_samples):
        with torch.no_grad(), poutine.block():
            guide_tr = poutine.trace(guide).get_trace(xb)
            z = guide_tr.nodes[site]["value"]
            shift = 0.5 * step * torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)[:, None, :]
            traces = [
                _run(
                    model,
                    guide,
                    xb,
                    particles=z.shape[-1],
                    nesting=layout.nesting,
                    guide_trace=guide_tr,
                    values={site: z + sign * shift},
                )[0]
                for sign in (1.0, -1.0)
            ]
            for name in _target_sites(traces[0], site, targets):
                plus, minus = traces[0].nodes[name], traces[1].nodes[name]
                try:
                    skl = kl_divergence(plus["fn"], minus["fn"]) + kl_divergence(
                        minus["fn"], plus["fn"]
                    )
                except NotImplementedError:
                    if torch.equal(_site_log_prob(plus), _site_log_prob(minus)):
                        continue  # the site does not depend on z
                    raise NotImplementedError(
                        f"site {name!r} ({type(plus['fn']).__name__}) has no closed-form KL for "
                        "method='finite_difference'; use method='score'"
                    ) from None
                if plus["mask"] is not None:
                    skl = scale_and_mask(skl, mask=plus["mask"])
                f = _per_point(skl, plus, layout, particles=True).T.double() / step**2  # (B, D)
                out[name] = out.get(name, 0.0) + f / num_samples  # type: ignore[operator]
    return out


def decoder_sensitivity(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    site: str = "z",
    method: str = "score",
    num_samples: int = 1,
    step: float = 0.1,
    targets: Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> DecoderSensitivity:
    """Per latent dimension, how much the decoder's output distribution moves with z_d.

    Defined as the diagonal of the Fisher information that the model's other sites
    carry about z, averaged over the data and the guide::

        S_d = E_x E_{z ~ q(z|x)} sum_s E_{v ~ p_s(. | z)} [ (d/dz_d log p_s(v | z))^2 ]

    where s runs over ``targets`` (default: every model sample site except ``site``,
    i.e. the observed sites and, in a hierarchy, the latent children of ``site``), each
    evaluated with the other latent sites held at the guide's draws. Units: nats per
    squared unit of z. A decoder that ignores z_d gives exactly 0, whatever q does; a
    collapsed posterior with a large S_d signals a lagging inference network rather than
    an unused latent.

    ``method="score"`` (default) samples v ~ p_s(. | z) and differentiates log p_s(v | z)
    with respect to z only: one forward and one backward pass per point and draw,
    unbiased; needs a model differentiable in z. ``method="finite_difference"`` uses
    ``[KL(p(.|z+) || p(.|z-)) + KL(p(.|z-) || p(.|z+))] / step^2`` with z+- = z +- step/2
    e_d, which equals F_dd up to O(step^2) (exactly, for a Gaussian mean that is linear in
    z): deterministic given z, needs closed-form KLs of the measured sites and 2 D model
    passes per point and draw.

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`. Keep modules in eval mode (batch-norm in training
        mode couples points).
    method : {"score", "finite_difference"}
    num_samples : int
        Draws of z per point.
    step : float
        Finite-difference step in units of z.
    targets : sequence of str or None
        Model sites whose sensitivity is measured.

    Returns
    -------
    DecoderSensitivity

    References
    ----------
    Kullback (1959). Information Theory and Statistics. Wiley (KL between neighbouring
    members of a family is 0.5 step^2 times the Fisher information).
    Lucas, Tucker, Grosse, Norouzi (2019). Don't Blame the ELBO! A Linear VAE Perspective
    on Posterior Collapse. NeurIPS.
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    method = check_choice("method", method, ("score", "finite_difference"))
    num_samples = check_int("num_samples", num_samples, minimum=1)
    step = check_float("step", step, minimum=0.0, strict_minimum=True)
    if targets is not None and (
        isinstance(targets, str) or not all(isinstance(t, str) for t in targets)
    ):
        raise TypeError(f"targets must be None or a sequence of site names, got {targets!r}")
    x, batch_size, device, layout = _importance_setup(model, guide, data, batch_size, device)
    return _sensitivity(
        model, guide, x, site, layout, method, num_samples, step, targets, batch_size, device
    )


def _sensitivity(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    site: str,
    layout: _Layout,
    method: str,
    num_samples: int,
    step: float,
    targets: Sequence[str] | None,
    batch_size: int,
    device: torch.device | None,
) -> DecoderSensitivity:
    sums: dict[str, torch.Tensor] = {}
    for xb in _chunks(x, batch_size, device):
        if method == "score":
            parts = _sensitivity_score(model, guide, xb, site, layout, num_samples, targets)
        else:
            parts = _sensitivity_fd(model, guide, xb, site, layout, num_samples, step, targets)
        for name, f in parts.items():
            sums[name] = sums.get(name, 0.0) + f.sum(0)  # type: ignore[operator]
    n = x.shape[0]
    per_site = {k: _numpy(v / n) for k, v in sums.items()}
    per_dim = sum(per_site.values()) if per_site else np.zeros(0)
    return DecoderSensitivity(
        np.asarray(per_dim, dtype=float),
        per_site,
        method,
        step if method == "finite_difference" else None,
        num_samples,
    )


def _observed_mean(model_tr: Any, observed: str | None) -> tuple[str, torch.Tensor]:
    names = _observed_names(model_tr)
    if observed is None:
        if not names:
            raise ValueError("the model has no observed site")
        observed = names[0]
    elif observed not in names:
        raise ValueError(
            f"observed must name an observed site of the model {names}; got {observed!r}"
        )
    fn = model_tr.nodes[observed]["fn"]
    try:
        return observed, fn.mean
    except NotImplementedError:
        raise NotImplementedError(
            f"observed site {observed!r} ({type(fn).__name__}) has no mean"
        ) from None


def _guide_at_means(guide: Callable, xb: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
    with poutine.block():
        guide_tr = prune_subsample_sites(poutine.trace(guide).get_trace(xb))
    values = {
        name: _posterior_mean(site["fn"], 64).expand_as(site["value"])
        for name, site in _sample_sites(guide_tr)
        if not site["is_observed"]
    }
    return guide_tr, values


@dataclass
class LatentTraversal:
    """Decoder means along latent traversals of one observation.

    Attributes
    ----------
    site : str
        The traversed latent site.
    dims : numpy.ndarray
        Shape ``(K,)``: the traversed dimensions.
    values : numpy.ndarray
        Shape ``(T,)``: the values z_d takes (units of z).
    means : numpy.ndarray
        Shape ``(K, T, *event_shape)``: E[x | z] with z = E_q[z | x] except z_d = value.
    """

    site: str
    dims: np.ndarray
    values: np.ndarray
    means: np.ndarray


def latent_traversal(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    site: str = "z",
    dims: Sequence[int] | None = None,
    values: Sequence[float] | torch.Tensor | None = None,
    observed: str | None = None,
    device: str | torch.device | None = None,
) -> LatentTraversal:
    """Decode latent traversals: z = E_q[z | x] with one dimension swept over ``values``.

    Every latent site is held at its guide mean; the model is replayed in one vectorised
    run over all (dimension, value) pairs and the observed site's mean E[x | z] recorded.
    A collapsed dimension gives identical rows.

    Parameters
    ----------
    x : torch.Tensor
        One observation, shape ``(1, *event_shape)``.
    dims : sequence of int or None
        Dimensions to traverse (default all).
    values : sequence of float or None
        Values of z_d (default ``linspace(-3, 3, 7)``, in units of z).
    observed : str or None
        Observed site whose mean is decoded (default the model's first).

    Returns
    -------
    LatentTraversal

    References
    ----------
    Higgins et al. (2017). beta-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework. ICLR (latent traversals).
    """
    x = (
        check_data("x", x, floating=x.is_floating_point())
        if isinstance(x, torch.Tensor)
        else check_data("x", x)
    )
    if x.shape[0] != 1:
        raise ValueError(
            f"x must hold exactly one observation, shape (1, ...); got {tuple(x.shape)}. Pass data[:1]"
        )
    device = _setup_device(model, guide, x, device)
    x = x if device is None else x.to(device)
    vals = (
        torch.linspace(-3, 3, 7) if values is None else torch.as_tensor(values, dtype=torch.float32)
    )
    if vals.dim() != 1 or vals.numel() < 1:
        raise ValueError(f"values must be a non-empty 1-d sequence, got shape {tuple(vals.shape)}")
    layout = _layout(model, guide, x)
    with torch.no_grad():
        guide_tr, means = _guide_at_means(guide, x)
        if site not in means:
            raise ValueError(
                f"latent site {site!r} is not a latent site of the guide; found {sorted(means)}"
            )
        base = means[site]  # (1, D)
        latent_dim = base.shape[-1]
        dim_list = (
            list(range(latent_dim))
            if dims is None
            else [check_int("dims[i]", d, minimum=0) for d in dims]
        )
        bad = [d for d in dim_list if d >= latent_dim]
        if bad or not dim_list:
            raise ValueError(f"dims must be non-empty and < latent_dim={latent_dim}; got {dims!r}")
        vals = vals.to(base)
        z = base.expand(len(dim_list), len(vals), 1, latent_dim).clone()
        for i, d in enumerate(dim_list):
            z[i, :, 0, d] = vals
        z = z.reshape(-1, 1, latent_dim)
        model_tr, _ = _run(
            model,
            guide,
            x,
            particles=z.shape[0],
            nesting=layout.nesting,
            guide_trace=guide_tr,
            values={**means, site: z},
        )
        _, mean = _observed_mean(model_tr, observed)
    mean = mean.expand(z.shape[0], *mean.shape[-(mean.dim() - 1) :])
    shaped = mean.reshape(len(dim_list), len(vals), *mean.shape[2:])
    return LatentTraversal(site, np.asarray(dim_list), _numpy(vals), _numpy(shaped))


def reconstruction_means(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    observed: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """E[x | z = E_q[z | x]] for each observation: the decoder mean at the guide means.

    Returns
    -------
    numpy.ndarray
        Shape ``(N, *event_shape)`` of the observed site.
    """
    x, batch_size = _check_inputs(data, batch_size)
    device = _setup_device(model, guide, x, device)
    out = []
    with torch.no_grad():
        for xb in _chunks(x, batch_size, device):
            guide_tr, means = _guide_at_means(guide, xb)
            model_tr, _ = _run(model, guide, xb, guide_trace=guide_tr, values=means)
            out.append(_observed_mean(model_tr, observed)[1])
    return _numpy(torch.cat(out))


# --------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------
def _check_estimators(estimators: object) -> tuple[str, ...]:
    if isinstance(estimators, str) or not isinstance(estimators, Sequence):
        raise TypeError(
            f"estimators must be a sequence of names such as ('kl', 'au', 'mi'), got {estimators!r}"
        )
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(
            f"unknown estimator(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(ESTIMATORS)}"
        )
    chosen = {"kl", "au", *estimators}
    return tuple(e for e in ESTIMATORS if e in chosen)


def diagnose(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    latent_sites: Sequence[str] | None = ("z",),
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    num_samples: int = 1,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    au_threshold: float = 0.01,
    mi_threshold: float = 0.01,
    bootstrap: int = 0,
    ci_level: float = 0.95,
    rhat_samples: int = 10,
    importance_samples: int = 100,
    sensitivity_method: str = "score",
    per_dim_draws: int | None = 2048,
    max_points: int | None = 5000,
    seed: int | None = 0,
) -> Any:
    """Diagnose posterior collapse of a trained model/guide pair on ``data``.

    One pass of guide and model over the data gives the draws every per-site estimator
    uses (no re-tracing per estimator); the importance-sampling estimators share one
    vectorised pass.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a batch ``x`` (any Pyro model/guide pair).
    data : torch.Tensor
        Shape ``(N, ...)``.
    latent_sites : sequence of str or None
        Latent sites to diagnose; ``None`` means every latent site of the guide.
    estimators : sequence of str
        Which of :data:`ESTIMATORS` to run: ``"kl"`` and ``"au"`` (always run: the status
        rule needs them), ``"mi"`` (mutual information and marginal KL),
        ``"rhat"`` (datapoints-as-chains R-hat), ``"sensitivity"`` (decoder
        sensitivity), ``"iw"`` (importance-weighted log-likelihood, inference gap and the
        posterior-mean space) and ``"psis"`` (PSIS k-hat per point). The default runs the
        cheap ones; ``"iw"`` and ``"psis"`` cost ``importance_samples`` model passes per
        point.
    num_samples : int
        Draws of z per point for MI, marginal KL, Monte Carlo KLs and the sensitivity.
    batch_size : int
        Points per chunk.
    device : str, torch.device or None
        Device each chunk is moved to (``None``: where the data are); the model and guide
        are not moved, so put them there first (``vae.to(device)``). The report holds
        host (NumPy) values whatever the device.
    au_threshold : float
        Active-unit threshold on Cov_x(E_q[z_d]) (Burda et al. 2016: 0.01).
    mi_threshold : float
        Nats of I_q(x; z_d) above which an inactive dimension counts as informative.
    bootstrap : int
        Bootstrap replicates for intervals on MI, marginal KL and AU (0: none).
    ci_level : float
        Coverage of those intervals.
    rhat_samples : int
        Draws per observation (chain length) for the R-hat.
    importance_samples : int
        Draws per point for ``"iw"`` and ``"psis"`` (>= 50 with ``"psis"``).
    sensitivity_method : {"score", "finite_difference"}
        See :func:`decoder_sensitivity`.
    per_dim_draws : int or None
        Draws used for per-dimension MI (see :func:`mutual_information`).
    max_points : int or None
        Diagnose a random subset of at most this many points (``None``: all).
    seed : int or None
        Seed for the subset and the Monte Carlo draws (the global RNG state is restored).

    Returns
    -------
    CollapseReport
        Per site and dimension: KL, active-unit variance, MI, R-hat, sensitivity and
        status; per-site and overall verdicts; the ELBO decomposition; guide quality.

    Notes
    -----
    The status of dimension d of a site is (the rule is stated in the report):

    * ``active`` when Cov_x(E_q[z_d]) > ``au_threshold``;
    * ``inactive-but-informative`` when not active but I_q(x; z_d) > ``mi_threshold``
      (the information lives in q's shape, not its mean);
    * ``collapsed`` otherwise: z_d carries no information about x.

    The verdict is ``healthy`` (no collapsed dimension), ``partial collapse`` or ``full
    collapse`` (every dimension of every site collapsed).

    For its figures the report also keeps the marginal densities of q(z_d | x) for the
    first 5 points and of p(z_d) on 121-point grids, and (with ``"iw"``) the approximate
    and model posterior means of the first 500 points.

    The ELBO decomposition (per point, nats) is ``elbo = reconstruction - kl`` with
    ``kl = sum_site kl/<site>`` and, per site, ``KL = MI + marginal KL`` (Hoffman &
    Johnson 2016); with ``"iw"``, ``log_likelihood`` (IW) and ``inference_gap =
    log_likelihood - elbo``. Guide-only (auxiliary) sites are not counted.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Hoffman & Johnson (2016). ELBO surgery. NIPS AABI Workshop.
    Yao, Vehtari, Simpson, Gelman (2018). Yes, but Did It Work?: Evaluating Variational
    Inference. ICML.
    """
    from pyrocollapse.report import CollapseReport, SiteReport

    x, batch_size = _check_inputs(data, batch_size)
    chosen = _check_estimators(estimators)
    dev = _setup_device(model, guide, x, device)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    au_threshold = check_float("au_threshold", au_threshold, minimum=0.0)
    mi_threshold = check_float("mi_threshold", mi_threshold, minimum=0.0)
    bootstrap, ci_level = _check_bootstrap(bootstrap, ci_level)
    rhat_samples = check_int("rhat_samples", rhat_samples, minimum=2)
    importance_samples = (
        _check_psis_samples("importance_samples", importance_samples)
        if "psis" in chosen
        else check_int("importance_samples", importance_samples, minimum=1)
    )
    sensitivity_method = check_choice(
        "sensitivity_method", sensitivity_method, ("score", "finite_difference")
    )
    if per_dim_draws is not None:
        per_dim_draws = check_int("per_dim_draws", per_dim_draws, minimum=2)
    if max_points is not None:
        max_points = check_int("max_points", max_points, minimum=2)
    if latent_sites is not None and (
        isinstance(latent_sites, str) or not all(isinstance(s, str) for s in latent_sites)
    ):
        raise TypeError(
            f"latent_sites must be a sequence of site names, e.g. ('z',); got {latent_sites!r}"
        )
    with _seeded(seed, _effective_device(x, dev)):
        if max_points is not None and x.shape[0] > max_points:
            # the subset comes from the CPU generator, the same whatever the device
            x = x[torch.randperm(x.shape[0], device="cpu")[:max_points].to(x.device)]
        traces = _probe(model, guide, x, dev)
        if latent_sites is None:
            latent_sites = _latent_names(*traces)
        latent_sites = list(latent_sites)
        if not latent_sites:
            raise ValueError("latent_sites is empty; name at least one latent site")
        layout = _layout(model, guide, x, traces)
        sweep = _sweep(model, guide, x, latent_sites, batch_size, dev)
        sites = {}
        with torch.no_grad():
            for site in latent_sites:
                draws = sweep.draws[site]
                kl = _kl_from_draws(draws, site, max(num_samples, 64))
                au = _au_from_draws(draws, au_threshold, 64, bootstrap, ci_level)
                mi = (
                    _mi_from_draws(draws, num_samples, per_dim_draws, bootstrap, ci_level)
                    if "mi" in chosen
                    else None
                )
                rhat = _rhat_from_draws(draws, rhat_samples) if "rhat" in chosen else None
                sites[site] = dict(
                    kl=kl,
                    au=au,
                    mi=mi,
                    rhat=rhat,
                    densities=_densities(draws, site),
                )
        for site in latent_sites:
            sites[site]["sensitivity"] = (
                _sensitivity(
                    model,
                    guide,
                    x,
                    site,
                    layout,
                    sensitivity_method,
                    num_samples,
                    0.1,
                    None,
                    batch_size,
                    dev,
                )
                if "sensitivity" in chosen
                else None
            )
        n = sweep.num_points
        kl_total = sum(total / n for total in sweep.kl.values())
        elbo = {
            "elbo": sweep.reconstruction / n - kl_total,
            "reconstruction": sweep.reconstruction / n,
            "kl": kl_total,
            **{f"kl/{name}": total / n for name, total in sweep.kl.items()},
        }
        guide_quality = None
        if "iw" in chosen or "psis" in chosen:
            res = _importance_pass(
                model,
                guide,
                x,
                importance_samples,
                batch_size,
                dev,
                layout,
                khat="psis" in chosen,
                mean_sites=latent_sites if "iw" in chosen else (),
                mean_points=_MEAN_SPACE_POINTS,
            )
            if "iw" in chosen:
                elbo["log_likelihood"] = float(res.log_likelihood.mean())
                elbo["log_likelihood_stderr"] = (
                    float(res.log_likelihood.std() / math.sqrt(n)) if n > 1 else math.nan
                )
                elbo["inference_gap"] = elbo["log_likelihood"] - elbo["elbo"]
                for site, (approx, exact) in res.means.items():
                    sites[site]["mean_space"] = PosteriorMeanSpace(
                        _numpy(approx), _numpy(exact), importance_samples
                    )
            if res.khat is not None:
                psis = PSISDiagnostic(_numpy(res.khat), importance_samples)
                guide_quality = {**psis.summary(), "khat": psis.khat}
    reports = {
        site: SiteReport.build(
            site,
            parts["kl"],
            parts["au"],
            parts["mi"],
            mi_threshold=mi_threshold,
            rhat=parts["rhat"],
            sensitivity=parts["sensitivity"],
            densities=parts["densities"],
            mean_space=parts.get("mean_space"),
            conditional_prior=sweep.conditional_prior[site],
        )
        for site, parts in sites.items()
    }
    return CollapseReport(
        sites=reports,
        elbo=elbo,
        num_points=n,
        settings={
            "estimators": list(chosen),
            "au_threshold": au_threshold,
            "mi_threshold": mi_threshold,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "bootstrap": bootstrap,
            "ci_level": ci_level,
            "rhat_samples": rhat_samples,
            "importance_samples": importance_samples,
            "sensitivity_method": sensitivity_method,
            "per_dim_draws": per_dim_draws,
            "max_points": max_points,
            "seed": seed,
            "device": None if dev is None else str(dev),
        },
        guide_quality=guide_quality,
    )
