import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyrocollapse.elbo import ELBOS, AnnealedELBO, BaseELBO, BetaELBO, PlainELBO, make_elbo
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear


def toy(prior_family="normal", n=6, d=3):
    """A small Normal guide / model pair with learnable guide parameters."""
    x = torch.randn(n, 4)

    def model(x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            if prior_family == "normal":
                p = dist.Normal(torch.zeros(d), torch.ones(d))
            else:  # no closed-form KL from a Normal
                p = dist.StudentT(3.0, torch.zeros(d), torch.ones(d))
            z = pyro.sample("z", p.to_event(1))
            pyro.sample(
                "x", dist.Normal(z.sum(-1, keepdim=True).expand(-1, 4), 1.0).to_event(1), obs=x[idx]
            )

    def guide(x, subsample_size=None):
        loc = pyro.param("loc", torch.zeros(x.shape[0], d) + 0.3)
        scale = pyro.param(
            "scale", torch.ones(x.shape[0], d) * 0.7, constraint=dist.constraints.positive
        )
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))

    return model, guide, x


def run_seeded(fn, seed=3):
    pyro.set_rng_seed(seed)
    return fn()


@pytest.mark.parametrize(
    "elbo", [PlainELBO(), AnnealedELBO(Linear(5)), BetaELBO(0.0), BetaELBO(2.5)]
)
def test_loss_paths_agree(elbo):
    model, guide, x = toy()
    a = run_seeded(lambda: elbo.loss(model, guide, x))
    b = run_seeded(lambda: float(elbo.differentiable_loss(model, guide, x).detach()))
    c = run_seeded(lambda: elbo.loss_and_grads(model, guide, x))
    assert a == pytest.approx(b, rel=1e-6) and a == pytest.approx(c, rel=1e-6)


def test_weight_one_equals_pyro_trace_mean_field():
    model, guide, x = toy()
    ours = run_seeded(lambda: PlainELBO().loss(model, guide, x))
    pyros = run_seeded(lambda: TraceMeanField_ELBO().loss(model, guide, x))
    assert ours == pytest.approx(pyros, rel=1e-6)


def test_monte_carlo_kl_equals_pyro_trace_elbo_when_no_closed_form():
    model, guide, x = toy("studentt")
    ours = run_seeded(lambda: PlainELBO().loss(model, guide, x))
    pyros = run_seeded(lambda: Trace_ELBO().loss(model, guide, x))
    assert ours == pytest.approx(pyros, rel=1e-6)
    elbo = PlainELBO()
    run_seeded(lambda: elbo.loss(model, guide, x))
    assert not elbo.last.terms[0].latent["z"].analytic


def test_gradients_equal_trace_mean_field():
    model, guide, x = toy()
    grads = []
    for elbo in (PlainELBO(), TraceMeanField_ELBO()):
        pyro.clear_param_store()
        run_seeded(lambda elbo=elbo: elbo.loss_and_grads(model, guide, x))
        grads.append(pyro.param("loc").unconstrained().grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_kl_weight_zero_gives_no_kl_gradient():
    # with weight 0 only the reconstruction term acts: the scale gradient equals the
    # reconstruction-only gradient
    model, guide, x = toy()
    run_seeded(lambda: BetaELBO(0.0).loss_and_grads(model, guide, x))
    g0 = pyro.param("scale").unconstrained().grad.clone()
    pyro.clear_param_store()

    def recon_only():
        tr = poutine.trace(guide).get_trace(x)
        mt = poutine.trace(poutine.replay(model, trace=tr)).get_trace(x)
        (-mt.log_prob_sum(lambda name, site: site["is_observed"])).backward()

    run_seeded(recon_only)
    torch.testing.assert_close(g0, pyro.param("scale").unconstrained().grad)


def test_annealed_beta_advances_once_per_loss_and_grads():
    model, guide, x = toy()
    elbo = AnnealedELBO(Linear(4))
    assert elbo.beta == 0.0
    elbo.loss(model, guide, x)
    elbo.differentiable_loss(model, guide, x)
    assert elbo.beta == 0.0 and elbo.step_count == 0
    for k in range(1, 6):
        elbo.loss_and_grads(model, guide, x)
        assert elbo.beta == min(1.0, k / 4)
    assert elbo.last.components["kl_weight"] == 1.0


def test_annealed_loss_is_reconstruction_minus_weighted_kl():
    model, guide, x = toy()
    elbo = AnnealedELBO(Linear(4))
    elbo.step_count = 2  # beta = 0.5
    loss = elbo.loss(model, guide, x)
    c = elbo.last.components
    assert loss == pytest.approx(-(c["reconstruction"] - 0.5 * c["kl"]), rel=1e-6)
    assert c["elbo"] == pytest.approx(c["reconstruction"] - c["kl"], rel=1e-6)


def test_subsample_scaling_is_respected():
    model, guide, x = toy(n=8)
    elbo = PlainELBO()
    elbo.loss(model, guide, x, subsample_size=2)
    term = elbo.last.terms[0].latent["z"]
    assert term.weight == pytest.approx(8.0)
    assert term.total == pytest.approx(4.0 * float(term.kl.sum()))
    assert elbo.last.components["num_data"] == pytest.approx(8.0)


def test_trains_under_svi_and_through_elbo_module():
    pyro.set_rng_seed(0)
    vae = MLPVAE(10, 2, hidden=(16,))
    x = (torch.rand(32, 10) > 0.5).float()
    elbo = AnnealedELBO(Linear(10))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=elbo)
    losses = [svi.step(x) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert elbo.step_count == 30 and elbo.beta == 1.0
    module = PlainELBO()(vae.model, vae.guide)
    loss = module(x)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_breakdown_per_site_and_dimension():
    model, guide, x = toy()
    out = PlainELBO().breakdown(model, guide, x)
    assert set(out) == {"x", "z"}
    assert out["z"].shape == (3,) and out["x"].shape == ()
    # analytic KL of N(0.3, 0.7) vs N(0, 1), six points
    kl = 0.5 * (0.49 + 0.09 - 1 - torch.log(torch.tensor(0.49)))
    torch.testing.assert_close(out["z"], torch.full((3,), 6 * float(kl)))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta must be >= 0"):
        BetaELBO(-1.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        BetaELBO(float("inf"))
    with pytest.raises(ValueError, match="does not support vectorize_particles"):
        PlainELBO(num_particles=2, vectorize_particles=True)
    with pytest.raises(ValueError, match="unknown elbo 'iwea'; valid names:"):
        make_elbo("iwea")


def test_every_registered_elbo_is_a_pyro_elbo():
    for name in ELBOS:
        assert issubclass(ELBOS.get(name), BaseELBO) and issubclass(
            ELBOS.get(name), pyro.infer.ELBO
        )
