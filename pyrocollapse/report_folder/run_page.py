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
links the figures by relative path, so the folder can be moved or archived as a whole;
``self_contained=True`` embeds them instead (base64 ``data:`` URIs), so that
``report.html`` alone can be copied or mailed.

The pages are rendered from the Jinja2 templates in ``pyrocollapse/templates/`` with
autoescaping, so every value taken from the run (names, notes, options) is HTML-escaped.
:func:`render_comparison_html` renders the page of a :func:`pyrocollapse.comparison.compare`
grid folder (``comparison.html``). Every file is written atomically.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import numbers
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyrocollapse._validation import check_bool, check_choice, check_int, check_type

__all__ = [
    "CONFIG_FIELDS",
    "FIGURES",
    "FigureSpec",
    "ReportFolder",
    "figure_name",
    "history_figures",
    "model_figures",
    "read_folder",
    "render_comparison_html",
    "render_html",
    "report_figures",
    "rerender",
    "write_comparison_html",
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
#: The Jinja2 templates of the pages (rendered with autoescaping: every value is escaped).
_TEMPLATES = Path(__file__).parent / "templates"
#: Shown for a value that is missing or not finite.
_DASH = "–"


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The Jinja2 environment of the pages (imported on first use)."""
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - jinja2 is a dependency
        raise ImportError(
            "the HTML pages need Jinja2, which is not installed: pip install 'jinja2>=3.1'"
        ) from e
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


@dataclass(frozen=True)
class _Cell:
    """One table cell: its text, whether it is left-aligned text, an optional link, an
    optional CSS class, and a list of links (``{"label", "href"}``) shown after the text."""

    value: str
    text: bool = False
    href: str | None = None
    cls: str = ""
    links: tuple[dict[str, Any], ...] = ()

    @property
    def classes(self) -> str:
        return " ".join(c for c in ("text" if self.text else "", self.cls) if c)


@dataclass(frozen=True)
class _Column:
    """A table column: its header and what it shows, in plain words."""

    name: str
    caption: str = ""
    text: bool = False


@dataclass
class _Table:
    columns: list[_Column]
    rows: list[list[_Cell]]
    row_classes: list[str] | None = None

    @property
    def captioned(self) -> list[_Column]:
        return [c for c in self.columns if c.caption]


def _num(value: Any, spec: str = ".4g") -> str:
    """A number as text (``–`` for None and non-finite values); anything else as ``str``."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return format(value, spec) if math.isfinite(value) else _DASH
    return str(value)


def _cell(value: Any, spec: str = ".4g") -> _Cell:
    if isinstance(value, _Cell):
        return value
    if isinstance(value, str):
        return _Cell(value, text=True)
    return _Cell(_num(value, spec))


def _table(
    headers: list[str | _Column],
    rows: list[list[Any]],
    row_classes: list[str] | None = None,
) -> _Table:
    columns = [
        h if isinstance(h, _Column) else _Column(str(h), text=(i == 0))
        for i, h in enumerate(headers)
    ]
    return _Table(columns, [[_cell(v) for v in row] for row in rows], row_classes)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _verdict_class(verdict: str) -> str:
    return {
        "healthy": "healthy",
        "partial collapse": "partial",
        "near collapse": "near",
        "full collapse": "full",
    }.get(verdict, "partial")


# ---- run configuration ----------------------------------------------------------------
#: Rows of the run-configuration table: (``RunConfig.to_dict()`` key, label, what it is).
CONFIG_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("dataset", "dataset", "registered dataset name"),
    ("dataset_options", "dataset options", "keyword arguments of the dataset"),
    ("valid_fraction", "held-out fraction", "share of the data kept out of training and diagnosed"),
    ("model", "model", "registered model (encoder and decoder)"),
    ("latent_dim", "latent dimensions", "size of z"),
    ("model_options", "model options", "keyword arguments of the model"),
    ("prior", "prior", "registered prior p(z)"),
    ("prior_options", "prior options", "keyword arguments of the prior"),
    ("elbo", "objective", "registered training objective"),
    ("elbo_options", "objective options", "keyword arguments of the objective"),
    ("schedule", "KL schedule", "schedule of the KL weight; none: the objective's own"),
    ("schedule_options", "KL schedule options", "keyword arguments of the KL schedule"),
    ("epochs", "epochs", "passes over the training data"),
    ("batch_size", "batch size", "observations per optimisation step"),
    ("lr", "learning rate", "step size of the Adam optimiser"),
    ("seed", "seed", "fixes the train/held-out split, the initialisation and every draw"),
    (
        "aggressive",
        "aggressive training",
        "inner encoder steps until MI stops rising (He et al. 2019)",
    ),
    (
        "on_collapse",
        "on collapse",
        "reaction when the monitored active units or MI drop below their thresholds",
    ),
    ("min_active_units", "min. active units", "collapse threshold on active units"),
    ("min_mi", "min. MI", "collapse threshold on I_q(x; z), nats"),
    ("estimators", "estimators", "diagnostics run on the held-out data"),
    (
        "num_samples",
        "z draws per point",
        "for the MI, marginal-KL and sensitivity estimates",
    ),
    (
        "bootstrap",
        "bootstrap replicates",
        "for the intervals on the marginal KL and the active units (0: none)",
    ),
    (
        "importance_samples",
        "importance samples",
        "draws per point for the IW log-likelihood and PSIS k-hat",
    ),
    ("posterior_samples", "posterior samples", "guide draws per point saved in posterior.nc"),
    ("posterior_points", "posterior points", "held-out points whose draws are in posterior.nc"),
)


def _value_text(value: Any, *, top: bool = True) -> str:
    """A configuration value in plain text: options as ``k=v, ...``, lists comma-separated
    (bracketed when nested), ``none`` for None or no options."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        if not value:
            return "none"
        return ", ".join(f"{k}={_value_text(v, top=False)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_value_text(v, top=False) for v in value)
        return inner if top else f"[{inner}]"
    return str(value)


def _schedule_text(spec: Any) -> str:
    """``linear (warmup_steps=2, start=0.0, end=1.0)`` from a schedule's ``to_dict()``."""
    if not isinstance(spec, dict):
        return _value_text(spec)
    rest = {k: v for k, v in spec.items() if k != "name"}
    name = str(spec.get("name", "schedule"))
    return f"{name} ({_value_text(rest)})" if rest else name


def _built_objective(objective: Any) -> str:
    if isinstance(objective, dict):
        rest = {k: v for k, v in objective.items() if k not in ("class", "name")}
        parts = [
            f"{k}={_schedule_text(v) if k == 'kl_weight' else _value_text(v, top=False)}"
            for k, v in rest.items()
        ]
        head = str(objective.get("class") or objective.get("name") or "objective")
        return f"{head}: {', '.join(parts)}" if parts else head
    return _value_text(objective)


def _loaded_dataset(ds: dict[str, Any]) -> str:
    parts = []
    if ds.get("kind") is not None:
        parts.append(f"kind {ds['kind']}")
    if ds.get("n") is not None:
        parts.append(f"{ds['n']} observations")
    for key, label in (
        ("event_shape", "event shape"),
        ("image_shape", "image shape"),
        ("dtype", "dtype"),
        ("vocab_size", "vocabulary"),
    ):
        if ds.get(key) is not None:
            parts.append(f"{label} {_value_text(ds[key], top=False)}")
    meta = ds.get("metadata")
    if isinstance(meta, dict) and meta.get("source") is not None:
        parts.append(f"source {meta['source']}")
    return "; ".join(parts)


def _config_table(
    config: dict[str, Any],
    objective: Any = None,
    dataset: dict[str, Any] | None = None,
    skip: tuple[str, ...] = (),
) -> _Table | None:
    """Every entry of a run's configuration, known ones first with what they are; the
    objective and data set as built follow their configured names."""
    if not isinstance(config, dict) or not config:
        return None
    known = {key for key, _, _ in CONFIG_FIELDS}
    rows: list[list[Any]] = []
    for key, label, what in CONFIG_FIELDS:
        if key in skip or key not in config:
            continue
        value = config[key]
        text = _value_text(value)
        if key == "schedule" and value is None:
            spec = objective.get("kl_weight") if isinstance(objective, dict) else None
            text = "none (the objective's own" + (
                f": {_schedule_text(spec)})" if spec is not None else ")"
            )
        rows.append([label, text, what])
        if key == "dataset_options" and dataset:
            rows.append(["dataset as loaded", _loaded_dataset(dataset), "from metrics.json"])
        if key == "elbo_options" and objective is not None:
            rows.append(["objective as built", _built_objective(objective), "from metrics.json"])
    for key, value in config.items():
        if key not in known and key not in skip:
            rows.append([str(key), _value_text(value), ""])
    return _table(
        [
            _Column("setting", text=True),
            _Column("value", text=True),
            _Column("what it is", text=True),
        ],
        rows,
    )


# ---- sections of the run page ------------------------------------------------------------
def _measurements_text(measurements: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(one(x) for x in v) + "]"
        if v is None:
            return "n/a"
        return _num(v, ".3g") if isinstance(v, numbers.Real) else str(v)

    return "; ".join(f"{k} = {one(v)}" for k, v in measurements.items())


def _causes_view(analysis: Any) -> dict[str, Any] | None:
    """Why it collapsed (causes ranked, with their measurements) and what to try next."""
    if analysis is None or not analysis.sites:
        return None
    from pyrocollapse.diagnostics.causes import EVIDENCE_FLOOR, UNCLEAR

    rows = [
        [
            c.name,
            _Cell(f"{c.score:.2f}" if math.isfinite(c.score) else "n/a"),
            c.evidence,
            _measurements_text(c.measurements),
        ]
        for c in analysis.causes
    ]
    table = _table(
        [
            _Column("cause", text=True),
            _Column("evidence"),
            _Column("what was measured", text=True),
            _Column("measurements", text=True),
        ],
        rows,
    )
    grid = analysis.grid()
    return {
        "sites": list(analysis.sites),
        "table": table,
        "remedies": [
            {"cause": r.cause, "action": r.action, "cli": r.cli, "python": r.python}
            for r in analysis.remedies
        ],
        "unclear": bool(analysis.remedies) and analysis.remedies[0].cause == UNCLEAR,
        "floor": EVIDENCE_FLOOR,
        "priors": ", ".join(grid["priors"]),
        "elbos": ", ".join(grid["elbos"]),
        "unavailable": list(analysis.unavailable.items()),
    }


def _causes_section(analysis: Any) -> str:
    """The page's "why it collapsed" and "what to try next" as HTML ("" without causes)."""
    view = _causes_view(analysis)
    return "" if view is None else _render("_causes.html", causes=view)


def _elbo_table(report: Any) -> _Table:
    labels = {
        "elbo": "ELBO",
        "reconstruction": "reconstruction E_q[log p(x|z)]",
        "kl": "KL (all sites)",
        "log_likelihood": "IW log-likelihood log p(x)",
        "log_likelihood_stderr": "standard error of the IW log-likelihood",
        "inference_gap": "inference gap (log p(x) - ELBO)",
    }
    rows: list[list[Any]] = [[labels.get(k, k), v] for k, v in report.elbo.items()]
    for s in report.sites.values():
        if math.isfinite(s.mi):
            rows.append([f"I_q(x; {s.site}) (mutual information)", s.mi])
            rows.append([f"KL(q({s.site}) || p({s.site})) (marginal KL)", s.aggregate_kl])
            rows.append([f"KL identity gap for {s.site}", s.kl_identity_gap])
    return _table(["term", "value"], rows)


def _site_view(s: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Heading, facts and the per-dimension table (with a caption per column) of a site."""
    from pyrocollapse.report import NOISE_Z, SENSITIVITY_FLOOR, ci_text

    facts = [f"{s.active_units}/{s.latent_dim} active units"]
    if s.au_count_ci is not None:
        facts.append(f"bootstrap interval {ci_text(s.au_count_ci, '.0f')}")
    facts.append(f"KL {s.kl:.4g} nats ({s.kl_estimator})")
    if math.isfinite(s.mi):
        facts.append(f"MI {s.mi:.4g} {ci_text(s.mi_ci)}".strip())
    if s.conditional_prior:
        facts.append("conditional prior")
    discrete = s.kind == "discrete"
    level = settings.get("ci_level", 0.95)
    level = f"{float(level):.0%}" if _finite(level) else "the"

    def values(a: Any) -> list[Any] | None:
        return None if a is None else [float(a[d]) for d in range(s.latent_dim)]

    floor = s.on_free_bits_floor
    status = [
        f"{s.status[d]} (on free-bits floor)" if floor[d] else s.status[d]
        for d in range(s.latent_dim)
    ]
    if s.status_basis == "mi":
        rule = (
            f"active when I_q(x; z_d) is at or above the floor {s.info_floor:g} nats; near "
            f"collapse when measurably above zero (above max({s.mi_threshold:g}, "
            f"{NOISE_Z:g} standard errors)) but below the floor; collapsed otherwise"
        )
    else:
        rule = (
            f"MI was not computed, so the KL stands in: collapsed at or below "
            f"{s.mi_threshold:g} nats, active when the AU variance also exceeds "
            f"{s.au_threshold:g}, else near collapse"
        )
    if s.free_bits is not None:
        rule += (
            f"; 'on free-bits floor': its KL sits on the objective's floor of {s.free_bits:g} nats"
        )
    au_ci = None
    if s.au_variance_ci is not None:
        ci = s.au_variance_ci
        au_ci = [
            _Cell(f"[{_num(float(ci[0][d]))}, {_num(float(ci[1][d]))}]")
            for d in range(s.latent_dim)
        ]
    sens_method = f" (by {s.sensitivity_method})" if s.sensitivity_method else ""
    spec = [
        ("status", f"status per the stated rule: {rule}.", status, True),
        (
            "dim",
            "the outcome (one row)" if discrete else "latent dimension d of the site",
            list(range(s.latent_dim)),
            False,
        ),
        (
            "KL",
            "E_x KL(q(z_d|x) || p(z_d)): what the objective pays for the dimension, nats per "
            f"point (estimator: {s.kl_estimator})",
            values(s.kl_per_dim),
            False,
        ),
        (
            "frac. KL<0.01",
            "fraction of held-out points whose KL in the dimension is below 0.01 nats",
            values(s.kl_fraction_below),
            False,
        ),
        (
            "AU variance",
            "spread of q(y|x) over observations, sum_k Var_x q(y = k | x)"
            if discrete
            else "Cov_x(E_q[z_d]): how much the posterior mean moves from observation to "
            f"observation, squared units of z; above {s.au_threshold:g} the dimension is an "
            "active unit (Burda et al. 2016)",
            values(s.au_variance),
            False,
        ),
        (
            "AU interval",
            f"bootstrap {level} interval of the AU variance (resampling the observations)",
            au_ci,
            False,
        ),
        (
            "P(active)",
            "fraction of bootstrap replicates in which the dimension is an active unit",
            values(s.au_probability_active),
            False,
        ),
        (
            "MI",
            "I_q(x; z_d): mutual information between the observation and the dimension under "
            "the aggregate posterior, nats per point; 0 when q(z_d|x) ignores x",
            values(s.mi_per_dim),
            False,
        ),
        (
            "MI s.e.",
            "Monte Carlo standard error of the MI",
            values(s.mi_per_dim_stderr),
            False,
        ),
        (
            "R-hat",
            "datapoints-as-chains R-hat: the posterior draws of each observation taken as one "
            "chain; ~1 when q(z_d|x) ignores x (every observation's posterior alike), above 1 "
            "when the posteriors differ",
            values(s.rhat),
            False,
        ),
        (
            "sens",
            "decoder sensitivity: the Fisher information of the likelihood in z_d, nats per "
            f"squared unit of z{sens_method}; below {SENSITIVITY_FLOOR:g} the decoder ignores "
            "the dimension",
            values(s.sensitivity),
            False,
        ),
    ]
    shown = [c for c in spec if c[2] is not None]
    columns = [_Column(name, caption, text=text) for name, caption, _, text in shown]
    rows = [[_cell(col[2][d]) for col in shown] for d in range(s.latent_dim)]
    return {
        "site": s.site,
        "verdict": s.verdict,
        "verdict_class": _verdict_class(s.verdict),
        "facts": "; ".join(facts),
        "table": _Table(columns, rows, list(s.status)),
        "not_computed": [name for name, _, vals, _ in spec if vals is None],
    }


def _summary_table(folder: Path) -> _Table | None:
    path = folder / "posterior.nc"
    if not path.is_file():
        return None
    from pyrocollapse.summaries import load_inference_data, summarize

    try:
        table = summarize(load_inference_data(path))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{str(path)!r} could not be summarised ({e})") from None
    cols = [c for c in table.columns if c not in ("site", "dim")]
    rows = [[str(idx), *(float(row[c]) for c in cols)] for idx, row in table.iterrows()]
    return _table(["variable", *map(str, cols)], rows)


def _image_src(path: Path, relative: str, self_contained: bool) -> str:
    if not self_contained:
        return relative
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figures(folder: Path, self_contained: bool) -> list[dict[str, str]]:
    fig_dir = folder / "figures"
    if not fig_dir.is_dir():
        return []
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
    out = []
    for stem in stems:
        spec = _SPECS.get(kind_of(stem))
        caption = spec.caption if spec else stem
        site = stem[len(spec.kind) + 1 :] if spec and stem != spec.kind else ""
        if site:
            caption = f"[{site}] {caption}"
        src = _image_src(fig_dir / f"{stem}.png", f"figures/{stem}.png", self_contained)
        out.append({"src": src, "alt": stem, "caption": caption})
    return out


def render_html(folder: str | os.PathLike[str], *, self_contained: bool = False) -> str:
    """The report page of a folder (from the template ``templates/report.html``).

    The run configuration (``metrics.json``'s ``config``), the verdict, the notes, the
    causes and what to try next, the ELBO decomposition, per-site tables with a caption
    for every column, guide quality, ArviZ posterior summaries and every figure in
    ``figures/``.

    Parameters
    ----------
    folder : path
        A report folder (see :func:`read_folder`).
    self_contained : bool
        Embed the figures as base64 ``data:`` URIs, so that the page is one file that
        needs nothing beside it; otherwise they are linked by relative path.

    Every value is HTML-escaped (Jinja2 autoescaping).
    """
    from pyrocollapse.report import STATUS_RULE

    check_bool("self_contained", self_contained)
    rf = read_folder(folder)
    report, metrics = rf.report, rf.metrics
    ds = metrics.get("dataset") if isinstance(metrics.get("dataset"), dict) else {}
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    facts = [
        f"{report.num_points} held-out points diagnosed",
        f"{report.active_units} active units",
    ]
    if ds.get("name"):
        facts.insert(0, f"dataset {ds['name']}")
    if config.get("model"):
        facts.insert(
            1,
            f"model {config['model']} (latent_dim {config.get('latent_dim')}, prior "
            f"{config.get('prior')}, objective {config.get('elbo')})",
        )
    if _finite(metrics.get("train_seconds")):
        facts.append(f"trained in {float(metrics['train_seconds']):.1f} s")
    g = report.guide_quality
    settings = report.settings or {}
    return _render(
        "report.html",
        verdict=report.verdict,
        verdict_class=_verdict_class(report.verdict),
        facts="; ".join(facts),
        config=_config_table(config, metrics.get("objective"), ds),
        notes=report.notes(),
        causes=_causes_view(report.causes),
        elbo=_elbo_table(report),
        guide=None
        if g is None
        else _table(["statistic", "value"], [[k, v] for k, v in g.items() if k != "khat"]),
        sites=[_site_view(s, settings) for s in report.sites.values()],
        rule=STATUS_RULE,
        summary=_summary_table(rf.path),
        figures=_figures(rf.path, self_contained),
        settings=_table(
            ["setting", "value"],
            [
                [
                    k,
                    v
                    if isinstance(v, numbers.Real) and not isinstance(v, bool)
                    else _value_text(v),
                ]
                for k, v in settings.items()
            ],
        )
        if settings
        else None,
    )


def write_html(folder: str | os.PathLike[str], *, self_contained: bool = False) -> Path:
    """Render :func:`render_html` into ``folder/report.html`` atomically; returns the path.

    With ``self_contained`` the figures are embedded, so the page can be copied or mailed
    on its own.
    """
    from pyrocollapse._io import atomic_write_text

    check_bool("self_contained", self_contained)
    path = Path(folder) / "report.html"
    atomic_write_text(path, render_html(folder, self_contained=self_contained))
    return path


# ---- the comparison page of a compare grid ----------------------------------------------
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
    from pyrocollapse.comparison import _diff_text

    if f"{metric}_diff" not in row:
        return _Cell(_DASH)
    text = _diff_text(row, metric)
    lo, hi = row.get(f"{metric}_diff_lo"), row.get(f"{metric}_diff_hi")
    sig = not row["baseline"] and _finite(lo) and _finite(hi) and (float(lo) > 0 or float(hi) < 0)
    return _Cell(text, text=text == "baseline", cls="sig" if sig else "")


def _run_links(folder: Path, runs: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (prior, objective): its runs as ``{"label", "href", "failed", "error"}``."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if runs is None:
        return out
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
        out.setdefault((str(r.get("prior")), str(r.get("objective"))), []).append(
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
    grid's settings and the figure.

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
    from pyrocollapse.comparison import CONFIDENCE, RANKING, _rank_text

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
    pct = f"{CONFIDENCE:.0%}"

    columns = [
        _Column("rank", "1 + the number of cells that beat this one; =k: tied with another cell"),
        _Column("prior", "the prior p(z)", text=True),
        _Column("objective", "the training objective", text=True),
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
            f"cell - baseline, mean of the per-seed differences [{pct} t-interval]; bold: the "
            "interval excludes 0",
        ),
        _Column("Δ MI", f"the same for MI [{pct} t-interval]"),
        _Column("Δ AU", f"the same for active units [{pct} t-interval]"),
        _Column("paired", "seeds both this cell and the baseline finished"),
        _Column("time s", "mean training time of a run, seconds"),
        _Column("ok/failed", "runs finished / failed"),
        _Column("runs", "each run's report (a failed run: its error)", text=True),
    ]
    rows, classes, errors = [], [], []
    for _, r in summary.iterrows():
        key = (str(r["prior"]), str(r["objective"]))
        runs_cell = [
            {"label": x["label"] + (" (failed)" if x["failed"] else ""), "href": x["href"]}
            for x in links.get(key, [])
        ]
        rows.append(
            [
                _Cell(_rank_text(r)),
                _Cell(key[0], text=True),
                _Cell(key[1], text=True),
                _Cell(_mean_std(r, "active_units", 1)),
                _Cell(_mean_std(r, "mi")),
                _Cell(_mean_std(r, "kl")),
                _Cell(_mean_std(r, "elbo")),
                _Cell(_mean_std(r, "iw_log_likelihood")),
                _diff_cell(r, "iw_log_likelihood"),
                _diff_cell(r, "mi"),
                _diff_cell(r, "active_units"),
                _cell(int(r["n_paired"]) if _finite(r.get("n_paired")) else None),
                _Cell(
                    f"{float(r['wall_time_mean']):.1f}"
                    if _finite(r.get("wall_time_mean"))
                    else _DASH
                ),
                _Cell(f"{_num(r['n_ok'])}/{_num(r['n_failed'])}"),
                _Cell("", text=True, links=tuple(runs_cell)),
            ]
        )
        classes.append("baseline" if r["baseline"] else ("tied" if r["tied"] else ""))
        error = r.get("error")
        if isinstance(error, str) and error:
            errors.append((f"{key[0]} + {key[1]}", error))
    base = summary[summary["baseline"]]
    baseline = f"{base['prior'].iloc[0]} + {base['objective'].iloc[0]}" if len(base) else None
    n_ranked = int(summary["rank"].notna().sum())
    one_seed = n_ranked >= 2 and len(summary) and float(summary["n_ok"].max()) < 2

    run_table = None
    if runs is not None:
        run_rows = []
        for (prior, objective), items in links.items():
            for x in items:
                r = x["row"]
                run_rows.append(
                    [
                        _Cell(x["run"], text=True, href=x["href"]),
                        _Cell(prior, text=True),
                        _Cell(objective, text=True),
                        _cell(int(r["seed"]) if _finite(r.get("seed")) else r.get("seed")),
                        _Cell(str(r.get("status", "")), text=True),
                        _Cell(
                            str(r["verdict"]) if isinstance(r.get("verdict"), str) else _DASH,
                            text=True,
                        ),
                        _cell(r.get("active_units")),
                        _cell(r.get("mi")),
                        _cell(r.get("iw_log_likelihood")),
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
                _Column("seed", "fixes the train/held-out split and the initialisation"),
                _Column("status", text=True),
                _Column("verdict", "the run's collapse verdict", text=True),
                _Column("AU", "active units"),
                _Column("MI", "I_q(x; z), nats per point"),
                _Column("IW log p(x)", "held-out IW log-likelihood, nats per point"),
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
        ranking=RANKING,
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
        },
        config=_config_table(base_config, skip=("prior", "elbo", "seed")),
        fig=figure,
    )


def _resumed_text(r: Any) -> str:
    redone = r.get("redone")
    if isinstance(redone, str) and redone:
        return f"trained again: {redone}"
    return "yes" if _truthy(r.get("resumed")) else "no"


def write_comparison_html(
    grid_folder: str | os.PathLike[str], *, self_contained: bool = False
) -> Path:
    """Render :func:`render_comparison_html` into ``grid_folder/comparison.html``
    atomically; returns the path."""
    from pyrocollapse._io import atomic_write_text

    check_bool("self_contained", self_contained)
    path = _grid_folder(grid_folder) / "comparison.html"
    atomic_write_text(path, render_comparison_html(grid_folder, self_contained=self_contained))
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


def rerender(
    folder: str | os.PathLike[str], *, figures: bool = True, self_contained: bool = False
) -> tuple[Path, list[str]]:
    """Rebuild the figures that come from ``metrics.json`` and ``history.csv`` (unless
    ``figures`` is False) and ``report.html``; figures that need the model are kept.
    With ``self_contained`` the page embeds every figure (see :func:`render_html`).

    Returns
    -------
    (Path, list[str])
        The page's path and the stems of the figures rebuilt.
    """
    check_bool("figures", figures)
    check_bool("self_contained", self_contained)
    rf = read_folder(folder)
    written: list[str] = []
    if figures:
        figs = report_figures(rf.report)
        figs.update(history_figures(rf.history, list(rf.report.sites)))
        written = write_figures(rf.path, figs)
    return write_html(rf.path, self_contained=self_contained), written
