"""Posterior summaries with ArviZ: the guide's draws as ``InferenceData``.

``arviz.from_pyro`` accepts only MCMC results; here the guide's draws of every latent
site (local latents q(z | x_n), global latents, discrete ones) become an
:class:`arviz.InferenceData` with the groups ``posterior``, ``prior``, ``observed_data``,
``log_likelihood`` and ``posterior_predictive``, dims named after the Pyro plates
(``chain, draw, data, z_dim_0`` for a VAE's ``z`` in ``pyro.plate("data")``), which saves
to and loads from netCDF unchanged. :func:`summarize` turns it into a
per-latent-dimension table built on ``arviz.summary`` in which collapse shows as the
posterior matching the prior.

This module is the ArviZ adapter: every ArviZ call in pyrocollapse goes through it, and
ArviZ is imported only when one of its functions runs (the import costs about 2 s). It
targets ArviZ 0.x, the line that runs on Python 3.11; ArviZ 1.x (Python >= 3.12) moved
``InferenceData`` to xarray's ``DataTree`` and is refused with a clear error until an
adapter for it is added here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse._validation import check_bool, check_float, check_int
from pyrocollapse.diagnostics._tracing import _VECTORISE_ERRORS, _sample_sites
from pyrocollapse.diagnostics._tracing import _vectorised as _vectorised_in

__all__ = ["load_inference_data", "save_inference_data", "summarize", "to_inference_data"]

#: ArviZ major versions this adapter supports.
SUPPORTED_ARVIZ = (0,)


def _arviz() -> Any:
    """Import ArviZ, checking that this adapter supports its version."""
    import arviz as az

    major = int(str(az.__version__).split(".")[0])
    if major not in SUPPORTED_ARVIZ:
        raise ImportError(
            f"pyrocollapse.summaries supports ArviZ 0.x; found ArviZ {az.__version__}, whose "
            "InferenceData API differs. Install 'arviz<1' or add a 1.x adapter to "
            "pyrocollapse/summaries.py"
        )
    return az


# ---------------------------------------------------------------------------------------
# to_inference_data: tracing the programs
# ---------------------------------------------------------------------------------------
#: ArviZ's sample dims: a site of one of these names is stored under another name.
_SAMPLE_DIMS = ("chain", "draw")
#: Name of the vectorised plate of draws (left of every plate of the programs).
_DRAWS_PLATE = "_pyrocollapse_draws"
#: (draws x points) rows per vectorised run.
_ROWS_PER_RUN = 2**14


def _vectorised(fn: Callable, particles: int | None, nesting: int) -> Callable:
    """``fn`` in the plate of draws (see :func:`pyrocollapse.diagnostics._tracing._vectorised`)."""
    return _vectorised_in(fn, particles, nesting, plate=_DRAWS_PLATE)


def _frames(site: dict[str, Any]) -> list[Any]:
    """The vectorised plates around a site, the plate of draws left out."""
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name != _DRAWS_PLATE]


def _trace_pair(
    model: Callable,
    guide: Callable,
    xa: Any,
    *,
    particles: int | None,
    nesting: int,
    globals_trace: Any = None,
    enumerated: bool = False,
) -> tuple[Any, Any]:
    """Trace the guide (its global sites replayed from ``globals_trace``) and the model
    replayed on it; model-only enumerated sites drawn from their exact conditional
    posterior with :func:`pyro.infer.infer_discrete`. No gradients, nothing recorded in
    an enclosing trace."""
    from pyro.infer import infer_discrete

    with torch.no_grad(), poutine.block():
        g = _vectorised(guide, particles, nesting)
        if globals_trace is not None:
            g = poutine.replay(g, trace=globals_trace)
        guide_tr = poutine.trace(g).get_trace(*xa.args, **xa.kwargs)
        m = poutine.replay(_vectorised(model, particles, nesting), trace=guide_tr)
        if enumerated:
            first = -(nesting + (2 if particles is not None else 1))
            m = infer_discrete(m, first_available_dim=first, temperature=1)
        model_tr = poutine.trace(m).get_trace(*xa.args, **xa.kwargs)
    return prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr)


def _check_vectorised(traces: tuple[Any, Any], particles: int, nesting: int) -> None:
    """``ValueError`` unless every sample site carries the plate of draws where expected
    (a program that reshapes or indexes its batch may lose it without an error)."""
    for tr in traces:
        for name, site in _sample_sites(tr):
            shape = tuple(site["fn"].batch_shape)
            if len(shape) != nesting + 1 or shape[0] != particles:
                raise ValueError(f"site {name!r} lost the plate of draws: batch shape {shape}")


def _plate_nesting(traces: tuple[Any, Any]) -> int:
    nesting = 1
    for tr in traces:
        for _, site in _sample_sites(tr):
            nesting = max(nesting, len(site["fn"].batch_shape))
            for frame in _frames(site):
                if frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
    return nesting


def _find_data_plate(traces: tuple[Any, Any], latent: Sequence[str], rows: int) -> str | None:
    """The plate over the data points: a plate of the observed sites whose size is the
    number of rows of the traced chunk (one also around a latent site preferred)."""
    model_tr = traces[0]
    candidates: list[str] = []
    for _, site in _sample_sites(model_tr):
        if site["is_observed"]:
            for f in _frames(site):
                if f.size == rows and f.name not in candidates:
                    candidates.append(f.name)
    around_latents = {
        f.name for s in latent for tr in traces if s in tr.nodes for f in _frames(tr.nodes[s])
    }
    preferred = [c for c in candidates if c in around_latents]
    return (preferred or candidates or [None])[0]


def _in_plate(site: dict[str, Any], plate: str | None) -> bool:
    return plate is not None and any(f.name == plate for f in _frames(site))


def _site_mask(site: dict[str, Any]) -> torch.Tensor | bool | None:
    """The mask of a site, batch shaped (``poutine.mask`` and ``.mask(...)`` combined),
    or ``None`` when nothing is masked."""
    masks = []
    if site["mask"] is not None:
        masks.append(site["mask"])
    fn = site["fn"]
    while True:
        if isinstance(fn, dist.MaskedDistribution):
            masks.append(fn._mask)
            fn = fn.base_dist
        elif isinstance(fn, dist.Independent):
            inner = _site_mask({"mask": None, "fn": fn.base_dist})
            if isinstance(inner, torch.Tensor) and fn.reinterpreted_batch_ndims:
                inner = inner.expand(fn.base_dist.batch_shape)
                inner = inner.flatten(-fn.reinterpreted_batch_ndims).any(-1)
            if inner is not None:
                masks.append(inner)
            break
        else:
            break
    if not masks:
        return None
    out: torch.Tensor | bool = True
    for m in masks:
        out = m if out is True else (out & m if isinstance(m, torch.Tensor) else out and m)
    return out


def _batch_mask(site: dict[str, Any], batch_shape: torch.Size) -> torch.Tensor | None:
    mask = _site_mask(site)
    if mask is None or mask is True:
        return None
    if mask is False:
        return torch.zeros(batch_shape, dtype=torch.bool)
    return torch.as_tensor(mask, dtype=torch.bool).expand(batch_shape)


def _named(
    var: str,
    site: dict[str, Any],
    value: torch.Tensor,
    nesting: int,
    particles: bool,
    *,
    event_dim: int,
    drop_plate: str | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """``value`` of a site as ``(draws, *kept dims)`` with the names of the kept dims.

    Batch dims are named after the site's plates; dims of size 1 outside every plate are
    dropped (as is ``drop_plate``, when of size 1); event dims are ``<var>_dim_<i>``.
    Without ``particles`` the value is one draw and gets a leading dim of size 1.
    """
    width = nesting + (1 if particles else 0) + event_dim
    if value.dim() < width:
        value = value.reshape((1,) * (width - value.dim()) + tuple(value.shape))
    elif value.dim() > width:  # extra leading dims (a value broadcast by the program)
        value = value.reshape(-1, *value.shape[value.dim() - width :])[0]
    if not particles:
        value = value.unsqueeze(0)
    by_dim = {f.dim: f for f in _frames(site)}
    keep: list[int] = [0]
    dims: list[str] = []
    sizes: list[int] = []
    for i in range(nesting):
        pos = 1 + i
        frame = by_dim.get(i - nesting)
        if frame is not None and not (frame.name == drop_plate and value.shape[pos] == 1):
            keep.append(pos)
            dims.append(frame.name)
            sizes.append(frame.size if value.shape[pos] == 1 else value.shape[pos])
        elif value.shape[pos] != 1:
            keep.append(pos)
            dims.append(f"{var}_batch_dim_{i}")
            sizes.append(value.shape[pos])
    for j in range(event_dim):
        keep.append(1 + nesting + j)
        dims.append(f"{var}_dim_{j}")
        sizes.append(value.shape[1 + nesting + j])
    squeeze = [d for d in range(value.dim()) if d not in keep]
    # squeeze only size-1 dims; plates of size 1 at which the value broadcasts get expanded
    value = value.squeeze(squeeze) if squeeze else value
    value = value.expand(value.shape[0], *sizes)
    return value, dims


def _mask_values(value: torch.Tensor, site: dict[str, Any], event_dim: int) -> torch.Tensor:
    """``value`` (full batch + event shape) with masked elements set to NaN (as float)."""
    shape = value.shape[: value.dim() - event_dim]
    mask = _batch_mask(site, shape)
    if mask is None or bool(mask.all()):
        return value
    value = value.double() if not value.is_floating_point() else value.clone()
    full = mask.reshape(*mask.shape, *(1,) * event_dim).expand_as(value)
    return value.masked_fill(~full, float("nan"))


def _full(value: torch.Tensor, fn: Any) -> torch.Tensor:
    """``value`` broadcast to its distribution's batch + event shape."""
    shape = torch.broadcast_shapes(value.shape, tuple(fn.batch_shape) + tuple(fn.event_shape))
    return value.expand(shape)


def _point_log_lik(
    site: dict[str, Any], nesting: int, data_plate: str | None, particles: bool
) -> tuple[torch.Tensor, list[str]]:
    """log density of an observed site per draw and data point, ``(draws, points)``
    (``(draws,)`` outside the data plate), the other plates summed; scale not applied.
    Masked elements are left out, and a point whose every element is masked is NaN."""
    fn = site["fn"]
    lp = fn.log_prob(site["value"])
    lp = lp.expand(torch.broadcast_shapes(lp.shape, fn.batch_shape))
    width = nesting + (1 if particles else 0)
    lp = lp.reshape((1,) * (width - lp.dim()) + tuple(lp.shape))
    mask = _batch_mask(site, lp.shape)
    if not particles:
        lp = lp.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    frame = next((f for f in _frames(site) if f.name == data_plate), None)
    keep = [0] if frame is None else [0, 1 + nesting + frame.dim]
    drop = tuple(d for d in range(lp.dim()) if d not in keep)
    if mask is None:
        out = lp.sum(drop) if drop else lp
    else:
        lp = lp.masked_fill(~mask, 0.0)
        count = mask.sum(drop) if drop else mask.long()
        out = lp.sum(drop) if drop else lp
        out = out.masked_fill(count == 0, float("nan"))
    return out, [] if frame is None else [data_plate]  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------
# to_inference_data: collecting the draws
# ---------------------------------------------------------------------------------------
_Named = tuple[torch.Tensor, list[str]]


def _records(
    traces: tuple[Any, Any],
    sites: Sequence[str],
    nesting: int,
    data_plate: str | None,
    particles: bool,
    *,
    log_likelihood: bool,
    predictive: bool,
) -> dict[str, dict[str, _Named]]:
    """One run's draws by group and site: ``(draws, *dims)`` tensors with dim names
    (``observed_data`` without the draws dim)."""
    model_tr, guide_tr = traces
    out: dict[str, dict[str, _Named]] = {
        "posterior": {},
        "observed_data": {},
        "log_likelihood": {},
        "posterior_predictive": {},
    }
    for s in sites:
        site = guide_tr.nodes[s] if s in guide_tr.nodes else model_tr.nodes[s]
        fn = site["fn"]
        ed = len(fn.event_shape)
        value = _mask_values(_full(site["value"], fn), site, ed)
        out["posterior"][s] = _named(s, site, value, nesting, particles, event_dim=ed)
    for name, site in _sample_sites(model_tr):
        if not site["is_observed"]:
            continue
        fn = site["fn"]
        ed = len(fn.event_shape)
        obs, dims = _named(name, site, site["value"], nesting, False, event_dim=ed)
        out["observed_data"][name] = (obs[0], dims)
        if log_likelihood:
            out["log_likelihood"][name] = _point_log_lik(site, nesting, data_plate, particles)
        if predictive:
            draw = _mask_values(_full(fn.sample(), fn), site, ed)
            out["posterior_predictive"][name] = _named(
                name, site, draw, nesting, particles, event_dim=ed
            )
    return out


def _concat_runs(runs: list[dict[str, dict[str, _Named]]]) -> dict[str, dict[str, _Named]]:
    """The runs of one chunk joined along the draws dim (observed data from the first)."""
    out: dict[str, dict[str, _Named]] = {}
    for group, first in runs[0].items():
        if group == "observed_data":
            out[group] = dict(first)
            continue
        out[group] = {
            name: (torch.cat([r[group][name][0] for r in runs], 0), dims)
            for name, (_, dims) in first.items()
        }
    return out


def _concat_chunks(
    chunks: list[dict[str, dict[str, _Named]]], data_plate: str | None
) -> dict[str, dict[str, _Named]]:
    """Chunks joined along the data plate; variables outside it taken from the first."""
    out: dict[str, dict[str, _Named]] = {}
    for group, first in chunks[0].items():
        lead = 0 if group == "observed_data" else 1
        out[group] = {}
        for name, (value, dims) in first.items():
            if data_plate in dims and len(chunks) > 1:
                missing = [i for i, c in enumerate(chunks) if name not in c[group]]
                if missing:
                    raise ValueError(
                        f"site {name!r} is missing from the programs' run on chunk {missing[0]} "
                        "of the data; to_inference_data needs the same sites on every chunk. "
                        "Try a batch_size that holds all the data"
                    )
                axis = lead + dims.index(data_plate)
                value = torch.cat([c[group][name][0] for c in chunks], axis)
            out[group][name] = (value, dims)
    return out


def _global_trace(guide_tr: Any, data_plate: str | None) -> Any:
    """The guide's sample sites outside the data plate, to replay on later chunks."""
    tr = poutine.Trace()
    for name, site in _sample_sites(guide_tr):
        if not _in_plate(site, data_plate):
            tr.add_node(name, **site)
    return tr


def _draw_chunk(
    model: Callable,
    guide: Callable,
    xa: Any,
    total: int,
    per_run: int | None,
    globals_traces: list[Any] | None,
    run: Callable[..., dict[str, dict[str, _Named]]],
    nesting: int,
    enumerated: bool,
) -> tuple[dict[str, dict[str, _Named]], list[Any]]:
    """``total`` draws on one chunk: runs of ``per_run`` vectorised draws, or one draw at a
    time (``per_run=None``); returns the records and each run's guide trace."""
    runs, guides = [], []
    step = per_run or 1
    for i, start in enumerate(range(0, total, step)):
        k = min(step, total - start)
        particles = k if per_run is not None else None
        traces = _trace_pair(
            model,
            guide,
            xa,
            particles=particles,
            nesting=nesting,
            globals_trace=None if globals_traces is None else globals_traces[i],
            enumerated=enumerated,
        )
        if particles is not None:
            _check_vectorised(traces, particles, nesting)
        runs.append(run(traces, particles is not None))
        guides.append(traces[1])
    return _concat_runs(runs), guides


def _prior_draws(
    model: Callable,
    x: Any,
    dev: Any,
    draws: int,
    sites: Sequence[str],
    nesting: int,
    data_plate: str | None,
) -> dict[str, _Named]:
    """Ancestral draws of ``sites`` from the model alone: vectorised on one data point
    (the data plate dropped), else on all the data, else one draw at a time."""
    attempts = [(x.head(1).to(dev), True), (_all_rows(x, dev), True), (x.head(1).to(dev), False)]
    error: Exception | None = None
    for xa, vectorised in attempts:
        try:
            runs = []
            for _ in range(1 if vectorised else draws):
                particles = draws if vectorised else None
                with torch.no_grad(), poutine.block():
                    tr = poutine.trace(_vectorised(model, particles, nesting)).get_trace(
                        *xa.args, **xa.kwargs
                    )
                tr = prune_subsample_sites(tr)
                if particles is not None:
                    _check_vectorised((tr,), particles, nesting)
                one = {}
                for s in sites:
                    site = tr.nodes[s]
                    ed = len(site["fn"].event_shape)
                    value = _full(site["value"], site["fn"])
                    one[s] = _named(
                        s, site, value, nesting, vectorised, event_dim=ed, drop_plate=data_plate
                    )
                runs.append(one)
            return {s: (torch.cat([r[s][0] for r in runs]), runs[0][s][1]) for s in sites}
        except _VECTORISE_ERRORS as e:
            error = e
    raise type(error)(f"the prior draws failed: {error}") from error  # type: ignore[misc]


def _all_rows(x: Any, dev: Any) -> Any:
    """All the data as one call's arguments."""
    return next(iter(x.chunks(max(1, x.n), dev)))


def _unique_names(sites: Sequence[str], observed: Sequence[str]) -> dict[str, str]:
    """Variable name of each site: the site's name, except ``chain`` and ``draw`` (ArviZ's
    sample dims), which get ``_site`` appended (repeatedly, until the name is free)."""
    taken = set(sites) | set(observed)
    out = {}
    for s in [*sites, *observed]:
        name = s
        if s in _SAMPLE_DIMS:
            while name in taken or name in _SAMPLE_DIMS:
                name += "_site"
            taken.add(name)
        out[s] = name
    return out


def _dim_renames(groups: dict[str, dict[str, _Named]], var_names: set[str]) -> dict[str, str]:
    """Dim names that clash with a variable name (``plate_`` prefixed until free)."""
    dims = {d for g in groups.values() for _, ds in g.values() for d in ds}
    renames = {}
    for d in sorted(dims):
        new = d
        while new in var_names or new in _SAMPLE_DIMS or (new != d and new in dims):
            new = f"plate_{new}"
        if new != d:
            renames[d] = new
    return renames


def to_inference_data(
    model: Callable,
    guide: Callable,
    data: Any,
    num_samples: int = 100,
    *,
    chains: int = 2,
    latent_sites: Sequence[str] | None = None,
    prior: bool = True,
    prior_samples: int | None = None,
    log_likelihood: bool = True,
    posterior_predictive: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> Any:
    """Draws of the guide q(z | x), the prior and the data as ``arviz.InferenceData``.

    Works on any Pyro model/guide pair: local latents (one per data point, inside the
    data plate), global latents (outside it: eight schools' ``mu`` and ``tau``, the sites
    of an autoguide), discrete latents (sampled in the guide, or enumerated in the model
    only, which are then drawn from their exact conditional posterior given the guide's
    draws with :func:`pyro.infer.infer_discrete`), masked sites and programs taking
    several arguments.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking the data's arguments, ``model(*args, **kwargs)``.
    data : torch.Tensor, numpy.ndarray, tuple, list, dict or DataLoader
        Shape ``(N, ...)``, or the programs' arguments in any form
        :mod:`pyrocollapse.program_data` accepts (every batched argument cut along dim 0).
    num_samples : int
        Draws per chain.
    chains : int
        Independent chains of draws (default 2, so that ``arviz.summary``'s ``r_hat`` is
        defined; draws from q are independent, so chains differ only by their random
        numbers and ``r_hat`` is about 1 by construction).
    latent_sites : sequence of str or None
        Latent sites to include (default every latent site: the guide's, auxiliary sites
        of autoguides left out, and the model's enumerated sites).
    prior : bool
        Add the ``prior`` group: the latent sites drawn by running the model alone
        (ancestral sampling, so a hierarchical prior is sampled jointly) on one data point,
        the data plate dropped (on all the data where the program needs them, e.g. a
        plate of fixed size; the data plate is then kept).
    prior_samples : int or None
        Prior draws per chain (default ``max(num_samples, 1000)``, so that the prior's
        summaries are as precise as the aggregate posterior's).
    log_likelihood : bool
        Add the ``log_likelihood`` group: each observed site's log density (nats, its
        ``poutine.scale`` not applied) per data point under each draw, summed over the
        site's other plates and event dims. Masked elements (``.mask(m)``,
        ``poutine.mask``) are left out of the sum, and a point whose every element is
        masked is NaN (the padded steps of a sequence model), never 0 nats.
    posterior_predictive : bool
        Add the ``posterior_predictive`` group: one replicate of each observed site per
        draw, drawn from the site's distribution in the model replayed on the draw
        (masked elements NaN).
    batch_size : int
        Points per chunk. Programs whose plates cannot be cut (a plate of fixed size, a
        parameter per data point) run on all the data at once.
    device : str, torch.device or None
        Device each chunk is moved to (``None``: where the data are); the model is not
        moved (``vae.to(device)`` first). A device this machine lacks, or a model on
        another device, raises ``ValueError``. The returned arrays are NumPy (host) arrays
        whatever the device.
    seed : int or None
        Seed for the draws (the global RNG state is restored afterwards).

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior``, ``prior``, ``observed_data``, ``log_likelihood`` and
        ``posterior_predictive``, variables named after the Pyro sites. Dims are named
        after the Pyro plates (``<plate name>``, e.g. ``data``) and the sites' event
        dims (``<site>_dim_<i>``): a local latent ``z`` of a VAE has dims ``(chain, draw,
        data, z_dim_0)``, a global scalar ``mu`` has ``(chain, draw)``, the log-likelihood
        ``(chain, draw, data)``. The data plate is recorded in each group's attribute
        ``data_plate``. Values keep the programs' dtype (float32 for the ready models);
        integer sites with masked elements become float64 with NaN there. Coordinates are
        integer indices; attributes record that the draws come from a variational guide,
        not MCMC, and (``draw_method``) whether they were vectorised.

    Notes
    -----
    **No name clashes.** A dim named after a plate cannot share its name with a site
    (Pyro gives a plate a site of its own name), and event dims carry their site's name.
    Should a dim name still equal a variable name, the dim gets a ``plate_`` prefix. A
    site called ``chain`` or ``draw`` (ArviZ's sample dims) is stored as ``chain_site`` /
    ``draw_site``; every variable's attribute ``pyro_site`` names its site.

    **What the log-likelihood means, and** ``az.loo``. For local latents the
    ``log_likelihood`` group holds log p(x_n | z_n^(s), globals^(s)): the density of
    observation n given draw s of *its own* latent from q(z | x_n), which has seen x_n.
    It is not integrated over the posterior predictive of a new point, so ``az.loo``
    or ``az.waic`` computed on it is **not** the model's leave-one-out predictive
    accuracy: it scores how well each observation is reconstructed from its own
    encoding, and is optimistic (the more so the more the latent memorises x_n). For the
    model's predictive density of a point use the importance-weighted estimate
    :func:`pyrocollapse.diagnostics.iw_log_likelihood`, log p(x_n) with the local
    latents integrated out. For programs with global latents only (eight schools' theta
    aside), ``az.loo`` has its usual meaning, for the variational posterior instead of
    the exact one.

    **Posterior predictive.** ``pyro.infer.Predictive(model, guide=guide)`` keeps an
    observed site at its data when the model is called with the observations (it
    resamples ``obs=`` sites only when the program's observation argument is ``None``,
    which depends on each program's signature). Here each observed site is drawn from its
    distribution in the model trace replayed on the posterior draw, ``site["fn"].sample()``,
    whatever the signature. Where an observed site's distribution depends on another
    observed site (an autoregressive likelihood), the replicate is conditioned on the
    observed values (one step ahead), not on the replicates.

    **Vectorisation and modules.** The draws of a chunk run as a vectorised plate of
    draws left of the programs' plates; programs that do not broadcast over it (boolean-
    mask indexing, a batch flattened into a network, a fixed-size plate that meets the
    draws) run one draw at a time instead (``draw_method`` attribute). Every
    ``nn.Module`` behind the programs (a module, a method bound to one, or one held by a
    closure) is in eval mode during the draws (dropout off, BatchNorm's running
    statistics used and left unchanged) and its train/eval flags are restored afterwards.

    References
    ----------
    Kumar, Carroll, Hartikainen, Martin (2019). ArviZ a unified library for exploratory
    analysis of Bayesian models in Python. JOSS 4(33).
    Vehtari, Gelman, Gabry (2017). Practical Bayesian model evaluation using leave-one-out
    cross-validation and WAIC. Statistics and Computing 27(5).
    """
    from pyrocollapse import __version__
    from pyrocollapse.diagnostics._tracing import (
        _check_inputs,
        _effective_device,
        _seeded,
        _setup_device,
        eval_mode,
    )

    az = _arviz()
    num_samples = check_int("num_samples", num_samples, minimum=1)
    chains = check_int("chains", chains, minimum=1)
    prior = check_bool("prior", prior)
    log_likelihood = check_bool("log_likelihood", log_likelihood)
    posterior_predictive = check_bool("posterior_predictive", posterior_predictive)
    prior_samples = (
        max(num_samples, 1000)
        if prior_samples is None
        else check_int("prior_samples", prior_samples, minimum=1)
    )
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    dev = _setup_device(model, guide, x, device)
    if latent_sites is not None and (
        isinstance(latent_sites, str) or not all(isinstance(s, str) for s in latent_sites)
    ):
        raise TypeError(f"latent_sites must be a sequence of site names; got {latent_sites!r}")
    total = chains * num_samples
    with _seeded(seed, _effective_device(x, dev)), eval_mode(model, guide):
        chunked = x.n > batch_size
        first = next(iter(x.chunks(batch_size, dev)))
        try:
            probe = _trace_pair(model, guide, first, particles=None, nesting=1)
        except _VECTORISE_ERRORS:
            if not chunked:
                raise
            chunked, first = False, _all_rows(x, dev)  # e.g. a plate of fixed size
            probe = _trace_pair(model, guide, first, particles=None, nesting=1)
        model_tr, guide_tr = probe
        nesting = _plate_nesting(probe)
        names = [
            s
            for s, site in _sample_sites(guide_tr)
            if not site["is_observed"]
            and s in model_tr.nodes
            and not site["infer"].get("is_auxiliary")
        ]
        enumerated = [
            s
            for s, site in _sample_sites(model_tr)
            if not site["is_observed"]
            and s not in guide_tr.nodes
            and site["infer"].get("enumerate") == "parallel"
        ]
        names += enumerated
        sites = names if latent_sites is None else list(latent_sites)
        missing = [s for s in sites if s not in names]
        if missing:
            raise ValueError(
                f"latent sites {missing} are not latent sites of the programs; found {names}"
            )
        observed = [s for s, site in _sample_sites(model_tr) if site["is_observed"]]
        rows = first.leading_size() or x.n
        data_plate = _find_data_plate(probe, names, rows)
        chunked = chunked and data_plate is not None
        per_run: int | None = max(1, min(total, _ROWS_PER_RUN // max(1, rows)))

        def run(traces: tuple[Any, Any], particles: bool) -> dict[str, dict[str, _Named]]:
            return _records(
                traces,
                sites,
                nesting,
                data_plate,
                particles,
                log_likelihood=log_likelihood,
                predictive=posterior_predictive,
            )

        chunks = iter(x.chunks(batch_size, dev)) if chunked else iter([first])
        xa = next(chunks)
        args = (model, guide, xa, total)
        try:
            records, guides = _draw_chunk(*args, per_run, None, run, nesting, bool(enumerated))
        except _VECTORISE_ERRORS:
            per_run = None  # the programs do not broadcast over a plate of draws
            records, guides = _draw_chunk(*args, per_run, None, run, nesting, bool(enumerated))
        found = [records]
        replay = [_global_trace(g, data_plate) for g in guides]
        for xa in chunks:
            found.append(
                _draw_chunk(
                    model, guide, xa, total, per_run, replay, run, nesting, bool(enumerated)
                )[0]
            )
        groups_t = _concat_chunks(found, data_plate)
        if prior:
            groups_t["prior"] = _prior_draws(
                model, x, dev, chains * prior_samples, sites, nesting, data_plate
            )
    if not log_likelihood:
        del groups_t["log_likelihood"]
    if not posterior_predictive:
        del groups_t["posterior_predictive"]
    var_of = _unique_names(names, observed)
    renames = _dim_renames(groups_t, set(var_of.values()))
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "pyrocollapse",
        "creation_library_version": __version__,
        "posterior_kind": "draws of a variational guide q(z | x), not MCMC",
        "data_plate": renames.get(data_plate, data_plate) if data_plate is not None else "",
        "draw_method": "vectorised" if per_run is not None else "one draw at a time",
    }
    kinds = {
        "prior": "ancestral draws of the model's latent sites",
        "log_likelihood": "log p(x_n | draws of x_n's own latents); not a predictive density",
        "posterior_predictive": "observed sites drawn from the model replayed on each draw",
    }
    groups: dict[str, Any] = {}
    for group, tensors in groups_t.items():
        draws = prior_samples if group == "prior" else num_samples
        lead = [] if group == "observed_data" else [chains, draws]
        data_vars, dims, coords = {}, {}, {}
        for site, (value, site_dims) in tensors.items():
            arr = _numpy(value)
            arr = arr.reshape(*lead, *arr.shape[1 if lead else 0 :])
            var = var_of[site]
            data_vars[var] = arr
            dims[var] = [renames.get(d, d) for d in site_dims]
            for d, size in zip(dims[var], arr.shape[len(lead) :], strict=True):
                coords[d] = np.arange(size)
        ds = az.dict_to_dataset(
            data_vars,
            coords=coords,
            dims=dims,
            attrs={**attrs, f"{group}_kind": kinds.get(group, "")} if group in kinds else attrs,
            library=None,
            **({"default_dims": []} if not lead else {}),
        )
        for site in tensors:
            ds[var_of[site]].attrs["pyro_site"] = site
        groups[group] = ds
    return az.InferenceData(**groups)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def save_inference_data(idata: Any, path: str | os.PathLike[str]) -> None:
    """Write ``idata`` to netCDF (h5netcdf engine) atomically: a temporary file beside
    ``path`` renamed over it, so a failed write leaves no partial file."""
    from pyrocollapse._io import atomic_write

    _check_idata(idata)
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp, engine="h5netcdf"))


def _check_idata(idata: Any) -> Any:
    """Import ArviZ; TypeError unless ``idata`` is an ``arviz.InferenceData``."""
    az = _arviz()
    if not isinstance(idata, az.InferenceData):
        raise TypeError(
            f"idata must be an arviz.InferenceData (e.g. from to_inference_data), "
            f"got {type(idata).__name__}"
        )
    return az


def load_inference_data(path: str | os.PathLike[str]) -> Any:
    """Read InferenceData written by :func:`save_inference_data` (values, dims, coords
    and attributes unchanged)."""
    az = _arviz()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no InferenceData file at {str(path)!r}")
    try:
        return az.from_netcdf(str(path), engine="h5netcdf")
    except (OSError, ValueError) as e:
        raise ValueError(
            f"path {str(path)!r} is not an InferenceData netCDF file "
            f"(as save_inference_data writes): {e}"
        ) from None


def _pooled_dims(array: Any, data_plate: str) -> np.ndarray:
    """A variable's values as ``(chain, draw, points, dimensions)``: the data plate (size 1
    when absent) and every other dim flattened into one axis of dimensions."""
    rest = [d for d in array.dims[2:] if d != data_plate]
    local = data_plate in array.dims
    values = array.transpose("chain", "draw", *([data_plate] if local else []), *rest).values
    c, s = values.shape[:2]
    n = values.shape[2] if local else 1
    return values.reshape(c, s, n, -1)


def summarize(
    idata: Any,
    *,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
) -> Any:
    """Per-latent-dimension table: the posterior aggregated over observations next to
    the prior, so that collapse shows as q matching p.

    For each latent site and dimension (rows ``"<site>[d]"``), built on
    ``arviz.summary(kind="stats")``:

    * ``mean``, ``sd``, ``hdi_<lo>%``, ``hdi_<hi>%``: the aggregate posterior q(z_d), all
      draws of all observations pooled;
    * ``prior_mean``, ``prior_sd``, ``prior_hdi_<lo>%``, ``prior_hdi_<hi>%``: the prior;
    * ``obs_sd``: the average over observations of the sd of q(z_d | x_n);
    * ``sd_ratio``: ``obs_sd / prior_sd``; about 1 for a collapsed dimension (every
      posterior is the prior), below 1 for an informative one;
    * ``rhat_obs``: ``arviz.rhat(method="identity")`` with the observations as chains,
      about 1 when q(z_d | x) does not depend on x (see
      :func:`pyrocollapse.diagnostics.datapoint_rhat`).

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`to_inference_data` (needs ``posterior`` and ``prior``). The
        observations are the dim of the data plate (the groups' ``data_plate``
        attribute; ``obs`` in files written before it); every other dim of a site is
        flattened into its dimensions. A global site counts as one observation, so its
        ``obs_sd`` is the sd of its draws and its ``rhat_obs`` is NaN.
    var_names : sequence of str or None
        Latent sites to summarise (default every posterior variable).
    hdi_prob : float
        Probability mass of the highest-density intervals.

    Returns
    -------
    pandas.DataFrame
        One row per (site, dimension), the columns above plus ``site`` and ``dim``.

    Notes
    -----
    ``summarize`` takes no ``device``: it reads the NumPy arrays of ``idata``, which
    :func:`to_inference_data` always brings back to the host, so it runs on the CPU
    whatever device the draws were made on.

    References
    ----------
    Kumar, Carroll, Hartikainen, Martin (2019). ArviZ. JOSS 4(33).
    Gelman & Rubin (1992). Inference from Iterative Simulation Using Multiple Sequences.
    Statistical Science 7(4).
    """
    import pandas as pd
    import xarray as xr

    az = _check_idata(idata)
    hdi_prob = check_float("hdi_prob", hdi_prob, minimum=0.0, maximum=1.0, strict_minimum=True)
    for group in ("posterior", "prior"):
        if not hasattr(idata, group):
            raise ValueError(
                f"idata has no {group!r} group; build it with to_inference_data(..., prior=True)"
            )
    names = list(idata.posterior.data_vars) if var_names is None else list(var_names)
    missing = [n for n in names if n not in idata.posterior.data_vars]
    if missing:
        raise ValueError(
            f"var_names {missing} are not posterior variables; found {list(idata.posterior.data_vars)}"
        )
    data_plate = idata.posterior.attrs.get("data_plate", "obs")  # files before 0.x: "obs"
    tables = []
    for name in names:
        values = _pooled_dims(idata.posterior[name], data_plate)  # (C, S, N, D)
        if name not in idata.prior.data_vars:
            raise ValueError(f"the prior group has no variable {name!r}")
        prior_values = _pooled_dims(idata.prior[name], data_plate)
        c, s, n, d = values.shape
        dim = f"{name}_dim"
        pooled = xr.Dataset(
            {name: (("chain", "draw", dim), values.reshape(c, s * n, d))},
            coords={"chain": np.arange(c), "draw": np.arange(s * n), dim: np.arange(d)},
        )
        stats = az.summary(pooled, kind="stats", hdi_prob=hdi_prob, round_to="none")
        pc, ps, pn, _ = prior_values.shape
        prior_pooled = xr.Dataset(
            {name: (("chain", "draw", dim), prior_values.reshape(pc, ps * pn, d))},
            coords={"chain": np.arange(pc), "draw": np.arange(ps * pn), dim: np.arange(d)},
        )
        prior_stats = az.summary(
            prior_pooled, kind="stats", hdi_prob=hdi_prob, round_to="none"
        ).add_prefix("prior_")
        obs_sd = values.std(axis=1, ddof=1).mean(axis=(0, 1)) if s > 1 else np.full(d, np.nan)
        as_chains = xr.Dataset(
            {name: (("chain", "draw", dim), values.transpose(0, 2, 1, 3).reshape(c * n, s, d))},
            coords={"chain": np.arange(c * n), "draw": np.arange(s), dim: np.arange(d)},
        )
        rhat = (
            az.rhat(as_chains, method="identity")[name].values
            if s > 1 and n > 1
            else np.full(d, np.nan)
        )
        table = stats.join(prior_stats)
        table.insert(0, "dim", np.arange(d))
        table.insert(0, "site", name)
        table["obs_sd"] = obs_sd
        table["sd_ratio"] = obs_sd / table["prior_sd"].to_numpy()
        table["rhat_obs"] = rhat
        tables.append(table)
    return pd.concat(tables)
