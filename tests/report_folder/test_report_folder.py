"""The report folder: figures and report.html from saved files, ``pyrocollapse report``."""

import json
import re

import numpy as np
import pytest
import torch
from linear_gaussian import LinearGaussian, TwoLayer

from pyrocollapse import diagnose
from pyrocollapse.cli import main
from pyrocollapse.report_folder import (
    figure_name,
    history_figures,
    read_folder,
    render_html,
    report_figures,
    rerender,
    write_figures,
    write_html,
)
from pyrocollapse.summaries import save_inference_data, to_inference_data
from pyrocollapse.train import EpochRecord, History


@pytest.fixture(scope="module")
def lg():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    return LinearGaussian(A, torch.tensor([0.5, 0.8, 1.0]), sigma)


@pytest.fixture(scope="module")
def report(lg):
    return diagnose(
        lg.model,
        lg.guide,
        lg.sample_data(150),
        estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "psis"),
        importance_samples=60,
        bootstrap=30,
    )


def make_history(sites=("z",)):
    hist = History()
    for epoch in (1, 2, 3):
        values = {"elbo": -5.0 + epoch, "reconstruction": -4.0 + epoch, "kl": 1.0, "kl_weight": 1.0}
        hist.append(EpochRecord(epoch, values, {s: np.array([0.5, 0.2, 0.01]) for s in sites}))
    return hist


def write_folder(path, report, *, history=True, posterior=None):
    path.mkdir()
    metrics = {"report": report.to_dict(), "dataset": {"name": "synthetic"}, "config": {}}
    (path / "metrics.json").write_text(json.dumps(metrics))
    hist = make_history(tuple(report.sites)) if history else None
    if hist is not None:
        hist.to_csv(str(path / "history.csv"))
    if posterior is not None:
        save_inference_data(posterior, path / "posterior.nc")
    figs = report_figures(report)
    figs.update(history_figures(hist, list(report.sites)))
    write_figures(path, figs)
    write_html(path)
    return path


def test_folder_page_shows_tables_figures_and_summaries(tmp_path, lg, report):
    idata = to_inference_data(lg.model, lg.guide, lg.sample_data(40), 20)
    folder = write_folder(tmp_path / "run", report, posterior=idata)
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert f'class="verdict partial">{report.verdict}</span>' in page
    for text in (
        "ELBO decomposition",
        "IW log-likelihood",
        "Guide quality",
        "Posterior summaries (ArviZ)",
        "sd_ratio",
        "rhat_obs",
        "Rule.",
    ):
        assert text in page, text
    # every figure file is linked by relative path, and every link exists
    links = re.findall(r'<img src="([^"]+)"', page)
    files = sorted(f"figures/{p.name}" for p in (folder / "figures").glob("*.png"))
    assert sorted(links) == files and len(files) == 8
    for kind in (
        "kl_per_dim",
        "dimensions",
        "posterior_densities",
        "posterior_mean_space",
        "khat",
        "kl_heatmap",
        "training",
        "elbo_decomposition",
    ):
        assert f"figures/{kind}.png" in links
    # the per-dimension table carries the status of each row
    assert page.count('<tr class="active">') == 2 and page.count('<tr class="collapsed">') == 1
    rf = read_folder(folder)
    assert rf.report.to_dict() == report.to_dict() and len(rf.history) == 3


def test_text_from_the_run_is_escaped(tmp_path, report):
    d = report.to_dict()
    evil = "<script>alert(1)</script>"
    d["sites"] = {evil: {**d["sites"]["z"], "site": evil}}
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"report": d, "dataset": {"name": "<b>x</b>"}}))
    page = render_html(folder)
    assert "<script>" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert figure_name("kl_per_dim", evil, 2) == "kl_per_dim__script_alert_1___script_"


def test_report_command_rebuilds_figures_and_keeps_model_figures(tmp_path, report, capsys):
    folder = write_folder(tmp_path / "run", report)
    for png in (folder / "figures").glob("*.png"):
        png.unlink()
    (folder / "figures" / "traversals.png").write_bytes(b"\x89PNG\r\n\x1a\nmodel figure")
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    assert "re-rendered" in capsys.readouterr().out
    names = sorted(p.stem for p in (folder / "figures").glob("*.png"))
    assert names == sorted(
        [
            "dimensions",
            "elbo_decomposition",
            "khat",
            "kl_heatmap",
            "kl_per_dim",
            "posterior_densities",
            "posterior_mean_space",
            "training",
            "traversals",
        ]
    )
    assert (folder / "figures" / "traversals.png").read_bytes().endswith(b"model figure")
    page = (folder / "report.html").read_text()
    assert "figures/traversals.png" in page and "Latent traversals" in page
    assert not list(folder.rglob(".*.tmp"))  # atomic writes leave no temporary files
    # --no-figures only re-renders the page
    before = (folder / "figures" / "kl_per_dim.png").stat().st_mtime_ns
    page_path, rebuilt = rerender(folder, figures=False)
    assert rebuilt == [] and page_path == folder / "report.html"
    assert (folder / "figures" / "kl_per_dim.png").stat().st_mtime_ns == before


def test_a_folder_without_history_or_posterior_still_renders(tmp_path, report):
    folder = write_folder(tmp_path / "bare", report, history=False)
    page = (folder / "report.html").read_text()
    assert "Posterior summaries" not in page and "figures/training.png" not in page
    assert "figures/kl_per_dim.png" in page


def test_hierarchical_reports_get_one_figure_per_layer(tmp_path):
    two = TwoLayer(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), torch.eye(3), 0.5)
    rep = diagnose(two.model, two.guide, two.sample(120), latent_sites=None)
    folder = write_folder(tmp_path / "two", rep)
    stems = {p.stem for p in (folder / "figures").glob("*.png")}
    for site in ("z_top", "z"):
        for kind in ("kl_per_dim", "dimensions", "posterior_densities", "kl_heatmap", "training"):
            assert f"{kind}_{site}" in stems
    page = (folder / "report.html").read_text()
    assert "[z_top] KL(q(z_d|x)" in page and page.count("<h3>site") == 2


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "report folder '{p}' does not exist"),
        (lambda p: p.write_text("x"), "'{p}' is not a folder"),
        (
            lambda p: p.mkdir(),
            "'{p}/metrics.json' not found: '{p}' is not a pyrocollapse report folder",
        ),
        (
            lambda p: (p.mkdir(), (p / "metrics.json").write_text("{oops")),
            "'{p}/metrics.json' is not valid JSON",
        ),
        (
            lambda p: (p.mkdir(), (p / "metrics.json").write_text("[1, 2]")),
            "has no 'report' object",
        ),
        (
            lambda p: (p.mkdir(), (p / "metrics.json").write_text('{"report": {"sites": {}}}')),
            "malformed report: missing entry 'elbo'",
        ),
    ],
)
def test_report_command_errors_exit_2_with_one_line(tmp_path, capsys, setup, message):
    path = tmp_path / "folder"
    setup(path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(p=path) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_malformed_history_is_reported(tmp_path, report, capsys):
    folder = write_folder(tmp_path / "run", report)
    (folder / "history.csv").write_text("epoch,elbo\nnot-a-number,1\n")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "history.csv' could not be read as a training history" in err


def test_write_report_folder_writes_whole_folders_only(tmp_path, lg, report, capsys):
    from pyrocollapse.report_folder import write_report_folder

    metrics = {"report": report.to_dict()}
    written = write_report_folder(tmp_path / "a", metrics=metrics, report=report)
    assert written == ["metrics.json", "figures/*.png", "report.html"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "figures",
        "metrics.json",
        "report.html",
    ]

    class Broken:  # a "model" whose programs cannot run vectorised draws
        def model(self, x):
            raise RuntimeError("no particle plate here")

        guide = model

        def state_dict(self):
            return {}

    class HeldOut:
        data = lg.sample_data(10)
        image_shape = (3, 1)

    written = write_report_folder(
        tmp_path / "b", metrics=metrics, report=report, history=make_history(),
        vae=Broken(), held_out=HeldOut(),
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "warning: posterior.nc not written: no particle plate here" in err
    assert "warning: traversal figures not written" in err
    assert "posterior.nc" not in written and "model.pt" in written
    assert (tmp_path / "b" / "report.html").exists()
    with pytest.raises(ValueError, match="metrics must be a dict with a 'report' entry"):
        write_report_folder(tmp_path / "c", metrics={}, report=report)
    assert not (tmp_path / "c").exists()


def test_report_command_keeps_disentanglement_and_renders_old_folders(tmp_path, report, capsys):
    from dataclasses import replace

    from pyrocollapse.diagnostics.disentanglement import disentanglement

    rng = np.random.default_rng(2)
    factors = rng.uniform(0, 1, (200, 2))
    codes = np.stack([factors[:, 1], factors[:, 0], rng.normal(size=200)], 1)
    result = disentanglement(codes, factors, factor_names=["a", "b"], regressor="lasso")
    folder = write_folder(tmp_path / "run", replace(report, disentanglement={"z": result}))
    assert main(["report", str(folder), "--no-figures"]) == 0
    capsys.readouterr()
    page = (folder / "report.html").read_text()
    # read back from metrics.json: the scores and MIG's best dimension per factor
    mig = result.to_dict()["scores"]["mig"]
    assert "<h2>Disentanglement</h2>" in page and f"<td>{mig:.3f}</td>" in page
    assert '<td class="text">a</td><td class="text">continuous</td><td class="text">z[1]</td>' in (
        page
    )
    # a folder written before disentanglement existed: no such key, no such section
    old = tmp_path / "old"
    old.mkdir()
    d = report.to_dict()
    del d["disentanglement"]
    (old / "metrics.json").write_text(json.dumps({"report": d, "config": {"epochs": 3}}))
    assert main(["report", str(old)]) == 0
    page = (old / "report.html").read_text()
    assert "isentanglement" not in page and "<h2>Latent sites</h2>" in page
