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

One concept per module: ``figures`` (the kinds of figure, drawing and saving them),
``reading`` (:func:`read_folder`), ``rendering`` (the templates and table cells of the
pages), ``config_table`` (the run-configuration table), ``run_page``
(:func:`render_html`) and ``comparison_page`` (:func:`render_comparison_html`). The
writers of files (:func:`write_report_folder`, :func:`write_html`,
:func:`write_comparison_html`, :func:`rerender`) are defined here, on top of them; every
public name is importable from ``pyrocollapse.report_folder``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrocollapse._validation import check_bool, check_int
from pyrocollapse.report_folder.comparison_page import _grid_folder, render_comparison_html
from pyrocollapse.report_folder.config_table import CONFIG_FIELDS as _CONFIG_FIELDS
from pyrocollapse.report_folder.figures import FIGURES as _FIGURES
from pyrocollapse.report_folder.figures import (
    FigureSpec,
    _check_history,
    _check_report,
    figure_name,
    history_figures,
    model_figures,
    report_figures,
    write_figures,
)
from pyrocollapse.report_folder.reading import ReportFolder, read_folder
from pyrocollapse.report_folder.run_page import _causes_section as _causes_section
from pyrocollapse.report_folder.run_page import render_html

# The constants are defined in the modules named; they are bound here too, with the
# ``#:`` descriptions that the API reference shows.

#: Figure kinds, in page order.
FIGURES: tuple[FigureSpec, ...] = _FIGURES

#: Rows of the run-configuration table: (``RunConfig.to_dict()`` key, label, what it is).
CONFIG_FIELDS: tuple[tuple[str, str, str], ...] = _CONFIG_FIELDS

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
