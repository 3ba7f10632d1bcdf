"""Matplotlib figures for collapse reports and training histories.

Plots only draw: they take a :class:`~pyrocollapse.report.CollapseReport`, a
:class:`~pyrocollapse.train.History` or a schedule and never estimate anything. Each
returns the :class:`matplotlib.figure.Figure` and none calls ``show``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "plot_elbo_decomposition",
    "plot_kl_heatmap",
    "plot_kl_per_dim",
    "plot_schedule",
    "plot_training",
]

_STATUS_COLORS = {
    "active": "#2b8cbe",
    "inactive-but-informative": "#fdae61",
    "collapsed": "#bdbdbd",
}


def _figure(ax: Any = None, figsize: tuple[float, float] = (6.0, 3.5)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_kl_per_dim(report: Any, site: str | None = None, ax: Any = None) -> Any:
    """Bars of E_x KL(q(z_d|x) || p(z_d)) per dimension, coloured by status.

    Parameters
    ----------
    report : CollapseReport
    site : str or None
        Latent site; default the first one.
    """
    s = report.sites[site] if site is not None else next(iter(report.sites.values()))
    fig, ax = _figure(ax)
    dims = np.arange(s.latent_dim)
    colors = [_STATUS_COLORS.get(st, "k") for st in s.status]
    ax.bar(dims, s.kl_per_dim, color=colors, edgecolor="black", linewidth=0.5)
    for d, st in enumerate(s.status):
        if st == "collapsed":
            ax.annotate("x", (d, 0), ha="center", va="bottom", color="#d7301f", fontweight="bold")
    ax.set_xlabel(f"latent dimension of {s.site!r}")
    ax.set_ylabel("KL (nats per point)")
    ax.set_xticks(dims)
    ax.set_title(f"KL per dimension: {s.active_units}/{s.latent_dim} active ({s.verdict})")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in _STATUS_COLORS.items()],
        fontsize="small",
        loc="best",
    )
    return fig


def plot_kl_heatmap(history: Any, site: str = "z", ax: Any = None) -> Any:
    """Heatmap of KL per dimension (rows) over epochs (columns), from a History."""
    mat = history.kl_matrix(site)
    fig, ax = _figure(ax, (7.0, 3.5))
    im = ax.imshow(
        mat,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
        extent=(0.5, mat.shape[1] + 0.5, -0.5, mat.shape[0] - 0.5),
    )
    fig.colorbar(im, ax=ax, label="KL (nats per point)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"dimension of {site!r}")
    ax.set_title("KL per dimension over training")
    return fig


def plot_training(history: Any, site: str = "z") -> Any:
    """ELBO, KL weight, active units and MI over epochs (two panels)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ep = np.array([r.epoch for r in history])
    ax1.plot(ep, history.column("elbo"), label="ELBO")
    ax1.plot(ep, history.column("reconstruction"), label="reconstruction")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("nats per point")
    ax1.legend(fontsize="small")
    ax1b = ax1.twinx()
    ax1b.plot(ep, history.column("kl_weight"), "k--", lw=1, label="KL weight")
    ax1b.set_ylabel("KL weight")
    for key, label in ((f"active_units/{site}", "active units"), (f"mi/{site}", "MI (nats)")):
        col = history.column(key)
        if np.isfinite(col).any():
            ax2.plot(ep, col, marker="o", ms=3, label=label)
    ax2.plot(ep, history.column("kl"), label="KL (nats)")
    ax2.set_xlabel("epoch")
    ax2.legend(fontsize="small")
    ax2.set_title("collapse indicators")
    return fig


def plot_elbo_decomposition(history: Any, ax: Any = None) -> Any:
    """Stacked -reconstruction and KL per latent site over epochs (the negative ELBO)."""
    fig, ax = _figure(ax, (7.0, 3.5))
    ep = np.array([r.epoch for r in history])
    keys = sorted({k for r in history for k in r.values if k.startswith("kl/")})
    layers = [-history.column("reconstruction")] + [history.column(k) for k in keys]
    ax.stackplot(ep, *layers, labels=["-reconstruction", *keys], alpha=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per point")
    ax.set_title("negative ELBO decomposition")
    ax.legend(fontsize="small")
    return fig


def plot_schedule(schedule: Any, steps: int, ax: Any = None) -> Any:
    """The KL weight of ``schedule`` over ``range(steps)``."""
    fig, ax = _figure(ax, (5.0, 2.5))
    ax.plot(np.arange(steps), schedule.values(steps))
    ax.set_xlabel("step")
    ax.set_ylabel("KL weight")
    ax.set_title(repr(schedule))
    return fig


def save_figure(fig: Any, path: str, dpi: int = 110) -> None:
    """Save a Figure to ``path`` atomically (PNG by extension)."""
    from pyrocollapse._io import atomic_write

    suffix = str(path).rsplit(".", 1)[-1]
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=suffix))
