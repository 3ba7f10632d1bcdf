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
    # a second run into the same folder is refused, and the folder is left as it was
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
    ):
        assert opt in res.stdout, opt


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
