"""The :class:`~pyrocollapse.experiment.RunConfig` fields that the parsed flags set.

:func:`data_model_fields` and :func:`objective_fields` are shared with the Lightning
launcher; :func:`_base_config` builds the configuration ``run`` and ``compare`` share;
:func:`_estimators` checks ``--estimators`` without importing torch. The registries (and
so torch) are imported only inside the functions.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from typing import Any

from pyrocollapse._names import RUN_ESTIMATOR_NAMES
from pyrocollapse.cli.options import parse_options


def data_model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`~pyrocollapse.experiment.RunConfig` fields of the data and the model.

    Read from the flags every training command shares (``--dataset``, ``--dataset-option``,
    ``--data-path``, ``--valid-fraction``, ``--model``, ``--latent-dim``,
    ``--model-option``); used by ``run``, ``compare`` and the Lightning launcher. A
    ``--data-path`` for a dataset that reads nothing from disk raises ``ValueError``.
    """
    from pyrocollapse.data import DATASETS
    from pyrocollapse.models import MODELS

    loader = DATASETS.get(args.dataset)
    ds_options = parse_options(args.dataset_option, loader, "dataset")
    if args.data_path is not None:
        if "path" not in inspect.signature(loader).parameters:
            takes_path = [
                n
                for n in DATASETS.names()
                if "path" in inspect.signature(DATASETS.get(n)).parameters
            ]
            raise ValueError(
                f"--data-path is for datasets read from disk ({', '.join(takes_path)}); "
                f"dataset {args.dataset!r} takes no path"
            )
        ds_options["path"] = args.data_path
    model_cls = MODELS.get(args.model)
    return {
        "dataset": args.dataset,
        "dataset_options": ds_options,
        "valid_fraction": args.valid_fraction,
        "model": args.model,
        "latent_dim": args.latent_dim,
        "model_options": parse_options(
            args.model_option, model_cls.__init__, "model", skip=("latent_dim", "prior")
        ),
    }


def objective_fields(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`~pyrocollapse.experiment.RunConfig` fields of the prior, objective and schedule.

    Read from ``--prior``/``--prior-option``, ``--elbo``/``--elbo-option`` and
    ``--schedule``/``--schedule-option`` (options of a schedule are checked against
    ``linear``'s when ``--schedule`` is not given); used by ``run`` and the Lightning
    launcher.
    """
    from pyrocollapse.experiment import objectives
    from pyrocollapse.priors import PRIORS
    from pyrocollapse.schedules import SCHEDULES

    elbos = objectives()
    schedule_target = SCHEDULES.get(args.schedule or "linear").__init__
    return {
        "prior": args.prior,
        "prior_options": parse_options(
            args.prior_option, PRIORS.get(args.prior).__init__, "prior", skip=("latent_dim",)
        ),
        "elbo": args.elbo,
        "elbo_options": parse_options(args.elbo_option, elbos.get(args.elbo).__init__, "elbo"),
        "schedule": args.schedule,
        "schedule_options": parse_options(args.schedule_option, schedule_target, "schedule"),
    }


def _base_config(args: argparse.Namespace) -> Any:
    """The :class:`~pyrocollapse.experiment.RunConfig` fields shared by ``run`` and ``compare``."""
    from pyrocollapse.experiment import RunConfig

    return RunConfig(
        **data_model_fields(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        num_samples=args.num_samples,
        estimators=_estimators(args.estimators),
        disentanglement_options=_disentanglement_options(args.disentanglement_option),
        bootstrap=args.bootstrap,
        importance_samples=args.importance_samples,
        posterior_samples=args.posterior_samples,
        posterior_points=args.posterior_points,
        aggressive=args.aggressive,
        on_collapse=args.on_collapse,
        min_active_units=args.min_active_units,
        min_mi=args.min_mi,
    )


def _disentanglement_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``--disentanglement-option KEY=VALUE`` pairs as ``RunConfig.disentanglement_options``."""
    if not pairs:
        return {}
    from pyrocollapse.diagnostics._disentanglement_report import (
        check_disentanglement_options,
        disentanglement_options,
    )

    return check_disentanglement_options(
        parse_options(pairs, disentanglement_options, "disentanglement")
    )


def _estimators(text: str) -> tuple[str, ...]:
    """The names of ``--estimators``, checked against the plain list of estimators (no torch
    import: ``run`` and ``compare`` check them before anything heavy is loaded)."""
    names = tuple(t.strip() for t in str(text).split(",") if t.strip())
    unknown = [n for n in names if n not in RUN_ESTIMATOR_NAMES]
    if unknown or not names:
        raise ValueError(
            f"--estimators {text!r} names unknown estimators {unknown}; valid names: "
            f"{', '.join(RUN_ESTIMATOR_NAMES)}"
        )
    return names
