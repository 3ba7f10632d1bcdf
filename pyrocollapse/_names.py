"""The names the command line offers, as plain tuples (no torch import).

``pyrocollapse --help`` lists the priors, objectives, datasets, models, schedules and
estimators by name. Importing the registries that hold them imports torch and Pyro,
which would make ``--help`` and argument errors take seconds, so the help reads these
tuples instead. Each tuple equals its registry's names, in registration order;
``tests/cli/test_cli_startup.py`` fails when they drift apart, so a new registry entry is
added here too. Names are still *validated* against the registries themselves.
"""

from __future__ import annotations

__all__ = [
    "DATASET_NAMES",
    "ELBO_NAMES",
    "ESTIMATOR_NAMES",
    "MODEL_NAMES",
    "PRIOR_NAMES",
    "RUN_ESTIMATOR_NAMES",
    "SCHEDULE_NAMES",
]

#: :data:`pyrocollapse.priors.PRIORS`
PRIOR_NAMES = ("standard", "learnable", "mixture", "vamp", "hierarchical", "ard", "flow")
#: :data:`pyrocollapse.elbo.ELBOS`
ELBO_NAMES = (
    "elbo",
    "annealed",
    "beta",
    "freebits",
    "mi",
    "infovae",
    "iwae",
    "betatc",
    "factorvae",
)
#: :data:`pyrocollapse.data.DATASETS`
DATASET_NAMES = (
    "digits",
    "ppca",
    "mixture",
    "shapes",
    "sequences",
    "mnist",
    "fashion-mnist",
    "text",
)
#: :data:`pyrocollapse.models.MODELS`
MODEL_NAMES = ("mlp", "linear", "ladder", "conv", "sequence")
#: :data:`pyrocollapse.schedules.SCHEDULES`
SCHEDULE_NAMES = ("constant", "linear", "sigmoid", "cyclical")
#: :data:`pyrocollapse.diagnostics.ESTIMATORS`
ESTIMATOR_NAMES = ("kl", "au", "mi", "rhat", "sensitivity", "psis", "iw", "causes")
#: :data:`ESTIMATOR_NAMES` and :data:`pyrocollapse.experiment.RUN_ONLY_ESTIMATORS`: what
#: ``run --estimators`` and ``compare --estimators`` accept
RUN_ESTIMATOR_NAMES = (*ESTIMATOR_NAMES, "disentanglement")
