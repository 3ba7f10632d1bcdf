"""Compiled evaluation of pyrocollapse objectives (``BaseELBO(..., jit=True)``).

A Pyro step spends most of its time in Python: effect handlers, trace bookkeeping,
``pyro.param`` look-ups of every network weight, distribution objects. For a program
whose structure does not change between steps, :func:`torch.jit.trace` records the
tensor operations of one evaluation (model, guide, terms, the variant's ``combine``)
once, and later steps replay the recorded graph with none of that Python.

:class:`CompiledEvaluation` is the cache every :class:`~pyrocollapse.elbo.BaseELBO`
holds when built with ``jit=True``. ``loss``, ``differentiable_loss``,
``loss_and_grads`` and ``evaluate`` all go through it.

How it compiles
---------------
* One compiled graph per **signature**: the model and guide, the shape, dtype, device
  and ``requires_grad`` of every tensor argument, the values of the other arguments,
  and the objective's hyperparameters. The smaller last batch of an epoch compiles once
  more, then both graphs are reused.
* The graph's inputs are the program's parameters (the unconstrained tensors of Pyro's
  parameter store, ``PyroModule`` weights included), the tensor arguments and the KL
  weight as a 0-dim tensor, so a schedule (annealing, cyclical) never recompiles.
* The first call of a signature runs eagerly, with validation if it is enabled, and
  returns that eager result; the graph is then traced under a forked random number
  generator, so the global RNG advances exactly as in eager mode. Given the same RNG
  state, a compiled step and an eager step draw the same noise and return the same
  loss (up to floating-point reassociation).
* A parameter replaced in the store (``pyro.clear_param_store()`` and a new model)
  recompiles that signature.

What the program must satisfy
-----------------------------
Tracing records one path through the Python code, so for a given signature:

* the control flow may not depend on tensor values (no ``if x.sum() > 0``);
* Python numbers read off tensors are frozen at their first value: the number of rows
  a mask keeps, a data-set size read from a plate's scale, ``float(tensor)`` anywhere;
* tensors the program reads from outside its arguments and the parameter store (a
  global data tensor, a buffer updated in place) are frozen as constants;
* every trainable tensor must be a Pyro parameter (``pyro.param``, ``pyro.module`` or a
  ``PyroModule``); a plain ``nn.Parameter`` read from a closure cannot be traced.

Validation runs only on each signature's first, eager call. A program that breaks
these rules raises ``RuntimeError`` naming the objective and suggesting ``jit=False``
where tracing fails outright; silent failures (data-dependent control flow) are the
reason ``jit`` is off by default. Every variant in :data:`pyrocollapse.elbo.ELBOS`
compiles (the tests check each against eager mode).

:func:`torch.jit.trace` is deprecated in recent PyTorch releases (in favour of
``torch.compile``, which is slower than eager on Pyro programs because of graph
breaks); its deprecation warning is silenced here. Should it be removed, ``jit=True``
raises a ``RuntimeError`` and ``jit=False`` keeps working.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyro
import torch

if TYPE_CHECKING:
    from pyrocollapse.elbo import BaseELBO, Evaluation

__all__ = ["CompiledEvaluation"]


@dataclass
class _Entry:
    """One compiled signature: the traced graph and how to read its outputs."""

    fn: Callable[..., tuple[torch.Tensor, ...]]
    params: list[tuple[str, torch.Tensor]]
    tensor_kw: list[str]
    names: list[str]
    counts: list[int]
    per_dim_names: list[str]
    num_data: float
    beta_dtype: torch.dtype
    beta_device: torch.device
    calls: int = field(default=0)


class CompiledEvaluation:
    """Cache of :func:`torch.jit.trace`-compiled evaluations of one objective.

    Parameters
    ----------
    elbo : BaseELBO
        The objective (held by weak reference: the objective owns the cache).

    Attributes
    ----------
    compilations : int
        Number of graphs traced so far (one per new signature or replaced parameter).
    """

    def __init__(self, elbo: BaseELBO) -> None:
        self._elbo = weakref.ref(elbo)
        self._cache: dict[Hashable, _Entry] = {}
        self._eager: set[Hashable] = set()  # signatures that run uncompiled
        self._said: set[str] = set()
        self.compilations = 0

    def __len__(self) -> int:
        """Number of signatures with a compiled graph."""
        return len(self._cache)

    def clear(self) -> None:
        """Drop every compiled graph (the next call of each signature recompiles)."""
        self._cache.clear()
        self._eager.clear()

    # ----------------------------------------------------------------------------------
    def evaluate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Evaluation:
        """The evaluation of ``model`` and ``guide`` on ``args``, compiled after the first
        call of its signature (see the module docstring)."""
        elbo = self._objective()
        key = self._key(elbo, model, guide, args, kwargs)
        entry = self._cache.get(key)
        if entry is not None and _params_current(entry.params):
            return self._run(elbo, entry, args, kwargs)
        if key in self._eager:
            return elbo.evaluate_eager(model, guide, *args, **kwargs)
        evaluation = elbo.evaluate_eager(model, guide, *args, **kwargs)
        # the first evaluation may settle max_plate_nesting (part of the key)
        key = self._key(elbo, model, guide, args, kwargs)
        reason = _eager_reason(evaluation)
        if reason is not None:
            self._eager.add(key)
            if reason not in self._said:
                self._said.add(reason)
                logging.getLogger("pyrocollapse").warning(
                    "%s(jit=True): this program runs uncompiled: %s",
                    type(elbo).__name__,
                    reason,
                )
            return evaluation
        self._cache[key] = self._compile(elbo, model, guide, args, kwargs, evaluation)
        self.compilations += 1
        return evaluation

    def _objective(self) -> BaseELBO:
        elbo = self._elbo()
        if elbo is None:  # pragma: no cover - the objective owns the cache
            raise RuntimeError("the objective of this compiled evaluation no longer exists")
        return elbo

    @staticmethod
    def _key(elbo: BaseELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        def sig(name: str, value: Any) -> Hashable:
            if isinstance(value, torch.Tensor):
                return (
                    "tensor",
                    tuple(value.shape),
                    value.dtype,
                    value.device,
                    value.requires_grad,
                )
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"{type(elbo).__name__}(jit=True): argument {name} of type "
                    f"{type(value).__name__} is neither a tensor nor hashable; the compiled "
                    "evaluation keys its cache on the arguments. Pass tensors (traced) or "
                    "hashable values (one graph per value), or use jit=False"
                ) from None
            return ("value", value)

        hyper = tuple(getattr(elbo, k) for k in elbo._hyperparameters)
        return (
            _callable_key(model),
            _callable_key(guide),
            tuple(sig(f"#{i}", a) for i, a in enumerate(args)),
            tuple(sorted((k, sig(repr(k), v)) for k, v in kwargs.items())),
            hyper,
            elbo.num_particles,
            elbo.vectorize_particles,
            elbo.max_plate_nesting,
        )

    def _compile(
        self,
        elbo: BaseELBO,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        evaluation: Evaluation,
    ) -> _Entry:
        params = _parameters(evaluation)
        tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        tensor_kw = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        loss = evaluation.loss
        beta = torch.as_tensor(float(elbo.beta), dtype=loss.dtype, device=loss.device)
        names, counts = list(evaluation.names), list(evaluation.counts)
        per_dim_names = list(evaluation.kl_per_dim)
        n_params = len(params)

        def traced(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            a, kw = _rebuild(args, kwargs, tensor_pos, tensor_kw, inputs[n_params:-1])
            elbo._beta_override = inputs[-1]
            try:
                ev = elbo.evaluate_eager(model, guide, *a, **kw)
            finally:
                elbo._beta_override = None
            if ev.names != names or ev.counts != counts or list(ev.kl_per_dim) != per_dim_names:
                raise RuntimeError(
                    f"{type(elbo).__name__}(jit=True): the program's sites changed between "
                    f"two runs with the same inputs ({names} then {ev.names}); a compiled "
                    "evaluation needs a program of fixed structure. Use jit=False"
                )
            return (ev.loss, ev.stacked, *ev.kl_per_dim.values())

        example = (
            *(p for _, p in params),
            *(args[i] for i in tensor_pos),
            *(kwargs[k] for k in tensor_kw),
            beta,
        )
        devices = sorted({t.device.index or 0 for t in example if t.device.type == "cuda"})
        try:
            with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated")
                    fn = torch.jit.trace(traced, example, check_trace=False)
        except RuntimeError as error:
            raise RuntimeError(
                f"{type(elbo).__name__}(jit=True) could not compile this model and guide "
                f"with torch.jit.trace: {error}. Every trainable tensor must be a Pyro "
                "parameter (pyro.param, pyro.module or a PyroModule) and the program's "
                "structure may not depend on tensor values; use jit=False otherwise"
            ) from error
        return _Entry(
            fn,
            params,
            tensor_kw,
            names,
            counts,
            per_dim_names,
            evaluation.num_data,
            beta.dtype,
            beta.device,
        )

    def _run(self, elbo: BaseELBO, entry: _Entry, args: tuple, kwargs: dict) -> Evaluation:
        from pyrocollapse.elbo import Evaluation

        beta = torch.tensor(float(elbo.beta), dtype=entry.beta_dtype, device=entry.beta_device)
        inputs = [p for _, p in entry.params]
        inputs += [a for a in args if isinstance(a, torch.Tensor)]
        inputs += [kwargs[k] for k in entry.tensor_kw]
        outputs = entry.fn(*inputs, beta)
        entry.calls += 1
        per_dim = dict(zip(entry.per_dim_names, outputs[2:], strict=True))
        return Evaluation(
            outputs[0],
            entry.names,
            entry.counts,
            outputs[1],
            per_dim,
            [],
            elbo.weights,
            entry.num_data,
        )


def _eager_reason(evaluation: Evaluation) -> str | None:
    """Why a program cannot be compiled by tracing, or ``None``.

    Enumerated, non-reparameterised and model-only sites take the DiCE path of
    :mod:`pyrocollapse._dice`, whose baselines update state between steps (decaying
    averages in the parameter store) that a traced graph would freeze; such programs
    run eagerly, always correct.
    """
    for terms in evaluation.terms:
        structure = terms.structure
        if structure is not None and not structure.simple:
            kinds = []
            if structure.enumerated or structure.model_enum:
                kinds.append(f"enumerated sites {structure.enumerated + structure.model_enum}")
            if structure.score_sites:
                kinds.append(f"non-reparameterised sites {structure.score_sites}")
            if structure.model_only:
                kinds.append(f"model-only sites {structure.model_only}")
            return " and ".join(kinds) + " are evaluated eagerly"
    return None


def _callable_key(fn: Callable) -> Hashable:
    try:
        hash(fn)
    except TypeError:
        return ("id", id(fn))
    return fn


def _parameters(evaluation: Evaluation) -> list[tuple[str, torch.Tensor]]:
    """The unconstrained parameter tensors the evaluation's traces read, by name.

    These become the compiled graph's inputs, so that gradients reach them and the
    graph reads their current values.
    """
    found: dict[str, torch.Tensor] = {}
    for terms in evaluation.terms:
        for trace in (terms.guide_trace, terms.model_trace):
            for name, site in trace.nodes.items():
                if site["type"] == "param" and name not in found:
                    value = site["value"]
                    unconstrained = getattr(value, "unconstrained", None)
                    found[name] = unconstrained() if callable(unconstrained) else value
    return list(found.items())


def _params_current(params: list[tuple[str, torch.Tensor]]) -> bool:
    """Whether the parameter store still holds exactly these tensors (parameters kept
    outside the global store, e.g. ``PyroModule`` local parameters, are not checked)."""
    store = dict(pyro.get_param_store().named_parameters())
    return all(store.get(name, p) is p for name, p in params)


def _rebuild(
    args: tuple,
    kwargs: dict,
    tensor_pos: list[int],
    tensor_kw: list[str],
    tensors: tuple[torch.Tensor, ...],
) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with their tensors replaced, in order, by ``tensors``."""
    a = list(args)
    for i, t in zip(tensor_pos, tensors[: len(tensor_pos)], strict=True):
        a[i] = t
    kw = dict(kwargs)
    for k, t in zip(tensor_kw, tensors[len(tensor_pos) :], strict=True):
        kw[k] = t
    return tuple(a), kw
