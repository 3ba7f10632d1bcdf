"""The base of every objective: :class:`BaseELBO`, its :class:`Evaluation`, the registry
:data:`ELBOS` and :func:`make_elbo`.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.util import check_traceenum_requirements, warn_if_nan

from pyrocollapse._validation import check_int
from pyrocollapse.elbo.estimators import LocalSite, local_sites
from pyrocollapse.elbo.terms import (
    ELBOTerms,
    LatentTerm,
    compute_terms,
    data_plate_frame,
    importance_traces,
)
from pyrocollapse.jit import CompiledEvaluation, JitMode, check_jit
from pyrocollapse.registry import Registry
from pyrocollapse.schedules import Schedule, make_schedule

#: Short name -> ELBO class, used by ``pyrocollapse run --elbo NAME``.
ELBOS: Registry[Any] = Registry("elbo")


@dataclass
class Evaluation:
    """What :meth:`BaseELBO.evaluate` returns.

    Attributes
    ----------
    loss : torch.Tensor
        Scalar to minimise, averaged over particles, differentiable.
    names : list[str]
        Names of the breakdown's entries (see :attr:`components`), each with
        ``counts[i]`` particle values in :attr:`stacked`.
    counts : list[int]
        Values per name (the number of particles, 1 under vectorised particles).
    stacked : torch.Tensor
        Shape ``(sum(counts),)``, detached: the breakdown's values on the loss's
        device, particle values of one name next to each other. Kept as one tensor so
        that a step which does not read the breakdown never waits for the device, and
        one which does pays a single transfer.
    kl_per_dim : dict[str, torch.Tensor]
        Per latent site, the batch-summed KL per dimension (detached), where available.
    terms : list[ELBOTerms]
        The terms of every particle (empty for a compiled evaluation, see ``jit``).
    weights : dict[str, float]
        The objective's weights and thresholds at this step (``kl_weight``, ...); they
        are also in ``components`` and are not summed over the batch.
    num_data : float
        Data points the batch stands for.
    """

    loss: torch.Tensor
    names: list[str]
    counts: list[int]
    stacked: torch.Tensor = field(repr=False)
    kl_per_dim: dict[str, torch.Tensor]
    terms: list[ELBOTerms]
    weights: dict[str, float] = field(default_factory=dict)
    num_data: float = 1.0

    @property
    def values(self) -> dict[str, list[torch.Tensor]]:
        """Per name, the detached scalar value of every particle."""
        out, i = {}, 0
        for name, count in zip(self.names, self.counts, strict=True):
            out[name] = list(self.stacked[i : i + count])
            i += count
        return out

    @cached_property
    def components(self) -> dict[str, float]:
        """Per-step breakdown as floats: ``elbo``, ``reconstruction``, ``kl``,
        ``kl/<site>``, ``loss`` and variant-specific extras, all summed over the batch
        (divide by ``num_data`` for per-data-point values) and averaged over particles;
        plus the current :attr:`weights` and ``num_data``.

        Materialised on first access with a single host transfer, then cached.
        """
        flat = self.stacked.tolist()
        out: dict[str, float] = {}
        i = 0
        for name, count in zip(self.names, self.counts, strict=True):
            out[name] = flat[i] if count == 1 else math.fsum(flat[i : i + count]) / count
            i += count
        out.update(self.weights)
        out["num_data"] = self.num_data
        return out


def _stack_values(values: dict[str, list[Any]], like: torch.Tensor) -> torch.Tensor:
    """The breakdown's values as one detached vector on ``like``'s device (float64 when
    the loss is, else the loss's dtype)."""
    flat = [
        v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=like.dtype)
        for vs in values.values()
        for v in vs
    ]
    flat = [v.to(like.device) if v.device != like.device else v for v in flat]
    return torch.stack([v.reshape(()) for v in flat]).detach()


class BaseELBO(ELBO):
    """Base of every pyrocollapse objective: a Pyro ``ELBO`` with one ``combine`` hook.

    Parameters
    ----------
    kl_weight : Schedule or float
        The weight beta of the KL term, a constant or a :mod:`pyrocollapse.schedules`
        schedule advanced once per :meth:`loss_and_grads` call (or :meth:`step`).
    num_particles : int
        Monte Carlo particles averaged per step.
    max_plate_nesting, vectorize_particles, retain_graph :
        As for :class:`pyro.infer.ELBO`; every variant takes ``vectorize_particles=True``
        (the particles are drawn in one extra plate and the variant's minibatch
        estimators are computed per particle and averaged).
    jit : {"auto", True, False}
        Compile the evaluation (model, guide, terms and ``combine``, forward and
        backward) with :func:`torch.compile`, once per input signature (shapes, dtypes
        and devices of the tensor arguments, values of the others), with the KL weight
        fed in as a tensor so that a schedule never recompiles; see
        :mod:`pyrocollapse.jit` for what the program must satisfy. Compiling takes
        seconds per signature. ``"auto"`` (default) compiles once the objective has
        spent :data:`pyrocollapse.jit.AUTO_AFTER_SECONDS` in eager evaluations (short
        runs never compile) and falls back to eager mode, saying why once on the
        ``"pyrocollapse"`` logger, where the program cannot be compiled; ``True``
        compiles from the second call of each signature and raises ``RuntimeError``
        where it cannot; ``False`` never compiles. The call that compiles runs eagerly
        (with validation if enabled) and returns the eager result.
    analytic_kl : bool
        Take KL(q || p) in closed form where it is known and valid (default), which
        lowers the variance; ``False`` takes the Monte Carlo estimate log q(z) - log p(z)
        at the guide's draw everywhere, so that the plain objective equals Pyro's
        ``Trace_ELBO`` (and ``TraceEnum_ELBO``) on the same draws. Point masses, flows,
        transformed and masked distributions always take the Monte Carlo estimate.

    Attributes
    ----------
    beta : float
        The KL weight at the current step (a 0-dim tensor while a compiled evaluation is
        being traced).
    step_count : int
        Number of optimisation steps taken.
    last : Evaluation or None
        The most recent evaluation (its ``components`` feed ``fit``'s History).
    compiled : pyrocollapse.jit.CompiledEvaluation or None
        The cache of compiled evaluations (``None`` with ``jit=False``).

    Notes
    -----
    The training-loop path costs little beyond the model and guide themselves: without
    validation the traces compute only the log-probabilities the terms use (no log q(z)
    or log p(z) next to an analytic KL), each term is computed once and shared by the
    variant and the breakdown, and the breakdown stays on the device until
    :attr:`Evaluation.components` is read (one transfer). Validation (Pyro's
    ``enable_validation``) adds Pyro's full site checks and NaN warnings.
    """

    #: Kept for compatibility: every variant supports vectorised particles.
    supports_vectorized_particles: ClassVar[bool] = True
    #: Whether the evaluation can be compiled (``jit``). A variant with side effects in
    #: its evaluation (FactorVAE steps its discriminator) sets it to ``False``: then
    #: ``jit="auto"`` means eager and ``jit=True`` is refused.
    compilable: ClassVar[bool] = True
    #: Constructor arguments reported by :meth:`hyperparameters` (besides ``kl_weight``
    #: and ``num_particles``), read from attributes of the same name.
    _hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        kl_weight: Schedule | float = 1.0,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        num_particles = check_int("num_particles", num_particles, minimum=1)
        max_plate_nesting = _check_plate_nesting(max_plate_nesting)
        if retain_graph is not None and not isinstance(retain_graph, bool):
            raise TypeError(
                "retain_graph must be None (Pyro's default), True or False, got "
                f"{type(retain_graph).__name__} {retain_graph!r}"
            )
        if not isinstance(vectorize_particles, bool):
            raise TypeError(
                "vectorize_particles must be True or False, got "
                f"{type(vectorize_particles).__name__} {vectorize_particles!r}"
            )
        jit = check_jit(jit)
        if not self.compilable:
            if jit is True:
                raise ValueError(
                    f"{type(self).__name__} cannot be compiled (jit=True): its evaluation has "
                    "side effects; use jit='auto' (eager for this objective) or jit=False"
                )
            jit = False
        if not isinstance(analytic_kl, bool):
            raise TypeError(
                f"analytic_kl must be True or False, got {type(analytic_kl).__name__} "
                f"{analytic_kl!r}"
            )
        self.analytic_kl = analytic_kl
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )
        self.schedule = make_schedule(kl_weight)
        self.step_count = 0
        self.last: Evaluation | None = None
        self._beta_override: torch.Tensor | None = None
        self.compiled: CompiledEvaluation | None = None
        if jit:
            self.compiled = CompiledEvaluation(jit)

    @property
    def jit(self) -> JitMode:
        """The constructor's ``jit``: ``"auto"``, ``True`` or ``False``."""
        return False if self.compiled is None else self.compiled.mode

    # -- the hook ----------------------------------------------------------------------
    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Turn one particle's terms into (loss to minimise, extra components).

        The default is the KL-weighted negative ELBO
        ``-(reconstruction - beta * kl - auxiliary)``.

        Returns
        -------
        (loss, extras) : tuple[torch.Tensor, dict[str, torch.Tensor]]
            ``loss`` a differentiable scalar; ``extras`` scalar tensors summed over the
            scaled batch (nats), recorded per step.
        """
        return -(terms.reconstruction - self.beta * terms.kl - terms.auxiliary), {}

    # -- shared machinery ----------------------------------------------------------------
    @property
    def beta(self) -> Any:
        """Current KL weight: a float, or a 0-dim tensor input while being compiled."""
        if self._beta_override is not None:
            return self._beta_override
        return self.schedule(self.step_count)

    @property
    def weights(self) -> dict[str, float]:
        """The objective's weights (and thresholds) at the current step.

        ``{"kl_weight": beta}`` here; variants add their own. ``fit`` records the values
        at the end of each epoch.
        """
        return {"kl_weight": self.beta}

    def step(self) -> None:
        """Advance the schedule by one optimisation step."""
        self.step_count += 1

    def _guess_max_plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        # Pyro runs model and guide once to guess; keep the global RNG where it was, so
        # the first evaluation draws what every later one with the same seed draws, and
        # keep Pyro's INFO line about the guess off the console.
        log = logging.getLogger("pyro.infer.elbo")
        level = log.level
        log.setLevel(max(level, logging.WARNING))
        try:
            with torch.random.fork_rng(devices=[]):
                super()._guess_max_plate_nesting(model, guide, args, kwargs)
        finally:
            log.setLevel(level)

    def _get_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        # As TraceEnum_ELBO: a finite plate nesting, then parallel enumeration of the
        # guide's and the model's configured sites (enumeration dims left of the plates).
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        if self.vectorize_particles:
            guide = self._vectorized_num_particles(guide)
            model = self._vectorized_num_particles(model)
        guide = EnumMessenger(first_available_dim=-1 - self.max_plate_nesting)(guide)
        model = EnumMessenger()(model)  # continues the guide's enumeration dims
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            yield self._get_trace(model, guide, args, kwargs)

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        model_trace, guide_trace = importance_traces(
            model, guide, args, kwargs, self.max_plate_nesting
        )
        if is_validation_enabled() and any(
            site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None
            for tr in (model_trace, guide_trace)
            for site in tr.nodes.values()
        ):
            check_traceenum_requirements(model_trace, guide_trace)
        return model_trace, guide_trace

    def particle_traces(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Iterate over ``(model_trace, guide_trace)`` pairs, one per particle (one in all
        when particles are vectorised)."""
        return self._get_traces(model, guide, args, kwargs)

    def evaluate(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Evaluation:
        """Compute the loss and its breakdown; the single path behind every loss method.

        Through :attr:`compiled` unless ``jit=False``: its compiled evaluation where the
        signature has been compiled (same value for the same random draws), else the
        eager :meth:`evaluate_eager`.
        """
        if self.compiled is not None:
            evaluation = self.compiled.evaluate(self, model, guide, args, kwargs)
        else:
            evaluation = self.evaluate_eager(model, guide, *args, **kwargs)
        if is_validation_enabled():
            warn_if_nan(evaluation.loss, "loss")
        self.last = evaluation
        return evaluation

    def evaluate_eager(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> Evaluation:
        """Run model and guide and compute the loss and its breakdown, uncompiled."""
        vectorized = self.vectorize_particles and self.num_particles > 1
        particles = self.num_particles if vectorized else 1
        n = 1 if vectorized else self.num_particles
        losses = []
        values: dict[str, list[torch.Tensor]] = {}
        per_dim: dict[str, torch.Tensor] = {}
        all_terms = []
        for model_trace, guide_trace in self.particle_traces(model, guide, *args, **kwargs):
            terms = compute_terms(model_trace, guide_trace, particles, analytic_kl=self.analytic_kl)
            loss, extras = self.combine(terms)
            if terms.surrogate is not None:
                # baselines of score-function sites and their own losses: gradient only
                loss = loss + (terms.surrogate - terms.surrogate.detach())
            losses.append(loss)
            all_terms.append(terms)
            step_values = {
                "loss": loss,
                "elbo": terms.elbo,
                "reconstruction": terms.reconstruction,
                "kl": terms.kl,
                **{f"kl/{k}": t.total for k, t in terms.latent.items()},
                **extras,
            }
            for k, v in step_values.items():
                values.setdefault(k, []).append(v)
            for k, t in terms.latent.items():
                if t.kl_per_dim is not None:
                    pd = t.total_per_dim.detach()
                    per_dim[k] = per_dim[k] + pd if k in per_dim else pd
        if n > 1:
            per_dim = {k: v / n for k, v in per_dim.items()}
        loss = losses[0] if n == 1 else torch.stack(losses).sum() / n
        return Evaluation(
            loss,
            list(values),
            [len(v) for v in values.values()],
            _stack_values(values, loss),
            per_dim,
            all_terms,
            self.weights,
            all_terms[0].num_data,
        )

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """The loss as a differentiable scalar tensor (used by ``ELBOModule``)."""
        return self.evaluate(model, guide, *args, **kwargs).loss

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss as a float, through the same path as the gradient."""
        with torch.no_grad():
            return float(self.evaluate(model, guide, *args, **kwargs).loss)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Loss as a float; backpropagates into trainable params, then advances the schedule."""
        loss = self.evaluate(model, guide, *args, **kwargs).loss
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        self.step()
        return float(loss.detach())

    def breakdown(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Per-site terms, like NumPyro's ``sum_sites=False``.

        Returns
        -------
        dict[str, torch.Tensor]
            For each observed site its scaled log-likelihood (scalar); for each latent site
            its scaled KL per dimension, shape ``(latent_dim,)`` (a scalar where q or p does
            not factorise). Averaged over particles, detached.
        """
        with torch.no_grad():
            ev = self.evaluate_eager(model, guide, *args, **kwargs)  # needs the terms
            self.last = ev
            out: dict[str, torch.Tensor] = {}
            for terms in ev.terms:
                for k, v in terms.observed.items():
                    out[k] = out.get(k, 0.0) + v / len(ev.terms)
                for k, t in terms.latent.items():
                    v = t.total_per_dim if t.kl_per_dim is not None else t.total
                    out[k] = out.get(k, 0.0) + v / len(ev.terms)
        return out

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable description of the objective (class, name and settings)."""
        name = next((k for k in ELBOS if ELBOS.get(k) is type(self)), None)
        return {
            "class": type(self).__name__,
            "name": name,
            "kl_weight": self.schedule.to_dict(),
            "num_particles": self.num_particles,
            **{k: getattr(self, k) for k in self._hyperparameters},
        }

    def _local_sites(self, terms: ELBOTerms) -> tuple[list[LocalSite], list[LatentTerm]]:
        """Split the latent sites into local ones (for minibatch estimators; one
        :class:`LocalSite` per vectorised particle) and the others, which keep their
        plain KL: sites outside the data plate (the outermost plate of the observed
        sites), discrete and other non-reparameterised sites, point estimates."""
        local, global_ = [], []
        frame = data_plate_frame(terms.model_trace)
        for term in terms.latent.values():
            in_data = frame is None or any(
                f.name == frame[0] for f in term.guide_site["cond_indep_stack"]
            )
            # sites outside the data plate (per topic, per group) are global to the data
            sites = local_sites(term, type(self).__name__) if in_data else []
            if sites:
                local.extend(sites)
            else:
                global_.append(term)
        return local, global_


def _check_plate_nesting(value: object) -> float:
    """``max_plate_nesting``: an int >= 0, or ``float("inf")`` (guessed on the first call)."""
    if isinstance(value, float) and value == float("inf"):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            "max_plate_nesting must be an int >= 0 (the number of nested plates in the "
            "programs) or float('inf') to guess it on the first call, got "
            f"{type(value).__name__} {value!r}"
        )
    if int(value) < 0:
        raise ValueError(f"max_plate_nesting must be >= 0 or float('inf'), got {int(value)}")
    return int(value)


def make_elbo(name: str, **options: Any) -> BaseELBO:
    """Build an objective by its short name (see :data:`ELBOS`)."""
    return ELBOS.get(name)(**options)
