"""Building what a :class:`~pyrocollapse.experiment.RunConfig` describes.

:func:`build` seeds, loads and splits the data set and builds the prior, model and
objective (with its KL schedule) into a :class:`Built`; :func:`collapse_callbacks` gives
the collapse callback that ``on_collapse`` asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyrocollapse.experiment.config import (
    ON_COLLAPSE,
    RunConfig,
    _check_config,
    _schedule_argument,
    objectives,
)
from pyrocollapse.experiment.memory import check_memory


@dataclass
class Built:
    """The objects a :class:`RunConfig` describes."""

    config: RunConfig
    dataset: Any
    train: Any
    valid: Any
    vae: Any
    elbo: Any


def build(config: RunConfig) -> Built:
    """Seed, load and split the data, and build the prior, model and objective."""
    import pyro

    from pyrocollapse.data import load_dataset
    from pyrocollapse.models import MODELS
    from pyrocollapse.priors import PRIORS
    from pyrocollapse.schedules import SCHEDULES

    _check_config(config)
    registry = objectives()
    pyro.set_rng_seed(config.seed)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    train, valid = dataset.split(config.valid_fraction, seed=config.seed)
    check_memory(config, len(train), len(valid))
    prior = PRIORS.get(config.prior).from_options(
        config.latent_dim, input_shape=dataset.event_shape, **config.prior_options
    )
    vae = MODELS.get(config.model).from_dataset(
        dataset, latent_dim=config.latent_dim, prior=prior, **config.model_options
    )
    elbo_cls = registry.get(config.elbo)
    options = dict(config.elbo_options)
    schedule = config.schedule_name
    if schedule is not None:
        total = config.epochs * -(-len(train) // config.batch_size)
        sched = dict(config.schedule_options)
        defaults = {
            "linear": {"warmup_steps": max(1, total // 3)},
            "cyclical": {"period": max(1, total // 4)},
            "sigmoid": {"midpoint": max(1, total // 4), "steepness": 10.0 / max(1, total)},
        }
        for k, v in defaults.get(schedule, {}).items():
            sched.setdefault(k, v)
        options[_schedule_argument(elbo_cls)] = SCHEDULES.get(schedule)(**sched)
    return Built(config, dataset, train, valid, vae, elbo_cls(**options))


def collapse_callbacks(config: RunConfig) -> list[Any]:
    """The :mod:`pyrocollapse.callbacks` callback that ``config.on_collapse`` asks for."""
    if config.on_collapse is None:
        return []
    from pyrocollapse import callbacks

    cls = getattr(callbacks, ON_COLLAPSE[config.on_collapse])
    return [cls(min_active_units=config.min_active_units, min_mi=config.min_mi)]
