"""The base of every prior: :class:`Prior`, the registry :data:`PRIORS`, :func:`make_prior`
and the helpers the priors share.

Import the public names from :mod:`pyrocollapse.priors`; this module is where they live.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrocollapse._saveable import Saveable
from pyrocollapse._validation import check_int
from pyrocollapse.registry import Registry, unique_name

__all__ = ["PRIORS", "Prior", "make_prior"]


#: Short name -> prior class, used by ``pyrocollapse run --prior NAME``.
PRIORS: Registry[Any] = Registry("prior")


def _inverse_softplus(value: torch.Tensor | float) -> torch.Tensor:
    """``x`` with ``softplus(x) == value``, elementwise, for ``value > 0``."""
    value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    return value + torch.log(-torch.expm1(-value))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str (the sample site), got {name!r}")
    return name


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
    persistence_registry = PRIORS

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
