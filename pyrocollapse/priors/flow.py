"""The normalising-flow prior and its transform families (command-line name ``flow``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import nn
from torch.distributions import Transform

from pyrocollapse._validation import check_float, check_hidden, check_int, module_device
from pyrocollapse.priors.base import PRIORS, Prior

__all__ = ["FLOW_TRANSFORMS", "FlowPrior"]


@dataclass(frozen=True)
class _FlowFamily:
    """How to build one layer of a named flow family on vectors of size ``d``."""

    build: Callable[..., Transform]
    min_dim: int
    networked: bool  # takes hidden_dims (coupling / autoregressive networks)
    splines: bool  # takes count_bins and bound

    def __call__(
        self, d: int, hidden: list[int] | None, count_bins: int, bound: float
    ) -> Transform:
        kwargs: dict[str, Any] = {}
        if self.networked:
            kwargs["hidden_dims"] = hidden
        if self.splines:
            kwargs.update(count_bins=count_bins, bound=bound)
        return self.build(d, **kwargs)


def _near_identity_(layer: nn.Module, factor: float = 0.01) -> nn.Module:
    """Start a Pyro flow layer near the identity map, in place.

    Scales down the output layer of its hypernetwork (coupling and autoregressive
    layers) and the parameters of its elementwise splines by ``factor``: the layer then
    starts as a smooth map close to the identity, instead of Pyro's default random
    splines whose densities have sharp spikes. Gradients still reach every parameter.
    """
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, T.Spline):
                for p in m.parameters(recurse=False):
                    p.mul_(factor)
            elif isinstance(m, (ConditionalDenseNN, ConditionalAutoRegressiveNN)):
                out = m.layers[-1]
                out.weight.mul_(factor)
                out.bias.zero_()
    return layer


def _without_cache_(t: Transform) -> Transform:
    """Switch off a transform's (input, output) cache, in place.

    Pyro's transform modules cache their last pair so that scoring a value they just
    produced skips the inverse. For a learnable prior the cache is a trap: scoring the same
    tensor again after a parameter update (fitting to fixed codes, conditioning a site on a
    fixed value) returns the stale inverse from the old parameters and its freed graph.
    """
    if getattr(t, "_cache_size", 0):
        t._cache_size = 0
        t._cached_x_y = (None, None)
    return t


class _FlowDistribution(dist.TransformedDistribution):
    """The flow prior's distribution: a :class:`~pyro.distributions.TransformedDistribution`
    whose :meth:`log_prob` runs every layer's inverse once.

    The flow's layers keep their (input, output) cache off (:func:`_without_cache_`).
    Without a cache, Pyro's layers compute ``log_abs_det_jacobian(x, y)`` by running the
    layer forward again after the inverse, so scoring cost two passes per layer. Here each
    layer's cache is switched on for the duration of one ``log_prob`` call only: the
    inverse caches its (x, y) pair, the Jacobian term of that very pair reads what the
    inverse computed (Pyro's own cached path, keyed on the identity of x and y), and the
    cache is emptied and switched off again before the call returns, so no later call can
    see values computed with older parameters.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        layers = [t for t in self.transforms if isinstance(t, nn.Module)]
        for t in layers:
            t._cache_size, t._cached_x_y = 1, (None, None)
        try:
            return super().log_prob(value)
        finally:
            for t in layers:
                _without_cache_(t)


#: Name -> Pyro transform family accepted by ``FlowPrior(transforms=NAME)``.
FLOW_TRANSFORMS: dict[str, _FlowFamily] = {
    "spline": _FlowFamily(T.spline, min_dim=1, networked=False, splines=True),
    "spline_coupling": _FlowFamily(T.spline_coupling, min_dim=2, networked=True, splines=True),
    "affine_coupling": _FlowFamily(T.affine_coupling, min_dim=2, networked=True, splines=False),
    "affine_autoregressive": _FlowFamily(
        T.affine_autoregressive, min_dim=2, networked=True, splines=False
    ),
    "spline_autoregressive": _FlowFamily(
        T.spline_autoregressive, min_dim=2, networked=True, splines=True
    ),
}


@PRIORS.register("flow")
class FlowPrior(Prior):
    """Normalising-flow prior: N(0, I) pushed through learnable bijections.

    ``z = f_L(... f_1(u))``, ``u ~ N(0, I)``, so ``log p(z) = log N(f^{-1}(z); 0, I) +
    log |det d f^{-1} / dz|`` exactly (:class:`pyro.distributions.TransformedDistribution`).

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    transforms : str, sequence of Transform, or None
        A family name from :data:`FLOW_TRANSFORMS` (``"spline_coupling"``,
        ``"affine_coupling"``, ``"affine_autoregressive"``, ``"spline_autoregressive"``,
        all for ``latent_dim >= 2``, or the elementwise ``"spline"``), stacked
        ``num_transforms`` times with a fixed reversal permutation in between; or your
        own sequence of Pyro/torch transforms on vectors of size ``latent_dim`` (those that
        are ``nn.Module`` s, e.g. ``pyro.distributions.transforms.spline_coupling(4)``,
        are registered and trained). ``None``: ``"spline_coupling"``, or ``"spline"`` for
        ``latent_dim == 1``.
    num_transforms : int or None
        Number of stacked layers of a named family (>= 1; default 2).
    hidden : tuple[int, ...] or None
        Hidden widths of the networks of coupling and autoregressive families (default:
        Pyro's, two layers of ``10 * latent_dim``).
    count_bins, bound : int or None, float or None
        Spline families only: number of bins (>= 2; default 8) and the half-width of the
        box [-bound, bound] outside which the spline is the identity (> 0; default 3).

    Options that do not apply (``hidden`` for ``"spline"``, ``count_bins`` for an affine
    family, any of them with your own transforms) raise ``ValueError``.

    Notes
    -----
    Layers built from a family name start near the identity map (their output layers
    scaled down), so the prior starts close to N(0, I) with a smooth density; Pyro's
    default initialisation of spline layers gives densities with sharp spikes.

    The transform modules' caches are switched off (also for your own transforms): with a
    cache, scoring a tensor the flow produced or scored before reuses the stale inverse
    computed with older parameters. Every ``log_prob`` therefore runs the inverse, once
    per layer: within one call the cache is on, so each layer's Jacobian term comes from
    its inverse pass instead of a second, forward pass.

    Densities are evaluated with the inverse flow (``log_prob`` of guide draws in an
    ELBO), which is cheap for coupling and elementwise layers and takes ``latent_dim``
    sequential network passes for autoregressive ones. p(z) does not factorise and has
    no closed-form marginals, so KL terms use Monte Carlo estimates.

    References
    ----------
    Rezende & Mohamed (2015). Variational Inference with Normalizing Flows. ICML.
    Dinh, Sohl-Dickstein & Bengio (2017). Density Estimation using Real NVP. ICLR.
    Durkan et al. (2019). Neural Spline Flows. NeurIPS.
    Chen et al. (2017). Variational Lossy Autoencoder. ICLR (flow priors for VAEs).
    """

    factorized = False

    def __init__(
        self,
        latent_dim: int,
        transforms: str | Sequence[Transform] | None = None,
        *,
        num_transforms: int | None = None,
        hidden: tuple[int, ...] | None = None,
        count_bins: int | None = None,
        bound: float | None = None,
    ) -> None:
        super().__init__(latent_dim)
        d = self.latent_dim
        given = {
            k: v
            for k, v in [
                ("num_transforms", num_transforms),
                ("hidden", hidden),
                ("count_bins", count_bins),
                ("bound", bound),
            ]
            if v is not None
        }
        num_transforms = check_int("num_transforms", given.get("num_transforms", 2), minimum=1)
        hidden_dims = None if hidden is None else list(check_hidden("hidden", hidden))
        count_bins = check_int("count_bins", given.get("count_bins", 8), minimum=2)
        bound = check_float("bound", given.get("bound", 3.0), minimum=0.0, strict_minimum=True)
        if transforms is None:
            transforms = "spline_coupling" if d >= 2 else "spline"
        # layout entries: ("flow", i) -> self.flows[i]; ("perm", None); ("fixed", Transform)
        layout: list[tuple[str, Any]] = []
        modules: list[nn.Module] = []
        if isinstance(transforms, str):
            family = FLOW_TRANSFORMS.get(transforms)
            if family is None:
                raise ValueError(
                    f"transforms must be one of {', '.join(map(repr, FLOW_TRANSFORMS))} or a "
                    f"sequence of transforms; got {transforms!r}"
                )
            if d < family.min_dim:
                raise ValueError(
                    f"transforms={transforms!r} needs latent_dim >= {family.min_dim}, got "
                    f"latent_dim={d}; use transforms='spline' for one dimension"
                )
            unused = [k for k in ("hidden",) if k in given and not family.networked] + [
                k for k in ("count_bins", "bound") if k in given and not family.splines
            ]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} do(es) not apply to transforms={transforms!r}; "
                    "hidden applies to coupling and autoregressive families, count_bins and "
                    "bound to spline families"
                )
            permute = family.networked  # elementwise layers gain nothing from permuting
            for i in range(num_transforms):
                if i and permute:
                    layout.append(("perm", None))
                layout.append(("flow", len(modules)))
                modules.append(_near_identity_(family(d, hidden_dims, count_bins, bound)))
            self.family = transforms
        elif isinstance(transforms, (list, tuple, nn.ModuleList)) and len(transforms) > 0:
            if given:
                raise ValueError(
                    f"{', '.join(given)} apply to a named family of transforms, not to your own "
                    "sequence of transforms; configure those when you build them"
                )
            for i, t in enumerate(transforms):
                self._check_transform(i, t)
                if isinstance(t, nn.Module):
                    layout.append(("flow", len(modules)))
                    modules.append(t)
                else:
                    layout.append(("fixed", t))
            self.family = "custom"
        else:
            raise TypeError(
                f"transforms must be a name ({', '.join(FLOW_TRANSFORMS)}), a non-empty sequence "
                f"of transforms, or None; got {transforms!r}"
            )
        for t in modules:
            _without_cache_(t)
        self.flows = nn.ModuleList(modules)
        self._layout = layout
        self.register_buffer("_perm", torch.arange(d - 1, -1, -1))
        self.register_buffer("_loc", torch.zeros(d))
        self.register_buffer("_scale", torch.ones(d))

    def _check_transform(self, i: int, t: object) -> None:
        if not isinstance(t, Transform):
            raise TypeError(
                f"transforms[{i}] must be a torch.distributions.Transform (e.g. "
                f"pyro.distributions.transforms.spline_coupling({self.latent_dim})), got "
                f"{type(t).__name__}"
            )
        if not t.bijective or t.domain.event_dim > 1:
            raise ValueError(
                f"transforms[{i}] ({type(t).__name__}) must be a bijection on vectors "
                "(domain event_dim <= 1)"
            )
        probe = torch.zeros(2, self.latent_dim, device=module_device(t))
        try:
            with torch.no_grad():
                out = t(probe)
        except (RuntimeError, ValueError, IndexError) as e:
            raise ValueError(
                f"transforms[{i}] ({type(t).__name__}) failed on vectors of size "
                f"latent_dim={self.latent_dim}: {e}"
            ) from e
        if out.shape != probe.shape:
            raise ValueError(
                f"transforms[{i}] ({type(t).__name__}) maps shape {tuple(probe.shape)} to "
                f"{tuple(out.shape)}; it must preserve (..., latent_dim={self.latent_dim})"
            )

    def distribution(self) -> dist.TorchDistribution:
        flows = self.flows  # inside a Pyro program this registers their parameters
        chain: list[Transform] = []
        for kind, item in self._layout:
            if kind == "flow":
                chain.append(flows[item])
            elif kind == "perm":
                chain.append(T.Permute(self._perm))
            else:
                chain.append(item)
        base = dist.Normal(self._loc, self._scale).to_event(1)
        return _FlowDistribution(base, chain)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, transforms={self.family!r}"
