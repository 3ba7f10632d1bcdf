"""Running the guide and model on data: inputs checked and cut into chunks, devices,
seeds, evaluation mode; tracing the programs on a chunk (vectorised over a plate of
draws, or one draw at a time stacked), the latent and observed site names of the traces,
the probe on two points that finds them, and the programs' plate layout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse._validation import (
    check_data,
    check_device,
    check_int,
    module_device,
    program_dtype,
    program_modules,
)
from pyrocollapse.diagnostics._plates import data_plate_name
from pyrocollapse.program_data import ProgramArgs, ProgramData, as_program_data

#: Name of the vectorised plate of draws the programs run in (see :func:`_vectorised`).
_PARTICLES = "_pyrocollapse_particles"


# --------------------------------------------------------------------------------------
# Inputs, devices, seeds
# --------------------------------------------------------------------------------------
def _check_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    """Data given as one tensor: floating and finite, or integer; non-empty."""
    if not x.is_floating_point():
        return check_data(name, x, floating=False)
    return check_data(name, x)


def _check_inputs(data: object, batch_size: object, *programs: Callable) -> tuple[ProgramData, int]:
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
