import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import PPCA, LinearGaussian, TwoLayer
from pyro.ops.stats import fit_generalized_pareto

from pyrocollapse import diagnose
from pyrocollapse.diagnostics import (
    _psis_khat,
    active_units,
    aggregate_posterior_kl,
    datapoint_rhat,
    decoder_sensitivity,
    iw_log_likelihood,
    kl_per_dimension,
    latent_traversal,
    marginal_log_prob,
    mutual_information,
    posterior_densities,
    posterior_mean_space,
    psis_khat,
    reconstruction_means,
    site_draws,
)
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.report import CollapseReport
from pyrocollapse.train import fit


@pytest.fixture
def lg():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    s = torch.tensor([0.5, 0.8, 1.0])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    return LinearGaussian(A, s, sigma)


def test_kl_per_dimension_matches_analytic_gaussian_kl_on_hand_written_guide():
    loc = torch.tensor([[0.5, 0.0], [-1.0, 0.0], [2.0, 0.0]])
    scale = torch.tensor([[0.5, 1.0], [0.2, 1.0], [1.5, 1.0]])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x):  # x holds the row index, so the guide works on any chunk
        i = x[:, 0].long()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc[i], scale[i]).to_event(1))

    x = torch.arange(3.0).unsqueeze(-1)
    expected = (0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2))).mean(0)
    kl = kl_per_dimension(model, guide, x)
    assert kl.estimator == "analytic"
    np.testing.assert_allclose(kl.per_dim, expected.numpy(), rtol=1e-6)
    report = diagnose(model, guide, x, batch_size=2)
    np.testing.assert_allclose(report["z"].kl_per_dim, expected.numpy(), rtol=1e-6)
    assert report["z"].status[1] == "collapsed" and report["z"].status[0] == "active"
    assert report.verdict == "partial collapse"


def test_closed_forms_on_linear_gaussian_encoder(lg):
    x = lg.sample_data(3000)
    kl = kl_per_dimension(lg.model, lg.guide, x, batch_size=500)
    np.testing.assert_allclose(kl.per_dim, lg.kl_per_dim().numpy(), atol=0.04)
    mi = mutual_information(lg.model, lg.guide, x, num_samples=2, batch_size=500)
    assert mi.total == pytest.approx(lg.mi(), abs=0.05)
    np.testing.assert_allclose(mi.per_dim, lg.mi_per_dim().numpy(), atol=0.05)
    assert mi.aggregate_kl == pytest.approx(lg.aggregate_kl(), abs=0.05)
    # ELBO surgery identity: E_x KL(q(z|x)||p) = I_q + KL(q(z)||p)
    assert kl.total == pytest.approx(mi.total + mi.aggregate_kl, abs=0.05)
    au = active_units(lg.model, lg.guide, x)
    expected_var = torch.diagonal(lg.A @ lg.sigma @ lg.A.T).numpy()
    np.testing.assert_allclose(au.variance, expected_var, rtol=0.1, atol=1e-6)
    assert au.active.tolist() == [True, True, False]


def test_mutual_information_chunking_does_not_change_the_estimate(lg):
    x = lg.sample_data(300)
    torch.manual_seed(1)
    a = mutual_information(lg.model, lg.guide, x, batch_size=300)
    torch.manual_seed(1)
    b = mutual_information(lg.model, lg.guide, x, batch_size=300)
    assert a.total == pytest.approx(b.total, rel=1e-9)
    # different chunkings: same estimator, same draws per chunk order -> close
    torch.manual_seed(1)
    c = mutual_information(lg.model, lg.guide, x, batch_size=37, num_samples=20)
    torch.manual_seed(2)
    d = mutual_information(lg.model, lg.guide, x, batch_size=300, num_samples=20)
    assert c.total == pytest.approx(d.total, abs=0.03)
    assert aggregate_posterior_kl(lg.model, lg.guide, x) > 0


def test_marginal_log_prob_of_mixture_integrates_to_one():
    mix = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.3, 0.7])),
        dist.Normal(
            torch.tensor([[-2.0, 0.0], [1.0, 3.0]]), torch.tensor([[0.5, 1.0], [1.0, 0.3]])
        ).to_event(1),
    )
    grid = torch.linspace(-10, 10, 4001)
    z = torch.stack([grid, grid], -1)
    dens = marginal_log_prob(mix, z).exp()
    integral = torch.trapezoid(dens, grid, dim=0)
    torch.testing.assert_close(integral, torch.ones(2), atol=1e-4, rtol=0)


def decoder_ignores_z(x_dim):
    """Model whose likelihood does not depend on z; amortised linear guide."""
    enc = torch.nn.Linear(x_dim, 4)
    nn_scale = torch.nn.Linear(x_dim, 4)

    def model(x):
        mean = pyro.param("mean", torch.zeros(x_dim))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        pyro.module("enc_scale", nn_scale)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z",
                dist.Normal(enc(x), torch.nn.functional.softplus(nn_scale(x)) + 1e-3).to_event(1),
            )

    return model, guide


def test_decoder_ignoring_z_is_reported_as_full_collapse():
    torch.manual_seed(0)
    x = torch.randn(400, 5) * 2 + 1
    model, guide = decoder_ignores_z(5)
    before = diagnose(model, guide, x)
    assert before.active_units > 0  # a random encoder's means vary with x
    fit(
        model,
        guide,
        x,
        loss=PlainELBO(),
        epochs=60,
        batch_size=100,
        seed=0,
        progress=False,
        optim=lambda p: torch.optim.Adam(p, lr=2e-2),
        monitor=None,
    )
    report = diagnose(model, guide, x)
    assert report.verdict == "full collapse"
    assert report.active_units == 0
    assert report["z"].mi < 0.01
    assert report["z"].kl < 0.05
    assert set(report["z"].status) == {"collapsed"}
    table = before.compare(report)
    assert list(table["status_after"]) == ["collapsed"] * 4
    assert (table["kl_before"] > table["kl_after"]).all()


def test_report_serialises_and_renders(tmp_path, lg):
    x = lg.sample_data(200)
    report = diagnose(lg.model, lg.guide, x)
    path = tmp_path / "r.json"
    report.to_json(str(path))
    again = CollapseReport.from_json(str(path)) if hasattr(CollapseReport, "from_json") else None
    import json

    d = json.loads(path.read_text())
    assert d["verdict"] == report.verdict == "partial collapse"
    assert d["sites"]["z"]["status"] == ["active", "active", "collapsed"]
    rebuilt = CollapseReport.from_dict(d)
    assert rebuilt.to_dict() == json.loads(json.dumps(report.to_dict()))
    text = str(report)
    assert "PARTIAL COLLAPSE" in text and "rule:" in text and "site 'z': 2/3 active" in text
    df = report.to_dataframe()
    assert list(df.columns[:4]) == ["site", "dim", "kl", "au_variance"] and len(df) == 3
    fig = report.plot()
    fig.savefig(tmp_path / "kl.png")
    assert (tmp_path / "kl.png").stat().st_size > 1000
    assert again is None or again.verdict == report.verdict


def test_errors_name_the_problem(lg):
    x = lg.sample_data(10)
    with pytest.raises(
        ValueError, match=r"latent site 'w' is not a sample site.*latent sites found: 'z'"
    ):
        diagnose(lg.model, lg.guide, x, latent_sites=("w",))
    with pytest.raises(ValueError, match="data contains 1 NaN"):
        x2 = x.clone()
        x2[0, 0] = float("nan")
        diagnose(lg.model, lg.guide, x2)
    with pytest.raises(TypeError, match="data must be a torch.Tensor, a NumPy array"):
        diagnose(lg.model, lg.guide, 3.0)
    with pytest.raises(ValueError, match="data is empty"):
        diagnose(lg.model, lg.guide, x[:0])
    with pytest.raises(TypeError, match="latent_sites must be a sequence"):
        diagnose(lg.model, lg.guide, x, latent_sites="z")


# --------------------------------------------------------------------------------------
# Extensions for issue 6: fast paths, bootstrap, R-hat, IW, PSIS, sensitivity, hierarchy
# --------------------------------------------------------------------------------------
@pytest.fixture
def lgw():
    """Linear-Gaussian encoder with a decoder whose Fisher information differs per dim."""
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    s = torch.tensor([0.5, 0.8, 1.0])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    W = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.3, 1.0, 0.0]])
    return LinearGaussian(A, s, sigma, W)


@pytest.fixture
def ppca():
    g = torch.Generator().manual_seed(0)
    return PPCA(torch.randn(6, 2, generator=g), torch.randn(6, generator=g), 0.5)


def test_matrix_product_fast_path_equals_generic_log_prob_path(lg):
    # the same q(z|x) as diagonal Normal (fast path) and as MultivariateNormal (generic
    # broadcasting path) draws the same z from the same seed: estimates agree to rounding
    x = lg.sample_data(400)
    pyro.set_rng_seed(3)
    fast = mutual_information(lg.model, lg.guide, x, num_samples=2, batch_size=128)
    pyro.set_rng_seed(3)
    slow = mutual_information(lg.model, lg.guide_mvn, x, num_samples=2, batch_size=128)
    assert fast.total == pytest.approx(slow.total, abs=1e-4)
    assert fast.aggregate_kl == pytest.approx(slow.aggregate_kl, abs=1e-4)
    np.testing.assert_allclose(fast.per_dim, slow.per_dim, atol=1e-4)
    np.testing.assert_allclose(fast.aggregate_kl_per_dim, slow.aggregate_kl_per_dim, atol=1e-4)


def test_fast_path_precision_guard_with_tiny_posterior_scales():
    # posterior sd 1e-3 around means of size ~30: float32 expansion of the quadratic would
    # lose ~1 nat; the guard switches to float64 and the estimate stays exact
    n = 400
    loc = 30 + torch.randn(n, 2, generator=torch.Generator().manual_seed(0))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 50.0).to_event(1))

    def guide(x, mvn=False):
        i = x[:, 0].long()
        with pyro.plate("data", x.shape[0]):
            if mvn:
                pyro.sample("z", dist.MultivariateNormal(loc[i], scale_tril=1e-3 * torch.eye(2)))
            else:
                pyro.sample("z", dist.Normal(loc[i], 1e-3).to_event(1))

    x = torch.arange(float(n)).unsqueeze(-1)
    pyro.set_rng_seed(0)
    fast = mutual_information(model, guide, x)
    pyro.set_rng_seed(0)
    slow = mutual_information(model, lambda x: guide(x, mvn=True), x)
    # well-separated posteriors: I = log N exactly (each z identifies its point)
    assert fast.total == pytest.approx(math.log(n), abs=1e-6)
    assert fast.total == pytest.approx(slow.total, abs=1e-6)


def test_per_dimension_mi_on_a_subset_of_draws_agrees_within_its_stderr(lgw):
    x = lgw.sample_data(1500)
    pyro.set_rng_seed(0)
    full = mutual_information(lgw.model, lgw.guide, x, num_samples=2, per_dim_draws=None)
    pyro.set_rng_seed(0)
    sub = mutual_information(lgw.model, lgw.guide, x, num_samples=2, per_dim_draws=400)
    assert full.per_dim_draws == 3000 and sub.per_dim_draws == 400
    assert full.total == sub.total  # the total always uses every draw
    assert (np.abs(sub.per_dim - full.per_dim) <= 4 * sub.per_dim_stderr + 1e-9).all()
    assert (sub.per_dim_stderr > full.per_dim_stderr)[:2].all()


def test_intervals_cover_the_closed_forms(lgw):
    # MI: the bracket of the contrastive and leave-one-out estimates; marginal KL and AU:
    # bootstrap
    x = lgw.sample_data(2000)
    pyro.set_rng_seed(0)
    mi = mutual_information(lgw.model, lgw.guide, x, num_samples=4, bootstrap=200)
    lo, hi = mi.ci
    assert lo < mi.total < hi and lo < lgw.mi() < hi
    assert 0.02 < hi - lo < 0.2
    lo, hi = mi.aggregate_kl_ci
    assert lo < lgw.aggregate_kl() < hi
    au = active_units(lgw.model, lgw.guide, x, bootstrap=200)
    assert au.count_ci == (2.0, 2.0)
    np.testing.assert_allclose(au.probability_active, [1.0, 1.0, 0.0])
    expected = torch.diagonal(lgw.A @ lgw.sigma @ lgw.A.T).numpy()
    assert (au.variance_ci[0] <= expected + 1e-9)[:2].all()
    assert (au.variance_ci[1] >= expected - 1e-9)[:2].all()
    with pytest.raises(ValueError, match="bootstrap must be 0 .* or >= 2 replicates, got 1"):
        mutual_information(lgw.model, lgw.guide, x[:10], bootstrap=1)


def test_mi_interval_has_at_least_nominal_coverage_where_the_bias_matters():
    # 25 independent data sets from a 2-d linear-Gaussian encoder with known I(x; z),
    # informative enough (I = 2.76 nats, log N = 5.99) for the estimator's finite-N bias
    # to matter: the interval from the contrastive (low) to the leave-one-out (high)
    # estimate at 90% must cover the truth about as often as nominal or more (a
    # percentile bootstrap of the contrastive estimate alone covered it 11 times)
    a = torch.tensor([[1.0, 0.4], [-0.3, 0.8]])
    scale = 0.25
    truth = 0.5 * float(torch.logdet(a @ a.T / scale**2 + torch.eye(2)))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ a.T
            pyro.sample("z", dist.Normal(loc, torch.full_like(loc, scale)).to_event(1))

    covered = 0
    for rep in range(25):
        x = torch.randn(400, 2, generator=torch.Generator().manual_seed(100 + rep))
        pyro.set_rng_seed(rep)
        mi = mutual_information(
            model, guide, x, num_samples=4, bootstrap=100, ci_level=0.9, per_dim_draws=2
        )
        covered += mi.ci[0] <= truth <= mi.ci[1]
    assert covered >= 18  # nominal 22.5 of 25


def test_datapoint_rhat_equals_arviz_identity_rhat_and_the_closed_form(lgw):
    import arviz as az

    x = lgw.sample_data(3000)
    pyro.set_rng_seed(5)
    rhat = datapoint_rhat(lgw.model, lgw.guide, x, num_samples=10, batch_size=700)
    # the same draws (traced first, then sampled, as the estimator does) handed to ArviZ
    # with the observations as chains
    pyro.set_rng_seed(5)
    draws = [d.q.sample((10,)) for d in list(site_draws(lgw.model, lgw.guide, x, "z", 700))]
    chains = torch.cat(draws, 1).transpose(0, 1).double().numpy()  # (N, S, D)
    ref = [float(az.rhat(chains[..., d], method="identity")) for d in range(3)]
    np.testing.assert_allclose(rhat.per_dim, ref, rtol=1e-10)
    # classic R-hat^2 -> 1 + v/s^2 for any chain length, so ln R-hat = I(x; z_d)
    np.testing.assert_allclose(rhat.per_dim, lgw.rhat_per_dim(x).numpy(), rtol=0.02)
    np.testing.assert_allclose(rhat.log, lgw.mi_per_dim().numpy(), atol=0.03)
    assert rhat.num_chains == 3000 and rhat.num_samples == 10
    with pytest.raises(ValueError, match="num_samples must be >= 2, got 1"):
        datapoint_rhat(lgw.model, lgw.guide, x, num_samples=1)


def test_iw_log_likelihood_is_exact_for_the_exact_posterior(ppca):
    x = ppca.sample(200)
    iw = iw_log_likelihood(ppca.model, ppca.exact_guide(), x, num_samples=3)
    np.testing.assert_allclose(iw.per_point, ppca.log_marginal(x).numpy(), atol=2e-4)
    np.testing.assert_allclose(iw.elbo_per_point, iw.per_point, atol=1e-5)


def test_iw_log_likelihood_increases_with_k_and_converges_to_log_p_x(ppca):
    x = ppca.sample(300)
    guide = ppca.mean_field_guide(shift=0.3)
    exact = float(ppca.log_marginal(x).mean())
    elbo = float(ppca.mean_field_elbo(x, shift=0.3).mean())
    estimates = []
    for k in (1, 10, 100, 1000):
        pyro.set_rng_seed(0)
        estimates.append(iw_log_likelihood(ppca.model, guide, x, num_samples=k, batch_size=100))
    means = [e.mean for e in estimates]
    assert means == sorted(means) and means[-1] <= exact + 0.01
    assert estimates[0].mean == pytest.approx(elbo, abs=4 * estimates[0].stderr)
    assert estimates[-1].elbo == pytest.approx(elbo, abs=0.02)  # mean log weight: the ELBO
    gaps = [exact - m for m in means]  # shrink towards 0 as K grows (bias O(1/K))
    assert gaps[-1] < 0.03 and gaps[-1] < gaps[2] / 3 < gaps[1] / 9
    assert estimates[-1].gap > 0


def test_batched_khat_equals_pyros_generalized_pareto_fit():
    g = torch.Generator().manual_seed(0)
    lw = torch.cat(
        [
            torch.randn(200, 3, generator=g) * torch.tensor([0.3, 1.0, 3.0]),
            torch.distributions.Gumbel(0.0, 2.0).sample((200, 1)),
            torch.randn(200, 1, generator=g) * 40,  # many weights below the 1e-15 floor
        ],
        1,
    )
    ours = _psis_khat(lw)
    for j in range(lw.shape[1]):  # pyro.infer.importance.psis_diagnostic's steps, one column
        col = torch.sort(lw[:, j].double() - lw[:, j].max())[0]
        cutoff = max(
            math.log(1e-15), float(col[-math.ceil(min(0.2 * 200, 3 * math.sqrt(200))) - 1])
        )
        tail = col[col > cutoff]
        if len(tail) < 10:
            assert ours[j] == math.inf
        else:
            k, _ = fit_generalized_pareto(tail.exp() - math.exp(cutoff))
            assert float(ours[j]) == pytest.approx(k, abs=1e-9)


def test_psis_khat_separates_good_and_poor_guides():
    q, _ = torch.linalg.qr(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
    model = PPCA(q * torch.tensor([2.0, 1.0]), torch.zeros(6), 0.5)  # diagonal posterior
    x = model.sample(150)
    pyro.set_rng_seed(0)
    good = psis_khat(model.model, model.mean_field_guide(scale_factor=1.2), x, num_samples=200)
    pyro.set_rng_seed(0)
    poor = psis_khat(model.model, model.mean_field_guide(scale_factor=0.3), x, num_samples=200)
    assert good.khat.shape == (150,) and good.fraction_above(0.5) == 0.0 and good.max < 0.5
    assert poor.fraction_above(0.7) > 0.5 and poor.mean > 0.7
    with pytest.raises(ValueError, match="num_samples must be >= 50 for PSIS k-hat"):
        psis_khat(model.model, model.exact_guide(), x, num_samples=20)


def test_decoder_sensitivity_equals_the_decoders_fisher_information(lgw):
    x = lgw.sample_data(400)
    fd = decoder_sensitivity(lgw.model, lgw.guide, x, method="finite_difference", num_samples=2)
    np.testing.assert_allclose(fd.per_dim, lgw.decoder_fisher().numpy(), rtol=1e-4, atol=1e-6)
    assert fd.method == "finite_difference" and fd.step == 0.1 and set(fd.per_site) == {"x"}
    pyro.set_rng_seed(0)
    score = decoder_sensitivity(lgw.model, lgw.guide, x, num_samples=8)
    np.testing.assert_allclose(score.per_dim, lgw.decoder_fisher().numpy(), rtol=0.1)
    assert score.per_dim[2] == 0.0  # W's last column is zero: the decoder ignores z_2
    with pytest.raises(ValueError, match="method must be one of 'score', 'finite_difference'"):
        decoder_sensitivity(lgw.model, lgw.guide, x, method="jacobian")
    with pytest.raises(ValueError, match=r"targets \['y'\] are not sample sites"):
        decoder_sensitivity(lgw.model, lgw.guide, x, targets=["y"])


def test_hierarchical_model_is_diagnosed_per_layer_with_conditional_prior():
    B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    V = torch.eye(3)[:, :3] * torch.tensor([2.0, 2.0, 0.0])
    two = TwoLayer(B, V, tau=0.5)
    x = two.sample(800)
    report = diagnose(
        two.model,
        two.guide,
        x,
        latent_sites=None,
        num_samples=4,
        estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw"),
    )
    assert list(report.sites) == ["z_top", "z"]
    assert report["z"].conditional_prior and not report["z_top"].conditional_prior
    for s in report.sites.values():  # KL = MI + marginal KL for each layer
        assert abs(s.kl_identity_gap) < 4 * s.kl_identity_stderr + 1e-3
    e = report.elbo
    assert e["kl"] == pytest.approx(e["kl/z"] + e["kl/z_top"])
    assert e["elbo"] == pytest.approx(e["reconstruction"] - e["kl"])
    assert e["log_likelihood"] > e["elbo"] and e["inference_gap"] > 0
    # the decoder ignores z_2 (V's last column is 0); z's children sense z_top
    assert report["z"].sensitivity[2] == 0.0 and (report["z"].sensitivity[:2] > 1).all()
    assert (report["z_top"].sensitivity > 0.5).all()
    assert any("conditional prior" in n for n in report.notes())
    assert report["z"].mean_space["model"].shape == (500, 3)


def test_estimator_selection_device_and_errors(lg):
    x = lg.sample_data(100)
    small = diagnose(lg.model, lg.guide, x, estimators=("kl",))
    assert small.settings["estimators"] == ["kl", "au"]
    s = small["z"]
    assert math.isnan(s.mi) and s.mi_per_dim is None and s.rhat is None and s.sensitivity is None
    d = json.loads(json.dumps(small.to_dict(), allow_nan=False))  # strict JSON: no NaN
    assert d["sites"]["z"]["mi"] is None
    a = diagnose(lg.model, lg.guide, x, device="cpu")
    b = diagnose(lg.model, lg.guide, x, device=torch.device("cpu"))
    c = diagnose(lg.model, lg.guide, x)
    dicts = [r.to_dict() for r in (a, b, c)]
    assert [d["settings"].pop("device") for d in dicts] == ["cpu", "cpu", None]
    assert dicts[0] == dicts[1] == dicts[2]  # seeded: identical
    with pytest.raises(ValueError, match=r"unknown estimator\(s\) 'mutual'; valid names: kl, au"):
        diagnose(lg.model, lg.guide, x, estimators=("mutual",))
    with pytest.raises(TypeError, match="estimators must be a sequence of names"):
        diagnose(lg.model, lg.guide, x, estimators="kl")
    with pytest.raises(ValueError, match="device 'gpu0' is not a torch device"):
        diagnose(lg.model, lg.guide, x, device="gpu0")
    with pytest.raises(TypeError, match="device must be None, a str"):
        diagnose(lg.model, lg.guide, x, device=0)
    with pytest.raises(ValueError, match="importance_samples must be >= 50 for PSIS"):
        diagnose(lg.model, lg.guide, x, estimators=("psis",), importance_samples=10)


def test_mixture_prior_uses_marginal_kl_and_the_joint_kl_for_the_identity():
    mix = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.5, 0.5])),
        dist.Normal(torch.tensor([[-1.5, -1.5], [1.5, 1.5]]), 0.7).to_event(1),
    )
    enc = torch.tensor([[0.8, 0.0], [0.0, 0.0]])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", mix)
            pyro.sample("x", dist.Normal(x, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ enc.T
            pyro.sample("z", dist.Normal(loc, torch.full_like(loc, 0.5)).to_event(1))

    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * 2
    report = diagnose(model, guide, x, num_samples=4, estimators=("kl", "mi"))
    s = report["z"]
    assert s.kl_estimator == "monte_carlo_marginal"
    # the prior's dimensions are dependent: the marginal KLs do not add up to the joint KL
    assert s.kl - float(np.sum(s.kl_per_dim)) > 0.3
    assert abs(s.kl_identity_gap) < 4 * s.kl_identity_stderr
    assert s.status == ["active", "collapsed"]


def test_traversals_reconstructions_densities_and_mean_space(lgw, ppca):
    x = lgw.sample_data(50)
    trav = latent_traversal(lgw.model, lgw.guide, x[:1], dims=[0, 2], values=[-1.0, 0.0, 1.0])
    assert trav.means.shape == (2, 3, 3)
    # E[x|z] = W z: moving z_0 by 1 moves the mean by W[:, 0]; z_2 is ignored by W
    np.testing.assert_allclose(trav.means[0, 2] - trav.means[0, 1], lgw.W[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(trav.means[1], np.broadcast_to(trav.means[1, :1], (3, 3)), atol=1e-6)
    recon = reconstruction_means(lgw.model, lgw.guide, x)
    expected = (x.double() @ lgw.A.T @ lgw.W.T).numpy()
    np.testing.assert_allclose(recon, expected, atol=1e-4)
    dens = posterior_densities(lgw.model, lgw.guide, x, num_points=4, grid_size=301)
    assert dens.grid.shape == (3, 301) and dens.posterior.shape == (4, 3, 301)
    mass = np.trapezoid(dens.posterior, dens.grid[None], axis=-1)
    np.testing.assert_allclose(mass, 1.0, atol=1e-3)
    np.testing.assert_allclose(np.trapezoid(dens.prior, dens.grid, axis=-1), 1.0, atol=1e-3)
    np.testing.assert_allclose(
        dens.posterior[:, 2], np.broadcast_to(dens.prior[2], (4, 301)), rtol=1e-5
    )
    # a guide whose means are off by 0.3: self-normalised importance sampling recovers
    # the exact posterior mean, while E_q[z|x] keeps the offset
    xp = ppca.sample(50)
    guide = ppca.mean_field_guide(scale_factor=1.5, shift=0.3)
    pyro.set_rng_seed(0)
    space = posterior_mean_space(ppca.model, guide, xp, num_samples=4000)
    exact, _ = ppca.posterior(xp)
    np.testing.assert_allclose(space.approximate, exact.numpy() + 0.3, atol=1e-5)
    assert np.abs(space.model - exact.numpy()).max() < 0.06
    with pytest.raises(ValueError, match=r"x must hold exactly one observation, shape \(1, ...\)"):
        latent_traversal(lgw.model, lgw.guide, x[:2])


@pytest.mark.slow
def test_mutual_information_memory_stays_far_below_the_pairwise_matrix():
    # N = 20000 draws against 20000 components: the pairwise matrix would take
    # N^2 * 8 bytes = 3.2 GB in float64 (1.6 GB in float32); the blocked evaluation must
    # stay below a tenth of that. Peak RSS is measured in a fresh process.
    code = textwrap.dedent(
        """
        import resource, torch, pyro, pyro.distributions as dist
        from pyrocollapse.diagnostics import mutual_information
        torch.set_num_threads(1)
        n, d = 20000, 8
        A = torch.randn(d, d, generator=torch.Generator().manual_seed(0)) / 3
        def model(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
        def guide(x):
            with pyro.plate("data", x.shape[0]):
                loc = x @ A.T
                pyro.sample("z", dist.Normal(loc, torch.full_like(loc, 0.5)).to_event(1))
        x = torch.randn(n, d)
        mutual_information(model, guide, x[:500])  # warm up allocators and kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mi = mutual_information(model, guide, x, batch_size=1000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, mi.total)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    growth, total = res.stdout.split()
    assert 0 < float(total) < math.log(20000)
    assert int(growth) < 0.1 * 20000**2 * 8, f"peak RSS grew by {int(growth) / 2**20:.0f} MiB"


def test_an_elementwise_flow_prior_gets_exact_marginals():
    # an affine "flow": p(z) = N(shift, diag(scale^2)) as a TransformedDistribution, which
    # has no closed-form marginals in pyro; the estimated per-dimension KL must match the
    # analytic KL against the true marginals N(shift_d, scale_d^2)
    shift, scale = torch.tensor([1.0, -1.0, 0.0]), torch.tensor([2.0, 0.5, 1.0])
    enc = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.0]])
    q_scale = torch.tensor([0.5, 0.3, 1.0])

    def prior():
        base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
        return dist.TransformedDistribution(
            base, [dist.transforms.AffineTransform(shift, scale, event_dim=1)]
        )

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", prior())
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ enc.T + shift
            pyro.sample("z", dist.Normal(loc, q_scale.expand_as(loc)).to_event(1))

    x = torch.randn(1500, 3, generator=torch.Generator().manual_seed(0))
    report = diagnose(model, guide, x, num_samples=4, estimators=("kl", "mi", "rhat"))
    s = report["z"]
    assert s.kl_estimator == "monte_carlo_marginal"  # an elementwise flow: exact marginals
    loc = x @ enc.T + shift
    exact = kl_divergence_normal(loc, q_scale, shift, scale).mean(0)
    np.testing.assert_allclose(s.kl_per_dim, exact.numpy(), atol=0.03)
    assert abs(s.kl_identity_gap) < 4 * s.kl_identity_stderr
    assert s.status == ["active", "active", "collapsed"]
    assert s.densities is not None and s.aggregate_kl_per_dim is not None
    assert s.aggregate_kl_per_dim[2] == pytest.approx(0.0, abs=0.02)


def kl_divergence_normal(loc_q, scale_q, loc_p, scale_p):
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) elementwise."""
    return (
        torch.log(scale_p / scale_q) + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2) - 0.5
    )


@pytest.mark.parametrize(
    "logits_shape, value_shape, event_dims",
    [((16, 8, 50), (8, 50), 1), ((4, 3, 1, 6, 6), (3, 1, 6, 6), 3), ((3, 5, 10), (10,), 1)],
)
def test_fused_bernoulli_log_prob_equals_torchs(logits_shape, value_shape, event_dims):
    from pyrocollapse.diagnostics._site_draws import _log_prob

    g = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(logits_shape, generator=g, dtype=torch.float64)
    value = torch.bernoulli(torch.rand(value_shape, generator=g, dtype=torch.float64))
    d = dist.Bernoulli(logits=logits, validate_args=False).to_event(event_dims)
    torch.testing.assert_close(_log_prob(d, value), d.log_prob(value), rtol=1e-10, atol=1e-8)
    grey = torch.rand(value_shape, generator=g, dtype=torch.float64)  # the BCE surrogate
    torch.testing.assert_close(_log_prob(d, grey), d.log_prob(grey), rtol=1e-10, atol=1e-8)


def test_reports_from_the_first_version_load_and_minimal_reports_render(lg):
    x = lg.sample_data(120)
    full = diagnose(lg.model, lg.guide, x).to_dict()
    # the keys the first version wrote, and nothing else
    old_site_keys = {
        "site", "latent_dim", "verdict", "kl", "kl_estimator", "kl_per_dim",
        "kl_fraction_below_0.01", "active_units", "au_variance", "au_threshold", "mi",
        "mi_per_dim", "aggregate_kl", "aggregate_kl_per_dim", "kl_identity_gap", "status",
    }  # fmt: skip
    old = {
        k: full[k] for k in ("verdict", "active_units", "rule", "num_points", "elbo", "settings")
    }
    old["sites"] = {"z": {k: v for k, v in full["sites"]["z"].items() if k in old_site_keys}}
    report = CollapseReport.from_dict(old)
    assert report.verdict == full["verdict"] and report["z"].rhat is None
    assert report["z"].kl == pytest.approx(sum(full["sites"]["z"]["kl_per_dim"]))
    assert "R-hat" not in str(report) and "PARTIAL COLLAPSE" in str(report)
    minimal = diagnose(lg.model, lg.guide, x, estimators=("kl",))
    text = str(minimal)
    assert "MI" not in text.split("rule:")[0] and "site 'z': 2/3 active" in text
    table = minimal.compare(report)
    assert list(table["status_changed"]) == [False, False, False]
    with pytest.raises(ValueError, match="malformed report: missing entry 'num_points'"):
        CollapseReport.from_dict({k: v for k, v in old.items() if k != "num_points"})
    with pytest.raises(KeyError, match=r"no latent site 'w' in this report; sites: \['z'\]"):
        report["w"]


# -- errors of the probe run -------------------------------------------------------------
def test_data_of_the_wrong_shape_gives_an_error_naming_both_shapes_and_a_fix():
    from pyrocollapse.models import MLPVAE

    vae = MLPVAE(16, 2, hidden=(4,))
    x = torch.rand(40, 4, 4)
    for run in (
        lambda: diagnose(vae.model, vae.guide, x),
        lambda: iw_log_likelihood(vae.model, vae.guide, x, num_samples=2),
    ):
        with pytest.raises(ValueError, match=r"x must have shape \(N, 16\), got \(2, 4, 4\)") as e:
            run()
        msg = str(e.value)
        assert (
            "data[:2] (shape (2, 4, 4); data has shape (40, 4, 4); the model takes (N, 16))" in msg
        )
        assert "Try one of the following fixes" in msg and "data.reshape(len(data), -1)" in msg


def test_a_plate_of_fixed_size_is_diagnosed_in_one_chunk_or_named_in_the_error():
    def model(x):
        with pyro.plate("data", 40):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 40):
            pyro.sample("z", dist.Normal(x.expand(-1, 2), 1.0).to_event(1))

    x = torch.randn(40, 1)
    report = diagnose(model, guide, x, batch_size=16)  # runs only on the whole data
    assert report.settings["whole_data"] and report.settings["batch_size"] == 40
    assert report.num_points == 40 and report["z"].status == ["active", "active"]
    with pytest.raises(
        ValueError,
        match=r"(?s)data\[:2\] \(shape \(2, 1\); data has shape "
        r"\(50, 1\)\).*pyro.plate\('data', x.shape\[0\]\)",
    ):
        diagnose(model, guide, torch.randn(50, 1))


# -- the marginal KL: not clipped, with its standard error -------------------------------
def _conditional_prior_programs():
    """z | t ~ N(t, 0.1) in both programs, t ~ N(x, 0.1) in the guide: the site z has a
    conditional prior equal to its guide, so its KL is 0 and, given its parent t, z tells
    nothing more about x (the innovation (z - t) / 0.1 is N(0, 1) for every point)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            t = pyro.sample("t", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            z = pyro.sample("z", dist.Normal(t, 0.1).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            t = pyro.sample("t", dist.Normal(x, 0.1).to_event(1))
            pyro.sample("z", dist.Normal(t, 0.1).to_event(1))

    return model, guide


def test_a_site_equal_to_its_conditional_prior_carries_no_information_beyond_its_parent():
    """Issue 15: measured on the parent's draw, z's spread is t's spread; measured in the
    conditional prior's standardised coordinates it is nothing, and z reads collapsed
    while its parent t is active."""
    model, guide = _conditional_prior_programs()
    x = torch.randn(200, 1, generator=torch.Generator().manual_seed(0))
    mi = mutual_information(model, guide, x, site="z", num_samples=4)
    assert mi.conditional_prior
    assert mi.total == pytest.approx(0.0, abs=1e-5)
    assert mi.aggregate_kl == pytest.approx(0.0, abs=1e-5)
    kl = kl_per_dimension(model, guide, x, site="z").total
    assert kl == pytest.approx(0.0, abs=1e-6)
    assert active_units(model, guide, x, site="z").variance[0] == pytest.approx(0.0, abs=1e-10)
    report = diagnose(model, guide, x)
    assert report["z"].status == ["collapsed"] and report["z"].innovation
    assert report["t"].status == ["active"] and not report["t"].innovation
    assert report.verdict == "partial collapse"
    # the top site has an unconditional prior: a divergence, estimated within its error
    top = mutual_information(model, guide, x, site="t", num_samples=4)
    assert not top.conditional_prior and top.aggregate_kl > -4 * top.aggregate_kl_stderr
