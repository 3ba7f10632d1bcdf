"""The draws behind :func:`pyrocollapse.summaries.to_inference_data`: tracing the model and
guide vectorised over draws, naming every dimension after its plate, and collecting
posterior, prior, log-likelihood and predictive draws as ``(tensor, dim names)`` pairs.

No ArviZ here: :mod:`pyrocollapse.summaries`, the ArviZ adapter, turns the pairs into
``InferenceData``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse.diagnostics._programs import _VECTORISE_ERRORS, _sample_sites
from pyrocollapse.diagnostics._programs import _vectorised as _vectorised_in

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
    """``fn`` in the plate of draws (see :func:`pyrocollapse.diagnostics._programs._vectorised`)."""
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
