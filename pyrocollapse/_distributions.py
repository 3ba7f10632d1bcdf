"""Views of Pyro/torch distributions used by the objectives and the diagnostics.

Torch distributions cannot be indexed or reshaped generically; these helpers give the
views the estimators need: without a mask wrapper (:func:`strip_mask`), a scalar latent
as a one-dimensional vector (:func:`as_vector`), one vectorised particle
(:func:`particle_slice`) and a subset of rows (:func:`take_rows`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pyro.distributions import Delta, Independent
from pyro.distributions.torch_distribution import (
    ExpandedDistribution,
    MaskedDistribution,
    TorchDistribution,
)
from torch.distributions import Normal, TransformedDistribution

__all__ = ["as_vector", "particle_slice", "strip_mask", "take_rows", "unwrap"]


def unwrap(d: Any) -> Any:
    """The innermost distribution under ``Independent`` and ``ExpandedDistribution``."""
    while isinstance(d, (Independent, ExpandedDistribution)):
        d = d.base_dist
    return d


def strip_mask(d: Any) -> tuple[Any, Any]:
    """``(d without its MaskedDistribution wrapper, the mask over d's batch)``, or
    ``(d, None)``. Handles ``Masked(Independent(...))`` and ``Independent(Masked(...))``."""
    if isinstance(d, MaskedDistribution):
        m = d._mask
        if isinstance(m, bool):
            m = torch.tensor(m)
        return d.base_dist, m
    if isinstance(d, Independent) and isinstance(d.base_dist, MaskedDistribution):
        base, m = strip_mask(d.base_dist)
        n = d.reinterpreted_batch_ndims
        m = torch.as_tensor(m).expand(base.batch_shape)
        m = m.reshape((*m.shape[:m.dim() - n], -1)).all(-1) if n else m
        return Independent(base, n), m
    return d, None


class _View(TorchDistribution):
    """A distribution seen through a reshaping of another, ``base``: support and
    reparameterisation are the base's."""

    arg_constraints: ClassVar[dict[str, Any]] = {}

    def __init__(self, base: Any, batch_shape: Any, event_shape: Any) -> None:
        self.base = base
        super().__init__(batch_shape, event_shape, validate_args=False)

    @property
    def support(self) -> Any:
        return self.base.support

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample


def as_vector(d: Any) -> Any:
    """A distribution with event shape ``()`` viewed with event shape ``(1,)``."""
    return Independent(_Unsqueezed(d), 1)


class _Unsqueezed(_View):
    """``d`` with a trailing batch dimension of size 1 (so that ``Independent(., 1)``
    gives event shape ``(1,)``)."""

    def __init__(self, base: Any) -> None:
        super().__init__(base, (*base.batch_shape, 1), base.event_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean.unsqueeze(-1)

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance.unsqueeze(-1)

    def expand(self, batch_shape: Any, _instance: Any = None) -> _Unsqueezed:
        return _Unsqueezed(self.base.expand(torch.Size(batch_shape)[:-1]))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value.squeeze(-1)).unsqueeze(-1)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.base.rsample(torch.Size(sample_shape)).unsqueeze(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.base.sample(torch.Size(sample_shape)).unsqueeze(-1)


def particle_slice(d: Any, i: int, b: int) -> Any:
    """Particle ``i`` of a distribution whose batch shape is ``(K, B)`` (or broadcasts
    to it): a distribution of batch shape ``(B,)``."""
    if len(d.batch_shape) < 2:
        return d  # the same for every particle
    if d.batch_shape[0] == 1:
        i = 0
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        return Independent(particle_slice(d.base_dist, i, b), 1)
    if isinstance(d, Normal) and type(d).log_prob is Normal.log_prob:
        return type(d)(d.loc[i], d.scale[i])
    return _ParticleSlice(d, i)


class _ParticleSlice(_View):
    """Particle ``i`` of a distribution with batch shape ``(K, *rest)``: batch shape
    ``rest``. ``log_prob`` evaluates the whole distribution and keeps particle i."""

    def __init__(self, base: Any, i: int) -> None:
        self.i = i
        super().__init__(base, base.batch_shape[1:], base.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        rest = len(self.batch_shape) + len(self.event_shape)
        lp = self.base.log_prob(value.unsqueeze(-rest - 1))  # (..., K, *rest)
        return lp.select(-len(self.batch_shape) - 1, self.i)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        return self.base.rsample(shape)[(slice(None),) * len(shape) + (self.i,)]

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            draw = self.base.rsample(shape) if self.has_rsample else self.base.sample(shape)
        return draw[(slice(None),) * len(shape) + (self.i,)]




def take_rows(d: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a distribution whose batch shape starts with the row dimension:
    batch ``(B, *rest)`` becomes ``(len(idx), *rest)``.

    Exact for ``Independent``, ``Delta``, ``TransformedDistribution`` (transforms
    without per-row parameters, as flows and bijections to constrained supports are) and
    every torch distribution whose parameters are broadcast to its batch shape (Normal,
    Categorical, Bernoulli, MultivariateNormal, ...). A distribution with batch shape
    ``()`` or ``(1, ...)`` is the same for every row and is returned unchanged.

    Raises
    ------
    NotImplementedError
        For a distribution whose rows cannot be separated.
    """
    batch = d.batch_shape
    if len(batch) == 0 or batch[0] == 1:
        return d
    if isinstance(d, MaskedDistribution):
        return take_rows(d.base_dist, idx)
    if isinstance(d, torch.distributions.Independent):  # Pyro's or torch's
        return type(d)(take_rows(d.base_dist, idx), d.reinterpreted_batch_ndims)
    if isinstance(d, ExpandedDistribution):
        base = d.base_dist
        rows = (len(idx), *batch[1:])
        if len(base.batch_shape) == len(batch) and base.batch_shape[0] == batch[0]:
            return take_rows(base, idx).expand(rows)
        return base.expand(rows)
    if isinstance(d, Delta):
        v = d.v.expand(batch + d.event_shape)[idx]
        return Delta(v, d.log_density.expand(batch)[idx], event_dim=d.event_dim)
    if isinstance(d, TransformedDistribution):
        return type(d)(take_rows(d.base_dist, idx), d.transforms)
    params = {
        k: d.__dict__[k] for k in getattr(d, "arg_constraints", {}) if k in d.__dict__
    }
    if "logits" in params and "probs" in params:  # both cached: one defines the other
        del params["probs"]
    if not params:
        raise NotImplementedError(f"rows of a {type(d).__name__} cannot be taken")
    taken = {}
    for k, v in params.items():
        if not isinstance(v, torch.Tensor):
            taken[k] = v
            continue
        extra = max(v.dim() - len(batch), 0)
        full = v.expand(*batch, *v.shape[v.dim() - extra :]) if extra else v.expand(batch)
        taken[k] = full[idx]
    try:
        return type(d)(**taken, validate_args=False)
    except (TypeError, ValueError) as e:
        raise NotImplementedError(f"rows of a {type(d).__name__} cannot be taken: {e}") from e
