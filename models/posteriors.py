"""Posterior families: how an encoder's raw output becomes q(z|x).

Every ready model's encoder outputs ``2 * latent_dim`` numbers per point, ``[loc, raw]``.
A :class:`PosteriorFamily` turns them into a diagonal Normal q(z|x); the family decides
which Normals are reachable, and two of them make full posterior collapse impossible by
construction, whatever the decoder:

* :class:`GaussianPosterior` (``"gaussian"``, the default): ``N(loc, softplus(raw) +
  min_scale)``, every diagonal Normal.
* :class:`BatchNormPosterior` (``"batchnorm"``, BN-VAE, Zhu et al. 2020): the means are
  batch-normalised over the batch, times a *fixed* scale ``gamma``, plus a learned
  shift. Over a batch, the mean of ``mu_d(x)^2`` is ``gamma^2 + shift_d^2``, so against
  a standard Normal prior the batch-averaged KL of every dimension is at least
  ``gamma^2 / 2`` nats.
* :class:`CommittedRatePosterior` (``"delta"``, a δ-VAE in the sense of Razavi et al.
  2019): the scale is capped at ``sigma_max < 1``, chosen so that
  ``KL(N(mu, sigma^2) || N(0, 1)) >= delta`` for every ``mu`` and every
  ``sigma <= sigma_max``: each dimension commits to at least ``delta`` nats per point.

Adding a family: subclass :class:`PosteriorFamily`, implement :meth:`~PosteriorFamily.params`
(and :attr:`~PosteriorFamily.kl_floor` if the family bounds the KL), and register it in
:data:`POSTERIORS`; every ready model then accepts it by name (``posterior="name"``,
``posterior_options={...}``, or on the command line ``--model-option posterior=name``).

The KL floors hold against the standard Normal prior ``N(0, I)``, for which they are
derived. Under another prior the family still restricts q, but the floor is not
guaranteed; the model says so with a warning when it is built.

References
----------
Zhu, Bi, Liu, Ma, Li, Wu (2020). A Batch Normalized Inference Network Keeps the KL
Vanishing Away. ACL.
Razavi, van den Oord, Poole, Vinyals (2019). Preventing Posterior Collapse with
delta-VAEs. ICLR.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.registry import Registry

__all__ = [
    "POSTERIORS",
    "BatchNormPosterior",
    "CommittedRatePosterior",
    "GaussianPosterior",
    "PosteriorFamily",
    "committed_rate_scale",
    "make_posterior",
]

#: Short name -> posterior family class (``posterior="batchnorm"`` on every ready model).
POSTERIORS: Registry[Any] = Registry("posterior")


class PosteriorFamily(nn.Module):
    """Base of the posterior families: raw encoder output ``(..., 2 * D)`` -> q(z|x).

    Parameters
    ----------
    latent_dim : int
        D, the dimension of z.
    min_scale : float
        Floor of the posterior scale (>= 0).

    Notes
    -----
    Subclasses implement :meth:`params`; :meth:`forward` wraps the result in
    ``Normal(loc, scale).to_event(1)``. The encoder output may have any leading batch
    shape unless the family says otherwise (:class:`BatchNormPosterior` needs ``(N, 2D)``).
    """

    #: Registry name, set by subclasses.
    name: ClassVar[str] = ""

    def __init__(self, latent_dim: int, *, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)

    def params(self, loc: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z|x), each of the shape of ``loc`` (``(..., D)``)."""
        raise NotImplementedError

    @property
    def kl_floor(self) -> float:
        """A lower bound on the KL of one dimension against N(0, 1), in nats (0: none).

        Per point for :class:`CommittedRatePosterior`, batch-averaged for
        :class:`BatchNormPosterior`.
        """
        return 0.0

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) from the encoder output ``out`` of shape ``(..., 2 * D)``.

        Returns a Normal with batch shape ``out.shape[:-1]`` and event shape ``(D,)``.
        """
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder output must have last dimension 2 * latent_dim = "
                f"{2 * self.latent_dim}, got shape {tuple(out.shape)}"
            )
        loc, raw = out.chunk(2, dim=-1)
        loc, scale = self.params(loc, raw)
        return dist.Normal(loc, scale).to_event(1)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, min_scale={self.min_scale}"


@POSTERIORS.register("gaussian")
class GaussianPosterior(PosteriorFamily):
    """Every diagonal Normal: ``N(loc, softplus(raw) + min_scale)`` (the default)."""

    name = "gaussian"

    def params(self, loc: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loc, F.softplus(raw) + self.min_scale


@POSTERIORS.register("batchnorm")
class BatchNormPosterior(PosteriorFamily):
    """BN-VAE (Zhu et al. 2020): batch-normalised posterior means with a fixed scale.

    ``mu(x) = gamma * BN(loc(x)) + shift``, with ``BN`` a batch normalisation without
    learned affine parameters (batch statistics in training mode, running statistics in
    evaluation mode), ``gamma`` fixed and ``shift`` (one per dimension) learned; the
    scale is ``softplus(raw) + min_scale``.

    Over a training batch the mean of ``mu_d(x)^2`` is ``gamma^2 + shift_d^2``, so with a
    standard Normal prior the batch-averaged KL of each dimension is at least
    ``gamma^2 / 2`` (:attr:`kl_floor`): no dimension can collapse, while the decoder
    still decides how much of that information it uses.

    Parameters
    ----------
    latent_dim : int
        D.
    gamma : float
        The fixed scale of the normalised means, > 0 (default 0.5: a floor of 0.125 nats
        per dimension).
    momentum : float
        Momentum of the running statistics (as in :class:`torch.nn.BatchNorm1d`).
    eps : float
        Added to the batch variance before normalising, > 0. The batch mean of
        ``mu_d^2`` is exactly ``gamma^2 v / (v + eps) + shift_d^2`` for a batch variance
        ``v`` of the raw means, so the floor holds up to the factor ``v / (v + eps)``;
        the small default (1e-8, against BatchNorm's usual 1e-5) keeps it for encoders
        whose raw means have nearly collapsed to a constant (``v`` down to ~1e-6).
    min_scale : float
        Floor of the posterior scale.

    Notes
    -----
    In training mode the means depend on the whole batch, so a batch needs at least two
    points; the encoder output must be ``(N, 2 D)``.
    """

    name = "batchnorm"

    def __init__(
        self,
        latent_dim: int,
        *,
        gamma: float = 0.5,
        momentum: float = 0.1,
        eps: float = 1e-8,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(latent_dim, min_scale=min_scale)
        self.gamma = check_float("gamma", gamma, minimum=0.0, strict_minimum=True)
        self.momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0)
        self.eps = check_float("eps", eps, minimum=0.0, strict_minimum=True)
        self.norm = nn.BatchNorm1d(
            self.latent_dim, eps=self.eps, affine=False, momentum=self.momentum
        )
        self.shift = nn.Parameter(torch.zeros(self.latent_dim))

    @property
    def kl_floor(self) -> float:
        return 0.5 * self.gamma**2

    def params(self, loc: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if loc.dim() != 2:
            raise ValueError(
                f"BatchNormPosterior normalises over the batch and needs an encoder output of "
                f"shape (N, {2 * self.latent_dim}), got {(*loc.shape[:-1], 2 * self.latent_dim)}"
            )
        if self.training and loc.shape[0] < 2:
            raise ValueError(
                "BatchNormPosterior needs at least 2 points per batch in training mode (the "
                "means are normalised over the batch); use a larger batch_size, or call "
                "model.eval() to use the running statistics"
            )
        return self.gamma * self.norm(loc) + self.shift, F.softplus(raw) + self.min_scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"


def committed_rate_scale(delta: float) -> float:
    """The largest scale ``sigma < 1`` with ``KL(N(0, sigma^2) || N(0, 1)) = delta``.

    Solves ``(sigma^2 - 1 - ln sigma^2) / 2 = delta`` for ``sigma`` in (0, 1) (Newton's
    method in ``t = ln sigma^2``, to machine precision). Since that KL decreases in
    ``sigma`` on (0, 1] and the mean only adds ``mu^2 / 2``, every ``N(mu, s^2)`` with
    ``s <= sigma`` has KL at least ``delta`` nats.

    Parameters
    ----------
    delta : float
        The committed rate per dimension, in nats, > 0.

    Returns
    -------
    float
        ``sigma`` in (0, 1).

    Examples
    --------
    >>> round(committed_rate_scale(0.5 * (0.25 - 1 - math.log(0.25))), 6)
    0.5
    """
    delta = check_float("delta", delta, minimum=0.0, strict_minimum=True)
    # f(t) = (e^t - 1 - t) / 2 - delta, t = ln sigma^2 < 0; f is decreasing on t < 0
    t = -2.0 * delta - 1.0  # f(t) > 0 here: (e^t + 2 delta) / 2 > 0
    for _ in range(100):
        f = 0.5 * (math.exp(t) - 1.0 - t) - delta
        step = f / (0.5 * (math.exp(t) - 1.0))
        t -= step
        if abs(step) < 1e-15 * max(1.0, abs(t)):
            break
    return math.exp(0.5 * t)


@POSTERIORS.register("delta")
class CommittedRatePosterior(PosteriorFamily):
    """A committed-rate posterior (δ-VAE, Razavi et al. 2019) for a standard Normal prior.

    ``q(z_d|x) = N(loc_d, s_d^2)`` with ``s_d = min_scale + (sigma_max - min_scale) *
    sigmoid(raw_d)``, where ``sigma_max = committed_rate_scale(delta) < 1``. Every
    reachable q has ``KL(q(z_d|x) || N(0, 1)) >= delta`` nats for every point and every
    dimension (:attr:`kl_floor`), so the rate can never fall to zero: the posterior
    cannot equal the prior.

    Parameters
    ----------
    latent_dim : int
        D.
    delta : float
        Committed rate per dimension and point, in nats, > 0 (default 0.1).
    min_scale : float
        Floor of the scale, < ``sigma_max``.

    Notes
    -----
    Razavi et al. obtain the committed rate from a mismatch between the prior's and the
    posterior's correlation structure (an AR(1) prior across time); capping the posterior
    scale under an independent standard Normal prior is the same mechanism in its
    simplest form, and the one that applies to every ready model.
    """

    name = "delta"

    def __init__(self, latent_dim: int, *, delta: float = 0.1, min_scale: float = 1e-4) -> None:
        super().__init__(latent_dim, min_scale=min_scale)
        self.delta = check_float("delta", delta, minimum=0.0, strict_minimum=True)
        self.sigma_max = committed_rate_scale(self.delta)
        if self.min_scale >= self.sigma_max:
            raise ValueError(
                f"min_scale ({self.min_scale}) must be below the committed-rate scale cap "
                f"{self.sigma_max:.4g} that delta={self.delta} implies; lower min_scale or delta"
            )

    @property
    def kl_floor(self) -> float:
        return self.delta

    def params(self, loc: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loc, self.min_scale + (self.sigma_max - self.min_scale) * torch.sigmoid(raw)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, delta={self.delta}, sigma_max={self.sigma_max:.4g}"


def make_posterior(
    posterior: str | PosteriorFamily,
    latent_dim: int,
    *,
    options: dict[str, Any] | None = None,
    min_scale: float = 1e-4,
) -> PosteriorFamily:
    """The posterior family ``posterior`` (a name in :data:`POSTERIORS` or an instance).

    Parameters
    ----------
    posterior : str or PosteriorFamily
        ``"gaussian"``, ``"batchnorm"``, ``"delta"`` (or a registered name), or a family
        built already (whose ``latent_dim`` must equal ``latent_dim``).
    latent_dim : int
        D.
    options : dict or None
        Keyword arguments of the family's constructor (e.g. ``{"gamma": 0.7}``), only with
        a name.
    min_scale : float
        Passed to the family unless ``options`` sets it.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones), a mismatched ``latent_dim``, or
        options given with an instance.
    TypeError
        ``posterior`` is neither a string nor a :class:`PosteriorFamily`, or ``options``
        is not a dict, or the family does not take one of the options.
    """
    if options is not None and not isinstance(options, dict):
        raise TypeError(
            f"posterior_options must be a dict of the family's arguments, e.g. {{'gamma': 0.7}}, "
            f"got {type(options).__name__}"
        )
    if isinstance(posterior, PosteriorFamily):
        if options:
            raise ValueError(
                "posterior_options apply to a posterior given by name; pass them to the "
                f"{type(posterior).__name__} constructor instead"
            )
        if posterior.latent_dim != latent_dim:
            raise ValueError(
                f"posterior.latent_dim ({posterior.latent_dim}) must equal latent_dim ({latent_dim})"
            )
        return posterior
    if not isinstance(posterior, str):
        raise TypeError(
            f"posterior must be a name ({', '.join(POSTERIORS.names())}) or a PosteriorFamily, "
            f"got {type(posterior).__name__}"
        )
    cls = POSTERIORS.get(posterior)
    kwargs = {"min_scale": min_scale, **(options or {})}
    try:
        return cls(latent_dim, **kwargs)
    except TypeError as e:
        raise TypeError(f"posterior {posterior!r}: {e}") from e
