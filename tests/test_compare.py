"""The remedy comparison grid: resume, failure isolation, parallel jobs, CLI."""

import json
import re
from dataclasses import replace

import pandas as pd
import pytest

from pyrocollapse.cli import main
from pyrocollapse.comparison import compare, format_summary, run_id
from pyrocollapse.experiment import RunConfig
from pyrocollapse.testing import tiny_config

TINY = tiny_config()


def test_grid_trains_every_cell_and_resumes(tmp_path):
    out = tmp_path / "grid"
    summary = compare(
        priors=["standard", "learnable"],
        elbos=["elbo", "beta"],
        seeds=2,
        out=out,
        base=TINY,
        elbo_options={"beta": {"beta": 2.0}},
        # options for a registered prior outside the grid are ignored
        prior_options={"mixture": {"n_components": 3}},
        iw_samples=50,
        progress=False,
    )
    assert len(summary) == 4 and set(summary["n_ok"]) == {2}
    assert set(zip(summary["prior"], summary["objective"])) == {
        ("standard", "elbo"),
        ("standard", "beta"),
        ("learnable", "elbo"),
        ("learnable", "beta"),
    }
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 8 and (runs["status"] == "ok").all()
    assert runs["iw_log_likelihood"].notna().all() and (runs["iw_log_likelihood"] < 0).all()
    # ranking: by rank (paired per-seed tests), then held-out IW log-likelihood, best first
    ranks = summary["rank"].tolist()
    assert ranks == sorted(ranks) and ranks[0] == 1
    for _, same in summary.groupby("rank"):
        means = same["iw_log_likelihood_mean"].tolist()
        assert means == sorted(means, reverse=True)
        assert same["tied"].all() == (len(same) > 1)
    # the baseline is the first prior with the first objective; the others are paired with it
    base = summary[summary["baseline"]]
    assert base[["prior", "objective"]].values.tolist() == [["standard", "elbo"]]
    other = summary[(summary.prior == "learnable") & (summary.objective == "beta")].iloc[0]
    assert other["n_paired"] == 2
    base_runs = runs[(runs.prior == "standard") & (runs.objective == "elbo")].set_index("seed")
    other_runs = runs[(runs.prior == "learnable") & (runs.objective == "beta")].set_index("seed")
    for m in ("iw_log_likelihood", "mi"):
        assert other[f"{m}_diff"] == pytest.approx((other_runs[m] - base_runs[m]).mean())
        assert other[f"{m}_diff_lo"] <= other[f"{m}_diff"] <= other[f"{m}_diff_hi"]
    table = pd.read_csv(out / "comparison.csv")
    assert {"rank", "tied", "baseline", "n_paired", "iw_log_likelihood_diff_lo"} <= set(table)
    # each cell's std is over its two seeds
    cell = runs[(runs.prior == "standard") & (runs.objective == "beta")]
    row = summary[(summary.prior == "standard") & (summary.objective == "beta")].iloc[0]
    assert row["elbo_mean"] == pytest.approx(cell["elbo"].mean())
    assert row["elbo_std"] == pytest.approx(cell["elbo"].std(ddof=1))
    metrics = json.loads(
        (out / "runs" / run_id("standard", "beta", 1) / "metrics.json").read_text()
    )
    assert metrics["config"]["elbo_options"] == {"beta": 2.0} and metrics["config"]["seed"] == 1
    assert metrics["config"]["prior_options"] == {}
    assert (out / "runs" / run_id("learnable", "elbo", 0) / "report.html").exists()
    assert (out / "figures" / "au_vs_nll.png").stat().st_size > 1000
    text = format_summary(summary)
    assert text.startswith("ranked by held-out importance-weighted log-likelihood")
    assert "baseline: standard + elbo" in text
    # resume: a removed run is re-trained, the others are read back
    import shutil

    shutil.rmtree(out / "runs" / run_id("standard", "elbo", 0))
    again = compare(
        priors=["standard", "learnable"],
        elbos=["elbo", "beta"],
        seeds=2,
        out=out,
        base=TINY,
        elbo_options={"beta": {"beta": 2.0}},
        iw_samples=50,
        progress=False,
    )
    runs2 = pd.read_csv(out / "runs.csv")
    assert runs2["resumed"].sum() == 7
    assert bool(runs2.loc[runs2.run == run_id("standard", "elbo", 0), "resumed"].item()) is False
    pd.testing.assert_frame_equal(
        again.sort_values(["prior", "objective"]).reset_index(drop=True)[
            ["prior", "objective", "n_ok"]
        ],
        summary.sort_values(["prior", "objective"]).reset_index(drop=True)[
            ["prior", "objective", "n_ok"]
        ],
    )


def test_a_failed_run_is_recorded_and_does_not_stop_the_others(tmp_path, monkeypatch):
    import pyrocollapse.train

    real_fit = pyrocollapse.train.fit

    def fit(*args, loss, **kwargs):  # the beta-VAE runs diverge; the others train
        if type(loss).__name__ == "BetaELBO":
            raise FloatingPointError("loss is nan at step 3")
        return real_fit(*args, loss=loss, **kwargs)

    monkeypatch.setattr(pyrocollapse.train, "fit", fit)
    summary = compare(
        priors=["standard"],
        elbos=["elbo", "beta"],
        seeds=1,
        out=tmp_path,
        base=TINY,
        elbo_options={"beta": {"beta": 2.0}},
        iw_samples=50,
        progress=False,
    )
    by_elbo = summary.set_index("objective")
    assert by_elbo.loc["elbo", "n_ok"] == 1 and by_elbo.loc["beta", "n_failed"] == 1
    assert by_elbo.loc["beta", "error"] == "FloatingPointError: loss is nan at step 3"
    err = json.loads(
        (tmp_path / "runs" / f"{run_id('standard', 'beta', 0)}.error.json").read_text()
    )
    assert "Traceback" in err["traceback"]
    assert not (tmp_path / "runs" / run_id("standard", "beta", 0)).exists()


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results_as_serial(tmp_path):
    kw = dict(
        priors=["standard"],
        elbos=["elbo", "annealed"],
        seeds=1,
        base=TINY,
        iw_samples=50,
        progress=False,
    )
    serial = (
        compare(out=tmp_path / "a", jobs=1, **kw).sort_values("objective").reset_index(drop=True)
    )
    parallel = (
        compare(out=tmp_path / "b", jobs=2, **kw).sort_values("objective").reset_index(drop=True)
    )
    for col in ("active_units_mean", "kl_mean", "elbo_mean"):
        assert parallel[col].tolist() == pytest.approx(serial[col].tolist(), rel=1e-4), col


def test_bad_grid_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown prior 'vampp'"):
        compare(priors=["vampp"], elbos=["elbo"], seeds=1, out=tmp_path, base=TINY, progress=False)
    with pytest.raises(TypeError, match="priors and elbos must be sequences of names"):
        compare(priors="standard", elbos=["elbo"], seeds=1, out=tmp_path, base=TINY, progress=False)
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        compare(
            priors=["standard"], elbos=["elbo"], seeds=0, out=tmp_path, base=TINY, progress=False
        )
    with pytest.raises(ValueError, match="unknown elbo option 'beta'"):
        compare(
            priors=["standard"],
            elbos=["elbo"],
            seeds=1,
            out=tmp_path,
            base=TINY,
            elbo_options={"elbo": {"beta": 2}},
            progress=False,
        )
    assert not (tmp_path / "runs").exists()


def test_cli_compare(tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(
        [
            "compare",
            "--priors",
            "standard",
            "--elbos",
            "elbo,freebits",
            "--elbo-option",
            "freebits.free_bits=0.2",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--latent-dim",
            "2",
            "--model-option",
            "hidden=16",
            "--bootstrap",
            "0",
            "--estimators",
            "kl,au,mi",
            "--importance-samples",
            "50",
            "--posterior-samples",
            "0",
            "--out",
            str(out),
            "--no-progress",
            "--baseline",
            "standard:freebits",
            "--adjust",
            "bonferroni",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    flat = " ".join(printed.split())
    assert "Bonferroni, jointly 95% over the 1 comparison with the baseline" in flat
    assert "Bonferroni" in (out / "comparison.html").read_text(encoding="utf-8")
    assert "ranked by" in printed and "(2 ok, 0 failed)" in printed
    assert "baseline: standard + freebits" in printed
    # one seed: no interval, every cell tied, and the note says so
    assert "one seed gives no interval" in printed and "--seeds 3 or more" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 2 and table["rank"].tolist() == [1, 1] and table["tied"].all()
    assert table.set_index("objective")["baseline"].to_dict() == {"freebits": True, "elbo": False}
    assert set(table["adjust"]) == {"bonferroni"}
    assert main(["compare", "--adjust", "holm", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err  # Python 3.12 quotes the choices, 3.11 does not
    assert re.search(r"--adjust: invalid choice: 'holm' \(choose from '?none'?, '?bonferroni", err)
    code = main(["compare", "--baseline", "standard:beta", "--out", str(tmp_path / "y")])
    assert code == 2
    assert "baseline 'standard:beta' is not a cell of this grid" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    code = main(
        ["compare", "--elbos", "elbo", "--elbo-option", "mi.alpha=1", "--out", str(tmp_path / "x")]
    )
    assert code == 2
    assert "names 'mi', which is not in the grid" in capsys.readouterr().err


def test_run_engine_options_reach_fit_and_callbacks(tmp_path, capsys):
    import warnings

    with warnings.catch_warnings():  # the collapse warning may fire on a 2-epoch run
        warnings.simplefilter("ignore")
        code = main(
            [
                "run",
                "--epochs",
                "2",
                "--latent-dim",
                "2",
                "--model-option",
                "hidden=16",
                "--elbo",
                "freebits",
                "--elbo-option",
                "free_bits=0.1",
                "--schedule",
                "linear",
                "--schedule-option",
                "warmup_steps=4",
                "--aggressive",
                "--on-collapse",
                "warn",
                "--min-active-units",
                "1",
                "--bootstrap",
                "0",
                "--estimators",
                "kl,au,mi",
                "--posterior-samples",
                "0",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
    assert code == 0
    hist = pd.read_csv(tmp_path / "r" / "history.csv")
    assert "aggressive" in hist.columns and "free_bits" in hist.columns
    assert hist["kl_weight"].iloc[-1] == pytest.approx(1.0)  # 26 steps, warm-up over 4
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["config"]["aggressive"] is True and metrics["config"]["schedule"] == "linear"
    capsys.readouterr()
    code = main(
        [
            "run",
            "--elbo",
            "elbo",
            "--schedule-option",
            "warmup_steps=4",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2 and "schedule options need --schedule NAME" in capsys.readouterr().err
    code = main(
        ["run", "--min-active-units", "0", "--on-collapse", "warn", "--out", str(tmp_path / "t")]
    )
    assert code == 2 and "--min-active-units must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_compare_is_a_top_level_function():
    import pyrocollapse
    from pyrocollapse.comparison import compare as grid

    assert pyrocollapse.compare is grid and callable(pyrocollapse.compare)
    assert pyrocollapse.RunConfig is RunConfig


# --------------------------------------------------------------------------------------
# The run engine (pyrocollapse.experiment), shared by run and compare
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["mixture", "vamp", "hierarchical", "flow"])
def test_free_bits_per_dimension_fall_back_per_site_with_a_prior_that_does_not_factorise(prior):
    config = replace(TINY, prior=prior, elbo="freebits").validate()
    (note,) = config.notes()
    assert f"--prior {prior} does not factorise" in note and "free bits per site" in note
    assert "standard, learnable, ard" in note
    assert replace(config, elbo_options={"per": "site"}).notes() == []
    for factorised in ("standard", "learnable", "ard"):
        assert replace(TINY, prior=factorised, elbo="freebits").validate().notes() == []


def test_the_readme_free_bits_mixture_run_trains_per_site(capsys):
    from pyrocollapse.experiment import run_experiment

    config = replace(
        TINY, prior="mixture", prior_options={"n_components": 3}, elbo="freebits",
        elbo_options={"free_bits": 0.25}, schedule="cyclical",
    )
    result = run_experiment(config, progress=False, echo=True)
    assert result.built.elbo.per_site_fallback == ["z"]
    assert "note: --prior mixture does not factorise" in capsys.readouterr().out
    assert result.report["z"].free_bits is None  # no per-dimension floor to label


def test_run_diagnoses_the_model_with_dropout_off():
    import torch

    from pyrocollapse import diagnose
    from pyrocollapse.experiment import run_experiment

    config = replace(
        TINY,
        dataset="ppca",
        dataset_options={"n": 80, "input_dim": 6},
        model_options={"hidden": (16,), "likelihood": "gaussian", "decoder_dropout": 0.5},
        epochs=2,
        batch_size=32,
        estimators=("kl", "au", "mi", "sensitivity"),
    )
    result = run_experiment(config, progress=False)
    vae = result.built.vae
    assert not vae.training and not any(m.training for m in vae.modules())

    def again():
        return diagnose(
            vae.model,
            vae.guide,
            result.built.valid.data,
            vae.latent_sites,
            estimators=config.estimators,
            num_samples=config.num_samples,
            bootstrap=config.bootstrap,
            importance_samples=config.importance_samples,
            seed=config.seed,
        )

    assert again().to_dict() == result.report.to_dict()  # the report is the eval-mode one
    vae.train()  # diagnostics run in eval mode whatever the mode, and restore it
    assert again().to_dict() == result.report.to_dict()
    assert vae.training and all(m.training for m in vae.modules())
    # and an eval-mode decoder is deterministic
    vae.eval()
    z = torch.zeros(3, config.latent_dim)
    assert torch.equal(vae.decode(z).mean, vae.decode(z).mean)
