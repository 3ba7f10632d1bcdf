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

from pyrocollapse._validation import check_int
from pyrocollapse.experiment import RunConfig

__all__ = [
    "CONFIDENCE",
    "METRICS",
    "PAIRED_METRICS",
    "RANKING",
    "compare",
    "format_summary",
    "run_id",
    "summarize_runs",
]

#: Per-run metrics in the comparison table (all per held-out data point, nats where applicable).
METRICS = ("active_units", "mi", "kl", "elbo", "iw_log_likelihood", "wall_time")

#: Metrics with a paired difference against the baseline cell in the summary
#: (``<metric>_diff``, ``<metric>_diff_lo``, ``<metric>_diff_hi``).
PAIRED_METRICS = ("iw_log_likelihood", "mi", "active_units", "elbo", "kl")

#: Coverage of the Student-t intervals of the paired differences (and of the ranking's test).
CONFIDENCE = 0.95

#: How the table is ranked. A cell *beats* another when their paired per-seed difference
#: of held-out IW log-likelihood (over the seeds both finished) has a 95 % Student-t
#: interval above 0; the rows are ordered by rank, then by mean IW log-likelihood, then
#: by mean active units. With one seed there is no interval and every cell is tied.
RANKING = (
    "held-out importance-weighted log-likelihood (higher is better); a cell's rank is 1 + "
    "the number of cells that beat it on paired per-seed differences (95% t-interval of "
    "the difference above 0), so cells that cannot be told apart share a rank, marked =k"
)


def run_id(prior: str, elbo: str, seed: int) -> str:
    """Folder name of one grid cell, e.g. ``"mixture__freebits__seed1"``."""
    for what, name in (("prior", prior), ("elbo", elbo)):
        if not isinstance(name, str):
            raise TypeError(f"{what} must be a registry name (str), got {type(name).__name__}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or "__" in name:
            raise ValueError(
                f"{what} must be a registry name of letters, digits, '-' and single '_', "
                f"got {name!r}"
            )
    seed = check_int("seed", seed, minimum=0)
    return f"{prior}__{elbo}__seed{seed}"


#: Files every finished run folder has (``posterior.nc`` and the figures are optional).
RUN_FILES = ("metrics.json", "history.csv", "report.html", "model.pt")


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as plain JSON values (tuples as lists), as ``metrics.json`` stores it."""
    from pyrocollapse._io import json_default

    return json.loads(json.dumps(config, default=json_default))


def _fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run's configuration (a ``RunConfig.to_dict()``)."""
    from pyrocollapse._io import json_default

    text = json.dumps(
        _canonical(config), sort_keys=True, separators=(",", ":"), default=json_default
    )
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


def _check_buildable(cells: list[tuple[str, RunConfig]]) -> None:
    """Build every distinct prior x objective of the grid once (data, prior, model,
    objective; no training), so that a value that only its constructor refuses
    (``mixture.n_components=0``) stops the grid before any work."""
    import pyro.util

    from pyrocollapse.experiment import build

    seen = set()
    state = pyro.util.get_rng_state()
    try:
        for rid, cfg in cells:
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
                    )
                )
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise type(e)(f"run {rid} ({where}): {first}") from e
    finally:
        pyro.util.set_rng_state(state)


def _with_options(options: dict[str, Any]) -> str:
    return " with " + ", ".join(f"{k}={v!r}" for k, v in options.items()) if options else ""


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _row_from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    rep = metrics["report"]
    return {
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
    baseline: str | tuple[str, str] | None = None,
) -> Any:
    """Train every prior x objective x seed combination and compare them.

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
    baseline : str, (str, str) or None
        The cell every other cell is compared with, ``"PRIOR:OBJECTIVE"`` or
        ``(prior, objective)``; ``None``: the first prior with the first objective.

    Returns
    -------
    pandas.DataFrame
        :func:`summarize_runs`'s table: one row per (prior, elbo) with ``<metric>_mean``
        and ``<metric>_std`` over the seeds that finished for every metric in
        :data:`METRICS`, ``n_ok``, ``n_failed``, the first ``error``, the paired
        differences against the baseline (``<metric>_diff``, ``_diff_lo``, ``_diff_hi``,
        ``n_paired``), ``baseline``, ``rank`` and ``tied``; ranked by :data:`RANKING`.
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
    from pyrocollapse.elbo import ELBOS
    from pyrocollapse.priors import PRIORS

    prior_options = _grid_options("prior_options", prior_options, PRIORS)
    elbo_options = _grid_options("elbo_options", elbo_options, ELBOS)
    for p in priors:
        run_id(p, "elbo", 0)  # names usable as folder names
    for e in elbos:
        run_id("standard", e, 0)
    baseline_cell = _baseline_cell(baseline, [(p, e) for p in priors for e in elbos])
    from pyrocollapse.experiment import check_output_folder

    if not isinstance(out, (str, Path)):
        raise TypeError(f"out must be a str or a Path, got {type(out).__name__}")
    out = check_output_folder("out", out)
    cells = []
    for p in priors:
        for e in elbos:
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
                )
                cfg.validate()  # every name and option checked before any training
                cells.append((run_id(p, e, s), cfg))
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
        )


def _run_grid(
    cells: list[tuple[str, RunConfig]],
    out: Path,
    base: RunConfig,
    priors: list[str],
    elbos: list[str],
    seed_list: list[int],
    jobs: int,
    *,
    progress: bool,
    echo: bool,
    baseline: tuple[str, str] | None = None,
) -> Any:
    """Train the runs of a checked grid into ``out`` (locked) and summarise them
    (``runs.csv``, ``comparison.csv``, ``figures/au_vs_nll.png`` and ``comparison.html``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from pyrocollapse._io import atomic_write_text

    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "grid.json",
        json.dumps(
            {
                "base": base.to_dict(),
                "priors": list(priors),
                "elbos": list(elbos),
                "seeds": seed_list,
                "baseline": None if baseline is None else ":".join(baseline),
            },
            indent=2,
        ),
    )

    rows: dict[str, dict[str, Any]] = {}
    redone: dict[str, str] = {}
    todo = []
    for rid, cfg in cells:
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
            {"run": rid, "prior": cfg.prior, "objective": cfg.elbo, "seed": cfg.seed, **rows[rid]}
            for rid, cfg in cells
        ]
    )
    atomic_write_text(out / "runs.csv", table.to_csv(index=False))
    summary = summarize_runs(table, baseline=baseline)
    atomic_write_text(out / "comparison.csv", summary.to_csv(index=False))
    from pyrocollapse.plots import plot_comparison, save_figure

    (out / "figures").mkdir(exist_ok=True)
    save_figure(plot_comparison(summary), str(out / "figures" / "au_vs_nll.png"))
    from pyrocollapse.report_folder import write_comparison_html

    write_comparison_html(out)  # comparison.html: the ranked table, the runs, the figure
    if echo:
        print(format_summary(summary))
    return summary


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


def _baseline_cell(baseline: Any, cells: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The ``(prior, objective)`` that ``baseline`` names among ``cells`` (the first when
    ``None``); a ``ValueError`` naming the accepted cells when it is none of them."""
    cells = list(cells)
    accepted = ", ".join(f"{p}:{o}" for p, o in cells)
    if baseline is None:
        if not cells:
            raise ValueError("there is no cell to take as the baseline (an empty table)")
        return cells[0]
    if isinstance(baseline, str):
        prior, sep, objective = baseline.partition(":")
        key = (prior.strip(), objective.strip()) if sep else None
    elif (
        isinstance(baseline, (tuple, list))
        and len(baseline) == 2
        and all(isinstance(x, str) for x in baseline)
    ):
        key = (baseline[0], baseline[1])
    else:
        raise TypeError(
            f"baseline must be 'PRIOR:OBJECTIVE', a (prior, objective) pair or None, got "
            f"{type(baseline).__name__} {baseline!r}"
        )
    if key not in cells:
        raise ValueError(
            f"baseline {baseline!r} is not a cell of this grid; accepted (PRIOR:OBJECTIVE): "
            f"{accepted}"
        )
    return key


def _per_seed(ok: Any, metric: str) -> Any:
    """One cell's finished runs as a Series seed -> ``metric`` (finite values only)."""
    import numpy as np
    import pandas as pd

    if metric not in ok:
        return pd.Series(dtype=float)
    values = pd.to_numeric(ok[metric], errors="coerce").groupby(ok["seed"].to_numpy()).mean()
    return values[np.isfinite(values.to_numpy(dtype=float))].astype(float)


def _paired(a: Any, b: Any) -> tuple[float, float, float, int]:
    """``(mean, lo, hi, n)`` of the per-seed differences ``a - b`` over the seeds both hold:
    the mean and its Student-t interval at :data:`CONFIDENCE` with ``n - 1`` degrees of
    freedom (``lo``, ``hi`` NaN with fewer than 2 seeds; all NaN with none)."""
    d = (a - b).dropna()
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    from scipy.stats import t

    half = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def summarize_runs(table: Any, baseline: str | tuple[str, str] | None = None) -> Any:
    """Summarise a grid's runs per (prior, objective), with paired differences against a
    baseline cell, ranked by :data:`RANKING`.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per run (``runs.csv``): ``prior``, ``objective``, ``seed``, ``status``
        (``"ok"`` for a finished run), the metrics of :data:`METRICS` and ``error``.
    baseline : str, (str, str) or None
        The cell the others are compared with, ``"PRIOR:OBJECTIVE"`` or
        ``(prior, objective)``; ``None``: the table's first cell (a grid's first prior with
        its first objective).

    Returns
    -------
    pandas.DataFrame
        One row per cell:

        * ``<metric>_mean``, ``<metric>_std``: mean and standard deviation (``ddof=1``; 0
          for one run) over the cell's finished runs, for every metric in :data:`METRICS`;
          ``n_ok``, ``n_failed`` and the first ``error`` (empty if none);
        * ``n_paired``: the seeds that both this cell and the baseline finished;
        * ``<metric>_diff``: the mean over those seeds of ``cell - baseline`` (same seed,
          so the same train/held-out split), for every metric in :data:`PAIRED_METRICS`,
          and ``<metric>_diff_lo``, ``<metric>_diff_hi``: its Student-t interval at
          :data:`CONFIDENCE` (``n_paired - 1`` degrees of freedom; NaN with fewer than 2
          paired seeds). Seeds where either value is not finite are left out;
        * ``baseline``: True on the baseline's row;
        * ``rank`` (nullable int): 1 + the number of cells that beat this one, where a
          cell beats another when the interval of their paired difference of held-out IW
          log-likelihood lies above 0; ``<NA>`` for a cell with no finite IW
          log-likelihood (no finished run), which is listed last;
        * ``tied``: another cell has the same rank.

        Rows are ordered by rank, then mean IW log-likelihood, then mean active units.

    Raises
    ------
    ValueError
        If a column is missing, or ``baseline`` is not a cell of the table (naming the
        accepted cells).
    """
    import numpy as np
    import pandas as pd

    from pyrocollapse._validation import check_columns

    check_columns("table", table, ["prior", "objective", "seed", "status"])

    groups = list(table.groupby(["prior", "objective"], sort=False))
    base_key = _baseline_cell(baseline, [key for key, _ in groups])
    finished = {key: g[g["status"] == "ok"] for key, g in groups}
    base_ok = finished[base_key]
    base_values = {m: _per_seed(base_ok, m) for m in PAIRED_METRICS}
    base_seeds = set(base_ok["seed"])

    out = []
    for (prior, elbo), g in groups:
        ok = finished[(prior, elbo)]
        row: dict[str, Any] = {
            "prior": prior,
            "objective": elbo,
            "n_ok": len(ok),
            "n_failed": int((g["status"] != "ok").sum()),
        }
        for m in METRICS:
            vals = pd.to_numeric(ok[m], errors="coerce") if m in ok else pd.Series(dtype=float)
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = (
                float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            )
        errors = g["error"].dropna() if "error" in g else []
        errors = [e for e in errors if isinstance(e, str) and e]
        row["error"] = errors[0] if errors else ""
        row["baseline"] = (prior, elbo) == base_key
        row["n_paired"] = len(base_seeds & set(ok["seed"]))
        for m in PAIRED_METRICS:
            diff, lo, hi, _ = _paired(_per_seed(ok, m), base_values[m])
            row[f"{m}_diff"], row[f"{m}_diff_lo"], row[f"{m}_diff_hi"] = diff, lo, hi
        out.append(row)
    summary = pd.DataFrame(out)

    # rank: 1 + the number of cells that beat a cell on paired per-seed differences
    ll = {key: _per_seed(finished[key], "iw_log_likelihood") for key, _ in groups}
    ranked = [key for key in ll if len(ll[key])]
    beaten = {key: 0 for key in ranked}
    for key in ranked:
        for other in ranked:
            if other != key and _paired(ll[other], ll[key])[1] > 0:
                beaten[key] += 1
    ranks = [beaten.get((p, o)) for p, o in zip(summary["prior"], summary["objective"])]
    summary["rank"] = pd.array([None if r is None else r + 1 for r in ranks], dtype="Int64")
    counts = summary["rank"].value_counts()
    summary["tied"] = [bool(pd.notna(r) and counts.get(r, 0) > 1) for r in summary["rank"]]
    order = np.lexsort(
        (
            -summary["active_units_mean"].fillna(-np.inf).to_numpy(dtype=float),
            -summary["iw_log_likelihood_mean"].fillna(-np.inf).to_numpy(dtype=float),
            summary["rank"].fillna(len(summary) + 1).to_numpy(dtype=float),
        )
    )
    return summary.iloc[order].reset_index(drop=True)


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _diff_text(row: Any, metric: str) -> str:
    """``+0.41 [+0.12, +0.70]``: a paired difference against the baseline and its interval."""
    if bool(row["baseline"]):
        return "baseline"
    diff, lo, hi = row[f"{metric}_diff"], row[f"{metric}_diff_lo"], row[f"{metric}_diff_hi"]
    if not _finite(diff):
        return "n/a"
    if not (_finite(lo) and _finite(hi)):
        return f"{_signed(diff)} (1 seed)"
    return f"{_signed(diff)} [{_signed(lo)}, {_signed(hi)}]"


def _finite(value: Any) -> bool:
    """``value`` is a finite number (False for None, NaN, ``pd.NA``)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _rank_text(row: Any) -> str:
    rank = row["rank"]
    if not _finite(rank):
        return "-"
    return f"={int(rank)}" if bool(row["tied"]) else str(int(rank))


def format_summary(summary: Any) -> str:
    """The ranked comparison (:func:`summarize_runs`'s table) as a fixed-width text table.

    Above the table: the ranking rule (:data:`RANKING`) and the baseline cell. Per cell:
    the rank (``=k`` for a tie), mean ± standard deviation over seeds of active units, MI,
    KL, ELBO and held-out IW log-likelihood, the paired differences of IW log-likelihood
    and MI against the baseline with their 95 % intervals (``+0.41 [+0.12, +0.70]``;
    ``(1 seed)`` without an interval), the mean wall time and the finished/failed runs.
    With one seed per cell, a note below the table says that no cell can be told apart.
    """
    from pyrocollapse._validation import check_columns

    check_columns(
        "summary",
        summary,
        ["prior", "objective", "n_ok", "n_failed", "error", "baseline", "rank", "tied"]
        + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
        + [f"{m}_{s}" for m in ("iw_log_likelihood", "mi") for s in ("diff", "diff_lo", "diff_hi")],
    )
    base = summary[summary["baseline"].astype(bool)]
    base_name = f"{base['prior'].iloc[0]} + {base['objective'].iloc[0]}" if len(base) else "(none)"
    import textwrap

    pct = f"{CONFIDENCE:.0%}"
    lines = [
        *textwrap.wrap(f"ranked by {RANKING}", width=100, subsequent_indent="  "),
        *textwrap.wrap(
            f"baseline: {base_name}; Δ = cell - baseline, the mean of the per-seed differences "
            f"(same seed, same train/held-out split) [{pct} t-interval]",
            width=100,
            subsequent_indent="  ",
        ),
    ]

    def ms(r: Any, m: str, p: int = 2) -> str:
        if not _finite(r[m + "_mean"]):
            return "-"
        return f"{r[m + '_mean']:.{p}f}±{r[m + '_std']:.{p}f}"

    header = ["rank", "prior", "objective", "AU", "MI", "KL", "ELBO", "IW log p(x)",
              "Δ IW log p(x)", "Δ MI", "time s", "ok/fail"]  # fmt: skip
    left = {"prior", "objective"}
    rows, errors = [], []
    for _, r in summary.iterrows():
        rows.append(
            [
                _rank_text(r),
                str(r["prior"]),
                str(r["objective"]),
                ms(r, "active_units", 1),
                ms(r, "mi"),
                ms(r, "kl"),
                ms(r, "elbo"),
                ms(r, "iw_log_likelihood"),
                _diff_text(r, "iw_log_likelihood"),
                _diff_text(r, "mi"),
                f"{r['wall_time_mean']:.1f}" if _finite(r["wall_time_mean"]) else "-",
                f"{r['n_ok']}/{r['n_failed']}",
            ]
        )
        errors.append(r["error"] if isinstance(r["error"], str) else "")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return " ".join(
            c.ljust(w) if h in left else c.rjust(w) for c, w, h in zip(cells, widths, header)
        ).rstrip()

    lines.append(line(header))
    for cells, error in zip(rows, errors):
        lines.append(line(cells))
        if error:
            lines.append(f"     first error: {error}")
    n_ranked = int(summary["rank"].notna().sum())
    if n_ranked >= 2 and int(summary["n_ok"].max()) < 2:
        lines += textwrap.wrap(
            "note: one seed gives no interval, so no cell can be told apart from another and "
            "all are shown tied; run --seeds 3 or more (seeds=3) to rank them",
            width=100,
            subsequent_indent="  ",
        )
    return "\n".join(lines)
