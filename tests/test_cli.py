import json
import subprocess
import sys

import pandas as pd
import pytest

from pyrocollapse.cli import main, parse_options


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "pyrocollapse.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_end_to_end_run_writes_report_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--epochs",
            "3",
            "--latent-dim",
            "3",
            "--batch-size",
            "256",
            "--model-option",
            "hidden=32",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Posterior collapse report" in printed and "rule:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["report"]["verdict"] in {"healthy", "partial collapse", "full collapse"}
    assert len(metrics["report"]["sites"]["z"]["kl_per_dim"]) == 3
    assert metrics["config"]["epochs"] == 3 and metrics["dataset"]["name"] == "digits"
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3] and "kl/z/2" in hist.columns
    for fig in ("kl_per_dim", "kl_heatmap", "training", "elbo_decomposition"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    assert (out / "model.pt").exists()
    # the diagnostics of issue 6: every estimator ran on the held-out data
    rep = metrics["report"]
    assert rep["settings"]["estimators"] == ["kl", "au", "mi", "rhat", "sensitivity", "psis", "iw"]
    assert {"log_likelihood", "inference_gap"} <= set(rep["elbo"])
    assert len(rep["guide_quality"]["khat"]) == rep["num_points"] == 180
    site = rep["sites"]["z"]
    assert len(site["rhat"]) == len(site["sensitivity"]) == 3 and site["mi_ci"] is not None
    for fig in (
        "dimensions",
        "posterior_densities",
        "posterior_mean_space",
        "khat",
        "traversals",
        "reconstructions",
    ):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    from pyrocollapse.summaries import load_inference_data

    idata = load_inference_data(out / "posterior.nc")
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "z_dim")
    assert idata.posterior["z"].shape == (1, 100, 180, 3)
    assert idata.log_likelihood["x"].shape == (1, 100, 180)
    page = (out / "report.html").read_text()
    assert "Posterior collapse report" in page and page.count("<img ") == 10
    assert "report.html" in printed and "posterior.nc" in printed
    # the report can be re-rendered from the saved files alone
    (out / "report.html").unlink()
    assert main(["report", str(out), "--no-figures"]) == 0
    assert (out / "report.html").read_text().count("<img ") == 10
    # a second run into the same folder is refused, and the folder is left as it was
    capsys.readouterr()
    code = main(["run", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_help_lists_every_option():
    res = run_cli("run", "--help")
    assert res.returncode == 0
    for opt in (
        "--dataset",
        "--model",
        "--prior",
        "--elbo",
        "--schedule",
        "--epochs",
        "--batch-size",
        "--latent-dim",
        "--lr",
        "--seed",
        "--out",
        "--overwrite",
        "--prior-option",
        "--elbo-option",
        "--model-option",
        "--no-progress",
        "--verbose",
        "--num-samples",
        "--estimators",
        "--bootstrap",
        "--importance-samples",
        "--posterior-samples",
        "--posterior-points",
    ):
        assert opt in res.stdout, opt
    res = run_cli("report", "--help")
    assert res.returncode == 0 and "--no-figures" in res.stdout and "folder" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prior", "vampp"], "unknown prior 'vampp'; valid names: standard"),
        (["--elbo", "iwea"], "unknown elbo 'iwea'; valid names:"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'; valid names: digits"),
        (["--model", "cnn"], "unknown model 'cnn'; valid names: mlp"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--latent-dim", "0"], "--latent-dim must be >= 1, got 0"),
        (["--elbo-option", "gamma=2"], "unknown elbo option 'gamma'"),
        (["--prior-option", "oops"], "prior option 'oops' must look like KEY=VALUE"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(args, message, tmp_path):
    res = run_cli("run", "--out", str(tmp_path / "o"), "--no-progress", *args)
    assert res.returncode == 2
    err = res.stderr.strip()
    assert message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--estimators", "kl,mutual"],
            "--estimators 'kl,mutual' names unknown estimators ['mutual']",
        ),
        (["--importance-samples", "10"], "--importance-samples must be >= 50 with the 'psis'"),
        (["--bootstrap", "1"], "--bootstrap must be 0 or >= 2, got 1"),
        (["--posterior-samples", "-1"], "--posterior-samples must be >= 0, got -1"),
    ],
)
def test_diagnostic_options_are_validated_before_any_work(args, message, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), "--no-progress", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert "pyrocollapse run:" not in captured.out  # failed before loading data or training
    assert not (tmp_path / "o").exists()


def test_parse_options_coerces_types():
    def f(a, b=1, *, c=None, d=None, e=None):
        pass

    assert parse_options(["a=3", "b=0.5", "c=true", "d=4,5", "e=name"], f, "x") == {
        "a": 3,
        "b": 0.5,
        "c": True,
        "d": (4, 5),
        "e": "name",
    }
