"""InferenceData from guide draws, its netCDF round trip, and the per-dimension summary."""

import arviz as az
import numpy as np
import pytest
import torch
import xarray as xr
from linear_gaussian import LinearGaussian, TwoLayer, log_normal_pdf

from pyrocollapse.summaries import (
    load_inference_data,
    save_inference_data,
    summarize,
    to_inference_data,
)


@pytest.fixture
def lg():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    s = torch.tensor([0.5, 0.8, 1.0])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    W = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.3, 1.0, 0.0]])
    return LinearGaussian(A, s, sigma, W)


@pytest.fixture
def idata(lg):
    return to_inference_data(lg.model, lg.guide, lg.sample_data(120), 40, chains=2, batch_size=50)


def test_groups_dims_coords_and_values(lg, idata):
    x = lg.sample_data(120)
    assert set(idata.groups()) == {
        "posterior",
        "prior",
        "observed_data",
        "log_likelihood",
        "posterior_predictive",
    }
    post = idata.posterior["z"]
    assert post.dims == ("chain", "draw", "data", "z_dim_0") and post.shape == (2, 40, 120, 3)
    for name, size in (("chain", 2), ("draw", 40), ("data", 120), ("z_dim_0", 3)):
        np.testing.assert_array_equal(idata.posterior[name].values, np.arange(size))
    assert idata.prior["z"].dims == ("chain", "draw", "z_dim_0")
    assert idata.prior["z"].shape == (2, 1000, 3)  # max(num_samples, 1000) prior draws
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
    assert idata.observed_data["x"].dims == ("data", "x_dim_0")
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "data", "x_dim_0")
    # log_likelihood is log N(x_n; W z, I) at each posterior draw
    z = torch.as_tensor(post.values, dtype=torch.float64)
    expected = log_normal_pdf(x.double(), z @ lg.W.T, 1.0)
    np.testing.assert_allclose(idata.log_likelihood["x"].values, expected.numpy(), rtol=1e-5)
    # the draws follow q(z|x) = N(A x, s^2): check mean and sd per dimension
    loc = (x.double() @ lg.A.T).numpy()
    resid = (post.values - loc) / lg.s.numpy()
    assert abs(resid.mean()) < 0.02 and resid.std() == pytest.approx(1.0, abs=0.02)
    assert idata.posterior.attrs["creation_library"] == "pyrocollapse"
    assert "not MCMC" in idata.posterior.attrs["posterior_kind"]


def test_draws_are_reproducible_and_the_global_rng_is_restored(lg):
    x = lg.sample_data(30)
    state = torch.get_rng_state()
    a = to_inference_data(lg.model, lg.guide, x, 5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = to_inference_data(lg.model, lg.guide, x, 5, seed=3)
    xr.testing.assert_identical(a.posterior.drop_attrs(), b.posterior.drop_attrs())


def test_netcdf_round_trip_is_lossless(idata, tmp_path):
    path = tmp_path / "posterior.nc"
    save_inference_data(idata, path)
    loaded = load_inference_data(path)
    assert set(loaded.groups()) == set(idata.groups())
    for group in idata.groups():
        xr.testing.assert_identical(getattr(loaded, group), getattr(idata, group))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
    with pytest.raises(FileNotFoundError, match="no InferenceData file at"):
        load_inference_data(tmp_path / "missing.nc")


def test_summarize_shows_collapse_as_posterior_matching_prior(lg):
    x = lg.sample_data(400)
    data = to_inference_data(lg.model, lg.guide, x, 50, prior_samples=4000)
    table = summarize(data)
    assert list(table.index) == ["z[0]", "z[1]", "z[2]"]
    for col in (
        "mean",
        "sd",
        "hdi_3%",
        "hdi_97%",
        "prior_mean",
        "prior_sd",
        "obs_sd",
        "sd_ratio",
        "rhat_obs",
    ):
        assert col in table.columns, col
    # per-observation posterior sd is s_d; the prior's sd is 1
    np.testing.assert_allclose(table["obs_sd"], lg.s.numpy(), rtol=0.03)
    np.testing.assert_allclose(table["prior_sd"], 1.0, atol=0.04)
    np.testing.assert_allclose(table["sd_ratio"], lg.s.numpy(), rtol=0.06)
    # z_2 is collapsed: q(z_2|x) = N(0, 1) = p(z_2)
    collapsed = table.loc["z[2]"]
    assert collapsed["sd_ratio"] == pytest.approx(1.0, abs=0.06)
    assert collapsed["rhat_obs"] == pytest.approx(1.0, abs=0.01)
    assert collapsed["mean"] == pytest.approx(collapsed["prior_mean"], abs=0.05)
    # ln of the datapoints-as-chains R-hat approaches I(x; z_d)
    np.testing.assert_allclose(np.log(table["rhat_obs"]), lg.mi_per_dim().numpy(), atol=0.1)
    # aggregate posterior sd = sqrt(var_x(E_q[z_d|x]) + s_d^2)
    agg_sd = torch.sqrt(torch.diagonal(lg.A @ lg.sigma @ lg.A.T) + lg.s**2).numpy()
    np.testing.assert_allclose(table["sd"], agg_sd, rtol=0.1)
    assert (table["hdi_3%"] < table["mean"]).all() and (table["mean"] < table["hdi_97%"]).all()


def test_hierarchical_model_gets_one_variable_per_layer():
    two = TwoLayer(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), torch.eye(3), 0.5)
    data = to_inference_data(two.model, two.guide, two.sample(60), 20, prior_samples=20)
    assert data.posterior["z_top"].dims == ("chain", "draw", "data", "z_top_dim_0")
    assert data.posterior["z"].dims == ("chain", "draw", "data", "z_dim_0")
    assert data.prior["z_top"].shape == (2, 20, 2) and data.prior["z"].shape == (2, 20, 3)
    table = summarize(data, var_names=["z"])
    assert list(table["site"]) == ["z"] * 3


def test_arviz_functions_work_on_the_result(idata):
    stats = az.summary(idata, var_names=["z"], kind="stats")
    assert stats.shape == (120 * 3, 4)
    ll = idata.log_likelihood["x"]
    # draws are independent: the effective sample size of the log-likelihood is near 80
    ess = az.ess(ll.isel(data=slice(0, 5)).to_dataset(), method="bulk")["x"].values
    assert (ess > 40).all() and (ess < 160).all()


def test_errors_name_the_problem(lg, idata, monkeypatch):
    x = lg.sample_data(10)
    with pytest.raises(ValueError, match=r"latent sites \['w'\] are not latent sites"):
        to_inference_data(lg.model, lg.guide, x, 5, latent_sites=["w"])
    with pytest.raises(TypeError, match="latent_sites must be a sequence of site names"):
        to_inference_data(lg.model, lg.guide, x, 5, latent_sites="z")
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        to_inference_data(lg.model, lg.guide, x, 0)
    no_prior = to_inference_data(lg.model, lg.guide, x, 5, prior=False, log_likelihood=False)
    assert "log_likelihood" not in no_prior.groups()
    with pytest.raises(ValueError, match="idata has no 'prior' group"):
        summarize(no_prior)
    with pytest.raises(ValueError, match=r"var_names \['w'\] are not posterior variables"):
        summarize(idata, var_names=["w"])
    with pytest.raises(ValueError, match="hdi_prob must be <= 1.0, got 2.0"):
        summarize(idata, hdi_prob=2.0)
    monkeypatch.setattr(az, "__version__", "1.0.0")
    with pytest.raises(ImportError, match="supports ArviZ 0.x; found ArviZ 1.0.0"):
        summarize(idata)
