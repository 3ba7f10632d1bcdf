"""Swappable priors p(z) as Pyro programs.

A prior is a :class:`Prior`: a :class:`~pyro.nn.PyroModule` that a model calls inside its
own plates, ``z = prior("z")``. The prior samples the latent site (event shape
``(latent_dim,)``), so a model never hard-codes ``dist.Normal(0, 1)`` and any prior can
be swapped in without touching model code.

Adding a prior means subclassing :class:`Prior` and implementing one method,
:meth:`Prior.distribution`, which returns p(z) as a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (latent_dim,)``. Everything else
(``forward``, ``log_prob``, ``sample``, registration of learnable parameters, the
command-line name) comes from the base class.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrocollapse._validation import check_int
from pyrocollapse.registry import Registry

__all__ = ["PRIORS", "Prior", "StandardNormalPrior", "make_prior"]

#: Short name -> prior class, used by ``pyrocollapse run --prior NAME``.
PRIORS: Registry[Any] = Registry("prior")


class Prior(PyroModule):
    """Base class of every prior p(z) over a ``latent_dim``-dimensional latent.

    Subclasses implement :meth:`distribution`. Override :meth:`forward` only for priors
    with extra latent sites (hierarchical), and :meth:`guide` to supply the matching
    guide piece for those sites.

    Parameters
    ----------
    latent_dim : int
        Dimension of z (>= 1).

    Notes
    -----
    ``PyroModule`` has its own metaclass, so the base is not an ``abc.ABC``;
    :meth:`distribution` raises ``NotImplementedError`` instead.
    """

    #: Whether p(z) factorises over dimensions (p(z) = prod_d p(z_d)).
    factorized: bool = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)

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

        Used by ``pyrocollapse run --prior NAME --prior-option KEY=VALUE``; priors that need
        more than ``latent_dim`` (e.g. VampPrior's ``input_shape``) override it.
        """
        return cls(latent_dim, **options)

    # -- shared behaviour --------------------------------------------------------------
    def forward(self, name: str = "z") -> torch.Tensor:
        """Sample the latent site ``name`` inside the caller's plates.

        Returns
        -------
        torch.Tensor
            z of shape ``plate_shape + (latent_dim,)``.
        """
        return pyro.sample(name, self.distribution())

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
        """Draw ``n`` prior samples outside any Pyro context, shape ``(n, latent_dim)``."""
        n = check_int("n", n, minimum=1)
        with torch.no_grad():
            return self.distribution().sample((n,))

    def marginal(self, dim: int) -> dist.TorchDistribution:
        """The univariate marginal p(z_dim), used by per-dimension diagnostics.

        Exact for factorised Normal priors; subclasses with non-factorised densities
        override it (e.g. a mixture's marginal is a univariate mixture).
        """
        dim = check_int("dim", dim, minimum=0)
        if dim >= self.latent_dim:
            raise ValueError(f"dim must be < latent_dim={self.latent_dim}, got {dim}")
        d = self.distribution()
        base = d.base_dist if isinstance(d, dist.Independent) else d
        if not isinstance(base, dist.Normal):
            raise NotImplementedError(f"{type(self).__name__} does not define marginal()")
        return dist.Normal(base.loc[..., dim], base.scale[..., dim])

    def _check_z(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"z must have shape (..., latent_dim={self.latent_dim}), got {tuple(z.shape)}"
            )

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


@PRIORS.register("standard")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I): the usual VAE prior, with no parameters.

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_loc", torch.zeros(self.latent_dim))
        self.register_buffer("_scale", torch.ones(self.latent_dim))

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self._loc, self._scale).to_event(1)


def make_prior(name: str, latent_dim: int, **options: Any) -> Prior:
    """Build a prior by its short name (see :data:`PRIORS`).

    Example
    -------
    >>> make_prior("standard", 4).sample(3).shape
    torch.Size([3, 4])
    """
    return PRIORS.get(name)(latent_dim, **options)
