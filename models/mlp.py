"""Fully connected VAE."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrocollapse._validation import (
    check_choice,
    check_float,
    check_hidden,
    check_int,
    check_type,
)
from pyrocollapse.models._layers import (
    LIKELIHOODS,
    SkipMLP,
    check_dropout,
    check_likelihood_support,
    factorised_likelihood,
    mlp,
)
from pyrocollapse.models.base import MODELS, VAE, default_likelihood, vector_input_dim
from pyrocollapse.models.posteriors import PosteriorFamily
from pyrocollapse.priors import Prior

if TYPE_CHECKING:
    from pyrocollapse.data import Dataset

__all__ = ["LIKELIHOODS", "MLPVAE"]


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
    skip : bool
        Feed z to every decoder layer (skip-VAE, Dieng et al. 2019): no layer can wash z
        out, a remedy against collapse that keeps the decoder's capacity.
    posterior : {"gaussian", "batchnorm", "delta"} or PosteriorFamily
        How the encoder's output becomes q(z|x) (:mod:`pyrocollapse.models.posteriors`):
        any diagonal Normal (default); BN-VAE's batch-normalised means with a fixed scale
        (Zhu et al. 2020; batch-averaged KL >= gamma^2/2 per dimension); or a
        committed-rate δ-VAE posterior (Razavi et al. 2019; KL >= delta per point and
        dimension). The floors hold against the standard Normal prior.
    posterior_options : dict or None
        Arguments of the named family, e.g. ``{"gamma": 0.7}`` or ``{"delta": 0.2}``.
    refine_steps : int
        Semi-amortised inference (SA-VAE, Kim et al. 2018): gradient steps on each
        point's ELBO that refine the encoder's output in the guide, every batch (0: off).
        See :mod:`pyrocollapse.models.refinement`; each step costs about one more
        forward and backward pass of the decoder.
    refine_lr : float
        Step size of the refinement, on the raw encoder output.
    refine_max_grad_norm : float
        Per-point cap on the norm of each refinement step's gradient.
    min_scale : float
        Floor of the posterior scale.
    name : str or None
        Prefix of the parameters in Pyro's parameter store (see :class:`VAE`).

    Notes
    -----
    Collapse: a wide, deep decoder can model the data's marginal well with z ignored,
    especially under a large KL weight; with few data dimensions (digits: 64) an
    MLP VAE typically keeps a handful of units active and collapses the rest. Since the
    decoder is factorised given z, it cannot explain correlations between features
    without z, so collapse here is mostly *partial* (surplus dimensions switched off,
    Dai et al. 2020), unlike the full collapse of autoregressive decoders.

    References
    ----------
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    Dai, Wang, Wipf (2020). The Usual Suspects? Reassessing Blame for VAE Posterior
    Collapse. ICML.

    Examples
    --------
    >>> vae = MLPVAE(64, 4, hidden=(32,))
    >>> vae.sample(3).shape
    torch.Size([3, 64])
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
        skip: bool = False,
        posterior: str | PosteriorFamily = "gaussian",
        posterior_options: dict[str, Any] | None = None,
        refine_steps: int = 0,
        refine_lr: float = 1.0,
        refine_max_grad_norm: float = 5.0,
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
        self.decoder_dropout = check_dropout("decoder_dropout", decoder_dropout)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        self.skip = bool(check_type("skip", skip, bool, "True or False"))
        self.encoder = mlp((self.input_dim, *hidden, 2 * self.latent_dim))
        decoder_sizes = (self.latent_dim, *decoder_hidden, self.input_dim)
        if self.skip:
            self.decoder = SkipMLP(decoder_sizes, dropout=self.decoder_dropout)
        else:
            self.decoder = mlp(decoder_sizes, dropout=self.decoder_dropout)
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(self.input_dim))
        self._setup_inference(
            posterior=posterior,
            posterior_options=posterior_options,
            min_scale=self.min_scale,
            refine_steps=refine_steps,
            refine_lr=refine_lr,
            refine_max_grad_norm=refine_max_grad_norm,
        )
        self._attach_prior()

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> MLPVAE:
        """An MLP VAE over the flattened observations of ``dataset``.

        The likelihood defaults to ``"bernoulli"`` for binary or [0, 1] data and to
        ``"gaussian"`` for real-valued data.
        """
        input_dim = vector_input_dim(dataset, "mlp")
        options.setdefault("likelihood", default_likelihood(dataset))
        return cls(input_dim, latent_dim, prior, **options)

    def encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output ``[loc, raw]``, shape ``(N, 2 * latent_dim)``."""
        return self.encoder(x)

    def encoder_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of the amortised q(z|x), each ``(N, latent_dim)``."""
        q = self.encode(x).base_dist
        return q.loc, q.scale

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) = Normal(mu(x), sigma(x)) with event shape ``(latent_dim,)``, as the
        posterior family makes it from :meth:`encoder_output` (before any refinement)."""
        return super().encode(x)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) with batch shape ``z.shape[:-1]`` and event shape ``(input_dim,)``."""
        raw_scale = self.log_scale if self.likelihood == "gaussian" else None
        return factorised_likelihood(self.likelihood, self.decoder(z), raw_scale)

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate ``x`` of shape ``(N, input_dim)``, in [0, 1] unless Gaussian."""
        return check_likelihood_support(name, super().check_input(x, name), self.likelihood)
