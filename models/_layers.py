"""Network pieces and likelihood helpers shared by the ready models.

Nothing here is a Pyro program: these are plain ``torch.nn`` building blocks (MLPs,
stride-2 convolution stacks, PixelCNN masked convolutions) and small functions turning
network outputs into Pyro distributions, so that every model in :mod:`pyrocollapse.models`
parameterises q(z|x) and p(x|z) the same way.
"""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn
from torch.nn import functional as F

from pyrocollapse._validation import check_choice, check_float

__all__ = [
    "LIKELIHOODS",
    "MaskedConv2d",
    "PixelCNNHead",
    "SkipMLP",
    "check_dropout",
    "check_likelihood_support",
    "conv_decoder",
    "conv_encoder",
    "conv_sizes",
    "diagonal_normal",
    "factorised_likelihood",
    "gaussian_scale",
    "likelihood_point",
    "mlp",
]

#: Factorised likelihoods p(x|z) for vector and image data.
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "continuous_bernoulli", "gaussian")

#: Floor added to every Gaussian observation scale (keeps the density bounded).
MIN_OBS_SCALE = 1e-3


# --------------------------------------------------------------------------------------
# Dense layers and the diagonal Gaussian head
# --------------------------------------------------------------------------------------
def mlp(
    sizes: tuple[int, ...], *, dropout: float = 0.0, activate_last: bool = False
) -> nn.Sequential:
    """A ReLU multilayer perceptron with layer widths ``sizes``.

    Parameters
    ----------
    sizes : tuple of int
        ``(in, hidden..., out)``; a single size gives an empty (identity) network.
    dropout : float
        Dropout probability after each hidden activation.
    activate_last : bool
        Also apply ReLU (and dropout) after the last layer (a feature extractor rather
        than an output layer).
    """
    layers: list[nn.Module] = []
    n_layers = len(sizes) - 1
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < n_layers - 1 or activate_last:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SkipMLP(nn.Module):
    """A ReLU MLP that feeds its input z to every layer (skip-VAE, Dieng et al. 2019).

    Layer ``i`` maps ``[h_{i-1}, z]`` to ``h_i`` (``h_0 = z``), so no layer can wash z
    out: the decoder's output stays a function of z at every depth, which makes ignoring
    z costlier than in a plain MLP of the same widths.

    Parameters
    ----------
    sizes : tuple of int
        ``(latent_dim, hidden..., out)``, as for :func:`mlp`.
    dropout : float
        Dropout probability after each hidden activation (not applied to the skipped z).

    References
    ----------
    Dieng, Kim, Rush, Blei (2019). Avoiding Latent Variable Collapse with Generative Skip
    Models. AISTATS.
    """

    def __init__(self, sizes: tuple[int, ...], *, dropout: float = 0.0) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"SkipMLP needs at least (in, out) sizes, got {sizes}")
        latent = sizes[0]
        widths = list(itertools.pairwise(sizes))
        self.layers = nn.ModuleList(
            nn.Linear(a + (latent if i > 0 else 0), b) for i, (a, b) in enumerate(widths)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Output of shape ``z.shape[:-1] + (out,)`` for z of shape ``(..., latent_dim)``."""
        h = z
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h if i == 0 else torch.cat([h, z], dim=-1))
            if i < last:
                h = self.dropout(F.relu(h))
        return h


def diagonal_normal(out: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
    """``Normal(loc, softplus(raw) + min_scale).to_event(1)`` from ``out = [loc, raw]``.

    Parameters
    ----------
    out : torch.Tensor
        Shape ``(..., 2 * dim)``.
    min_scale : float
        Floor of the scale.

    Returns
    -------
    Distribution
        Batch shape ``out.shape[:-1]``, event shape ``(dim,)``.
    """
    loc, raw = out.chunk(2, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + min_scale).to_event(1)


# --------------------------------------------------------------------------------------
# Factorised likelihoods
# --------------------------------------------------------------------------------------
def gaussian_scale(raw: torch.Tensor) -> torch.Tensor:
    """Observation scale ``softplus(raw) + 1e-3`` of the Gaussian likelihood."""
    return F.softplus(raw) + MIN_OBS_SCALE


def factorised_likelihood(
    likelihood: str, out: torch.Tensor, raw_scale: torch.Tensor | None = None
) -> dist.TorchDistribution:
    """p(x|z) factorised over the last axis of the decoder output ``out``.

    Parameters
    ----------
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
        ``"bernoulli"``: logits, evaluated without support validation so that grey values
        in [0, 1] give the usual cross-entropy surrogate. ``"continuous_bernoulli"``:
        logits of the normalised density on [0, 1] (Loaiza-Ganem & Cunningham 2019).
        ``"gaussian"``: ``out`` is the mean, ``raw_scale`` the unconstrained scale.
    out : torch.Tensor
        Shape ``batch_shape + (D,)``.
    raw_scale : torch.Tensor or None
        Shape broadcastable to ``(D,)``; required for ``"gaussian"``.

    Returns
    -------
    Distribution
        Batch shape ``out.shape[:-1]``, event shape ``(D,)``.
    """
    check_choice("likelihood", likelihood, LIKELIHOODS)
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
    if likelihood == "continuous_bernoulli":
        return dist.ContinuousBernoulli(logits=out).to_event(1)
    if raw_scale is None:
        raise ValueError("likelihood='gaussian' needs raw_scale (the unconstrained scale)")
    return dist.Normal(out, gaussian_scale(raw_scale).expand_as(out)).to_event(1)


def likelihood_point(
    likelihood: str, out: torch.Tensor, raw_scale: torch.Tensor | None, *, greedy: bool
) -> torch.Tensor:
    """One value per feature from decoder outputs: a draw, or the greedy point.

    The greedy point is the most probable value for ``"bernoulli"`` (``logits > 0``), the
    mean for ``"gaussian"`` and ``"continuous_bernoulli"`` (whose mode sits on the
    boundary of [0, 1]). Used by the pixel-by-pixel sampler of autoregressive decoders.

    Parameters
    ----------
    out : torch.Tensor
        Decoder output of any shape; ``raw_scale`` broadcastable to it.

    Returns
    -------
    torch.Tensor
        Shape ``out.shape``.
    """
    if greedy:
        if likelihood == "bernoulli":
            return (out > 0).to(out.dtype)
        if likelihood == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=out).mean
        return out
    return factorised_likelihood(likelihood, out, raw_scale).sample()


def check_likelihood_support(name: str, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Check that ``x`` lies in [0, 1] when ``likelihood`` needs it; return ``x``.

    The check reads every value, so, like Pyro's own support checks, it runs only while
    Pyro's validation is enabled (``fit`` keeps it for its first step).
    """
    if (
        likelihood != "gaussian"
        and is_validation_enabled()
        and (bool((x < 0).any()) or bool((x > 1).any()))
    ):
        raise ValueError(
            f"{name} must lie in [0, 1] for likelihood={likelihood!r} "
            f"(got range [{float(x.min()):.3g}, {float(x.max()):.3g}]); "
            "rescale the data or use likelihood='gaussian'"
        )
    return x


# --------------------------------------------------------------------------------------
# Convolution stacks
# --------------------------------------------------------------------------------------
def conv_sizes(side: int, n_layers: int) -> list[int]:
    """Spatial sizes ``[side, side // 2, ...]`` through ``n_layers`` stride-2 convolutions
    with kernel 4 and padding 1 (``floor(s / 2)`` per layer)."""
    sizes = [side]
    for _ in range(n_layers):
        sizes.append((sizes[-1] + 2 - 4) // 2 + 1)
    return sizes


def conv_encoder(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 ``Conv2d(kernel 4, padding 1) + ReLU`` layers, then ``Flatten``.

    Maps ``(N, in_channels, H, W)`` to ``(N, channels[-1] * h * w)`` with ``h, w`` from
    :func:`conv_sizes`.
    """
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise((in_channels, *channels)):
        layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def conv_decoder(
    channels: tuple[int, ...],
    out_channels: int,
    heights: list[int],
    widths: list[int],
    *,
    activate_last: bool = False,
) -> nn.Sequential:
    """Mirror of :func:`conv_encoder`: stride-2 transposed convolutions back to ``(H, W)``.

    Maps ``(N, channels[-1], heights[-1], widths[-1])`` to ``(N, out_channels, H, W)``,
    with ``output_padding`` chosen per layer so that odd sizes come back exactly.
    """
    layers: list[nn.Module] = []
    widths_in = (*reversed(channels), out_channels)
    n = len(channels)
    for i, (a, b) in enumerate(itertools.pairwise(widths_in)):
        # layer i maps size index n - i to n - i - 1
        big_h, small_h = heights[n - i - 1], heights[n - i]
        big_w, small_w = widths[n - i - 1], widths[n - i]
        pad = (big_h - 2 * small_h, big_w - 2 * small_w)
        layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, output_padding=pad))
        if i < n - 1 or activate_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------
# PixelCNN
# --------------------------------------------------------------------------------------
class MaskedConv2d(nn.Conv2d):
    """A PixelCNN masked convolution (van den Oord et al. 2016).

    Pixels are ordered in raster order (row by row, left to right) and, within a pixel,
    by colour channel. The output at a pixel sees only input pixels strictly before it,
    plus, at the pixel itself, the input channels of earlier colours (type ``"A"``, the
    first layer, which must not see the value it predicts) or of earlier-or-same colours
    (type ``"B"``, later layers). Channel ``i`` belongs to colour group ``i % colors``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int
        Odd kernel side; padding keeps the spatial size.
    mask_type : {"A", "B"}
        See above.
    colors : int
        Number of colour channels of the image (1 for grey images).

    References
    ----------
    van den Oord, Kalchbrenner, Kavukcuoglu (2016). Pixel Recurrent Neural Networks. ICML.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        mask_type: str,
        colors: int = 1,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        mask_type = check_choice("mask_type", mask_type, ("A", "B"))
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        c = kernel_size // 2
        mask = torch.ones_like(self.weight)  # (out, in, k, k)
        mask[:, :, c, c + 1 :] = 0
        mask[:, :, c + 1 :, :] = 0
        g_out = torch.arange(out_channels) % colors
        g_in = torch.arange(in_channels) % colors
        allowed = (
            g_in[None, :] < g_out[:, None] if mask_type == "A" else g_in[None, :] <= g_out[:, None]
        )
        mask[:, :, c, c] = allowed.to(mask.dtype)
        self.mask_type = mask_type
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNHead(nn.Module):
    """Autoregressive image head: masked convolutions over the image, conditioned on z.

    ``forward(x, features)`` gives, at every pixel and colour, the decoder output
    (logits or mean) of p(x_i | x_<i, z), where ``x_<i`` are the earlier pixels of ``x``
    in raster order and ``features`` (computed from z) enter every layer through a 1x1
    convolution::

        h = relu(A(x) + c_0(features))
        h = h + relu(B_l(h) + c_l(features))      for l = 1..layers
        out = B_out(h)                            (1x1, type B)

    Parameters
    ----------
    colors : int
        Image channels C.
    cond_channels : int
        Channels of ``features``.
    hidden : int
        Channels of the masked layers.
    layers : int
        Number of residual type-B 3x3 layers (the head's receptive field grows with it).
    kernel_size : int
        Side of the first (type-A) kernel.

    References
    ----------
    van den Oord et al. (2016). Conditional Image Generation with PixelCNN Decoders. NeurIPS.
    Gulrajani et al. (2017). PixelVAE: A Latent Variable Model for Natural Images. ICLR.
    """

    def __init__(
        self, colors: int, cond_channels: int, *, hidden: int, layers: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.first = MaskedConv2d(colors, hidden, kernel_size, mask_type="A", colors=colors)
        self.blocks = nn.ModuleList(
            MaskedConv2d(hidden, hidden, 3, mask_type="B", colors=colors) for _ in range(layers)
        )
        self.cond = nn.ModuleList(nn.Conv2d(cond_channels, hidden, 1) for _ in range(layers + 1))
        self.out = MaskedConv2d(hidden, colors, 1, mask_type="B", colors=colors)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, C, H, W)`` and ``features`` ``(N, F, H, W)`` -> ``(N, C, H, W)``."""
        h = F.relu(self.first(x) + self.cond[0](features))
        for block, cond in zip(self.blocks, self.cond[1:]):
            h = h + F.relu(block(h) + cond(features))
        return self.out(h)


def check_dropout(name: str, value: object) -> float:
    """A dropout probability in [0, 0.99]."""
    return check_float(name, value, minimum=0.0, maximum=0.99)
