"""Factor samplers: batches of observations with one generative factor held fixed.

The FactorVAE score needs observations drawn at random and batches sharing one value of
a chosen factor. :class:`FactorSampler` is the protocol it reads;
:class:`DatasetFactorSampler` resamples the rows of a finite data set (a discrete
factor's class or a continuous factor's equal-width bin held fixed) and
:class:`GenerativeFactorSampler` draws factors and renders them with a simulator. A
``numpy.random.Generator`` passed to every call is the only source of randomness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics.disentanglement._common import (
    _as_matrix,
    _discrete_mask,
    _factor_labels,
    _names,
)

__all__ = ["DatasetFactorSampler", "FactorSampler", "GenerativeFactorSampler"]


@runtime_checkable
class FactorSampler(Protocol):
    """Draws observations, at random or with one factor held fixed.

    Anything with these members works with :func:`factorvae_score`; observations are
    whatever the encoder passed to it accepts (usually a tensor of shape
    ``(B, *event_shape)``). ``rng`` is the only source of randomness.
    """

    @property
    def n_factors(self) -> int:
        """``F``, the number of factors."""
        ...

    def sample(self, batch_size: int, rng: np.random.Generator) -> Any:
        """``batch_size`` observations with independently drawn factors."""
        ...

    def sample_fixed(self, factor: int, batch_size: int, rng: np.random.Generator) -> Any:
        """``batch_size`` observations sharing one randomly drawn value of factor
        ``factor`` (in ``[0, F)``), the other factors drawn at random."""
        ...


class DatasetFactorSampler:
    """Resample rows of a finite data set, holding one factor's value (or bin) fixed.

    ``sample_fixed(f, B, rng)`` picks a random row, takes its class of factor ``f``
    (its value for a discrete factor, its equal-width bin for a continuous one), and
    draws ``B`` rows of that class uniformly with replacement. On a full factor grid
    (as dSprites) this is exactly the conditional distribution; on random draws of the
    factors (as ``make_shapes``) continuous factors are held fixed up to their bin
    width, ``range / bins``.

    Parameters
    ----------
    observations : torch.Tensor or numpy.ndarray
        Shape ``(N, ...)``: what the encoder reads, indexed along dim 0 by integer
        arrays. Pass precomputed codes of shape ``(N, K)`` with an identity encoder to
        score a deterministic encoder without running it again.
    factors : torch.Tensor or numpy.ndarray
        Shape ``(N, F)``, real: the factors of the same rows.
    discrete_factors : None, sequence of bool or sequence of int
        Which factor columns are discrete (see :func:`mig`).
    bins : int
        Equal-width bins for continuous factors (>= 2).
    factor_names : sequence of str, optional
        ``F`` names.

    Raises
    ------
    TypeError, ValueError
        If the inputs have the wrong type or disagree in length.
    """

    def __init__(
        self,
        observations: torch.Tensor | np.ndarray,
        factors: object,
        *,
        discrete_factors: object = None,
        bins: int = 20,
        factor_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(observations, (torch.Tensor, np.ndarray)):
            raise TypeError(
                "observations must be a torch.Tensor or numpy.ndarray of shape (N, ...), "
                f"got {type(observations).__name__}"
            )
        if observations.ndim < 1:
            raise ValueError("observations must have at least one dimension (rows)")
        f = _as_matrix("factors", factors)
        if len(observations) != len(f):
            raise ValueError(
                f"observations and factors must have the same number of rows, "
                f"got {len(observations)} and {len(f)}"
            )
        self.bins = check_int("bins", bins, minimum=2)
        self.observations = observations
        self.factors = f
        self.discrete = _discrete_mask(discrete_factors, f)
        self.factor_names = _names(factor_names, f.shape[1])
        self._labels = _factor_labels(f, self.discrete, self.bins)
        self._order = [np.argsort(lab, kind="stable") for lab in self._labels]
        self._counts = [np.bincount(lab) for lab in self._labels]
        self._starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in self._counts]

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        *,
        observations: torch.Tensor | np.ndarray | None = None,
        discrete_factors: object = None,
        bins: int = 20,
    ) -> DatasetFactorSampler:
        """A sampler over a :class:`pyrocollapse.data.Dataset` (anything with ``data``,
        ``factors`` and ``factor_names``), e.g. ``load_dataset("shapes")``.

        Parameters
        ----------
        dataset : Dataset
            Must have known ``factors``.
        observations : torch.Tensor or numpy.ndarray, optional
            Shape ``(N, ...)``: used instead of ``dataset.data`` (e.g. its codes).
        discrete_factors, bins
            As for the constructor.

        Raises
        ------
        TypeError
            If ``dataset`` has no ``data`` / ``factors`` attributes.
        ValueError
            If ``dataset.factors`` is ``None``.
        """
        if not (hasattr(dataset, "data") and hasattr(dataset, "factors")):
            raise TypeError(
                "dataset must have data and factors attributes (a pyrocollapse Dataset), "
                f"got {type(dataset).__name__}"
            )
        if dataset.factors is None:
            raise ValueError(
                f"dataset {getattr(dataset, 'name', '')!r} has no known factors; "
                "disentanglement needs a data set with factors (e.g. 'shapes')"
            )
        names = tuple(getattr(dataset, "factor_names", ())) or None
        return cls(
            dataset.data if observations is None else observations,
            dataset.factors,
            discrete_factors=discrete_factors,
            bins=bins,
            factor_names=names,
        )

    @property
    def n_factors(self) -> int:
        """``F``, the number of factors."""
        return self.factors.shape[1]

    def __len__(self) -> int:
        return len(self.factors)

    def _take(self, rows: np.ndarray) -> Any:
        if isinstance(self.observations, torch.Tensor):
            return self.observations[torch.from_numpy(rows).to(self.observations.device)]
        return self.observations[rows]

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``(batch_size,)`` row indices drawn uniformly with replacement."""
        return rng.integers(len(self), size=batch_size)

    def sample_fixed_indices(
        self, factor: int, batch_size: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``(batch_size,)`` row indices sharing the class of ``factor`` of a random row."""
        anchor = int(rng.integers(len(self)))
        group = self._labels[factor][anchor]
        picks = rng.integers(self._counts[factor][group], size=batch_size)
        return self._order[factor][self._starts[factor][group] + picks]

    def sample(self, batch_size: int, rng: np.random.Generator) -> Any:
        """``batch_size`` rows drawn uniformly with replacement."""
        return self._take(self.sample_indices(batch_size, rng))

    def sample_fixed(self, factor: int, batch_size: int, rng: np.random.Generator) -> Any:
        """``batch_size`` rows whose factor ``factor`` shares one class (see above)."""
        return self._take(self.sample_fixed_indices(factor, batch_size, rng))


class GenerativeFactorSampler:
    """Draw factors, then render observations from them with a simulator.

    Parameters
    ----------
    sample_factors : callable
        ``sample_factors(batch_size, rng)`` returns a numpy array or tensor of shape
        ``(batch_size, F)`` of independently drawn factors; ``rng`` is a
        ``numpy.random.Generator``.
    render : callable
        ``render(factors)`` returns the observations of a ``(B, F)`` array (of the type
        ``sample_factors`` returns) in the form the encoder reads.
    n_factors : int
        ``F`` (>= 1).
    factor_names : sequence of str, optional
        ``F`` names.
    """

    def __init__(
        self,
        sample_factors: Callable[[int, np.random.Generator], Any],
        render: Callable[[Any], Any],
        *,
        n_factors: int,
        factor_names: Sequence[str] | None = None,
    ) -> None:
        if not callable(sample_factors):
            raise TypeError(f"sample_factors must be callable, got {type(sample_factors).__name__}")
        if not callable(render):
            raise TypeError(f"render must be callable, got {type(render).__name__}")
        self._sample_factors = sample_factors
        self._render = render
        self._n_factors = check_int("n_factors", n_factors, minimum=1)
        self.factor_names = _names(factor_names, self._n_factors)

    @property
    def n_factors(self) -> int:
        """``F``, the number of factors."""
        return self._n_factors

    def _draw(self, batch_size: int, rng: np.random.Generator) -> Any:
        v = self._sample_factors(batch_size, rng)
        shape = tuple(v.shape) if hasattr(v, "shape") else None
        if shape != (batch_size, self._n_factors):
            raise ValueError(
                f"sample_factors({batch_size}, rng) must return shape "
                f"({batch_size}, {self._n_factors}), got {shape}"
            )
        return v

    def sample(self, batch_size: int, rng: np.random.Generator) -> Any:
        """Render ``batch_size`` independently drawn factor vectors."""
        return self._render(self._draw(batch_size, rng))

    def sample_fixed(self, factor: int, batch_size: int, rng: np.random.Generator) -> Any:
        """Render ``batch_size`` factor vectors whose column ``factor`` is set to the
        first row's value."""
        v = self._draw(batch_size, rng)
        v = v.clone() if isinstance(v, torch.Tensor) else np.array(v, copy=True)
        v[:, factor] = v[0, factor]
        return self._render(v)
