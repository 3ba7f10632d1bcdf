"""Token sequences from a local text file, one whitespace-tokenised sequence per line."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pyrocollapse._validation import check_int
from pyrocollapse.data._checks import _check_bool, _existing_path, _require_path
from pyrocollapse.data.dataset import Dataset, StrPath
from pyrocollapse.data.registry import DATASETS
from pyrocollapse.data.tokens import SPECIAL_TOKENS, UNK_ID, encode_text

__all__ = ["load_text"]


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
