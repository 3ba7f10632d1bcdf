"""The :class:`VAE` base class shared by every ready model."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method

from pyrocollapse._validation import check_data, check_int
from pyrocollapse.priors import Prior, StandardNormalPrior
from pyrocollapse.registry import Registry

__all__ = ["MODELS", "VAE", "make_model"]

#: Short name -> model class, used by ``pyrocollapse run --model NAME``.
MODELS: Registry[Any] = Registry("model")

_NAME_COUNTS: dict[str, int] = {}


def _unique_name(base: str) -> str:
    """``base`` for the first instance in this process, then ``base_2``, ``base_3``, ...

    Pyro keeps parameters in a global store keyed by name: two models sharing a name
    would silently share (or train stale copies of) their weights.
    """
    count = _NAME_COUNTS.get(base, 0) + 1
    _NAME_COUNTS[base] = count
    return base if count == 1 else f"{base}_{count}"


class VAE(PyroModule):
    """Base of the ready VAEs: a Pyro model/guide pair with one latent site per layer.

    Subclasses implement :meth:`encode` (x -> q(z|x)) and :meth:`decode` (z -> p(x|z)),
    and may override :meth:`check_input`. The base supplies the Pyro programs::

        model(x):  with plate("data", N): z = prior("z"); sample("x", decode(z), obs=x)
        guide(x):  with plate("data", N): z = sample("z", encode(x)); prior.guide("z", z)

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    prior : Prior or None
        p(z); ``None`` means :class:`~pyrocollapse.priors.StandardNormalPrior`. Its
        ``latent_dim`` must equal ``latent_dim``.
    name : str or None
        Prefix of this model's parameters in Pyro's parameter store; by default the class
        name, made unique per instance (``mlpvae``, ``mlpvae_2``, ...), so that two models
        in one session never share weights through the store.

    Attributes
    ----------
    latent_sites : tuple[str, ...]
        Names of the latent sample sites, for :func:`pyrocollapse.diagnose`.
    observed_site : str
        Name of the observed site.
    """

    latent_sites: tuple[str, ...] = ("z",)
    observed_site: str = "x"
    #: Trailing shape of one observation, set by subclasses.
    event_shape: tuple[int, ...] = ()

    def __init__(
        self, latent_dim: int, prior: Prior | None = None, *, name: str | None = None
    ) -> None:
        super().__init__(name=_unique_name(type(self).__name__.lower()) if name is None else name)
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        if prior is None:
            prior = StandardNormalPrior(self.latent_dim)
        if not isinstance(prior, Prior):
            raise TypeError(
                f"prior must be a pyrocollapse.priors.Prior (e.g. StandardNormalPrior({latent_dim})), "
                f"got {type(prior).__name__}"
            )
        if prior.latent_dim != self.latent_dim:
            raise ValueError(
                f"prior.latent_dim ({prior.latent_dim}) must equal latent_dim ({self.latent_dim})"
            )
        self.prior = prior

    def _attach_prior(self) -> None:
        """Call after the encoder exists: lets the prior bind to the model (VampPrior)."""
        self.prior.attach(self)

    @classmethod
    def from_dataset(
        cls, dataset: Any, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> VAE:
        """Build a model sized for ``dataset`` (a :class:`pyrocollapse.data.Dataset`).

        Used by ``pyrocollapse run --model NAME``; each model picks what it needs from the
        dataset (input size, image shape, vocabulary, a likelihood matching its kind).
        """
        raise NotImplementedError(f"{cls.__name__} does not implement from_dataset()")

    # -- to implement ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x): batch shape ``(N,)``, event shape ``(latent_dim,)``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z): batch shape ``z.shape[:-1]``, event shape ``event_shape``."""
        raise NotImplementedError

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate a batch of observations of shape ``(N, *event_shape)``."""
        return check_data(name, x, event_shape=self.event_shape)

    # -- Pyro programs -----------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor) -> torch.Tensor:
        """Generative program p(x, z); observes ``x`` of shape ``(N, *event_shape)``."""
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = self.prior(self.latent_sites[0])
            return pyro.sample(self.observed_site, self.decode(z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> torch.Tensor:
        """Amortised variational program q(z|x)."""
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            name = self.latent_sites[0]
            z = pyro.sample(name, self.encode(x))
            self.prior.guide(name, z)
            return z

    # -- conveniences --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Draw ``n`` observations from the model: z ~ p(z), x ~ p(x|z). Shape ``(n, *event_shape)``."""
        z = self.prior.sample(check_int("n", n, minimum=1))
        return self.decode(z).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = E_q[z|x]), shape ``(N, *event_shape)``."""
        x = self.check_input(x)
        return self.decode(self.encode(x).mean).mean


def make_model(name: str, **options: Any) -> VAE:
    """Build a ready model by its short name (see :data:`MODELS`)."""
    return MODELS.get(name)(**options)
