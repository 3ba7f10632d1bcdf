"""pyrocollapse: train VAEs against posterior collapse, diagnose it, compare remedies.

``pyrocollapse run`` trains a VAE on a dataset, prints progress and a collapse report, and
writes a report folder (see :mod:`pyrocollapse.report_folder`); ``pyrocollapse report DIR``
re-renders a folder's figures and ``report.html`` from its saved files.
``python -m pyrocollapse`` is the same command.

``--help``, ``--version`` and usage errors import no torch (the help lists the registered
names from :mod:`pyrocollapse._names`), so they answer in a fraction of a second; names
are checked against the registries once the arguments parse.

Exit status: 0 on success; 2 for a user error (a bad option, name or value, a missing or
unsuitable file or folder), printed as one line ``pyrocollapse: error: ...`` on stderr;
1 for an unexpected failure while running; 130 when interrupted (Ctrl-C). No traceback
is printed unless ``--verbose`` is given, which adds it above the one-line message.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pyrocollapse._names import (
    DATASET_NAMES,
    ELBO_NAMES,
    MODEL_NAMES,
    PRIOR_NAMES,
    RUN_ESTIMATOR_NAMES,
    SCHEDULE_NAMES,
)

__all__ = ["main", "parse_options"]

#: Exceptions that mean "the user asked for something that cannot be done": exit status 2.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    NotImplementedError,
)


class UsageError(Exception):
    """A user error detected by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"pyrocollapse: error: {message} (see '{self.prog} --help')\n")


def _coerce(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(_coerce(t) for t in text.split(",") if t)
    return text


def parse_options(
    pairs: Sequence[str], target: Callable[..., Any], what: str, skip: Sequence[str] = ()
) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into keyword arguments of ``target``.

    Each value is converted to the type its parameter is annotated with (typed by
    jsonargparse: ``n_components=10`` an int, ``hidden=256,128`` or ``hidden=[256, 128]``
    a tuple, ``name=none`` the string "none" for a ``str`` and ``None`` only where the
    annotation admits it as ``null``); unannotated parameters get the best guess
    (bool/None/int/float/comma tuple). Unknown keys and values of the wrong type raise
    ``ValueError`` naming the option and the accepted keys or type.
    """
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise TypeError(
            f"pairs must be a list of KEY=VALUE strings, got {type(pairs).__name__} {pairs!r}"
        )
    params = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", *skip)
    ]
    hints = _annotations(target)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{what} option {pair!r} must look like KEY=VALUE")
        if key not in params:
            raise ValueError(
                f"unknown {what} option {key!r}; accepted: {', '.join(params) or 'none'}"
            )
        out[key] = _typed_value(value, hints.get(key), f"{what} option {key}")
    return out


def _annotations(target: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hints of ``target``'s parameters (``{}`` where they cannot be
    resolved)."""
    import typing

    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: no hints, best guess
        return {}


def _is_sequence(annotation: Any) -> bool:
    import collections.abc
    import typing

    origin = typing.get_origin(annotation)
    if origin in (tuple, list, collections.abc.Sequence):
        return True
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if str in members:  # "a,b" is then a string, not a list written with commas
        return False
    return any(_is_sequence(a) for a in members)


def _typed_value(text: str, annotation: Any, label: str) -> Any:
    """``text`` converted to the constructor parameter's annotated type with jsonargparse
    (the library behind LightningCLI): JSON syntax quotes and nests (``'"none"'``,
    ``[256, 128]``), a sequence may also be written ``256,128``, and a value that does
    not fit the type is a ``ValueError`` naming the option and the type. Unannotated
    parameters keep the best guess of :func:`_coerce`."""
    if annotation is None or annotation is Any:
        return _coerce(text)
    from jsonargparse import ArgumentParser

    value = text.strip()
    if _is_sequence(annotation) and value and value[0] not in "[(" and value != "null":
        value = f"[{value}]"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=annotation)
    try:
        return parser.parse_args(["--value", value]).value
    except (argparse.ArgumentError, ValueError, TypeError):
        name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        raise ValueError(f"{label}={text!r} is not a valid {name}") from None


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


def _build_parser() -> argparse.ArgumentParser:
    """The command line's parser; building it and parsing with it import no torch (the help
    lists names from :mod:`pyrocollapse._names`), so ``--help``, ``--version`` and usage
    errors answer at once."""
    parser = _Parser(prog="pyrocollapse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="train a VAE, print the collapse report, write a report folder",
        description="Train a VAE on a dataset, print progress and a collapse report, and write "
        "OUT/metrics.json, OUT/history.csv, OUT/posterior.nc, OUT/figures/*.png, OUT/report.html "
        "and OUT/model.pt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data_model_training(run)
    add_objective_arguments(run)
    run.add_argument(
        "--device",
        default=None,
        help="where to train and diagnose: cpu, cuda, cuda:1, ... (default: the CPU)",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice, all cores)",
    )
    run.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a JSON or YAML file of run settings (the fields of RunConfig, e.g. epochs: 30, "
        "prior: mixture, prior_options: {n_components: 5}); flags given on the command line "
        "override it",
    )
    run.add_argument("--seed", type=int, default=0, help="random seed")
    g = run.add_argument_group("output")
    g.add_argument("--out", default="runs/latest", help="report folder to write")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing, non-empty --out folder (and, without --resume, discard an "
        "interrupted run's checkpoint)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="write a training checkpoint every N epochs into OUT.partial/.checkpoint/ (removed "
        "when the run finishes), so that --resume can continue an interrupted run",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run into --out from its checkpoint (same options; "
        "keeps checkpointing every --checkpoint-every epochs, 1 by default); without a "
        "checkpoint, start afresh",
    )

    cmp = sub.add_parser(
        "compare",
        help="train every prior x objective x seed and compare the remedies",
        description="Train every combination of --priors, --elbos, --variants (model "
        "variants, optional) and --seeds (each into OUT/runs/<prior>__<elbo>__seed<k>/, or "
        "<prior>__<elbo>__<variant>__seed<k>/ with --variants, a full report folder) and "
        "write OUT/runs.csv, "
        "OUT/comparison.csv (mean and spread over seeds, and each cell's paired per-seed "
        "differences against --baseline with 95% t-intervals) and OUT/figures/au_vs_nll.png "
        "(active units and MI against held-out NLL). Runs with the same seed share their "
        "train/held-out split; a cell's rank is 1 + the number of cells whose paired "
        "difference of held-out IW log-likelihood to it has an interval above 0, so cells "
        "that cannot be told apart are printed as ties (=1). "
        "Every option value of the grid is checked before any run (exit 2). A finished run "
        "is reused when the grid is started again only if its folder is complete and its "
        "configuration fingerprint matches; otherwise it is trained again and the reason "
        "said. A failed run is recorded and does not stop the others; the command then "
        "exits 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data_model_training(cmp)
    cmp.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a JSON or YAML file: priors, elbos, variants (lists), seeds, baseline, jobs, "
        "prior_options, elbo_options and variant_options (per name) and base (the fields of "
        "RunConfig); flags given on the command line override it",
    )
    g = cmp.add_argument_group("grid")
    g.add_argument(
        "--priors", default="standard", help=f"comma-separated, from: {', '.join(PRIOR_NAMES)}"
    )
    g.add_argument(
        "--elbos",
        default="elbo,annealed",
        help=f"comma-separated, from: {', '.join(ELBO_NAMES)}",
    )
    g.add_argument(
        "--prior-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="option for one prior, e.g. mixture.n_components=10 (repeatable)",
    )
    g.add_argument(
        "--elbo-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="option for one objective, e.g. freebits.free_bits=0.5 (repeatable)",
    )
    g.add_argument(
        "--variants",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="model variants, a third axis of the grid (comma-separated or repeatable), each "
        "configured by --variant-option; runs go into OUT/runs/<prior>__<elbo>__<variant>__"
        "seed<k>/ (default: no variant axis)",
    )
    g.add_argument(
        "--variant-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="model option of one variant, applied on top of --model-option, e.g. "
        "skip.skip=true or bn.posterior=batchnorm or refine.refine_steps=5 (repeatable)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds 0..SEEDS-1 per combination (at least 2 for intervals; 3 or more to rank)",
    )
    g.add_argument(
        "--from-run",
        default=None,
        metavar="RUN_FOLDER",
        help="run the grid that a run's report suggests (its causes' remedies against the "
        "run's own prior and objective), with that run's data, model and training settings "
        "(read from RUN_FOLDER/metrics.json; --priors, --elbos and the data, model and "
        "training options are then taken from there)",
    )
    g.add_argument(
        "--baseline",
        default=None,
        metavar="PRIOR:OBJECTIVE[:VARIANT]",
        help="the cell every other cell is compared with, paired by seed (PRIOR:OBJECTIVE:"
        "VARIANT with --variants); None: the first of --priors with the first of --elbos "
        "(and the first of --variants)",
    )
    g.add_argument("--jobs", type=int, default=1, help="runs in parallel worker processes")
    g.add_argument("--out", default="runs/compare", help="grid folder (reused to resume)")

    rep = sub.add_parser(
        "report",
        help="re-render a report folder's figures and report.html from its saved files",
        description="Rebuild OUT/report.html and the figures that come from metrics.json and "
        "history.csv (figures that need the model, such as traversals, are kept).",
    )
    rep.add_argument("folder", help="a report folder written by 'pyrocollapse run'")
    rep.add_argument(
        "--no-figures", action="store_true", help="only re-render report.html, not the figures"
    )
    rep.add_argument(
        "--self-contained",
        action="store_true",
        help="embed the figures in report.html (one file that needs nothing beside it)",
    )
    rep.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    return parser


def _version() -> str:
    from pyrocollapse import __version__

    return f"pyrocollapse {__version__}"


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


def run(args: argparse.Namespace) -> int:
    """The ``run`` sub-command: one run through :func:`pyrocollapse.experiment.run_experiment`."""
    _estimators(args.estimators)  # before torch is imported: a typo answers at once
    from dataclasses import replace

    from pyrocollapse.experiment import run_experiment

    config = replace(_base_config(args), **objective_fields(args), seed=args.seed)
    if args.config is not None:
        defaults = _defaults_of(args)
        default = replace(_base_config(defaults), **objective_fields(defaults), seed=defaults.seed)
        config = _merge_config(_read_config(args.config), config, default)
    config = config.validate()
    if args.threads is not None:
        import torch

        from pyrocollapse._validation import check_int

        torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
    # on a terminal fit draws bars; elsewhere it logs periodic progress lines (stderr)
    progress = not args.no_progress
    try:
        run_experiment(
            config,
            args.out,
            overwrite=args.overwrite,
            progress=progress,
            echo=True,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            device=args.device,
        )
    except KeyboardInterrupt:
        from pyrocollapse.experiment import work_folder

        checkpoint = work_folder(args.out) / ".checkpoint"
        if (args.checkpoint_every is not None or args.resume) and any(checkpoint.glob("*.pt")):
            if args.verbose:
                traceback.print_exc()
            print(
                "pyrocollapse: interrupted; nothing half-written was kept, and the same command "
                f"with --resume continues from the checkpoint in {checkpoint}/",
                file=sys.stderr,
            )
            return 130
        raise
    return 0


def _per_name_options(
    pairs: Sequence[str], names: Sequence[str], registry: Any, what: str, skip: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Parse ``NAME.KEY=VALUE`` options into ``{NAME: {KEY: value}}``."""
    grouped: dict[str, list[str]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise ValueError(
                f"{what} option {pair!r} must look like NAME.KEY=VALUE, e.g. mixture.n_components=10"
            )
        if name not in names:
            raise ValueError(
                f"{what} option {pair!r} names {name!r}, which is not in the grid ({', '.join(names)})"
            )
        grouped.setdefault(name, []).append(rest)
    return {
        n: parse_options(v, registry.get(n).__init__, what, skip=skip) for n, v in grouped.items()
    }


def compare_command(args: argparse.Namespace) -> int:
    """The ``compare`` sub-command."""
    if args.from_run is None:  # before torch is imported (--from-run uses the run's own)
        _estimators(args.estimators)
    from pyrocollapse._validation import check_int
    from pyrocollapse.comparison import compare
    from pyrocollapse.experiment import objectives
    from pyrocollapse.priors import PRIORS

    ELBOS = objectives()  # the registry, with "factorvae"
    variants: list[str] | None = None
    variant_options: dict[str, dict[str, Any]] = {}
    if args.from_run is not None:
        if args.variants or args.variant_option:
            raise ValueError(
                "--from-run takes the run's own grid; drop --variants and --variant-option"
            )
        base, priors, elbos, prior_options, elbo_options = _grid_from_run(args.from_run)
        print(
            f"grid suggested by {args.from_run}: --priors {','.join(priors)} --elbos "
            f"{','.join(elbos)} with its data, model and training settings",
            flush=True,
        )
    else:
        grid = {} if args.config is None else _read_config(args.config)
        unknown = set(grid) - set(_COMPARE_KEYS)
        if unknown:
            raise ValueError(
                f"--config {args.config!r}: unknown key(s) {sorted(unknown)}; accepted: "
                f"{', '.join(_COMPARE_KEYS)}"
            )
        defaults = _defaults_of(args)
        for key in ("priors", "elbos", "seeds", "baseline", "jobs", "variants"):
            if key in grid and getattr(args, key) == getattr(defaults, key):
                value = grid[key]
                if key in ("priors", "elbos") and isinstance(value, (list, tuple)):
                    value = ",".join(map(str, value))
                if key == "variants":
                    value = _config_variants(args.config, value)
                setattr(args, key, value)
        priors = [n.strip() for n in args.priors.split(",") if n.strip()]
        elbos = [n.strip() for n in args.elbos.split(",") if n.strip()]
        for n in priors:
            PRIORS.get(n)
        for n in elbos:
            ELBOS.get(n)
        base = _base_config(args)
        if "base" in grid:
            base = _merge_config(grid["base"], base, _base_config(defaults))
        prior_options = {
            **grid.get("prior_options", {}),
            **_per_name_options(args.prior_option, priors, PRIORS, "prior", skip=("latent_dim",)),
        }
        elbo_options = {
            **grid.get("elbo_options", {}),
            **_per_name_options(args.elbo_option, elbos, ELBOS, "elbo"),
        }
        variants, variant_options = _variant_grid(args, grid, base)
    summary = compare(
        priors=priors,
        elbos=elbos,
        seeds=check_int("--seeds", args.seeds, minimum=1),
        out=args.out,
        base=base,
        prior_options=prior_options,
        elbo_options=elbo_options,
        jobs=check_int("--jobs", args.jobs, minimum=1),
        iw_samples=args.importance_samples,
        progress=not args.no_progress,
        echo=True,
        baseline=args.baseline,
        variants=variants,
        variant_options=variant_options,
    )
    n_ok, n_failed = int(summary["n_ok"].sum()), int(summary["n_failed"].sum())
    print(
        f"\nwrote {args.out}/: runs.csv, comparison.csv, figures/au_vs_nll.png, runs/ ({n_ok} ok, {n_failed} failed)"
    )
    if n_failed:  # a grid with failed runs exits 1, naming them
        from pathlib import Path

        import pandas as pd

        runs = pd.read_csv(Path(args.out) / "runs.csv", keep_default_na=False)
        failed = runs[runs["status"] != "ok"]
        print(f"pyrocollapse: {n_failed} run(s) failed:", file=sys.stderr)
        for rid, error in zip(failed["run"], failed["error"]):
            print(f"  {rid}: {error} (see runs/{rid}.error.json)", file=sys.stderr)
        return 1
    return 0


#: Keys of a ``compare --config`` file.
_COMPARE_KEYS = (
    "priors",
    "elbos",
    "seeds",
    "baseline",
    "jobs",
    "prior_options",
    "elbo_options",
    "base",
    "variants",
    "variant_options",
)


def _config_variants(path: str, value: Any) -> list[str]:
    """The ``variants`` of a ``compare --config`` file (a list or a comma-separated string)
    as ``--variants`` values."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"--config {path!r}: variants must be a list of names such as [plain, skip], "
            f"got {value!r}"
        )
    return [",".join(value)] if value else []


def _variant_grid(
    args: argparse.Namespace, grid: dict[str, Any], base: Any
) -> tuple[list[str] | None, dict[str, dict[str, Any]]]:
    """``(variants or None, per-variant model options)`` from ``--variants``,
    ``--variant-option`` and the ``--config`` file's ``variants``/``variant_options``;
    every option is checked against the model's constructor (``ValueError`` naming the
    variant and the accepted keys)."""
    from pyrocollapse.models import MODELS

    names = [n.strip() for text in args.variants for n in str(text).split(",") if n.strip()]
    if not names:
        if args.variant_option or grid.get("variant_options"):
            raise ValueError("--variant-option needs --variants (the names of the model variants)")
        return None, {}
    target = MODELS.get(base.model).__init__
    from_file = grid.get("variant_options") or {}
    if not isinstance(from_file, dict) or not all(isinstance(v, dict) for v in from_file.values()):
        raise ValueError(
            f"--config: variant_options must map each variant to its model options, got {from_file!r}"
        )
    options: dict[str, dict[str, Any]] = {}
    for name, opts in from_file.items():
        if name not in names:
            raise ValueError(
                f"--config: variant_options names {name!r}, which is not in the grid "
                f"({', '.join(names)})"
            )
        options[name] = dict(opts)  # checked with each run's configuration
    grouped: dict[str, list[str]] = {}
    for pair in args.variant_option:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise ValueError(
                f"variant option {pair!r} must look like NAME.KEY=VALUE, e.g. skip.skip=true"
            )
        if name not in names:
            raise ValueError(
                f"variant option {pair!r} names {name!r}, which is not in the grid ({', '.join(names)})"
            )
        grouped.setdefault(name, []).append(rest)
    for name, pairs in grouped.items():
        parsed = parse_options(
            pairs, target, f"variant {name!r} model", skip=("latent_dim", "prior")
        )
        options[name] = {**options.get(name, {}), **parsed}
    return names, options


def _read_config(path: str) -> dict[str, Any]:
    """A ``--config`` file: JSON (``.json``) or YAML (``.yaml``/``.yml``), a mapping."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # a parse error of either format, with its position
        raise ValueError(
            f"--config {path!r} is not valid {file.suffix[1:] or 'JSON'}: {e}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path!r} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def _defaults_of(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace the same sub-command gets with no flags (its defaults)."""
    return _build_parser().parse_args([args.command])


def _merge_config(file: dict[str, Any], given: Any, default: Any) -> Any:
    """A RunConfig from ``file``'s fields, with every field the command line set (differs
    from ``default``) taken from ``given`` instead."""
    import dataclasses

    from pyrocollapse.experiment import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(file) - fields
    if unknown:
        raise ValueError(
            f"--config: unknown run setting(s) {sorted(unknown)}; accepted: {', '.join(sorted(fields))}"
        )
    merged = {**default.to_dict(), **file}
    for name in fields:
        if getattr(given, name) != getattr(default, name):
            merged[name] = getattr(given, name)
    if isinstance(merged.get("estimators"), list):
        merged["estimators"] = tuple(merged["estimators"])
    return RunConfig.from_dict(merged)


def _grid_from_run(folder: str) -> tuple[Any, list[str], list[str], dict, dict]:
    """The base configuration and the suggested grid of the run in ``folder``."""
    import json
    from pathlib import Path

    from pyrocollapse.experiment import RunConfig

    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise ValueError(
            f"--from-run: {str(path)!r} does not exist; name a folder written by 'pyrocollapse run'"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        base = RunConfig.from_dict(metrics["config"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"--from-run: {str(path)!r} does not hold a run's metrics ({e})") from None
    causes = (metrics.get("report") or {}).get("causes")
    if not causes or not causes.get("remedies"):
        raise ValueError(
            f"--from-run: the report in {str(path)!r} suggests no remedies (a healthy run, no "
            "cause above the evidence floor, or a run without the 'causes' estimator); give "
            "--priors and --elbos instead"
        )
    grid = causes["grid"]
    return (
        base,
        list(grid["priors"]),
        list(grid["elbos"]),
        {k: dict(v) for k, v in grid.get("prior_options", {}).items() if v},
        {k: dict(v) for k, v in grid.get("elbo_options", {}).items() if v},
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


def report_command(args: argparse.Namespace) -> int:
    """The ``report`` sub-command: re-render a report folder from its saved files."""
    from pyrocollapse.report_folder import rerender

    page, figures = rerender(
        args.folder, figures=not args.no_figures, self_contained=args.self_contained
    )
    embedded = ", figures embedded" if args.self_contained else ""
    print(f"re-rendered {page} ({len(figures)} figures rebuilt{embedded})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyrocollapse`` console script; returns the exit status."""
    if isinstance(argv, str) or not (argv is None or isinstance(argv, (list, tuple))):
        raise TypeError(
            f"argv must be a list of strings such as ['run', '--epochs', '5'], got "
            f"{type(argv).__name__} {argv!r}"
        )
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    with _library_logging(verbose):
        return _main(argv, verbose)


class _Stderr(logging.StreamHandler):
    """A handler that writes to the current ``sys.stderr`` (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _library_logging:
    """Show the library's log records (progress lines, notes, fallbacks) on stderr while
    a command runs: INFO, or DEBUG with ``--verbose``; the logger is restored after."""

    def __init__(self, verbose: bool) -> None:
        self.level = logging.DEBUG if verbose else logging.INFO

    def __enter__(self) -> None:
        self.log = logging.getLogger("pyrocollapse")
        self.old = self.log.level
        self.handler = _Stderr()
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.log.addHandler(self.handler)
        self.log.setLevel(self.level)

    def __exit__(self, *exc: object) -> None:
        self.log.removeHandler(self.handler)
        self.log.setLevel(self.old)


def _main(argv: list[str], verbose: bool) -> int:
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        return {"run": run, "compare": compare_command, "report": report_command}[args.command](
            args
        )
    except SystemExit as e:  # argparse: --help, --version, usage errors (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except USER_ERRORS as e:
        _report_error(e, verbose)
        return 2
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print("pyrocollapse: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as e:  # unexpected failures
        _report_error(e, verbose, unexpected=True)
        return 1


def _report_error(e: BaseException, verbose: bool, *, unexpected: bool = False) -> None:
    """One line on stderr (the traceback above it with ``verbose``)."""
    if verbose:
        traceback.print_exc()
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = lines[0] if lines else type(e).__name__
    if unexpected:
        message = f"unexpected {type(e).__name__}: {message}"
    if len(lines) > 1 or unexpected:
        message += " (rerun with --verbose for the details)" if not verbose else ""
    print(f"pyrocollapse: error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
