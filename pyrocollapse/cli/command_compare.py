"""The ``compare`` sub-command: train a grid of prior x objective (x model variant) x seed
and compare the remedies.

The grid comes from the flags, a ``--config`` file, or the remedies a run's report
suggests (``--from-run``); every option of the grid is checked before any run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pyrocollapse.cli.config import _defaults_of, _merge_config, _read_config
from pyrocollapse.cli.fields import _base_config, _estimators
from pyrocollapse.cli.options import parse_options


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
        for key in ("priors", "elbos", "seeds", "baseline", "jobs", "variants", "adjust"):
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
        adjust=args.adjust,
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
    "adjust",
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
