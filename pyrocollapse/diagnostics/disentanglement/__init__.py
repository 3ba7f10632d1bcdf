"""Disentanglement metrics for codes of data whose generative factors are known.

A *code* is one vector per observation, typically the posterior mean E_q[z | x] of a
VAE's encoder; the *factors* are the ground-truth generative factors of the same
observations (e.g. ``Dataset.factors`` of the ``"shapes"`` data: shape, scale,
pos_x, pos_y). Four standard scores, each 1 for a code whose every dimension tracks
exactly one factor and 0 (or chance) for a code that mixes them:

* :func:`mig`: the mutual information gap (Chen et al., 2018);
* :func:`dci`: disentanglement, completeness and informativeness of a predictor's
  importance matrix (Eastwood & Williams, 2018);
* :func:`sap`: the separated attribute predictability (Kumar et al., 2018);
* :func:`factorvae_score`: the majority-vote classifier score of Kim & Mnih (2018),
  which needs batches of observations with one factor held fixed; these come from a
  :class:`FactorSampler` (:class:`DatasetFactorSampler` resamples a finite data set,
  :class:`GenerativeFactorSampler` calls a simulator).

:func:`disentanglement` computes all four from ``codes`` and ``factors`` alone (the
FactorVAE score through a :class:`DatasetFactorSampler` over the codes themselves,
which equals encoding the resampled observations with a deterministic encoder).

The package holds one concept per module: ``results`` (the result records),
``samplers`` (the factor samplers), ``factorvae`` (:func:`factorvae_score`), ``summary``
(:func:`disentanglement`), the private metric modules ``_mig``, ``_sap`` and ``_dci``
(private so that the package's ``mig``, ``sap`` and ``dci`` are always the functions)
and ``_common`` (input checks, labels and JSON helpers). Every public name is importable
from ``pyrocollapse.diagnostics.disentanglement``.

Conventions
-----------
* ``codes`` has shape ``(N, K)`` and ``factors`` shape ``(N, F)``; rows are the same
  observations. Torch tensors, numpy arrays and nested sequences of real numbers are
  accepted; computation is in float64 numpy.
* A factor is *discrete* (nominal or ordinal, compared by class) or *continuous*. With
  ``discrete_factors=None`` a column is taken as discrete when it holds at most
  :data:`MAX_DISCRETE_VALUES` distinct values and at most half as many distinct values
  as rows; pass a boolean mask or a list of column indices to decide explicitly.
* Mutual information is in nats, from histograms: each code dimension (and each
  continuous factor) is cut into ``bins`` equal-width bins between its minimum and
  maximum; discrete factors keep their distinct values as classes.
* Every randomised step (train/test splits, tree ensembles, FactorVAE votes) draws from
  ``numpy.random.default_rng(seed)`` or ``random_state=seed``; the global random state is
  never read or changed, so equal inputs and seed give equal results.

References
----------
Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement in VAEs",
NeurIPS. Eastwood & Williams (2018), "A Framework for the Quantitative Evaluation of
Disentangled Representations", ICLR. Kumar, Sattigeri & Balakrishnan (2018), "Variational
Inference of Disentangled Latent Concepts from Unlabeled Observations", ICLR. Kim & Mnih
(2018), "Disentangling by Factorising", ICML.

"""

from __future__ import annotations

from pyrocollapse.diagnostics.disentanglement._common import MAX_DISCRETE_VALUES
from pyrocollapse.diagnostics.disentanglement._dci import dci
from pyrocollapse.diagnostics.disentanglement._mig import mig
from pyrocollapse.diagnostics.disentanglement._sap import sap
from pyrocollapse.diagnostics.disentanglement.factorvae import factorvae_score
from pyrocollapse.diagnostics.disentanglement.results import (
    DCIResult,
    DisentanglementResult,
    FactorVAEResult,
    MetricResult,
)
from pyrocollapse.diagnostics.disentanglement.samplers import (
    DatasetFactorSampler,
    FactorSampler,
    GenerativeFactorSampler,
)
from pyrocollapse.diagnostics.disentanglement.summary import disentanglement

__all__ = [
    "MAX_DISCRETE_VALUES",
    "DCIResult",
    "DatasetFactorSampler",
    "DisentanglementResult",
    "FactorSampler",
    "FactorVAEResult",
    "GenerativeFactorSampler",
    "MetricResult",
    "dci",
    "disentanglement",
    "factorvae_score",
    "mig",
    "sap",
]
