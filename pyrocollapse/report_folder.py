"""The report folder written by ``pyrocollapse run`` and its HTML page.

Layout of a report folder::

    metrics.json       {"report": CollapseReport.to_dict(), run metadata ...}
    history.csv        History.to_dataframe() (one row per epoch)
    posterior.nc       InferenceData of the guide's draws (optional)
    figures/*.png      figures (see FIGURES)
    report.html        one page with the tables and every figure
    model.pt           the trained weights (written by ``run``)

Figures built from a report or a history can be rebuilt from the saved files
(:func:`rerender`, the ``pyrocollapse report DIR`` command); figures that need the model
(traversals, reconstructions) are written by ``run`` only and kept as they are. The page
links the figures by relative path, so the folder can be moved or archived as a whole.
Every file is written atomically.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyrocollapse._validation import check_bool, check_choice, check_int, check_type

__all__ = [
    "FIGURES",
    "FigureSpec",
    "ReportFolder",
    "figure_name",
    "history_figures",
    "model_figures",
    "read_folder",
    "render_html",
    "report_figures",
    "rerender",
    "write_figures",
    "write_html",
    "write_report_folder",
]


@dataclass(frozen=True)
class FigureSpec:
    """A kind of figure in a report folder.

    ``source`` says what it is drawn from: ``"report"`` (metrics.json),
    ``"history"`` (history.csv) or ``"model"`` (needs the trained model; not rebuildable).
    """

    kind: str
    caption: str
    source: str


#: Figure kinds, in page order.
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "kl_per_dim",
        "KL(q(z_d|x) || p(z_d)) per latent dimension, coloured by status (x: collapsed).",
        "report",
    ),
    FigureSpec(
        "dimensions",
        "Every per-dimension metric: KL and MI, active-unit variance against its threshold, "
        "ln R-hat with observations as chains, decoder sensitivity.",
        "report",
    ),
    FigureSpec(
        "posterior_densities",
        "q(z_d|x) of a few observations over the prior p(z_d): collapsed dimensions show every "
        "posterior on top of the prior.",
        "report",
    ),
    FigureSpec(
        "posterior_mean_space",
        "Approximate vs model posterior means (He et al. 2019): off-diagonal points with flat "
        "approximate means indicate a lagging inference network.",
        "report",
    ),
    FigureSpec(
        "khat",
        "PSIS k-hat of the guide per data point: above 0.7 the guide is a poor approximation.",
        "report",
    ),
    FigureSpec("kl_heatmap", "KL per dimension over training (dimension x epoch).", "history"),
    FigureSpec("training", "ELBO, KL weight, active units and MI over training.", "history"),
    FigureSpec(
        "elbo_decomposition", "Negative ELBO decomposition over training (stacked).", "history"
    ),
    FigureSpec("traversals", "Latent traversals: decoder means as one dimension sweeps.", "model"),
    FigureSpec("reconstructions", "Held-out observations and their reconstructions.", "model"),
)

_SPECS = {spec.kind: spec for spec in FIGURES}
_PER_SITE = {
    "kl_per_dim",
    "dimensions",
    "posterior_densities",
    "posterior_mean_space",
    "kl_heatmap",
    "training",
    "traversals",
}


def figure_name(kind: str, site: str | None = None, num_sites: int = 1) -> str:
    """File stem of a figure: ``kind``, or ``kind_<site>`` when a report has several sites."""
    check_choice("kind", kind, _SPECS)
    num_sites = check_int("num_sites", num_sites, minimum=1)
    if site is not None and not isinstance(site, str):
        raise TypeError(f"site must be a str or None, got {type(site).__name__}")
    if site is None or num_sites <= 1 or kind not in _PER_SITE:
        return kind
    return f"{kind}_{re.sub(r'[^A-Za-z0-9_-]', '_', site)}"


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
@dataclass
class ReportFolder:
    """The saved parts of a report folder."""

    path: Path
    metrics: dict[str, Any]
    report: Any
    history: Any


def read_folder(path: str | os.PathLike[str]) -> ReportFolder:
    """Read and validate ``metrics.json`` (and ``history.csv`` where present).

    Raises ``FileNotFoundError`` for a missing folder or ``metrics.json`` and
    ``ValueError`` naming the file for anything malformed.
    """
    from pyrocollapse.report import CollapseReport

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"report folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(
            f"{str(folder)!r} is not a folder; pass a report folder written by 'pyrocollapse run'"
        )
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{str(metrics_path)!r} not found: {str(folder)!r} is not a pyrocollapse report folder"
        )
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(metrics_path)!r} is not valid JSON ({e})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("report"), dict):
        raise ValueError(
            f"{str(metrics_path)!r} has no 'report' object; it is not a pyrocollapse metrics file"
        )
    try:
        report = CollapseReport.from_dict(metrics["report"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{str(metrics_path)!r}: {e}") from None
    history = None
    history_path = folder / "history.csv"
    if history_path.is_file():
        import pandas as pd

        from pyrocollapse.train import History

        try:
            history = History.from_dataframe(pd.read_csv(history_path))
        except Exception as e:  # pandas raises many types for a bad CSV
            raise ValueError(
                f"{str(history_path)!r} could not be read as a training history ({e})"
            ) from None
    return ReportFolder(folder, metrics, report, history)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def report_figures(report: Any) -> dict[str, Any]:
    """Figures drawn from a :class:`~pyrocollapse.report.CollapseReport`, by file stem;
    kinds whose data the report lacks are left out."""
    from pyrocollapse import plots

    _check_report(report)
    out: dict[str, Any] = {}
    n = len(report.sites)
    for site, s in report.sites.items():
        out[figure_name("kl_per_dim", site, n)] = plots.plot_kl_per_dim(report, site=site)
        out[figure_name("dimensions", site, n)] = plots.plot_dimensions(report, site=site)
        if s.densities is not None:
            out[figure_name("posterior_densities", site, n)] = plots.plot_posterior_densities(
                report, site=site
            )
        if s.mean_space is not None:
            out[figure_name("posterior_mean_space", site, n)] = plots.plot_posterior_mean_space(
                report, site=site
            )
    if report.guide_quality is not None and report.guide_quality.get("khat") is not None:
        out["khat"] = plots.plot_khat(report)
    return out


def history_figures(history: Any, sites: list[str]) -> dict[str, Any]:
    """Figures drawn from a :class:`~pyrocollapse.train.History`, by file stem."""
    from pyrocollapse import plots

    _check_history(history)
    if isinstance(sites, str) or not isinstance(sites, (list, tuple)):
        raise TypeError(f"sites must be a list of site names, got {type(sites).__name__} {sites!r}")
    out: dict[str, Any] = {}
    if history is None or len(history) == 0:
        return out
    n = len(sites)
    recorded = plots._history_sites(history)
    for site in sites:
        if any(site in r.kl_per_dim for r in history):
            out[figure_name("kl_heatmap", site, n)] = plots.plot_kl_heatmap(history, site)
        if not recorded or site in recorded:
            out[figure_name("training", site, n)] = plots.plot_training(history, site)
    out["elbo_decomposition"] = plots.plot_elbo_decomposition(history)
    return out


def model_figures(vae: Any, held_out: Any, report: Any, *, max_dims: int = 8) -> dict[str, Any]:
    """Latent traversals (per site, the ``max_dims`` dimensions with the largest KL) and
    reconstructions of held-out images; they need the model, so only ``run`` draws them.

    Parameters
    ----------
    vae : pyrocollapse.models.VAE
        Or any object with ``model`` and ``guide`` Pyro programs.
    held_out : pyrocollapse.data.Dataset
        Held-out data with an ``image_shape``.
    report : CollapseReport
    """
    import numpy as np
    import torch

    from pyrocollapse.diagnostics import latent_traversal, reconstruction_means
    from pyrocollapse.plots import plot_reconstructions, plot_traversals

    if isinstance(held_out, torch.Tensor) or not hasattr(held_out, "data"):
        raise TypeError(
            f"held_out must be a pyrocollapse.data.Dataset, got {type(held_out).__name__}"
        )
    _check_report(report)
    max_dims = check_int("max_dims", max_dims, minimum=1)
    x, shape = held_out.data, getattr(held_out, "image_shape", None)
    if shape is None:
        raise ValueError(
            f"held_out {getattr(held_out, 'name', 'data')!r} has no image_shape; traversal and "
            "reconstruction figures are drawn for image data only"
        )
    figures = {}
    n = len(report.sites)
    for site, s in report.sites.items():
        order = np.argsort(-np.asarray(s.kl_per_dim), kind="stable")[:max_dims]
        trav = latent_traversal(
            vae.model, vae.guide, x[:1], site=site, dims=sorted(map(int, order))
        )
        figures[figure_name("traversals", site, n)] = plot_traversals(trav, shape)
    recon = reconstruction_means(vae.model, vae.guide, x[:8])
    figures["reconstructions"] = plot_reconstructions(x[:8].cpu().numpy(), recon, shape)
    return figures


def write_figures(folder: str | os.PathLike[str], figures: dict[str, Any]) -> list[str]:
    """Save each figure as ``folder/figures/<stem>.png`` (atomically); returns the stems."""
    from matplotlib.figure import Figure

    from pyrocollapse.plots import save_figure

    check_type("figures", figures, dict, "a dict of name -> Figure")
    for stem, fig in figures.items():
        if not isinstance(stem, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", stem):
            raise ValueError(
                f"figure name {stem!r} must be a non-empty file stem of letters, digits, '_' "
                "and '-'"
            )
        check_type(f"figures[{stem!r}]", fig, Figure, "a matplotlib Figure")
    fig_dir = Path(folder) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stem, fig in figures.items():
        save_figure(fig, str(fig_dir / f"{stem}.png"))
    return list(figures)


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td.text,th.text{text-align:left}
.verdict{display:inline-block;padding:.15em .6em;border-radius:.3em;color:#fff;font-weight:600}
.healthy{background:#1a9850}.partial{background:#f46d43}.full{background:#a50026}
.active{background:#deebf7}.inactive-but-informative{background:#fee8c8}.near-collapse{background:#fee8c8}.collapsed{background:#f0f0f0;color:#777}
.near{background:#fdae61}pre{background:#f5f5f5;padding:.3em .6em;overflow-x:auto}
.note{background:#fff7e6;border-left:4px solid #f46d43;padding:.4em .8em;margin:.4em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "&ndash;"
        return _e(format(value, spec))
    return _e(value)


def _table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(
        f'<th class="text">{_e(h)}</th>' if i == 0 else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{_e(row_classes[r])}"' if row_classes else ""
        cells = "".join(
            f'<td class="text">{_fmt(v)}</td>' if isinstance(v, str) else f"<td>{_fmt(v)}</td>"
            for v in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdict_badge(verdict: str) -> str:
    cls = {
        "healthy": "healthy",
        "partial collapse": "partial",
        "near collapse": "near",
        "full collapse": "full",
    }.get(
        verdict, "partial"
    )
    return f'<span class="verdict {cls}">{_e(verdict)}</span>'


def _causes_section(analysis: Any) -> str:
    """Why it collapsed (causes ranked, with their measurements) and what to try next."""
    if analysis is None or not analysis.sites:
        return ""
    rows = [
        [c.name, c.score if math.isfinite(c.score) else None, c.evidence]
        for c in analysis.causes
    ]
    parts = [
        "<h2>Why it collapsed</h2>",
        "<p>Evidence for each cause of collapse, in [0, 1], strongest first, with the "
        "measurement behind it (nats per point).</p>",
        _table(["cause", "evidence", "measurement"], rows),
    ]
    if analysis.remedies:
        parts.append("<h2>What to try next</h2><ul>")
        for r in analysis.remedies:
            parts.append(
                f"<li><b>{_e(r.cause)}</b>: {_e(r.action)}<pre>pyrocollapse run {_e(r.cli)}\n"
                f"{_e(r.python)}</pre></li>"
            )
        g = analysis.grid()
        parts.append(
            "</ul><p>All of them against this run: <code>pyrocollapse compare --from-run "
            f"RUN_FOLDER</code> (priors {_e(', '.join(g['priors']))}; objectives "
            f"{_e(', '.join(g['elbos']))}).</p>"
        )
    for what, why in analysis.unavailable.items():
        parts.append(f'<div class="note">{_e(what)} not measured: {_e(why)}</div>')
    return "".join(parts)


def _elbo_section(report: Any) -> str:
    labels = {
        "elbo": "ELBO",
        "reconstruction": "reconstruction E_q[log p(x|z)]",
        "kl": "KL (all sites)",
        "log_likelihood": "IW log-likelihood log p(x)",
        "log_likelihood_stderr": "standard error of the IW log-likelihood",
        "inference_gap": "inference gap (log p(x) - ELBO)",
    }
    rows = [[labels.get(k, k), v] for k, v in report.elbo.items()]
    for s in report.sites.values():
        if math.isfinite(s.mi):
            rows.append([f"I_q(x; {s.site}) (mutual information)", s.mi])
            rows.append([f"KL(q({s.site}) || p({s.site})) (marginal KL)", s.aggregate_kl])
            rows.append([f"KL identity gap for {s.site}", s.kl_identity_gap])
    return "<h2>ELBO decomposition</h2><p>Nats per data point.</p>" + _table(
        ["term", "value"], rows
    )


def _site_section(s: Any) -> str:
    from pyrocollapse.report import ci_text

    lines = [f"<h3>site <code>{_e(s.site)}</code>: {_verdict_badge(s.verdict)}</h3>"]
    facts = [f"{s.active_units}/{s.latent_dim} active units"]
    if s.au_count_ci is not None:
        facts.append(f"bootstrap interval {ci_text(s.au_count_ci, '.0f')}")
    facts.append(f"KL {s.kl:.4g} nats ({s.kl_estimator})")
    if math.isfinite(s.mi):
        facts.append(f"MI {s.mi:.4g} {ci_text(s.mi_ci)}".strip())
    if s.conditional_prior:
        facts.append("conditional prior")
    lines.append(f"<p>{_e('; '.join(facts))}</p>")
    headers = [
        "status",
        "dim",
        "KL",
        "AU variance",
        "P(active)",
        "MI",
        "MI s.e.",
        "R-hat",
        "sensitivity",
        "frac. KL<0.01",
    ]
    rows = []

    def at(a: Any, d: int) -> Any:
        return None if a is None else float(a[d])

    for d in range(s.latent_dim):
        rows.append(
            [
                s.status[d],
                d,
                float(s.kl_per_dim[d]),
                float(s.au_variance[d]),
                at(s.au_probability_active, d),
                at(s.mi_per_dim, d),
                at(s.mi_per_dim_stderr, d),
                at(s.rhat, d),
                at(s.sensitivity, d),
                float(s.kl_fraction_below[d]),
            ]
        )
    lines.append(_table(headers, rows, list(s.status)))
    return "".join(lines)


def _summary_section(folder: Path) -> str:
    path = folder / "posterior.nc"
    if not path.is_file():
        return ""
    from pyrocollapse.summaries import load_inference_data, summarize

    try:
        table = summarize(load_inference_data(path))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{str(path)!r} could not be summarised ({e})") from None
    cols = [c for c in table.columns if c not in ("site", "dim")]
    rows = [[str(idx), *(float(row[c]) for c in cols)] for idx, row in table.iterrows()]
    headers = ["variable", *map(str, cols)]
    return (
        "<h2>Posterior summaries (ArviZ)</h2><p>From <code>posterior.nc</code>: the aggregate "
        "posterior (all draws of all observations) next to the prior. A collapsed dimension "
        "has <code>sd_ratio</code> (mean per-observation posterior sd over prior sd) and "
        "<code>rhat_obs</code> (observations as chains) near 1.</p>" + _table(headers, rows)
    )


def _figure_section(folder: Path) -> str:
    fig_dir = folder / "figures"
    if not fig_dir.is_dir():
        return ""
    stems = sorted(p.stem for p in fig_dir.glob("*.png") if not p.name.startswith("."))
    order = {spec.kind: i for i, spec in enumerate(FIGURES)}

    def kind_of(stem: str) -> str:
        return next(
            (
                k
                for k in sorted(_SPECS, key=len, reverse=True)
                if stem == k or stem.startswith(k + "_")
            ),
            stem,
        )

    stems.sort(key=lambda s: (order.get(kind_of(s), len(order)), s))
    parts = ["<h2>Figures</h2>"]
    for stem in stems:
        spec = _SPECS.get(kind_of(stem))
        caption = spec.caption if spec else stem
        site = stem[len(spec.kind) + 1 :] if spec and stem != spec.kind else ""
        if site:
            caption = f"[{site}] {caption}"
        parts.append(
            f'<figure><img src="figures/{_e(stem)}.png" alt="{_e(stem)}" loading="lazy">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "".join(parts)


def render_html(folder: str | os.PathLike[str]) -> str:
    """The report page of a folder: verdict, notes, ELBO decomposition, per-site tables,
    guide quality, ArviZ posterior summaries and every figure in ``figures/``.

    All text is HTML-escaped; figures are linked by relative path.
    """
    from pyrocollapse.report import STATUS_RULE

    rf = read_folder(folder)
    report, metrics = rf.report, rf.metrics
    title = "pyrocollapse report"
    ds = metrics.get("dataset") or {}
    config = metrics.get("config") or {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}: {_e(report.verdict)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Posterior collapse report {_verdict_badge(report.verdict)}</h1>",
    ]
    facts = [
        f"{report.num_points} held-out points diagnosed",
        f"{report.active_units} active units",
    ]
    if ds.get("name"):
        facts.insert(0, f"dataset {ds['name']}")
    if config.get("model"):
        facts.insert(
            1,
            f"model {config['model']} (latent_dim {config.get('latent_dim')}, prior {config.get('prior')}, objective {config.get('elbo')})",
        )
    if "train_seconds" in metrics:
        facts.append(f"trained in {float(metrics['train_seconds']):.1f} s")
    parts.append(f"<p>{_e('; '.join(facts))}.</p>")
    for note in report.notes():
        parts.append(f'<div class="note">{_e(note)}</div>')
    parts.append(_causes_section(report.causes))
    parts.append(_elbo_section(report))
    g = report.guide_quality
    if g is not None:
        rows = [[k, v] for k, v in g.items() if k != "khat"]
        parts.append(
            "<h2>Guide quality (PSIS k-hat per point)</h2>" + _table(["statistic", "value"], rows)
        )
    parts.append("<h2>Latent sites</h2>")
    parts.extend(_site_section(s) for s in report.sites.values())
    parts.append(f"<p><b>Rule.</b> {_e(STATUS_RULE)}.</p>")
    parts.append(_summary_section(rf.path))
    parts.append(_figure_section(rf.path))
    settings = report.settings
    if settings:
        parts.append(
            "<h2>Settings</h2>"
            + _table(
                ["setting", "value"],
                [[k, v if isinstance(v, (int, float)) else str(v)] for k, v in settings.items()],
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_html` into ``folder/report.html`` atomically; returns the path."""
    from pyrocollapse._io import atomic_write_text

    path = Path(folder) / "report.html"
    atomic_write_text(path, render_html(folder))
    return path


def _check_report(report: Any) -> Any:
    from pyrocollapse.report import CollapseReport

    return check_type("report", report, CollapseReport, "a CollapseReport (from diagnose)")


def _check_history(history: Any) -> Any:
    from pyrocollapse.train import History

    if history is not None:
        check_type("history", history, History, "a History (from fit) or None")
    return history


def _optional(what: str, make: Callable[[], Any]) -> bool:
    """Build an optional artefact; where the model cannot provide it, warn and go on."""
    try:
        make()
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
        print(f"pyrocollapse: warning: {what} not written: {e}", file=sys.stderr)
        return False
    return True


def write_report_folder(
    out: str | os.PathLike[str],
    *,
    metrics: dict[str, Any],
    report: Any,
    history: Any = None,
    vae: Any = None,
    held_out: Any = None,
    posterior_samples: int = 100,
    posterior_points: int = 500,
    seed: int | None = 0,
    overwrite: bool = False,
) -> list[str]:
    """Write a complete report folder atomically (it appears whole or not at all).

    Parameters
    ----------
    out : path
        The folder; an existing non-empty one is replaced only with ``overwrite``.
    metrics : dict
        JSON-serialisable run record; must contain ``"report"`` (``report.to_dict()``).
    report : CollapseReport
    history : History or None
        Written as ``history.csv`` and drawn over epochs.
    vae : object with ``model``, ``guide`` and ``state_dict`` or None
        With ``held_out``: ``posterior.nc`` (``posterior_samples`` guide draws of the
        first ``posterior_points`` held-out points; 0 samples: none), traversal and
        reconstruction figures for image data, and ``model.pt``. A model that cannot
        provide ``posterior.nc`` or the traversals gets a warning, not an error.
    held_out : pyrocollapse.data.Dataset or None
        The diagnosed data.
    seed : int or None
        Seed of the posterior draws.

    Returns
    -------
    list[str]
        What was written, e.g. ``["metrics.json", "history.csv", "posterior.nc", ...]``.
    """
    from pyrocollapse._io import atomic_directory, atomic_write_text, json_default
    from pyrocollapse.report import CollapseReport

    # every check before anything is created
    if not isinstance(metrics, dict) or "report" not in metrics:
        raise ValueError("metrics must be a dict with a 'report' entry (report.to_dict())")
    _check_report(report)
    _check_history(history)
    posterior_samples = check_int("posterior_samples", posterior_samples, minimum=0)
    posterior_points = check_int("posterior_points", posterior_points, minimum=1)
    if seed is not None:
        check_int("seed", seed, minimum=0)
    check_bool("overwrite", overwrite)
    try:
        CollapseReport.from_dict(metrics["report"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"metrics['report'] is not a report.to_dict(): {e}") from None
    if held_out is not None and not hasattr(held_out, "data"):
        raise TypeError(
            f"held_out must be a pyrocollapse.data.Dataset or None, got {type(held_out).__name__}"
        )
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise ValueError(f"out {str(out_path)!r} is a file, not a folder")
    written = ["metrics.json"]
    with atomic_directory(out, overwrite=overwrite) as tmp:
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2, default=json_default))
        if history is not None:
            history.to_csv(str(tmp / "history.csv"))
            written.append("history.csv")
        if vae is not None and held_out is not None and posterior_samples > 0:
            from pyrocollapse.summaries import save_inference_data, to_inference_data

            if _optional(
                "posterior.nc",
                lambda: save_inference_data(
                    to_inference_data(
                        vae.model,
                        vae.guide,
                        held_out.data[:posterior_points],
                        posterior_samples,
                        seed=seed,
                    ),
                    tmp / "posterior.nc",
                ),
            ):
                written.append("posterior.nc")
        figures = report_figures(report)
        figures.update(history_figures(history, list(report.sites)))
        if vae is not None and getattr(held_out, "image_shape", None) is not None:
            _optional(
                "traversal figures", lambda: figures.update(model_figures(vae, held_out, report))
            )
        write_figures(tmp, figures)
        written.append("figures/*.png")
        if vae is not None:
            import torch

            torch.save(vae.state_dict(), tmp / "model.pt")
        write_html(tmp)
        written.append("report.html")
        if vae is not None:
            written.append("model.pt")
    return written


def rerender(folder: str | os.PathLike[str], *, figures: bool = True) -> tuple[Path, list[str]]:
    """Rebuild the figures that come from ``metrics.json`` and ``history.csv`` (unless
    ``figures`` is False) and ``report.html``; figures that need the model are kept.

    Returns
    -------
    (Path, list[str])
        The page's path and the stems of the figures rebuilt.
    """
    check_bool("figures", figures)
    rf = read_folder(folder)
    written: list[str] = []
    if figures:
        figs = report_figures(rf.report)
        figs.update(history_figures(rf.history, list(rf.report.sites)))
        written = write_figures(rf.path, figs)
    return write_html(rf.path), written
