"""Shared machinery of the diagnostics: inputs, devices and seeds; tracing guide and
model on chunks of data (plate layout, per-point densities, :class:`SiteDraw`); bootstrap
resampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse._distributions import as_vector, strip_mask, take_rows, unwrap
from pyrocollapse._validation import (
    check_data,
    check_device,
    check_float,
    check_int,
    module_device,
    program_dtype,
    program_modules,
)
from pyrocollapse.diagnostics._plates import data_plate_name
from pyrocollapse.program_data import ProgramArgs, ProgramData, as_program_data

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
def _check_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    """Data given as one tensor: floating and finite, or integer; non-empty."""
    if not x.is_floating_point():
        return check_data(name, x, floating=False)
    return check_data(name, x)


def _check_inputs(
    data: object, batch_size: object, *programs: Callable
) -> tuple[ProgramData, int]:
    """``data`` in any form :mod:`pyrocollapse.program_data` accepts, as
    :class:`~pyrocollapse.program_data.ProgramData` (floating data in the dtype of the
    ``programs``' parameters, :func:`~pyrocollapse._validation.program_dtype`), and
    ``batch_size`` checked."""
    dtype = program_dtype(*programs) if programs else None
    x = as_program_data(data, "data", tensor_check=_check_tensor, dtype=dtype)
    return x, check_int("batch_size", batch_size, minimum=1)


def _as_args(x: ProgramArgs | torch.Tensor) -> ProgramArgs:
    """One call's arguments (a tensor is the single positional argument)."""
    return x if isinstance(x, ProgramArgs) else ProgramArgs((x,), {}, int(x.shape[0]))


def _rows(xb: ProgramArgs) -> int:
    """Number of data points in a chunk."""
    n = xb.leading_size()
    return 0 if n is None else n


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
    model: Callable, guide: Callable, x: ProgramData | torch.Tensor, device: object
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


def _effective_device(x: ProgramData | torch.Tensor, device: torch.device | None) -> torch.device:
    return x.device if device is None else device


def _chunks(x: ProgramData, batch_size: int, device: torch.device | None) -> Iterator[ProgramArgs]:
    """Consecutive chunks of at most ``batch_size`` data points, moved to ``device``."""
    return x.chunks(batch_size, device)


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


def _vectorised(
    fn: Callable, particles: int | None, nesting: int, plate: str = _PARTICLES
) -> Callable:
    """``fn`` inside a plate of ``particles`` draws left of its ``nesting`` plate dims
    (``fn`` itself when ``particles`` is ``None``)."""
    if particles is None:
        return fn

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(plate, particles, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


def _run(
    model: Callable,
    guide: Callable,
    x: ProgramArgs | torch.Tensor,
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
    xa = _as_args(x)
    if particles is not None and guide_trace is None and not values:
        try:
            traces = _run_once(model, guide, xa, particles, nesting, None, None)
            if _has_particle_dim(traces, particles, nesting):
                return traces
        except _VECTORISE_ERRORS:
            pass
        # the programs do not broadcast over a sample dimension (boolean-mask indexing,
        # a fixed-size plate, reshapes of the batch): one run per draw, stacked
        runs = [_run_once(model, guide, xa, None, nesting, None, None) for _ in range(particles)]
        return _stack_traces([r[0] for r in runs], nesting), _stack_traces(
            [r[1] for r in runs], nesting
        )
    return _run_once(model, guide, xa, particles, nesting, guide_trace, values)


#: Exceptions of a vectorised run after which :func:`_run` runs one draw at a time.
_VECTORISE_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


def _run_once(
    model: Callable,
    guide: Callable,
    xa: ProgramArgs,
    particles: int | None,
    nesting: int,
    guide_trace: Any,
    values: dict[str, torch.Tensor] | None,
) -> tuple[Any, Any]:
    with poutine.block(), eval_mode(model, guide):
        if guide_trace is None:
            guide_trace = poutine.trace(_vectorised(guide, particles, nesting)).get_trace(
                *xa.args, **xa.kwargs
            )
        replay = guide_trace
        if values:
            replay = guide_trace.copy()
            for name, value in values.items():
                replay.nodes[name] = {**replay.nodes[name], "value": value}
        model_trace = poutine.trace(
            poutine.replay(_vectorised(model, particles, nesting), trace=replay)
        ).get_trace(*xa.args, **xa.kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _has_particle_dim(traces: tuple[Any, Any], particles: int, nesting: int) -> bool:
    """Whether every sample site of a vectorised run carries the particle dimension (a
    program that reshapes its batch can lose it without an error)."""
    if particles == 1:
        return True
    for tr in traces:
        for _, site in _sample_sites(tr):
            fn = site["fn"]
            batch = tuple(fn.batch_shape)
            full = (1,) * (nesting + 1 - len(batch)) + batch
            if len(full) < nesting + 1 or full[-(nesting + 1)] != particles:
                return False
    return True


def _stack_traces(traces: list[Any], nesting: int) -> Any:
    """One trace holding ``len(traces)`` single-draw traces as a particle dimension at
    ``-(nesting + 1)`` of every sample site (values and distributions), as a vectorised
    run would have given."""
    out = traces[0].copy()
    for name, site in _sample_sites(traces[0]):
        sites = [tr.nodes[name] for tr in traces]
        event = len(site["fn"].event_shape)
        values = [_pad_batch(s["value"], event, nesting) for s in sites]
        out.nodes[name] = {
            **site,
            "value": torch.stack(values),
            "fn": _Stacked([s["fn"] for s in sites], nesting),
        }
    return out


def _pad_batch(t: torch.Tensor, event: int, nesting: int) -> torch.Tensor:
    """``t`` with size-1 batch dimensions on the left up to ``nesting`` batch dims."""
    batch = t.dim() - event
    return t.reshape((1,) * max(0, nesting - batch) + tuple(t.shape))


class _Stacked(dist.TorchDistribution):
    """Distributions of separate single-draw runs, stacked along a leading draw
    dimension (batch shape ``(K, *nesting batch dims)``)."""

    arg_constraints: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self, fns: list[Any], nesting: int) -> None:
        self.fns, self.nesting = fns, nesting
        event = fns[0].event_shape
        batches = [(1,) * max(0, nesting - len(f.batch_shape)) + tuple(f.batch_shape) for f in fns]
        batch = torch.broadcast_shapes(*batches)
        super().__init__(torch.Size((len(fns), *batch)), event, validate_args=False)

    @property
    def support(self) -> Any:
        return self.fns[0].support

    @property
    def has_rsample(self) -> bool:
        return self.fns[0].has_rsample

    def _stack(self, parts: list[torch.Tensor], event: int) -> torch.Tensor:
        return torch.stack([_pad_batch(p, event, self.nesting) for p in parts])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._stack([f.log_prob(value[k]) for k, f in enumerate(self.fns)], 0)

    @property
    def mean(self) -> torch.Tensor:
        return self._stack([f.mean for f in self.fns], len(self.event_shape))

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        e = len(self.event_shape)
        out = []
        for f in self.fns:
            p = f.sample(shape)
            pad = max(0, self.nesting - (p.dim() - len(shape) - e))
            out.append(p.reshape(tuple(shape) + (1,) * pad + tuple(p.shape[len(shape) :])))
        return torch.stack(out, len(shape))


class eval_mode:
    """Context manager: the ``nn.Module`` s behind ``fns`` in evaluation mode (dropout
    off, BatchNorm on its running statistics, which then do not change), restored to
    their exact previous modes on exit.

    The modules are the programs themselves when they are modules (autoguides,
    ``PyroModule`` models), the modules whose methods they are (``vae.model``), and
    modules a program's closure holds (a function calling ``pyro.module("net", net)``).
    """

    def __init__(self, *fns: Callable) -> None:
        self.modules: list[torch.nn.Module] = program_modules(*fns)
        self.saved: list[tuple[torch.nn.Module, bool]] = []

    def __enter__(self) -> eval_mode:
        self.saved = [(sub, sub.training) for m in self.modules for sub in m.modules()]
        for m in self.modules:
            m.eval()
        return self

    def __exit__(self, *exc: object) -> None:
        for sub, training in self.saved:
            sub.training = training


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


#: Most rows of a program that runs only on its whole data set (see :func:`_probe_whole`).
_WHOLE_PROBE_ROWS = 20000
#: Exceptions of a failed probe run that get the probe's context added to their message.
_PROBE_ERRORS = (ValueError, TypeError, RuntimeError, IndexError)


def _expected_shape(model: Callable) -> str:
    """``" (the model takes (N, 64))"`` when the program belongs to a ready model."""
    shape = getattr(getattr(model, "__self__", None), "event_shape", None)
    if isinstance(shape, tuple) and all(isinstance(v, int) for v in shape) and shape:
        return f"; the model takes (N, {', '.join(map(str, shape))})"
    return ""


def _probe(
    model: Callable,
    guide: Callable,
    x: ProgramData | torch.Tensor,
    device: torch.device | None = None,
) -> tuple[Any, Any]:
    """Trace guide and model on the first two points of ``x`` (moved to ``device``).

    The probe finds the latent sites and the plates; when it fails, the error keeps its
    type and message and says what was traced and how to fix the usual causes (data of
    the wrong shape, a plate sized by a fixed number instead of ``x.shape[0]``).
    """
    return _probe_whole(model, guide, x, device)[0]


def _probe_whole(
    model: Callable,
    guide: Callable,
    x: ProgramData | torch.Tensor,
    device: torch.device | None = None,
) -> tuple[tuple[Any, Any], bool]:
    """:func:`_probe`, and whether the programs run only on the whole data.

    Programs with a plate of fixed size (eight schools), per-point guide parameters (a
    mixture's per-point logits) or a subsampling plate fail on two points; when they run
    on the whole data (at most :data:`_WHOLE_PROBE_ROWS` rows), the returned flag is
    True and the caller diagnoses the data in one chunk.
    """
    if not isinstance(x, ProgramData):
        x = as_program_data(x, dtype=program_dtype(model, guide))
    data = x
    probe = data.head(2).to(device)
    store = pyro.get_param_store()
    before = set(store.keys())

    def forget_new_params() -> None:
        # parameters a program creates on its first call may be sized by the two points
        # (per-point logits): the probe must not leave them in the store
        for name in set(store.keys()) - before:
            del store[name]

    try:
        with torch.no_grad():
            traces = _run(model, guide, probe)
        forget_new_params()
        return traces, False
    except _PROBE_ERRORS as e:
        if type(e) not in _PROBE_ERRORS:
            raise
        forget_new_params()
        if 2 < data.n <= _WHOLE_PROBE_ROWS:
            try:
                with torch.no_grad():
                    return _run(model, guide, data.head(data.n).to(device)), True
            except _PROBE_ERRORS:
                pass
        tensor = data.tensor
        if tensor is not None:
            traced = (
                f"data[:2] (shape {tuple(probe.args[0].shape)}; data has shape "
                f"{tuple(tensor.shape)}{_expected_shape(model)})"
            )
        else:
            traced = (
                f"the first two data points, model{probe.describe()} (data: "
                f"{data.describe()}, every batched argument cut along dim 0)"
            )
        raise type(e)(
            f"{e}\n\nWhile tracing the model and guide on {traced}, "
            "which the diagnostics do to find the latent sites and plates before running on "
            "chunks of batch_size points. Try one of the following fixes:\n"
            "- pass data with one observation per row of dim 0, with the trailing shape the "
            "model takes (e.g. data.reshape(len(data), -1) for a model of flat vectors)\n"
            "- size the data plate from the batch, pyro.plate('data', x.shape[0]), not from a "
            "fixed number of points: the programs must run on any number of rows (programs "
            "that run on the whole data only are diagnosed in one chunk, which failed too)"
        ) from e


def _layout(
    model: Callable,
    guide: Callable,
    x: ProgramData | torch.Tensor,
    traces: tuple[Any, Any] | None = None,
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

    return _Layout(nesting, data_plate_name(model_tr, guide_tr))


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
