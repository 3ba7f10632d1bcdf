"""Synthetic data sets with known generative factors, each drawn from a ``seed``.

``"ppca"`` (probabilistic PCA with a chosen covariance spectrum), ``"mixture"``
(Gaussian-mixture latents through a random tanh network), ``"shapes"`` (dSprites-like
binary images) and ``"sequences"`` (topic-conditioned token sequences). All randomness
comes from ``numpy.random.default_rng(seed)``; the global random state is never read or
changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.data.dataset import Dataset, _float_tensor, _image_dataset
from pyrocollapse.data.registry import DATASETS
from pyrocollapse.data.tokens import SPECIAL_TOKENS, _frame_tokens

__all__ = [
    "SHAPE_NAMES",
    "SHAPE_SCALES",
    "make_latent_mixture",
    "make_ppca",
    "make_sequences",
    "make_shapes",
    "ppca_population_covariance",
]

#: Names of the square / circle / triangle codes of :func:`make_shapes`.
SHAPE_NAMES: tuple[str, ...] = ("square", "circle", "triangle")
#: Discrete scales of :func:`make_shapes`; a shape's half-extent is ``scale * size / 4``.
SHAPE_SCALES: tuple[float, ...] = (0.5, 0.625, 0.75, 0.875, 1.0)


# make_sequences: probability that the next word leaves the topic's word block, and the
# Dirichlet concentration of the within-block transition rows (small = more grammar-like).
_TOPIC_LEAK = 0.1
_TRANSITION_CONCENTRATION = 0.5


@DATASETS.register("ppca")
def make_ppca(
    n: int = 2000,
    *,
    spectrum: Sequence[float] = (4.0, 2.0, 1.0, 0.5, 0.25),
    noise: float = 0.5,
    input_dim: int = 10,
    seed: int = 0,
) -> Dataset:
    """Probabilistic-PCA data whose covariance has a chosen spectrum.

    With ``k = len(spectrum)``, ``D = input_dim``, a random orthonormal ``U`` (``D x k``)
    and a random mean ``mu`` (both from ``seed``)::

        x = W z + mu + noise * eps,   z ~ N(0, I_k),  eps ~ N(0, I_D),
        W = U diag(sqrt(spectrum - noise**2)),

    so the population covariance is exactly::

        Cov(x) = W W^T + noise**2 I = U diag(spectrum) U^T + noise**2 (I - U U^T),

    i.e. its eigenvalues are ``spectrum`` (along the columns of ``U``) and ``noise**2``
    (``D - k`` times). A value equal to ``noise**2`` gives a column of ``W`` equal to zero
    (a direction the latent does not explain), which is the pPCA maximum-likelihood
    picture of a collapsed latent dimension.

    Parameters
    ----------
    n : int
        Number of rows (>= 1).
    spectrum : sequence of float
        ``k >= 1`` covariance eigenvalues, each > 0 and >= ``noise**2``; any order.
    noise : float
        Observation-noise standard deviation (>= 0).
    input_dim : int
        ``D >= k``.
    seed : int
        Seed of ``U``, ``mu``, ``z`` and ``eps``.

    Returns
    -------
    Dataset
        ``data`` of shape ``(n, D)``, ``kind="real"``; ``factors = z`` of shape
        ``(n, k)`` (names ``z0, z1, ...``); ``metadata`` holds ``spectrum``, ``noise``,
        ``loading`` (``W`` as a ``D x k`` nested list) and ``mean`` (``mu``). See
        :func:`ppca_population_covariance`.

    Raises
    ------
    ValueError
        If a spectrum value is not positive or below ``noise**2``, or ``input_dim < k``.
    """
    n = check_int("n", n, minimum=1)
    noise = check_float("noise", noise, minimum=0.0)
    spectrum_arr = _check_spectrum(spectrum, noise)
    k = len(spectrum_arr)
    input_dim = check_int("input_dim", input_dim, minimum=1)
    if input_dim < k:
        raise ValueError(f"input_dim must be >= len(spectrum) = {k}, got {input_dim}")
    rng = _rng(seed)
    basis = _random_orthonormal(rng, input_dim, k)
    loading = basis * np.sqrt(np.clip(spectrum_arr - noise**2, 0.0, None))
    mean = rng.standard_normal(input_dim)
    z = rng.standard_normal((n, k))
    x = z @ loading.T + mean + noise * rng.standard_normal((n, input_dim))
    return Dataset(
        data=_float_tensor(x),
        name="ppca",
        kind="real",
        event_shape=(input_dim,),
        factors=_float_tensor(z),
        factor_names=tuple(f"z{i}" for i in range(k)),
        metadata={
            "source": "ppca",
            "seed": seed,
            "spectrum": spectrum_arr.tolist(),
            "noise": noise,
            "loading": loading.tolist(),
            "mean": mean.tolist(),
        },
    )


def ppca_population_covariance(dataset: Dataset) -> torch.Tensor:
    """The exact covariance ``W W^T + noise**2 I`` of a :func:`make_ppca` dataset.

    Parameters
    ----------
    dataset : Dataset
        Made by :func:`make_ppca` (or a subset / split of one).

    Returns
    -------
    torch.Tensor
        Shape ``(D, D)``, float64.

    Raises
    ------
    ValueError
        If ``dataset.metadata`` has no pPCA ``loading`` and ``noise``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a Dataset, got {type(dataset).__name__}")
    meta = dataset.metadata
    if meta.get("source") != "ppca" or "loading" not in meta or "noise" not in meta:
        raise ValueError(
            f"dataset {dataset.name!r} has no pPCA parameters in its metadata (needs "
            "'loading' and 'noise', as written by make_ppca)"
        )
    loading = torch.tensor(meta["loading"], dtype=torch.float64)
    eye = torch.eye(loading.shape[0], dtype=torch.float64)
    return loading @ loading.T + float(meta["noise"]) ** 2 * eye


@DATASETS.register("mixture")
def make_latent_mixture(
    n: int = 2000,
    *,
    n_components: int = 4,
    latent_dim: int = 2,
    input_dim: int = 20,
    separation: float = 4.0,
    noise: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Gaussian-mixture latents pushed through a fixed random two-layer tanh network.

    Each row picks a component ``c`` uniformly, draws ``z ~ N(m_c, I)`` and emits::

        x = tanh((z / s) A + b) B + noise * eps,   eps ~ N(0, I_D),

    with random ``A`` (``latent_dim x H``), ``b`` and ``B`` (``H x D``), ``H = max(32, 2D)``
    hidden units, and ``s`` the root-mean-square population standard deviation of ``z`` (so the tanh layer
    neither saturates nor stays linear). The means ``m_c`` lie evenly spaced on a circle
    in a random 2-D plane of the latent space (on a line when ``latent_dim == 1``), with
    neighbouring means exactly ``separation`` apart.

    Parameters
    ----------
    n : int
        Number of rows (>= 1).
    n_components : int
        Number of mixture components (>= 1).
    latent_dim : int
        Dimension of ``z`` (>= 1).
    input_dim : int
        ``D >= latent_dim``.
    separation : float
        Distance between neighbouring component means in units of the within-component
        standard deviation (>= 0).
    noise : float
        Observation-noise standard deviation (>= 0).
    seed : int
        Seed of the means, the network, the latents and the noise.

    Returns
    -------
    Dataset
        ``data`` of shape ``(n, D)``, ``kind="real"``; ``factors`` of shape
        ``(n, latent_dim + 1)``: the latent coordinates ``z0, z1, ...`` and the
        ``component`` label (as a float); ``metadata["component_means"]``.
    """
    n = check_int("n", n, minimum=1)
    n_components = check_int("n_components", n_components, minimum=1)
    latent_dim = check_int("latent_dim", latent_dim, minimum=1)
    input_dim = check_int("input_dim", input_dim, minimum=1)
    if input_dim < latent_dim:
        raise ValueError(f"input_dim must be >= latent_dim = {latent_dim}, got {input_dim}")
    separation = check_float("separation", separation, minimum=0.0)
    noise = check_float("noise", noise, minimum=0.0)
    rng = _rng(seed)
    means = _component_means(rng, n_components, latent_dim, separation)
    hidden = max(32, 2 * input_dim)
    w1 = rng.normal(0.0, 1.5 / math.sqrt(latent_dim), (latent_dim, hidden))
    b1 = rng.normal(0.0, 0.5, hidden)
    w2 = rng.normal(0.0, 1.0 / math.sqrt(hidden), (hidden, input_dim))
    labels = rng.integers(n_components, size=n)
    z = means[labels] + rng.standard_normal((n, latent_dim))
    scale = math.sqrt(1.0 + float(np.mean(np.sum(means**2, axis=1))) / latent_dim)
    x = np.tanh((z / scale) @ w1 + b1) @ w2 + noise * rng.standard_normal((n, input_dim))
    return Dataset(
        data=_float_tensor(x),
        name="mixture",
        kind="real",
        event_shape=(input_dim,),
        factors=_float_tensor(np.column_stack([z, labels])),
        factor_names=(*(f"z{i}" for i in range(latent_dim)), "component"),
        metadata={
            "source": "latent_mixture",
            "seed": seed,
            "n_components": n_components,
            "latent_dim": latent_dim,
            "separation": separation,
            "noise": noise,
            "hidden_units": hidden,
            "component_means": means.tolist(),
        },
    )


@DATASETS.register("shapes")
def make_shapes(n: int = 2000, *, size: int = 16, seed: int = 0) -> Dataset:
    """dSprites-like binary images of a square, a circle or an upward triangle.

    Each image independently draws a ``shape`` (0 square, 1 circle, 2 triangle), a
    ``scale`` from :data:`SHAPE_SCALES` and continuous positions ``pos_x, pos_y`` uniform
    in [0, 1]. With half-extent ``h = scale * size / 4``, the shape's centre is
    ``h + pos * (size - 2h)`` pixels from the left / top edge, so every shape lies inside
    the canvas. A pixel is lit when its centre is inside the shape: the square has side
    ``2h`` (area ``4h^2``), the circle radius ``h`` (area ``pi h^2``) and the triangle
    base and height ``2h`` (area ``2h^2``).

    Parameters
    ----------
    n : int
        Number of images (>= 1).
    size : int
        Image side in pixels (>= 8, so every shape lights at least one pixel).
    seed : int
        Seed of the factors.

    Returns
    -------
    Dataset
        ``data`` of shape ``(n, size * size)``, float32 in {0, 1}, ``kind="binary"``,
        ``image_shape=(1, size, size)`` (row index = y, top to bottom); ``factors`` of
        shape ``(n, 4)`` named ``shape, scale, pos_x, pos_y``.
    """
    n = check_int("n", n, minimum=1)
    size = check_int("size", size, minimum=8)
    rng = _rng(seed)
    shape = rng.integers(len(SHAPE_NAMES), size=n)
    scale = np.asarray(SHAPE_SCALES)[rng.integers(len(SHAPE_SCALES), size=n)]
    pos = rng.random((n, 2))
    pixels = _rasterise_shapes(shape, scale * size / 4.0, pos, size)
    return _image_dataset(
        pixels.astype(np.float64),
        name="shapes",
        binarize=True,
        factors=np.column_stack([shape, scale, pos]),
        factor_names=("shape", "scale", "pos_x", "pos_y"),
        metadata={
            "source": "shapes",
            "seed": seed,
            "size": size,
            "shape_names": list(SHAPE_NAMES),
            "scales": list(SHAPE_SCALES),
        },
    )


@DATASETS.register("sequences")
def make_sequences(
    n: int = 2000,
    *,
    vocab_size: int = 30,
    max_len: int = 12,
    n_topics: int = 4,
    seed: int = 0,
) -> Dataset:
    """Token sequences from a topic-conditioned Markov chain.

    The ``vocab_size - 4`` words are split into ``n_topics`` contiguous blocks. Each
    sequence draws a ``topic`` uniformly and a number of words ``k`` uniformly in
    ``[min(3, max_len - 2), max_len - 2]``; its words follow a topic-specific Markov chain
    whose every step lands in the topic's block with probability at least 0.9 (a random,
    peaked within-block distribution: the "grammar") and on a uniformly random word
    otherwise. The topic is therefore easy to read off the bag of words, so a latent
    variable can carry it, yet an autoregressive decoder can also infer it from the prefix
    and model the sequences without any latent.

    Parameters
    ----------
    n : int
        Number of sequences (>= 1).
    vocab_size : int
        Total vocabulary size including the 4 special tokens; at least
        ``4 + 2 * n_topics``.
    max_len : int
        Padded length including ``<bos>`` and ``<eos>`` (>= 3).
    n_topics : int
        Number of topics (>= 1).
    seed : int
        Seed of the chains, the topics, the lengths and the words.

    Returns
    -------
    Dataset
        ``data`` of shape ``(n, max_len)``, int64, ``kind="tokens"``, ``vocab`` of
        ``vocab_size`` entries (words ``"w00", "w01", ...``), ``lengths`` of shape
        ``(n,)``; ``factors`` of shape ``(n, 2)`` named ``topic, n_words``;
        ``metadata["topic_words"]`` lists each topic's word ids.
    """
    n = check_int("n", n, minimum=1)
    n_topics = check_int("n_topics", n_topics, minimum=1)
    max_len = check_int("max_len", max_len, minimum=3)
    vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    n_special = len(SPECIAL_TOKENS)
    if vocab_size < n_special + 2 * n_topics:
        raise ValueError(
            f"vocab_size must be >= {n_special + 2 * n_topics} (the {n_special} special tokens "
            f"plus 2 words per topic for n_topics={n_topics}), got {vocab_size}"
        )
    n_vocab_words = vocab_size - n_special
    rng = _rng(seed)
    blocks = np.array_split(np.arange(n_vocab_words), n_topics)
    # chains[t, 0] is topic t's initial distribution, chains[t, 1 + w] the row after word w.
    chains = np.empty((n_topics, n_vocab_words + 1, n_vocab_words))
    for t, block in enumerate(blocks):
        within = rng.dirichlet(np.full(len(block), _TRANSITION_CONCENTRATION), n_vocab_words + 1)
        chains[t] = _TOPIC_LEAK / n_vocab_words
        chains[t][:, block] += (1.0 - _TOPIC_LEAK) * within
    topic = rng.integers(n_topics, size=n)
    n_words = rng.integers(min(3, max_len - 2), max_len - 1, size=n)
    words = np.empty((n, max_len - 2), dtype=np.int64)
    previous = np.zeros(n, dtype=np.int64)  # row 0 = the initial distribution
    for j in range(max_len - 2):
        words[:, j] = _sample_categorical(rng, chains[topic, previous])
        previous = words[:, j] + 1
    data, lengths = _frame_tokens(words + n_special, n_words, max_len)
    width = max(2, len(str(n_vocab_words - 1)))
    return Dataset(
        data=data,
        name="sequences",
        kind="tokens",
        event_shape=(max_len,),
        factors=_float_tensor(np.column_stack([topic, n_words])),
        factor_names=("topic", "n_words"),
        vocab=SPECIAL_TOKENS + tuple(f"w{i:0{width}d}" for i in range(n_vocab_words)),
        lengths=lengths,
        metadata={
            "source": "sequences",
            "seed": seed,
            "n_topics": n_topics,
            "topic_leak": _TOPIC_LEAK,
            "topic_words": [(block + n_special).tolist() for block in blocks],
        },
    )


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(check_int("seed", seed, minimum=0))


def _random_orthonormal(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    """A Haar-random ``(dim, k)`` matrix with orthonormal columns."""
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _check_spectrum(spectrum: object, noise: float) -> np.ndarray:
    if isinstance(spectrum, torch.Tensor):
        spectrum = spectrum.tolist()
    if isinstance(spectrum, (str, bytes)) or not isinstance(spectrum, (Sequence, np.ndarray)):
        raise TypeError(
            f"spectrum must be a sequence of positive floats, got {type(spectrum).__name__}"
        )
    values = [
        check_float(f"spectrum[{i}]", v, minimum=0.0, strict_minimum=True)
        for i, v in enumerate(spectrum)
    ]
    if not values:
        raise ValueError("spectrum must hold at least one eigenvalue, got an empty sequence")
    floor = noise**2
    for i, v in enumerate(values):
        if v < floor * (1 - 1e-9):
            raise ValueError(
                f"spectrum[{i}] = {v} is below noise**2 = {floor}: every covariance eigenvalue "
                "of pPCA data is at least the noise variance; lower noise or raise the spectrum"
            )
    return np.asarray(values, dtype=np.float64)


def _component_means(rng: np.random.Generator, k: int, dim: int, separation: float) -> np.ndarray:
    """``(k, dim)`` means evenly spaced on a circle (a line if dim == 1), neighbours
    ``separation`` apart, centred at the origin."""
    if k == 1:
        return np.zeros((1, dim))
    if dim == 1:
        return (separation * (np.arange(k) - (k - 1) / 2))[:, None]
    radius = separation / (2 * math.sin(math.pi / k))
    angles = 2 * math.pi * np.arange(k) / k
    circle = radius * np.column_stack([np.cos(angles), np.sin(angles)])
    return circle @ _random_orthonormal(rng, dim, 2).T


def _rasterise_shapes(
    shape: np.ndarray, half: np.ndarray, pos: np.ndarray, size: int
) -> np.ndarray:
    """Boolean ``(N, size, size)`` images: shape codes ``(N,)``, half-extents ``(N,)``
    and positions ``(N, 2)`` in [0, 1]; a pixel is lit when its centre is inside."""
    h = half[:, None, None]
    centre = half[:, None] + pos * (size - 2 * half[:, None])
    coords = np.arange(size) + 0.5
    dx = coords[None, None, :] - centre[:, 0, None, None]
    dy = coords[None, :, None] - centre[:, 1, None, None]
    square = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    circle = dx**2 + dy**2 <= h**2
    triangle = (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    code = shape[:, None, None]
    return np.select([code == 0, code == 1], [square, circle], triangle)


def _sample_categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` ``(N, K)`` (rows sum to 1), by inverse CDF."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return np.minimum((cdf < u[:, None]).sum(axis=1), probs.shape[1] - 1)
