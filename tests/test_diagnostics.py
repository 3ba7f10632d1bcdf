import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyrocollapse import diagnose
from pyrocollapse.diagnostics import (
    active_units,
    aggregate_posterior_kl,
    kl_per_dimension,
    marginal_log_prob,
    mutual_information,
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
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        diagnose(lg.model, lg.guide, x.numpy())
    with pytest.raises(ValueError, match="data is empty"):
        diagnose(lg.model, lg.guide, x[:0])
    with pytest.raises(TypeError, match="latent_sites must be a sequence"):
        diagnose(lg.model, lg.guide, x, latent_sites="z")
