"""The summary of a comparison grid's runs: :func:`summarize_runs` and
:func:`format_summary` (paired differences against a baseline cell, ranks, the text table).

A leaf module (NumPy, pandas and SciPy only, imported where used): it reads the table of
runs as data, so :mod:`pyrocollapse.report_folder` renders a comparison page without
importing :mod:`pyrocollapse.comparison`, which runs the grid (and writes that page).
Import the names from :mod:`pyrocollapse.comparison`, which documents and re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ADJUSTMENTS",
    "CONFIDENCE",
    "DISENTANGLEMENT_METRICS",
    "METRICS",
    "PAIRED_METRICS",
    "RANKING",
    "format_summary",
    "summarize_runs",
]

#: Disentanglement scores of a run's first scored latent site (in [0, 1], higher is more
#: disentangled), from the ``"disentanglement"`` estimator on data with known factors;
#: NaN for runs without them. With a single factor, ``dci_disentanglement`` and
#: ``factorvae_score`` are 1 by construction and stored as NaN.
DISENTANGLEMENT_METRICS = (
    "mig",
    "sap",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "factorvae_score",
)

#: Per-run metrics in the comparison table (all per held-out data point, nats where applicable).
METRICS = (
    "active_units", "mi", "kl", "elbo", "iw_log_likelihood", "wall_time",
    *DISENTANGLEMENT_METRICS,
)  # fmt: skip

#: Metrics with a paired difference against the baseline cell in the summary
#: (``<metric>_diff``, ``<metric>_diff_lo``, ``<metric>_diff_hi``).
PAIRED_METRICS = ("iw_log_likelihood", "mi", "active_units", "elbo", "kl", *DISENTANGLEMENT_METRICS)

#: The column of a grid's model variant (present only when the grid has variants).
VARIANT = "variant"

#: Coverage of the Student-t intervals of the paired differences (and of the ranking's test).
CONFIDENCE = 0.95

#: Multiple-comparison adjustments of :func:`summarize_runs`: ``"none"`` (each interval
#: and each pairwise test at :data:`CONFIDENCE` on its own) or ``"bonferroni"`` (the
#: intervals against the baseline hold jointly at :data:`CONFIDENCE` over the grid's
#: ``k - 1`` comparisons with it, each at ``1 - (1 - CONFIDENCE) / (k - 1)``; the ranking's
#: pairwise tests jointly over its ``k (k - 1) / 2`` pairs of ranked cells).
ADJUSTMENTS = ("none", "bonferroni")


def _adjusted_level(comparisons: int, adjust: str) -> float:
    """Per-interval coverage that makes ``comparisons`` intervals hold jointly at
    :data:`CONFIDENCE` (Bonferroni), or :data:`CONFIDENCE` itself without adjustment."""
    if adjust == "none" or comparisons <= 1:
        return CONFIDENCE
    return 1.0 - (1.0 - CONFIDENCE) / comparisons

#: How the table is ranked. A cell *beats* another when their paired per-seed difference
#: of held-out IW log-likelihood (over the seeds both finished) has a 95 % Student-t
#: interval above 0; the rows are ordered by rank, then by mean IW log-likelihood, then
#: by mean active units. With one seed there is no interval and every cell is tied.
RANKING = (
    "held-out importance-weighted log-likelihood (higher is better); a cell's rank is 1 + "
    "the number of cells that beat it on paired per-seed differences (95% t-interval of "
    "the difference above 0), so cells that cannot be told apart share a rank, marked =k"
)


def _baseline_cell(baseline: Any, cells: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """The cell that ``baseline`` names among ``cells`` (the first when ``None``): cells
    are ``(prior, objective)`` pairs, or ``(prior, objective, variant)`` triples in a
    grid of model variants; ``baseline`` is ``"PRIOR:OBJECTIVE"`` (``":VARIANT"`` added
    with variants) or such a tuple. A ``ValueError`` names the accepted cells when it is
    none of them."""
    cells = [tuple(c) for c in cells]
    width = len(cells[0]) if cells else 2
    form = "PRIOR:OBJECTIVE" + (":VARIANT" if width == 3 else "")
    accepted = ", ".join(":".join(c) for c in cells)
    if baseline is None:
        if not cells:
            raise ValueError("there is no cell to take as the baseline (an empty table)")
        return cells[0]
    if isinstance(baseline, str):
        parts = tuple(p.strip() for p in baseline.split(":"))
        key = parts if len(parts) == width else None
    elif (
        isinstance(baseline, (tuple, list))
        and len(baseline) in (2, 3)
        and all(isinstance(x, str) for x in baseline)
    ):
        key = tuple(baseline)
    else:
        raise TypeError(
            f"baseline must be {form!r}, a tuple of {width} names or None, got "
            f"{type(baseline).__name__} {baseline!r}"
        )
    if key not in cells:
        raise ValueError(
            f"baseline {baseline!r} is not a cell of this grid; accepted ({form}): {accepted}"
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


def _paired(a: Any, b: Any, level: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """``(mean, lo, hi, n)`` of the per-seed differences ``a - b`` over the seeds both hold:
    the mean and its Student-t interval at coverage ``level`` with ``n - 1`` degrees of
    freedom (``lo``, ``hi`` NaN with fewer than 2 seeds; all NaN with none)."""
    d = (a - b).dropna()
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def summarize_runs(
    table: Any, baseline: str | tuple[str, str] | None = None, *, adjust: str = "none"
) -> Any:
    """Summarise a grid's runs per (prior, objective), or per (prior, objective, variant)
    when the table has a ``variant`` column, with paired differences against a baseline
    cell, ranked by :data:`RANKING`.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per run (``runs.csv``): ``prior``, ``objective``, ``seed``, ``status``
        (``"ok"`` for a finished run), the metrics of :data:`METRICS` and ``error``.
    baseline : str, tuple of str or None
        The cell the others are compared with, ``"PRIOR:OBJECTIVE"`` or
        ``(prior, objective)`` (``"PRIOR:OBJECTIVE:VARIANT"`` or a triple with a
        ``variant`` column); ``None``: the table's first cell (a grid's first prior with
        its first objective).
    adjust : {"none", "bonferroni"}
        Multiple-comparison adjustment (:data:`ADJUSTMENTS`). ``"none"``: every interval
        and every pairwise test of the ranking at :data:`CONFIDENCE` on its own (with
        many cells some will exclude 0 by chance). ``"bonferroni"``: the intervals
        against the baseline hold jointly over the ``k - 1`` other cells, and the
        ranking's tests jointly over all pairs of ranked cells (each test at
        ``1 - (1 - CONFIDENCE) / m`` for ``m`` comparisons), so a rank or an interval
        that excludes 0 holds for the grid as a whole.

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
          ``interval_level`` (``n_paired - 1`` degrees of freedom; NaN with fewer than 2
          paired seeds). Seeds where either value is not finite are left out;
        * ``adjust``, ``interval_level`` and ``rank_level``: the adjustment, and the
          coverage of each interval against the baseline and of each pairwise test of the
          ranking (:data:`CONFIDENCE` without adjustment), the same on every row;
        * ``baseline``: True on the baseline's row;
        * ``rank`` (nullable int): 1 + the number of cells that beat this one, where a
          cell beats another when the interval (at ``rank_level``) of their paired
          difference of held-out IW log-likelihood lies above 0; ``<NA>`` for a cell with
          no finite IW log-likelihood (no finished run), which is listed last;
        * ``tied``: another cell has the same rank.

        Rows are ordered by rank, then mean IW log-likelihood, then mean active units.

    Raises
    ------
    ValueError
        If a column is missing, ``baseline`` is not a cell of the table (naming the
        accepted cells), or ``adjust`` is not one of :data:`ADJUSTMENTS`.
    """
    import numpy as np
    import pandas as pd

    from pyrocollapse._validation import check_choice, check_columns

    adjust = check_choice("adjust", adjust, ADJUSTMENTS)
    check_columns("table", table, ["prior", "objective", "seed", "status"])

    keys = ["prior", "objective"] + ([VARIANT] if VARIANT in table else [])
    groups = [
        (tuple(map(str, key)), g)
        for key, g in table.astype({k: str for k in keys}).groupby(keys, sort=False)
    ]
    base_key = _baseline_cell(baseline, [key for key, _ in groups])
    finished = {key: g[g["status"] == "ok"] for key, g in groups}
    base_ok = finished[base_key]
    base_values = {m: _per_seed(base_ok, m) for m in PAIRED_METRICS}
    base_seeds = set(base_ok["seed"])
    interval_level = _adjusted_level(len(groups) - 1, adjust)
    # the ranking's pairs: every two cells with a finite IW log-likelihood
    ll = {key: _per_seed(finished[key], "iw_log_likelihood") for key, _ in groups}
    ranked = [key for key in ll if len(ll[key])]
    rank_level = _adjusted_level(len(ranked) * (len(ranked) - 1) // 2, adjust)

    out = []
    for key, g in groups:
        ok = finished[key]
        row: dict[str, Any] = dict(zip(keys, key))
        row.update({
            "n_ok": len(ok),
            "n_failed": int((g["status"] != "ok").sum()),
        })  # fmt: skip
        for m in METRICS:
            vals = pd.to_numeric(ok[m], errors="coerce") if m in ok else pd.Series(dtype=float)
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = (
                float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            )
        errors = g["error"].dropna() if "error" in g else []
        errors = [e for e in errors if isinstance(e, str) and e]
        row["error"] = errors[0] if errors else ""
        row["baseline"] = key == base_key
        row["n_paired"] = len(base_seeds & set(ok["seed"]))
        for m in PAIRED_METRICS:
            diff, lo, hi, _ = _paired(_per_seed(ok, m), base_values[m], interval_level)
            row[f"{m}_diff"], row[f"{m}_diff_lo"], row[f"{m}_diff_hi"] = diff, lo, hi
        row["adjust"], row["interval_level"], row["rank_level"] = adjust, interval_level, rank_level
        out.append(row)
    summary = pd.DataFrame(out)

    # rank: 1 + the number of cells that beat a cell on paired per-seed differences
    beaten = {key: 0 for key in ranked}
    for key in ranked:
        for other in ranked:
            if other != key and _paired(ll[other], ll[key], rank_level)[1] > 0:
                beaten[key] += 1
    ranks = [beaten.get(key) for key, _ in groups]
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

    In a grid of model variants a ``variant`` column follows the objective. When any
    cell has disentanglement scores (:data:`DISENTANGLEMENT_METRICS`), the table adds
    MIG, SAP, DCI D/C/I and FactorVAE (means over seeds; ``—`` for a cell without them)
    and the paired difference of MIG against the baseline.
    """
    from pyrocollapse._validation import check_columns

    check_columns(
        "summary",
        summary,
        ["prior", "objective", "n_ok", "n_failed", "error", "baseline", "rank", "tied"]
        + [f"{m}_{s}" for m in METRICS if m not in DISENTANGLEMENT_METRICS for s in ("mean", "std")]
        + [f"{m}_{s}" for m in ("iw_log_likelihood", "mi") for s in ("diff", "diff_lo", "diff_hi")],
    )
    base = summary[summary["baseline"].astype(bool)]
    has_variant = VARIANT in summary
    name_cols = ["prior", "objective"] + ([VARIANT] if has_variant else [])
    base_name = " + ".join(str(base[c].iloc[0]) for c in name_cols) if len(base) else "(none)"
    import textwrap

    adjusted, interval_text, rank_text = _adjustment_texts(summary)
    lines = [
        *textwrap.wrap(f"ranked by {RANKING}{rank_text}", width=100, subsequent_indent="  "),
        *textwrap.wrap(
            f"baseline: {base_name}; Δ = cell - baseline, the mean of the per-seed differences "
            f"(same seed, same train/held-out split) [{interval_text}]",
            width=100,
            subsequent_indent="  ",
        ),
    ]

    def ms(r: Any, m: str, p: int = 2) -> str:
        if not _finite(r[m + "_mean"]):
            return "-"
        return f"{r[m + '_mean']:.{p}f}±{r[m + '_std']:.{p}f}"

    disent = [m for m in DISENTANGLEMENT_METRICS if f"{m}_mean" in summary]
    has_disent = any(_finite(v) for m in disent for v in summary[f"{m}_mean"])

    def mean(r: Any, m: str) -> str:
        key = f"{m}_mean"
        return f"{float(r[key]):.2f}" if key in r and _finite(r[key]) else "—"

    header = ["rank", *name_cols, "AU", "MI", "KL", "ELBO", "IW log p(x)",
              "Δ IW log p(x)", "Δ MI"]  # fmt: skip
    if has_disent:
        header += ["MIG", "SAP", "DCI D/C/I", "FactorVAE", "Δ MIG"]
    header += ["time s", "ok/fail"]
    left = set(name_cols)
    rows, errors = [], []
    for _, r in summary.iterrows():
        cells = [_rank_text(r), *(str(r[c]) for c in name_cols)]
        cells += [
            ms(r, "active_units", 1),
            ms(r, "mi"),
            ms(r, "kl"),
            ms(r, "elbo"),
            ms(r, "iw_log_likelihood"),
            _diff_text(r, "iw_log_likelihood"),
            _diff_text(r, "mi"),
        ]
        if has_disent:
            dci = "/".join(
                mean(r, f"dci_{p}") for p in ("disentanglement", "completeness", "informativeness")
            )
            mig_diff = _diff_text(r, "mig") if "mig_diff" in r else "n/a"
            cells += [
                mean(r, "mig"),
                mean(r, "sap"),
                dci,
                mean(r, "factorvae_score"),
                "—" if mig_diff == "n/a" else mig_diff,
            ]
        cells += [
            f"{r['wall_time_mean']:.1f}" if _finite(r["wall_time_mean"]) else "-",
            f"{r['n_ok']}/{r['n_failed']}",
        ]
        rows.append(cells)
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
    elif not adjusted and n_ranked >= 3:
        lines += textwrap.wrap(
            f"note: each interval and each of the ranking's {_ranked_pairs(summary)} pairwise "
            "tests holds at "
            f"{CONFIDENCE:.0%} on its own, so over the grid some may exclude 0 by chance; "
            "--adjust bonferroni (adjust='bonferroni') makes them hold jointly",
            width=100,
            subsequent_indent="  ",
        )
    return "\n".join(lines)


def _adjustment_texts(summary: Any) -> tuple[bool, str, str]:
    """``(adjusted, interval text, ranking suffix)`` from a summary's ``adjust``,
    ``interval_level`` and ``rank_level`` columns (a summary written before they existed
    reads as unadjusted)."""
    if not len(summary) or str(summary.iloc[0].get("adjust", "none")) != "bonferroni":
        return False, f"{CONFIDENCE:.0%} t-interval", ""
    level = float(summary.iloc[0]["interval_level"])
    rank_level = float(summary.iloc[0]["rank_level"])
    others, pairs = len(summary) - 1, _ranked_pairs(summary)
    interval = (
        f"{_pct(level)} t-intervals: Bonferroni, jointly {CONFIDENCE:.0%} over the "
        f"{others} comparison{'' if others == 1 else 's'} with the baseline"
    )
    rank = (
        f"; Bonferroni-adjusted: each pairwise test at {_pct(rank_level)}, jointly "
        f"{CONFIDENCE:.0%} over {pairs} pair{'' if pairs == 1 else 's'}"
    )
    return True, interval, rank


def _ranked_pairs(summary: Any) -> int:
    """The ranking's pairwise tests: every two cells with a rank."""
    n = int(summary["rank"].notna().sum())
    return n * (n - 1) // 2


def _pct(level: float) -> str:
    """A coverage as a percentage with at most 3 decimals: 95%, 98.75%, 99.167%."""
    return f"{100 * level:.3f}".rstrip("0").rstrip(".") + "%"
