"""ELBO variants against posterior collapse, as Pyro ELBOs.

Every objective here subclasses :class:`BaseELBO`, itself a :class:`pyro.infer.ELBO`, so it
works as ``SVI(model, guide, optim, loss=...)``, as ``elbo(model, guide)`` (Pyro's
``ELBOModule``, used by Lightning and DDP) and with :func:`pyrocollapse.train.fit`.

How the base works
------------------
For each particle the base runs the guide, replays the model against it and computes the
*terms* of the ELBO once (:class:`ELBOTerms`):

* the reconstruction term: log-likelihood of every observed site, with plate subsampling
  scale, ``poutine.scale`` and masks applied;
* one :class:`LatentTerm` per latent site: KL(q || p) per data point and, where both q and
  p factorise over the event dimension, per latent dimension. Analytic when Pyro's
  ``kl_divergence`` has a closed form, else the single-sample Monte Carlo estimate
  log q(z) - log p(z);
* guide-only (auxiliary) sites' log q and the score-function part of non-reparameterised
  guide sites.

One hook, :meth:`BaseELBO.combine`, turns the terms into the loss to minimise.
``loss``, ``differentiable_loss`` and ``loss_and_grads`` all call the same
:meth:`BaseELBO.evaluate`, so they can never disagree (Pyro's own ``Trace_ELBO.loss``
takes a separate code path from its gradient). A KL weight of exactly 0 works: weights
multiply terms; nothing relies on ``poutine.scale``.

Adding a variant
----------------
Subclass :class:`BaseELBO` and override :meth:`~BaseELBO.combine` (about twenty lines)::

    class HalfKL(BaseELBO):
        def combine(self, terms):
            kl = 0.5 * terms.kl
            return -(terms.reconstruction - self.beta * kl), {"half_kl": kl}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions import Independent
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.util import check_if_enumerated, warn_if_nan

from pyrocollapse.registry import Registry
from pyrocollapse.schedules import Schedule, make_schedule

__all__ = [
    "ELBOS",
    "AnnealedELBO",
    "BaseELBO",
    "BetaELBO",
    "ELBOTerms",
    "LatentTerm",
    "make_elbo",
]

#: Short name -> ELBO class, used by ``pyrocollapse run --elbo NAME``.
ELBOS: Registry[Any] = Registry("elbo")


# --------------------------------------------------------------------------------------
# Terms
# --------------------------------------------------------------------------------------
@dataclass
class LatentTerm:
    """The KL term of one latent site for one particle.

    Attributes
    ----------
    name : str
        Site name.
    kl : torch.Tensor
        KL(q || p) per batch element, shape ``batch_shape`` (masked, not yet scaled).
    kl_per_dim : torch.Tensor or None
        Shape ``batch_shape + (latent_dim,)`` where q and p both factorise over the
        event dimension; else ``None``.
    scale : torch.Tensor or float
        The site's scale (plate subsampling x ``poutine.scale``), broadcastable to
        ``batch_shape``.
    analytic : bool
        True for a closed-form KL, False for the Monte Carlo estimate.
    guide_site, model_site : dict
        The Pyro trace sites, for variants that need q, p or the sampled value.
    """

    name: str
    kl: torch.Tensor
    kl_per_dim: torch.Tensor | None
    scale: torch.Tensor | float
    analytic: bool
    guide_site: dict[str, Any] = field(repr=False)
    model_site: dict[str, Any] = field(repr=False)

    @property
    def total(self) -> torch.Tensor:
        """Scaled KL summed over the batch: the amount subtracted from the ELBO."""
        return (self.kl * self.scale).sum()

    @property
    def weight(self) -> torch.Tensor:
        """Number of data points the batch stands for (sum of scales), a scalar."""
        return (torch.ones_like(self.kl) * self.scale).sum()

    @property
    def mean_per_dim(self) -> torch.Tensor:
        """Batch-average KL per latent dimension, shape ``(latent_dim,)``.

        Raises ``ValueError`` when q or p does not factorise over dimensions.
        """
        if self.kl_per_dim is None:
            raise ValueError(
                f"latent site {self.name!r}: KL per dimension needs q and p that factorise over "
                "the event dimension (Independent of univariate distributions)"
            )
        d = self.kl_per_dim.shape[-1]
        return self.kl_per_dim.reshape(-1, d).mean(0)

    @property
    def total_per_dim(self) -> torch.Tensor:
        """Scaled KL summed over the batch, per dimension, shape ``(latent_dim,)``."""
        if self.kl_per_dim is None:
            return self.mean_per_dim  # raises the explanatory error
        scale = torch.as_tensor(self.scale, dtype=self.kl.dtype, device=self.kl.device)
        weighted = self.kl_per_dim * scale.expand_as(self.kl).unsqueeze(-1)
        return weighted.reshape(-1, self.kl_per_dim.shape[-1]).sum(0)


@dataclass
class ELBOTerms:
    """All terms of the ELBO for one particle, computed once by :class:`BaseELBO`.

    ``elbo = reconstruction - kl - auxiliary``; every quantity is a scalar tensor in nats,
    summed over the (scaled) batch unless stated otherwise.
    """

    observed: dict[str, torch.Tensor]
    latent: dict[str, LatentTerm]
    auxiliary: torch.Tensor
    score: torch.Tensor
    model_trace: Any = field(repr=False)
    guide_trace: Any = field(repr=False)

    @property
    def reconstruction(self) -> torch.Tensor:
        """Sum over observed sites of the scaled log-likelihood."""
        return sum(self.observed.values(), torch.zeros(()))

    @property
    def kl(self) -> torch.Tensor:
        """Total KL over latent sites."""
        return sum((t.total for t in self.latent.values()), torch.zeros(()))

    @property
    def elbo(self) -> torch.Tensor:
        """The plain (unweighted) ELBO estimate."""
        return self.reconstruction - self.kl - self.auxiliary

    @property
    def num_data(self) -> float:
        """Data points represented by the batch (for per-data-point reporting)."""
        for term in self.latent.values():
            return float(term.weight)
        return 1.0


def _factor(d: Any) -> Any:
    """Return the univariate base of ``Independent(base, 1)``, else ``None``."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if base.event_shape == torch.Size():
            return base
    return None


def latent_term(name: str, guide_site: dict[str, Any], model_site: dict[str, Any]) -> LatentTerm:
    """KL(q || p) of one latent site from its guide and model trace sites.

    Analytic where :func:`pyro.distributions.kl.kl_divergence` has a closed form, the Monte
    Carlo estimate log q(z) - log p(z) at the guide's sample otherwise; per dimension when
    both distributions factorise.
    """
    q, p = guide_site["fn"], model_site["fn"]
    scale, mask = guide_site["scale"], guide_site["mask"]
    q1, p1 = _factor(q), _factor(p)
    per_dim = None
    analytic = True
    if q1 is not None and p1 is not None:
        try:
            per_dim = kl_divergence(q1, p1)
        except NotImplementedError:
            z = guide_site["value"]
            per_dim = q1.log_prob(z) - p1.log_prob(z)
            analytic = False
        if per_dim.shape != q1.batch_shape:
            per_dim = per_dim.expand(q1.batch_shape)
        kl = per_dim.sum(-1)
    else:
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            z = guide_site["value"]
            kl = q.log_prob(z) - p.log_prob(z)
            analytic = False
        if not torch.is_tensor(kl):
            kl = torch.full(q.batch_shape, float(kl))
        kl = kl.expand(q.batch_shape) if kl.shape != q.batch_shape else kl
    if mask is not None:
        kl = scale_and_mask(kl, mask=mask)
        if per_dim is not None:
            per_dim = per_dim * torch.as_tensor(mask, dtype=per_dim.dtype).unsqueeze(-1)
    return LatentTerm(name, kl, per_dim, scale, analytic, guide_site, model_site)


def compute_terms(model_trace: Any, guide_trace: Any) -> ELBOTerms:
    """Compute :class:`ELBOTerms` from a guide trace and the model trace replayed on it.

    Both traces must already carry log-probabilities (``compute_log_prob`` on the model,
    ``compute_score_parts`` on the guide), as :func:`pyro.infer.enum.get_importance_trace`
    leaves them.
    """
    observed: dict[str, torch.Tensor] = {}
    latent: dict[str, LatentTerm] = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            observed[name] = site["log_prob_sum"]
        elif name in guide_trace.nodes:
            latent[name] = latent_term(name, guide_trace.nodes[name], site)
    auxiliary = torch.zeros(())
    score = torch.zeros(())
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if name not in model_trace.nodes:
            auxiliary = auxiliary + site["log_prob_sum"]
        if not site["fn"].has_rsample:
            score = score + site["score_parts"].score_function.sum()
    return ELBOTerms(observed, latent, auxiliary, score, model_trace, guide_trace)


# --------------------------------------------------------------------------------------
# Base
# --------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What :meth:`BaseELBO.evaluate` returns.

    Attributes
    ----------
    loss : torch.Tensor
        Scalar to minimise, averaged over particles, differentiable.
    components : dict[str, float]
        Per-step breakdown: ``elbo``, ``reconstruction``, ``kl``, ``kl/<site>``,
        ``kl_weight``, ``loss`` and variant-specific extras, all summed over the
        batch (divide by ``num_data`` for per-data-point values).
    kl_per_dim : dict[str, torch.Tensor]
        Per latent site, the batch-summed KL per dimension (detached), where available.
    terms : list[ELBOTerms]
        The terms of every particle.
    """

    loss: torch.Tensor
    components: dict[str, float]
    kl_per_dim: dict[str, torch.Tensor]
    terms: list[ELBOTerms]


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
        As for :class:`pyro.infer.ELBO`. ``vectorize_particles=True`` is accepted only by
        variants that declare ``supports_vectorized_particles``.

    Attributes
    ----------
    beta : float
        The KL weight at the current step.
    step_count : int
        Number of optimisation steps taken.
    last : Evaluation or None
        The most recent evaluation (its ``components`` feed ``fit``'s History).
    """

    supports_vectorized_particles: bool = False

    def __init__(
        self,
        kl_weight: Schedule | float = 1.0,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
    ) -> None:
        from pyrocollapse._validation import check_int

        num_particles = check_int("num_particles", num_particles, minimum=1)
        if vectorize_particles and not self.supports_vectorized_particles:
            raise ValueError(
                f"{type(self).__name__} does not support vectorize_particles=True; "
                "use num_particles with vectorize_particles=False"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )
        self.schedule = make_schedule(kl_weight)
        self.step_count = 0
        self.last: Evaluation | None = None

    # -- the hook ----------------------------------------------------------------------
    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Turn one particle's terms into (loss to minimise, extra components).

        The default is the KL-weighted negative ELBO
        ``-(reconstruction - beta * kl - auxiliary)``.
        """
        return -(terms.reconstruction - self.beta * terms.kl - terms.auxiliary), {}

    # -- shared machinery ----------------------------------------------------------------
    @property
    def beta(self) -> float:
        """Current KL weight."""
        return self.schedule(self.step_count)

    def step(self) -> None:
        """Advance the schedule by one optimisation step."""
        self.step_count += 1

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def particle_traces(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Iterate over ``(model_trace, guide_trace)`` pairs, one per particle."""
        return self._get_traces(model, guide, args, kwargs)

    def evaluate(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Evaluation:
        """Compute the loss and its breakdown; the single path behind every loss method."""
        losses = []
        parts: dict[str, float] = {}
        per_dim: dict[str, torch.Tensor] = {}
        all_terms = []
        n = self.num_particles
        for model_trace, guide_trace in self.particle_traces(model, guide, *args, **kwargs):
            terms = compute_terms(model_trace, guide_trace)
            loss, extras = self.combine(terms)
            if terms.score.requires_grad:
                # score-function gradient for non-reparameterised sites, value unchanged
                surrogate = terms.score * loss.detach()
                loss = loss + surrogate - surrogate.detach()
            losses.append(loss)
            all_terms.append(terms)
            with torch.no_grad():
                values = {
                    "loss": loss,
                    "elbo": terms.elbo,
                    "reconstruction": terms.reconstruction,
                    "kl": terms.kl,
                    **{f"kl/{k}": t.total for k, t in terms.latent.items()},
                    **extras,
                }
                for k, v in values.items():
                    parts[k] = parts.get(k, 0.0) + float(v) / n
                for k, t in terms.latent.items():
                    if t.kl_per_dim is not None:
                        pd = t.total_per_dim.detach() / n
                        per_dim[k] = per_dim[k] + pd if k in per_dim else pd
        loss = losses[0] if n == 1 else torch.stack(losses).sum() / n
        parts["kl_weight"] = self.beta
        parts["num_data"] = all_terms[0].num_data
        warn_if_nan(loss, "loss")
        self.last = Evaluation(loss, parts, per_dim, all_terms)
        return self.last

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
            ev = self.evaluate(model, guide, *args, **kwargs)
            out: dict[str, torch.Tensor] = {}
            for terms in ev.terms:
                for k, v in terms.observed.items():
                    out[k] = out.get(k, 0.0) + v / len(ev.terms)
                for k, t in terms.latent.items():
                    v = t.total_per_dim if t.kl_per_dim is not None else t.total
                    out[k] = out.get(k, 0.0) + v / len(ev.terms)
        return out

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable description of the objective (name and settings)."""
        return {"class": type(self).__name__, "kl_weight": self.schedule.to_dict()}


@ELBOS.register("elbo")
class PlainELBO(BaseELBO):
    """The standard ELBO (KL weight 1), through the shared machinery.

    Equals Pyro's ``TraceMeanField_ELBO`` (analytic KL) on the same trace.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(1.0, **kwargs)


@ELBOS.register("annealed")
class AnnealedELBO(BaseELBO):
    """ELBO with the KL weight following a schedule (KL annealing / warm-up).

    ``loss = -(E_q[log p(x|z)] - beta_t * KL(q(z|x) || p(z)))`` with ``beta_t =
    schedule(t)``, t the number of ``loss_and_grads`` calls so far.

    Parameters
    ----------
    schedule : Schedule or float
        E.g. ``Linear(warmup_steps=1000)`` or ``Cyclical(period=500, n_cycles=4)``.

    References
    ----------
    Bowman et al. (2016). Generating Sentences from a Continuous Space. CoNLL.
    Fu et al. (2019). Cyclical Annealing Schedule. NAACL.
    """

    def __init__(self, schedule: Schedule | float, **kwargs: Any) -> None:
        super().__init__(schedule, **kwargs)


@ELBOS.register("beta")
class BetaELBO(BaseELBO):
    """beta-VAE objective ``-(E_q[log p(x|z)] - beta * KL)`` with a fixed ``beta >= 0``.

    References
    ----------
    Higgins et al. (2017). beta-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework. ICLR.
    """

    def __init__(self, beta: float = 1.0, **kwargs: Any) -> None:
        from pyrocollapse._validation import check_float

        super().__init__(check_float("beta", beta, minimum=0.0), **kwargs)


def make_elbo(name: str, **options: Any) -> BaseELBO:
    """Build an objective by its short name (see :data:`ELBOS`)."""
    return ELBOS.get(name)(**options)
