"""Compiled evaluation of pyrocollapse objectives (``BaseELBO(..., jit=...)``).

A Pyro step spends most of its time in Python: effect handlers, trace bookkeeping,
``pyro.param`` look-ups of every network weight, distribution objects. For a program
whose structure does not change between steps, the tensor operations of one evaluation
(model, guide, terms, the variant's ``combine``) are recorded once as an FX graph with
:func:`torch.fx.experimental.proxy_tensor.make_fx`, and that graph is compiled with
:func:`torch.compile` (the inductor backend; AOTAutograd derives and compiles the
backward pass too). Later steps run the compiled forward and backward with none of that
Python. (Compiling the Pyro program with ``torch.compile`` directly is slower than eager:
its effect handlers break the graph into hundreds of pieces.)

:class:`CompiledEvaluation` is the cache every :class:`~pyrocollapse.elbo.BaseELBO`
holds unless built with ``jit=False``. ``loss``, ``differentiable_loss``,
``loss_and_grads`` and ``evaluate`` all go through it.

When it compiles
----------------
* ``jit=True``: from the second call of each signature (the first runs eagerly).
* ``jit="auto"`` (the default): only once the run is long enough to pay for the
  compilation, which takes seconds per signature (about 5-25 s on a CPU, most of it the
  C++ compiler): once the objective has spent :data:`AUTO_AFTER_SECONDS` of wall time in
  eager evaluations; shorter runs never compile. Where compiling is not safe or
  fails (see below), ``"auto"`` keeps evaluating eagerly and says why once, at WARNING,
  on the ``"pyrocollapse"`` logger.
* ``jit=False``: never.

How it compiles
---------------
* One compiled graph per **signature**: the model and guide, the shape, dtype, device
  and ``requires_grad`` of every tensor argument, the values of the other arguments,
  and the objective's hyperparameters. The smaller last batch of an epoch compiles once
  more, then both graphs are reused.
* The graph's inputs are the program's parameters (the unconstrained tensors of Pyro's
  parameter store, ``PyroModule`` weights included), the tensor arguments and the KL
  weight as a 0-dim tensor, so a schedule (annealing, cyclical) never recompiles.
* The call that compiles runs eagerly, with validation if it is enabled, and returns
  that eager result; the graph is then recorded and checked under a forked random
  number generator, so the global RNG advances exactly as in eager mode. The compiled
  graph draws its noise from the global generator with the eager kernels
  (inductor's ``fallback_random``): given the same RNG state, a compiled step and an
  eager step draw the same noise and return the same loss (up to floating-point
  reassociation).
* The compiled graph is run once on the RNG state of the eager call it was recorded
  from, and its first use (new inputs, new parameter values) is checked against an
  eager evaluation of the same inputs and draws; a loss or breakdown that differs (a
  program whose values the recording froze: a number read off a tensor, a branch taken
  on one) is refused: ``jit=True`` raises, ``"auto"`` goes back to eager mode.
* Calls without gradients (``loss``, under :func:`torch.no_grad`) run the recorded graph
  uncompiled, so that they do not compile a second, inference-only graph.
* A parameter replaced in the store (``pyro.clear_param_store()`` and a new model)
  recompiles that signature.

What the program must satisfy
-----------------------------
The recording follows one path through the Python code, so for a given signature:

* the control flow may not depend on tensor values, and numbers read off tensors
  (``float(t)``, ``t.item()``, ``if t > 0``) are frozen at their recorded value: fine
  for a plate's size or scale; the check above refuses the graph when they differ
  between the recorded call and the first compiled one, not when they change later;
* tensors the program reads from outside its arguments and the parameter store (a
  global data tensor, a buffer updated in place) are frozen as constants;
* every trainable tensor must be a Pyro parameter (``pyro.param``, ``pyro.module`` or a
  ``PyroModule``); a plain ``nn.Parameter`` read from a closure is refused.

Programs with enumerated, non-reparameterised or model-only sites (the DiCE path) run
eagerly. Validation runs only on eager calls. With ``jit=True`` a program that cannot be
compiled raises ``RuntimeError`` naming the objective and suggesting ``jit=False``; with
``"auto"`` it runs eagerly. Every variant in :data:`pyrocollapse.elbo.ELBOS` compiles
(the tests check each against eager mode).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyro
import torch

if TYPE_CHECKING:
    from pyrocollapse.elbo import BaseELBO, Evaluation

__all__ = ["AUTO_AFTER_SECONDS", "BACKEND", "CompiledEvaluation", "JitMode"]

#: What ``jit`` accepts.
JitMode = bool | Literal["auto"]

#: ``jit="auto"`` compiles once the objective has spent this many seconds of wall time
#: in eager evaluations (the evaluation is about half of a training step), i.e. after
#: roughly 20-40 s of training, about what compiling one signature costs on a CPU.
AUTO_AFTER_SECONDS: float = 15.0

#: The :func:`torch.compile` backend (``"inductor"``; ``"aot_eager"`` compiles in well
#: under a second, without generated kernels: what the tests use).
BACKEND: str = "inductor"

_LOG = logging.getLogger("pyrocollapse")


def check_jit(value: object) -> JitMode:
    """The constructor's ``jit`` argument, checked: ``True``, ``False`` or ``"auto"``.

    Raises
    ------
    TypeError
        For anything else, naming the accepted values.
    """
    if isinstance(value, bool) or value == "auto":
        return value  # type: ignore[return-value]
    raise TypeError(
        f"jit must be True or False, got {type(value).__name__} {value!r} (or 'auto': "
        "compile once the run is long enough to pay for it)"
    )


class _CannotCompile(Exception):
    """Why a program (or one signature of it) is not compiled."""


@contextlib.contextmanager
def _quiet_torch_logging() -> Iterator[None]:
    """Keep torch's own log records (dynamo, inductor, fake tensors) off the console
    while a graph compiles: a failure is reported once, as one line on the
    ``"pyrocollapse"`` logger, not as torch's multi-page traceback records."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


@dataclass
class _Entry:
    """One compiled signature: the recorded and compiled graphs and how to read them."""

    graph: torch.fx.GraphModule
    fn: Callable[..., tuple[torch.Tensor, ...]]
    params: list[tuple[str, torch.Tensor]]
    tensor_kw: list[str]
    names: list[str]
    counts: list[int]
    per_dim_names: list[str]
    num_data: float
    beta_dtype: torch.dtype
    beta_device: torch.device
    evaluation_type: type
    devices: list[int]
    verified: bool = False
    calls: int = field(default=0)


class CompiledEvaluation:
    """Cache of compiled evaluations of one objective (see the module docstring).

    The objective owns the cache and passes itself to :meth:`evaluate`. Copies and
    pickles of the cache (and so of the objective) keep the mode and start without
    compiled graphs.

    Parameters
    ----------
    mode : True or "auto"
        Compile from the second call of a signature and raise where that fails
        (``True``), or once the run is long enough and fall back to eager mode where it
        fails (``"auto"``).

    Attributes
    ----------
    compilations : int
        Number of graphs compiled so far (one per new signature or replaced parameter).
    fallback : str or None
        Why the objective evaluates eagerly after all (``"auto"``), or ``None``.
    eager_seconds : float
        Wall time spent in eager evaluations so far (what ``"auto"`` waits on).
    """

    def __init__(self, mode: JitMode = True) -> None:
        if mode not in (True, "auto"):
            raise ValueError(f"mode must be True or 'auto', got {mode!r}")
        self.mode = mode
        self._cache: dict[Hashable, _Entry] = {}
        self._eager: set[Hashable] = set()  # signatures that run uncompiled
        self._said: set[str] = set()
        self.compilations = 0
        self.fallback: str | None = None
        self.eager_seconds = 0.0

    def __getstate__(self) -> dict[str, Any]:
        """The mode only: compiled graphs are neither copied nor pickled."""
        return {"mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["mode"])

    def __deepcopy__(self, memo: dict) -> CompiledEvaluation:
        return CompiledEvaluation(self.mode)

    def __len__(self) -> int:
        """Number of signatures with a compiled graph."""
        return len(self._cache)

    def clear(self) -> None:
        """Drop every compiled graph (the next call of each signature recompiles)."""
        self._cache.clear()
        self._eager.clear()

    # ----------------------------------------------------------------------------------
    def evaluate(
        self, elbo: BaseELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> Evaluation:
        """The evaluation by ``elbo`` of ``model`` and ``guide`` on ``args``: compiled
        where it has been compiled, else eager (and compiled now when it is due)."""
        auto = self.mode == "auto"
        if auto and (self.fallback is not None or self.eager_seconds < AUTO_AFTER_SECONDS):
            return self._eager_call(elbo, model, guide, args, kwargs)
        try:
            key = self._key(elbo, model, guide, args, kwargs)
        except TypeError as error:
            if not auto:
                raise
            self._give_up(elbo, str(error).split(": ", 1)[-1])
            return self._eager_call(elbo, model, guide, args, kwargs)
        entry = self._cache.get(key)
        if entry is not None and _params_current(entry.params):
            if entry.verified:
                return self._run(elbo, entry, args, kwargs)
            return self._verify(elbo, key, entry, model, guide, args, kwargs)
        if key in self._eager:
            return self._eager_call(elbo, model, guide, args, kwargs)
        rng = _rng_state(args, kwargs)
        evaluation = self._eager_call(elbo, model, guide, args, kwargs)
        # the first evaluation may settle max_plate_nesting (part of the key)
        key = self._key(elbo, model, guide, args, kwargs)
        reason = _eager_reason(evaluation)
        if reason is not None:
            self._eager.add(key)
            self._say(elbo, f"this program runs uncompiled: {reason}")
            return evaluation
        try:
            self._cache[key] = self._compile(elbo, model, guide, args, kwargs, evaluation, rng)
        except _CannotCompile as error:
            if not auto:
                raise RuntimeError(
                    f"{type(elbo).__name__}(jit=True) could not compile this model and "
                    f"guide: {error}. Use jit=False (or jit='auto', which falls back to "
                    "eager mode)"
                ) from error.__cause__
            self._give_up(elbo, str(error))
            return evaluation
        self.compilations += 1
        return evaluation

    def _eager_call(
        self, elbo: BaseELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> Evaluation:
        t0 = time.perf_counter()
        evaluation = elbo.evaluate_eager(model, guide, *args, **kwargs)
        self.eager_seconds += time.perf_counter() - t0
        return evaluation

    def _give_up(self, elbo: BaseELBO, reason: str) -> None:
        self.fallback = reason
        self._say(elbo, f"evaluating eagerly, not compiled: {reason}")

    def _say(self, elbo: BaseELBO, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            mode = "'auto'" if self.mode == "auto" else "True"
            _LOG.warning("%s(jit=%s): %s", type(elbo).__name__, mode, message)

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
                    "evaluation keys its cache on the arguments. Pass tensors (graph "
                    "inputs) or hashable values (one graph per value), or use jit=False"
                ) from None
            return ("value", value)

        hyper = tuple(getattr(elbo, k) for k in elbo._hyperparameters)
        return (
            type(elbo),
            elbo.analytic_kl,
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
        rng: tuple[torch.Tensor, list[tuple[int, torch.Tensor]]],
    ) -> _Entry:
        """Record the evaluation as an FX graph, compile it and check it against
        ``evaluation`` (the eager call made from the RNG state ``rng``)."""
        from torch.fx.experimental.proxy_tensor import make_fx

        params = _parameters(evaluation)
        tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        tensor_kw = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        loss = evaluation.loss
        beta = torch.as_tensor(float(elbo.beta), dtype=loss.dtype, device=loss.device)
        names, counts = list(evaluation.names), list(evaluation.counts)
        per_dim_names = list(evaluation.kl_per_dim)
        n_params = len(params)

        def program(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            a, kw = _rebuild(args, kwargs, tensor_pos, tensor_kw, inputs[n_params:-1])
            elbo._beta_override = inputs[-1]
            try:
                ev = elbo.evaluate_eager(model, guide, *a, **kw)
            finally:
                elbo._beta_override = None
            if ev.names != names or ev.counts != counts or list(ev.kl_per_dim) != per_dim_names:
                raise _CannotCompile(
                    f"the program's sites changed between two runs with the same inputs "
                    f"({names} then {ev.names}); a compiled evaluation needs a program of "
                    "fixed structure"
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
            with (
                torch.random.fork_rng(devices=devices),
                pyro.validation_enabled(False),
                torch.enable_grad(),
            ):
                graph = make_fx(program, _error_on_data_dependent_ops=False)(*example)
        except _CannotCompile:
            raise
        except Exception as error:
            raise _CannotCompile(_record_failure(error)) from error
        trainable = [n for n, p in graph.named_parameters() if p.requires_grad]
        trainable += [
            n
            for n in dir(graph)
            if n.startswith("_tensor_constant") and getattr(graph, n).requires_grad
        ]
        if trainable:
            raise _CannotCompile(
                f"the program reads {len(trainable)} trainable tensor(s) that are not Pyro "
                "parameters (a plain nn.Parameter from a closure?); every trainable tensor "
                "must be a Pyro parameter (pyro.param, pyro.module or a PyroModule)"
            )
        fn = torch.compile(
            graph,
            backend=BACKEND,
            fullgraph=True,
            dynamic=False,
            **({"options": {"fallback_random": True}} if BACKEND == "inductor" else {}),
        )
        entry = _Entry(
            graph,
            fn,
            params,
            tensor_kw,
            names,
            counts,
            per_dim_names,
            evaluation.num_data,
            beta.dtype,
            beta.device,
            type(evaluation),
            devices,
        )
        # compile now (forward and backward), from the eager call's RNG state, and compare
        try:
            with (
                torch.random.fork_rng(devices=devices),
                torch.enable_grad(),
                warnings.catch_warnings(),
                _quiet_torch_logging(),
            ):
                # torch's own deprecation warnings (importing inductor, lowering)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
                _set_rng_state(rng)
                outputs = fn(*example)
                inputs = [p for _, p in params if p.requires_grad]
                if inputs and outputs[0].requires_grad:
                    torch.autograd.grad(outputs[0], inputs, allow_unused=True)
        except Exception as error:
            raise _CannotCompile(
                f"torch.compile (backend {BACKEND!r}) failed: {type(error).__name__}: "
                f"{_first_line(error)}"
            ) from error
        _check_same(evaluation, outputs, per_dim_names)
        return entry

    def _verify(
        self,
        elbo: BaseELBO,
        key: Hashable,
        entry: _Entry,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
    ) -> Evaluation:
        """The first compiled call of a signature, checked against an eager evaluation
        of the same inputs and draws: the recording came from other inputs (and
        parameter values), so this catches values it froze (a number read off a tensor,
        a branch taken on one)."""
        rng = _rng_state(args, kwargs)
        evaluation = self._run(elbo, entry, args, kwargs)
        with torch.random.fork_rng(devices=entry.devices), torch.no_grad():
            _set_rng_state(rng)
            eager = elbo.evaluate_eager(model, guide, *args, **kwargs)
        try:
            _check_same(
                eager,
                (evaluation.loss, evaluation.stacked, *evaluation.kl_per_dim.values()),
                entry.per_dim_names,
            )
        except _CannotCompile as error:
            del self._cache[key]
            self._eager.add(key)
            if self.mode != "auto":
                raise RuntimeError(
                    f"{type(elbo).__name__}(jit=True): {error}; the program's values depend "
                    "on its inputs in a way a compiled graph cannot follow. Use jit=False"
                ) from None
            self._give_up(elbo, str(error))
            _set_rng_state(rng)  # the draws eager mode would have made
            return self._eager_call(elbo, model, guide, args, kwargs)
        entry.verified = True
        return evaluation

    def _run(self, elbo: BaseELBO, entry: _Entry, args: tuple, kwargs: dict) -> Evaluation:
        beta = torch.tensor(float(elbo.beta), dtype=entry.beta_dtype, device=entry.beta_device)
        inputs = [p for _, p in entry.params]
        inputs += [a for a in args if isinstance(a, torch.Tensor)]
        inputs += [kwargs[k] for k in entry.tensor_kw]
        # without gradients, the recorded graph as it is: no second, inference-only graph
        fn = entry.fn if torch.is_grad_enabled() else entry.graph
        outputs = fn(*inputs, beta)
        entry.calls += 1
        per_dim = dict(zip(entry.per_dim_names, outputs[2:], strict=True))
        return entry.evaluation_type(
            outputs[0],
            entry.names,
            entry.counts,
            outputs[1],
            per_dim,
            [],
            elbo.weights,
            entry.num_data,
        )


def _record_failure(error: Exception) -> str:
    text = _first_line(error)
    if "_local_scalar_dense" in text or "data-dependent" in text:
        return (
            "the program reads a value computed from its parameters or arguments into "
            "Python (float(t), t.item(), if t > 0: ...), which a compiled graph would "
            "freeze"
        )
    return (
        f"recording the evaluation failed ({type(error).__name__}: {text}); the program's "
        "structure may not depend on tensor values"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_same(evaluation: Evaluation, outputs: tuple[torch.Tensor, ...], names: list[str]):
    """Refuse a compiled graph whose first run differs from the eager evaluation it was
    recorded from (same parameters, inputs and random draws)."""
    pairs = [("loss", evaluation.loss.detach(), outputs[0].detach())]
    pairs.append(("breakdown", evaluation.stacked, outputs[1].detach()))
    pairs += [
        (f"kl_per_dim of {k}", evaluation.kl_per_dim[k], o.detach())
        for k, o in zip(names, outputs[2:], strict=True)
    ]
    for what, eager, compiled in pairs:
        if eager.shape != compiled.shape:
            raise _CannotCompile(f"the compiled {what} has shape {tuple(compiled.shape)}")
        eager64, compiled64 = eager.double(), compiled.double()
        bad = ~torch.isfinite(eager64)
        same_bad = torch.equal(bad, ~torch.isfinite(compiled64))
        diff = (eager64 - compiled64).abs()[~bad] if same_bad else eager64.new_zeros(0)
        scale = eager64.abs()[~bad].max().item() if bool((~bad).any()) else 0.0
        if not same_bad or (diff.numel() and diff.max().item() > 1e-3 * scale + 1e-3):
            worst = diff.max().item() if diff.numel() else math.inf
            raise _CannotCompile(
                f"the compiled graph's {what} differs from the eager evaluation on the "
                "same random draws "
                f"(by up to {worst:.3g}): the recording froze values the program computes "
                "anew on every call"
            )


def _rng_state(args: tuple, kwargs: dict) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """The CPU RNG state and that of every CUDA device among the tensor arguments."""
    devices = sorted(
        {
            t.device.index or 0
            for t in (*args, *kwargs.values())
            if isinstance(t, torch.Tensor) and t.device.type == "cuda"
        }
    )
    return torch.get_rng_state(), [(i, torch.cuda.get_rng_state(i)) for i in devices]


def _set_rng_state(state: tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for i, s in cuda:
        torch.cuda.set_rng_state(s, i)


def _eager_reason(evaluation: Evaluation) -> str | None:
    """Why a program cannot be compiled by recording one evaluation, or ``None``.

    Enumerated, non-reparameterised and model-only sites take the DiCE path of
    :mod:`pyrocollapse._dice`, whose baselines update state between steps (decaying
    averages in the parameter store) that a recorded graph would freeze; such programs
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
