"""Convolutional VAE for images, with an optional PixelCNN decoder head."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrocollapse._validation import check_choice, check_data, check_float, check_hidden, check_int
from pyrocollapse.models._layers import (
    LIKELIHOODS,
    PixelCNNHead,
    check_likelihood_support,
    conv_decoder,
    conv_encoder,
    conv_sizes,
    factorised_likelihood,
    likelihood_point,
)
from pyrocollapse.models.base import (
    MODELS,
    VAE,
    check_dataset,
    default_likelihood,
    reject_dataset_options,
)
from pyrocollapse.models.posteriors import PosteriorFamily
from pyrocollapse.priors import Prior

if TYPE_CHECKING:
    from pyrocollapse.data import Dataset

__all__ = ["ConvVAE"]


@MODELS.register("conv")
class ConvVAE(VAE):
    """A convolutional VAE for images, optionally with an autoregressive PixelCNN decoder.

    Data are passed flattened, ``(N, C * H * W)`` as :class:`pyrocollapse.data.Dataset`
    stores them (``(N, C, H, W)`` is accepted too and flattened), so :func:`fit`,
    :func:`diagnose` and the command line work unchanged; the model reshapes internally.

    * Encoder: ``len(channels)`` stride-2 convolutions (kernel 4) and a linear layer to
      the diagonal Normal q(z|x).
    * Decoder: a linear layer and the mirrored transposed convolutions. Without
      ``autoregressive`` they output the per-pixel parameters of a factorised p(x|z).
      With ``autoregressive=True`` they output a feature map that conditions a PixelCNN
      head (a type-A masked convolution, ``ar_layers`` residual type-B layers): then
      ``p(x|z) = prod_i p(x_i | x_<i, z)`` in raster order, scored by teacher forcing on
      the observed image and sampled pixel by pixel.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)``, with ``H, W >= 2 ** len(channels)``.
    latent_dim : int
        Dimension of z.
    prior : Prior or None
        p(z); default ``StandardNormalPrior(latent_dim)``.
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
        Per-pixel likelihood (as for :class:`MLPVAE`); data in [0, 1] unless Gaussian.
    channels : tuple of int
        Channels of the stride-2 convolution layers (default ``(32, 64)``).
    autoregressive : bool
        Add the PixelCNN head (the strong decoder).
    ar_hidden : int
        Channels of the PixelCNN head.
    ar_layers : int
        Residual type-B layers of the head (>= 0); its receptive field is
        ``ar_kernel // 2 + ar_layers`` pixels up and to each side.
    ar_kernel : int
        Odd side of the head's first (type-A) kernel.
    posterior, posterior_options, refine_steps, refine_lr, refine_max_grad_norm :
        The posterior family (BN-VAE, δ-VAE) and semi-amortised refinement (SA-VAE), as
        for :class:`~pyrocollapse.models.MLPVAE`.
    min_scale : float
        Floor of the posterior scale.
    name : str or None
        Prefix of the parameters in Pyro's parameter store (see :class:`VAE`).

    Notes
    -----
    Collapse: the factorised convolutional decoder cannot model pixel correlations
    without z, so it keeps z informative (partial collapse of surplus dimensions, as for
    :class:`MLPVAE`). The PixelCNN head can model local structure of an image from its
    own already generated pixels; when its receptive field covers what z would explain,
    the ELBO is maximised by ignoring z and the whole posterior collapses (Chen et al.
    2017; Gulrajani et al. 2017). Small ``ar_layers`` / ``ar_kernel`` (a local head) and a
    weight on the KL below 1 or free bits keep z in use.

    References
    ----------
    van den Oord, Kalchbrenner, Kavukcuoglu (2016). Pixel Recurrent Neural Networks. ICML.
    Chen et al. (2017). Variational Lossy Autoencoder. ICLR.
    Gulrajani et al. (2017). PixelVAE: A Latent Variable Model for Natural Images. ICLR.

    Examples
    --------
    >>> vae = ConvVAE((1, 8, 8), 4, channels=(8, 16), autoregressive=True, ar_hidden=8)
    >>> vae.sample(2).shape
    torch.Size([2, 64])
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        prior: Prior | None = None,
        *,
        likelihood: str = "bernoulli",
        channels: tuple[int, ...] = (32, 64),
        autoregressive: bool = False,
        ar_hidden: int = 32,
        ar_layers: int = 2,
        ar_kernel: int = 5,
        posterior: str | PosteriorFamily = "gaussian",
        posterior_options: dict[str, Any] | None = None,
        refine_steps: int = 0,
        refine_lr: float = 1.0,
        refine_max_grad_norm: float = 5.0,
        min_scale: float = 1e-4,
        name: str | None = None,
    ) -> None:
        super().__init__(latent_dim, prior, name=name)
        if not isinstance(image_shape, (tuple, list, torch.Size)):
            raise TypeError(
                "image_shape must be a tuple (C, H, W), e.g. (1, 16, 16); got "
                f"{type(image_shape).__name__} {image_shape!r}"
            )
        if len(image_shape) != 3:
            raise ValueError(
                f"image_shape must be (C, H, W), e.g. (1, 16, 16); got {tuple(image_shape)!r}"
            )
        c, h, w = (check_int(f"image_shape[{i}]", v, minimum=1) for i, v in enumerate(image_shape))
        self.image_shape = (c, h, w)
        self.channels = check_hidden("channels", channels)
        if not self.channels:
            raise ValueError(
                "channels must name at least one convolution layer, e.g. (32, 64); got ()"
            )
        need = 2 ** len(self.channels)
        if h < need or w < need:
            raise ValueError(
                f"image_shape {self.image_shape} is too small for {len(self.channels)} stride-2 "
                f"layers (channels={self.channels}): H and W must be >= {need}; use fewer "
                "channels entries"
            )
        self.event_shape = (c * h * w,)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        if not isinstance(autoregressive, bool):
            raise TypeError(f"autoregressive must be a bool, got {type(autoregressive).__name__}")
        self.autoregressive = autoregressive
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        heights, widths = conv_sizes(h, len(self.channels)), conv_sizes(w, len(self.channels))
        self._bottleneck = (self.channels[-1], heights[-1], widths[-1])
        flat = math.prod(self._bottleneck)
        self.encoder = nn.Sequential(
            conv_encoder(c, self.channels), nn.Linear(flat, 2 * self.latent_dim)
        )
        self.decoder_input = nn.Linear(self.latent_dim, flat)
        if autoregressive:
            self.ar_hidden = check_int("ar_hidden", ar_hidden, minimum=1)
            self.ar_layers = check_int("ar_layers", ar_layers, minimum=0)
            self.ar_kernel = check_int("ar_kernel", ar_kernel, minimum=1)
            if self.ar_kernel % 2 == 0:
                raise ValueError(f"ar_kernel must be odd, got {self.ar_kernel}")
            features = self.channels[0]
            self.decoder = conv_decoder(
                self.channels, features, heights, widths, activate_last=True
            )
            self.head = PixelCNNHead(
                c,
                features,
                hidden=self.ar_hidden,
                layers=self.ar_layers,
                kernel_size=self.ar_kernel,
            )
        else:
            self.decoder = conv_decoder(self.channels, c, heights, widths)
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(c * h * w))
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
    ) -> ConvVAE:
        """A convolutional VAE for an image dataset (one with ``image_shape``).

        The likelihood defaults to ``"bernoulli"`` for binary or [0, 1] data and to
        ``"gaussian"`` for real-valued images.
        """
        ds = check_dataset(dataset, "conv")
        if ds.kind == "tokens":
            raise ValueError("model 'conv' needs images; for token sequences use --model sequence")
        if ds.image_shape is None:
            raise ValueError(
                f"model 'conv' needs an image dataset (with image_shape), and {ds.name!r} has "
                "none; use --model mlp (or linear, ladder) for vector data"
            )
        reject_dataset_options(options, "conv", ("image_shape",))
        options.setdefault("likelihood", default_likelihood(ds))
        return cls(ds.image_shape, latent_dim, prior, **options)

    # -- shapes ---------------------------------------------------------------------------
    def _shape_error(self, name: str, x: torch.Tensor) -> ValueError:
        c, h, w = self.image_shape
        return ValueError(
            f"{name} must have shape (N, {c * h * w}) (flattened) or (N, {c}, {h}, {w}), "
            f"got {tuple(x.shape)}"
        )

    def _images(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """``(N, D)`` or ``(N, C, H, W)`` -> ``(N, C, H, W)``."""
        if x.dim() == 2 and x.shape[1] == self.event_shape[0]:
            return x.reshape(x.shape[0], *self.image_shape)
        if x.dim() == 4 and tuple(x.shape[1:]) == self.image_shape:
            return x
        raise self._shape_error(name, x)

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate images, flattened ``(N, C*H*W)`` or ``(N, C, H, W)``; return them flat."""
        x = self.check_on_device(name, check_data(name, x))
        return check_likelihood_support(name, self._images(x, name).flatten(1), self.likelihood)

    # -- encoder / decoder -----------------------------------------------------------------
    def encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output ``[loc, raw]`` ``(N, 2 * latent_dim)`` for images
        ``(N, C*H*W)`` or ``(N, C, H, W)``."""
        return self.encoder(self._images(x))

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for images ``(N, C*H*W)`` or ``(N, C, H, W)``: batch ``(N,)``, event ``(latent_dim,)``."""
        return super().encode(x)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output from z ``(n, latent_dim)``: ``(n, C or F, H, W)``."""
        h = self.decoder_input(z).relu().reshape(z.shape[0], *self._bottleneck)
        return self.decoder(h)

    def _pixel_params(self, z: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """Per-pixel decoder output ``batch_shape + (C*H*W,)`` for z ``batch_shape + (D,)``."""
        if not self.autoregressive:
            batch = z.shape[:-1]
            out = self._features(z.reshape(-1, z.shape[-1]))
            return out.reshape(*batch, -1)
        z_flat, images, batch = self.pair_with_context(z, self._images(x))
        return self.head(images, self._features(z_flat)).reshape(*batch, -1)

    def _raw_scale(self) -> torch.Tensor | None:
        return self.log_scale if self.likelihood == "gaussian" else None

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(x|z) over flattened images: batch shape ``z.shape[:-1]``, event ``(C*H*W,)``.

        Parameters
        ----------
        z : torch.Tensor
            Shape ``(..., n, latent_dim)``.
        x : torch.Tensor or None
            For the autoregressive decoder, the images whose pixels condition each
            conditional p(x_i | x_<i, z) (teacher forcing), ``(n, C*H*W)`` or
            ``(n, C, H, W)``; the returned distribution scores *those* images (its
            ``log_prob(x)`` is log p(x|z)). Not used by the factorised decoder.

        Raises
        ------
        ValueError
            If the decoder is autoregressive and ``x`` is missing: without the context
            p(x|z) has no closed form; use :meth:`generate` to draw images.
        """
        z = self.check_latent(z)
        if self.autoregressive and x is None:
            raise ValueError(
                "decode(z) of an autoregressive ConvVAE needs the context image x "
                "(decode(z, x) scores x by teacher forcing); use generate(z) or sample(n) to "
                "draw images pixel by pixel"
            )
        out = self._pixel_params(z, x if self.autoregressive else None)
        return factorised_likelihood(self.likelihood, out, self._raw_scale())

    def observe(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Score ``x`` under p(x|z); the autoregressive head conditions on ``x`` itself."""
        return pyro.sample(self.observed_site, self.decode(z, x), obs=x)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, *, greedy: bool = False) -> torch.Tensor:
        """Images decoded from ``z`` ``(n, latent_dim)``, flattened ``(n, C*H*W)`` (no gradients).

        The autoregressive decoder runs pixel by pixel in raster order (and colour by
        colour), ``C * H * W`` passes of the head: each pixel is drawn from (or, with
        ``greedy``, set to the most probable value / mean of) p(x_i | x_<i, z).
        """
        z = self.check_latent(z, matrix=True)
        if not self.autoregressive:
            return super().generate(z, greedy=greedy)
        c, h, w = self.image_shape
        features = self._features(z)
        canvas = z.new_zeros(z.shape[0], c, h, w)
        raw = self._raw_scale()
        raw_img = None if raw is None else raw.reshape(c, h, w)
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    out = self.head(canvas, features)[:, k, i, j]
                    scale = None if raw_img is None else raw_img[k, i, j]
                    canvas[:, k, i, j] = likelihood_point(
                        self.likelihood, out, scale, greedy=greedy
                    )
        return canvas.flatten(1)

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, latent_dim={self.latent_dim}, "
            f"likelihood={self.likelihood!r}, autoregressive={self.autoregressive}"
        )
