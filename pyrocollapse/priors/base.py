"""Swappable priors p(z) as Pyro programs.

A prior is a :class:`Prior`: a :class:`~pyro.nn.PyroModule` that a model calls inside its
own plates, ``z = prior("z")``. The prior samples the latent site (event shape
``(latent_dim,)``), so a model never hard-codes ``dist.Normal(0, 1)`` and any prior can
be swapped in without touching model code.

Adding a prior means subclassing :class:`Prior` and implementing one method,
:meth:`Prior.distribution`, which returns p(z) as a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (latent_dim,)``. Everything else
(``forward``, ``log_prob``, ``sample``, ``marginal``, registration of learnable
parameters, the command-line name) comes from the base class. Priors with extra latent
sites (:class:`HierarchicalPrior`) override ``forward``, ``guide``, ``log_prob`` and
``sample`` instead. :func:`pyrocollapse.testing.check_prior` runs the contract on any
prior, including your own.

The families, by their command-line names (``pyrocollapse run --prior NAME``):

============  ================================  ==========================================
name          class                             p(z)
============  ================================  ==========================================
standard      :class:`StandardNormalPrior`      N(0, I)
learnable     :class:`LearnableGaussianPrior`   N(mu, diag(sigma^2)), mu and sigma learned
mixture       :class:`MixturePrior`             sum_k pi_k N(mu_k, diag(sigma_k^2)), learned
vamp          :class:`VampPrior`                (1/K) sum_k q(z | u_k), pseudo-inputs u_k
hierarchical  :class:`HierarchicalPrior`        int N(z; mu(t), diag(sigma(t)^2)) N(t; 0, I) dt
ard           :class:`ARDPrior`                 N(0, diag(s^2)), relevances s learned
flow          :class:`FlowPrior`                N(0, I) pushed through learned bijections
============  ================================  ==========================================

Learnable parameters
--------------------
Learnable parameters are plain :class:`torch.nn.Parameter` s on unconstrained scales (the
constraint is applied in :meth:`Prior.distribution`, e.g. ``softplus`` for scales). Inside
a running Pyro program a ``PyroModule`` turns each of them into a ``pyro.param`` site, so
:class:`pyro.infer.SVI` and :func:`pyrocollapse.train.fit` train them, and
``prior.parameters()`` lists them for plain PyTorch. Each prior instance gets a unique
name in Pyro's parameter store (``mixtureprior``, ``mixtureprior_2``, ...; inside a model,
``<model name>.prior``), so two priors never share weights through the store. (Constrained
``PyroParam`` s are avoided on purpose: they adopt a same-named tensor already in the
global store, silently tying two models together.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import (
    ConditionalAutoRegressiveNN,
    ConditionalDenseNN,
    DenseNN,
    PyroModule,
    pyro_method,
)
from torch import nn
from torch.distributions import Transform
from torch.nn.functional import softplus

from pyrocollapse._validation import (
    check_choice,
    check_data,
    check_float,
    check_hidden,
    check_int,
    module_device,
)
from pyrocollapse.persistence import Saveable
from pyrocollapse.registry import Registry, unique_name

__all__ = [
    "FLOW_TRANSFORMS",
    "PRIORS",
    "ARDPrior",
    "DiagonalNormalMixture",
    "FlowPrior",
    "HierarchicalPrior",
    "LearnableGaussianPrior",
    "MixturePrior",
    "Prior",
    "StandardNormalPrior",
    "VampPrior",
    "make_prior",
]

#: Short name -> prior class, used by ``pyrocollapse run --prior NAME``.
PRIORS: Registry[Any] = Registry("prior")

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """A mixture of K diagonal Normals over ``(D,)``, as ``MixtureSameFamily``, whose
    ``log_prob`` never forms the ``(..., K, D)`` tensor.

    ``log N(z; mu_k, sigma_k)`` summed over dimensions expands into
    ``-0.5 (z^2 . w_k - 2 z . (mu_k w_k) + mu_k^2 . w_k) - sum_d log sigma_kd - D/2 log 2 pi``
    with ``w_k = 1 / sigma_k^2``: two ``(N, D) x (D, K)`` matrix products for N points,
    in float64 because the terms cancel (the result is then rounded to ``z``'s dtype).
    On a 784-512-512-32 VAE with a 50-component VampPrior this removes a
    ``(128, 50, 32)`` tensor and its backward from every step. The value equals
    ``MixtureSameFamily.log_prob`` up to rounding; where the fast form does not apply (a
    mixture with batch dimensions, components that are not an ``Independent`` of plain
    Normals, a device without fast float64) it is ``MixtureSameFamily.log_prob`` itself.

    Parameters
    ----------
    mixture_distribution : Categorical
        Weights over the K components, batch shape ``()``.
    component_distribution : Independent(Normal, 1)
        Batch shape ``(K,)``, event shape ``(D,)``.
    """

    def __init__(
        self,
        mixture_distribution: dist.Categorical,
        component_distribution: dist.TorchDistribution,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(mixture_distribution, torch.distributions.Categorical):
            raise TypeError(
                "mixture_distribution must be a Categorical over the components, got "
                f"{type(mixture_distribution).__name__}"
            )
        if not isinstance(component_distribution, torch.distributions.Distribution):
            raise TypeError(
                "component_distribution must be a Distribution with batch shape (K,) and "
                f"event shape (D,), e.g. Normal(loc, scale).to_event(1); got "
                f"{type(component_distribution).__name__}"
            )
        super().__init__(mixture_distribution, component_distribution, validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> DiagonalNormalMixture:
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        comp = self.component_distribution
        base = getattr(comp, "base_dist", None)
        fast = (
            self.batch_shape == torch.Size()
            and isinstance(comp, dist.Independent)
            and comp.reinterpreted_batch_ndims == 1
            and isinstance(base, dist.Normal)
            and type(base).log_prob is dist.Normal.log_prob
            and value.dim() >= 1
            and value.shape[-1] == comp.event_shape[0]
            and value.device.type in ("cpu", "cuda")
        )
        if not fast:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        k, d = comp.batch_shape[0], comp.event_shape[0]
        loc, scale = (t.expand(k, d) for t in torch.broadcast_tensors(base.loc, base.scale))
        lead = value.shape[:-1]
        z = value.reshape(-1, d).double()
        locd = loc.double()
        w = scale.double().reciprocal().square()  # (K, D)
        m = locd * w
        quad = z.square() @ w.T - 2.0 * (z @ m.T) + (locd * m).sum(-1)  # (N, K)
        bias = -scale.double().log().sum(-1) - d * _HALF_LOG_2PI  # (K,)
        log_w = torch.log_softmax(self.mixture_distribution.logits.double(), -1)
        out = torch.logsumexp(bias + log_w - 0.5 * quad, dim=-1)
        return out.to(value.dtype).reshape(lead)


def _inverse_softplus(value: torch.Tensor | float) -> torch.Tensor:
    """``x`` with ``softplus(x) == value``, elementwise, for ``value > 0``."""
    value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    return value + torch.log(-torch.expm1(-value))


def _placement(obj: object) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of a module, or of the module a bound method belongs to
    (``(None, None)`` for anything else, e.g. a plain function)."""
    module = getattr(obj, "__self__", obj)
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return module_device(obj), None


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str (the sample site), got {name!r}")
    return name


def _check_shape(name: str, value: object) -> tuple[int, ...]:
    """A tuple of positive ints (an event shape)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(
            f"{name} must be a non-empty tuple of positive ints such as (64,) or (1, 28, 28), "
            f"got {type(value).__name__} {value!r}"
        )
    if len(value) == 0:
        raise ValueError(
            f"{name} must be a non-empty tuple of positive ints such as (64,) or (1, 28, 28), "
            "got ()"
        )
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


def _univariate_normal_marginal(d: dist.Distribution, dim: int) -> dist.Distribution | None:
    """The exact univariate marginal of coordinate ``dim`` of ``d``, where it is available.

    Available for factorised Normals (``Independent(Normal, 1)``) and for
    ``MixtureSameFamily`` of such components (a univariate mixture with the same weights).
    Returns ``None`` otherwise.
    """
    if isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if isinstance(base, dist.Normal):
            loc, scale = torch.broadcast_tensors(base.loc, base.scale)
            return dist.Normal(loc[..., dim], scale[..., dim])
    if isinstance(d, dist.MixtureSameFamily):
        comp = _univariate_normal_marginal(d.component_distribution, dim)
        if comp is not None:
            return dist.MixtureSameFamily(d.mixture_distribution, comp)
    return None


# --------------------------------------------------------------------------------------
# Base
# --------------------------------------------------------------------------------------
class Prior(PyroModule, Saveable):
    """Base class of every prior p(z) over a ``latent_dim``-dimensional latent.

    Subclasses implement :meth:`distribution`. Override :meth:`forward` only for priors
    with extra latent sites (hierarchical), together with :meth:`guide` (the matching
    guide piece, decorated with :func:`pyro.nn.pyro_method` so that its parameters are
    registered), :meth:`log_prob` and :meth:`sample`.

    Parameters
    ----------
    latent_dim : int
        Dimension of z (>= 1).

    Attributes
    ----------
    factorized : bool
        Whether p(z) factorises over dimensions, p(z) = prod_d p(z_d). Per-dimension KL
        terms are exact only for factorised priors.

    Notes
    -----
    ``PyroModule`` has its own metaclass, so the base is not an ``abc.ABC``;
    :meth:`distribution` raises ``NotImplementedError`` instead.

    Every instance gets a unique name in Pyro's parameter store (see the module notes);
    assigning the prior to a model (``model.prior = prior``) renames it under the model.

    Saving: ``prior.save(path)`` writes the class, the constructor arguments (recorded by
    the base for every subclass, so new priors need nothing) and the parameters and
    buffers to one file; ``Prior.load(path)`` rebuilds the saved class. See
    :mod:`pyrocollapse.persistence`.
    """

    #: Whether p(z) factorises over dimensions (p(z) = prod_d p(z_d)).
    factorized: bool = True
    persistence_kind = "prior"

    def __init__(self, latent_dim: int) -> None:
        super().__init__(name=unique_name(type(self).__name__.lower()))
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)

    @property
    def device(self) -> torch.device:
        """The device of the prior's parameters and buffers (CPU for a prior without any).

        Priors are modules: ``prior.to(device)`` (or moving the model that owns it) moves
        every tensor they hold, and :meth:`sample`, :meth:`log_prob` and the Pyro programs
        then work on that device.
        """
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    # -- the one method to implement -------------------------------------------------
    def distribution(self) -> dist.TorchDistribution:
        """p(z) with ``batch_shape == ()`` and ``event_shape == (latent_dim,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement distribution()")

    # -- construction from the command line ---------------------------------------------
    @classmethod
    def from_options(
        cls, latent_dim: int, *, input_shape: tuple[int, ...] | None = None, **options: Any
    ) -> Prior:
        """Build from ``latent_dim``, the data's event shape and keyword options.

        Used by ``pyrocollapse run --prior NAME --prior-option KEY=VALUE`` and
        :func:`make_prior`; priors that need more than ``latent_dim`` (VampPrior's
        ``input_shape``) override it. ``input_shape`` is ignored by the others.
        """
        return cls(latent_dim, **options)

    # -- shared behaviour --------------------------------------------------------------
    def forward(self, name: str = "z") -> torch.Tensor:
        """Sample the latent site ``name`` inside the caller's plates.

        Plate subsampling scales and ``poutine.scale`` apply as to any ``pyro.sample``.

        Returns
        -------
        torch.Tensor
            z of shape ``plate_shape + (latent_dim,)``.
        """
        return pyro.sample(_check_name(name), self.distribution())

    def guide(self, name: str, z: torch.Tensor) -> None:
        """Guide piece for any extra latent sites this prior samples.

        Called by a model's guide right after it samples ``name`` (value ``z``), inside
        the same plates. Single-site priors have nothing to add.
        """
        return None

    def attach(self, model: torch.nn.Module) -> None:
        """Hook called once by a model that owns this prior (e.g. VampPrior binds the
        model's live encoder here). The default does nothing."""
        return None

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over the event dimension.

        Parameters
        ----------
        z : torch.Tensor
            Shape ``batch_shape + (latent_dim,)``.

        Returns
        -------
        torch.Tensor
            Shape ``batch_shape`` (nats), differentiable w.r.t. the prior's parameters.
        """
        self._check_z(z)
        return self.distribution().log_prob(z)

    def sample(self, n: int) -> torch.Tensor:
        """Draw ``n`` prior samples outside any Pyro context, shape ``(n, latent_dim)``, on
        :attr:`device`."""
        n = check_int("n", n, minimum=1)
        with torch.no_grad():
            return self.distribution().sample((n,))

    def marginal(self, dim: int) -> dist.TorchDistribution:
        """The univariate marginal p(z_dim), used by per-dimension diagnostics.

        Exact for factorised Normal priors and for mixtures of them (a univariate mixture
        with the same weights); other priors raise ``NotImplementedError``.

        Parameters
        ----------
        dim : int
            Coordinate, ``0 <= dim < latent_dim``.
        """
        dim = check_int("dim", dim, minimum=0)
        if dim >= self.latent_dim:
            raise ValueError(f"dim must be < latent_dim={self.latent_dim}, got {dim}")
        out = _univariate_normal_marginal(self.distribution(), dim)
        if out is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no closed-form univariate marginal; marginal() is "
                "available for factorised Normal priors and mixtures of them"
            )
        return out

    def _check_z(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"z must have shape (..., latent_dim={self.latent_dim}), got {tuple(z.shape)}"
            )

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


# --------------------------------------------------------------------------------------
# Gaussian families
# --------------------------------------------------------------------------------------
@PRIORS.register("standard")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I): the usual VAE prior, with no parameters.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.

    References
    ----------
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_loc", torch.zeros(self.latent_dim))
        self.register_buffer("_scale", torch.ones(self.latent_dim))

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self._loc, self._scale).to_event(1)


class _DiagonalNormalPrior(Prior):
    """Shared body of the learnable diagonal Normals N(mu, diag(s^2)).

    ``s = softplus(raw_scale) + min_scale`` (positive by construction); ``mu`` is a
    learnable ``loc`` parameter or a zero buffer.
    """

    def __init__(
        self, latent_dim: int, *, learn_loc: bool, init_scale: float, min_scale: float
    ) -> None:
        super().__init__(latent_dim)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
        if init_scale <= self.min_scale:
            raise ValueError(f"init_scale must be > min_scale={self.min_scale}, got {init_scale}")
        zeros = torch.zeros(self.latent_dim)
        if learn_loc:
            self.loc = nn.Parameter(zeros)
        else:
            self.register_buffer("loc", zeros)
        raw = _inverse_softplus(init_scale - self.min_scale)
        self.raw_scale = nn.Parameter(raw.expand(self.latent_dim).clone())

    def _scale(self) -> torch.Tensor:
        return softplus(self.raw_scale) + self.min_scale

    @property
    def scales(self) -> torch.Tensor:
        """The prior standard deviations s_d, shape ``(latent_dim,)``, detached."""
        return self._scale().detach()

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self._scale()).to_event(1)


@PRIORS.register("learnable")
class LearnableGaussianPrior(_DiagonalNormalPrior):
    """p(z) = N(mu, diag(sigma^2)) with learnable mean and diagonal scale.

    The scale is ``softplus(raw) + min_scale``, positive by construction.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    init_scale : float
        Initial sigma (all dimensions), > ``min_scale``. mu starts at 0, so the prior
        starts as N(0, init_scale^2 I).
    min_scale : float
        Floor on sigma, for numerical stability (>= 0).

    Notes
    -----
    A learnable Gaussian prior is equivalent to N(0, I) up to an affine reparametrisation
    of z that the decoder can absorb, so by itself it rarely prevents collapse; its value
    is as a baseline and as a readable diagnostic (``loc``, :attr:`scales`).

    References
    ----------
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS (the learnable-prior baseline).
    """

    def __init__(
        self, latent_dim: int, *, init_scale: float = 1.0, min_scale: float = 1e-5
    ) -> None:
        super().__init__(latent_dim, learn_loc=True, init_scale=init_scale, min_scale=min_scale)


# --------------------------------------------------------------------------------------
# Mixtures
# --------------------------------------------------------------------------------------
def _kmeans_pp(points: torch.Tensor, k: int) -> torch.Tensor:
    """k-means++ seeding: ``k`` rows of ``points`` (shape ``(N, d)``), spread out.

    The first row is chosen uniformly, each next one with probability proportional to its
    squared distance to the nearest chosen row (Arthur & Vassilvitskii 2007). Uses the
    global torch RNG; returns shape ``(k, d)``.
    """
    chosen = [points[torch.randint(len(points), (), device=points.device)]]
    dist2 = ((points - chosen[0]) ** 2).sum(-1)
    for _ in range(1, k):
        idx = torch.multinomial(dist2 + 1e-12, 1).squeeze()
        chosen.append(points[idx])
        dist2 = torch.minimum(dist2, ((points - points[idx]) ** 2).sum(-1))
    return torch.stack(chosen)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """Gaussian-mixture prior p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)).

    Weights, means and diagonal scales are learnable (``softmax(logits)``,
    ``means``, ``softplus(raw_scales) + min_scale``); ``log_prob`` is exact (logsumexp
    over components, through :class:`pyro.distributions.MixtureSameFamily`).

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    n_components : int
        Number of components K (>= 1).
    learn_weights : bool
        Learn the mixture weights; ``False`` keeps them uniform (1/K).
    init_spread : float
        Means are seeded k-means++-style from N(0, init_spread^2 I) draws, so they start
        spread out rather than on top of each other (> 0). :meth:`init_components`
        re-initialises them from latent codes instead.
    init_scale : float
        Initial sigma of every component (> ``min_scale``).
    min_scale : float
        Floor on the component scales (>= 0).

    Notes
    -----
    The KL between a Gaussian q(z|x) and a mixture has no closed form: ELBOs use the
    Monte Carlo estimate log q(z) - log p(z), and per-dimension diagnostics use the
    univariate mixture marginals (:meth:`marginal`). The prior does not factorise.

    References
    ----------
    Dilokthanakul et al. (2016). Deep Unsupervised Clustering with Gaussian Mixture
    Variational Autoencoders. arXiv:1611.02648.
    Jiang et al. (2017). Variational Deep Embedding (VaDE). IJCAI.
    """

    factorized = False

    def __init__(
        self,
        latent_dim: int,
        n_components: int = 10,
        learn_weights: bool = True,
        *,
        init_spread: float = 2.0,
        init_scale: float = 1.0,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(latent_dim)
        self.n_components = check_int("n_components", n_components, minimum=1)
        if not isinstance(learn_weights, bool):
            raise TypeError(f"learn_weights must be a bool, got {learn_weights!r}")
        init_spread = check_float("init_spread", init_spread, minimum=0.0, strict_minimum=True)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        init_scale = check_float("init_scale", init_scale, minimum=0.0, strict_minimum=True)
        if init_scale <= self.min_scale:
            raise ValueError(f"init_scale must be > min_scale={self.min_scale}, got {init_scale}")
        k, d = self.n_components, self.latent_dim
        self.means = nn.Parameter(_kmeans_pp(torch.randn(max(64, 16 * k), d) * init_spread, k))
        raw = _inverse_softplus(init_scale - self.min_scale)
        self.raw_scales = nn.Parameter(raw.expand(k, d).clone())
        self.learn_weights = learn_weights
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(k))
        else:
            self.register_buffer("logits", torch.zeros(k))

    def _scales(self) -> torch.Tensor:
        return softplus(self.raw_scales) + self.min_scale

    @torch.no_grad()
    def init_components(self, z: torch.Tensor, *, iterations: int = 25) -> torch.Tensor:
        """Initialise the components by k-means on latent codes ``z`` (e.g. encoder means).

        k-means++ seeding and ``iterations`` Lloyd steps; then the means become the
        centroids, the scales the within-cluster standard deviations and, when weights
        are learned, the weights the cluster fractions (the initialisation of VaDE, Jiang
        et al. 2017). Gradient training of a mixture from a random start can leave
        components stranded far from the data; this start avoids it.

        Parameters
        ----------
        z : torch.Tensor
            Codes of shape ``(N, latent_dim)`` with ``N >= n_components``.
        iterations : int
            Lloyd iterations (>= 0).

        Returns
        -------
        torch.Tensor
            Cluster index of each code, shape ``(N,)``.
        """
        z = check_data("z", z, event_shape=(self.latent_dim,)).to(self.means)
        iterations = check_int("iterations", iterations, minimum=0)
        k = self.n_components
        if z.shape[0] < k:
            raise ValueError(f"z must have at least n_components={k} rows, got {z.shape[0]}")
        centres = _kmeans_pp(z, k)
        for _ in range(iterations + 1):
            assign = torch.cdist(z, centres).argmin(-1)
            onehot = nn.functional.one_hot(assign, k).to(z)  # (N, K)
            counts = onehot.sum(0)
            filled = counts > 0
            centres[filled] = (onehot.T @ z)[filled] / counts[filled, None]
        var = (onehot.T @ z**2) / counts.clamp(min=1)[:, None] - centres**2
        floor = max(1e-3, 2 * self.min_scale)
        fallback = z.std(0) / k  # clusters of fewer than two codes
        std = torch.where((counts > 1)[:, None], var.clamp(min=0).sqrt(), fallback).clamp(min=floor)
        self.means.copy_(centres)
        self.raw_scales.copy_(_inverse_softplus(std - self.min_scale))
        if self.learn_weights:
            self.logits.copy_(torch.log(counts.clamp(min=1) / counts.sum()))
        return assign

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights pi, shape ``(n_components,)``, detached."""
        return torch.softmax(self.logits.detach(), -1)

    @property
    def scales(self) -> torch.Tensor:
        """Component scales sigma, shape ``(n_components, latent_dim)``, detached."""
        return self._scales().detach()

    def distribution(self) -> dist.TorchDistribution:
        components = dist.Normal(self.means, self._scales()).to_event(1)
        return DiagonalNormalMixture(dist.Categorical(logits=self.logits), components)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, n_components={self.n_components}, "
            f"learn_weights={self.learn_weights}"
        )


#: Accepted values of ``VampPrior(support=...)``: how raw pseudo-inputs map to inputs.
PSEUDO_SUPPORTS = ("unit", "real")


@PRIORS.register("vamp")
class VampPrior(Prior):
    """VampPrior: the mixture of the encoder's posteriors at K learnable pseudo-inputs.

    ``p(z) = (1/K) sum_k q(z | u_k)``, where ``q`` is the *live* encoder of the model and
    ``u_1..u_K`` are learnable pseudo-inputs of the data's event shape. ``log_prob`` is
    exact (logsumexp over the K components).

    Parameters
    ----------
    encoder : callable or None
        ``x -> q(z|x)``: takes a batch ``(K, *input_shape)`` and returns a distribution
        with batch shape ``(K,)`` and event shape ``(latent_dim,)``, e.g. a VAE's
        ``encode`` method. ``None`` binds it later: a VAE calls :meth:`attach` with
        itself, which binds ``model.encode``. The encoder is referenced, not owned: its
        parameters stay registered (and named) once, by the model, and every change to
        them changes this prior.
    n_pseudo : int
        Number of pseudo-inputs K (>= 1).
    input_shape : tuple[int, ...]
        Event shape of one observation, e.g. ``(64,)``.
    latent_dim : int or None
        Dimension of z. Required when ``encoder`` is None; otherwise inferred by calling
        the encoder once (and checked against ``latent_dim`` when both are given).
    support : {"unit", "real"}
        ``"unit"``: pseudo-inputs are ``sigmoid(raw)``, in (0, 1), valid inputs of models
        with Bernoulli-type likelihoods. ``"real"``: pseudo-inputs are ``raw``.

    Notes
    -----
    The pseudo-inputs start as uniform noise in [0.05, 0.95] (``"unit"``) or standard
    normal noise (``"real"``); :meth:`init_pseudo_inputs` seeds them from data instead,
    which the paper recommends for faster training.

    If ``encoder`` is a plain function or ``nn.Module`` that belongs to no model, register
    its parameters yourself (e.g. ``pyro.module("encoder", net)`` in the model), or they
    will not be trained by SVI through this prior.

    References
    ----------
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS.
    """

    factorized = False

    def __init__(
        self,
        encoder: Callable[[torch.Tensor], dist.Distribution] | None,
        n_pseudo: int,
        input_shape: tuple[int, ...],
        *,
        latent_dim: int | None = None,
        support: str = "unit",
    ) -> None:
        if encoder is not None and not callable(encoder):
            raise TypeError(
                "encoder must be a callable x -> q(z|x) (e.g. vae.encode) or None, "
                f"got {type(encoder).__name__}"
            )
        n_pseudo = check_int("n_pseudo", n_pseudo, minimum=1)
        input_shape = _check_shape("input_shape", input_shape)
        support = check_choice("support", support, PSEUDO_SUPPORTS)
        if latent_dim is None:
            if encoder is None:
                raise ValueError(
                    "latent_dim is required when encoder is None (the encoder is bound later "
                    "by attach(model)); pass latent_dim=<the model's latent_dim>"
                )
            device, dtype = _placement(encoder)
            probe = torch.full((1, *input_shape), 0.5, device=device, dtype=dtype)
            latent_dim = self._probe(encoder, probe).event_shape[-1]
        super().__init__(latent_dim)
        self.n_pseudo = n_pseudo
        self.input_shape = input_shape
        self.support = support
        if support == "unit":
            raw = torch.logit(torch.empty(n_pseudo, *input_shape).uniform_(0.05, 0.95))
        else:
            raw = torch.randn(n_pseudo, *input_shape)
        # drawn on the CPU (the same pseudo-inputs for a seed whatever the device), then
        # given the device and dtype of an already-built encoder
        device, dtype = (None, None) if encoder is None else _placement(encoder)
        self.raw_pseudo = nn.Parameter(raw.to(device=device, dtype=dtype))
        self.register_buffer("_mix_logits", torch.zeros(n_pseudo, device=device, dtype=dtype))
        # A plain list: the encoder is referenced, never registered as a submodule.
        self._encoder_ref: list[Callable[[torch.Tensor], dist.Distribution]] = []
        self._bound_by_attach = False
        if encoder is not None:
            self._bind(encoder)

    @classmethod
    def from_options(
        cls,
        latent_dim: int,
        *,
        input_shape: tuple[int, ...] | None = None,
        n_pseudo: int = 50,
        **options: Any,
    ) -> VampPrior:
        """An unbound VampPrior (``encoder=None``) that the model binds with :meth:`attach`.

        ``n_pseudo`` defaults to 50. For real-valued data pass ``support="real"``
        (``--prior-option support=real``): the default keeps pseudo-inputs in (0, 1).
        """
        if input_shape is None:
            raise ValueError(
                "VampPrior needs input_shape (the event shape of one observation, e.g. (64,)) "
                "to size its pseudo-inputs"
            )
        return cls(None, n_pseudo, input_shape, latent_dim=latent_dim, **options)

    def constructor_arguments(self) -> dict[str, Any]:
        """The recorded constructor arguments with ``encoder=None`` and ``latent_dim`` set.

        The encoder is a live function and is not saved: a VampPrior saved inside a VAE
        is re-attached to the loaded model's encoder; one saved alone loads unbound
        (attach it to a model, or pass ``encoder=`` to :meth:`load`).
        """
        arguments = super().constructor_arguments()
        arguments["encoder"] = None
        arguments["latent_dim"] = self.latent_dim
        return arguments

    # -- encoder binding ---------------------------------------------------------------
    @staticmethod
    def _probe(encoder: Callable[..., Any], x: torch.Tensor) -> dist.Distribution:
        with torch.no_grad():
            try:
                q = encoder(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise ValueError(
                    f"VampPrior could not evaluate the encoder on pseudo-inputs of shape "
                    f"{tuple(x.shape)}: {e}. The encoder must take continuous inputs of shape "
                    "(K, *input_shape)."
                ) from e
        if not isinstance(q, torch.distributions.Distribution) or len(q.event_shape) != 1:
            raise ValueError(
                "encoder must return a distribution with event shape (latent_dim,), got "
                f"{type(q).__name__}"
                + (f" with event shape {tuple(q.event_shape)}" if hasattr(q, "event_shape") else "")
                + "; try .to_event(1) on the encoder's distribution"
            )
        return q

    def _bind(self, encoder: Callable[[torch.Tensor], dist.Distribution]) -> None:
        q = self._probe(encoder, self._pseudo_inputs().detach())
        self._check_components(q)
        self._encoder_ref[:] = [encoder]

    def attach(self, model: torch.nn.Module) -> None:
        """Bind ``model.encode`` as the encoder (called by the VAE base).

        An encoder given to the constructor is kept. A prior bound to one model cannot be
        attached to another: build one VampPrior per model.
        """
        encode = getattr(model, "encode", None)
        if not callable(encode):
            raise TypeError(
                f"VampPrior.attach needs a model with an encode(x) -> q(z|x) method, got "
                f"{type(model).__name__}"
            )
        if not self._encoder_ref:
            self._bind(encode)
            self._bound_by_attach = True
        elif self._bound_by_attach and self._encoder_ref[0] != encode:
            raise ValueError(
                "this VampPrior is already bound to the encoder of another model; a prior "
                "belongs to one model: build a new VampPrior for each model"
            )

    @property
    def encoder(self) -> Callable[[torch.Tensor], dist.Distribution] | None:
        """The bound encoder (``None`` until bound)."""
        return self._encoder_ref[0] if self._encoder_ref else None

    def _check_components(self, q: dist.Distribution) -> None:
        want_batch, want_event = (self.n_pseudo,), (self.latent_dim,)
        if tuple(q.batch_shape) != want_batch or tuple(q.event_shape) != want_event:
            raise ValueError(
                f"encoder output on the pseudo-inputs must have batch shape {want_batch} and "
                f"event shape {want_event} (latent_dim={self.latent_dim}), got batch "
                f"{tuple(q.batch_shape)} and event {tuple(q.event_shape)}"
            )

    # -- pseudo-inputs -------------------------------------------------------------------
    def _pseudo_inputs(self) -> torch.Tensor:
        raw = self.raw_pseudo
        return torch.sigmoid(raw) if self.support == "unit" else raw

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k, shape ``(n_pseudo, *input_shape)``, detached."""
        return self._pseudo_inputs().detach()

    @torch.no_grad()
    def init_pseudo_inputs(self, x: torch.Tensor, *, noise: float = 0.01) -> None:
        """Seed the pseudo-inputs with random rows of ``x`` plus Gaussian noise.

        Parameters
        ----------
        x : torch.Tensor
            Data of shape ``(N, *input_shape)``; rows are drawn without replacement when
            ``N >= n_pseudo``, with replacement otherwise (global torch RNG).
        noise : float
            Standard deviation of the added noise (>= 0), in input units.
        """
        x = check_data("x", x, event_shape=self.input_shape)
        noise = check_float("noise", noise, minimum=0.0)
        if x.shape[0] >= self.n_pseudo:
            idx = torch.randperm(x.shape[0], device="cpu")[: self.n_pseudo]
        else:
            idx = torch.randint(x.shape[0], (self.n_pseudo,), device="cpu")
        u = x[idx.to(x.device)].to(self.raw_pseudo) + noise * torch.randn_like(self.raw_pseudo)
        if self.support == "unit":
            u = torch.logit(u.clamp(1e-3, 1 - 1e-3))
        self.raw_pseudo.copy_(u)

    # -- the prior ------------------------------------------------------------------------
    def distribution(self) -> dist.TorchDistribution:
        if not self._encoder_ref:
            raise RuntimeError(
                "VampPrior has no encoder yet: pass encoder=... or give the prior to a model, "
                "which calls attach(model)"
            )
        q = self._encoder_ref[0](self._pseudo_inputs())
        self._check_components(q)
        return DiagonalNormalMixture(dist.Categorical(logits=self._mix_logits), q)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, n_pseudo={self.n_pseudo}, "
            f"input_shape={self.input_shape}, support={self.support!r}, "
            f"bound={bool(self._encoder_ref)}"
        )


# --------------------------------------------------------------------------------------
# Hierarchical
# --------------------------------------------------------------------------------------
#: Accepted values of ``HierarchicalPrior.log_prob(proposal=...)``.
PROPOSALS = ("defensive", "guide", "prior")


@PRIORS.register("hierarchical")
class HierarchicalPrior(Prior):
    """Two-level prior: ``t ~ N(0, I_top)``, ``z | t ~ N(mu(t), diag(sigma(t)^2))``.

    ``mu`` and ``sigma`` come from a small MLP (``sigma = softplus(.) + min_scale``). The
    prior samples two sites, ``f"{name}_top"`` (t) and ``name`` (z), and supplies the
    matching guide piece: :meth:`guide` samples ``f"{name}_top"`` from an amortised
    ``q(t | z) = N(m(z), diag(s(z)^2))`` (a second small MLP owned by the prior), so a
    model/guide pair with this prior trains under SVI unchanged.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    top_dim : int or None
        Dimension of t (>= 1); default ``max(1, latent_dim // 2)``.
    hidden : tuple[int, ...]
        Hidden widths of the network t -> (mu, sigma) (at least one layer).
    guide_hidden : tuple[int, ...] or None
        Hidden widths of the network z -> q(t | z); default ``hidden``.
    min_scale : float
        Floor on sigma and on the scale of q(t | z) (>= 0).

    Notes
    -----
    The marginal p(z) = E_{p(t)}[p(z | t)] is intractable: :meth:`log_prob` returns an
    importance-sampled *estimate* (stochastic; unbiased for p(z) itself, hence a lower
    bound on log p(z) in expectation, by Jensen), and :meth:`distribution` is not
    available. :meth:`sample` draws exactly (ancestral sampling).

    In a trained model the site ``name`` carries the *conditional* p(z | t), so
    per-dimension diagnostics of ``"z"`` (e.g. ``diagnose(..., latent_sites=("z",
    "z_top"))``) report KL(q(z|x) || p(z | t)) at the guide's draw of t, and those of
    ``"z_top"`` report KL(q(t | z) || N(0, I)).

    The guide samples z before t (q(z|x) q(t|z)) while the model conditions z on t, so the
    guide is not mean-field: an ELBO must not replace the z term by the closed-form
    KL(q(z|x) || p(z | t)) at a t drawn given z. The :mod:`pyrocollapse.elbo` objectives
    detect this from the order of the sites and use the Monte Carlo term for z, as
    ``pyro.infer.Trace_ELBO`` does; ``pyro.infer.TraceMeanField_ELBO`` would be biased.

    References
    ----------
    Sønderby et al. (2016). Ladder Variational Autoencoders. NeurIPS.
    Klushyn et al. (2019). Learning Hierarchical Priors in VAEs. NeurIPS.
    Hesterberg (1995). Weighted Average Importance Sampling and Defensive Mixture
    Distributions. Technometrics (the defensive proposal of :meth:`log_prob`).
    """

    factorized = False

    def __init__(
        self,
        latent_dim: int,
        top_dim: int | None = None,
        hidden: tuple[int, ...] = (32,),
        *,
        guide_hidden: tuple[int, ...] | None = None,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(latent_dim)
        if top_dim is None:
            top_dim = max(1, self.latent_dim // 2)
        self.top_dim = check_int("top_dim", top_dim, minimum=1)
        hidden = self._check_layers("hidden", hidden)
        guide_hidden = (
            hidden if guide_hidden is None else self._check_layers("guide_hidden", guide_hidden)
        )
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        d, t = self.latent_dim, self.top_dim
        self.net = DenseNN(t, list(hidden), param_dims=[d, d])
        self.guide_net = DenseNN(d, list(guide_hidden), param_dims=[t, t])
        self.register_buffer("_top_loc", torch.zeros(t))
        self.register_buffer("_top_scale", torch.ones(t))

    @staticmethod
    def _check_layers(name: str, value: object) -> tuple[int, ...]:
        layers = check_hidden(name, value)
        if not layers:
            raise ValueError(f"{name} must have at least one hidden layer, got {value!r}")
        return layers

    # -- the three distributions ---------------------------------------------------------
    def top_distribution(self) -> dist.TorchDistribution:
        """p(t) = N(0, I_top): batch shape ``()``, event shape ``(top_dim,)``."""
        return dist.Normal(self._top_loc, self._top_scale).to_event(1)

    def conditional(self, z_top: torch.Tensor) -> dist.TorchDistribution:
        """p(z | t): batch shape ``z_top.shape[:-1]``, event shape ``(latent_dim,)``."""
        loc, raw = self.net(z_top)
        return dist.Normal(loc, softplus(raw) + self.min_scale).to_event(1)

    def posterior(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The guide piece q(t | z): batch shape ``z.shape[:-1]``, event shape ``(top_dim,)``."""
        loc, raw = self.guide_net(z)
        return dist.Normal(loc, softplus(raw) + self.min_scale).to_event(1)

    # -- Pyro programs ---------------------------------------------------------------------
    def forward(self, name: str = "z") -> torch.Tensor:
        """Sample ``f"{name}_top"`` then ``name`` inside the caller's plates; return z."""
        name = _check_name(name)
        z_top = pyro.sample(f"{name}_top", self.top_distribution())
        return pyro.sample(name, self.conditional(z_top))

    @pyro_method
    def guide(self, name: str, z: torch.Tensor) -> None:
        """Sample ``f"{name}_top"`` from q(t | z), inside the caller's plates."""
        name = _check_name(name)
        self._check_z(z)
        pyro.sample(f"{name}_top", self.posterior(z))

    def distribution(self) -> dist.TorchDistribution:
        raise NotImplementedError(
            "HierarchicalPrior has no tractable p(z) distribution; use log_prob(z, "
            "num_samples=...) (an importance-sampled estimate), sample(n), or "
            "conditional(z_top) for p(z | z_top)"
        )

    def marginal(self, dim: int) -> dist.TorchDistribution:
        raise NotImplementedError("HierarchicalPrior has no closed-form univariate marginal p(z_d)")

    # -- densities and draws -----------------------------------------------------------------
    def log_prob(
        self, z: torch.Tensor, num_samples: int = 128, *, proposal: str = "defensive"
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(z) (stochastic).

        ``log (1/S) sum_s p(z | t_s) p(t_s) / r(t_s | z)`` with S = ``num_samples`` draws
        t_s from the proposal r. The inner average is unbiased for p(z), so the estimate
        is a lower bound on log p(z) in expectation; the gap shrinks as S grows and as r
        approaches p(t | z). Differentiable (reparameterised draws).

        Parameters
        ----------
        z : torch.Tensor
            Shape ``batch_shape + (latent_dim,)``.
        num_samples : int
            Importance samples S per point (>= 1); memory is O(S * batch * latent_dim).
        proposal : {"defensive", "guide", "prior"}
            ``"guide"``: r = q(t | z), the amortised guide piece (tight once trained).
            ``"prior"``: r = p(t). ``"defensive"`` (default): ceil(S/2) draws from q(t|z)
            and the rest from p(t), weighted by the mixture density, so the weights stay
            bounded by 2 p(z | t) even while q is untrained (Hesterberg 1995).

        Returns
        -------
        torch.Tensor
            Shape ``batch_shape`` (nats).
        """
        self._check_z(z)
        s = check_int("num_samples", num_samples, minimum=1)
        proposal = check_choice("proposal", proposal, PROPOSALS)
        batch = z.shape[:-1]
        prior_t = self.top_distribution()
        q = self.posterior(z)
        # draws: n_q from q(t | z), n_p from p(t); r is the matching mixture density
        n_q = {"guide": s, "prior": 0, "defensive": (s + 1) // 2}[proposal]
        n_p = s - n_q
        draws, log_r_parts = [], []
        if n_q:
            draws.append(q.rsample((n_q,)))
        if n_p:
            draws.append(prior_t.expand(batch).rsample((n_p,)))
        t = torch.cat(draws)  # (S, *batch, top_dim)
        log_p_t = prior_t.log_prob(t)
        if n_q:
            log_r_parts.append(q.log_prob(t) + math.log(n_q / s))
        if n_p:
            log_r_parts.append(log_p_t + math.log(n_p / s))
        log_r = torch.logsumexp(torch.stack(log_r_parts), 0)
        log_w = self.conditional(t).log_prob(z) + log_p_t - log_r
        return torch.logsumexp(log_w, 0) - math.log(s)

    def sample(self, n: int) -> torch.Tensor:
        """Ancestral draws t ~ p(t), z ~ p(z | t), shape ``(n, latent_dim)``."""
        n = check_int("n", n, minimum=1)
        with torch.no_grad():
            return self.conditional(self.top_distribution().sample((n,))).sample()

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, top_dim={self.top_dim}"


@PRIORS.register("ard")
class ARDPrior(_DiagonalNormalPrior):
    """Automatic relevance determination: p(z) = N(0, diag(s^2)) with learnable s_d.

    Each latent dimension has its own learnable prior scale ``s_d = softplus(raw_d) +
    min_scale``, so training can shrink the prior of a dimension the decoder does not use
    and switch it off.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    init_scale : float
        Initial s_d (all dimensions), > ``min_scale``.
    min_scale : float
        Floor on s_d (>= 0).

    Notes
    -----
    Two collapse signals, both per dimension: a learned scale :attr:`scales` driven to
    ~0 (:meth:`switched_off`), and a posterior q(z_d | x) equal to the prior (zero
    KL(q(z_d|x) || p(z_d)) for every x, see :func:`pyrocollapse.diagnostics.kl_per_dimension`).
    Under ARD a dimension that is switched off typically shows both at once: q(z_d | x)
    shrinks together with s_d, so its KL can stay small while the scale collapses.

    References
    ----------
    MacKay (1994). Bayesian Nonlinear Modeling for the Prediction Competition. ASHRAE
    Transactions 100(2).
    Neal (1996). Bayesian Learning for Neural Networks. Springer.
    Bishop (1999). Bayesian PCA. NeurIPS.
    """

    def __init__(
        self, latent_dim: int, *, init_scale: float = 1.0, min_scale: float = 1e-5
    ) -> None:
        super().__init__(latent_dim, learn_loc=False, init_scale=init_scale, min_scale=min_scale)

    def relevance(self) -> torch.Tensor:
        """Relevance of each dimension, ``s_d / max_d s_d`` in (0, 1], shape ``(latent_dim,)``."""
        s = self.scales
        return s / s.max()

    def switched_off(self, threshold: float = 0.05) -> torch.Tensor:
        """Mask of the dimensions whose prior scale ``s_d < threshold``.

        Returns
        -------
        torch.Tensor
            Boolean, shape ``(latent_dim,)``.
        """
        threshold = check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        return self.scales < threshold


# --------------------------------------------------------------------------------------
# Flows
# --------------------------------------------------------------------------------------
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
    computed with older parameters. Every ``log_prob`` therefore runs the inverse.

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
        return dist.TransformedDistribution(base, chain)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, transforms={self.family!r}"


def make_prior(name: str, latent_dim: int, **options: Any) -> Prior:
    """Build a prior by its short name (see :data:`PRIORS`), through ``from_options``.

    Parameters
    ----------
    name : str
        One of ``PRIORS.names()``.
    latent_dim : int
        Dimension of z.
    **options
        Keyword options of the prior; ``input_shape`` for ``"vamp"``.

    Example
    -------
    >>> make_prior("standard", 4).sample(3).shape
    torch.Size([3, 4])
    >>> make_prior("vamp", 2, input_shape=(6,), n_pseudo=5).n_pseudo
    5
    """
    return PRIORS.get(name).from_options(latent_dim, **options)
