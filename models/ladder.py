"""Two-layer hierarchical VAE with ladder inference (Sønderby et al. 2016)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn

from pyrocollapse._validation import check_choice, check_float, check_hidden, check_int
from pyrocollapse.models._layers import (
    LIKELIHOODS,
    check_dropout,
    check_likelihood_support,
    diagonal_normal,
    factorised_likelihood,
    mlp,
)
from pyrocollapse.models.base import MODELS, VAE, default_likelihood, vector_input_dim
from pyrocollapse.priors import Prior

if TYPE_CHECKING:
    from pyrocollapse.data import Dataset

__all__ = ["LadderVAE"]


@MODELS.register("ladder")
class LadderVAE(VAE):
    """A two-layer hierarchical VAE, ``z2 -> z1 -> x``, with a ladder guide.

    Generative program (top-down)::

        z2 ~ prior                               site "z2", (N, latent_dim)
        z1 | z2 ~ N(mu_p(z2), diag(sigma_p(z2)^2))   site "z1", (N, z1_dim)
        x | z1 ~ factorised likelihood           site "x"

    Guide (Ladder VAE): a deterministic bottom-up pass ``d1 = f1(x)``, ``d2 = f2(d1)``
    gives q(z2|x) = N(mu_2(d2), sigma_2(d2)) and a bottom-up estimate
    ``(mu_hat, sigma_hat)`` of z1 from ``d1``; z1 is then drawn top-down, merging that
    estimate with the generative p(z1|z2) by precision weighting::

        q(z1 | x, z2) = N(m, v),  v = 1 / (sigma_hat^-2 + sigma_p(z2)^-2),
                                  m = v (mu_hat sigma_hat^-2 + mu_p(z2) sigma_p(z2)^-2)

    so the top-down network mu_p, sigma_p is shared by the model and the guide.
    :attr:`latent_sites` is ``("z1", "z2")``; both sites sit in the one data plate with
    event shapes ``(z1_dim,)`` and ``(latent_dim,)``, so ``diagnose(..., vae.latent_sites)``
    reports each layer.

    Parameters
    ----------
    input_dim : int
        Number of features D.
    latent_dim : int
        Dimension of the top layer z2, the one under ``prior``.
    prior : Prior or None
        p(z2), the top layer's prior; default ``StandardNormalPrior(latent_dim)``.
    z1_dim : int or None
        Dimension of the bottom layer z1 (default ``latent_dim``).
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
        As for :class:`MLPVAE`.
    hidden : tuple of int
        Widths of the bottom-up network f1 (at least one layer).
    top_hidden : tuple of int
        Widths of f2 (d1 -> d2) and, reversed, of the top-down network z2 -> z1 (at
        least one layer).
    decoder_hidden : tuple of int or None
        Widths of the decoder z1 -> x (default ``hidden`` reversed; ``()`` is linear).
    decoder_dropout : float
        Dropout in the decoder's hidden layers.
    min_scale : float
        Floor of every scale.
    name : str or None
        Prefix of the parameters in Pyro's parameter store (see :class:`VAE`).

    Notes
    -----
    Collapse: the layers collapse from the top. z1 alone, with the flexible p(z1|z2),
    can already explain x, and every unit of z2 pays KL(q(z2|x) || p(z2)) while only
    helping through z1, so with the plain ELBO z2 typically ends up inactive, and z1
    keeps only a few units (Sønderby et al. 2016 report few active units above the first
    layer of a plain hierarchical VAE). The ladder guide, which shares the top-down path
    with the model, and KL warm-up keep more units of both layers active. Diagnose per
    layer to see which one collapsed.

    References
    ----------
    Sønderby, Raiko, Maaløe, Sønderby, Winther (2016). Ladder Variational Autoencoders.
    NeurIPS.
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.

    Examples
    --------
    >>> vae = LadderVAE(64, 2, z1_dim=4, hidden=(32,), top_hidden=(16,))
    >>> vae.latent_sites, vae.sample(3).shape
    (('z1', 'z2'), torch.Size([3, 64]))
    """

    latent_sites: tuple[str, ...] = ("z1", "z2")

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        prior: Prior | None = None,
        *,
        z1_dim: int | None = None,
        likelihood: str = "bernoulli",
        hidden: tuple[int, ...] = (256,),
        top_hidden: tuple[int, ...] = (128,),
        decoder_hidden: tuple[int, ...] | None = None,
        decoder_dropout: float = 0.0,
        min_scale: float = 1e-4,
        name: str | None = None,
    ) -> None:
        super().__init__(latent_dim, prior, name=name)
        self.input_dim = check_int("input_dim", input_dim, minimum=1)
        self.event_shape = (self.input_dim,)
        self.z1_dim = self.latent_dim if z1_dim is None else check_int("z1_dim", z1_dim, minimum=1)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        hidden = check_hidden("hidden", hidden)
        top_hidden = check_hidden("top_hidden", top_hidden)
        for label, widths in (("hidden", hidden), ("top_hidden", top_hidden)):
            if not widths:
                raise ValueError(
                    f"{label} must have at least one layer (the ladder's deterministic "
                    f"bottom-up path), got {widths}"
                )
        if decoder_hidden is None:
            decoder_hidden = tuple(reversed(hidden))
        decoder_hidden = check_hidden("decoder_hidden", decoder_hidden)
        self.decoder_dropout = check_dropout("decoder_dropout", decoder_dropout)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        self.bottom_up1 = mlp((self.input_dim, *hidden), activate_last=True)
        self.bottom_up2 = mlp((hidden[-1], *top_hidden), activate_last=True)
        self.z1_head = nn.Linear(hidden[-1], 2 * self.z1_dim)
        self.z2_head = nn.Linear(top_hidden[-1], 2 * self.latent_dim)
        self.top_down = mlp((self.latent_dim, *reversed(top_hidden), 2 * self.z1_dim))
        self.decoder = mlp(
            (self.z1_dim, *decoder_hidden, self.input_dim), dropout=self.decoder_dropout
        )
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(self.input_dim))
        self._attach_prior()

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> LadderVAE:
        """A ladder VAE over the flattened observations of ``dataset`` (likelihood as for
        :meth:`MLPVAE.from_dataset`)."""
        input_dim = vector_input_dim(dataset, "ladder")
        options.setdefault("likelihood", default_likelihood(dataset))
        return cls(input_dim, latent_dim, prior, **options)

    @property
    def decoder_latent_dim(self) -> int:
        """:meth:`decode` takes the bottom layer z1."""
        return self.z1_dim

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate ``x`` of shape ``(N, input_dim)``, in [0, 1] unless Gaussian."""
        return check_likelihood_support(name, super().check_input(x, name), self.likelihood)

    # -- the networks ------------------------------------------------------------------
    def _bottom_up(self, x: torch.Tensor) -> tuple[dist.Normal, dist.TorchDistribution]:
        """The bottom-up estimate of z1 (univariate Normal, batch ``(N, z1_dim)``) and
        q(z2|x)."""
        d1 = self.bottom_up1(x)
        z1_hat = diagonal_normal(self.z1_head(d1), self.min_scale).base_dist
        q2 = diagonal_normal(self.z2_head(self.bottom_up2(d1)), self.min_scale)
        return z1_hat, q2

    def z1_prior(self, z2: torch.Tensor) -> dist.TorchDistribution:
        """p(z1|z2): batch shape ``z2.shape[:-1]``, event shape ``(z1_dim,)``."""
        return diagonal_normal(self.top_down(z2), self.min_scale)

    @staticmethod
    def _merge(estimate: dist.Normal, prior: dist.TorchDistribution) -> dist.TorchDistribution:
        """Precision-weighted combination of two diagonal Normals."""
        p = prior.base_dist
        prec_e, prec_p = estimate.scale**-2, p.scale**-2
        var = 1.0 / (prec_e + prec_p)
        loc = var * (estimate.loc * prec_e + p.loc * prec_p)
        return dist.Normal(loc, var.sqrt()).to_event(1)

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z2|x), the top layer (bottom-up only): batch ``(N,)``, event ``(latent_dim,)``.

        This is the layer under the prior, so priors that use the encoder (VampPrior)
        get q(z2|u). For both layers see :meth:`encode_layers`.
        """
        return self._bottom_up(x)[1]

    def z1_posterior(self, x: torch.Tensor, z2: torch.Tensor) -> dist.TorchDistribution:
        """q(z1 | x, z2), the precision-weighted merge: batch ``(N,)``, event ``(z1_dim,)``."""
        return self._merge(self._bottom_up(x)[0], self.z1_prior(z2))

    def encode_layers(
        self, x: torch.Tensor, z2: torch.Tensor | None = None
    ) -> dict[str, dist.TorchDistribution]:
        """``{"z1": q(z1 | x, z2), "z2": q(z2 | x)}`` with ``z2`` defaulting to E_q[z2|x]."""
        z1_hat, q2 = self._bottom_up(x)
        z2 = q2.mean if z2 is None else self.check_latent(z2, name="z2")
        return {"z1": self._merge(z1_hat, self.z1_prior(z2)), "z2": q2}

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z1) for the bottom layer ``z`` of shape ``(..., z1_dim)``: event ``(input_dim,)``."""
        raw_scale = self.log_scale if self.likelihood == "gaussian" else None
        return factorised_likelihood(self.likelihood, self.decoder(z), raw_scale)

    # -- Pyro programs -------------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor) -> torch.Tensor:
        """p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1); observes ``x`` ``(N, input_dim)``."""
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z2 = self.prior("z2")
            z1 = pyro.sample("z1", self.z1_prior(z2))
            return self.observe(z1, x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z2|x) q(z1|x, z2), the ladder guide; returns ``(z1, z2)``."""
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z1_hat, q2 = self._bottom_up(x)
            z2 = pyro.sample("z2", q2)
            self.prior.guide("z2", z2)
            z1 = pyro.sample("z1", self._merge(z1_hat, self.z1_prior(z2)))
            return z1, z2

    # -- conveniences ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """z2 ~ p(z2), z1 ~ p(z1|z2), x ~ p(x|z1): shape ``(n, input_dim)``."""
        z2 = self.prior.sample(check_int("n", n, minimum=1))
        return self.generate(self.z1_prior(z2).sample())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z1) at z1 = E_q[z1 | x, z2 = E_q[z2|x]]: shape ``(N, input_dim)``."""
        x = self.check_input(x)
        return self.generate(self.encode_layers(x)["z1"].mean, greedy=True)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, z1_dim={self.z1_dim}, z2_dim={self.latent_dim}, "
            f"likelihood={self.likelihood!r}"
        )
