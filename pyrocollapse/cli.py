"""The ``pyrocollapse`` command line.

``pyrocollapse run`` trains a VAE on a dataset, prints progress and a collapse report, and
writes a report folder. User errors print one line and exit with status 2; ``--verbose``
shows the traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "parse_options"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotImplementedError)


class UsageError(Exception):
    """A user error detected by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


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

    Values become bool/None/int/float/tuple (comma-separated) where they parse as such.
    Unknown keys raise ``ValueError`` listing the accepted ones.
    """
    params = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", *skip)
    ]
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
        out[key] = _coerce(value)
    return out


def _build_parser() -> argparse.ArgumentParser:
    from pyrocollapse.data import DATASETS
    from pyrocollapse.elbo import ELBOS
    from pyrocollapse.models import MODELS
    from pyrocollapse.priors import PRIORS
    from pyrocollapse.schedules import SCHEDULES

    parser = _Parser(prog="pyrocollapse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="train a VAE, print the collapse report, write a report folder",
        description="Train a VAE on a dataset, print progress and a collapse report, and write "
        "OUT/metrics.json, OUT/history.csv, OUT/figures/*.png and OUT/model.pt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = run.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS.names())}")
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
        help="held-out fraction, diagnosed after training",
    )
    g = run.add_argument_group("model")
    g.add_argument("--model", default="mlp", help=f"one of: {', '.join(MODELS.names())}")
    g.add_argument("--latent-dim", type=int, default=16, help="latent dimensions")
    g.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model argument, e.g. hidden=256,128 or likelihood=gaussian (repeatable)",
    )
    g.add_argument("--prior", default="standard", help=f"one of: {', '.join(PRIORS.names())}")
    g.add_argument(
        "--prior-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra prior argument, e.g. n_components=10 (repeatable)",
    )
    g = run.add_argument_group("objective")
    g.add_argument("--elbo", default="annealed", help=f"one of: {', '.join(ELBOS.names())}")
    g.add_argument(
        "--elbo-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra objective argument, e.g. beta=4 (repeatable)",
    )
    g.add_argument(
        "--schedule",
        default="linear",
        help=f"KL schedule for --elbo annealed: {', '.join(SCHEDULES.names())}",
    )
    g.add_argument(
        "--schedule-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="schedule argument, e.g. warmup_steps=500 (default warm-up: a third of training)",
    )
    g = run.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=60, help="passes over the training data")
    g.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    g.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g = run.add_argument_group("output")
    g.add_argument("--out", default="runs/latest", help="report folder to write")
    g.add_argument(
        "--overwrite", action="store_true", help="replace an existing, non-empty --out folder"
    )
    g.add_argument(
        "--num-samples", type=int, default=1, help="z draws per point for the MI estimate"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    return parser


def _version() -> str:
    from pyrocollapse import __version__

    return f"pyrocollapse {__version__}"


def _build_elbo(args: argparse.Namespace, total_steps: int) -> Any:
    from pyrocollapse.elbo import ELBOS
    from pyrocollapse.schedules import SCHEDULES

    cls = ELBOS.get(args.elbo)
    options = parse_options(args.elbo_option, cls.__init__, "elbo")
    if "schedule" in inspect.signature(cls.__init__).parameters and "schedule" not in options:
        sched_cls = SCHEDULES.get(args.schedule)
        sched_opts = parse_options(args.schedule_option, sched_cls.__init__, "schedule")
        if args.schedule == "linear":
            sched_opts.setdefault("warmup_steps", max(1, total_steps // 3))
        elif args.schedule == "cyclical":
            sched_opts.setdefault("period", max(1, total_steps // 4))
        elif args.schedule == "sigmoid":
            sched_opts.setdefault("midpoint", max(1, total_steps // 4))
            sched_opts.setdefault("steepness", 10.0 / max(1, total_steps))
        options["schedule"] = sched_cls(**sched_opts)
    elif args.schedule_option:
        raise ValueError(
            f"--schedule-option applies to objectives with a schedule; {args.elbo!r} has none"
        )
    return cls(**options)


def run(args: argparse.Namespace) -> int:
    """The ``run`` sub-command."""
    import pyro
    import torch

    from pyrocollapse._io import atomic_directory, atomic_write_text
    from pyrocollapse._validation import check_float, check_int
    from pyrocollapse.data import DATASETS, load_dataset
    from pyrocollapse.diagnostics import diagnose
    from pyrocollapse.models import MODELS
    from pyrocollapse.plots import (
        plot_elbo_decomposition,
        plot_kl_heatmap,
        plot_kl_per_dim,
        plot_training,
        save_figure,
    )
    from pyrocollapse.priors import PRIORS
    from pyrocollapse.train import PrintProgress, fit

    # -- validate everything before any work ------------------------------------------
    epochs = check_int("--epochs", args.epochs, minimum=1)
    batch_size = check_int("--batch-size", args.batch_size, minimum=1)
    latent_dim = check_int("--latent-dim", args.latent_dim, minimum=1)
    check_float("--lr", args.lr, minimum=0.0, strict_minimum=True)
    check_float(
        "--valid-fraction", args.valid_fraction, minimum=0.0, maximum=0.9, strict_minimum=True
    )
    check_int("--num-samples", args.num_samples, minimum=1)
    ds_factory = DATASETS.get(args.dataset)
    model_cls = MODELS.get(args.model)
    prior_cls = PRIORS.get(args.prior)
    ds_options = parse_options(args.dataset_option, ds_factory, "dataset")
    if args.data_path is not None:
        ds_options["path"] = args.data_path
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(
            f"--out {str(out)!r} exists and is not empty; choose another folder or pass --overwrite"
        )

    pyro.set_rng_seed(check_int("--seed", args.seed, minimum=0))
    dataset = load_dataset(args.dataset, **ds_options)
    train, valid = dataset.split(args.valid_fraction, seed=args.seed)
    model_opts = parse_options(
        args.model_option, model_cls.__init__, "model", skip=("latent_dim", "prior")
    )
    prior = prior_cls.from_options(
        latent_dim,
        input_shape=dataset.event_shape,
        **parse_options(args.prior_option, prior_cls.__init__, "prior", skip=("latent_dim",)),
    )
    vae = model_cls.from_dataset(dataset, latent_dim=latent_dim, prior=prior, **model_opts)
    steps_per_epoch = -(-len(train) // batch_size)
    elbo = _build_elbo(args, epochs * steps_per_epoch)

    progress = not args.no_progress
    callbacks = []
    if progress and not sys.stderr.isatty():
        callbacks.append(PrintProgress(every=max(1, epochs // 10)))
    print(
        f"pyrocollapse run: {args.model} VAE (latent_dim={latent_dim}, prior={args.prior}) on "
        f"{dataset.name} ({len(train)} train / {len(valid)} held out), objective {args.elbo}, "
        f"{epochs} epochs",
        flush=True,
    )
    start = time.perf_counter()
    history = fit(
        vae.model,
        vae.guide,
        train.data,
        loss=elbo,
        optim=lambda params: torch.optim.Adam(params, lr=args.lr),
        epochs=epochs,
        batch_size=batch_size,
        seed=args.seed,
        progress=progress,
        callbacks=callbacks,
    )
    train_time = time.perf_counter() - start
    report = diagnose(
        vae.model, vae.guide, valid.data, vae.latent_sites, num_samples=args.num_samples
    )
    print()
    print(report)

    metrics = {
        "report": report.to_dict(),
        "final_epoch": history[-1].values,
        "train_seconds": train_time,
        "config": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "objective": elbo.hyperparameters()
        if hasattr(elbo, "hyperparameters")
        else type(elbo).__name__,
        "dataset": dataset.describe(),
    }
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        atomic_write_text(
            tmp / "metrics.json", json.dumps(metrics, indent=2, default=_json_default)
        )
        history.to_csv(str(tmp / "history.csv"))
        figs = tmp / "figures"
        figs.mkdir()
        site = vae.latent_sites[0]
        save_figure(plot_kl_per_dim(report), str(figs / "kl_per_dim.png"))
        save_figure(plot_kl_heatmap(history, site), str(figs / "kl_heatmap.png"))
        save_figure(plot_training(history, site), str(figs / "training.png"))
        save_figure(plot_elbo_decomposition(history), str(figs / "elbo_decomposition.png"))
        torch.save(vae.state_dict(), tmp / "model.pt")
    print(f"\nwrote {out}/: metrics.json, history.csv, figures/*.png, model.pt")
    return 0


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyrocollapse`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        return {"run": run}[args.command](args)
    except USER_ERRORS as e:
        if verbose:
            raise
        print(f"pyrocollapse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyrocollapse: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # pragma: no cover - unexpected failures
        if verbose:
            raise
        print(
            f"pyrocollapse: unexpected {type(e).__name__}: {e} (rerun with --verbose for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
