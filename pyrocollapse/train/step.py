"""One optimisation step of :func:`~pyrocollapse.train.fit`, its non-finite checks and
aggressive mode's encoder loop."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger

from pyrocollapse.program_data import (
    ProgramArgs,
)
from pyrocollapse.train.optim import _current_lr, _step_scheduler
from pyrocollapse.train.sources import _LoaderSource, _MemorySource, _signature_hint
from pyrocollapse.train.state import NonFiniteLossError, TrainState


class _PlateCounter(Messenger):
    """Records how many data points a model run stands for, as a stock Pyro ELBO sees it:
    at the first observed site, the size of its outermost plate (the one entered first;
    a vectorised particle plate excluded) times the site's scale (plate subsampling and
    ``poutine.scale``). With no plate around it, 1."""

    def __init__(self) -> None:
        super().__init__()
        self.value: float | None = None

    def _postprocess_message(self, msg: dict[str, Any]) -> None:
        if self.value is not None or msg["type"] != "sample" or not msg["is_observed"]:
            return
        frames = [
            f for f in msg["cond_indep_stack"] if f.vectorized and f.name not in _PARTICLE_PLATES
        ]
        if not frames:
            self.value = 1.0
            return
        outer = max(frames, key=lambda f: -f.dim)  # the leftmost dim: entered first
        scale = msg["scale"]
        scale = float(scale.mean()) if isinstance(scale, torch.Tensor) else float(scale)
        self.value = float(outer.size) * scale


#: Names of the vectorised particle plates of Pyro's ELBOs and of pyrocollapse's.
_PARTICLE_PLATES = frozenset({"num_particles_vectorized", "_pyrocollapse_particles"})


def _train_step(
    state: TrainState,
    xb: ProgramArgs,
    clip_norm: float | None,
    params: Sequence[torch.Tensor] | None = None,
    *,
    outer: bool = True,
    clip_value: float | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One optimisation step; returns the ELBO components and batch KL per dimension.

    ``params``: update only these (``None``: all). ``outer``: a decoder/joint step, which
    advances the objective's schedule and ``state.step``; encoder-only inner steps do not.
    Raises :class:`NonFiniteLossError` before the optimiser steps when the loss or the
    gradient norm is not finite (one host synchronisation per step).
    """
    loss_fn = state.loss
    state.optimizer.zero_grad(set_to_none=True)
    checks = is_validation_enabled() and (state.validate or not state._validated)
    rng = _rng_snapshot(state._rng_devices)
    counter = state._counter
    model = state.model
    if counter is not None:
        counter.value = None
        model = state._counted_model
    with pyro.validation_enabled(checks):
        try:
            loss = loss_fn.differentiable_loss(model, state.guide, *xb.args, **xb.kwargs)
        except TypeError as e:
            hint = None if state._validated else _signature_hint(e, xb)
            if hint is None:
                raise
            raise hint from e
    state._validated = True
    if params is None:
        loss.backward()
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
    else:
        loss.backward(inputs=list(params))
    norm = _grad_norm(params, clip_norm)
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clip_value)
    if state._param_clip:
        _clip_per_param(state._param_clip, params)
    loss = loss.detach()
    # the norm is >= 0 or NaN: the sum is finite exactly when both are (barring overflow)
    if not bool(torch.isfinite(norm + loss.to(norm.device))):
        _raise_non_finite(state, xb, params, loss, norm, rng, outer)
    state._lr = _current_lr(state.optimizer)
    state.optimizer.step()
    last = getattr(loss_fn, "last", None) if counter is None else None
    if last is not None:
        comps, dims = dict(last.components), dict(last.kl_per_dim)
    else:
        if counter is not None and counter.value is not None:
            state._num_data = counter.value  # else (a compiled model) the last one seen
        value = float(loss)
        comps, dims = {"loss": value, "elbo": -value, "num_data": state._num_data}, {}
    if outer:
        if hasattr(loss_fn, "step"):
            loss_fn.step()
        state.step += 1
        if state.scheduler is not None and state._scheduler_step == "step":
            _step_scheduler(state.scheduler, comps["loss"] / max(comps["num_data"], 1e-12))
    return comps, dims


def _clip_per_param(
    clip: Sequence[tuple[torch.Tensor, dict[str, float]]], params: Sequence[torch.Tensor]
) -> None:
    """A ``PyroOptim``'s ``clip_args``: each parameter's gradient clipped on its own."""
    updating = {id(p) for p in params}
    for p, args in clip:
        if p.grad is None or id(p) not in updating:
            continue
        if "clip_norm" in args:
            torch.nn.utils.clip_grad_norm_(p, args["clip_norm"])
        if "clip_value" in args:
            torch.nn.utils.clip_grad_value_(p, args["clip_value"])


def _grad_norm(params: Sequence[torch.Tensor], clip_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients (before clipping), clipping them to ``clip_norm``."""
    if clip_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    first = grads[0]
    if all(g.device == first.device and g.dtype == first.dtype for g in grads):
        # one fused kernel; get_total_norm adds ~20 us of grouping in Python per step
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:  # torch >= 2.6
        return get_total_norm(grads)
    norms = [torch.linalg.vector_norm(g).to(grads[0].device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def _rng_snapshot(cuda: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Torch RNG states (CPU, and the given CUDA devices) before a step, to replay it."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in cuda]


def _raise_non_finite(
    state: TrainState,
    xb: ProgramArgs,
    params: Sequence[torch.Tensor],
    loss: torch.Tensor,
    norm: torch.Tensor,
    rng: tuple[torch.Tensor, list[torch.Tensor]],
    outer: bool,
) -> None:
    """Name the failing term and raise :class:`NonFiniteLossError`."""
    kind = "loss" if not bool(torch.isfinite(loss)) else "gradient"
    step = state.step + 1
    where = f"epoch {state.epoch}, step {step} (minibatch {state.batch} of the epoch"
    where += ")" if outer else ", an encoder-only step of aggressive mode before it)"
    what = f"loss {float(loss)}" if kind == "loss" else f"gradient (global norm {float(norm)})"
    term, site, detail = _find_non_finite_term(state, xb, params, rng, kind)
    if state.checkpoint is not None:
        last = f"the last good checkpoint, {state.checkpoint!r}, is intact"
    else:
        last = "no checkpoint was written (pass checkpoint_dir to fit to keep one)"
    raise NonFiniteLossError(
        f"non-finite {what} at {where}: {detail}. The parameters keep their values from "
        f"before this step; {last}. Try a lower learning rate, clip_norm, or a model whose "
        "likelihood and prior stay finite",
        epoch=state.epoch,
        step=step,
        kind=kind,
        term=term,
        site=site,
        checkpoint=state.checkpoint,
    )


def _find_non_finite_term(
    state: TrainState,
    xb: ProgramArgs,
    params: Sequence[torch.Tensor],
    rng: tuple[torch.Tensor, list[torch.Tensor]],
    kind: str,
) -> tuple[str | None, str | None, str]:
    """Re-evaluate the failing minibatch with the RNG state from before the step and
    check the reconstruction, KL and remaining terms (or their gradients) one by one.

    Returns ``(term, site, description)``; ``term`` is ``"reconstruction"``, ``"kl"``,
    ``"extra"`` or ``None`` (not found).
    """
    # the uncompiled evaluation where the objective has one: it keeps the terms
    evaluate = getattr(state.loss, "evaluate_eager", None) or getattr(state.loss, "evaluate", None)
    name = type(state.loss).__name__
    if evaluate is None:
        why = f"the objective ({name}) does not expose its terms; use a pyrocollapse ELBO to have "
        return None, None, why + "the failing term named"
    cpu, cuda = rng
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=state._rng_devices))
            stack.enter_context(warnings.catch_warnings())
            stack.enter_context(pyro.validation_enabled(False))
            warnings.simplefilter("ignore")
            torch.set_rng_state(cpu)
            for i, s in zip(state._rng_devices, cuda, strict=True):
                torch.cuda.set_rng_state(s, i)
            ev = evaluate(state.model, state.guide, *xb.args, **xb.kwargs)
            n = len(ev.terms)
            if n == 0:
                why = f"the evaluation of {name} exposes no terms, so the failing term could not "
                return None, None, why + "be identified"
            parts: list[tuple[str, str | None, torch.Tensor]] = []
            for t in ev.terms:
                parts += [("reconstruction", k, v / n) for k, v in t.observed.items()]
                parts += [("kl", k, lt.total / n) for k, lt in t.latent.items()]
            parts.append(("extra", None, ev.loss))  # the whole loss: blamed on the rest
            for term, site, value in parts:
                label = (
                    f"the {_TERM_NAMES[term]} of site {site!r}"
                    if site
                    else f"an extra term ({_EXTRA})"
                )
                if kind == "loss" and not bool(torch.isfinite(value)):
                    if site is None:
                        label = f"the reconstruction and KL terms are finite; {label}"
                    return term, site, f"{label} is {float(value)}"
                if kind == "gradient" and value.requires_grad:
                    grads = torch.autograd.grad(
                        value, list(params), retain_graph=True, allow_unused=True
                    )
                    if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
                        if site is None:
                            label = f"the reconstruction and KL gradients are finite; {label}"
                        return term, site, f"{label} has a non-finite gradient"
    except Exception as e:  # the diagnosis must never hide the original failure
        return None, None, f"the failing term could not be identified (re-evaluation raised {e!r})"
    why = "re-evaluating the minibatch with the same random draws gave finite values, so the "
    return None, None, why + "failing term could not be identified"


_TERM_NAMES = {"reconstruction": "reconstruction term", "kl": "KL term", "extra": "extra term"}
#: What "extra" covers: everything in the loss besides reconstruction and KL.
_EXTRA = "auxiliary guide-only sites or a term the objective adds"


@dataclass
class _InnerLoop:
    """The encoder-only loop of aggressive training (He et al. 2019, Algorithm 1).

    Updates the guide parameters on fresh random minibatches (see
    ``_MemorySource.random_batch`` and ``_LoaderSource.random_batch``); every ``window``
    steps the mean per-data-point loss of the window is compared with the previous
    window's, and the loop stops when it got worse (the authors'
    ``burn_pre_loss - burn_cur_loss < 0``) or after ``max_inner`` steps.
    """

    max_inner: int
    window: int

    def run(
        self,
        state: TrainState,
        source: _MemorySource | _LoaderSource,
        gen: torch.Generator,
        clip_norm: float | None,
        clip_value: float | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> int:
        previous, current, count = math.inf, 0.0, 0.0
        steps = 0
        while steps < self.max_inner:
            xb = source.random_batch(gen)
            comps, _ = _train_step(
                state, xb, clip_norm, state.guide_params, outer=False, clip_value=clip_value
            )
            steps += 1
            if on_step is not None:
                on_step()
            current += comps["loss"]
            count += comps["num_data"]
            if steps % self.window == 0:
                mean = current / count
                if previous - mean < 0:
                    break
                previous, current, count = mean, 0.0, 0.0
        state.inner_steps += steps
        return steps
