"""The figures of a report folder: their kinds and file names, drawing and saving them.

Figures drawn from a report or a history can be rebuilt from the saved files; those that
need the model (traversals, reconstructions) are drawn by ``run`` only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyrocollapse._validation import check_choice, check_int, check_type

__all__ = [
    "FIGURES",
    "FigureSpec",
    "figure_name",
    "history_figures",
    "model_figures",
    "report_figures",
    "write_figures",
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


def _check_report(report: Any) -> Any:
    from pyrocollapse.report import CollapseReport

    return check_type("report", report, CollapseReport, "a CollapseReport (from diagnose)")


def _check_history(history: Any) -> Any:
    from pyrocollapse.train import History

    if history is not None:
        check_type("history", history, History, "a History (from fit) or None")
    return history
