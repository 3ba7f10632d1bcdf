"""Every figure renders to PNG with the Agg backend, draws what the report holds, and
never calls ``show``."""

import io

import matplotlib
import numpy as np
import pytest
import torch
from linear_gaussian import LinearGaussian
from matplotlib.figure import Figure

from pyrocollapse import diagnose, plots
from pyrocollapse.diagnostics import latent_traversal, reconstruction_means
from pyrocollapse.report import CollapseReport
from pyrocollapse.train import EpochRecord, History

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lg():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    s = torch.tensor([0.5, 0.8, 1.0])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    W = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.3, 1.0, 0.0]])
    return LinearGaussian(A, s, sigma, W)


@pytest.fixture(scope="module")
def report(lg):
    x = lg.sample_data(200)
    return diagnose(
        lg.model,
        lg.guide,
        x,
        estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "psis"),
        bootstrap=50,
        importance_samples=60,
    )


@pytest.fixture
def history():
    hist = History()
    for epoch in range(1, 6):
        values = {
            "elbo": -10.0 + epoch,
            "reconstruction": -8.0 + epoch,
            "kl": 2.0,
            "kl/z": 2.0,
            "kl_weight": min(1.0, epoch / 3),
            "active_units/z": float(min(epoch, 2)),
            "mi/z": 0.2 * epoch,
        }
        hist.append(EpochRecord(epoch, values, {"z": np.array([1.0, 0.5, 0.01]) * epoch}))
    return hist


def png_bytes(fig):
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    data = buf.getvalue()
    assert data.startswith(PNG) and len(data) > 1000
    return data


def test_every_report_figure_renders(report):
    for fig in (
        plots.plot_kl_per_dim(report),
        plots.plot_dimensions(report),
        plots.plot_posterior_densities(report),
        plots.plot_posterior_mean_space(report),
        plots.plot_khat(report),
        report.plot(),
        report.plot("dimensions"),
        report.plot("densities"),
        report.plot("mean_space"),
        report.plot("khat"),
    ):
        png_bytes(fig)


def test_dimensions_figure_marks_the_activity_threshold_without_covering_bars(report):
    fig = plots.plot_dimensions(report)
    site = next(iter(report.sites.values()))
    au_ax = next(ax for ax in fig.axes if ax.get_yscale() == "log")
    assert au_ax.get_legend() is None
    (line,) = [ln for ln in au_ax.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_allclose(line.get_ydata(), [site.au_threshold] * 2)
    assert [t.get_text() for t in au_ax.texts] == [f"threshold {site.au_threshold:g}"]


def test_every_history_figure_renders(history):
    png_bytes(plots.plot_kl_heatmap(history, "z"))
    png_bytes(plots.plot_training(history, "z"))
    png_bytes(plots.plot_elbo_decomposition(history))


def test_training_figure_draws_the_weight_axis_only_for_a_schedule(history):
    fig = plots.plot_training(history, "z")
    assert len(fig.axes) == 3
    twin = fig.axes[2]
    assert twin.get_ylabel() == "KL weight"
    np.testing.assert_allclose(twin.lines[0].get_ydata(), [1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["ELBO", "reconstruction", "KL weight (right axis)"]
    for r in history:
        r.values["kl_weight"] = 0.5
    fig = plots.plot_training(history, "z")
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "objective (KL weight 0.5)"
    labels = [ln.get_label() for ln in fig.axes[1].lines]
    assert labels == ["active units", "MI (nats)", "KL (nats)"]
    np.testing.assert_allclose(fig.axes[1].lines[1].get_ydata(), [0.2, 0.4, 0.6, 0.8, 1.0])


def test_training_figure_refuses_a_site_the_history_lacks(history):
    with pytest.raises(
        ValueError, match=r"^site must be a latent site of this history, one of \['z'\]; got 'z1'"
    ):
        plots.plot_training(history, "z1")


def test_traversal_and_reconstruction_figures_render(lg):
    x = lg.sample_data(6)
    trav = latent_traversal(lg.model, lg.guide, x[:1], values=[-2.0, 0.0, 2.0])
    fig = plots.plot_traversals(trav, (1, 3, 1))
    png_bytes(fig)
    assert len(fig.axes) == 3 * 3
    recon = reconstruction_means(lg.model, lg.guide, x)
    fig = plots.plot_reconstructions(x.numpy(), recon, (3, 1), n=4)
    png_bytes(fig)
    assert len(fig.axes) == 2 * 4
    with pytest.raises(ValueError, match=r"image_shape \(2, 2\) has 4 elements; the data has 3"):
        plots.plot_traversals(trav, (2, 2))


def test_figures_draw_the_reports_numbers(report):
    s = report["z"]
    fig = plots.plot_kl_per_dim(report)
    heights = [p.get_height() for p in fig.axes[0].patches[: s.latent_dim]]
    np.testing.assert_allclose(heights, s.kl_per_dim)
    fig = plots.plot_posterior_mean_space(report, dims=[0])
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], s.mean_space["approximate"][:, 0])
    np.testing.assert_allclose(offsets[:, 1], s.mean_space["model"][:, 0])
    fig = plots.plot_posterior_densities(report, dims=[2])
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), s.densities["grid"][2])
    np.testing.assert_allclose(line.get_ydata(), s.densities["posterior"][0, 2])


def test_figures_from_a_report_read_back_from_json(report, tmp_path):
    path = tmp_path / "r.json"
    report.to_json(str(path))
    again = CollapseReport.from_json(str(path))
    for kind in ("kl", "dimensions", "densities", "mean_space", "khat"):
        png_bytes(again.plot(kind))


def test_missing_data_and_bad_arguments_raise(report, lg):
    bare = diagnose(lg.model, lg.guide, lg.sample_data(50), estimators=("kl",))
    with pytest.raises(ValueError, match="no PSIS k-hat; run diagnose with the 'psis' estimator"):
        plots.plot_khat(bare)
    with pytest.raises(ValueError, match="no posterior-mean space for site 'z'"):
        plots.plot_posterior_mean_space(bare)
    png_bytes(plots.plot_dimensions(bare))  # panels without data are left out
    with pytest.raises(ValueError, match=r"site must be one of \['z'\]; got 'w'"):
        plots.plot_kl_per_dim(report, site="w")
    with pytest.raises(ValueError, match=r"dims must be non-empty and in \[0, 3\)"):
        plots.plot_posterior_densities(report, dims=[5])
    with pytest.raises(ValueError, match="kind must be one of 'kl', 'dimensions'"):
        report.plot("violin")


def test_plots_never_call_show(report, history, monkeypatch):
    import matplotlib.pyplot as plt

    def boom(*args, **kwargs):
        raise AssertionError("a plot called show()")

    monkeypatch.setattr(plt, "show", boom)
    monkeypatch.setattr(Figure, "show", boom)
    plots.plot_dimensions(report)
    plots.plot_training(history, "z")
    assert matplotlib.get_backend().lower() == "agg"
