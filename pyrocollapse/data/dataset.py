"""Datasets for VAE and posterior-collapse experiments.

Every loader returns a :class:`Dataset`: one immutable record holding the data tensor,
what kind of values it holds (which decides the likelihood a model should use), image
and token bookkeeping, the true latent factors when they are known, and JSON-safe
metadata. Loaders are registered in :data:`DATASETS`, so the command line and
:func:`load_dataset` select them by name::

    >>> ds = load_dataset("ppca", n=500, seed=1)
    >>> len(ds), ds.kind, ds.event_shape
    (500, 'real', (10,))
    >>> train, valid = ds.split(0.2, seed=0)

Three groups of datasets exist:

* bundled: ``"digits"`` (scikit-learn's 8x8 digits; no download);
* synthetic, with known generative factors and a ``seed``: ``"ppca"`` (probabilistic
  PCA with a chosen covariance spectrum), ``"mixture"`` (Gaussian-mixture latents through
  a random tanh network), ``"shapes"`` (dSprites-like binary images) and ``"sequences"``
  (topic-conditioned token sequences);
* local files named by a ``path`` option: ``"mnist"`` / ``"fashion-mnist"`` (IDX files)
  and ``"text"`` (one whitespace-tokenised sequence per line). Nothing is ever
  downloaded.

Token datasets share one convention: ids ``0, 1, 2, 3`` are ``<pad>``, ``<bos>``,
``<eos>`` and ``<unk>`` (:data:`SPECIAL_TOKENS`); every row is
``<bos> w_1 ... w_k <eos>`` followed by ``<pad>`` up to ``max_len``, and
``lengths[i] = k + 2``.

All randomness comes from ``numpy.random.default_rng(seed)`` or a seeded
``torch.Generator``; the global random state is never read or changed.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import inspect
import json
import math
import numbers
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import torch

from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.registry import Registry

__all__ = [
    "BOS_ID",
    "DATASETS",
    "EOS_ID",
    "KINDS",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Dataset",
    "decode_tokens",
    "encode_text",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_text",
    "make_latent_mixture",
    "make_ppca",
    "make_sequences",
    "make_shapes",
    "ppca_population_covariance",
    "read_idx",
]

#: The accepted values of :attr:`Dataset.kind`.
KINDS: tuple[str, ...] = ("binary", "unit_interval", "real", "tokens")

#: Token strings of the reserved ids 0..3 at the start of every vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
#: Ids of the reserved tokens: padding, begin and end of sequence, unknown word.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

#: Short name -> loader, used by :func:`load_dataset` and ``pyrocollapse run --dataset``.
DATASETS: Registry[Any] = Registry("dataset")

StrPath: TypeAlias = "str | os.PathLike[str]"
RowIndex: TypeAlias = "torch.Tensor | np.ndarray | slice | Sequence[int]"

#: Names of the square / circle / triangle codes of :func:`make_shapes`.
SHAPE_NAMES: tuple[str, ...] = ("square", "circle", "triangle")
#: Discrete scales of :func:`make_shapes`; a shape's half-extent is ``scale * size / 4``.
SHAPE_SCALES: tuple[float, ...] = (0.5, 0.625, 0.75, 0.875, 1.0)

_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(d) for d in range(10)),
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
_IDX_LABEL_NAMES = {name: _LABEL_NAMES[name] for name in ("mnist", "fashion-mnist")}
_IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# make_sequences: probability that the next word leaves the topic's word block, and the
# Dirichlet concentration of the within-block transition rows (small = more grammar-like).
_TOPIC_LEAK = 0.1
_TRANSITION_CONCENTRATION = 0.5


# ======================================================================================
# The Dataset record
# ======================================================================================
@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An immutable dataset of ``N`` rows plus everything a model and a diagnostic need.

    Parameters
    ----------
    data : torch.Tensor
        Shape ``(N, *event_shape)``. ``float32`` for the kinds ``"binary"``,
        ``"unit_interval"`` and ``"real"``; ``int64`` token ids of shape ``(N, max_len)``,
        padded with ``pad_id``, for ``"tokens"``.
    name : str
        Short name, e.g. ``"digits"``.
    kind : str
        One of :data:`KINDS`: ``"binary"`` (values in {0, 1}), ``"unit_interval"``
        (values in [0, 1]), ``"real"`` or ``"tokens"``.
    event_shape : tuple of int
        ``data.shape[1:]``, e.g. ``(64,)`` for flattened 8x8 digits.
    image_shape : tuple of int, optional
        Channel-first image shape ``(1, H, W)`` for image data, with
        ``prod(image_shape) == prod(event_shape)``; ``None`` otherwise.
    factors : torch.Tensor, optional
        Shape ``(N, F)``, floating: the true generative factors when known.
    factor_names : tuple of str
        ``F`` names of the factor columns; defaults to ``factor_0, ...`` when ``factors``
        is given without names.
    vocab : tuple of str, optional
        Index -> token string, starting with :data:`SPECIAL_TOKENS`. Required for, and
        only allowed with, ``kind="tokens"``.
    lengths : torch.Tensor, optional
        Shape ``(N,)``, ``int64``: true sequence lengths including ``<bos>`` and
        ``<eos>``. Required for, and only allowed with, ``kind="tokens"``.
    pad_id : int
        Padding id of token data; always :data:`PAD_ID` (0).
    metadata : dict
        Free-form JSON-serialisable description (source, seed, generator parameters).

    Raises
    ------
    TypeError
        If a field has the wrong type or dtype, or ``metadata`` is not JSON-serialisable.
    ValueError
        If the fields disagree with each other (row counts, shapes, value ranges, token
        layout).

    Notes
    -----
    Equality and hashing are by identity (tensors have no single truth value). Tensors
    are not copied, so do not modify them in place.
    """

    data: torch.Tensor
    name: str
    kind: str
    event_shape: tuple[int, ...]
    image_shape: tuple[int, ...] | None = None
    factors: torch.Tensor | None = None
    factor_names: tuple[str, ...] = ()
    vocab: tuple[str, ...] | None = None
    lengths: torch.Tensor | None = None
    pad_id: int = PAD_ID
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- validation --------------------------------------------------------------------
    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(self.data).__name__}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if not self.name:
            raise ValueError("name must be a non-empty str")
        check_choice("kind", self.kind, KINDS)
        if self.data.dim() < 1 or self.data.shape[0] == 0:
            raise ValueError(
                f"data must have shape (N, *event_shape) with N >= 1, got {tuple(self.data.shape)}"
            )
        event_shape = _as_shape("event_shape", self.event_shape)
        if event_shape != tuple(self.data.shape[1:]):
            raise ValueError(
                f"event_shape {event_shape} does not match data.shape[1:] = "
                f"{tuple(self.data.shape[1:])}"
            )
        object.__setattr__(self, "event_shape", event_shape)
        self._check_values()
        self._check_image_shape()
        self._check_factors()
        self._check_tokens()
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"metadata must be JSON-serialisable: {err}") from None

    def _check_values(self) -> None:
        x = self.data
        if self.kind == "tokens":
            if x.dtype != torch.int64:
                raise TypeError(
                    f"data of a 'tokens' dataset must be int64 token ids, got {x.dtype}"
                )
            if x.dim() != 2:
                raise ValueError(
                    f"data of a 'tokens' dataset must have shape (N, max_len), got {tuple(x.shape)}"
                )
            return
        if x.dtype != torch.float32:
            raise TypeError(
                f"data of a {self.kind!r} dataset must be float32, got {x.dtype} "
                "(convert with .float())"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"data contains {int((~torch.isfinite(x)).sum())} NaN or infinite values"
            )
        if self.kind == "binary" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("data of a 'binary' dataset must contain only 0 and 1")
        if self.kind == "unit_interval" and not (float(x.min()) >= 0 and float(x.max()) <= 1):
            raise ValueError(
                f"data of a 'unit_interval' dataset must lie in [0, 1], got values in "
                f"[{float(x.min())}, {float(x.max())}]"
            )

    def _check_image_shape(self) -> None:
        if self.image_shape is None:
            return
        if self.kind == "tokens":
            raise ValueError("image_shape must be None for a 'tokens' dataset")
        image_shape = _as_shape("image_shape", self.image_shape)
        if math.prod(image_shape) != math.prod(self.event_shape):
            raise ValueError(
                f"image_shape {image_shape} has {math.prod(image_shape)} elements but "
                f"event_shape {self.event_shape} has {math.prod(self.event_shape)}"
            )
        object.__setattr__(self, "image_shape", image_shape)

    def _check_factors(self) -> None:
        names = self.factor_names
        if isinstance(names, str) or not isinstance(names, (tuple, list)):
            raise TypeError(f"factor_names must be a tuple of str, got {type(names).__name__}")
        if not all(isinstance(s, str) for s in names):
            raise TypeError(f"factor_names must be a tuple of str, got {names!r}")
        f = self.factors
        if f is None:
            if names:
                raise ValueError("factor_names were given but factors is None")
            object.__setattr__(self, "factor_names", ())
            return
        if not isinstance(f, torch.Tensor) or not f.is_floating_point():
            got = f.dtype if isinstance(f, torch.Tensor) else type(f).__name__
            raise TypeError(f"factors must be a floating torch.Tensor, got {got}")
        if f.dim() != 2 or f.shape[0] != len(self):
            raise ValueError(f"factors must have shape (N={len(self)}, F), got {tuple(f.shape)}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError("factors contain NaN or infinite values")
        if not names:
            names = tuple(f"factor_{i}" for i in range(f.shape[1]))
        if len(names) != f.shape[1]:
            raise ValueError(
                f"factor_names has {len(names)} names but factors has {f.shape[1]} columns"
            )
        object.__setattr__(self, "factor_names", tuple(names))

    def _check_tokens(self) -> None:
        if self.kind != "tokens":
            if self.vocab is not None or self.lengths is not None:
                raise ValueError(
                    f"vocab and lengths are only allowed for kind='tokens', not {self.kind!r}"
                )
            return
        if self.vocab is None or self.lengths is None:
            raise ValueError("a 'tokens' dataset needs both vocab and lengths")
        vocab = _check_vocab(self.vocab)
        object.__setattr__(self, "vocab", vocab)
        if self.pad_id != PAD_ID:
            raise ValueError(f"pad_id must be {PAD_ID} (the id of '<pad>'), got {self.pad_id!r}")
        lengths, x = self.lengths, self.data
        if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int64:
            got = lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__
            raise TypeError(f"lengths must be an int64 torch.Tensor, got {got}")
        max_len = x.shape[1]
        if lengths.shape != (len(self),):
            raise ValueError(
                f"lengths must have shape (N={len(self)},), got {tuple(lengths.shape)}"
            )
        _raise_on_rows(
            (lengths < 2) | (lengths > max_len), f"lengths must lie in [2, max_len={max_len}]"
        )
        _raise_on_rows(
            ((x < 0) | (x >= len(vocab))).any(1), f"token ids must lie in [0, {len(vocab)})"
        )
        inside = torch.arange(max_len) < lengths[:, None]
        _raise_on_rows(
            ((x != PAD_ID) & ~inside).any(1) | ((x == PAD_ID) & inside).any(1),
            "padding must fill exactly the positions >= lengths",
        )
        eos = x.gather(1, (lengths - 1)[:, None]).squeeze(1)
        _raise_on_rows(
            (x[:, 0] != BOS_ID) | ((x == BOS_ID).sum(1) != 1),
            "every sequence must start with the only <bos>",
        )
        _raise_on_rows(
            (eos != EOS_ID) | ((x == EOS_ID).sum(1) != 1),
            "every sequence must have its only <eos> at position lengths - 1",
        )

    # -- behaviour ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        extra = f", vocab_size={len(self.vocab)}" if self.vocab is not None else ""
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}, "
            f"event_shape={self.event_shape}{extra})"
        )

    def subset(self, index: RowIndex) -> Dataset:
        """Rows ``index`` of every per-row field (data, factors, lengths).

        Parameters
        ----------
        index : slice, torch.Tensor, numpy.ndarray or sequence of int
            A slice, a 1-D array of row numbers (negative numbers count from the end) or
            a 1-D boolean mask of length ``N``.

        Returns
        -------
        Dataset
            Same name, kind and metadata; ``M`` rows, where ``M >= 1``.

        Raises
        ------
        TypeError
            If ``index`` is a single int, floating or otherwise not a row index.
        IndexError
            If a row number is out of range.
        ValueError
            If ``index`` is not 1-D, a mask has the wrong length, or no row is selected.
        """
        return self._take(_row_index(index, len(self)), copy.deepcopy(self.metadata))

    def split(self, valid_fraction: float = 0.1, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Randomly partition the rows into a training and a validation part.

        Parameters
        ----------
        valid_fraction : float
            Fraction of rows in the validation part, ``0 < valid_fraction < 1``; the
            validation size is ``round(valid_fraction * N)``.
        seed : int
            Seed of the permutation (a private ``torch.Generator``).

        Returns
        -------
        (Dataset, Dataset)
            ``(train, valid)``: disjoint, together all rows, each in the original row
            order, with ``metadata["split"]`` set to ``"train"`` / ``"valid"``.

        Raises
        ------
        ValueError
            If ``valid_fraction`` is not in (0, 1) or either part would be empty.
        """
        valid_fraction = check_float(
            "valid_fraction", valid_fraction, minimum=0.0, strict_minimum=True
        )
        if valid_fraction >= 1:
            raise ValueError(f"valid_fraction must be < 1, got {valid_fraction}")
        seed = check_int("seed", seed, minimum=0)
        n = len(self)
        n_valid = round(valid_fraction * n)
        if not 1 <= n_valid <= n - 1:
            raise ValueError(
                f"valid_fraction={valid_fraction} of {n} rows gives {n_valid} validation and "
                f"{n - n_valid} training rows; both parts must be non-empty"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        train_rows, valid_rows = perm[n_valid:].sort().values, perm[:n_valid].sort().values
        split_metadata = {**copy.deepcopy(self.metadata), "split_seed": seed}
        train = self._take(train_rows, {**split_metadata, "split": "train"})
        valid = self._take(valid_rows, {**split_metadata, "split": "valid"})
        return train, valid

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary.

        Returns
        -------
        dict
            ``name``, ``kind``, ``n``, ``event_shape``, ``image_shape``, ``dtype``,
            ``vocab_size`` (``None`` unless tokens), ``max_len`` and ``mean_length``
            (tokens only), ``factor_names`` and a copy of ``metadata``.
        """
        summary: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "n": len(self),
            "event_shape": list(self.event_shape),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "dtype": str(self.data.dtype).removeprefix("torch."),
            "vocab_size": None if self.vocab is None else len(self.vocab),
            "factor_names": list(self.factor_names),
        }
        if self.lengths is not None:
            summary["max_len"] = int(self.data.shape[1])
            summary["mean_length"] = float(self.lengths.double().mean())
        summary["metadata"] = copy.deepcopy(self.metadata)
        return summary

    def _take(self, rows: slice | torch.Tensor, metadata: dict[str, Any]) -> Dataset:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return dataclasses.replace(
            self,
            data=self.data[rows],
            factors=pick(self.factors),
            lengths=pick(self.lengths),
            metadata=metadata,
        )


# ======================================================================================
# Registry front door
# ======================================================================================
def load_dataset(name: str, **options: Any) -> Dataset:
    """Build a dataset by its registered name (see :data:`DATASETS`).

    Parameters
    ----------
    name : str
        ``"digits"``, ``"ppca"``, ``"mixture"``, ``"shapes"``, ``"sequences"``,
        ``"mnist"``, ``"fashion-mnist"`` or ``"text"``.
    **options
        Keyword arguments of that loader; the file-based ones need ``path=...``.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the valid names), or a file-based
        dataset is requested without ``path``.
    TypeError
        If an option is not accepted by the loader (the message lists the accepted ones).

    Examples
    --------
    >>> load_dataset("shapes", n=10, size=16).data.shape
    torch.Size([10, 256])
    """
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; accepted "
                f"options: {', '.join(params) or 'none'}"
            )
    return loader(**options)


# ======================================================================================
# Bundled data
# ======================================================================================
@DATASETS.register("digits")
def load_digits(*, binarize: bool = False) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (no download).

    Parameters
    ----------
    binarize : bool
        Threshold the pixels at 0.5 (``x >= 0.5`` -> 1) and return ``kind="binary"``.

    Returns
    -------
    Dataset
        ``data`` of shape ``(1797, 64)``, float32 in [0, 1] (pixel counts 0..16 divided
        by 16), ``image_shape=(1, 8, 8)``, ``kind="unit_interval"`` (or ``"binary"``),
        ``factors`` of shape ``(1797, 1)``: the digit label as a float.
    """
    binarize = _check_bool("binarize", binarize)
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return _image_dataset(
        np.asarray(bunch.images, dtype=np.float64) / 16.0,
        name="digits",
        binarize=binarize,
        factors=np.asarray(bunch.target)[:, None],
        factor_names=("label",),
        metadata={
            "source": "sklearn.datasets.load_digits",
            "binarize": binarize,
            "label_names": list(_LABEL_NAMES["digits"]),
        },
    )


# ======================================================================================
# Synthetic data with known factors
# ======================================================================================
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


# ======================================================================================
# Local files: IDX (MNIST, Fashion-MNIST)
# ======================================================================================
def read_idx(file: StrPath | BinaryIO) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or plain.

    The header is two zero bytes, a dtype code (``0x08`` unsigned byte, ``0x09`` signed
    byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number
    of dimensions ``d``, then ``d`` big-endian uint32 sizes; the data follow in C order.

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        Gzip compression is detected from the content, not the name.

    Returns
    -------
    numpy.ndarray
        Shape given by the header, native byte order, writable.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the magic number is wrong, or the file is truncated, has trailing bytes or is
        corrupt gzip; the message names the file.
    """
    if hasattr(file, "read"):
        raw = file.read()  # type: ignore[union-attr]
        label = str(getattr(file, "name", "<file object>"))
    else:
        path = _existing_path("file", file, directory=False)
        raw, label = path.read_bytes(), str(path)
    if not isinstance(raw, bytes):
        raise TypeError(f"file must be opened in binary mode, got {type(raw).__name__} from read()")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{label}: corrupt or truncated gzip data ({err})") from None
    if len(raw) < 4:
        raise ValueError(
            f"{label} is truncated: {len(raw)} bytes, less than the 4-byte IDX magic number"
        )
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{label} has a bad IDX magic number 0x{raw[:4].hex()}: expected two zero bytes, "
            "a dtype code (0x08 unsigned byte, 0x09, 0x0b, 0x0c, 0x0d or 0x0e) and the "
            "number of dimensions (>= 1); is this an IDX file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{label} is truncated: the header needs {header} bytes but the file has {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected, found = count * dtype.itemsize, len(raw) - header
    if found < expected:
        raise ValueError(
            f"{label} is truncated: the header promises shape {dims} ({expected} data bytes) "
            f"but only {found} bytes follow"
        )
    if found > expected:
        raise ValueError(
            f"{label} has {found - expected} unexpected trailing bytes after the {expected} "
            f"data bytes of shape {dims}"
        )
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def load_idx(
    path: StrPath,
    *,
    kind_name: str = "mnist",
    split: str = "train",
    binarize: bool = False,
    limit: int | None = None,
) -> Dataset:
    """MNIST or Fashion-MNIST from local IDX files (never downloaded).

    Parameters
    ----------
    path : str or os.PathLike
        Directory holding ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``
        (``split="train"``) or ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
        (``split="test"``), each optionally with a ``.gz`` suffix.
    kind_name : {"mnist", "fashion-mnist"}
        Dataset name; selects the label names in ``metadata["label_names"]``.
    split : {"train", "test"}
        Which pair of files to read.
    binarize : bool
        Threshold the pixels at 0.5 (``x >= 0.5`` -> 1) and return ``kind="binary"``.
    limit : int, optional
        Keep only the first ``limit`` images (>= 1).

    Returns
    -------
    Dataset
        ``data`` of shape ``(N, rows * cols)`` (``(N, 784)`` for MNIST), float32 pixels
        divided by 255, ``image_shape=(1, rows, cols)``, ``kind="unit_interval"`` (or
        ``"binary"``); ``factors`` of shape ``(N, 1)`` named ``label``.

    Raises
    ------
    FileNotFoundError
        If the directory or a file is missing; the message lists the expected names.
    ValueError
        If a file is not valid IDX (see :func:`read_idx`), images are not a 3-D
        unsigned-byte array, labels are not 1-D integers, or the counts differ.
    """
    kind_name = check_choice("kind_name", kind_name, tuple(_IDX_LABEL_NAMES))
    split = check_choice("split", split, tuple(_IDX_FILES))
    binarize = _check_bool("binarize", binarize)
    if limit is not None:
        limit = check_int("limit", limit, minimum=1)
    names = _IDX_FILES[split]
    expected = " and ".join(f"{name}[.gz]" for name in names)
    directory = _existing_path(
        "path", path, directory=True, expected=f"a directory containing {expected}"
    )
    image_file, label_file = (
        _find_file(directory, name, expected=f"{kind_name} split={split!r} needs {expected}")
        for name in names
    )
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_file}: expected unsigned-byte images of shape (N, rows, cols), got "
            f"dtype {images.dtype} and shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{label_file}: expected integer labels of shape (N,), got dtype {labels.dtype} "
            f"and shape {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"{label_file} has {len(labels)} labels but {image_file} has {len(images)} images"
        )
    if len(images) == 0:
        raise ValueError(f"{image_file} holds no images")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return _image_dataset(
        images / 255.0,
        name=kind_name,
        binarize=binarize,
        factors=labels[:, None],
        factor_names=("label",),
        metadata={
            "source": "idx",
            "path": str(directory),
            "split": split,
            "files": [image_file.name, label_file.name],
            "binarize": binarize,
            "limit": limit,
            "label_names": list(_IDX_LABEL_NAMES[kind_name]),
        },
    )


def _register_idx(dataset_name: str) -> None:
    def load(
        path: StrPath | None = None,
        *,
        split: str = "train",
        binarize: bool = False,
        limit: int | None = None,
    ) -> Dataset:
        return load_idx(
            _require_path(dataset_name, path),
            kind_name=dataset_name,
            split=split,
            binarize=binarize,
            limit=limit,
        )

    load.__name__ = load.__qualname__ = f"load_{dataset_name.replace('-', '_')}"
    load.__doc__ = (
        f"Registry entry {dataset_name!r}: :func:`load_idx` with ``kind_name={dataset_name!r}``."
    )
    DATASETS.register(dataset_name)(load)


for _name in _IDX_LABEL_NAMES:
    _register_idx(_name)


# ======================================================================================
# Local files: text
# ======================================================================================
def load_text(
    path: StrPath,
    *,
    max_len: int | None = None,
    min_count: int = 1,
    lowercase: bool = True,
    limit: int | None = None,
) -> Dataset:
    """Token sequences from a local UTF-8 text file, one sequence per line.

    Blank lines are skipped; lines are split on whitespace. The vocabulary is
    :data:`SPECIAL_TOKENS` followed by every token seen at least ``min_count`` times,
    ordered by descending count, then alphabetically; rarer tokens become ``<unk>``, and
    so do literal ``<pad>``, ``<bos>`` and ``<eos>`` strings in the text (a literal
    ``<unk>`` keeps its meaning).

    Parameters
    ----------
    path : str or os.PathLike
        The text file.
    max_len : int, optional
        Padded length including ``<bos>`` and ``<eos>`` (>= 3); longer lines keep their
        first ``max_len - 2`` tokens. Default: the longest line plus 2.
    min_count : int
        Minimum count for a token to enter the vocabulary (>= 1).
    lowercase : bool
        Lowercase the text before tokenising.
    limit : int, optional
        Read only the first ``limit`` non-blank lines (>= 1), before building the
        vocabulary.

    Returns
    -------
    Dataset
        ``data`` of shape ``(N, max_len)``, int64, ``kind="tokens"``, with ``vocab`` and
        ``lengths``; ``metadata`` records the options, ``n_truncated`` and ``n_unk``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not UTF-8 or has no non-blank line.
    """
    min_count = check_int("min_count", min_count, minimum=1)
    lowercase = _check_bool("lowercase", lowercase)
    if limit is not None:
        limit = check_int("limit", limit, minimum=1)
    if max_len is not None:
        max_len = check_int("max_len", max_len, minimum=3)
    file = _existing_path(
        "path", path, directory=False, expected="a text file, one sequence per line"
    )
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{file} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} "
            "cannot be decoded; re-encode the file as UTF-8"
        ) from None
    lines = [line.lower() if lowercase else line for line in text.splitlines() if line.strip()]
    lines = lines[:limit]
    if not lines:
        raise ValueError(f"{file} is empty: it contains no non-blank line")
    counts = Counter(tok for line in lines for tok in line.split() if tok not in SPECIAL_TOKENS)
    kept = sorted(
        (tok for tok, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t)
    )
    vocab = SPECIAL_TOKENS + tuple(kept)
    data, lengths = encode_text(lines, vocab, max_len=max_len)
    n_tokens = np.array([len(line.split()) for line in lines])
    return Dataset(
        data=data,
        name="text",
        kind="tokens",
        event_shape=(int(data.shape[1]),),
        vocab=vocab,
        lengths=lengths,
        metadata={
            "source": "text",
            "path": str(file),
            "min_count": min_count,
            "lowercase": lowercase,
            "limit": limit,
            "max_len": int(data.shape[1]),
            "n_truncated": int((n_tokens + 2 > data.shape[1]).sum()),
            "n_unk": int((data == UNK_ID).sum()),
        },
    )


@DATASETS.register("text")
def _load_text_entry(
    path: StrPath | None = None,
    *,
    max_len: int | None = None,
    min_count: int = 1,
    lowercase: bool = True,
    limit: int | None = None,
) -> Dataset:
    """Registry entry ``"text"``: :func:`load_text`, with ``path`` given as an option."""
    return load_text(
        _require_path("text", path),
        max_len=max_len,
        min_count=min_count,
        lowercase=lowercase,
        limit=limit,
    )


def encode_text(
    lines: Iterable[str], vocab: Sequence[str], *, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode whitespace-tokenised lines as padded ``<bos> ... <eos>`` id rows.

    Parameters
    ----------
    lines : iterable of str
        One sequence per string (not a single str). Tokens missing from ``vocab``, and
        literal ``<pad>``/``<bos>``/``<eos>``, become ``<unk>``. No lowercasing.
    vocab : sequence of str
        Index -> token, starting with :data:`SPECIAL_TOKENS`.
    max_len : int, optional
        Padded length including ``<bos>`` and ``<eos>`` (>= 3); longer lines keep their
        first ``max_len - 2`` tokens. Default: the longest line plus 2.

    Returns
    -------
    ids : torch.Tensor
        Shape ``(N, max_len)``, int64.
    lengths : torch.Tensor
        Shape ``(N,)``, int64, including ``<bos>`` and ``<eos>``.
    """
    vocab = _check_vocab(vocab)
    if isinstance(lines, str) or not isinstance(lines, Iterable):
        raise TypeError(
            "lines must be an iterable of str (one sequence each); wrap a single line in a list"
        )
    token_lists = []
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"lines[{i}] must be a str, got {type(line).__name__}")
        token_lists.append(line.split())
    if not token_lists:
        raise ValueError("lines is empty; need at least one line")
    longest = max(len(tokens) for tokens in token_lists)
    max_len = longest + 2 if max_len is None else check_int("max_len", max_len, minimum=3)
    index = {tok: i for i, tok in enumerate(vocab)} | {
        tok: UNK_ID for tok in SPECIAL_TOKENS[:UNK_ID]
    }
    words = np.full((len(token_lists), max_len - 2), PAD_ID, dtype=np.int64)
    n_words = np.empty(len(token_lists), dtype=np.int64)
    for i, tokens in enumerate(token_lists):
        ids = [index.get(tok, UNK_ID) for tok in tokens[: max_len - 2]]
        words[i, : len(ids)] = ids
        n_words[i] = len(ids)
    return _frame_tokens(words, n_words, max_len)


def decode_tokens(
    ids: torch.Tensor | np.ndarray | Sequence[int], vocab: Sequence[str]
) -> list[str]:
    """Token strings of one id sequence: stops at ``<eos>``, drops ``<pad>`` and ``<bos>``.

    Parameters
    ----------
    ids : torch.Tensor, numpy.ndarray or sequence of int
        Shape ``(L,)``.
    vocab : sequence of str
        Index -> token, starting with :data:`SPECIAL_TOKENS`.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        If ``ids`` is not 1-D or an id is outside ``[0, len(vocab))``.
    """
    vocab = _check_vocab(vocab)
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"ids must be 1-D (one sequence), got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {array.dtype}")
    tokens = []
    for i in array.tolist():
        if not 0 <= i < len(vocab):
            raise ValueError(f"token id {i} is outside the vocabulary [0, {len(vocab)})")
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            tokens.append(vocab[i])
    return tokens


# ======================================================================================
# Shared helpers
# ======================================================================================
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(check_int("seed", seed, minimum=0))


def _float_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float32)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _as_shape(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, (torch.Size, tuple, list)):
        return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))
    raise TypeError(f"{name} must be a tuple of positive ints, got {type(value).__name__}")


def _check_vocab(vocab: object) -> tuple[str, ...]:
    if isinstance(vocab, str) or not isinstance(vocab, Sequence):
        raise TypeError(f"vocab must be a sequence of str, got {type(vocab).__name__}")
    vocab = tuple(vocab)
    if not all(isinstance(tok, str) for tok in vocab):
        raise TypeError("vocab must contain only str tokens")
    if vocab[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
        raise ValueError(
            f"vocab must start with the special tokens {SPECIAL_TOKENS}, got {vocab[:4]}"
        )
    if len(set(vocab)) != len(vocab):
        dupes = sorted(tok for tok, c in Counter(vocab).items() if c > 1)
        raise ValueError(f"vocab has duplicate tokens: {dupes[:5]}")
    return vocab


def _raise_on_rows(bad: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` naming the first row where ``bad`` (N,) is true."""
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise ValueError(f"{message}; violated in {len(rows)} row(s), first row {int(rows[0])}")


def _row_index(index: object, n: int) -> slice | torch.Tensor:
    if isinstance(index, slice):
        selected = range(n)[index]
        if len(selected) == 0:
            raise ValueError(f"index {index} selects no rows of {n}")
        # tensors do not take negative slice steps; spell those rows out
        return torch.tensor(selected) if selected.step < 0 else index
    if isinstance(index, (bool, np.bool_, numbers.Integral)):
        raise TypeError(
            "index must be a slice or a 1-D array of rows, not a single int; use [i] or "
            "slice(i, i + 1)"
        )
    if isinstance(index, torch.Tensor):
        rows = index.detach().cpu()
    elif isinstance(index, (np.ndarray, Sequence)) and not isinstance(index, str):
        array = np.asarray(index)
        if array.size == 0:
            raise ValueError("index selects no rows")
        if array.dtype.kind not in "biu":
            raise TypeError(f"index must hold ints or bools, got dtype {array.dtype}")
        rows = torch.from_numpy(array.copy())
    else:
        raise TypeError(
            f"index must be a slice, torch.Tensor, numpy.ndarray or sequence of int, got "
            f"{type(index).__name__}"
        )
    if rows.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(rows.shape)}")
    if rows.dtype == torch.bool:
        if rows.shape[0] != n:
            raise ValueError(f"a boolean index must have length N={n}, got {rows.shape[0]}")
        rows = torch.nonzero(rows).flatten()
    elif rows.is_floating_point() or rows.is_complex():
        raise TypeError(f"index must hold ints or bools, got {rows.dtype}")
    rows = rows.long()
    if rows.numel() == 0:
        raise ValueError("index selects no rows")
    if bool(((rows < -n) | (rows >= n)).any()):
        raise IndexError(f"index holds rows outside [-{n}, {n}) for a dataset of {n} rows")
    return rows


def _image_dataset(
    pixels: np.ndarray,
    *,
    name: str,
    binarize: bool,
    factors: np.ndarray,
    factor_names: tuple[str, ...],
    metadata: dict[str, Any],
) -> Dataset:
    """Flatten ``pixels`` of shape ``(N, H, W)`` in [0, 1] into a ``(1, H, W)`` image dataset."""
    n, height, width = pixels.shape
    flat = pixels.reshape(n, height * width)
    if binarize:
        flat = (flat >= 0.5).astype(np.float64)
    return Dataset(
        data=_float_tensor(flat),
        name=name,
        kind="binary" if binarize else "unit_interval",
        event_shape=(height * width,),
        image_shape=(1, height, width),
        factors=_float_tensor(factors),
        factor_names=factor_names,
        metadata=metadata,
    )


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


def _frame_tokens(
    words: np.ndarray, n_words: np.ndarray, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``<bos> words[i, :n_words[i]] <eos> <pad>...`` of length ``max_len``.

    ``words`` has shape ``(N, M)`` with ``M <= max_len - 2`` and ``n_words <= M``.
    """
    n, m = words.shape
    data = np.full((n, max_len), PAD_ID, dtype=np.int64)
    data[:, 0] = BOS_ID
    keep = np.arange(m)[None, :] < n_words[:, None]
    data[:, 1 : 1 + m][keep] = words[keep]
    data[np.arange(n), n_words + 1] = EOS_ID
    return torch.from_numpy(data), torch.from_numpy(n_words.astype(np.int64) + 2)


def _existing_path(name: str, path: object, *, directory: bool, expected: str = "") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    resolved = Path(path).expanduser()
    hint = f"; expected {expected}" if expected else ""
    if not resolved.exists():
        raise FileNotFoundError(f"{name} {str(resolved)!r} does not exist{hint}")
    if directory and not resolved.is_dir():
        raise NotADirectoryError(f"{name} {str(resolved)!r} is not a directory{hint}")
    if not directory and resolved.is_dir():
        raise IsADirectoryError(f"{name} {str(resolved)!r} is a directory, not a file{hint}")
    return resolved


def _find_file(directory: Path, name: str, *, expected: str) -> Path:
    """``directory/name`` or ``directory/name.gz``, whichever exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {name} nor {name}.gz is in {str(directory)!r}; {expected}")


def _require_path(dataset: str, path: StrPath | None) -> StrPath:
    if path is None:
        raise ValueError(
            f"dataset {dataset!r} reads local files, so a `path` is required, e.g. "
            f"load_dataset({dataset!r}, path=...); data are never downloaded"
        )
    return path
