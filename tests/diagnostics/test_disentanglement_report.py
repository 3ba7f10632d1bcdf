"""Disentanglement in the main job: ``run``'s estimator, the report, metrics.json, the CLI."""

import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse.cli import main
from pyrocollapse.diagnostics._disentanglement_report import (
    NO_FACTORS,
    disentanglement_by_site,
    posterior_mean_codes,
)
from pyrocollapse.experiment import run_experiment
from pyrocollapse.report import CollapseReport, disentanglement_lines
from pyrocollapse.testing import tiny_config


def _linear_pair(scale: float = 2.0):
    """A model whose guide's mean is ``scale * x[:, :2]``: a code equal (up to scale) to
    the first two columns of x."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.repeat(1, 2), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(scale * x[:, :2], 0.5).to_event(1))

    return model, guide


def _grid_points(n_side: int = 10) -> torch.Tensor:
    a, b = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    f = np.column_stack([a.ravel(), b.ravel()]).astype(float)
    x = np.column_stack([f, np.zeros_like(f)])
    return torch.tensor(x, dtype=torch.float32)


def test_posterior_means_are_the_guides_means_in_data_order():
    model, guide = _linear_pair(scale=3.0)
    x = torch.randn(37, 4)
    codes = posterior_mean_codes(model, guide, x, "z", batch_size=8)
    assert codes.shape == (37, 2) and codes.dtype == np.float64
    np.testing.assert_allclose(codes, 3.0 * x[:, :2].double().numpy(), rtol=1e-6)


def test_a_code_equal_to_the_factors_scores_one_and_subsampling_is_seeded():
    model, guide = _linear_pair()
    x = _grid_points(10)  # a full 10 x 10 grid of two discrete factors
    factors = x[:, :2].clone()
    results, unavailable = disentanglement_by_site(
        model, guide, x, factors, ["z"], factor_names=("a", "b"), n_estimators=20
    )
    assert unavailable == {}
    s = results["z"].scores()
    assert s["mig"] == pytest.approx(1.0, abs=1e-9)
    assert s["dci_disentanglement"] > 0.95 and s["factorvae_score"] == pytest.approx(1.0)
    assert results["z"].mig.best_dims == (0, 1)
    # a seeded random subset of max_points rows, the same for the same seed
    a, _ = disentanglement_by_site(model, guide, x, factors, ["z"], max_points=40, seed=3,
                                   regressor="lasso", factorvae=False)  # fmt: skip
    b, _ = disentanglement_by_site(model, guide, x, factors, ["z"], max_points=40, seed=3,
                                   regressor="lasso", factorvae=False)  # fmt: skip
    assert a["z"].num_points == 40 and a["z"].scores() == b["z"].scores()
    assert a["z"].factorvae is None


def test_bad_arguments_name_the_argument():
    model, guide = _linear_pair()
    x = _grid_points(4)
    with pytest.raises(ValueError, match=r"factors must have shape \(N=16, F\)"):
        disentanglement_by_site(model, guide, x, torch.zeros(5, 2), ["z"])
    with pytest.raises(ValueError, match="regressor must be one of 'gbt', 'lasso'"):
        disentanglement_by_site(model, guide, x, x[:, :2], ["z"], regressor="tree")
    with pytest.raises(ValueError, match="max_points must be >= 4"):
        disentanglement_by_site(model, guide, x, x[:, :2], ["z"], max_points=2)
    # a site that is not in the program is reported, not raised
    _, unavailable = disentanglement_by_site(
        model, guide, x, x[:, :2], ["w"], regressor="lasso", factorvae=False
    )
    assert list(unavailable) == ["w"]


def test_run_on_shapes_reports_disentanglement_in_text_and_metrics_json(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["run", "--dataset", "shapes", "--dataset-option", "n=300", "--epochs", "1",
         "--latent-dim", "3", "--model-option", "hidden=16", "--estimators",
         "kl,au,disentanglement", "--bootstrap", "0", "--posterior-samples", "0",
         "--disentanglement-option", "regressor=lasso", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("disentanglement (site 'z'"))
    assert "factors shape, scale, pos_x, pos_y" in line
    for label in ("MIG ", "SAP ", "DCI D/C/I ", "FactorVAE "):
        assert label in line
    assert "best dimension per factor (MIG): shape -> z[" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["report"]["disentanglement"]["z"]
    assert d["num_points"] == 30 and d["code_dim"] == 3
    assert d["factor_names"] == ["shape", "scale", "pos_x", "pos_y"]
    assert set(d["scores"]) == {"mig", "sap", "dci_disentanglement", "dci_completeness",
                                "dci_informativeness", "factorvae_score"}  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in d["scores"].values())
    assert d["dci"]["regressor"] == "lasso"
    assert metrics["config"]["disentanglement_options"] == {"regressor": "lasso"}
    # the report reads back with its disentanglement, and prints the same line
    back = CollapseReport.from_dict(metrics["report"])
    assert back.to_dict()["disentanglement"] == metrics["report"]["disentanglement"]
    assert line in str(back)


def test_without_factors_the_reason_is_said_only_when_asked_for():
    from pyrocollapse.experiment.running import _add_disentanglement

    report = CollapseReport(sites={}, elbo={"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0},
                            num_points=3)  # fmt: skip
    assert report.to_dict()["disentanglement"] is None  # not asked for

    class NoFactors:
        factors = None

    _add_disentanglement(report, None, NoFactors(), tiny_config(), None)
    d = report.to_dict()
    assert d["disentanglement"] == {"unavailable": NO_FACTORS}
    assert f"disentanglement not computed: {NO_FACTORS}" in d["notes"]
    back = CollapseReport.from_dict(json.loads(json.dumps(d)))
    assert back.disentanglement == {} and back.to_dict()["disentanglement"] == d["disentanglement"]


def test_single_factor_data_hide_what_is_one_by_construction():
    cfg = tiny_config(
        dataset="digits",
        estimators=("kl", "au", "disentanglement"),
        disentanglement_options={"regressor": "lasso", "max_points": 100},
    )
    result = run_experiment(cfg, None, progress=False)
    d = result.metrics["report"]["disentanglement"]["z"]
    assert d["factor_names"] == ["label"] and d["num_points"] == 100
    # with one factor DCI-D and FactorVAE are 1 by construction: not printed, and said so
    assert d["scores"]["dci_disentanglement"] == pytest.approx(1.0)
    lines = disentanglement_lines(result.report.disentanglement)
    assert "DCI C/I " in lines[0] and "FactorVAE" not in lines[0] and "D/C/I" not in lines[0]
    assert any("1 by construction" in ln for ln in lines)
    from pyrocollapse.comparison import _row_from_metrics

    row = _row_from_metrics(result.metrics)
    assert np.isnan(row["dci_disentanglement"]) and np.isnan(row["factorvae_score"])
    assert row["mig"] == pytest.approx(d["scores"]["mig"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--disentanglement-option", "colour=1"], "unknown disentanglement option 'colour'"),
        (["--disentanglement-option", "regressor=tree"], "regressor must be one of"),
        (["--disentanglement-option", "max_points=2"], "max_points must be >= 4"),
        (["--estimators", "kl,disentanglment"], "names unknown estimators ['disentanglment']"),
    ],
)
def test_disentanglement_options_are_checked_before_any_work(args, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["run", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyrocollapse: error: ") and message in err
    assert not out.exists()
