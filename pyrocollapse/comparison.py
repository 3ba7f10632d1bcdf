"""The remedy comparison grid: which prior x objective fixes collapse on my data?

:func:`compare` trains every combination of priors, objectives and seeds with the same
engine as ``pyrocollapse run`` (:func:`pyrocollapse.experiment.run_experiment`), each run
into its own report folder, and summarises them in one table.

Runs are independent: a finished run is skipped when the grid is started again, so an
interrupted grid resumes. A run counts as finished only when its folder is complete
(``metrics.json``, ``history.csv``, ``report.html``, ``model.pt``) and the configuration
fingerprint stored in its ``metrics.json`` (a SHA-256 of the run's full
:class:`~pyrocollapse.experiment.RunConfig`) matches the one asked for; a run built with
other settings, or a damaged run folder, is trained again and named in the output. A
failed run is recorded with its error (``runs/<id>.error.json``) and does not stop the
others. ``jobs > 1`` runs them in parallel worker processes, which die with the grid's
process and share the cores (``torch.set_num_threads(cpus // jobs)`` each). Every value
of the grid is checked (each run's prior, model and objective built once) before any work,
and one grid folder is written by one ``compare`` at a time
(:func:`pyrocollapse._io.lock_directory`).

The summary compares every cell with a *baseline* cell (by default the first prior with the
first objective) on paired differences: a run's seed fixes its train/held-out split (and
its initialisation), so the runs of two cells with the same seed saw the same data, and the
per-seed difference ``cell - baseline`` cancels the split-to-split variation that the
spread over seeds holds. Each difference comes with a 95 % Student-t interval over the
seeds both cells finished. The ranking uses the same paired differences between every two
cells (:data:`RANKING`): cells that no other cell beats significantly share rank 1, so a
difference smaller than its interval is printed as a tie (``=1``), not as a ranking.

A grid may also cross *model variants* (remedies that change the model, not the prior or
the objective: a skip-connected decoder, a batch-normalised or delta posterior, iterative
refinement of the encoder): ``variants=["plain", "skip"]`` with
``variant_options={"skip": {"skip": True}}``, each variant's options applied as model
options on top of ``base.model_options``. Cells are then ``(prior, objective, variant)``,
run folders ``<prior>__<elbo>__<variant>__seed<k>`` and the tables get a ``variant``
column; without variants every name is as before.

Runs with known data factors (``--dataset shapes``) carry disentanglement scores
(:data:`DISENTANGLEMENT_METRICS`: MIG, SAP, DCI, FactorVAE) into the table, with the same
paired differences across seeds as the other metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyrocollapse import _run_summary
from pyrocollapse._run_summary import (
    VARIANT,
    _baseline_cell,
    format_summary,
    summarize_runs,
)
from pyrocollapse._validation import check_choice, check_int
from pyrocollapse.experiment import RunConfig

__all__ = [
    "ADJUSTMENTS",
    "CONFIDENCE",
    "DISENTANGLEMENT_METRICS",
    "METRICS",
    "PAIRED_METRICS",
    "RANKING",
    "compare",
    "format_summary",
    "run_id",
    "summarize_runs",
]

#: Per-run metrics in the comparison table (all per held-out data point, nats where applicable).
METRICS = _run_summary.METRICS

#: Disentanglement scores of a run's first scored latent site (in [0, 1], higher is more
#: disentangled), from the ``"disentanglement"`` estimator on data with known factors;
#: NaN for runs without them (and, with a single factor, for ``dci_disentanglement`` and
#: ``factorvae_score``, which are 1 by construction).
DISENTANGLEMENT_METRICS = _run_summary.DISENTANGLEMENT_METRICS

#: Metrics with a paired difference against the baseline cell in the summary
#: (``<metric>_diff``, ``<metric>_diff_lo``, ``<metric>_diff_hi``).
PAIRED_METRICS = _run_summary.PAIRED_METRICS

#: Coverage of the Student-t intervals of the paired differences (and of the ranking's test).
CONFIDENCE = _run_summary.CONFIDENCE

#: Multiple-comparison adjustments (``compare(adjust=...)``, ``--adjust``): ``"none"``
#: (each interval and pairwise test at :data:`CONFIDENCE` on its own) or ``"bonferroni"``
#: (they hold jointly at :data:`CONFIDENCE` over the grid).
ADJUSTMENTS = _run_summary.ADJUSTMENTS

#: How the table is ranked. A cell *beats* another when their paired per-seed difference
#: of held-out IW log-likelihood (over the seeds both finished) has a 95 % Student-t
#: interval above 0; the rows are ordered by rank, then by mean IW log-likelihood, then
#: by mean active units. With one seed there is no interval and every cell is tied.
RANKING = _run_summary.RANKING


def run_id(prior: str, elbo: str, seed: int, variant: str | None = None) -> str:
    """Folder name of one grid cell, e.g. ``"mixture__freebits__seed1"``, or
    ``"mixture__freebits__skip__seed1"`` for the model variant ``"skip"``."""
    named = [("prior", prior), ("elbo", elbo)]
    if variant is not None:
        named.append(("variant", variant))
    for what, name in named:
        if not isinstance(name, str):
            raise TypeError(f"{what} must be a registry name (str), got {type(name).__name__}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or "__" in name:
            raise ValueError(
                f"{what} must be a registry name of letters, digits, '-' and single '_', "
                f"got {name!r}"
            )
    seed = check_int("seed", seed, minimum=0)
    if variant is not None:
        if re.fullmatch(r"seed\d+", variant):
            raise ValueError(f"variant must not look like a seed folder (seed<k>), got {variant!r}")
        return f"{prior}__{elbo}__{variant}__seed{seed}"
    return f"{prior}__{elbo}__seed{seed}"


#: Files every finished run folder has (``posterior.nc`` and the figures are optional).
RUN_FILES = ("metrics.json", "history.csv", "report.html", "model.pt")


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as plain JSON values (tuples as lists), as ``metrics.json`` stores it."""
    from pyrocollapse._io import json_default

    return json.loads(json.dumps(config, default=json_default))


#: RunConfig fields added after fingerprints were first written, with the default value
#: that a configuration written before them means.
_LATER_FIELDS: dict[str, Any] = {"disentanglement_options": {}}


def _fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run's configuration (a ``RunConfig.to_dict()``)."""
    from pyrocollapse._io import json_default

    canonical = _canonical(config)
    for key, default in _LATER_FIELDS.items():  # fields added later, at their default,
        if canonical.get(key, default) == default:  # leave earlier fingerprints unchanged
            canonical.pop(key, None)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _differing_fields(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"epochs: 2 -> 1, latent_dim: 2 -> 3"`` for the fields that differ."""
    old, new = _canonical(old), _canonical(new)
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            a = json.dumps(old[key], sort_keys=True) if key in old else "<unset>"
            b = json.dumps(new[key], sort_keys=True) if key in new else "<unset>"
            parts.append(f"{key}: {a} -> {b}")
    return ", ".join(parts) or "its stored fingerprint does not match its configuration"


def _finished_run(folder: Path, config: RunConfig) -> tuple[dict[str, Any] | None, str]:
    """``(row, "")`` for a complete run folder built from ``config``; otherwise
    ``(None, why)``, ``why`` empty when there is no folder at all."""
    if not folder.exists():
        return None, ""
    if not folder.is_dir():
        return None, "it is not a folder"
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        return None, f"its folder is incomplete ({', '.join(missing)} missing)"
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"its metrics.json cannot be read ({type(e).__name__}: {e})"
    if not isinstance(metrics, dict) or not isinstance(metrics.get("config"), dict):
        return None, "its metrics.json holds no run configuration"
    stored, wanted = metrics["config"], config.to_dict()
    if "fingerprint" not in metrics:
        return None, "its metrics.json has no configuration fingerprint (an older version)"
    if metrics["fingerprint"] != _fingerprint(stored):
        return None, "its metrics.json has a fingerprint that does not match its configuration"
    if metrics["fingerprint"] != _fingerprint(wanted):
        return None, f"it was built with other settings ({_differing_fields(stored, wanted)})"
    try:
        row = _row_from_metrics(metrics)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return None, f"its metrics.json is incomplete ({type(e).__name__}: {e})"
    return row, ""


def _threads_per_worker(jobs: int) -> int:
    """Torch threads per worker so that ``jobs`` workers share the cores without
    oversubscribing them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // jobs)


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker process die when ``parent_pid`` (the grid's process) does.

    On Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; everywhere, exit at once if the parent
    is already gone (``_one_run`` checks again before it writes anything).
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_init(parent_pid: int, threads: int) -> None:
    """Initializer of the grid's worker processes: die with the parent, share the cores."""
    _die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)


def _one_run(
    config_dict: dict[str, Any], out: str, parent_pid: int | None = None
) -> dict[str, Any]:
    """Train one cell into ``out`` and return its metric row (a worker when jobs > 1).

    ``metrics.json`` gets the configuration's ``fingerprint``; a worker (``parent_pid``
    given) whose parent has gone writes nothing and exits.
    """
    from pyrocollapse.experiment import run_experiment, write_run_folder

    config = RunConfig.from_dict(config_dict)
    start = time.perf_counter()
    result = run_experiment(config, None, progress=False)
    result.metrics["fingerprint"] = _fingerprint(config.to_dict())
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # an orphan: the grid was killed, nothing is written
    write_run_folder(result, out, overwrite=True)
    return {**_row_from_metrics(result.metrics), "wall_time": time.perf_counter() - start}


def _check_buildable(cells: list[tuple[str, RunConfig]] | list[tuple[str, RunConfig, Any]]) -> None:
    """Build every distinct prior x objective of the grid once (data, prior, model,
    objective; no training), so that a value that only its constructor refuses
    (``mixture.n_components=0``) stops the grid before any work."""
    import pyro.util

    from pyrocollapse.experiment import build

    seen = set()
    state = pyro.util.get_rng_state()
    try:
        for rid, cfg, *rest in cells:
            variant = rest[0] if rest else None
            key = _fingerprint({**cfg.to_dict(), "seed": 0})
            if key in seen:
                continue
            seen.add(key)
            try:
                build(cfg)
            except (ValueError, TypeError) as e:
                where = "; ".join(
                    f"{what} {name!r}" + _with_options(options)
                    for what, name, options in (
                        ("prior", cfg.prior, cfg.prior_options),
                        ("objective", cfg.elbo, cfg.elbo_options),
                        (f"variant {variant!r}: model", cfg.model, cfg.model_options),
                    )
                    if not what.startswith("variant") or variant is not None
                )
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise type(e)(f"run {rid} ({where}): {first}") from e
    finally:
        pyro.util.set_rng_state(state)


def _with_options(options: dict[str, Any]) -> str:
    return " with " + ", ".join(f"{k}={v!r}" for k, v in options.items()) if options else ""


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _disentanglement_row(report: dict[str, Any]) -> dict[str, float]:
    """The :data:`DISENTANGLEMENT_METRICS` of a report dict's first scored site (NaN when
    it has none; DCI disentanglement and the FactorVAE score NaN with a single factor,
    where they are 1 by construction)."""
    row = dict.fromkeys(DISENTANGLEMENT_METRICS, math.nan)
    sites = report.get("disentanglement") or {}
    records = [v for k, v in sites.items() if k != "unavailable" and isinstance(v, dict)]
    if not records:
        return row
    first = records[0]
    scores = first.get("scores") or {}
    for m in DISENTANGLEMENT_METRICS:
        row[m] = _number(scores.get(m))
    if len(first.get("factor_names") or ()) == 1:
        row["dci_disentanglement"] = row["factorvae_score"] = math.nan
    return row


def _row_from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    rep = metrics["report"]
    return {
        **_disentanglement_row(rep),
        "active_units": rep["active_units"],
        # estimators left out of a run (and non-finite values) are None in metrics.json
        "mi": sum(_number(s.get("mi")) for s in rep["sites"].values()),
        "kl": _number(rep["elbo"].get("kl")),
        "elbo": _number(rep["elbo"].get("elbo")),
        "iw_log_likelihood": _number(rep["elbo"].get("log_likelihood")),
        "wall_time": metrics.get("train_seconds", math.nan),
        "verdict": rep["verdict"],
    }


def compare(
    *,
    priors: Sequence[str] = ("standard",),
    elbos: Sequence[str] = ("elbo",),
    seeds: int | Sequence[int] = 3,
    out: str | Path,
    base: RunConfig | None = None,
    prior_options: dict[str, dict[str, Any]] | None = None,
    elbo_options: dict[str, dict[str, Any]] | None = None,
    jobs: int = 1,
    iw_samples: int = 50,
    progress: bool = True,
    echo: bool = False,
    baseline: str | tuple[str, ...] | None = None,
    variants: Sequence[str] | None = None,
    variant_options: dict[str, dict[str, Any]] | None = None,
    adjust: str = "none",
) -> Any:
    """Train every prior x objective (x model variant) x seed combination and compare them.

    Parameters
    ----------
    priors, elbos : sequence of str
        Registry names (``pyrocollapse.priors.PRIORS``, ``pyrocollapse.elbo.ELBOS``).
    seeds : int or sequence of int
        ``n`` means seeds ``0..n-1``.
    out : path
        Grid folder: ``runs/<prior>__<elbo>__seed<k>/`` per run (a full report folder),
        ``runs.csv`` (one row per run), ``comparison.csv`` (the returned summary: mean and
        spread per cell, paired differences against the baseline, rank),
        ``figures/au_vs_nll.png`` (active units and MI against held-out NLL).
    base : RunConfig or None
        Everything else (dataset, model, latent_dim, epochs, ...); its ``prior``, ``elbo``
        and ``seed`` are replaced per run.
    prior_options, elbo_options : dict or None
        Per-name options, e.g. ``{"mixture": {"n_components": 10}}``. Every key must
        be a registered prior (objective) name; options for a registered name that is
        not in this grid are ignored, so one options dict can serve grids of different
        sizes. (The command line, where both are typed together, refuses them.)
    jobs : int
        Worker processes (1: run in this process).
    iw_samples : int
        K of the held-out importance-weighted log-likelihood.
    progress : bool
        Overall progress bar over runs (on a terminal).
    echo : bool
        Print the ranked table. With ``echo`` or ``progress``, every existing run folder
        that is trained again is named with the reason (other settings, with the fields
        that differ; an incomplete or unreadable folder).
    baseline : str, tuple of str or None
        The cell every other cell is compared with, ``"PRIOR:OBJECTIVE"`` or
        ``(prior, objective)`` (with variants ``"PRIOR:OBJECTIVE:VARIANT"`` or
        ``(prior, objective, variant)``); ``None``: the first prior with the first
        objective (and the first variant).
    variants : sequence of str or None
        Model variants, a third axis of the grid: names of letters, digits, ``-`` and
        single ``_`` (e.g. ``["plain", "skip", "bn"]``). ``None`` (the default): no
        variant axis, and every folder and column is named as without this option.
    variant_options : dict or None
        Per-variant model options applied on top of ``base.model_options``, e.g.
        ``{"skip": {"skip": True}, "bn": {"posterior": "batchnorm"}}`` (keyword
        arguments of the model class, such as :class:`pyrocollapse.models.MLPVAE`'s
        ``skip``, ``posterior``, ``posterior_options`` and ``refine_steps``); a variant
        without an entry uses ``base.model_options`` unchanged. Every key must be one of
        ``variants``; needs ``variants``.
    adjust : {"none", "bonferroni"}
        Multiple-comparison adjustment of the intervals and the ranking
        (:data:`ADJUSTMENTS`, see :func:`summarize_runs`).

    Returns
    -------
    pandas.DataFrame
        :func:`summarize_runs`'s table: one row per (prior, elbo[, variant]) with ``<metric>_mean``
        and ``<metric>_std`` over the seeds that finished for every metric in
        :data:`METRICS`, ``n_ok``, ``n_failed``, the first ``error``, the paired
        differences against the baseline (``<metric>_diff``, ``_diff_lo``, ``_diff_hi``,
        ``n_paired``), ``adjust``, ``interval_level``, ``rank_level``, ``baseline``,
        ``rank`` and ``tied``; ranked by :data:`RANKING`.
        ``runs.csv`` has one row per run with
        its ``status`` (``ok``/``failed``), ``error``, ``resumed`` (read back from an earlier
        grid) and ``redone`` (why an existing run folder was trained again, else empty).

    Raises
    ------
    ValueError, TypeError
        Before any work, for any value of the grid that a run would refuse (each
        distinct prior x objective is built once, with no training), naming the run and
        its options; a ``baseline`` that is not a cell of the grid (naming the accepted
        cells); :class:`pyrocollapse._io.TargetBusyError` (a ``ValueError``) if another
        process is writing ``out``.
    """
    if base is not None and not isinstance(base, RunConfig):
        raise TypeError(f"base must be a RunConfig or None, got {type(base).__name__}")
    adjust = check_choice("adjust", adjust, ADJUSTMENTS)
    base = RunConfig() if base is None else base
    if isinstance(priors, str) or isinstance(elbos, str):
        raise TypeError("priors and elbos must be sequences of names, e.g. ['standard', 'mixture']")
    priors, elbos = list(priors), list(elbos)
    if not priors or not elbos:
        raise ValueError("priors and elbos must each name at least one entry")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, Sequence)) or isinstance(seeds, str):
        raise TypeError(
            f"seeds must be an int (seeds 0..n-1) or a sequence of ints, got {type(seeds).__name__}"
        )
    seed_list = (
        list(range(check_int("seeds", seeds, minimum=1)))
        if isinstance(seeds, int)
        else [check_int(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(seeds)]
    )
    if not seed_list:
        raise ValueError("seeds must name at least one seed, got an empty sequence")
    jobs = check_int("jobs", jobs, minimum=1)
    iw_samples = check_int("iw_samples", iw_samples, minimum=1)
    from pyrocollapse.experiment import objectives
    from pyrocollapse.priors import PRIORS

    prior_options = _grid_options("prior_options", prior_options, PRIORS)
    elbo_options = _grid_options("elbo_options", elbo_options, objectives())
    variant_list, variant_options = _check_variants(variants, variant_options)
    for p in priors:
        run_id(p, "elbo", 0)  # names usable as folder names
    for e in elbos:
        run_id("standard", e, 0)
    axis: list[str | None] = variant_list if variant_list is not None else [None]
    grid_cells = [(p, e) if v is None else (p, e, v) for p in priors for e in elbos for v in axis]
    baseline_cell = _baseline_cell(baseline, grid_cells)
    from pyrocollapse.experiment import check_output_folder

    if not isinstance(out, (str, Path)):
        raise TypeError(f"out must be a str or a Path, got {type(out).__name__}")
    out = check_output_folder("out", out)
    cells = []
    for cell in grid_cells:
        p, e = cell[0], cell[1]
        v = cell[2] if len(cell) == 3 else None
        for s in seed_list:
            cfg = replace(
                base,
                prior=p,
                elbo=e,
                seed=s,
                importance_samples=iw_samples,
                estimators=tuple(dict.fromkeys((*base.estimators, "iw"))),
                prior_options={**base.prior_options, **prior_options.get(p, {})},
                elbo_options={**base.elbo_options, **elbo_options.get(e, {})},
                model_options={**base.model_options, **variant_options.get(v, {})},
            )
            try:
                cfg.validate()  # every name and option checked before any training
            except (ValueError, TypeError) as err:
                if v is None or not variant_options.get(v):
                    raise
                raise type(err)(f"variant {v!r}: {err}") from err
            cells.append((run_id(p, e, s, v), cfg, v))
    _check_buildable(cells)  # ... and every value its constructor checks
    from pyrocollapse._io import lock_directory

    with lock_directory(out):  # one compare per grid folder: a second raises TargetBusyError
        out.mkdir(parents=True, exist_ok=True)
        return _run_grid(
            cells,
            out,
            base,
            priors,
            elbos,
            seed_list,
            jobs,
            progress=progress,
            echo=echo,
            baseline=baseline_cell,
            variants=variant_list,
            variant_options=variant_options,
            adjust=adjust,
        )


def _check_variants(
    variants: Any, options: Any
) -> tuple[list[str] | None, dict[str, dict[str, Any]]]:
    """``(variant names or None, per-variant model options)``, checked: names usable in
    folder names, no repeats, option keys among the names (values are checked as model
    options with each run's configuration)."""
    if variants is None:
        if options:
            raise ValueError("variant_options need variants (the names of the model variants)")
        return None, {}
    if isinstance(variants, str) or not isinstance(variants, Sequence):
        raise TypeError(
            f"variants must be a sequence of names, e.g. ['plain', 'skip'], got "
            f"{type(variants).__name__} {variants!r}"
        )
    names = list(variants)
    if not names:
        raise ValueError("variants must name at least one variant (or be None)")
    for v in names:
        run_id("standard", "elbo", 0, v)  # a name usable in a folder name
    repeated = sorted({v for v in names if names.count(v) > 1})
    if repeated:
        raise ValueError(f"variants repeats {repeated}; name each variant once")
    options = {} if options is None else options
    if not isinstance(options, dict) or not all(isinstance(o, dict) for o in options.values()):
        raise TypeError(
            "variant_options must be a dict of variant -> model options dict, e.g. "
            f"{{'skip': {{'skip': True}}}}, got {options!r}"
        )
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ValueError(
            f"variant_options names {unknown}, which are not variants of this grid "
            f"({', '.join(names)})"
        )
    return names, {k: dict(v) for k, v in options.items()}


def _run_grid(
    cells: list[tuple[str, RunConfig, str | None]],
    out: Path,
    base: RunConfig,
    priors: list[str],
    elbos: list[str],
    seed_list: list[int],
    jobs: int,
    *,
    progress: bool,
    echo: bool,
    baseline: tuple[str, ...] | None = None,
    variants: list[str] | None = None,
    variant_options: dict[str, dict[str, Any]] | None = None,
    adjust: str = "none",
) -> Any:
    """Train the runs of a checked grid into ``out`` (locked) and summarise them
    (``runs.csv``, ``comparison.csv``, ``figures/au_vs_nll.png`` and ``comparison.html``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from pyrocollapse._io import atomic_write_text

    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    grid = {
        "base": base.to_dict(),
        "priors": list(priors),
        "elbos": list(elbos),
        "seeds": seed_list,
        "baseline": None if baseline is None else ":".join(baseline),
    }
    if variants is not None:
        grid["variants"] = list(variants)
        grid["variant_options"] = variant_options or {}
    atomic_write_text(out / "grid.json", json.dumps(grid, indent=2, default=_json_default))

    rows: dict[str, dict[str, Any]] = {}
    redone: dict[str, str] = {}
    todo = []
    for rid, cfg, _ in cells:
        row, why = _finished_run(runs_dir / rid, cfg)
        if row is not None:
            rows[rid] = {**row, "status": "ok", "resumed": True, "redone": ""}
            continue
        if why:
            redone[rid] = why
            if echo or progress:
                print(f"run {rid}: training it again: {why}", flush=True)
        todo.append((rid, cfg))
    bar = tqdm(
        total=len(cells), initial=len(rows), desc="grid", unit="run", disable=(not progress) or None
    )

    def record(rid: str, fn: Any) -> None:
        try:
            rows[rid] = {**fn(), "status": "ok", "resumed": False}
            (runs_dir / f"{rid}.error.json").unlink(missing_ok=True)
        except Exception as e:  # a failed run must not stop the grid
            err = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            atomic_write_text(runs_dir / f"{rid}.error.json", json.dumps(err, indent=2))
            rows[rid] = {"status": "failed", "error": err["error"], "resumed": False}
        rows[rid]["redone"] = redone.get(rid, "")
        bar.update(1)

    if jobs == 1 or len(todo) <= 1:
        for rid, cfg in todo:
            record(
                rid,
                lambda cfg=cfg, rid=rid: _one_run(cfg.to_dict(), str(runs_dir / rid)),
            )
    else:
        import multiprocessing

        workers = min(jobs, len(todo))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(os.getpid(), _threads_per_worker(workers)),
        ) as pool:
            futures = {
                pool.submit(_one_run, cfg.to_dict(), str(runs_dir / rid), os.getpid()): rid
                for rid, cfg in todo
            }
            for fut in as_completed(futures):
                record(futures[fut], fut.result)
    bar.close()

    table = pd.DataFrame(
        [
            {
                "run": rid,
                "prior": cfg.prior,
                "objective": cfg.elbo,
                **({} if variants is None else {VARIANT: variant}),
                "seed": cfg.seed,
                **rows[rid],
            }
            for rid, cfg, variant in cells
        ]
    )
    atomic_write_text(out / "runs.csv", table.to_csv(index=False))
    summary = summarize_runs(table, baseline=baseline, adjust=adjust)
    atomic_write_text(out / "comparison.csv", summary.to_csv(index=False))
    from pyrocollapse.plots import plot_comparison, save_figure

    (out / "figures").mkdir(exist_ok=True)
    save_figure(plot_comparison(summary), str(out / "figures" / "au_vs_nll.png"))
    from pyrocollapse.report_folder import write_comparison_html

    write_comparison_html(out)  # comparison.html: the ranked table, the runs, the figure
    if echo:
        print(format_summary(summary))
    return summary


def _json_default(value: Any) -> Any:
    from pyrocollapse._io import json_default

    return json_default(value)


def _grid_options(name: str, options: Any, registry: Any) -> dict[str, dict[str, Any]]:
    """``{name: {option: value}}``, every key a name registered in ``registry``."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise TypeError(
            f"{name} must be a dict of name -> options dict, e.g. {{'mixture': {{'n_components': 10}}}}, "
            f"got {options!r}"
        )
    for key in options:
        try:
            registry.get(key)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return options
