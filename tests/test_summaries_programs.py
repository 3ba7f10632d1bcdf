"""``to_inference_data`` on Pyro programs written like Pyro's examples: the gallery, sites
named ``obs`` and ``draw``, global latents, masks, programs that do not vectorise,
modules in train mode, chunks, and closed forms for the log-likelihood and the draws."""

import math

import arviz  # noqa: F401  (imported at collection: the first import takes about 2 s)
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from gallery import PROGRAMS, build
from pyro.distributions import constraints

from pyrocollapse.summaries import load_inference_data, save_inference_data, to_inference_data

GROUPS = {"posterior", "prior", "observed_data", "log_likelihood", "posterior_predictive"}
CASES = [pytest.param(name, {}, id=name) for name in PROGRAMS] + [
    pytest.param("dmm", {"iaf": True}, id="dmm-iaf"),
    pytest.param("eight_schools", {"guide": "auto"}, id="eight_schools-auto"),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_every_gallery_program_keeps_every_group(name, options, tmp_path):
    program = build(name, **options)
    idata = to_inference_data(
        program.model, program.guide, program.train_data, num_samples=5, prior_samples=7
    )
    assert set(idata.groups()) == GROUPS
    plate, n = program.data_plate, program.num_data
    assert idata.posterior.attrs["data_plate"] == plate
    latents = {*program.local_latents, *program.global_latents, *program.enumerated}
    assert set(idata.posterior.data_vars) == latents == set(idata.prior.data_vars)
    for site in program.local_latents:
        post = idata.posterior[site]
        assert post.dims[:2] == ("chain", "draw") and post.shape[:2] == (2, 5)
        assert post.sizes[plate] == n, (site, post.dims)
        assert plate not in idata.prior[site].dims or name == "eight_schools"  # fixed plate
    for site in program.global_latents:
        assert plate not in idata.posterior[site].dims, site
        assert idata.prior[site].shape[:2] == (2, 7)
    assert set(idata.log_likelihood.data_vars) == set(idata.observed_data.data_vars)
    assert set(idata.posterior_predictive.data_vars) == set(idata.observed_data.data_vars)
    for var in idata.observed_data.data_vars:
        obs = idata.observed_data[var]
        assert obs.sizes[plate] == n
        ll = idata.log_likelihood[var]
        assert ll.dims == ("chain", "draw", plate) and ll.shape == (2, 5, n)
        pp = idata.posterior_predictive[var]
        assert pp.dims == ("chain", "draw", *obs.dims) and pp.shape == (2, 5, *obs.shape)
        if "mask" not in program.features:
            assert np.isfinite(ll.values).all(), var
    path = tmp_path / "idata.nc"
    save_inference_data(idata, path)
    loaded = load_inference_data(path)
    for group in GROUPS:
        xr.testing.assert_identical(getattr(loaded, group), getattr(idata, group))


# --------------------------------------------------------------------------------------
# Names that used to clash with ArviZ's dims
# --------------------------------------------------------------------------------------
def _gaussian_pair(obs_name: str, latent_name: str = "z"):
    """z_n ~ N(0, 1), x_n ~ N(2 z_n, 0.5); q(z_n | x_n) = N(0.4 x_n, 0.3)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(latent_name, dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample(obs_name, dist.Normal(2.0 * z, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample(latent_name, dist.Normal(0.4 * x, 0.3))

    return model, guide


@pytest.mark.parametrize(
    ("obs_name", "latent_name"), [("obs", "z"), ("draw", "chain"), ("x", "draw")]
)
def test_sites_named_like_dims_keep_their_groups(obs_name, latent_name):
    model, guide = _gaussian_pair(obs_name, latent_name)
    x = torch.linspace(-2, 2, 11)
    idata = to_inference_data(model, guide, x, 6, prior_samples=6)
    var = {"chain": "chain_site", "draw": "draw_site"}
    ov, lv = var.get(obs_name, obs_name), var.get(latent_name, latent_name)
    assert set(idata.groups()) == GROUPS
    np.testing.assert_array_equal(idata.observed_data[ov].values, x.numpy())
    assert idata.observed_data[ov].attrs["pyro_site"] == obs_name
    assert idata.log_likelihood[ov].shape == (2, 6, 11)
    assert idata.posterior[lv].shape == (2, 6, 11)
    assert idata.posterior[lv].attrs["pyro_site"] == latent_name


def test_a_dim_that_clashes_with_a_site_is_prefixed():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("z_dim_0", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    idata = to_inference_data(model, guide, torch.zeros(4), 3, prior_samples=3)
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "plate_z_dim_0")
    assert idata.log_likelihood["z_dim_0"].shape == (2, 3, 4)


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------
def test_log_likelihood_is_the_observed_density_at_each_draw():
    model, guide = _gaussian_pair("obs")
    x = torch.linspace(-2, 2, 9)
    idata = to_inference_data(model, guide, x, 20, prior_samples=5)
    z = torch.as_tensor(idata.posterior["z"].values, dtype=torch.float64)
    by_hand = -0.5 * ((x.double() - 2 * z) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values, by_hand.numpy(), rtol=1e-5)
    # the posterior predictive is N(2 z, 0.5) at each draw
    resid = (idata.posterior_predictive["obs"].values - 2 * z.numpy()) / 0.5
    assert abs(resid.mean()) < 0.1 and resid.std() == pytest.approx(1.0, abs=0.1)


def test_draws_of_a_normal_guide_have_its_mean_and_sd():
    program = build("eight_schools")
    pyro.param("mu_loc", torch.tensor(4.0))
    pyro.param("mu_scale", torch.tensor(2.0), constraint=constraints.positive)
    pyro.param("tau_loc", torch.tensor(1.0))
    pyro.param("tau_scale", torch.tensor(0.5), constraint=constraints.positive)
    idata = to_inference_data(
        program.model, program.guide, program.train_data, 2000, prior_samples=5
    )
    mu = idata.posterior["mu"].values
    # 4000 independent draws: standard errors 2/sqrt(4000) = 0.03 and about 0.02 for the sd
    assert mu.mean() == pytest.approx(4.0, abs=0.15) and mu.std() == pytest.approx(2.0, abs=0.1)
    log_tau = np.log(idata.posterior["tau"].values)
    assert log_tau.mean() == pytest.approx(1.0, abs=0.04)
    assert log_tau.std() == pytest.approx(0.5, abs=0.03)
    theta = idata.posterior["theta_tilde"].values  # N(0, 1) per school
    assert abs(theta.mean()) < 0.05 and theta.std() == pytest.approx(1.0, abs=0.03)


def test_global_latents_are_shared_across_chunks_and_score_every_point():
    program = build("hier_autonormal")
    x, group, y = program.train_data
    idata = to_inference_data(
        program.model, program.guide, program.train_data, 4, batch_size=16, prior_samples=5
    )
    post = {k: torch.as_tensor(v.values) for k, v in idata.posterior.items()}
    loc = post["alpha"][..., group] + post["beta"][..., None] * x
    by_hand = dist.Normal(loc, post["sigma"][..., None]).log_prob(y)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values, by_hand.numpy(), rtol=1e-5)
    assert idata.posterior["alpha"].dims == ("chain", "draw", "groups")


def test_masked_elements_are_nan_not_zero_nats():
    program = build("dmm")
    seqs, _, mask, _ = program.train_data
    idata = to_inference_data(program.model, program.guide, program.train_data, 3, prior_samples=3)
    for t in range(1, seqs.shape[1] + 1):
        ll = idata.log_likelihood[f"obs_x_{t}"].values  # (chain, draw, sequences)
        np.testing.assert_array_equal(
            np.isnan(ll), ~mask[:, t - 1].numpy()[None, None].repeat(3, 1).repeat(2, 0)
        )
        assert (ll[..., mask[:, t - 1].numpy()] < 0).all()
        pp = idata.posterior_predictive[f"obs_x_{t}"].values
        assert np.isnan(pp[..., ~mask[:, t - 1].numpy(), :]).all()
        z = idata.posterior[f"z_{t}"].values
        assert np.isnan(z[..., ~mask[:, t - 1].numpy(), :]).all()
        assert np.isfinite(z[..., mask[:, t - 1].numpy(), :]).all()


def test_poutine_mask_is_respected():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            with pyro.poutine.mask(mask=x > 0):
                pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0))

    x = torch.tensor([-1.0, 1.0, 2.0])
    ll = to_inference_data(model, guide, x, 4, prior_samples=4).log_likelihood["obs"].values
    assert np.isnan(ll[..., 0]).all() and np.isfinite(ll[..., 1:]).all()


# --------------------------------------------------------------------------------------
# Programs that do not vectorise; modules in train mode; data forms
# --------------------------------------------------------------------------------------
def test_a_program_that_does_not_broadcast_runs_one_draw_at_a_time():
    def model(x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(n, 2), 1.0).to_event(1))
            loc = z.reshape(n, 2).sum(-1)  # assumes no extra leading dims
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        n = x.shape[0]
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(x[:, None].expand(n, 2), 1.0).to_event(1))

    x = torch.arange(5.0)
    idata = to_inference_data(model, guide, x, 4, prior_samples=4)
    assert idata.posterior.attrs["draw_method"] == "one draw at a time"
    assert idata.posterior["z"].shape == (2, 4, 5, 2)
    z = torch.as_tensor(idata.posterior["z"].values)
    by_hand = dist.Normal(z.sum(-1), 1.0).log_prob(x)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values, by_hand.numpy(), rtol=1e-5)
    assert idata.prior["z"].shape == (2, 4, 2)


def test_modules_run_in_eval_mode_and_are_restored_unchanged():
    program = build("prodlda")
    module = program.modules[0]
    module.train()
    module.encoder.bnmu.eval()  # a mixed state must come back as it was
    flags = {name: m.training for name, m in module.named_modules()}
    before = {k: v.clone() for k, v in module.state_dict().items()}
    idata = to_inference_data(program.model, program.guide, program.train_data, 4, prior_samples=4)
    assert {name: m.training for name, m in module.named_modules()} == flags
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    # eval mode: no dropout, so the guide's draws match q(logtheta | doc) of the eval network
    module.eval()
    with torch.no_grad():
        loc, _ = module.encoder(program.train_data)
    mean = idata.posterior["logtheta"].values.mean(axis=(0, 1))
    assert np.abs(mean - loc.numpy()).max() < 1.5


def test_data_forms_give_the_same_draws():
    program = build("cvae")
    xs, ys = program.train_data
    a = to_inference_data(program.model, program.guide, (xs, ys), 3, prior_samples=3)
    b = to_inference_data(program.model, program.guide, {"xs": xs, "ys": ys}, 3, prior_samples=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=10)
    c = to_inference_data(program.model, program.guide, loader, 3, prior_samples=3)
    for other in (b, c):
        xr.testing.assert_identical(a.posterior.drop_attrs(), other.posterior.drop_attrs())
        ll_a, ll_b = a.log_likelihood.drop_attrs(), other.log_likelihood.drop_attrs()
        xr.testing.assert_identical(ll_a, ll_b)


def test_groups_can_be_left_out():
    model, guide = _gaussian_pair("obs")
    idata = to_inference_data(
        model,
        guide,
        torch.zeros(3),
        2,
        prior=False,
        log_likelihood=False,
        posterior_predictive=False,
    )
    assert set(idata.groups()) == {"posterior", "observed_data"}
    with pytest.raises(TypeError, match="posterior_predictive must be a bool"):
        to_inference_data(model, guide, torch.zeros(3), 2, posterior_predictive="yes")
