"""``compare`` over model variants (remedies that change the model) and the
disentanglement columns of the comparison."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from pyrocollapse.cli import main
from pyrocollapse.comparison import (
    DISENTANGLEMENT_METRICS,
    PAIRED_METRICS,
    compare,
    format_summary,
    run_id,
    summarize_runs,
)
from pyrocollapse.testing import tiny_config

TINY_SHAPES = [
    "--dataset", "shapes", "--dataset-option", "n=200", "--epochs", "1", "--latent-dim", "2",
    "--model-option", "hidden=16", "--batch-size", "256", "--estimators",
    "kl,au,mi,disentanglement", "--disentanglement-option", "regressor=lasso",
    "--disentanglement-option", "factorvae=false", "--bootstrap", "0",
    "--importance-samples", "50", "--posterior-samples", "0", "--no-progress",
]  # fmt: skip


def test_variant_grid_from_the_command_line_pairs_variants_by_seed(tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(
        ["compare", *TINY_SHAPES, "--priors", "standard", "--elbos", "elbo", "--seeds", "2",
         "--variants", "plain,skip", "--variant-option", "skip.skip=true", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for rid in (run_id("standard", "elbo", s, v) for s in (0, 1) for v in ("plain", "skip")):
        assert (out / "runs" / rid / "metrics.json").is_file(), rid
    assert run_id("standard", "elbo", 1, "skip") == "standard__elbo__skip__seed1"
    config = json.loads((out / "runs" / "standard__elbo__skip__seed0" / "metrics.json").read_text())
    assert config["config"]["model_options"] == {"hidden": [16], "skip": True}
    plain = json.loads((out / "runs" / "standard__elbo__plain__seed0" / "metrics.json").read_text())
    assert plain["config"]["model_options"] == {"hidden": [16]}
    grid = json.loads((out / "grid.json").read_text())
    assert grid["variants"] == ["plain", "skip"]
    assert grid["variant_options"] == {"skip": {"skip": True}}
    assert grid["baseline"] == "standard:elbo:plain"

    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["variant"]) == ["plain", "plain", "skip", "skip"]
    assert runs["mig"].between(0, 1).all() and runs["factorvae_score"].isna().all()
    summary = pd.read_csv(out / "comparison.csv")
    assert len(summary) == 2 and set(summary["variant"]) == {"plain", "skip"}
    base = summary[summary["baseline"]].iloc[0]
    assert (base["prior"], base["objective"], base["variant"]) == ("standard", "elbo", "plain")
    skip = summary[summary["variant"] == "skip"].iloc[0]
    assert skip["n_paired"] == 2
    a = runs[runs.variant == "skip"].set_index("seed")
    b = runs[runs.variant == "plain"].set_index("seed")
    for m in ("iw_log_likelihood", "mig", "sap", "dci_completeness"):
        d = a[m] - b[m]
        assert skip[f"{m}_diff"] == pytest.approx(d.mean())
        assert skip[f"{m}_diff_lo"] <= skip[f"{m}_diff"] <= skip[f"{m}_diff_hi"]
        half = skip[f"{m}_diff_hi"] - skip[f"{m}_diff"]
        assert half == pytest.approx(12.706204736 * d.std(ddof=1) / math.sqrt(2), rel=1e-6)
    assert skip["mig_mean"] == pytest.approx(a["mig"].mean())
    # the text table: a variant column and the disentanglement columns
    header = next(ln for ln in printed.splitlines() if ln.startswith("rank "))
    for col in ("variant", "MIG", "SAP", "DCI D/C/I", "FactorVAE", "Δ MIG"):
        assert col in header
    assert "baseline: standard + elbo + plain" in printed
    # started again, every finished run is read back (same folder names and fingerprints)
    again = main(
        ["compare", *TINY_SHAPES, "--priors", "standard", "--elbos", "elbo", "--seeds", "2",
         "--variants", "plain", "--variants", "skip", "--variant-option", "skip.skip=true",
         "--baseline", "standard:elbo:skip", "--out", str(out)]
    )  # fmt: skip
    assert again == 0
    capsys.readouterr()
    assert pd.read_csv(out / "runs.csv")["resumed"].all()
    summary = pd.read_csv(out / "comparison.csv")
    assert summary.loc[summary["baseline"], "variant"].tolist() == ["skip"]


def test_summary_pairs_variant_cells_and_shows_dashes_without_scores():
    rng = np.random.default_rng(0)
    rows = []
    for variant, shift in (("plain", 0.0), ("bn", 0.3)):
        for seed in range(3):
            rows.append({
                "prior": "standard", "objective": "elbo", "variant": variant, "seed": seed,
                "status": "ok", "active_units": 2, "mi": 1.0, "kl": 2.0, "elbo": -10.0,
                "iw_log_likelihood": -9.0 + shift + 0.01 * seed, "wall_time": 1.0,
                "mig": 0.2 + shift + 0.05 * rng.standard_normal(), "sap": 0.1,
                "dci_disentanglement": 0.3, "dci_completeness": 0.3,
                "dci_informativeness": 0.5, "factorvae_score": 0.6, "error": "",
            })  # fmt: skip
    table = pd.DataFrame(rows)
    summary = summarize_runs(table, baseline="standard:elbo:plain")
    bn = summary[summary["variant"] == "bn"].iloc[0]
    diffs = (table[table.variant == "bn"]["mig"].to_numpy()
             - table[table.variant == "plain"]["mig"].to_numpy())  # fmt: skip
    assert bn["mig_diff"] == pytest.approx(diffs.mean())
    assert bn["iw_log_likelihood_diff"] == pytest.approx(0.3)
    assert bn["rank"] == 1 and not bn["tied"]  # a constant +0.3 per seed: significant
    assert {f"{m}_diff" for m in DISENTANGLEMENT_METRICS} <= set(summary)
    assert set(DISENTANGLEMENT_METRICS) <= set(PAIRED_METRICS)
    text = format_summary(summary)
    assert "baseline: standard + elbo + plain" in text and "0.30/0.30/0.50" in text
    # a cell without scores shows a dash; a grid without any shows no such columns
    table.loc[table.variant == "bn", list(DISENTANGLEMENT_METRICS)] = np.nan
    text = format_summary(summarize_runs(table))
    bn_line = next(ln for ln in text.splitlines() if " bn " in ln)
    assert "—/—/—" in bn_line
    plain_only = format_summary(summarize_runs(table.drop(columns=list(DISENTANGLEMENT_METRICS))))
    assert "MIG" not in plain_only
    with pytest.raises(ValueError, match=r"accepted \(PRIOR:OBJECTIVE:VARIANT\): "
                       r"standard:elbo:plain, standard:elbo:bn"):  # fmt: skip
        summarize_runs(table, baseline="standard:elbo")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "plain,bn", "--variant-option", "bn.posterior=nonsense"], "variant 'bn': "),
        (
            ["--variants", "plain,bn", "--variant-option", "bn.colour=1"],
            "unknown variant 'bn' model option 'colour'",
        ),
        (
            ["--variants", "plain", "--variant-option", "bn.skip=true"],
            "names 'bn', which is not in the grid (plain)",
        ),
        (["--variant-option", "bn.skip=true"], "--variant-option needs --variants"),
        (["--variants", "a__b"], "variant must be a registry name of letters"),
        (["--variants", "plain,plain"], "variants repeats ['plain']"),
        (
            ["--variants", "plain,bn", "--baseline", "standard:elbo"],
            "accepted (PRIOR:OBJECTIVE:VARIANT): standard:elbo:plain, standard:elbo:bn",
        ),
        (
            ["--elbos", "factorvae", "--elbo-option", "factorvae.colour=1"],
            "unknown elbo option 'colour'",
        ),
    ],
)
def test_every_variant_value_is_checked_before_any_run(args, message, tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(["compare", "--epochs", "1", "--seeds", "1", *args, "--out", str(out),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyrocollapse: error: ") and message in err
    assert not (out / "runs").exists()


def test_config_file_variants_and_their_options(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("variants: [plain, bn]\nvariant_options:\n  bn: {posterior: nonsense}\n")
    code = main(["compare", "--config", str(cfg), "--out", str(tmp_path / "g"), "--no-progress"])
    assert code == 2 and "variant 'bn': " in capsys.readouterr().err
    cfg.write_text("variants: [plain]\nvariant_options:\n  bn: {skip: true}\n")
    code = main(["compare", "--config", str(cfg), "--out", str(tmp_path / "g"), "--no-progress"])
    assert code == 2 and "names 'bn', which is not in the grid" in capsys.readouterr().err


def test_library_variant_grid_checks_its_arguments(tmp_path):
    base = tiny_config()
    with pytest.raises(ValueError, match="variant_options need variants"):
        compare(out=tmp_path / "g", base=base, variant_options={"a": {}})
    with pytest.raises(TypeError, match="variants must be a sequence of names"):
        compare(out=tmp_path / "g", base=base, variants="plain")
    with pytest.raises(ValueError, match="not look like a seed folder"):
        compare(out=tmp_path / "g", base=base, variants=["seed1"])
    with pytest.raises(ValueError, match=r"variant 'bn': unknown model option 'colour'"):
        compare(out=tmp_path / "g", base=base, variants=["bn"],
                variant_options={"bn": {"colour": 1}})  # fmt: skip
    assert not (tmp_path / "g").exists()
