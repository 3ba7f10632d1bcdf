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

The package holds one concept per module: ``dataset`` (the :class:`Dataset` record),
``tokens`` (the token-id convention and text encoding), ``registry`` (:data:`DATASETS`)
and the loaders ``bundled``, ``synthetic``, ``idx`` and ``text``, which register
themselves there; :func:`load_dataset`, the front door to all of them, is defined here.
Every public name is importable from ``pyrocollapse.data``.
"""

from __future__ import annotations

import inspect
from typing import Any

from pyrocollapse.data import dataset, registry, tokens
from pyrocollapse.data.dataset import Dataset
from pyrocollapse.data.dataset import RowIndex as RowIndex
from pyrocollapse.data.dataset import StrPath as StrPath
from pyrocollapse.data.tokens import decode_tokens, encode_text
from pyrocollapse.registry import Registry

# The loader modules register their datasets in DATASETS when imported, so their order
# here is the order of DATASETS.names() (shown in messages and in the command line's help).
# isort: off
from pyrocollapse.data.bundled import load_digits
from pyrocollapse.data.synthetic import (
    SHAPE_NAMES as SHAPE_NAMES,
    SHAPE_SCALES as SHAPE_SCALES,
    make_latent_mixture,
    make_ppca,
    make_sequences,
    make_shapes,
    ppca_population_covariance,
)
from pyrocollapse.data.idx import load_idx, read_idx
from pyrocollapse.data.text import load_text

# isort: on

# The constants are defined in the modules named; they are bound here too, with the
# ``#:`` descriptions that the API reference shows.

#: The accepted values of :attr:`Dataset.kind`.
KINDS: tuple[str, ...] = dataset.KINDS

#: Token strings of the reserved ids 0..3 at the start of every vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = tokens.SPECIAL_TOKENS
#: Ids of the reserved tokens: padding, begin and end of sequence, unknown word.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = tokens.PAD_ID, tokens.BOS_ID, tokens.EOS_ID, tokens.UNK_ID

#: Short name -> loader, used by :func:`load_dataset` and ``pyrocollapse run --dataset``.
DATASETS: Registry[Any] = registry.DATASETS

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
