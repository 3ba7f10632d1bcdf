"""The argument groups shared by the training commands (``run``, ``compare`` and the
Lightning launcher): data, model, prior and objective, training, diagnostics.

Each ``add_*`` function adds its flags to a parser; the help lists the registered names
from :mod:`pyrocollapse._names`, so building a parser imports no torch.
"""

from __future__ import annotations

import argparse

from pyrocollapse._names import (
    DATASET_NAMES,
    ELBO_NAMES,
    MODEL_NAMES,
    PRIOR_NAMES,
    RUN_ESTIMATOR_NAMES,
    SCHEDULE_NAMES,
)

#: Estimators ``run`` applies to the held-out data by default.
RUN_ESTIMATORS = (
    "kl", "au", "mi", "rhat", "sensitivity", "iw", "psis", "causes", "disentanglement",
)  # fmt: skip


def add_data_model_arguments(p: argparse.ArgumentParser) -> None:
    """The data and model flags read by :func:`data_model_fields` (``run``, ``compare`` and
    the Lightning launcher)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASET_NAMES)}")
    g.add_argument(
        "--data-path", default=None, help="folder or file for datasets read from disk (mnist, text)"
    )
    g.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset argument (repeatable)",
    )
    g.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="held-out fraction, not trained on (run and compare diagnose it, the Lightning "
        "launcher validates on it)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", default="mlp", help=f"one of: {', '.join(MODEL_NAMES)}")
    g.add_argument("--latent-dim", type=int, default=16, help="latent dimensions")
    g.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model argument, e.g. hidden=256,128 or likelihood=gaussian (repeatable)",
    )


def add_objective_arguments(p: argparse.ArgumentParser) -> None:
    """The prior, objective and schedule flags read by :func:`objective_fields` (``run`` and
    the Lightning launcher)."""
    g = p.add_argument_group("prior and objective")
    g.add_argument("--prior", default="standard", help=f"one of: {', '.join(PRIOR_NAMES)}")
    g.add_argument(
        "--prior-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra prior argument, e.g. n_components=10 (repeatable)",
    )
    g.add_argument("--elbo", default="annealed", help=f"one of: {', '.join(ELBO_NAMES)}")
    g.add_argument(
        "--elbo-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra objective argument, e.g. beta=4 or free_bits=0.5 (repeatable)",
    )
    g.add_argument(
        "--schedule",
        default=None,
        help=f"KL-weight schedule for any objective: {', '.join(SCHEDULE_NAMES)} "
        "(default: linear warm-up for 'annealed', a constant weight otherwise)",
    )
    g.add_argument(
        "--schedule-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="schedule argument, e.g. warmup_steps=500 (default: scaled to the run's length)",
    )


def _add_data_model_training(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``compare``: data, model, training, diagnostics."""
    add_data_model_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=60, help="passes over the training data")
    g.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    g.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    g.add_argument(
        "--aggressive",
        action="store_true",
        help="aggressive inference-network training (He et al. 2019) until MI stops rising",
    )
    g.add_argument(
        "--on-collapse",
        choices=("warn", "aggressive", "rollback"),
        default=None,
        help="react when monitored active units or MI drop below --min-active-units/--min-mi",
    )
    g.add_argument(
        "--min-active-units", type=int, default=1, help="collapse threshold on active units"
    )
    g.add_argument(
        "--min-mi", type=float, default=None, help="collapse threshold on I_q(x; z) (nats)"
    )
    g = p.add_argument_group("diagnostics (on the held-out data)")
    g.add_argument(
        "--estimators",
        default=",".join(RUN_ESTIMATORS),
        help=f"comma-separated estimators to run, from: {', '.join(RUN_ESTIMATOR_NAMES)} "
        "(disentanglement: MIG, SAP, DCI and FactorVAE scores of each site's posterior means "
        "against the data set's known factors, e.g. --dataset shapes)",
    )
    g.add_argument(
        "--disentanglement-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the disentanglement estimator: max_points (held-out points scored, "
        "2000), regressor (DCI's predictor: gbt or lasso), bins (20), factorvae (true), "
        "n_estimators (DCI's boosting stages, 100) (repeatable)",
    )
    g.add_argument(
        "--num-samples",
        type=int,
        default=8,
        help="z draws per point for the MI, marginal-KL and sensitivity estimates",
    )
    g.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="bootstrap replicates for intervals on the marginal KL and active units (0: none)",
    )
    g.add_argument(
        "--importance-samples",
        type=int,
        default=100,
        help="draws per point for the IW log-likelihood and PSIS k-hat",
    )
    g.add_argument(
        "--posterior-samples",
        type=int,
        default=100,
        help="guide draws per held-out point saved in OUT/posterior.nc (0: no posterior.nc)",
    )
    g.add_argument(
        "--posterior-points",
        type=int,
        default=500,
        help="held-out points whose draws go into OUT/posterior.nc",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
