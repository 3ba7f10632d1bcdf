"""Cause attribution (``explain_collapse``): each measurement against a program whose
answer is known, without training."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse import diagnose
from pyrocollapse.diagnostics.causes import (
    DECODER,
    DYNAMICS,
    PRIOR,
    CauseAnalysis,
    explain_collapse,
)

N = 600


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ar_data(n: int = N, steps: int = 6, rho: float = 0.9, sigma: float = 0.3) -> torch.Tensor:
    g = _gen(1)
    x = torch.zeros(n, steps)
    x[:, 0] = torch.randn(n, generator=g)
    for t in range(1, steps):
        x[:, t] = rho * x[:, t - 1] + sigma * torch.randn(n, generator=g)
    return x


def _ar_programs(rho: float = 0.9, sigma: float = 0.3):
    """A decoder that models x_t from x_{t-1} and ignores z; the guide is the prior."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
            scale = torch.full_like(x, sigma)
            scale[:, 0] = 1.0
            pyro.sample("obs", dist.Normal(rho * prev, scale).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    return model, guide


def _lagging_programs(noise: float = 0.5):
    """p(x | z) = N(z, noise^2) uses z; the guide is the prior (an encoder that never
    followed): the model's posterior mean x / (1 + noise^2) varies, the guide's does not."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z, noise).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))

    return model, guide


def _clustered_programs():
    """Dimension 0 of q(z|x) sits at +-3 by the sign of x (two clusters under a N(0, 1)
    prior); dimension 1 is the prior (collapsed). The decoder reads z_0 only."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z[..., :1], 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = torch.cat([3.0 * torch.sign(x), torch.zeros_like(x)], -1)
            scale = torch.tensor([0.3, 1.0]).expand_as(loc)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def _report(model, guide, x):
    return diagnose(model, guide, x, estimators=("kl", "au", "mi", "iw"), importance_samples=200)


def test_context_gain_of_an_autoregressive_decoder_matches_its_closed_form():
    rho, sigma = 0.9, 0.3
    model, guide = _ar_programs(rho, sigma)
    x = _ar_data(rho=rho, sigma=sigma)
    report = _report(model, guide, x)
    assert report.verdict == "full collapse"
    a = explain_collapse(model, guide, x, report, draws=1)
    dec = next(c for c in a.causes if c.name == DECODER)
    # E[log N(x_t; rho x_{t-1}, s) - log N(x_t; rho x'_{t-1}, s)] = rho^2 Var(x_{t-1}) / s^2
    # per step (x' an independent point), summed over steps 1..T-1
    var = x[:, :-1].var(0)
    expected = float((rho**2 * var / sigma**2).sum())
    assert dec.measurements["context_gain"] == pytest.approx(expected, rel=0.12)
    assert abs(dec.measurements["latent_gain"]) < 1e-9  # z is not read at all
    assert dec.score == pytest.approx(1.0)
    assert a.ranking[0] == DECODER
    assert a.top is dec


def test_a_decoder_that_uses_z_and_an_encoder_that_does_not_is_training_dynamics():
    model, guide = _lagging_programs(0.5)
    x = torch.randn(N, 1, generator=_gen(2)) * math.sqrt(1.25)  # the model's marginal
    report = _report(model, guide, x)
    assert report.verdict == "full collapse"
    a = explain_collapse(model, guide, x, report)
    dyn = next(c for c in a.causes if c.name == DYNAMICS)
    # Var_x E_p[z|x] = Var(x) / (1 + 0.25)^2 = 0.8, Var(z) = 1, the guide's means constant
    assert dyn.measurements["posterior_mean_lag/z"][0] == pytest.approx(0.8, abs=0.08)
    assert a.ranking[0] == DYNAMICS
    dec = next(c for c in a.causes if c.name == DECODER)
    assert dec.score == 0.0 and dec.measurements["context_gain"] == 0.0
    assert any("--aggressive" in r.cli for r in a.remedies)


def test_clustered_aggregate_under_a_normal_prior_is_prior_mismatch():
    model, guide = _clustered_programs()
    x = torch.randn(N, 1, generator=_gen(3))
    report = _report(model, guide, x)
    assert report["z"].status[1] == "collapsed"
    a = explain_collapse(model, guide, x, report)
    prior = next(c for c in a.causes if c.name == PRIOR)
    # a prior fitted to q(z) removes (nearly) all of the marginal KL of the clustered dim
    assert prior.measurements["mixture_prior_gain/z"] == pytest.approx(
        report["z"].aggregate_kl, abs=0.15
    )
    assert prior.measurements["mixture_components/z"] >= 2
    assert prior.measurements["mixture_prior_gain/z"] > prior.measurements["gaussian_prior_gain/z"] + 0.5
    assert a.ranking[0] == PRIOR
    assert any("--prior mixture" in r.cli for r in a.remedies)
    grid = a.grid()
    assert grid["priors"][0] == "standard" and "mixture" in grid["priors"]


def test_richer_prior_gain_is_measured_under_a_learnable_prior():
    """A prior with learnable parameters (``pyro.param``, so ``p.log_prob`` requires grad)
    gives the same gains as the same prior with constants."""
    model, guide = _clustered_programs()

    def learnable_model(x):
        loc = pyro.param("prior_loc", torch.zeros(2))  # requires grad, value 0
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z[..., :1], 1.0).to_event(1), obs=x)

    x = torch.randn(N, 1, generator=_gen(3))
    report = _report(model, guide, x)
    fixed = explain_collapse(model, guide, x, report, seed=1)
    learnable = explain_collapse(learnable_model, guide, x, report, seed=1)
    assert not any("richer-prior" in k for k in learnable.unavailable), learnable.unavailable
    for name in ("gaussian_prior_gain/z", "mixture_prior_gain/z"):
        got = next(c for c in learnable.causes if c.name == PRIOR).measurements[name]
        want = next(c for c in fixed.causes if c.name == PRIOR).measurements[name]
        assert got == pytest.approx(want, abs=1e-9)


def test_a_healthy_report_has_nothing_to_explain():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 1.25, math.sqrt(0.2)).to_event(1))

    x = torch.randn(300, 1, generator=_gen(4)) * math.sqrt(1.25)
    report = diagnose(model, guide, x, estimators=("kl", "au", "mi"))
    assert report.verdict == "healthy"
    a = explain_collapse(model, guide, x, report)
    assert a.sites == [] and a.causes == [] and a.remedies == [] and a.top is None


def test_causes_through_diagnose_json_and_text(tmp_path):
    model, guide = _lagging_programs(0.5)
    x = torch.randn(300, 1, generator=_gen(5)) * math.sqrt(1.25)
    report = diagnose(model, guide, x, estimators=("kl", "au", "mi", "causes"))
    assert report.causes is not None and report.causes.ranking[0] == DYNAMICS
    text = str(report)
    assert "why: causes of collapse" in text and "what next:" in text
    assert "pyrocollapse run --aggressive" in text
    path = tmp_path / "r.json"
    report.to_json(str(path))
    d = json.loads(path.read_text())
    assert d["causes"]["ranking"][0] == DYNAMICS
    assert d["causes"]["grid"]["elbos"][0] == "elbo"
    back = type(report).from_json(str(path))
    assert isinstance(back.causes, CauseAnalysis)
    assert back.causes.ranking == report.causes.ranking
    assert [r.cli for r in back.causes.remedies] == [r.cli for r in report.causes.remedies]


def test_measurements_that_cannot_run_are_listed_not_raised():
    """A program whose model cannot be re-run on permuted inputs still gets the rest."""
    model, guide = _lagging_programs(0.5)
    x = torch.randn(200, 1, generator=_gen(6)) * math.sqrt(1.25)
    report = _report(model, guide, x)

    def fussy_model(x):
        if bool((x[:2, 0] != x0[:2, 0]).any()):
            raise ValueError("this model only runs on its own data order")
        return model(x)

    x0 = x
    a = explain_collapse(fussy_model, guide, x, report, max_points=None, batch_size=1000)
    assert "context and latent gains" in a.unavailable
    assert math.isnan(next(c for c in a.causes if c.name == DECODER).score)
    assert a.ranking[0] == DYNAMICS  # a NaN score ranks last


def test_bad_arguments():
    model, guide = _lagging_programs()
    x = torch.randn(50, 1, generator=_gen(7))
    with pytest.raises(TypeError, match="report must be a CollapseReport"):
        explain_collapse(model, guide, x, {"verdict": "full collapse"})
    report = diagnose(model, guide, x, estimators=("kl", "au"))
    with pytest.raises(ValueError, match="draws"):
        explain_collapse(model, guide, x, report, draws=0)
    np.testing.assert_array_equal(report["z"].collapsed, [True])


def test_compare_runs_the_grid_a_report_suggests(tmp_path, capsys):
    from pyrocollapse.cli import main
    from pyrocollapse.testing import tiny_config

    config = tiny_config(prior="standard", elbo="annealed")
    analysis = CauseAnalysis(
        ["z"],
        [],
        [],
        baseline=("standard", "annealed"),
    )
    analysis.remedies = _remedies_for_test()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"config": config.to_dict(), "report": {"causes": analysis.to_dict()}})
    )
    out = tmp_path / "grid"
    code = main(["compare", "--from-run", str(run), "--seeds", "1", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "grid suggested by" in printed and "--elbos annealed,freebits" in printed
    runs = __import__("pandas").read_csv(out / "runs.csv")
    assert sorted(runs["objective"]) == ["annealed", "freebits"]
    grid = json.loads((out / "grid.json").read_text())
    assert grid["base"]["epochs"] == 1 and grid["base"]["latent_dim"] == 2
    # a run without remedies is refused with the reason, before any work
    (run / "metrics.json").write_text(json.dumps({"config": config.to_dict(), "report": {}}))
    assert main(["compare", "--from-run", str(run), "--out", str(tmp_path / "g2")]) == 2
    assert "suggests no remedies" in capsys.readouterr().err
    assert not (tmp_path / "g2").exists()


def _remedies_for_test():
    from pyrocollapse.diagnostics.causes import Remedy

    return [
        Remedy(
            DYNAMICS,
            "free bits",
            "--elbo freebits --elbo-option free_bits=0.5",
            "FreeBitsELBO(free_bits=0.5)",
            {"elbo": "freebits", "elbo_options": {"free_bits": 0.5}},
        )
    ]


def test_report_html_shows_causes_and_next_steps():
    from pyrocollapse.report_folder import _causes_section

    model, guide = _lagging_programs(0.5)
    x = torch.randn(300, 1, generator=_gen(8)) * math.sqrt(1.25)
    report = diagnose(model, guide, x, estimators=("kl", "au", "mi", "causes"))
    page = _causes_section(report.causes)
    assert "<h2>Why it collapsed</h2>" in page and "<h2>What to try next</h2>" in page
    assert "pyrocollapse run --aggressive" in page
    assert "pyrocollapse compare --from-run" in page
    assert _causes_section(None) == ""
