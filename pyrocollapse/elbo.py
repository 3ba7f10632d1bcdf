"""ELBO variants against posterior collapse, as Pyro ELBOs.

Every objective here subclasses :class:`BaseELBO`, itself a :class:`pyro.infer.ELBO`, so it
works as ``SVI(model, guide, optim, loss=...)``, as ``elbo(model, guide)`` (Pyro's
``ELBOModule``, used by Lightning and DDP) and with :func:`pyrocollapse.train.fit`.

==========================  ==========  =====================================================
class                       CLI name    objective (maximised; ``beta`` is the KL weight)
==========================  ==========  =====================================================
:class:`PlainELBO`          elbo        E_q[log p(x|z)] - KL
:class:`AnnealedELBO`       annealed    E_q[log p(x|z)] - beta_t KL, beta_t from a schedule
:class:`BetaELBO`           beta        E_q[log p(x|z)] - beta KL (Higgins et al. 2017)
:class:`FreeBitsELBO`       freebits    KL per dimension floored at ``free_bits`` (Kingma
                                        et al. 2016)
:class:`MIRegularizedELBO`  mi          ELBO + alpha I_q(x; z), minibatch estimate
:class:`InfoVAEELBO`        infovae     InfoVAE with an MMD divergence (Zhao et al. 2019)
:class:`IWAEELBO`           iwae        per-data-point importance-weighted bound (Burda
                                        et al. 2016)
:class:`BetaTCELBO`         betatc      KL split into index-code MI, total correlation and
                                        dimension-wise KL (Chen et al. 2018)
==========================  ==========  =====================================================

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
* guide-only (auxiliary) sites' log q.

Programs with enumerated sites (guide or model), non-reparameterised guide sites or
model-only sites take the general path of :mod:`pyrocollapse._dice`: each term is
weighted by its DiCE weight, so enumerated guide sites are summed exactly (weights q(y)),
enumerated model-only sites are summed out of their log-factors by Pyro's tensor variable
elimination, and each non-reparameterised site receives the score-function gradient of
the terms downstream of it only, per plate, with Pyro's ``baseline`` options. The
variant's weights apply to every term, the KL of a discrete site included. Point
masses (``Delta``), flows, transformed and masked distributions take the Monte Carlo KL
``log q(z) - log p(z)``. ``docs/pyro_programs.md`` lists which Pyro features each
variant supports; ``tests/test_gallery_objectives.py`` checks each variant against
Pyro's ``Trace_ELBO``/``TraceEnum_ELBO`` on a gallery of Pyro programs.

One hook, :meth:`BaseELBO.combine`, turns the terms into the loss to minimise and the
variant's extra components. ``loss``, ``differentiable_loss`` and ``loss_and_grads`` all
call the same :meth:`BaseELBO.evaluate`, so they can never disagree (Pyro's own
``Trace_ELBO.loss`` takes a separate code path from its gradient). A KL weight of exactly
0 works: weights multiply terms; nothing relies on ``poutine.scale``.

Speed
-----
Without validation (as in ``fit`` after its first step) the traces compute only the
log-probabilities the terms read (:func:`importance_traces`): no log q(z) and log p(z)
beside an analytic KL. Each term is computed once and shared by ``combine`` and the
breakdown, and the breakdown stays on the device as one tensor until
:attr:`Evaluation.components` is read. Every variant takes ``jit``: the whole
evaluation (model, guide, terms, ``combine``) is recorded as one graph per input
signature and compiled with :func:`torch.compile` (inductor; forward and backward),
with the KL weight as a tensor input so that schedules never recompile. The default,
``jit="auto"``, compiles only once a run is long enough to pay for the compilation and
falls back to eager mode (saying why, once) where the program cannot be compiled;
``jit=True`` compiles from the second call, ``jit=False`` never; see
:mod:`pyrocollapse.jit`. ``benchmarks/training.py`` times both against a hand-written
PyTorch step.

The minibatch estimators the variants share are plain functions of a :class:`LocalSite`
(q(z|x), p(z) and the draw z of one latent site over the batch), vectorised over the
batch: :func:`log_density_matrix`, :func:`log_aggregate_posterior`,
:func:`minibatch_mutual_information`, :func:`total_correlation_decomposition`,
:func:`mmd` with :func:`rbf_kernel` / :func:`imq_kernel`, and
:func:`importance_log_weights`.

Adding a variant
----------------
Subclass :class:`BaseELBO` and override :meth:`~BaseELBO.combine` (about twenty lines)::

    class HalfKL(BaseELBO):
        def combine(self, terms):
            kl = 0.5 * terms.kl
            return -(terms.reconstruction - self.beta * kl - terms.auxiliary), {"half_kl": kl}

Extras are scalar tensors summed over the (scaled) batch, like the reconstruction term;
``fit`` divides them by the number of data points for its :class:`~pyrocollapse.train.History`.
Extend :attr:`BaseELBO.weights` when the variant has weights of its own.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from pyro import poutine
from pyro.distributions import Delta, Distribution, Independent
from pyro.distributions.kl import kl_divergence
from pyro.distributions.torch_distribution import (
    MaskedDistribution,
)
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_traceenum_requirements, warn_if_nan
from torch.distributions import Normal, TransformedDistribution

from pyrocollapse._dice import TraceStructure
from pyrocollapse._distributions import as_vector, particle_slice, strip_mask, unwrap
from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.jit import CompiledEvaluation, JitMode, check_jit
from pyrocollapse.registry import Registry
from pyrocollapse.schedules import Schedule, make_schedule

__all__ = [
    "AGGREGATE_ESTIMATORS",
    "ELBOS",
    "IWAEELBO",
    "KERNELS",
    "AnnealedELBO",
    "BaseELBO",
    "BetaELBO",
    "BetaTCELBO",
    "ELBOTerms",
    "Evaluation",
    "FreeBitsELBO",
    "InfoVAEELBO",
    "LatentTerm",
    "LocalSite",
    "MIRegularizedELBO",
    "PlainELBO",
    "importance_log_weights",
    "importance_traces",
    "imq_kernel",
    "local_site",
    "local_sites",
    "log_aggregate_posterior",
    "log_density_matrix",
    "make_elbo",
    "minibatch_mutual_information",
    "mmd",
    "rbf_kernel",
    "total_correlation_decomposition",
]

#: Short name -> ELBO class, used by ``pyrocollapse run --elbo NAME``.
ELBOS: Registry[Any] = Registry("elbo")

#: Name of the particle plate Pyro adds for ``vectorize_particles=True``.
_PARTICLE_PLATE = "num_particles_vectorized"


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
        Under vectorised particles ``batch_shape`` starts with the particle dimension.
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
    particles : int
        Number of vectorised particles folded into ``kl`` (1 unless the objective
        vectorises particles); totals are averages over them.
    dice : torch.Tensor or None
        The term's DiCE weight (see :mod:`pyrocollapse._dice`), broadcastable to
        ``kl``: q(y) of the enumerated guide sites it sits under (``kl`` then has their
        enumeration dimensions on the left) times ``exp(log q(s) - log q(s).detach())``
        (value 1) of the non-reparameterised sites it depends on. ``None``: weight 1.
        Every total and average here is weighted by it, so enumerated sites are summed
        exactly and the score-function gradient flows through the totals.
    """

    name: str
    kl: torch.Tensor
    kl_per_dim: torch.Tensor | None
    scale: torch.Tensor | float
    analytic: bool
    guide_site: dict[str, Any] = field(repr=False)
    model_site: dict[str, Any] = field(repr=False)
    particles: int = 1
    dice: torch.Tensor | None = field(default=None, repr=False)

    def _set_dice(self, dice: torch.Tensor | None) -> None:
        """Attach a DiCE weight, broadcasting ``kl`` (and ``kl_per_dim``) to its shape."""
        self.dice = dice
        if dice is None:
            return
        shape = torch.broadcast_shapes(self.kl.shape, dice.shape)
        if self.kl.shape != shape:
            self.kl = self.kl.expand(shape)
        if self.kl_per_dim is not None and self.kl_per_dim.shape[:-1] != shape:
            self.kl_per_dim = self.kl_per_dim.expand(*shape, self.kl_per_dim.shape[-1])

    @property
    def q(self) -> Distribution:
        """The guide's distribution q(z|x) at this site."""
        return self.guide_site["fn"]

    @property
    def p(self) -> Distribution:
        """The model's distribution p(z) (or p(z | parents)) at this site."""
        return self.model_site["fn"]

    @property
    def value(self) -> torch.Tensor:
        """The guide's draw z, shape ``batch_shape + event_shape``."""
        return self.guide_site["value"]

    @cached_property
    def total(self) -> torch.Tensor:
        """Scaled KL summed over the batch: the amount subtracted from the ELBO.

        Computed once per term (every variant and the step's breakdown share it).
        """
        unit = not _is_tensor(self.scale) and self.scale == 1.0
        kl = self.kl if unit else self.kl * self.scale
        total = (kl if self.dice is None else kl * self.dice).sum()
        return total / self.particles if self.particles != 1 else total

    @property
    def weight(self) -> torch.Tensor:
        """Number of data points the batch stands for (sum of scales), a scalar."""
        ones = torch.ones_like(self.kl) * self.scale
        if self.dice is not None:
            ones = ones * self.dice.detach()
        return ones.sum() / self.particles

    @property
    def num_data(self) -> float:
        """:attr:`weight` as a float; without a tensor scale or a DiCE weight, computed
        on the host (no device synchronisation)."""
        if _is_tensor(self.scale) or self.dice is not None:
            return float(self.weight)
        return self.kl.numel() * float(self.scale) / self.particles

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
        if self.dice is None:
            return self.kl_per_dim.reshape(-1, d).mean(0)
        w = self.dice.detach().expand(self.kl_per_dim.shape[:-1]).unsqueeze(-1)
        return (self.kl_per_dim * w).reshape(-1, d).sum(0) / w.sum()

    @property
    def total_per_dim(self) -> torch.Tensor:
        """Scaled KL summed over the batch, per dimension, shape ``(latent_dim,)``."""
        if self.kl_per_dim is None:
            return self.mean_per_dim  # raises the explanatory error
        if self.dice is None and not _is_tensor(self.scale) and self.scale == 1.0:
            total = self.kl_per_dim.reshape(-1, self.kl_per_dim.shape[-1]).sum(0)
            return total / self.particles if self.particles != 1 else total
        scale = torch.as_tensor(self.scale, dtype=self.kl.dtype, device=self.kl.device)
        if self.dice is not None:
            scale = scale * self.dice
        weighted = self.kl_per_dim * scale.expand_as(self.kl).unsqueeze(-1)
        return weighted.reshape(-1, self.kl_per_dim.shape[-1]).sum(0) / self.particles


@dataclass
class ELBOTerms:
    """All terms of the ELBO for one particle, computed once by :class:`BaseELBO`.

    ``elbo = reconstruction - kl - auxiliary``; every quantity is a scalar tensor in nats,
    summed over the (scaled) batch unless stated otherwise, and averaged over vectorised
    particles.

    Attributes
    ----------
    observed : dict[str, torch.Tensor]
        Per observed site, its scaled, masked log-likelihood summed over the batch.
    latent : dict[str, LatentTerm]
        Per latent site (sampled by both guide and model), its KL term.
    auxiliary : torch.Tensor
        Sum of log q over guide-only sites.
    score : torch.Tensor
        Sum of the score functions log q(s) of non-reparameterised sampled guide sites
        (for information: their gradients are already in the terms, see ``dice``).
    model_trace, guide_trace : pyro.poutine.Trace
        The traces. Without validation only the log-probabilities the terms read are
        computed (see :func:`importance_traces`); ``trace.compute_log_prob()`` adds the
        others (memoised).
    particles : int
        Number of vectorised particles in the traces (1 unless vectorised).
    surrogate : torch.Tensor or None
        Value-0 term added to the loss: baseline corrections of score-function sites and
        the baselines' own losses (Pyro's ``infer={"baseline": ...}`` options).
    score_factor : torch.Tensor or None
        ``exp(sum_s log q(s) - detach)`` over all score-function sites (value 1): a
        variant's extra term that depends on the whole batch (minibatch estimators) is
        multiplied by it, so that its score-function gradient is unbiased.
    structure : pyrocollapse._dice.TraceStructure or None
        Which sites are enumerated, score-function or model-only (``None`` on the fast
        path, where none is).

    Notes
    -----
    Observed sites include, as in Pyro's ``Trace_ELBO``, the log-density of model-only
    sites that are sampled (neither observed nor in the guide nor enumerated). A group
    of sites summed out together because they share an enumerated model-only site is
    one entry named after its observed sites joined by ``+``.
    """

    observed: dict[str, torch.Tensor]
    latent: dict[str, LatentTerm]
    auxiliary: torch.Tensor
    score: torch.Tensor
    model_trace: Any = field(repr=False)
    guide_trace: Any = field(repr=False)
    particles: int = 1
    surrogate: torch.Tensor | None = field(default=None, repr=False)
    score_factor: torch.Tensor | None = field(default=None, repr=False)
    structure: Any = field(default=None, repr=False)

    @cached_property
    def reconstruction(self) -> torch.Tensor:
        """Sum over observed sites of the scaled log-likelihood (computed once)."""
        return _sum(self.observed.values())

    @cached_property
    def kl(self) -> torch.Tensor:
        """Total KL over latent sites (computed once)."""
        return _sum(t.total for t in self.latent.values())

    @cached_property
    def elbo(self) -> torch.Tensor:
        """The plain (unweighted) ELBO estimate (computed once)."""
        return self.reconstruction - self.kl - self.auxiliary

    @property
    def num_data(self) -> float:
        """Data points represented by the batch (for per-data-point reporting).

        The data plate is the outermost vectorised plate that encloses every observed
        site (the plate over sequences of a deep Markov model, over documents of LDA);
        the batch stands for its (subsample) size times the sites' scale (plate
        subsampling and ``poutine.scale``). Without observed sites in a common plate, the
        summed scale of the first local latent site; else 1.
        """
        frame = data_plate_frame(self.model_trace)
        if frame is not None:
            _, size, scale = frame
            return float(size * scale)
        for term in self.latent.values():
            if term.q.batch_shape != torch.Size():
                return term.num_data
        return 1.0


def data_plate_frame(model_trace: Any) -> tuple[str, int, float] | None:
    """``(name, batch size, mean scale)`` of the outermost vectorised plate enclosing
    every observed site of ``model_trace``, or ``None`` (no observed site, or none in a
    common plate)."""
    common: list[Any] | None = None
    scale: Any = 1.0
    for site in model_trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        frames = [
            f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLE_PLATE
        ]
        if common is None:
            common, scale = frames, site["scale"]
        else:
            names = {f.name for f in frames}
            common = [f for f in common if f.name in names]
    if not common:
        return None
    f = common[0]
    s = float(scale.mean()) if isinstance(scale, torch.Tensor) else float(scale)
    return f.name, int(f.size), s


def _is_tensor(x: object) -> bool:
    return isinstance(x, torch.Tensor)


def _sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of scalar tensors without the extra ``zeros(())`` operand; ``zeros(())`` if empty."""
    total: torch.Tensor | None = None
    for t in tensors:
        total = t if total is None else total + t
    return torch.zeros(()) if total is None else total


def _factor(d: Any) -> Any:
    """Return the univariate base of ``Independent(base, 1)``, else ``None``."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if base.event_shape == torch.Size():
            return base
    return None


def closed_form_allowed(q: Any, p: Any) -> bool:
    """Whether KL(q || p) may be taken in closed form for a site.

    Not for a point mass (``Delta``, whose ``log_density`` carries a Jacobian that
    Pyro's registered KL ignores), a transformed or flow guide
    (``TransformedDistribution``: IAF, ``AutoNormal`` on constrained sites) or a masked
    distribution: these take the Monte Carlo estimate log q(z) - log p(z), which keeps
    every term, as Pyro's ``Trace_ELBO`` does.
    """
    for d in (q, p):
        if isinstance(unwrap(d), (Delta, TransformedDistribution, MaskedDistribution)):
            return False
    return True


def _kl(q: Any, p: Any, z: torch.Tensor, closed_form: bool) -> tuple[torch.Tensor, bool]:
    """KL(q || p) in closed form where allowed and known, else log q(z) - log p(z)."""
    if closed_form and closed_form_allowed(q, p):
        try:
            return kl_divergence(q, p), True
        except NotImplementedError:
            pass
    return q.log_prob(z) - p.log_prob(z), False


def latent_term(
    name: str,
    guide_site: dict[str, Any],
    model_site: dict[str, Any],
    particles: int = 1,
    *,
    closed_form: bool = True,
) -> LatentTerm:
    """KL(q || p) of one latent site from its guide and model trace sites.

    Analytic where ``closed_form`` allows it and :func:`pyro.distributions.kl.kl_divergence`
    has a closed form, the Monte Carlo estimate log q(z) - log p(z) at the guide's sample
    otherwise; per dimension when both distributions factorise.
    """
    q, p, z = guide_site["fn"], model_site["fn"], guide_site["value"]
    scale, mask = guide_site["scale"], guide_site["mask"]
    q1, p1 = _factor(q), _factor(p)
    # enumerated values carry extra dimensions on the left of q's batch shape
    value_batch = z.shape[: z.dim() - len(q.event_shape)]
    batch = torch.broadcast_shapes(value_batch, q.batch_shape)
    per_dim = None
    if q1 is not None and p1 is not None:
        per_dim, analytic = _kl(q1, p1, z, closed_form)
        full = torch.broadcast_shapes(per_dim.shape, q1.batch_shape)
        if per_dim.shape != full:
            per_dim = per_dim.expand(full)
        kl = per_dim.sum(-1)
    elif (
        not closed_form and "unscaled_log_prob" in guide_site and "unscaled_log_prob" in model_site
    ):
        # the traces already hold log q(z) and log p(z) (validation computes them): reuse
        kl, analytic = guide_site["unscaled_log_prob"] - model_site["unscaled_log_prob"], False
    else:
        kl, analytic = _kl(q, p, z, closed_form)
        if not torch.is_tensor(kl):
            kl = torch.full(q.batch_shape, float(kl))
    if not analytic:
        full = torch.broadcast_shapes(kl.shape, batch)
    else:
        full = torch.broadcast_shapes(kl.shape, q.batch_shape)
    kl = kl.expand(full) if kl.shape != full else kl
    if mask is not None:
        kl = scale_and_mask(kl, mask=mask)
        if per_dim is not None:
            per_dim = per_dim * torch.as_tensor(mask, dtype=per_dim.dtype).unsqueeze(-1)
    return LatentTerm(name, kl, per_dim, scale, analytic, guide_site, model_site, particles)


def importance_traces(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, max_plate_nesting: float
) -> tuple[Any, Any]:
    """The guide's trace and the model's trace replayed on it, pruned of subsample sites.

    Under validation (or for a ``GuideMessenger`` guide) this is exactly
    :func:`pyro.infer.enum.get_importance_trace`: every site's log-probability and score
    parts are computed and site shapes are checked. Without validation it is the lean
    path of the training loop: it computes only what :func:`compute_terms` reads, the
    log-likelihood of observed sites, log q of guide-only sites and score parts of
    non-reparameterised guide sites. A latent site's log q(z) and log p(z) are not
    computed when its KL is analytic (they would be discarded); call
    ``trace.compute_log_prob()`` (memoised) to get them.

    Returns
    -------
    (model_trace, guide_trace)
    """
    if is_validation_enabled() or isinstance(poutine.unwrap(guide), Messenger):
        return get_importance_trace("flat", max_plate_nesting, model, guide, args, kwargs)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace.compute_log_prob(lambda name, site: site["is_observed"])
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and (
            not site["fn"].has_rsample or name not in model_trace.nodes
        ):
            guide_trace.compute_score_parts()  # rare: score-function or auxiliary sites
            break
    return model_trace, guide_trace


def compute_terms(
    model_trace: Any, guide_trace: Any, particles: int = 1, *, analytic_kl: bool = True
) -> ELBOTerms:
    """Compute :class:`ELBOTerms` from a guide trace and the model trace replayed on it.

    The traces must carry the log-probabilities of observed sites (model) and the score
    parts of guide-only and non-reparameterised sites (guide), as
    :func:`importance_traces` and :func:`pyro.infer.enum.get_importance_trace` leave
    them. ``particles`` is the size of a vectorised particle plate (sums are divided by
    it), 1 otherwise. ``analytic_kl=False`` takes every KL as the Monte Carlo estimate
    log q(z) - log p(z), as Pyro's ``Trace_ELBO`` does.

    The closed-form KL of a site z integrates over q(z | ...) with p(z | parents) held
    fixed, which is valid only when z's model parents are drawn before z in the guide.
    A site preceded in the model by a latent site that the guide draws after it (e.g.
    a hierarchical prior p(t) p(z | t) with the guide q(z | x) q(t | z)) gets the
    Monte Carlo estimate instead, which is unbiased whatever the guide's order.

    Programs with enumerated sites (guide or model), non-reparameterised guide sites or
    model-only sites take the general path (:mod:`pyrocollapse._dice`): enumerated
    guide sites are summed exactly with weights q(y), enumerated model-only sites are
    summed out of their log-factors, and non-reparameterised sites get score-function
    gradients from the terms downstream of them only, per plate, with Pyro's baseline
    options honoured.
    """
    structure = TraceStructure.from_traces(model_trace, guide_trace)
    if not structure.simple:
        return _compute_terms_general(structure, particles, analytic_kl)
    observed: dict[str, torch.Tensor] = {}
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"]:
            observed[name] = (
                site["log_prob_sum"] / particles if particles != 1 else site["log_prob_sum"]
            )
    latent = {
        t.name: t for t in _latent_terms(model_trace, guide_trace, particles, analytic_kl)
    }
    auxiliary_parts = []
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and name not in model_trace.nodes:
            auxiliary_parts.append(site["log_prob_sum"] / particles)
    auxiliary = _sum(auxiliary_parts)
    return ELBOTerms(
        observed, latent, auxiliary, torch.zeros(()), model_trace, guide_trace, particles
    )


def _latent_terms(
    model_trace: Any,
    guide_trace: Any,
    particles: int,
    analytic_kl: bool,
    skip: frozenset[str] | set[str] = frozenset(),
    latest: int = -1,
) -> Iterator[LatentTerm]:
    """The :class:`LatentTerm` of every site sampled by both programs (but ``skip``), in
    model order. The KL is in closed form only where allowed and where the site's model
    parents were drawn before it in the guide (``latest``: the latest guide position
    among the latent sites met so far in the model)."""
    guide_order = {name: i for i, name in enumerate(guide_trace.nodes)}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in guide_order:
            continue
        position = guide_order[name]
        if name not in skip:
            yield latent_term(
                name,
                guide_trace.nodes[name],
                site,
                particles,
                closed_form=analytic_kl and latest < position,
            )
        latest = max(latest, position)


def _compute_terms_general(
    structure: TraceStructure, particles: int, analytic_kl: bool
) -> ELBOTerms:
    """:func:`compute_terms` for programs with enumerated, score-function or model-only
    sites: every term is weighted by its DiCE weight (see :mod:`pyrocollapse._dice`)."""
    model_trace, guide_trace = structure.model_trace, structure.guide_trace
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    groups = structure.model_enum_groups()
    grouped = {n for g in groups for n in g.sites}
    observed: dict[str, torch.Tensor] = {}
    latent: dict[str, LatentTerm] = {}
    costs: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []  # for baselines
    guide_order = {name: i for i, name in enumerate(guide_trace.nodes)}
    latest = -1

    def add_latent(term: LatentTerm) -> None:
        own = term.name in structure.score_sites and not term.analytic
        term._set_dice(structure.site_weight(term.name, own=own))
        latent[term.name] = term
        costs.append((term.name, -term.kl * term.scale, term.dice))

    for group in groups:
        if group.latent and (group.observed or len(group.latent) > 1):
            raise ValueError(
                f"the enumerated model sites {sorted(set(group.sites) - set(group.latent))} "
                f"couple the latent site(s) {group.latent} with "
                f"{group.observed or group.latent[1:]} in one sum; the KL of a latent site "
                "cannot be separated from that sum, so its weight cannot be applied. Use "
                "pyro.infer.TraceEnum_ELBO, or enumerate those sites in the guide"
            )
        if group.latent:
            name = group.latent[0]
            info = structure.info[name]
            if len(group.terms) != 1 or group.terms[0][0] != info.ordinal:
                raise ValueError(
                    f"latent site {name!r}: summing out the enumerated model sites "
                    f"{sorted(set(group.sites) - {name})} leaves a log-density that is not "
                    "one value per draw of the site (an enumerated site outside its plates), "
                    "so its KL per data point is undefined. Use pyro.infer.TraceEnum_ELBO"
                )
            gsite, msite = guide_trace.nodes[name], model_trace.nodes[name]
            log_q = scale_and_mask(gsite["unscaled_log_prob"], mask=gsite["mask"])
            kl = log_q - group.terms[0][1]
            kl = kl.expand(torch.broadcast_shapes(kl.shape, gsite["fn"].batch_shape))
            add_latent(LatentTerm(name, kl, None, gsite["scale"], False, gsite, msite, particles))
            latest = max(latest, guide_order[name])
            continue
        key = "+".join(group.observed) if group.observed else "+".join(group.sites)
        anchor = group.observed[-1] if group.observed else group.sites[-1]
        total = None
        for plates, term in group.terms:
            cost = term * group.scale
            w = structure.weight(plates, group.model_pos, None)
            value = structure.expect(cost, w)
            total = value if total is None else total + value
            costs.append((anchor, cost, w))
        observed[key] = (total if total is not None else torch.zeros(())) / particles

    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or name in grouped:
            continue
        if site["is_observed"] or name in structure.model_only:
            w = structure.site_weight(name)
            observed[name] = structure.expect(site["log_prob"], w) / particles
            costs.append((name, site["log_prob"], w))
    for term in _latent_terms(model_trace, guide_trace, particles, analytic_kl, grouped, latest):
        add_latent(term)
    auxiliary_parts = []
    score_parts = []
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if name not in model_trace.nodes:
            w = structure.site_weight(name, own=name in structure.score_sites)
            auxiliary_parts.append(structure.expect(site["log_prob"], w) / particles)
            costs.append((name, -site["log_prob"], w))
        if name in structure.score_sites:
            score_parts.append(site["score_parts"].score_function.sum())
    latent = {n: latent[n] for n in model_trace.nodes if n in latent}  # model order
    score_factor = structure.whole_trace_factor()
    for term in latent.values():  # read by local_sites
        term._structure = structure  # type: ignore[attr-defined]
        term._score_factor = score_factor  # type: ignore[attr-defined]
    return ELBOTerms(
        observed,
        latent,
        _sum(auxiliary_parts),
        _sum(score_parts),
        model_trace,
        guide_trace,
        particles,
        surrogate=structure.baseline_surrogate(costs),
        score_factor=score_factor,
        structure=structure,
    )


# --------------------------------------------------------------------------------------
# Minibatch estimators shared by the variants
# --------------------------------------------------------------------------------------
@dataclass
class LocalSite:
    """One latent site local to the data plate, as the minibatch estimators see it.

    Attributes
    ----------
    name : str
        Site name.
    q : Distribution
        q(z|x_j) for every row j: batch shape ``(B,)``, event shape ``(D,)``.
    p : Distribution
        p(z) at the site: batch shape broadcastable to ``(B,)``, event shape ``(D,)``.
    z : torch.Tensor
        The guide's draw, shape ``(B, D)``; row i is a draw from q(z|x_i).
    mask : torch.Tensor
        Boolean, shape ``(B,)``: rows that take part (the site's mask).
    scale : torch.Tensor
        Shape ``(B,)``: the data points each row stands for (plate subsampling x
        ``poutine.scale``).
    particles : int
        Number of vectorised particles the objective averages over (each particle is
        one ``LocalSite``); :meth:`total` divides by it.
    factor : torch.Tensor or None
        Scalar of value 1 carrying the score-function gradient of the program's
        non-reparameterised sites (``ELBOTerms.score_factor``); :meth:`total`
        multiplies by it.
    """

    name: str
    q: Distribution
    p: Distribution
    z: torch.Tensor
    mask: torch.Tensor
    scale: torch.Tensor
    particles: int = 1
    factor: torch.Tensor | None = field(default=None, repr=False)
    prior_sampler: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def dataset_size(self) -> float:
        """Number of data points the batch stands for, N (sum of the rows' scales)."""
        return float((self.scale * self.mask).sum())

    def total(self, rows: torch.Tensor) -> torch.Tensor:
        """Scale-weighted sum over the rows that take part of a per-row quantity ``(B,)``,
        divided by the number of particles."""
        out = torch.where(self.mask, rows * self.scale, torch.zeros_like(rows)).sum()
        if self.factor is not None:
            out = out * self.factor
        return out / self.particles if self.particles != 1 else out

    def sample_prior(self) -> torch.Tensor:
        """One draw from p(z) per row, shape ``(B, D)``, reparameterised where p allows."""
        if self.prior_sampler is not None:
            return self.prior_sampler()
        p = self.p.expand(self.mask.shape)
        return p.rsample() if p.has_rsample else p.sample()


def _enumeration_note(term: LatentTerm, objective: str) -> str | None:
    structure = getattr(term, "_structure", None)
    if structure is None or not structure.enumerated:
        return None
    return (
        f"{objective}: latent site {term.name!r} lies under the enumerated guide site(s) "
        f"{structure.enumerated}, so its draw is one z per enumerated value and data point; "
        "the minibatch estimate of the aggregate posterior q(z) needs one draw per data "
        "point. Sample those sites instead (infer={'enumerate': None}), or use an objective "
        "that sums enumerated sites exactly (elbo, annealed, beta, freebits)"
    )


def local_sites(term: LatentTerm, objective: str) -> list[LocalSite]:
    """View ``term`` as :class:`LocalSite` s, one per vectorised particle; ``[]`` for a
    global site.

    A local site lives in one data plate: batch shape ``(B,)`` (``(K, B)`` under K
    vectorised particles), event shape ``(D,)``; a scalar latent per data point (event
    shape ``()``) is viewed as ``D = 1``. A global site (batch shape ``()``) has no batch
    to estimate an aggregate posterior from, and the variants treat it with its plain
    KL, as they do discrete and other non-reparameterised sites. Rows masked out by the
    site's mask or by a masked distribution (``.mask(m)``) take no part.

    Raises
    ------
    ValueError
        For a site under an enumerated guide site, or any other shape, naming
        ``objective``, the site and the fix.
    """
    if not isinstance(term, LatentTerm):
        raise TypeError(f"term must be a LatentTerm, got {type(term).__name__}")
    q, z, p_full = term.q, term.value, term.p
    k = term.particles
    batch = q.batch_shape
    if batch == torch.Size() or (k != 1 and batch == torch.Size([k])):
        return []
    if not q.has_rsample or isinstance(unwrap(q), Delta):
        # a discrete (or otherwise non-reparameterised) site, or a point estimate: it has
        # no spread to estimate an aggregate posterior from, and keeps its plain KL
        return []
    want = 1 if k == 1 else 2
    note = _enumeration_note(term, objective)
    if note is not None and (len(batch) > want or z.dim() - len(q.event_shape) > want):
        raise ValueError(note)
    if len(q.event_shape) == 0 and len(batch) == want and z.dim() == want:
        # a scalar latent per data point: one latent dimension
        q, p_full, z = as_vector(q), as_vector(p_full), z.unsqueeze(-1)
    if len(batch) != want or len(q.event_shape) != 1 or z.dim() != want + 1:
        raise ValueError(
            f"{objective}: latent site {term.name!r} has batch shape {tuple(batch)} and "
            f"event shape {tuple(q.event_shape)}; its minibatch estimators need a latent local "
            "to one data plate, with batch shape (B,) and event shape (latent_dim,). Try one "
            "of the following fixes: declare the latent dimensions with .to_event(1); put the "
            "site in a single pyro.plate over the data"
        )
    b = batch[-1]
    mask = term.guide_site["mask"]
    mask = (
        torch.ones(batch, dtype=torch.bool, device=z.device)
        if mask is None
        else torch.as_tensor(mask, device=z.device).expand(batch).bool()
    )
    # masks carried by the distributions (``.mask(m)``) leave rows out too
    q, q_mask = strip_mask(q)
    p_full, p_mask = strip_mask(p_full)
    for m in (q_mask, p_mask):
        if m is not None:
            mask = mask & torch.as_tensor(m, device=z.device).expand(batch).bool()
    scale = torch.as_tensor(term.scale, dtype=z.dtype, device=z.device).expand(batch)
    factor = getattr(term, "_score_factor", None)
    if k == 1:
        return [LocalSite(term.name, q, p_full, z, mask, scale, 1, factor)]
    draws: list[torch.Tensor] = []

    def sampler(i: int) -> Callable[[], torch.Tensor]:
        def draw() -> torch.Tensor:
            if not draws:  # one prior draw for every particle, sliced
                p = p_full.expand(batch)
                draws.append(p.rsample() if p.has_rsample else p.sample())
            return draws[0][i]

        return draw

    return [
        LocalSite(
            term.name,
            particle_slice(q, i, b),
            particle_slice(p_full, i, b),
            z[i],
            mask[i],
            scale[i],
            k,
            factor,
            sampler(i),
        )
        for i in range(k)
    ]


def local_site(term: LatentTerm, objective: str) -> LocalSite | None:
    """View ``term`` as a :class:`LocalSite`, or ``None`` for a global or discrete site.

    The single-particle form of :func:`local_sites`; raises ``ValueError`` under
    vectorised particles (use :func:`local_sites`).
    """
    if isinstance(term, LatentTerm) and term.particles != 1:
        raise ValueError(
            f"{objective}: latent site {term.name!r} has {term.particles} vectorised "
            "particles; use local_sites(term, objective), which gives one LocalSite per particle"
        )
    sites = local_sites(term, objective)
    return sites[0] if sites else None


def log_density_matrix(site: LocalSite, per_dim: bool = False) -> torch.Tensor:
    """Pairwise log-densities ``L[i, j] = log q(z_i | x_j)``.

    Parameters
    ----------
    site : LocalSite
    per_dim : bool
        Return the univariate log-densities ``log q(z_id | x_j)`` per dimension; needs a
        factorised q (``Independent`` of univariates).

    Returns
    -------
    torch.Tensor
        Shape ``(B, B)``, or ``(B, B, D)`` with ``per_dim=True``. Differentiable in z and
        in q's parameters.

    Notes
    -----
    For a diagonal Normal q, the joint densities come from three ``(B, D) x (D, B)``
    matrix products in float64 (no ``(B, B, D)`` tensor; on CPU and CUDA), and the
    per-dimension ones from three passes over the ``(B, B, D)`` tensor,
    ``-0.5 ((z - mu) / sigma)^2 - log sigma - log(2 pi) / 2``, instead of the six of
    ``Normal.log_prob``; the values agree with ``Normal.log_prob`` up to float32
    rounding. Pyro's validation adds ``q``'s argument checks of ``z`` but never changes
    the numeric path, so that a run is the same with validation on or off (``fit``
    validates the first step of every call, and a resumed run must repeat the
    uninterrupted one bit for bit).
    """
    if not isinstance(site, LocalSite):
        raise TypeError(f"site must be a LocalSite, got {type(site).__name__}")
    z = site.z.unsqueeze(-2)  # (B, 1, D) against q's batch (B,)
    q1 = _factor(site.q)
    if (
        is_validation_enabled()
        and getattr(site.q, "_validate_args", False)
        and not torch._C._get_tracing_state()
    ):
        site.q._validate_sample(z)  # checks only: the numbers below are the same either way
    if _is_plain_normal(q1):
        if not per_dim and site.z.device.type in ("cpu", "cuda"):
            return _normal_pairwise_joint(q1, site.z)
        # the (B, B, D) tensor dominates: 3 passes over it instead of Normal.log_prob's 6
        inv_scale = q1.scale.reciprocal()
        u = (z - q1.loc) * inv_scale
        return torch.addcmul(inv_scale.log() - _HALF_LOG_2PI, u, u, value=-0.5)
    if not per_dim:
        return site.q.log_prob(z)
    if q1 is None:
        raise ValueError(
            f"latent site {site.name!r}: per-dimension densities need a factorised guide "
            f"distribution (Independent of univariates, e.g. Normal(loc, scale).to_event(1)), "
            f"got {type(site.q).__name__}"
        )
    return q1.log_prob(z)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_pairwise_joint(q1: Normal, z: torch.Tensor) -> torch.Tensor:
    """``log q(z_i | x_j)`` summed over dimensions for a diagonal Normal, ``(B, B)``.

    Expands ``sum_d ((z_id - mu_jd) / sigma_jd)^2`` into three ``(B, D) x (D, B)``
    products, so no ``(B, B, D)`` tensor is formed. The products run in float64: their
    terms, of order ``(z / sigma)^2``, cancel, and float64 keeps the result accurate to
    ~1e-8 nats even at sigma = 1e-4.
    """
    b, d = z.shape[-2], z.shape[-1]
    loc, scale = (t.expand(b, d) for t in torch.broadcast_tensors(q1.loc, q1.scale))
    zd, locd = z.double(), loc.double()
    w = scale.double().reciprocal().square()  # (B, D): 1 / sigma_j^2
    m = locd * w
    quad = zd.square() @ w.T - 2.0 * (zd @ m.T) + (locd * m).sum(-1)
    bias = -scale.log().sum(-1).double() - d * _HALF_LOG_2PI  # (B,) over j
    return (bias - 0.5 * quad).to(z.dtype)


def _is_plain_normal(d: Any) -> bool:
    """A ``Normal`` whose ``log_prob`` is torch's (not overridden by a subclass)."""
    return isinstance(d, Normal) and type(d).log_prob is Normal.log_prob


#: Estimators of log q(z_i) from the minibatch, for :func:`log_aggregate_posterior`.
AGGREGATE_ESTIMATORS = ("batch", "stratified", "mws")


def log_aggregate_posterior(
    log_q: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    dataset_size: float | None = None,
    estimator: str = "batch",
) -> torch.Tensor:
    """Minibatch estimate of the aggregate posterior's log-density at each row's draw.

    The aggregate posterior is q(z) = (1/N) sum_n q(z|x_n) over the N data points; row i
    holds z_i ~ q(z|x_i) and ``log_q[i, j] = log q(z_i|x_j)`` for the M rows of the
    batch (see :func:`log_density_matrix`).

    ``"batch"``
        log (1/M) sum_j q(z_i|x_j): the batch taken as the data distribution (He et al.
        2019). With it, log q(z_i|x_i) - log q(z_i) <= log M.
    ``"stratified"``
        log [(1/N) q(z_i|x_i) + (N-1)/(N(M-1)) sum_{j != i} q(z_i|x_j)]: unbiased for
        q(z_i) of the whole data set when the other M-1 rows are a uniform sample of
        the other points (the minibatch stratified sampling idea of Chen et al. 2018);
        equals ``"batch"`` when N = M.
    ``"mws"``
        log sum_j q(z_i|x_j) - log(N M): minibatch weighted sampling (Chen et al. 2018),
        biased low; its constant offset does not change gradients.

    Parameters
    ----------
    log_q : torch.Tensor
        Shape ``(B, B)`` or ``(B, B, D)`` (per dimension); j along dim 1.
    mask : torch.Tensor or None
        Boolean, shape ``(B,)``: rows that take part (columns of other rows are ignored).
    dataset_size : float or None
        N, the number of data points the batch stands for; needed by ``"stratified"``
        and ``"mws"``, and at least M.
    estimator : {"batch", "stratified", "mws"}

    Returns
    -------
    torch.Tensor
        Shape ``(B,)`` or ``(B, D)``: the estimate of log q(z_i) (or of the marginal
        log q(z_id)). Rows outside ``mask`` hold finite but meaningless values.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    """
    estimator = check_choice("estimator", estimator, AGGREGATE_ESTIMATORS)
    if not isinstance(log_q, torch.Tensor):
        raise TypeError(f"log_q must be a torch.Tensor, got {type(log_q).__name__}")
    if log_q.dim() not in (2, 3) or log_q.shape[0] != log_q.shape[1]:
        raise ValueError(
            f"log_q must have shape (B, B) or (B, B, D), got {tuple(log_q.shape)}; build it "
            "with log_density_matrix"
        )
    if dataset_size is not None:
        dataset_size = check_float("dataset_size", dataset_size, minimum=0.0, strict_minimum=True)
    b = log_q.shape[0]
    extra = (1,) * (log_q.dim() - 2)
    if mask is not None:
        log_q = log_q.masked_fill(~mask.view(1, b, *extra), -math.inf)
        m = int(mask.sum())
    else:
        m = b
    if m < 1:
        raise ValueError("log_aggregate_posterior needs at least one row in mask, got none")
    if estimator == "batch":
        return torch.logsumexp(log_q, dim=1) - math.log(m)
    n = check_float("dataset_size", dataset_size, minimum=0.0, strict_minimum=True)
    if n < m - 1e-6 * m:
        raise ValueError(
            f"dataset_size must be >= the {m} rows of the batch for estimator {estimator!r}, "
            f"got {n:g}; the data-set size is read from the site's scale (plate subsampling), "
            "so a poutine.scale below 1 cannot be told apart from a smaller data set. Use "
            "estimator='batch' in that case"
        )
    if estimator == "mws":
        return torch.logsumexp(log_q, dim=1) - math.log(n * m)
    # stratified: own posterior weighs 1/N, each of the other M-1 rows (N-1)/(N(M-1))
    off = math.log(n - 1) - math.log(n) - math.log(m - 1) if m > 1 and n > 1 else -math.inf
    eye = torch.eye(b, dtype=torch.bool, device=log_q.device).view(b, b, *extra)
    log_w = torch.full_like(eye, off, dtype=log_q.dtype).masked_fill(eye, -math.log(n))
    return torch.logsumexp(log_q + log_w, dim=1)


def minibatch_mutual_information(site: LocalSite, estimator: str = "batch") -> torch.Tensor:
    """Per-row terms of the minibatch estimate of I_q(x; z).

    ``I_q(x; z) = E_x E_{q(z|x)}[log q(z|x) - log q(z)]`` with q(z) the aggregate
    posterior, estimated from the rows' own draws z_i ~ q(z|x_i) and
    :func:`log_aggregate_posterior`. The estimate is the mean of the returned rows over
    the rows in ``site.mask``; with ``estimator="batch"`` it is at most log M (M rows).
    Differentiable (reparameterised z).

    Returns
    -------
    torch.Tensor
        Shape ``(B,)``: log q(z_i|x_i) - log q̂(z_i), nats.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Hoffman & Johnson (2016). ELBO surgery: yet another way to carve up the variational
    evidence lower bound. NeurIPS Workshop on Advances in Approximate Bayesian Inference.
    """
    log_q = log_density_matrix(site)
    log_qz = log_aggregate_posterior(
        log_q, mask=site.mask, dataset_size=site.dataset_size, estimator=estimator
    )
    return torch.diagonal(log_q) - log_qz


def total_correlation_decomposition(
    site: LocalSite, estimator: str = "stratified"
) -> dict[str, torch.Tensor]:
    """Per-row terms of the decomposition KL = index-code MI + TC + dimension-wise KL.

    With q(z) the aggregate posterior and q(z_d) its marginals (Chen et al. 2018, eq. 2)::

        index_code_mi     = log q(z|x) - log q(z)
        total_correlation = log q(z) - sum_d log q(z_d)
        dimwise_kl        = sum_d log q(z_d) - log p(z)

    at each row's draw; the three add up to the Monte Carlo KL log q(z|x) - log p(z)
    exactly, whatever the estimator of q(z).

    Returns
    -------
    dict[str, torch.Tensor]
        ``"index_code_mi"``, ``"total_correlation"``, ``"dimwise_kl"``, each ``(B,)``.

    References
    ----------
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    """
    log_q_dims = log_density_matrix(site, per_dim=True)  # (B, B, D)
    log_q = log_q_dims.sum(-1)
    kw = {"mask": site.mask, "dataset_size": site.dataset_size, "estimator": estimator}
    log_qz = log_aggregate_posterior(log_q, **kw)
    log_prod = log_aggregate_posterior(log_q_dims, **kw).sum(-1)
    log_pz = site.p.log_prob(site.z).expand_as(log_qz)
    return {
        "index_code_mi": torch.diagonal(log_q) - log_qz,
        "total_correlation": log_qz - log_prod,
        "dimwise_kl": log_prod - log_pz,
    }


def _check_samples(x: object, y: object) -> None:
    """``x`` and ``y`` are tensors of shapes ``(n, D)`` and ``(m, D)``; finite where
    Pyro's validation is on (the scan costs a pass over the data)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"{name} must have shape (N, D) (one sample per row), got {tuple(t.shape)}"
            )
    if x.shape[-1] != y.shape[-1]:  # type: ignore[union-attr]
        raise ValueError(
            "x and y must have the same number of columns D, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"  # type: ignore[union-attr]
        )
    if is_validation_enabled() and not torch._C._get_tracing_state():
        for name, t in (("x", x), ("y", y)):
            bad = (~torch.isfinite(t)).sum()  # type: ignore[arg-type]
            if bad:
                nan = int(torch.isnan(t).sum())  # type: ignore[arg-type]
                raise ValueError(
                    f"{name} contains {nan} NaN and {int(bad) - nan} infinite values; "
                    "the samples must be finite"
                )


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distances ``||x_i - y_j||^2``, ``(n, m)``, from ``(n, D)`` and ``(m, D)``.

    As ``|x|^2 + |y|^2 - 2 x.y`` with one matrix product in float64 (no ``(n, m, D)``
    tensor; float64 because the terms cancel), clamped at 0; the broadcast difference
    on devices without fast float64.
    """
    if x.dim() != 2 or y.dim() != 2 or x.device.type not in ("cpu", "cuda"):
        return (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)
    xd, yd = x.double(), y.double()
    sq = xd.square().sum(-1, keepdim=True) + yd.square().sum(-1) - 2.0 * (xd @ yd.T)
    return sq.clamp_min(0.0).to(torch.promote_types(x.dtype, y.dtype))


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel ``k(x, y) = exp(-||x - y||^2 / C)``, ``C = bandwidth``.

    ``x`` has shape ``(n, D)``, ``y`` shape ``(m, D)``; returns ``(n, m)``.
    """
    _check_samples(x, y)
    bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
    return torch.exp(-_sq_dist(x, y) / bandwidth)


def imq_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Inverse multiquadratic kernel ``k(x, y) = C / (C + ||x - y||^2)``, ``C = bandwidth``.

    Heavier-tailed than the Gaussian kernel, so its gradients do not vanish for distant
    samples (Tolstikhin et al. 2018). Shapes as :func:`rbf_kernel`.

    References
    ----------
    Tolstikhin, Bousquet, Gelly, Schoelkopf (2018). Wasserstein Auto-Encoders. ICLR.
    """
    _check_samples(x, y)
    bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
    return bandwidth / (bandwidth + _sq_dist(x, y))


#: Kernel name -> kernel function, for :func:`mmd` and :class:`InfoVAEELBO`.
KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "imq": imq_kernel,
    "rbf": rbf_kernel,
}


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: str = "imq",
    bandwidth: float | None = None,
    unbiased: bool = True,
) -> torch.Tensor:
    """Squared maximum mean discrepancy between the samples ``x`` and ``y``.

    ``MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)``. The unbiased U-statistic leaves
    out the diagonal pairs (it can be slightly negative); it falls back to the biased
    V-statistic when either sample has fewer than two points.

    Parameters
    ----------
    x, y : torch.Tensor
        Shapes ``(n, D)`` and ``(m, D)``.
    kernel : {"imq", "rbf"}
    bandwidth : float or None
        The kernel's scale C; default ``2 * D`` (Tolstikhin et al. 2018's choice for a
        standard-normal prior).
    unbiased : bool
        U-statistic (default) or V-statistic.

    Returns
    -------
    torch.Tensor
        Scalar, differentiable in ``x`` and ``y``.

    References
    ----------
    Gretton, Borgwardt, Rasch, Schoelkopf, Smola (2012). A Kernel Two-Sample Test. JMLR.
    Zhao, Song, Ermon (2019). InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders. AAAI.
    """
    k = KERNELS[check_choice("kernel", kernel, KERNELS)]
    _check_samples(x, y)
    c = (
        2.0 * x.shape[-1]
        if bandwidth is None
        else check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
    )
    n, m = x.shape[0], y.shape[0]

    def mean_within(s: torch.Tensor, size: int) -> torch.Tensor:
        kk = k(s, s, c)
        if unbiased and size > 1:
            return (kk.sum() - kk.diagonal().sum()) / (size * (size - 1))
        return kk.mean()

    return mean_within(x, n) + mean_within(y, m) - 2.0 * k(x, y, c).mean()


def importance_log_weights(
    terms: ELBOTerms, *, kl_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-data-point log importance weights of a (vectorised-particle) trace.

    ``log w[k, b] = log p(x_b | z_kb) + kl_weight * (log p(z_kb) - log q(z_kb | x_b))``,
    summed over every sample site of data point b (unscaled, masked), where k indexes
    the vectorised particle plate and b the data plate (the plate at dim -1).

    Returns
    -------
    (log_w, scale) : tuple[torch.Tensor, torch.Tensor]
        ``log_w`` of shape ``(K, B)``; ``scale`` of shape ``(B,)`` or ``()``: the data
        points each column stands for (plate subsampling x ``poutine.scale``).

    Raises
    ------
    ValueError
        For a site outside the data plate (a global latent or observation: the bound
        does not factorise over data points), sites with different scales, or a
        non-reparameterised guide site.
    """
    if not isinstance(terms, ELBOTerms):
        raise TypeError(f"terms must be an ELBOTerms, got {type(terms).__name__}")
    kl_weight = check_float("kl_weight", kl_weight, minimum=0.0)
    model_trace, guide_trace = terms.model_trace, terms.guide_trace
    structure = terms.structure
    if structure is not None and (structure.enumerated or structure.model_enum):
        names = structure.enumerated + structure.model_enum
        raise ValueError(
            f"IWAEELBO: the sites {names} are enumerated; the per-data-point importance "
            "weights p(x, z) / q(z | x) need every latent site drawn, and Pyro's enumeration "
            "sums some out instead. Draw them (infer={'enumerate': None}), or use an "
            "objective that sums enumerated sites exactly (elbo, annealed, beta, freebits)"
        )
    model_trace.compute_log_prob()  # memoised; the lean trace path leaves latent sites out
    guide_trace.compute_log_prob()
    particle_dim: int | None = None
    for tr in (model_trace, guide_trace):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    if f.name == _PARTICLE_PLATE:
                        particle_dim = f.dim
    data_plate: str | None = None
    scale0: Any = None
    log_w: torch.Tensor | None = None

    def sites() -> Iterator[tuple[str, dict[str, Any], float]]:
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample":
                yield name, site, 1.0 if site["is_observed"] else kl_weight
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                if not site["fn"].has_rsample:
                    raise ValueError(
                        f"IWAEELBO needs reparameterised guide sites; {name!r} "
                        f"({type(site['fn']).__name__}) has no rsample"
                    )
                yield name, site, -kl_weight

    for name, site, coef in sites():
        frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLE_PLATE]
        frame = next((f for f in frames if f.dim == -1), None)
        if frame is None or (data_plate is not None and frame.name != data_plate):
            raise ValueError(
                f"IWAEELBO: site {name!r} is not inside the data plate "
                f"{data_plate or '(the plate at dim -1)'}; the per-data-point importance-weighted "
                "bound needs every latent and observed site to belong to one data point. Make "
                "global latents parameters (pyro.param) or use another objective"
            )
        data_plate = frame.name
        scale = site["scale"]
        if scale0 is None:
            scale0 = scale
        elif not _same_scale(scale, scale0):
            raise ValueError(
                f"IWAEELBO: site {name!r} has scale {scale!r}, other sites {scale0!r}; the "
                "importance weights of one data point need one common scale (use plate "
                "subsampling or one poutine.scale around the whole model and guide)"
            )
        lp = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
        lp = _to_particle_data(lp, particle_dim)
        log_w = coef * lp if log_w is None else log_w + coef * lp
    if log_w is None:
        raise ValueError("IWAEELBO: the model has no sample sites")
    scale_t = torch.as_tensor(scale0, dtype=log_w.dtype, device=log_w.device)
    if scale_t.dim() > 0:
        scale_t = _to_particle_data(scale_t, particle_dim)[0]
    return log_w, scale_t


def _same_scale(a: Any, b: Any) -> bool:
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    return ta.shape == tb.shape and bool(torch.equal(ta, tb))


def _to_particle_data(t: torch.Tensor, particle_dim: int | None) -> torch.Tensor:
    """Reduce a batch-shaped tensor to ``(K or 1, B)``: particles first, data plate last,
    summing any plates in between."""
    if particle_dim is None:
        return t.reshape(-1, t.shape[-1]).sum(0).unsqueeze(0) if t.dim() > 1 else t.reshape(1, -1)
    nd = -particle_dim
    t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
    if nd > 2:
        t = t.sum(dim=tuple(range(1, nd - 1)))
    return t


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


# --------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------
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


@ELBOS.register("elbo")
class PlainELBO(BaseELBO):
    """The standard ELBO (KL weight 1), through the shared machinery.

    ``loss = -(E_q[log p(x|z)] - KL(q(z|x) || p(z)))``. Equals Pyro's
    ``TraceMeanField_ELBO`` (analytic KL) on the same trace, and ``Trace_ELBO`` where no
    closed-form KL exists.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Examples
    --------
    >>> import pyro, torch
    >>> from pyrocollapse.models import MLPVAE
    >>> vae = MLPVAE(8, 2, hidden=(16,))
    >>> x = torch.rand(32, 8)
    >>> elbo = PlainELBO()  # jit="auto": compiled once a run is long enough
    >>> losses = [elbo.loss(vae.model, vae.guide, x) for _ in range(3)]
    >>> elbo.compiled.compilations  # three calls are not
    0

    References
    ----------
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    """

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(
            1.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )


@ELBOS.register("annealed")
class AnnealedELBO(BaseELBO):
    """ELBO with the KL weight following a schedule (KL annealing / warm-up).

    ``loss = -(E_q[log p(x|z)] - beta_t * KL(q(z|x) || p(z)))`` with ``beta_t =
    schedule(t)``, t the number of ``loss_and_grads`` calls so far.

    Parameters
    ----------
    schedule : Schedule or float
        E.g. ``Linear(warmup_steps=1000)`` or ``Cyclical(period=500, n_cycles=4)``.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    References
    ----------
    Bowman et al. (2016). Generating Sentences from a Continuous Space. CoNLL.
    Fu et al. (2019). Cyclical Annealing Schedule. NAACL.
    """

    def __init__(
        self,
        schedule: Schedule | float,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(
            schedule,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )


@ELBOS.register("beta")
class BetaELBO(BaseELBO):
    """beta-VAE objective ``-(E_q[log p(x|z)] - beta * KL)`` with a fixed ``beta >= 0``.

    Parameters
    ----------
    beta : float
        KL weight (>= 0; 0 gives a plain autoencoder with a stochastic encoder).
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    For a Gaussian decoder with fixed variance sigma^2 the objective equals, up to a
    factor and a constant, the ELBO of the same model with noise variance beta sigma^2;
    in a linear VAE a latent direction with data-covariance eigenvalue lambda collapses
    iff ``lambda <= beta sigma^2`` (Lucas et al. 2019).

    References
    ----------
    Higgins et al. (2017). beta-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework. ICLR.
    Lucas, Tucker, Grosse, Norouzi (2019). Don't Blame the ELBO! A Linear VAE Perspective
    on Posterior Collapse. NeurIPS.
    """

    def __init__(
        self,
        beta: float = 1.0,
        *,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        super().__init__(
            check_float("beta", beta, minimum=0.0),
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )


@ELBOS.register("freebits")
class FreeBitsELBO(BaseELBO):
    """Free bits: KL below a floor of ``free_bits`` nats is not penalised.

    ``loss = -(E_q[log p(x|z)] - beta * sum_j max(lambda, E_x[KL_j]))`` where j runs over
    the latent dimensions of every site (``per="dimension"``) or over the sites
    (``per="site"``), and E_x is the average over the minibatch, as in the paper. With
    the batch summed this is ``sum_j max(lambda * N, sum_n KL_nj)`` for a batch standing
    for N points. A group whose average KL is below the floor gets no KL gradient.

    Parameters
    ----------
    free_bits : float
        The floor lambda, nats per data point per group (>= 0). 0 is exactly the ELBO:
        nothing is clamped, so Monte Carlo KL estimates below zero are kept.
    per : {"dimension", "site"}
        Group the KL per latent dimension or per site. Under ``"dimension"`` a site whose
        q or p does not factorise over the event dimension (a discrete site, a mixture
        or full-covariance prior) is floored as one group; the objective logs this once
        per site and lists such sites in :attr:`per_site_fallback`.
    kl_weight : Schedule or float
        beta, a constant or a schedule (annealing composes with free bits).
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``kl_floored`` and ``kl_floored/<site>``, the penalised KL after the floor
    (summed over the batch). Weights: ``kl_weight`` and ``free_bits``.

    References
    ----------
    Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016). Improved Variational
    Inference with Inverse Autoregressive Flow. NeurIPS.
    """

    _hyperparameters = ("free_bits", "per")

    def __init__(
        self,
        free_bits: float = 0.5,
        per: str = "dimension",
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.free_bits = check_float("free_bits", free_bits, minimum=0.0)
        self.per = check_choice("per", per, ("dimension", "site"))
        #: Sites floored as one group under ``per="dimension"`` because their q or p does
        #: not factorise over the event dimension (a discrete site, a full-covariance or
        #: mixture prior); each is logged once.
        self.per_site_fallback: list[str] = []
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    @property
    def weights(self) -> dict[str, float]:
        return {"kl_weight": self.beta, "free_bits": self.free_bits}

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        extras: dict[str, torch.Tensor] = {}
        for name, t in terms.latent.items():
            if self.per == "dimension" and t.kl_per_dim is not None:
                kl = t.total_per_dim
            else:
                if self.per == "dimension" and name not in self.per_site_fallback:
                    self.per_site_fallback.append(name)
                    logging.getLogger("pyrocollapse").warning(
                        "FreeBitsELBO(per='dimension'): latent site %r has no KL per dimension "
                        "(q %s or p %s does not factorise over the event dimension); its KL is "
                        "floored as one group (free bits per site)",
                        name,
                        type(t.q).__name__,
                        type(t.p).__name__,
                    )
                kl = t.total
            if self.free_bits > 0:
                kl = torch.clamp(kl, min=self.free_bits * t.weight)
            extras[f"kl_floored/{name}"] = kl.sum()
        floored = sum(extras.values(), torch.zeros(()))
        extras["kl_floored"] = floored
        return -(terms.reconstruction - self.beta * floored - terms.auxiliary), extras


@ELBOS.register("mi")
class MIRegularizedELBO(BaseELBO):
    """ELBO plus ``alpha`` times the mutual information I_q(x; z), estimated per minibatch.

    ``loss = -(E_q[log p(x|z)] - beta * KL + alpha * N * I_q(x; z))`` with I_q the
    minibatch estimate of :func:`minibatch_mutual_information` from q(z|x) and the
    minibatch aggregate posterior, summed over local latent sites. Since
    ``E_x KL = I_q + KL(q(z) || p(z))`` (Hoffman & Johnson 2016), the objective stops
    penalising the information a latent carries in proportion ``alpha`` and rewards
    latents that carry information, countering collapse. Global latent sites keep their
    plain KL.

    Parameters
    ----------
    alpha : float
        Weight of I_q (>= 0; 0 is the beta-ELBO).
    estimator : {"batch", "stratified", "mws"}
        Estimator of the aggregate posterior (see :func:`log_aggregate_posterior`).
        ``"batch"`` treats the minibatch as the data (He et al. 2019; I_q <= log B);
        the others use the data-set size N read from the plate's subsampling scale.
    kl_weight : Schedule or float
        beta, a constant or a schedule.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``mi_batch`` and ``mi_batch/<site>``: N times the minibatch estimate (so that
    ``fit``'s per-data-point column is I_q in nats). Weights: ``kl_weight``,
    ``mi_weight``. With ``alpha > kl_weight`` and the ``"batch"`` estimator the reward
    saturates at log B. Every site needs at least two rows for a useful estimate.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    Zhao, Song, Ermon (2019). InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders. AAAI.
    Hoffman & Johnson (2016). ELBO surgery. NeurIPS AABI workshop.
    """

    _hyperparameters = ("alpha", "estimator")

    def __init__(
        self,
        alpha: float = 1.0,
        estimator: str = "batch",
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.alpha = check_float("alpha", alpha, minimum=0.0)
        self.estimator = check_choice("estimator", estimator, AGGREGATE_ESTIMATORS)
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    @property
    def weights(self) -> dict[str, float]:
        return {"kl_weight": self.beta, "mi_weight": self.alpha}

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, _ = self._local_sites(terms)
        extras: dict[str, torch.Tensor] = {}
        for s in local:
            key = f"mi_batch/{s.name}"
            value = s.total(minibatch_mutual_information(s, self.estimator))
            extras[key] = extras[key] + value if key in extras else value
        mi = sum(extras.values(), torch.zeros(()))
        extras["mi_batch"] = mi
        elbo = terms.reconstruction - self.beta * terms.kl - terms.auxiliary
        return -(elbo + self.alpha * mi), extras


@ELBOS.register("infovae")
class InfoVAEELBO(BaseELBO):
    """InfoVAE with a maximum-mean-discrepancy divergence (MMD-VAE).

    ``loss = -(E_q[log p(x|z)] - (1 - alpha) beta KL - (alpha + lambda - 1) N MMD^2(q(z),
    p(z)))``, Zhao et al.'s objective with D = MMD^2 between the aggregate posterior
    (the guide's draws over the minibatch) and the prior (as many fresh draws from the
    model site's distribution, reparameterised where possible so learnable priors
    train). ``alpha`` sets the preference for information in z (``alpha = 1`` drops the
    per-point KL), ``lambda`` the weight of the aggregate divergence. Global latent
    sites keep their KL.

    Parameters
    ----------
    alpha : float
        Information preference, <= 1 (so the KL weight ``1 - alpha`` is >= 0).
    lambda_ : float
        Divergence weight, >= 0, with ``alpha + lambda_ - 1 >= 0`` (the MMD weight).
        ``alpha=0, lambda_=1`` is the ELBO.
    kernel : {"imq", "rbf"}
        Kernel of the MMD (:func:`imq_kernel`, :func:`rbf_kernel`).
    bandwidth : float or None
        Kernel scale C (> 0); default ``2 * latent_dim``.
    kl_weight : Schedule or float
        beta, a constant or a schedule multiplying the KL term.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``mmd`` and ``mmd/<site>``: N times the unbiased MMD^2 estimate (the
    per-data-point column is MMD^2). Weights: ``kl_weight`` (the effective
    ``(1 - alpha) beta``) and ``mmd_weight``. Drawing the prior samples uses the global
    torch RNG, so results are deterministic given the seed.

    References
    ----------
    Zhao, Song, Ermon (2019). InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders. AAAI.
    Gretton, Borgwardt, Rasch, Schoelkopf, Smola (2012). A Kernel Two-Sample Test. JMLR.
    Tolstikhin, Bousquet, Gelly, Schoelkopf (2018). Wasserstein Auto-Encoders. ICLR.
    """

    _hyperparameters = ("alpha", "lambda_", "kernel", "bandwidth")

    def __init__(
        self,
        alpha: float = 0.0,
        lambda_: float = 1000.0,
        kernel: str = "imq",
        bandwidth: float | None = None,
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.alpha = check_float("alpha", alpha, maximum=1.0)
        self.lambda_ = check_float("lambda_", lambda_, minimum=0.0)
        if self.alpha + self.lambda_ - 1.0 < 0:
            raise ValueError(
                f"alpha + lambda_ - 1 (the MMD weight) must be >= 0, got alpha={self.alpha}, "
                f"lambda_={self.lambda_}; e.g. alpha=0, lambda_=1 is the ELBO"
            )
        self.kernel = check_choice("kernel", kernel, KERNELS)
        self.bandwidth = (
            None
            if bandwidth is None
            else check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
        )
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    @property
    def mmd_weight(self) -> float:
        """``alpha + lambda_ - 1``."""
        return self.alpha + self.lambda_ - 1.0

    @property
    def weights(self) -> dict[str, float]:
        return {"kl_weight": (1.0 - self.alpha) * self.beta, "mmd_weight": self.mmd_weight}

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, global_ = self._local_sites(terms)
        extras: dict[str, torch.Tensor] = {}
        for s in local:
            prior = s.sample_prior()
            d = mmd(s.z[s.mask], prior[s.mask], kernel=self.kernel, bandwidth=self.bandwidth)
            value = s.total(d.expand(s.mask.shape))  # N MMD^2
            key = f"mmd/{s.name}"
            extras[key] = extras[key] + value if key in extras else value
        divergence = sum(extras.values(), torch.zeros(()))
        extras["mmd"] = divergence
        names = dict.fromkeys(s.name for s in local)
        local_kl = sum((terms.latent[n].total for n in names), torch.zeros(()))
        global_kl = sum((t.total for t in global_), torch.zeros(()))
        kl = (1.0 - self.alpha) * self.beta * local_kl + self.beta * global_kl
        elbo = terms.reconstruction - kl - terms.auxiliary
        return -(elbo - self.mmd_weight * divergence), extras


@ELBOS.register("iwae")
class IWAEELBO(BaseELBO):
    """The importance-weighted bound, per data point, with vectorised particles.

    ``L_K = sum_b log (1/K) sum_k w_kb``, ``w_kb = p(x_b, z_kb) / q(z_kb | x_b)``, with
    ``z_kb ~ q(z | x_b)`` drawn in one vectorised particle plate. Each data point gets
    its own importance weights, so ``L_1`` is the ELBO and ``L_K`` rises with K towards
    log p(x) (Burda et al. 2016). Pyro's ``RenyiELBO(alpha=0)`` instead weighs whole
    traces, ``log (1/K) sum_k prod_b w_kb``, which for a batch of B points is a far
    looser bound. Plate subsampling scales each point's term; masks remove a site's
    contribution to a point's weights. Every sample site must lie in the data plate
    (the plate at dim -1) and guide sites must be reparameterised.

    Parameters
    ----------
    num_particles : int
        K, importance samples per data point (>= 1).
    kl_weight : Schedule or float
        beta: the weights become ``p(x|z) (p(z)/q(z|x))^beta`` (warm-up for importance
        weighted bounds as in Sønderby et al. 2016); only beta = 1 gives the bound.
    max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO` (the particle plate is added outside the model's plates).

    Notes
    -----
    Extras: ``iwae``, the bound summed over the batch. The base's ``elbo``,
    ``reconstruction`` and ``kl`` columns are averages over the K particles of the
    single-sample terms. The gradient is the standard reparameterised IWAE gradient,
    whose signal-to-noise ratio for the guide falls as K grows (Rainforth et al. 2018).

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Sønderby, Raiko, Maaløe, Sønderby, Winther (2016). Ladder Variational Autoencoders.
    NeurIPS.
    Rainforth et al. (2018). Tighter Variational Bounds are Not Necessarily Better. ICML.
    """

    def __init__(
        self,
        num_particles: int = 5,
        *,
        kl_weight: Schedule | float = 1.0,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        if vectorize_particles is not True:
            raise ValueError(
                f"IWAEELBO needs vectorize_particles=True, got {vectorize_particles!r}: the bound "
                "log (1/K) sum_k w_k combines the K importance weights of each data point, so "
                "the K particles must be drawn together in one plate"
            )
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_w, scale = importance_log_weights(terms, kl_weight=self.beta)
        k = log_w.shape[0]
        bound = ((torch.logsumexp(log_w, dim=0) - math.log(k)) * scale).sum()
        return -bound, {"iwae": bound}


@ELBOS.register("betatc")
class BetaTCELBO(BaseELBO):
    """beta-TCVAE: the KL split into index-code MI, total correlation and dimension-wise
    KL, each weighted.

    ``loss = -(E_q[log p(x|z)] - w (alpha I_q(x; z) + beta TC(z) + gamma sum_d
    KL(q(z_d) || p(z_d))))`` per local latent site (:func:`total_correlation_decomposition`),
    with w the ``kl_weight``. The three terms are Monte Carlo estimates at the guide's
    draw and add up to the Monte Carlo KL, so ``alpha = beta = gamma = 1`` is Pyro's
    ``Trace_ELBO``. Global latent sites keep ``w`` times their KL.

    Parameters
    ----------
    alpha, beta, gamma : float
        Weights of index-code MI, total correlation and dimension-wise KL (>= 0).
        ``beta > 1`` penalises dependence between latent dimensions.
    estimator : {"stratified", "mws", "batch"}
        Estimator of the aggregate posterior and its marginals
        (:func:`log_aggregate_posterior`); ``"stratified"`` (default) is unbiased for
        q(z), ``"mws"`` is the paper's minibatch weighted sampling (its log(NM) offsets
        shift the reported terms but not the gradients). Needs a factorised guide.
    kl_weight : Schedule or float
        w, a constant or a schedule multiplying all three terms.
    num_particles, max_plate_nesting, vectorize_particles, retain_graph, jit, analytic_kl :
        As for :class:`BaseELBO`.

    Notes
    -----
    Extras: ``index_code_mi``, ``total_correlation``, ``dimwise_kl`` (and ``/<site>``),
    summed over the batch. Weights: ``kl_weight``, ``mi_weight``, ``tc_weight``,
    ``dimwise_kl_weight``.

    References
    ----------
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    Hoffman & Johnson (2016). ELBO surgery. NeurIPS AABI workshop.
    """

    _PARTS = ("index_code_mi", "total_correlation", "dimwise_kl")
    _hyperparameters = ("alpha", "beta", "gamma", "estimator")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        estimator: str = "stratified",
        *,
        kl_weight: Schedule | float = 1.0,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
        jit: JitMode = "auto",
        analytic_kl: bool = True,
    ) -> None:
        self.alpha = check_float("alpha", alpha, minimum=0.0)
        self.tc_weight = check_float("beta", beta, minimum=0.0)
        self.gamma = check_float("gamma", gamma, minimum=0.0)
        self.estimator = check_choice("estimator", estimator, AGGREGATE_ESTIMATORS)
        super().__init__(
            kl_weight,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
            jit=jit,
            analytic_kl=analytic_kl,
        )

    def hyperparameters(self) -> dict[str, Any]:
        # ``beta`` is the base's current KL weight; the TC weight lives in ``tc_weight``
        return {**super().hyperparameters(), "beta": self.tc_weight}

    @property
    def weights(self) -> dict[str, float]:
        return {
            "kl_weight": self.beta,
            "mi_weight": self.alpha,
            "tc_weight": self.tc_weight,
            "dimwise_kl_weight": self.gamma,
        }

    def combine(self, terms: ELBOTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local, global_ = self._local_sites(terms)
        coef = dict(zip(self._PARTS, (self.alpha, self.tc_weight, self.gamma), strict=True))
        extras: dict[str, torch.Tensor] = {}
        penalty = sum((t.total for t in global_), torch.zeros(()))
        for s in local:
            rows = total_correlation_decomposition(s, self.estimator)
            for part, r in rows.items():
                total = s.total(r)
                key = f"{part}/{s.name}"
                extras[key] = extras[key] + total if key in extras else total
                extras[part] = extras.get(part, torch.zeros(())) + total
                penalty = penalty + coef[part] * total
        for part in self._PARTS:
            extras.setdefault(part, torch.zeros(()))
        return -(terms.reconstruction - self.beta * penalty - terms.auxiliary), extras


def make_elbo(name: str, **options: Any) -> BaseELBO:
    """Build an objective by its short name (see :data:`ELBOS`)."""
    return ELBOS.get(name)(**options)
