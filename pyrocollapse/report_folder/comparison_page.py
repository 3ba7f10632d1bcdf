"""The page of a :func:`pyrocollapse.comparison.compare` grid: ``comparison.html``."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pyrocollapse._run_summary import (
    DISENTANGLEMENT_METRICS,
    RANKING,
    VARIANT,
    _adjustment_texts,
    _diff_text,
    _rank_text,
)
from pyrocollapse._validation import check_bool
from pyrocollapse.report_folder.config_table import _config_table, _value_text
from pyrocollapse.report_folder.rendering import (
    _DASH,
    _Cell,
    _cell,
    _Column,
    _finite,
    _image_src,
    _num,
    _render,
    _Table,
)

__all__ = ["render_comparison_html"]


#: Columns ``comparison.csv`` must have for :func:`render_comparison_html`.
_COMPARISON_COLUMNS = (
    "prior",
    "objective",
    "n_ok",
    "n_failed",
    "baseline",
    "rank",
    "tied",
    *(
        f"{m}_{s}"
        for m in ("active_units", "mi", "kl", "elbo", "iw_log_likelihood")
        for s in ("mean", "std")
    ),
    *(f"iw_log_likelihood_{s}" for s in ("diff", "diff_lo", "diff_hi")),
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")

#: The disentanglement columns of the ranked table: (metric, header, what it is).
_DISENTANGLEMENT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mig", "MIG", "mutual information gap, in [0, 1]"),
    ("sap", "SAP", "separated attribute predictability, in [0, 1]"),
    ("dci_disentanglement", "DCI D", "DCI disentanglement, in [0, 1]"),
    ("dci_completeness", "DCI C", "DCI completeness, in [0, 1]"),
    ("dci_informativeness", "DCI I", "DCI informativeness (held-out prediction score)"),
    ("factorvae_score", "FactorVAE", "FactorVAE score, in [0, 1]"),
)
assert tuple(m for m, _, _ in _DISENTANGLEMENT_COLUMNS) == DISENTANGLEMENT_METRICS

#: A cell of the grid: ``(prior, objective)``, or ``(prior, objective, variant)`` in a
#: grid of model variants.
CellKey = tuple[str, ...]


def _cell_key(row: Any, has_variant: bool) -> CellKey:
    """The cell a row of ``comparison.csv`` or ``runs.csv`` belongs to."""
    names = ("prior", "objective", VARIANT) if has_variant else ("prior", "objective")
    return tuple(str(row.get(c)) for c in names)


def _finite_column(table: Any, column: str) -> bool:
    """Whether ``table`` has ``column`` with at least one finite value."""
    return column in table and any(_finite(v) for v in table[column])


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):  # pandas.NA
        return False


def _read_csv(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=True)
    except Exception as e:  # pandas raises many types for a bad CSV
        raise ValueError(f"{str(path)!r} could not be read as a table ({e})") from None


def _grid_folder(grid_folder: str | os.PathLike[str]) -> Path:
    if not isinstance(grid_folder, (str, os.PathLike)):
        raise TypeError(f"grid_folder must be a path, got {type(grid_folder).__name__}")
    folder = Path(grid_folder)
    if not folder.exists():
        raise FileNotFoundError(f"grid folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(
            f"{str(folder)!r} is not a folder; pass a grid folder written by 'pyrocollapse compare'"
        )
    if not (folder / "comparison.csv").is_file():
        raise FileNotFoundError(
            f"{str(folder / 'comparison.csv')!r} not found: {str(folder)!r} is not a "
            "pyrocollapse compare folder"
        )
    return folder


def _mean_std(row: Any, metric: str, digits: int = 2) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if not _finite(mean):
        return _DASH
    return (
        f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"
        if _finite(std)
        else f"{float(mean):.{digits}f}"
    )


def _diff_cell(row: Any, metric: str) -> _Cell:
    """``+0.41 [+0.12, +0.70]``; bold (class ``sig``) when the interval excludes 0."""
    if f"{metric}_diff" not in row:
        return _Cell(_DASH)
    text = _diff_text(row, metric)
    lo, hi = row.get(f"{metric}_diff_lo"), row.get(f"{metric}_diff_hi")
    sig = not row["baseline"] and _finite(lo) and _finite(hi) and (float(lo) > 0 or float(hi) < 0)
    return _Cell(text, text=text == "baseline", cls="sig" if sig else "")


def _run_links(folder: Path, runs: Any) -> dict[CellKey, list[dict[str, Any]]]:
    """Per cell (``(prior, objective)``, with a ``variant`` column ``(prior, objective,
    variant)``, so that the runs of different variants stay apart): its runs as
    ``{"run", "label", "href", "failed", "error", "row"}``."""
    out: dict[CellKey, list[dict[str, Any]]] = {}
    if runs is None:
        return out
    has_variant = VARIANT in runs
    for _, r in runs.iterrows():
        run = str(r.get("run", ""))
        seed = r.get("seed")
        label = f"seed {int(seed)}" if _finite(seed) else run
        ok = str(r.get("status", "")) == "ok"
        href = None
        if _SAFE_NAME.fullmatch(run):
            if ok and (folder / "runs" / run / "report.html").is_file():
                href = f"runs/{run}/report.html"
            elif not ok and (folder / "runs" / f"{run}.error.json").is_file():
                href = f"runs/{run}.error.json"
        error = r.get("error")
        out.setdefault(_cell_key(r, has_variant), []).append(
            {
                "run": run,
                "label": label,
                "href": href,
                "failed": not ok,
                "error": error if isinstance(error, str) else "",
                "row": r,
            }
        )
    return out


def render_comparison_html(
    grid_folder: str | os.PathLike[str], *, self_contained: bool = False
) -> str:
    """The comparison page of a :func:`pyrocollapse.comparison.compare` grid folder.

    From ``comparison.csv`` (required), ``runs.csv``, ``grid.json`` and
    ``figures/au_vs_nll.png`` (where present): the ranked table (rank, ``=k`` for cells
    that share it, mean ± sd over seeds, paired differences against the baseline with
    their intervals), links to each run's ``report.html`` (or its error), every run, the
    grid's settings and the figure. In a grid of model variants (a ``variant`` column)
    every cell is ``(prior, objective, variant)``, shown with a ``variant`` column; where
    any cell has disentanglement scores, the table adds MIG, SAP, DCI D/C/I and FactorVAE
    (those with a finite value in some cell) and the paired difference of MIG.

    Parameters
    ----------
    grid_folder : path
        The ``out`` folder of a grid.
    self_contained : bool
        Embed the figure as a base64 ``data:`` URI (the links to the runs stay relative).

    Raises
    ------
    FileNotFoundError
        A missing folder or ``comparison.csv``.
    ValueError
        A table that cannot be read or lacks a column.
    """
    from pyrocollapse._validation import check_columns

    check_bool("self_contained", self_contained)
    folder = _grid_folder(grid_folder)
    summary_path = folder / "comparison.csv"
    summary = _read_csv(summary_path)
    check_columns(repr(str(summary_path)), summary, _COMPARISON_COLUMNS)
    for col in ("baseline", "tied"):
        summary[col] = [_truthy(v) for v in summary[col]]
    runs = None
    runs_path = folder / "runs.csv"
    if runs_path.is_file():
        runs = _read_csv(runs_path)
        check_columns(repr(str(runs_path)), runs, ["run", "prior", "objective", "seed", "status"])
    grid: dict[str, Any] = {}
    grid_path = folder / "grid.json"
    if grid_path.is_file():
        try:
            loaded = json.loads(grid_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(grid_path)!r} is not valid JSON ({e})") from None
        grid = loaded if isinstance(loaded, dict) else {}
    links = _run_links(folder, runs)
    _, pct, rank_rule = _adjustment_texts(summary)  # "95% t-interval" unless adjusted
    has_variant = VARIANT in summary
    shown_disent = [
        (m, name, what)
        for m, name, what in _DISENTANGLEMENT_COLUMNS
        if _finite_column(summary, f"{m}_mean")
    ]
    has_mig = any(m == "mig" for m, _, _ in shown_disent)

    columns = [
        _Column("rank", "1 + the number of cells that beat this one; =k: tied with another cell"),
        _Column("prior", "the prior p(z)", text=True),
        _Column("objective", "the training objective", text=True),
    ]
    if has_variant:
        columns.append(
            _Column("variant", "the model variant (model options of the cell)", text=True)
        )
    columns += [
        _Column("AU", "active units, mean ± sd over seeds"),
        _Column("MI", "I_q(x; z) summed over sites, nats per point, mean ± sd over seeds"),
        _Column("KL", "E_x KL(q(z|x) || p(z)), nats per point, mean ± sd over seeds"),
        _Column("ELBO", "held-out ELBO, nats per point, mean ± sd over seeds"),
        _Column(
            "IW log p(x)",
            "held-out importance-weighted log-likelihood, nats per point (higher is "
            "better), mean ± sd over seeds",
        ),
        _Column(
            "Δ IW log p(x)",
            f"cell - baseline, mean of the per-seed differences [{pct}]; bold: the "
            "interval excludes 0",
        ),
        _Column("Δ MI", f"the same for MI [{pct}]"),
        _Column("Δ AU", f"the same for active units [{pct}]"),
    ]
    columns += [
        _Column(name, f"{what}, of the first scored latent site, mean ± sd over seeds")
        for _, name, what in shown_disent
    ]
    if has_mig:
        columns.append(_Column("Δ MIG", f"the same for MIG [{pct}]"))
    columns += [
        _Column("paired", "seeds both this cell and the baseline finished"),
        _Column("time s", "mean training time of a run, seconds"),
        _Column("ok/failed", "runs finished / failed"),
        _Column("runs", "each run's report (a failed run: its error)", text=True),
    ]
    rows, classes, errors = [], [], []
    for _, r in summary.iterrows():
        key = _cell_key(r, has_variant)
        runs_cell = [
            {"label": x["label"] + (" (failed)" if x["failed"] else ""), "href": x["href"]}
            for x in links.get(key, [])
        ]
        row = [_Cell(_rank_text(r)), *(_Cell(name, text=True) for name in key)]
        row += [
            _Cell(_mean_std(r, "active_units", 1)),
            _Cell(_mean_std(r, "mi")),
            _Cell(_mean_std(r, "kl")),
            _Cell(_mean_std(r, "elbo")),
            _Cell(_mean_std(r, "iw_log_likelihood")),
            _diff_cell(r, "iw_log_likelihood"),
            _diff_cell(r, "mi"),
            _diff_cell(r, "active_units"),
        ]
        row += [_Cell(_mean_std(r, m)) for m, _, _ in shown_disent]
        if has_mig:
            mig = _diff_cell(r, "mig")
            row.append(_Cell(_DASH) if mig.value == "n/a" else mig)
        row += [
            _cell(int(r["n_paired"]) if _finite(r.get("n_paired")) else None),
            _Cell(
                f"{float(r['wall_time_mean']):.1f}" if _finite(r.get("wall_time_mean")) else _DASH
            ),
            _Cell(f"{_num(r['n_ok'])}/{_num(r['n_failed'])}"),
            _Cell("", text=True, links=tuple(runs_cell)),
        ]
        rows.append(row)
        classes.append("baseline" if r["baseline"] else ("tied" if r["tied"] else ""))
        error = r.get("error")
        if isinstance(error, str) and error:
            errors.append((" + ".join(key), error))
    base = summary[summary["baseline"]]
    baseline = " + ".join(_cell_key(base.iloc[0], has_variant)) if len(base) else None
    n_ranked = int(summary["rank"].notna().sum())
    one_seed = n_ranked >= 2 and len(summary) and float(summary["n_ok"].max()) < 2
    hidden_disent = (
        [name for m, name, _ in _DISENTANGLEMENT_COLUMNS if m not in {c[0] for c in shown_disent}]
        if shown_disent
        else []
    )

    run_table = None
    if runs is not None:
        run_has_variant = VARIANT in runs
        run_mig = _finite_column(runs, "mig")
        run_rows = []
        for key, items in links.items():
            for x in items:
                r = x["row"]
                run_rows.append(
                    [
                        _Cell(x["run"], text=True, href=x["href"]),
                        *(_Cell(name, text=True) for name in key),
                        _cell(int(r["seed"]) if _finite(r.get("seed")) else r.get("seed")),
                        _Cell(str(r.get("status", "")), text=True),
                        _Cell(
                            str(r["verdict"]) if isinstance(r.get("verdict"), str) else _DASH,
                            text=True,
                        ),
                        _cell(r.get("active_units")),
                        _cell(r.get("mi")),
                        _cell(r.get("iw_log_likelihood")),
                        *([_cell(r.get("mig"), ".3f")] if run_mig else []),
                        _Cell(
                            f"{float(r['wall_time']):.1f}" if _finite(r.get("wall_time")) else _DASH
                        ),
                        _Cell(_resumed_text(r), text=True),
                        _Cell(x["error"], text=True),
                    ]
                )
        run_table = _Table(
            [
                _Column("run", "its report folder", text=True),
                _Column("prior", text=True),
                _Column("objective", text=True),
                *([_Column("variant", "the model variant", text=True)] if run_has_variant else []),
                _Column("seed", "fixes the train/held-out split and the initialisation"),
                _Column("status", text=True),
                _Column("verdict", "the run's collapse verdict", text=True),
                _Column("AU", "active units"),
                _Column("MI", "I_q(x; z), nats per point"),
                _Column("IW log p(x)", "held-out IW log-likelihood, nats per point"),
                *(
                    [_Column("MIG", "mutual information gap of the first scored site")]
                    if run_mig
                    else []
                ),
                _Column("time s", "training time, seconds"),
                _Column(
                    "reused",
                    "read back from an earlier grid, or why it was trained again",
                    text=True,
                ),
                _Column("error", text=True),
            ],
            run_rows,
        )
    base_config = grid.get("base") if isinstance(grid.get("base"), dict) else {}
    figure = None
    fig_path = folder / "figures" / "au_vs_nll.png"
    if fig_path.is_file():
        figure = {
            "src": _image_src(fig_path, "figures/au_vs_nll.png", self_contained),
            "alt": "au_vs_nll",
            "caption": "Active units (left) and mutual information I(x; z) (right) of each "
            "cell against its held-out negative log-likelihood (IW estimate, else the "
            "negative ELBO); error bars: one standard deviation over seeds.",
        }
    return _render(
        "comparison.html",
        ranking=RANKING + rank_rule,
        baseline=baseline,
        pct=pct,
        ranked=_Table(columns, rows, classes),
        errors=errors,
        one_seed=bool(one_seed),
        runs=run_table,
        grid={
            "priors": _value_text(grid.get("priors")) if grid.get("priors") else None,
            "elbos": _value_text(grid.get("elbos")) if grid.get("elbos") else None,
            "seeds": _value_text(grid.get("seeds")) if grid.get("seeds") is not None else None,
            "variants": _variants_text(grid),
        },
        hidden_disentanglement=", ".join(hidden_disent),
        config=_config_table(base_config, skip=("prior", "elbo", "seed")),
        fig=figure,
    )


def _variants_text(grid: dict[str, Any]) -> str | None:
    """``plain, skip (skip=yes)``: the grid's model variants with their model options."""
    variants = grid.get("variants")
    if not isinstance(variants, list) or not variants:
        return None
    options = grid.get("variant_options")
    options = options if isinstance(options, dict) else {}
    parts = []
    for v in variants:
        opts = options.get(v)
        parts.append(f"{v} ({_value_text(opts)})" if isinstance(opts, dict) and opts else str(v))
    return ", ".join(parts)


def _resumed_text(r: Any) -> str:
    redone = r.get("redone")
    if isinstance(redone, str) and redone:
        return f"trained again: {redone}"
    return "yes" if _truthy(r.get("resumed")) else "no"
