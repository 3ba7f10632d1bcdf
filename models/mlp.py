"""Fully connected VAE."""

from __future__ import annotations

import itertools
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrocollapse._validation import check_choice, check_float, check_hidden, check_int
from pyrocollapse.models.base import MODELS, VAE
from pyrocollapse.priors import Prior

__all__ = ["LIKELIHOODS", "MLPVAE"]

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")


def mlp(sizes: tuple[int, ...], *, dropout: float = 0.0) -> nn.Sequential:
    """A ReLU multilayer perceptron with layer widths ``sizes`` (no activation at the end)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@MODELS.register("mlp")
class MLPVAE(VAE):
    """A VAE with MLP encoder and decoder for vector data ``(N, input_dim)``.

    The encoder outputs a diagonal Normal q(z|x) = N(mu(x), diag(sigma(x)^2)); the decoder
    a factorised likelihood over the ``input_dim`` features.

    Parameters
    ----------
    input_dim : int
        Number of features D_x.
    latent_dim : int
        Number of latent dimensions.
    prior : Prior or None
        p(z); default ``StandardNormalPrior(latent_dim)``.
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
        ``"bernoulli"``: cross-entropy on data in [0, 1] (a proper likelihood for binary
        data; for grey values it is the usual BCE surrogate and is evaluated without
        support validation). ``"continuous_bernoulli"``: the normalised density on [0, 1]
        (Loaiza-Ganem & Cunningham 2019). ``"gaussian"``: Normal with a learned
        per-feature scale.
    hidden : tuple[int, ...]
        Encoder hidden widths.
    decoder_hidden : tuple[int, ...] or None
        Decoder hidden widths (default: ``hidden`` reversed). ``()`` gives a linear
        decoder, a decoder-weakening knob.
    decoder_dropout : float
        Dropout in the decoder's hidden layers (another weakening knob), in [0, 1).

    Notes
    -----
    Collapse: a wide, deep decoder can model the data's marginal well with z ignored,
    especially under a large KL weight; with few data dimensions (digits: 64) an
    MLP VAE typically keeps a handful of units active and collapses the rest.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        prior: Prior | None = None,
        *,
        likelihood: str = "bernoulli",
        hidden: tuple[int, ...] = (256, 128),
        decoder_hidden: tuple[int, ...] | None = None,
        decoder_dropout: float = 0.0,
        min_scale: float = 1e-4,
        name: str | None = None,
    ) -> None:
        super().__init__(latent_dim, prior, name=name)
        self.input_dim = check_int("input_dim", input_dim, minimum=1)
        self.event_shape = (self.input_dim,)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        hidden = check_hidden("hidden", hidden)
        if decoder_hidden is None:
            decoder_hidden = tuple(reversed(hidden))
        decoder_hidden = check_hidden("decoder_hidden", decoder_hidden)
        self.decoder_dropout = check_float(
            "decoder_dropout", decoder_dropout, minimum=0.0, maximum=0.99
        )
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        self.encoder = mlp((self.input_dim, *hidden, 2 * self.latent_dim))
        self.decoder = mlp(
            (self.latent_dim, *decoder_hidden, self.input_dim), dropout=self.decoder_dropout
        )
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(self.input_dim))
        self._attach_prior()

    @classmethod
    def from_dataset(
        cls, dataset: Any, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> MLPVAE:
        """An MLP VAE over the flattened observations of ``dataset``.

        The likelihood defaults to ``"bernoulli"`` for binary or [0, 1] data and to
        ``"gaussian"`` for real-valued data.
        """
        if dataset.kind == "tokens":
            raise ValueError(
                "model 'mlp' needs vector data; for token sequences use --model sequence"
            )
        if len(dataset.event_shape) != 1:
            raise ValueError(
                f"model 'mlp' needs flat vectors, got event shape {dataset.event_shape}"
            )
        options.setdefault("likelihood", "gaussian" if dataset.kind == "real" else "bernoulli")
        return cls(dataset.event_shape[0], latent_dim, prior, **options)

    def encoder_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z|x), each ``(N, latent_dim)``."""
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw) + self.min_scale

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) = Normal(mu(x), sigma(x)) with event shape ``(latent_dim,)``."""
        loc, scale = self.encoder_params(x)
        return dist.Normal(loc, scale).to_event(1)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) with batch shape ``z.shape[:-1]`` and event shape ``(input_dim,)``."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        if self.likelihood == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=out).to_event(1)
        scale = nn.functional.softplus(self.log_scale) + 1e-3
        return dist.Normal(out, scale.expand_as(out)).to_event(1)

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        x = super().check_input(x, name)
        if self.likelihood != "gaussian" and (bool((x < 0).any()) or bool((x > 1).any())):
            raise ValueError(
                f"{name} must lie in [0, 1] for likelihood={self.likelihood!r} "
                f"(got range [{float(x.min()):.3g}, {float(x.max()):.3g}]); "
                "rescale the data or use likelihood='gaussian'"
            )
        return x
