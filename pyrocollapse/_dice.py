"""Expectations over discrete and non-reparameterised sites, for the objectives' terms.

The objectives of :mod:`pyrocollapse.elbo` compute each term of the ELBO (log-likelihood
of an observed site, KL of a latent site, log q of an auxiliary site) separately, so that
a variant can weight them. A term is a tensor over the site's batch; this module turns it
into its contribution to the ELBO the way Pyro's ``TraceEnum_ELBO`` does with its DiCE
operator (Foerster et al. 2018), so that every variant is right wherever Pyro's ELBOs are:

* **Enumerated guide sites** (``config_enumerate``): the term carries the site's
  enumeration dimension; its expectation sums over it weighted by q(y), exactly.
* **Non-reparameterised sampled guide sites** (discrete assignments, Poisson counts): the
  term is multiplied by ``exp(log q(s) - log q(s).detach())``, whose value is 1 and whose
  gradient is the score-function term ``cost * grad log q(s)``. Only the sites the term
  can depend on are included: those whose plates are a subset of the term's (Pyro's plate
  rule: a site outside a plate cannot depend on sites inside it), drawn before the term's
  site in the guide or the model (a site drawn later cannot change it). This is the
  per-plate, downstream-only Rao-Blackwellisation of Pyro's ELBOs.
* **Baselines**: Pyro's ``infer={"baseline": {...}}`` options of a site (decaying
  average, ``nn_baseline``, ``baseline_value``) are honoured as in ``TraceGraph_ELBO``:
  the baseline is subtracted from the site's downstream cost in its score-function
  term, and ``nn_baseline``/``baseline_value`` are trained by a squared-error loss.
* **Enumerated model-only sites**: their log-factors are summed out by Pyro's tensor
  variable elimination (:func:`pyro.ops.contract.contract_tensor_tree`), per connected
  group of sites, before the expectation.

References
----------
Foerster, Farquhar, Al-Shedivat, Rocktäschel, Xing, Whiteson (2018). DiCE: The Infinitely
Differentiable Monte Carlo Estimator. ICML.
Schulman, Heess, Weber, Abbeel (2015). Gradient Estimation Using Stochastic Computation
Graphs. NeurIPS.
Obermeyer, Bingham, Jankowiak, Chen, Pradhan, Goodman (2019). Tensor Variable Elimination
for Plated Factor Graphs. ICML.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions.util import is_identically_zero
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree

__all__ = ["ModelEnumGroup", "SiteInfo", "TraceStructure", "ordinal_of"]


def ordinal_of(site: dict[str, Any]) -> frozenset[str]:
    """The names of the vectorised plates a site sits in."""
    return frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)


@dataclass
class SiteInfo:
    """Where a sample site sits: its plates and its position in each program."""

    name: str
    ordinal: frozenset[str]
    model_pos: int | None
    guide_pos: int | None


@dataclass
class ModelEnumGroup:
    """One connected group of model log-factors that share enumerated model-only sites.

    Attributes
    ----------
    sites : list[str]
        The model sites whose log-factors were summed out together (the enumerated ones
        and those that depend on them).
    observed, latent : list[str]
        Observed sites and guide-sampled latent sites among them.
    terms : list[tuple[frozenset[str], torch.Tensor]]
        The contracted log-factors, each with its plates, unpacked (batch-shaped),
        unscaled.
    scale : float
        The common subsampling scale of the group (Pyro requires one).
    model_pos : int
        Position in the model of the group's last site.
    """

    sites: list[str]
    observed: list[str]
    latent: list[str]
    terms: list[tuple[frozenset[str], torch.Tensor]]
    scale: Any
    model_pos: int


@dataclass
class TraceStructure:
    """Which sites of a (model, guide) trace pair need expectations, and how.

    Built once per evaluation by :meth:`from_traces`. ``simple`` is True when no guide
    site is enumerated or non-reparameterised and no model-only site exists: every term
    is then a plain sum and the objectives take their fast path.
    """

    model_trace: Any
    guide_trace: Any
    info: dict[str, SiteInfo]
    enumerated: list[str]
    score_sites: list[str]
    model_enum: list[str]
    model_only: list[str]
    log_factors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def simple(self) -> bool:
        return not (self.enumerated or self.score_sites or self.model_enum or self.model_only)

    @classmethod
    def from_traces(cls, model_trace: Any, guide_trace: Any) -> TraceStructure:
        info: dict[str, SiteInfo] = {}
        enumerated, score_sites, model_enum, model_only = [], [], [], []
        g = 0
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            info[name] = SiteInfo(name, ordinal_of(site), None, g)
            g += 1
            if site["infer"].get("enumerate") == "sequential":
                raise ValueError(
                    f"guide site {name!r} uses sequential enumeration, which pyrocollapse "
                    "objectives do not support; enumerate it in parallel (config_enumerate("
                    "guide, default='parallel') or infer={'enumerate': 'parallel'}), or use "
                    "pyro.infer.TraceEnum_ELBO"
                )
            if site["infer"].get("_enumerate_dim") is not None:
                if site["infer"].get("num_samples") is not None:
                    raise ValueError(
                        f"guide site {name!r} is multiply sampled (infer num_samples, tensor "
                        "Monte Carlo), which pyrocollapse objectives do not support; use "
                        "pyro.infer.TraceTMC_ELBO or sample it once"
                    )
                enumerated.append(name)
            elif not site["fn"].has_rsample:
                score_sites.append(name)
        m = 0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if name in info:
                info[name].model_pos = m
            else:
                info[name] = SiteInfo(name, ordinal_of(site), m, None)
                if not site["is_observed"]:
                    if site["infer"].get("_enumerate_dim") is not None:
                        model_enum.append(name)
                    else:
                        model_only.append(name)
            m += 1
        return cls(model_trace, guide_trace, info, enumerated, score_sites, model_enum, model_only)

    # -- DiCE weights --------------------------------------------------------------------
    def _log_factor(self, name: str) -> torch.Tensor:
        """log q of an enumerated site (kept, normalised over its values), or
        ``log q - log q.detach()`` (value 0) of a score-function site; unscaled, masked."""
        if name not in self.log_factors:
            site = self.guide_trace.nodes[name]
            if "score_parts" not in site:
                self.guide_trace.compute_score_parts()
            lf = site["score_parts"].score_function
            if name in self.score_sites and not is_identically_zero(lf):
                lf = lf - lf.detach()
            if not isinstance(lf, torch.Tensor):
                lf = torch.as_tensor(float(lf), device=site["value"].device)
            self.log_factors[name] = lf
        return self.log_factors[name]

    def weight(
        self,
        ordinal: frozenset[str],
        model_pos: int | None,
        guide_pos: int | None,
        own: str | None = None,
    ) -> torch.Tensor | None:
        """The DiCE weight of a term, or ``None`` where it is 1 with no gradient.

        Parameters
        ----------
        ordinal : frozenset of str
            The term's plates.
        model_pos, guide_pos : int or None
            Positions in the model and guide of the site the term belongs to (``None``
            where it is not in that program). A score-function site counts when drawn
            before it in either program.
        own : str or None
            Include this site's own factor (a Monte Carlo term log q(s) - log p(s) of a
            score-function site depends on its own draw).

        Returns
        -------
        torch.Tensor or None
            Broadcastable to the term's batch shape (with enumeration dimensions): the
            product of q(y) of enumerated sites and ``exp(log q(s) - log q(s).detach())``
            of the score-function sites it can depend on.
        """
        total: torch.Tensor | None = None
        for name in self.enumerated:
            if self.info[name].ordinal <= ordinal:
                lf = self._log_factor(name)
                total = lf if total is None else total + lf
        for name in self.score_sites:
            s = self.info[name]
            if not s.ordinal <= ordinal:
                continue
            before = name == own or (
                (model_pos is not None and s.model_pos is not None and s.model_pos < model_pos)
                or (guide_pos is not None and s.guide_pos is not None and s.guide_pos < guide_pos)
            )
            if before:
                lf = self._log_factor(name)
                total = lf if total is None else total + lf
        return None if total is None else total.exp()

    def site_weight(self, name: str, own: bool = False) -> torch.Tensor | None:
        """:meth:`weight` for the term of site ``name``."""
        s = self.info[name]
        return self.weight(s.ordinal, s.model_pos, s.guide_pos, name if own else None)

    def whole_trace_factor(self) -> torch.Tensor | None:
        """``exp(sum_s log q(s) - detach)`` over every score-function site (value 1): the
        score-function gradient of a term that depends on the whole batch."""
        total: torch.Tensor | None = None
        for name in self.score_sites:
            lf = self._log_factor(name).sum()
            total = lf if total is None else total + lf
        return None if total is None else total.exp()

    def expect(self, cost: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Sum of ``weight * cost`` over every dimension (the term's contribution)."""
        if weight is None:
            return cost.sum()
        return (cost * weight).sum()

    # -- baselines -----------------------------------------------------------------------
    def baseline_surrogate(
        self, costs: list[tuple[str, torch.Tensor, torch.Tensor | None]]
    ) -> torch.Tensor | None:
        """Baseline corrections of the score-function sites that ask for one.

        ``costs`` lists the weighted terms ``(site, cost tensor, weight)`` of the ELBO
        (costs in nats, scaled, added to the ELBO). For each score-function site s with
        Pyro baseline options, its downstream cost is the sum, over the terms that
        include s's factor, of the cost reduced to s's batch shape; the returned
        surrogate (to add to the *loss*) is ``sum(b.detach() * (log q(s) - detach))``
        plus the baseline's own squared-error loss, as in ``TraceGraph_ELBO``.
        """
        from pyro.infer.tracegraph_elbo import _construct_baseline

        wanted = [
            n for n in self.score_sites if self.guide_trace.nodes[n]["infer"].get("baseline")
        ]
        if not wanted:
            return None
        total: torch.Tensor | None = None
        for name in wanted:
            site = self.guide_trace.nodes[name]
            s = self.info[name]
            shape = site["score_parts"].score_function.shape
            downstream = torch.zeros(shape, device=site["value"].device)
            for term_site, cost, w in costs:
                t = self.info[term_site]
                if not s.ordinal <= t.ordinal:
                    continue
                before = term_site == name or (
                    (t.model_pos is not None and s.model_pos is not None and s.model_pos < t.model_pos)
                    or (t.guide_pos is not None and s.guide_pos is not None and s.guide_pos < t.guide_pos)
                )
                if before:
                    c = (cost if w is None else cost * w).detach()
                    downstream = downstream + _sum_to_shape(c, shape)
            use, baseline_loss, baseline = _construct_baseline(name, site, downstream)
            if not use:
                continue
            lf = self._log_factor(name)
            # ELBO surrogate -b * score  ->  loss surrogate +b * score (value 0)
            part = (torch.as_tensor(baseline).detach() * lf).sum() + baseline_loss
            total = part if total is None else total + part
        return total

    # -- model enumeration ---------------------------------------------------------------
    def model_enum_groups(self) -> list[ModelEnumGroup]:
        """Sum out the enumerated model-only sites, per connected group of log-factors.

        Returns one :class:`ModelEnumGroup` per group; sites of the model outside every
        group are untouched. Uses Pyro's packed tensors and
        :func:`~pyro.ops.contract.contract_tensor_tree`, as ``TraceEnum_ELBO`` does.
        """
        from pyro.infer.traceenum_elbo import (
            _check_model_guide_enumeration_constraint,
            _get_common_scale,
        )

        if not self.model_enum:
            return []
        mt, gt = self.model_trace, self.guide_trace
        mt.compute_log_prob()
        gt.compute_score_parts()
        gt.pack_tensors()
        mt.pack_tensors(gt.plate_to_symbol)
        symbol_to_plate = {v: k for k, v in gt.plate_to_symbol.items()}
        symbol_to_plate.update({v: k for k, v in mt.plate_to_symbol.items()})
        enum_dims: set[str] = set()
        for name in self.model_enum:
            enum_dims.update(mt.nodes[name]["packed"]["log_prob"]._pyro_dims)
        non_enum: set[str] = set()
        for name, site in mt.nodes.items():
            if site["type"] == "sample":
                non_enum.update(gt.plate_to_symbol.get(p, p) for p in ordinal_of(site))
                if name in gt.nodes:
                    non_enum.update(gt.nodes[name]["packed"]["log_prob"]._pyro_dims)
        enum_dims -= non_enum
        by_ordinal: dict[frozenset[str], list[Any]] = {}
        for name in self.model_enum:
            by_ordinal.setdefault(frozenset(
                gt.plate_to_symbol.get(p, p) for p in self.info[name].ordinal
            ), []).append(mt.nodes[name])
        _check_model_guide_enumeration_constraint(by_ordinal, gt)
        # sites whose log-factor involves a model enumeration dimension
        members: list[tuple[str, torch.Tensor]] = []
        for name, site in mt.nodes.items():
            if site["type"] != "sample":
                continue
            dims = set(site["packed"]["log_prob"]._pyro_dims)
            if name in self.model_enum or dims & enum_dims:
                members.append(
                    (name, packed.scale_and_mask(
                        site["packed"]["unscaled_log_prob"], mask=site["packed"]["mask"]
                    ))
                )
        # connected components over the enumeration symbols
        parent = {name: name for name, _ in members}

        def find(a: str) -> str:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        owner: dict[str, str] = {}
        for name, term in members:
            for d in set(term._pyro_dims) & enum_dims:
                if d in owner:
                    parent[find(name)] = find(owner[d])
                else:
                    owner[d] = name
        groups: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for name, term in members:
            groups.setdefault(find(name), []).append((name, term))
        out = []
        for group in groups.values():
            tree: OrderedDict[frozenset[str], list[torch.Tensor]] = OrderedDict()
            names = [n for n, _ in group]
            for name, term in group:
                ordinal = frozenset(
                    gt.plate_to_symbol.get(p, p) for p in self.info[name].ordinal
                )
                tree.setdefault(ordinal, []).append(term)
            dims = set().union(*(set(t._pyro_dims) for _, t in group)) & enum_dims
            contracted = contract_tensor_tree(tree, dims)
            terms = []
            for ordinal, ts in contracted.items():
                plates = frozenset(symbol_to_plate.get(s, s) for s in ordinal)
                for t in ts:
                    terms.append((plates, packed.unpack(t, mt.symbol_to_dim)))
            scale = _get_common_scale([mt.nodes[n]["scale"] for n in names])
            out.append(
                ModelEnumGroup(
                    names,
                    [n for n in names if mt.nodes[n]["is_observed"]],
                    [n for n in names if n in gt.nodes],
                    terms,
                    scale,
                    max(self.info[n].model_pos for n in names),  # type: ignore[type-var]
                )
            )
        return out


def _sum_to_shape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``t`` down to ``shape`` (dims missing from ``shape`` or of size 1 there)."""
    while t.dim() > len(shape):
        t = t.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and t.shape[i] != 1:
            t = t.sum(i, keepdim=True)
    return t.expand(shape) if t.shape != shape else t
