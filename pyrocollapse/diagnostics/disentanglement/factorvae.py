"""The FactorVAE disentanglement score, :func:`factorvae_score` (Kim & Mnih, 2018).

An encoder's codes of batches with one factor held fixed (drawn by a
:class:`~pyrocollapse.diagnostics.disentanglement.samplers.FactorSampler`) vote,
through the dimension of least normalised variance, for the factor that was fixed; the
score is the held-out accuracy of the majority-vote classifier built from those votes.
Not to be confused with :mod:`pyrocollapse.factorvae`, the FactorVAE training
objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.diagnostics.disentanglement._common import _as_matrix, _check_seed, _names
from pyrocollapse.diagnostics.disentanglement.results import FactorVAEResult
from pyrocollapse.diagnostics.disentanglement.samplers import DatasetFactorSampler, FactorSampler

__all__ = ["factorvae_score"]


def _encode(encode: Callable[[Any], Any], observations: Any) -> np.ndarray:
    with torch.no_grad():
        out = encode(observations)
    if isinstance(out, tuple):
        raise TypeError(
            "encode must return one (B, K) array of codes, got a tuple; return the "
            "posterior mean only (e.g. lambda x: guide_net(x)[0])"
        )
    return _as_matrix("encode(observations)", out, min_rows=1)


def factorvae_score(
    encode: Callable[[Any], Any],
    sampler: FactorSampler | Any,
    *,
    batch_size: int = 64,
    n_train_votes: int = 1000,
    n_eval_votes: int = 500,
    n_variance: int = 5000,
    prune_threshold: float = 0.0,
    seed: int = 0,
) -> FactorVAEResult:
    """The FactorVAE disentanglement score (Kim & Mnih, 2018).

    1. Encode ``n_variance`` random observations and take each code dimension's
       standard deviation ``s_k``; dimensions with ``s_k <= prune_threshold * max(s)``
       (or ``s_k = 0``) are left out as collapsed.
    2. A *vote*: draw a factor ``f`` uniformly, a batch of ``batch_size`` observations
       sharing one value of ``f``, encode it, divide each active dimension by ``s_k``
       and record the dimension ``k`` with the least variance in the batch: the pair
       ``(k, f)``.
    3. The majority-vote classifier maps each dimension to the factor it was voted for
       most in ``n_train_votes`` votes; the score is its accuracy on ``n_eval_votes``
       fresh votes.

    Parameters
    ----------
    encode : callable
        ``encode(observations)`` returns codes of shape ``(B, K)`` (tensor or array)
        for a batch from ``sampler``; use a deterministic code such as the posterior
        mean. Called under ``torch.no_grad()``.
    sampler : FactorSampler or Dataset
        Draws batches (see :class:`FactorSampler`); a ``pyrocollapse`` ``Dataset`` with
        factors is wrapped in :meth:`DatasetFactorSampler.from_dataset`.
    batch_size : int
        Observations per vote (>= 2; disentanglement_lib uses 64).
    n_train_votes, n_eval_votes : int
        Votes that build and that score the classifier (>= 1; disentanglement_lib uses
        10000 and 5000, whose standard error of the score is below 0.01; the defaults
        here give about 0.02).
    n_variance : int
        Observations for the global standard deviations (>= 2; disentanglement_lib
        uses 10000).
    prune_threshold : float
        Relative standard deviation below which a dimension counts as collapsed, in
        [0, 1).
    seed : int
        Seed of every draw (>= 0).

    Returns
    -------
    FactorVAEResult
        ``score`` in [0, 1]; chance level is about ``1 / F``.

    Raises
    ------
    TypeError
        If ``encode`` is not callable, ``sampler`` is not a sampler or an argument has
        the wrong type.
    ValueError
        If an option is out of range or ``encode`` returns badly shaped codes.

    Examples
    --------
    Score precomputed codes ``z`` (``(N, K)``) of a deterministic encoder::

        factorvae_score(lambda rows: rows, DatasetFactorSampler(z, factors))
    """
    if not callable(encode):
        raise TypeError(f"encode must be callable, got {type(encode).__name__}")
    if not isinstance(sampler, FactorSampler):
        if hasattr(sampler, "data") and hasattr(sampler, "factors"):
            sampler = DatasetFactorSampler.from_dataset(sampler)
        else:
            raise TypeError(
                "sampler must be a FactorSampler (n_factors, sample, sample_fixed) or a "
                f"Dataset with factors, got {type(sampler).__name__}"
            )
    batch_size = check_int("batch_size", batch_size, minimum=2)
    n_train_votes = check_int("n_train_votes", n_train_votes, minimum=1)
    n_eval_votes = check_int("n_eval_votes", n_eval_votes, minimum=1)
    n_variance = check_int("n_variance", n_variance, minimum=2)
    prune_threshold = check_float("prune_threshold", prune_threshold, minimum=0.0)
    if prune_threshold >= 1.0:
        raise ValueError(f"prune_threshold must be in [0, 1), got {prune_threshold}")
    seed = _check_seed(seed)
    n_factors = check_int("sampler.n_factors", sampler.n_factors, minimum=1)
    names = _names(tuple(getattr(sampler, "factor_names", ()) or ()) or None, n_factors)
    rng = np.random.default_rng(seed)

    chunks = []
    remaining = n_variance
    while remaining > 0:
        size = min(remaining, 1000)
        chunks.append(_encode(encode, sampler.sample(size, rng)))
        remaining -= size
    codes = np.concatenate(chunks)
    if len(codes) != n_variance:
        raise ValueError(f"encode returned {len(codes)} codes for {n_variance} observations")
    n_codes = codes.shape[1]
    std = codes.std(axis=0, ddof=1)
    active = np.flatnonzero((std > 0) & (std > prune_threshold * std.max()))
    details = {
        "batch_size": batch_size,
        "n_train_votes": n_train_votes,
        "n_eval_votes": n_eval_votes,
        "n_variance": n_variance,
        "prune_threshold": prune_threshold,
        "seed": seed,
    }
    empty = np.zeros((n_codes, n_factors), dtype=np.int64)
    if len(active) == 0:
        return FactorVAEResult(
            score=0.0,
            train_accuracy=0.0,
            eval_accuracy=0.0,
            votes=empty,
            eval_votes=empty.copy(),
            dim_to_factor=(0,) * n_codes,
            active_dims=(),
            global_std=std,
            factor_names=names,
            details=details,
        )

    def vote_counts(n_votes: int) -> np.ndarray:
        counts = np.zeros((n_codes, n_factors), dtype=np.int64)
        for _ in range(n_votes):
            factor = int(rng.integers(n_factors))
            z = _encode(encode, sampler.sample_fixed(factor, batch_size, rng))
            if z.shape != (batch_size, n_codes):
                raise ValueError(
                    f"encode returned codes of shape {z.shape} for a batch of {batch_size}; "
                    f"expected ({batch_size}, {n_codes})"
                )
            variance = z[:, active].var(axis=0, ddof=1) / std[active] ** 2
            counts[active[int(np.argmin(variance))], factor] += 1
        return counts

    votes = vote_counts(n_train_votes)
    eval_votes = vote_counts(n_eval_votes)
    fallback = int(np.argmax(votes.sum(axis=0)))
    dim_to_factor = np.where(votes.sum(axis=1) > 0, np.argmax(votes, axis=1), fallback)
    train_accuracy = float(votes[np.arange(n_codes), dim_to_factor].sum() / n_train_votes)
    eval_accuracy = float(eval_votes[np.arange(n_codes), dim_to_factor].sum() / n_eval_votes)
    return FactorVAEResult(
        score=eval_accuracy,
        train_accuracy=train_accuracy,
        eval_accuracy=eval_accuracy,
        votes=votes,
        eval_votes=eval_votes,
        dim_to_factor=tuple(int(d) for d in dim_to_factor),
        active_dims=tuple(int(k) for k in active),
        global_std=std,
        factor_names=names,
        details=details,
    )
