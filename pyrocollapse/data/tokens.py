"""The token-id convention of token datasets, and text <-> id encoding.

Ids ``0, 1, 2, 3`` are ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>``
(:data:`SPECIAL_TOKENS`); every row is ``<bos> w_1 ... w_k <eos>`` followed by ``<pad>``
up to ``max_len``, and ``lengths[i] = k + 2``. :func:`encode_text` writes such rows from
whitespace-tokenised lines, :func:`decode_tokens` reads one back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from pyrocollapse._validation import check_int

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS", "UNK_ID", "decode_tokens", "encode_text"]

#: Token strings of the reserved ids 0..3 at the start of every vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
#: Ids of the reserved tokens: padding, begin and end of sequence, unknown word.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


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
