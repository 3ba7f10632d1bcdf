"""``--config`` files for ``run`` and ``compare``, and option values typed from the
constructors' signatures (issue 18, item 3)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pyrocollapse.cli import main, parse_options

SMALL = {
    "latent_dim": 2,
    "batch_size": 256,
    "model_options": {"hidden": [16]},
    "bootstrap": 0,
    "importance_samples": 50,
    "posterior_samples": 5,
    "posterior_points": 20,
    "estimators": ["kl", "au", "mi"],
}


def test_run_reads_a_yaml_config_and_flags_override_it(tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump({**SMALL, "epochs": 3, "prior": "mixture", "prior_options": {"n_components": 3}})
    )
    out = tmp_path / "out"
    code = main(["run", "--config", str(cfg), "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["epochs"] == 1  # the flag wins
    assert config["prior"] == "mixture" and config["prior_options"] == {"n_components": 3}
    assert config["latent_dim"] == 2 and config["estimators"] == ["kl", "au", "mi"]


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ({"epochs": 1, "epochz": 2}, ".json", "unknown run setting(s) ['epochz']"),
        ("epochs: [1, 2", ".yaml", "is not valid yaml"),
        ([1, 2], ".json", "must hold a mapping of settings, got list"),
    ],
)
def test_bad_config_files_are_one_line_errors(content, suffix, message, tmp_path, capsys):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert main(["run", "--config", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_reads_a_json_config(tmp_path, capsys):
    cfg = tmp_path / "grid.json"
    cfg.write_text(
        json.dumps(
            {
                "priors": ["standard"],
                "elbos": ["elbo", "beta"],
                "seeds": 1,
                "adjust": "bonferroni",
                "elbo_options": {"beta": {"beta": 2.0}},
                "base": {**SMALL, "epochs": 1},
            }
        )
    )
    out = tmp_path / "grid"
    code = main(["compare", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["objective"]) == ["beta", "elbo"] and set(runs["status"]) == {"ok"}
    assert set(pd.read_csv(out / "comparison.csv")["adjust"]) == {"bonferroni"}
    beta = json.loads((out / "runs" / "standard__beta__seed0" / "metrics.json").read_text())
    assert beta["config"]["elbo_options"] == {"beta": 2.0} and beta["config"]["epochs"] == 1
    (tmp_path / "bad.json").write_text(json.dumps({"prior": "mixture"}))
    assert main(["compare", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "g")]) == 2
    assert "unknown key(s) ['prior']" in capsys.readouterr().err
    (tmp_path / "adj.json").write_text(json.dumps({"adjust": "holm", "base": {"epochs": 1}}))
    assert main(["compare", "--config", str(tmp_path / "adj.json"), "--out", str(tmp_path / "h")]) == 2
    assert "adjust must be one of 'none', 'bonferroni'" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_option_values_follow_the_constructor_annotations():
    def f(n: int, x: float | None = None, hidden: tuple[int, ...] = (1,), name: str = "a", flag: bool = False):  # fmt: skip
        pass

    assert parse_options(["n=3", "x=null", "hidden=4,5", "name=none", "flag=true"], f, "prior") == {
        "n": 3, "x": None, "hidden": (4, 5), "name": "none", "flag": True,
    }  # fmt: skip
    # JSON syntax: lists, and commas that stay inside a string
    assert parse_options(["hidden=[4, 5]", "name=a,b", "x=0.5"], f, "prior") == {
        "hidden": (4, 5), "name": "a,b", "x": 0.5,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"^prior option n='abc' is not a valid int$"):
        parse_options(["n=abc"], f, "prior")
    with pytest.raises(ValueError, match=r"prior option x='none' is not a valid"):
        parse_options(["x=none"], f, "prior")  # None is written null


def test_ready_constructors_get_typed_options():
    from pyrocollapse.models import MLPVAE
    from pyrocollapse.priors import MixturePrior

    assert parse_options(["hidden=32", "likelihood=gaussian"], MLPVAE.__init__, "model") == {
        "hidden": (32,), "likelihood": "gaussian",
    }  # fmt: skip
    with pytest.raises(ValueError, match="n_components='ten' is not a valid int"):
        parse_options(["n_components=ten"], MixturePrior.__init__, "prior", skip=("latent_dim",))


def test_run_takes_device_and_threads(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "out"
    try:
        code = main(
            ["run", "--config", str(_small(tmp_path)), "--device", "cpu", "--threads", "1",
             "--out", str(out), "--no-progress"]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["device"] == "cpu"
    # a device this machine does not have: one line, exit 2, before any work
    assert main(["run", "--device", "cuda:7", "--out", str(tmp_path / "o2")]) == 2
    assert "--device" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["run", "--threads", "0", "--out", str(tmp_path / "o3")]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def _small(tmp_path):
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({**SMALL, "epochs": 1}))
    return cfg
