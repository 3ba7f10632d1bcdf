"""Matplotlib figures for collapse reports and training histories.

Plots only draw: they take a :class:`~pyrocollapse.report.CollapseReport`, a
:class:`~pyrocollapse.train.History` or a schedule and never estimate anything. Each
returns the :class:`matplotlib.figure.Figure` and none calls ``show``.

Reports, histories, schedules and traversals are read as data, by the attributes the
figures use (duck typing): this module imports none of the modules that compute them,
so drawing sits above computing and never the other way round (``report.plot()`` and
``schedule.plot()`` import this module when called).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pyrocollapse._validation import check_int, check_type

__all__ = [
    "plot_comparison",
    "plot_dimensions",
    "plot_elbo_decomposition",
    "plot_khat",
    "plot_kl_heatmap",
    "plot_kl_per_dim",
    "plot_posterior_densities",
    "plot_posterior_mean_space",
    "plot_reconstructions",
    "plot_schedule",
    "plot_training",
    "plot_traversals",
    "save_figure",
]

_STATUS_COLORS = {
    "active": "#2b8cbe",
    "near-collapse": "#fdae61",
    "collapsed": "#bdbdbd",
}
#: Statuses of reports written before 0.2, drawn but not in the legend.
_LEGACY_COLORS = {"inactive-but-informative": "#fdae61"}


def _figure(ax: Any = None, figsize: tuple[float, float] = (6.0, 3.5)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


#: What the figures read from each kind of input: the attributes that make an object a
#: report, a history, a schedule or a traversal here.
_REPORT_ATTRIBUTES = ("sites", "verdict", "guide_quality")
_HISTORY_ATTRIBUTES = ("column", "kl_matrix", "__len__", "__iter__")
_SCHEDULE_ATTRIBUTES = ("values",)
_TRAVERSAL_ATTRIBUTES = ("site", "dims", "values", "means")


def _check_like(name: str, value: Any, attributes: tuple[str, ...], expected: str) -> Any:
    """Return ``value`` if it has every one of ``attributes``; ``TypeError`` otherwise.

    Duck typing, so that this module never imports the classes it draws (reports,
    histories, schedules); ``expected`` names the class the message asks for.
    """
    if not all(hasattr(value, a) for a in attributes):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def _check_report(report: Any) -> Any:
    return _check_like("report", report, _REPORT_ATTRIBUTES, "a CollapseReport (from diagnose)")


def _check_history(history: Any) -> Any:
    _check_like("history", history, _HISTORY_ATTRIBUTES, "a History (from fit)")
    if len(history) == 0:
        raise ValueError("history is empty (no epoch recorded); train for at least one epoch")
    return history


def _site(report: Any, site: str | None) -> Any:
    _check_report(report)
    if site is None:
        return next(iter(report.sites.values()))
    if site not in report.sites:
        raise ValueError(f"site must be one of {list(report.sites)}; got {site!r}")
    return report.sites[site]


def _status_legend(ax: Any) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in _STATUS_COLORS.items()],
        fontsize="small",
        loc="best",
    )


def _pick_dims(s: Any, dims: Any, max_dims: int) -> list[int]:
    """The dimensions to draw: ``dims`` if given, else the ``max_dims`` with the largest
    KL (so the informative ones and, after them, collapsed ones are shown)."""
    max_dims = check_int("max_dims", max_dims, minimum=1)
    if dims is not None:
        if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
            raise TypeError(f"dims must be a sequence of ints, got {type(dims).__name__}")
        bad_type = [d for d in dims if isinstance(d, bool) or not isinstance(d, (int, np.integer))]
        if bad_type:
            raise TypeError(f"dims must be a sequence of ints, got {list(dims)}")
        dims = [int(d) for d in dims]
        bad = [d for d in dims if not 0 <= d < s.latent_dim]
        if bad or not dims:
            raise ValueError(f"dims must be non-empty and in [0, {s.latent_dim}); got {dims}")
        return dims
    order = np.argsort(-np.asarray(s.kl_per_dim), kind="stable")
    return sorted(int(d) for d in order[:max_dims])


def _grid(n: int, figsize_per: tuple[float, float], sharex: bool = False) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(figsize_per[0] * cols, figsize_per[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharex=sharex)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def plot_kl_per_dim(report: Any, site: str | None = None, ax: Any = None) -> Any:
    """Bars of E_x KL(q(z_d|x) || p(z_d)) per dimension, coloured by status.

    Parameters
    ----------
    report : CollapseReport
    site : str or None
        Latent site; default the first one.
    ax : matplotlib Axes or None
        Draw into this Axes instead of a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
        Bars in nats per data point; collapsed dimensions marked with a red x.
    """
    s = _site(report, site)
    fig, ax = _figure(ax)
    dims = np.arange(s.latent_dim)
    colors = [{**_STATUS_COLORS, **_LEGACY_COLORS}.get(st, "k") for st in s.status]
    ax.bar(dims, s.kl_per_dim, color=colors, edgecolor="black", linewidth=0.5)
    for d, st in enumerate(s.status):
        if st == "collapsed":
            ax.annotate("x", (d, 0), ha="center", va="bottom", color="#d7301f", fontweight="bold")
    ax.set_xlabel(f"latent dimension of {s.site!r}")
    ax.set_ylabel("KL (nats per point)")
    ax.set_xticks(dims)
    ax.set_title(f"KL per dimension: {s.active_units}/{s.latent_dim} active ({s.verdict})")
    _status_legend(ax)
    return fig


def plot_dimensions(report: Any, site: str | None = None) -> Any:
    """Every per-dimension metric of a site, one panel each, bars coloured by status.

    Panels: KL and MI (with Monte Carlo error bars) in nats; active-unit variance on a
    log scale with the threshold and bootstrap intervals; ln R-hat (datapoints as
    chains) in nats; decoder sensitivity. Panels whose metric was not computed are left
    out.

    Parameters
    ----------
    report : CollapseReport
    site : str or None
        Latent site; default the first one.

    Returns
    -------
    matplotlib.figure.Figure
        One row of bars per metric, sharing the dimension axis.
    """
    from matplotlib.figure import Figure

    s = _site(report, site)
    dims = np.arange(s.latent_dim)
    colors = [{**_STATUS_COLORS, **_LEGACY_COLORS}.get(st, "k") for st in s.status]
    panels = [("kl", "KL / MI (nats)")]
    panels.append(("au", "AU variance"))
    if s.rhat is not None:
        panels.append(("rhat", "ln R-hat (nats)"))
    if s.sensitivity is not None:
        panels.append(("sens", "decoder sensitivity"))
    fig = Figure(
        figsize=(max(6.0, 0.3 * s.latent_dim + 2), 1.9 * len(panels) + 0.8), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    for ax, (key, label) in zip(axes, panels):
        if key == "kl":
            width = 0.4 if s.mi_per_dim is not None else 0.8
            ax.bar(
                dims - (width / 2 if s.mi_per_dim is not None else 0),
                s.kl_per_dim,
                width,
                color=colors,
                edgecolor="black",
                linewidth=0.5,
                label="KL",
            )
            if s.mi_per_dim is not None:
                err = (
                    None if s.mi_per_dim_stderr is None else 2 * np.nan_to_num(s.mi_per_dim_stderr)
                )
                ax.bar(
                    dims + width / 2,
                    s.mi_per_dim,
                    width,
                    yerr=err,
                    color=colors,
                    edgecolor="black",
                    linewidth=0.5,
                    hatch="//",
                    label="MI",
                    capsize=2,
                )
            ax.legend(fontsize="small", loc="best")
        elif key == "au":
            var = np.maximum(np.asarray(s.au_variance, dtype=float), 1e-12)
            err = None
            if s.au_variance_ci is not None:
                ci = np.maximum(np.asarray(s.au_variance_ci, dtype=float), 1e-12)
                err = np.abs(np.stack([var - ci[0], ci[1] - var]))
            ax.bar(dims, var, color=colors, edgecolor="black", linewidth=0.5, yerr=err, capsize=2)
            ax.axhline(s.au_threshold, color="#d7301f", ls="--", lw=1)
            ax.text(
                0.01,
                s.au_threshold,
                f"threshold {s.au_threshold:g}",
                transform=ax.get_yaxis_transform(),
                color="#d7301f",
                fontsize="small",
                va="bottom",
            )
            ax.set_yscale("log")
        elif key == "rhat":
            ax.bar(
                dims,
                np.log(np.asarray(s.rhat, dtype=float)),
                color=colors,
                edgecolor="black",
                linewidth=0.5,
            )
        else:
            ax.bar(dims, s.sensitivity, color=colors, edgecolor="black", linewidth=0.5)
            if s.sensitivity_method:
                label = f"sensitivity ({s.sensitivity_method})"
        ax.set_ylabel(label, fontsize="small")
    axes[-1].set_xlabel(f"latent dimension of {s.site!r}")
    axes[-1].set_xticks(dims)
    axes[0].set_title(f"site {s.site!r}: {s.active_units}/{s.latent_dim} active ({s.verdict})")
    return fig


def plot_posterior_densities(
    report: Any, site: str | None = None, dims: Any = None, max_dims: int = 8
) -> Any:
    """q(z_d | x) of a few observations (lines) over the prior p(z_d) (filled), one panel
    per dimension: a collapsed dimension shows every posterior on top of the prior.

    Needs the densities :func:`pyrocollapse.diagnose` stores in the report.

    Parameters
    ----------
    report : CollapseReport
    site : str or None
        Latent site; default the first one.
    dims : sequence of int or None
        Dimensions to draw; default the ``max_dims`` with the largest KL.
    max_dims : int
        Panels drawn when ``dims`` is None.

    Returns
    -------
    matplotlib.figure.Figure
        Densities in 1 / (units of z) against z, one panel per dimension.
    """
    s = _site(report, site)
    if s.densities is None:
        raise ValueError(f"the report has no posterior densities for site {s.site!r}")
    grid, prior, post = (
        np.asarray(s.densities[k], dtype=float) for k in ("grid", "prior", "posterior")
    )
    chosen = _pick_dims(s, dims, max_dims)
    fig, axes = _grid(len(chosen), (2.6, 2.0))
    for ax, d in zip(axes, chosen):
        label = "mean of p(z_d | parents)" if s.conditional_prior else "p(z_d)"
        ax.fill_between(grid[d], prior[d], color="#bdbdbd", alpha=0.7, label=label)
        for e in range(post.shape[0]):
            ax.plot(grid[d], post[e, d], lw=1.2, label=f"q(z_d|x_{e})")
        ax.set_title(
            f"dim {d}: {s.status[d]}", fontsize="small", color={**_STATUS_COLORS, **_LEGACY_COLORS}.get(s.status[d], "k")
        )
        ax.set_yticks([])
    axes[0].legend(fontsize="x-small", loc="upper left")
    fig.suptitle(f"posteriors of {post.shape[0]} observations over the prior ({s.site!r})")
    return fig


def plot_posterior_mean_space(
    report: Any, site: str | None = None, dims: Any = None, max_dims: int = 4
) -> Any:
    """Approximate posterior mean E_q[z_d|x] (x axis) against the model posterior mean
    E_p[z_d|x] (y axis), one point per observation (He et al. 2019, Fig. 1).

    Points on the diagonal: q's mean matches the model's. A lagging inference network
    shows points spread along y with x near the prior mean; collapse puts every point at
    the prior mean.

    Parameters
    ----------
    report : CollapseReport
        From :func:`pyrocollapse.diagnose` with the ``"iw"`` estimator.
    site : str or None
        Latent site; default the first one.
    dims : sequence of int or None
        Dimensions to draw; default the ``max_dims`` with the largest KL.
    max_dims : int
        Panels drawn when ``dims`` is None.

    Returns
    -------
    matplotlib.figure.Figure
        One scatter per dimension (units of z) with the diagonal dashed.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    s = _site(report, site)
    if s.mean_space is None:
        raise ValueError(
            f"the report has no posterior-mean space for site {s.site!r}; run diagnose with "
            "the 'iw' estimator"
        )
    approx = np.asarray(s.mean_space["approximate"], dtype=float)
    exact = np.asarray(s.mean_space["model"], dtype=float)
    chosen = _pick_dims(s, dims, max_dims)
    fig, axes = _grid(len(chosen), (2.8, 2.8))
    for ax, d in zip(axes, chosen):
        a, m = approx[:, d], exact[:, d]
        ax.scatter(a, m, s=6, alpha=0.6, color={**_STATUS_COLORS, **_LEGACY_COLORS}.get(s.status[d], "k"))
        finite = np.isfinite(np.concatenate([a, m]))
        both = np.concatenate([a, m])[finite]
        lo, hi = (both.min(), both.max()) if both.size else (-1.0, 1.0)
        pad = 0.05 * (hi - lo) + 1e-3
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("approximate E_q[z_d|x]", fontsize="small")
        ax.set_ylabel("model E_p[z_d|x]", fontsize="small")
        ax.set_title(f"dim {d}: {s.status[d]}", fontsize="small")
    fig.suptitle(f"posterior mean space ({s.site!r}, {approx.shape[0]} points)")
    return fig


def plot_khat(report: Any, ax: Any = None) -> Any:
    """Histogram of PSIS k-hat over data points, with the 0.5 and 0.7 thresholds.

    Parameters
    ----------
    report : CollapseReport
        From :func:`pyrocollapse.diagnose` with the ``"psis"`` estimator.
    ax : matplotlib Axes or None
        Draw into this Axes instead of a new Figure.

    Returns
    -------
    matplotlib.figure.Figure

    References
    ----------
    Yao, Vehtari, Simpson, Gelman (2018). Yes, but Did It Work?: Evaluating Variational
    Inference. ICML.
    """
    g = _check_report(report).guide_quality
    if g is None or g.get("khat") is None:
        raise ValueError("the report has no PSIS k-hat; run diagnose with the 'psis' estimator")
    k = np.asarray(g["khat"], dtype=float)
    k = k[np.isfinite(k)]
    fig, ax = _figure(ax, (5.5, 3.0))
    ax.hist(k, bins=min(40, max(5, k.size // 5)), color="#2b8cbe", edgecolor="black", lw=0.4)
    for t, c in ((0.5, "#fdae61"), (0.7, "#d7301f")):
        ax.axvline(t, color=c, ls="--", lw=1, label=f"k = {t}")
    ax.set_xlabel("PSIS k-hat of q(z|x_n)")
    ax.set_ylabel("data points")
    ax.set_title(f"guide quality: {100 * g['fraction_above_0.7']:.1f}% of points above 0.7")
    ax.legend(fontsize="small")
    return fig


def _image(x: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    img = np.asarray(x, dtype=float).reshape(image_shape)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def _check_image_shape(image_shape: Any, size: int) -> tuple[int, ...]:
    if not isinstance(image_shape, (tuple, list)):
        raise TypeError(
            f"image_shape must be a tuple of positive ints such as (1, 8, 8), got "
            f"{type(image_shape).__name__} {image_shape!r}"
        )
    shape = tuple(check_int(f"image_shape[{i}]", v, minimum=1) for i, v in enumerate(image_shape))
    if int(np.prod(shape)) != size:
        raise ValueError(
            f"image_shape {shape} has {int(np.prod(shape))} elements; the data has {size}"
        )
    return shape


def _finite_array(name: str, values: Any) -> np.ndarray:
    """``values`` as a float array of shape ``(N, ...)`` with ``N >= 1`` and finite entries."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be an array of numbers, got {type(values).__name__} ({e})"
        ) from None
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (N, *event_shape), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one row")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    return arr


def plot_traversals(traversal: Any, image_shape: Any) -> Any:
    """Latent traversals as an image grid: one row per dimension, one column per value.

    Parameters
    ----------
    traversal : LatentTraversal
        From :func:`pyrocollapse.diagnostics.latent_traversal`.
    image_shape : tuple of int
        E.g. ``(1, 8, 8)`` (channels first) or ``(8, 8)``.

    Returns
    -------
    matplotlib.figure.Figure
        A (dimensions x values) grid of images.
    """
    _check_like(
        "traversal", traversal, _TRAVERSAL_ATTRIBUTES, "a LatentTraversal (from latent_traversal)"
    )
    means = np.asarray(traversal.means, dtype=float)
    k, t = means.shape[:2]
    shape = _check_image_shape(image_shape, int(np.prod(means.shape[2:])))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.8 * t + 1.0, 0.8 * k + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(k, t, squeeze=False))
    for i in range(k):
        for j in range(t):
            ax = axes[i, j]
            ax.imshow(_image(means[i, j], shape), cmap="gray", vmin=0, vmax=max(1.0, means.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(
                    f"z{int(traversal.dims[i])}", rotation=0, labelpad=12, fontsize="small"
                )
            if i == k - 1:
                ax.set_xlabel(f"{float(traversal.values[j]):+.1f}", fontsize="x-small")
    fig.suptitle(f"latent traversals of {traversal.site!r} (rows: dimension, columns: value)")
    return fig


def plot_reconstructions(data: Any, reconstructions: Any, image_shape: Any, n: int = 8) -> Any:
    """Observations (top row) and their reconstructions E[x | E_q[z|x]] (bottom row).

    Parameters
    ----------
    data : array-like
        Observations, shape ``(N, *event_shape)``.
    reconstructions : array-like
        Same shape, e.g. from :func:`pyrocollapse.diagnostics.reconstruction_means`.
    image_shape : tuple of int
        Shape of one image, e.g. ``(1, 8, 8)``.
    n : int
        Columns drawn (the first ``n`` observations).

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _finite_array("data", data)
    recon = _finite_array("reconstructions", reconstructions)
    if data.shape != recon.shape:
        raise ValueError(
            f"data {data.shape} and reconstructions {recon.shape} must have the same shape"
        )
    n = min(check_int("n", n, minimum=1), data.shape[0])
    shape = _check_image_shape(image_shape, int(np.prod(data.shape[1:])))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.9 * n + 0.6, 2.2), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for i, src in enumerate((data, recon)):
            axes[i, j].imshow(_image(src[j], shape), cmap="gray", vmin=0, vmax=max(1.0, src.max()))
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("data", fontsize="small")
    axes[1, 0].set_ylabel("recon.", fontsize="small")
    return fig


def plot_kl_heatmap(history: Any, site: str = "z", ax: Any = None) -> Any:
    """Heatmap of KL per dimension (rows) over epochs (columns), from a History."""
    mat = _check_history(history).kl_matrix(site)
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


def _history_sites(history: Any) -> set[str]:
    """Latent sites ``history`` recorded (per-dimension KL or a ``kl/<site>`` column)."""
    _check_history(history)
    return {s for r in history for s in r.kl_per_dim} | {
        k.split("/", 1)[1] for r in history for k in r.values if k.startswith("kl/")
    }


def plot_training(history: Any, site: str = "z") -> Any:
    """Training curves of ``history`` over epochs, in two panels.

    Left: ELBO and reconstruction term (nats per data point) and, on a second axis, the
    KL weight when it changed during training (a schedule); a constant weight is named in
    the panel's title instead. Right: the collapse indicators of ``site`` that were
    monitored (active units, MI in nats) and the KL term (nats per data point).

    Parameters
    ----------
    history : History
        From :func:`pyrocollapse.fit` (at least one epoch).
    site : str
        Latent site whose monitored active units and mutual information are drawn.

    Returns
    -------
    matplotlib.figure.Figure
        With 2 axes, or 3 when the KL weight varied (the weight's twin axis).
    """
    from matplotlib.figure import Figure

    _check_history(history)
    check_type("site", site, str, "a latent site name")
    known = _history_sites(history)
    if known and site not in known:
        raise ValueError(
            f"site must be a latent site of this history, one of {sorted(known)}; got {site!r}"
        )
    fig = Figure(figsize=(9.0, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ep = np.array([r.epoch for r in history])
    ax1.plot(ep, history.column("elbo"), label="ELBO")
    ax1.plot(ep, history.column("reconstruction"), label="reconstruction")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("nats per point")
    weight = history.column("kl_weight")
    finite = weight[np.isfinite(weight)]
    handles = list(ax1.get_lines())
    if finite.size and np.ptp(finite) > 0:
        ax1b = ax1.twinx()
        handles += ax1b.plot(ep, weight, "k--", lw=1, label="KL weight (right axis)")
        ax1b.set_ylabel("KL weight")
        ax1.set_title("objective")
    elif finite.size:
        ax1.set_title(f"objective (KL weight {finite[0]:g})")
    else:
        ax1.set_title("objective")
    ax1.legend(handles=handles, fontsize="small")
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
    _check_history(history)
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
    _check_like(
        "schedule", schedule, _SCHEDULE_ATTRIBUTES, "a Schedule (see pyrocollapse.schedules)"
    )
    steps = check_int("steps", steps, minimum=1)
    fig, ax = _figure(ax, (5.0, 2.5))
    ax.plot(np.arange(steps), schedule.values(steps))
    ax.set_xlabel("step")
    ax.set_ylabel("KL weight")
    ax.set_title(repr(schedule))
    return fig


def save_figure(fig: Any, path: str, dpi: int = 110) -> None:
    """Save a Figure to ``path`` atomically (PNG by extension)."""
    from matplotlib.figure import Figure

    from pyrocollapse._io import atomic_write

    check_type("fig", fig, Figure, "a matplotlib Figure")
    dpi = check_int("dpi", dpi, minimum=1)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    suffix = Path(path).suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(
            f"path {str(path)!r}: format {suffix!r} is not supported; use one of "
            f"{', '.join(sorted(supported))}"
        )
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=suffix))


def plot_comparison(summary: Any, ax: Any = None) -> Any:
    """Active units and MI against held-out negative log-likelihood, one point per
    prior x objective (x model variant), in two panels.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`pyrocollapse.comparison.summarize_runs`'s table: ``prior``, ``objective``
        and the ``<metric>_mean`` / ``<metric>_std`` columns over seeds. Error bars are one
        standard deviation over seeds; the negative log-likelihood is the IW estimate where
        it was computed, else the negative ELBO. A ``baseline`` column (as the summary has)
        marks the baseline cell in the legend; a ``variant`` column (a grid of model
        variants) adds the variant to each legend label (``prior + objective + variant``).
    ax : sequence of two matplotlib Axes, or None
        Where to draw the two panels (active units, MI); ``None``: a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Left: active units against held-out NLL; right: mutual information I(x; z) (nats)
        against held-out NLL. Each cell has the same colour in both.
    """
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pyrocollapse._validation import check_columns

    check_columns(
        "summary",
        summary,
        ["prior", "objective"]
        + [
            f"{m}_{s}"
            for m in ("active_units", "mi", "iw_log_likelihood", "elbo")
            for s in ("mean", "std")
        ],
    )
    if ax is None:
        fig = Figure(figsize=(11.0, 4.0), layout="constrained")
        axes = list(fig.subplots(1, 2))
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise TypeError(
                "ax must be None or a sequence of two matplotlib Axes (active units, MI), "
                f"got {ax!r}"
            )
        fig = axes[0].figure
    metric = "iw_log_likelihood" if np.isfinite(summary["iw_log_likelihood_mean"]).any() else "elbo"
    panels = (
        (axes[0], "active_units", "active units"),
        (axes[1], "mi", "mutual information I(x; z) (MI, nats)"),
    )
    for i, (_, row) in enumerate(summary.iterrows()):
        x, xerr = -row[f"{metric}_mean"], row[f"{metric}_std"]
        if not np.isfinite(x):
            continue
        label = f"{row['prior']} + {row['objective']}"
        if "variant" in summary:
            label += f" + {row['variant']}"
        if "baseline" in summary and bool(row["baseline"]):
            label += " (baseline)"
        for a, name, _ in panels:
            y, yerr = row[f"{name}_mean"], row[f"{name}_std"]
            if not np.isfinite(y):
                continue
            a.errorbar(
                x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=f"C{i % 10}", label=label
            )
    xlabel = (
        f"held-out NLL ({'IW estimate' if metric == 'iw_log_likelihood' else '-ELBO'}, "
        "nats per point)"
    )
    for a, _, ylabel in panels:
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
    axes[0].set_title("more active units, lower NLL is better")
    axes[1].set_title("more information, lower NLL is better")
    for a in axes:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize="small", loc="best")
            break
    return fig
