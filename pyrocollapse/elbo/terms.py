"""The terms of the ELBO, computed once per particle: :class:`LatentTerm` (the KL of one
latent site), :class:`ELBOTerms` (all terms) and the functions that compute them from
the guide's trace and the model's trace replayed on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from pyro import poutine
from pyro.distributions import Delta, Distribution, Independent
from pyro.distributions.kl import kl_divergence
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import TransformedDistribution

from pyrocollapse._dice import TraceStructure
from pyrocollapse._distributions import unwrap

#: Name of the particle plate Pyro adds for ``vectorize_particles=True``.
_PARTICLE_PLATE = "num_particles_vectorized"


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
