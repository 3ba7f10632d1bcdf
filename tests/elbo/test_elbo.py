import math

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
    with pytest.raises(ValueError, match="IWAEELBO needs vectorize_particles=True"):
        make_elbo("iwae", vectorize_particles=False)
    with pytest.raises(TypeError, match="analytic_kl must be True or False"):
        PlainELBO(analytic_kl="yes")
    with pytest.raises(ValueError, match="unknown elbo 'iwea'; valid names:"):
        make_elbo("iwea")


def test_every_registered_elbo_is_a_pyro_elbo():
    for name in ELBOS:
        assert issubclass(ELBOS.get(name), BaseELBO) and issubclass(
            ELBOS.get(name), pyro.infer.ELBO
        )


def test_weights_are_reported_with_every_evaluation():
    from pyrocollapse.elbo import FreeBitsELBO

    model, guide, x = toy()
    elbo = FreeBitsELBO(0.2, kl_weight=Linear(4))
    elbo.step_count = 1
    elbo.loss(model, guide, x)
    assert elbo.weights == {"kl_weight": 0.25, "free_bits": 0.2}
    assert elbo.last.weights == elbo.weights
    assert {k: elbo.last.components[k] for k in elbo.weights} == elbo.weights


def test_hyperparameters_describe_the_objective():
    import json

    from pyrocollapse.elbo import InfoVAEELBO

    spec = InfoVAEELBO(0.5, 10.0, kernel="rbf", kl_weight=Linear(7)).hyperparameters()
    assert spec == {
        "class": "InfoVAEELBO",
        "name": "infovae",
        "kl_weight": {"name": "linear", "warmup_steps": 7, "start": 0.0, "end": 1.0},
        "num_particles": 1,
        "alpha": 0.5,
        "lambda_": 10.0,
        "kernel": "rbf",
        "bandwidth": None,
    }
    assert json.loads(json.dumps(spec)) == spec


def vectorisable_toy(n=5, d=3):
    x = torch.randn(n, 4)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(*z.shape[:-1], 4)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.linspace(-1, 1, n * d).reshape(n, d))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 0.5).to_event(1))

    return model, guide, x


def test_vectorised_particles_are_averaged_not_summed():
    from pyrocollapse.elbo import IWAEELBO

    model, guide, x = vectorisable_toy()
    plain, iwae = PlainELBO(), IWAEELBO(7)
    plain.loss(model, guide, x)
    iwae.loss(model, guide, x)
    # the analytic KL does not depend on the draws: per-particle averages must agree
    assert iwae.last.components["kl"] == pytest.approx(plain.last.components["kl"], rel=1e-6)
    assert iwae.last.components["num_data"] == 5.0
    torch.testing.assert_close(
        iwae.breakdown(model, guide, x)["z"], plain.breakdown(model, guide, x)["z"]
    )
    assert iwae.last.terms[0].latent["z"].kl.shape == (7, 5)


def test_guessing_plate_nesting_leaves_the_rng_alone():
    # the first call of a vectorised objective guesses max_plate_nesting by running the
    # model once; it must not shift the draws of that call
    from pyrocollapse.elbo import IWAEELBO

    model, guide, x = vectorisable_toy()
    elbo = IWAEELBO(4)
    first = run_seeded(lambda: elbo.loss(model, guide, x))
    second = run_seeded(lambda: elbo.loss(model, guide, x))
    assert first == second


def test_num_data_without_latent_sites_comes_from_the_data_plate():
    def model(x):
        mu = pyro.param("mu", torch.zeros(()))
        with pyro.plate("data", 10, subsample_size=4) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])

    elbo = PlainELBO()
    elbo.loss(model, lambda x: None, torch.randn(10))
    assert elbo.last.components["num_data"] == pytest.approx(10.0)


def test_minibatch_estimators_explain_unsupported_site_shapes():
    from pyrocollapse.elbo import MIRegularizedELBO

    def model(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("dims", 2, dim=-2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.sum(-2), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]), pyro.plate("dims", 2, dim=-2):
            pyro.sample("z", dist.Normal(0.5, 1.0))

    message = r"MIRegularizedELBO: latent site 'z' has batch shape \(2, 3\) and event shape \(\).*to_event\(1\)"
    with pytest.raises(ValueError, match=message):
        MIRegularizedELBO(1.0).loss(model, guide, torch.randn(3))


def test_closed_form_kl_only_where_the_guide_draws_the_parents_first():
    # model p(t) p(z | t), guide q(z) q(t | z): KL(q(z) || p(z | t)) in closed form at a t
    # drawn given z is biased (by -a s^2 per point here), so z gets the Monte Carlo
    # estimate; t's parents come first in the guide, so t keeps its closed form
    m, s, a, r, n = 0.7, 0.6, 0.8, 0.5, 20000

    def model():
        with pyro.plate("data", n):
            t = pyro.sample("t", dist.Normal(0.0, 1.0))
            pyro.sample("z", dist.Normal(t, 1.0))

    def guide():
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(m, s))
            pyro.sample("t", dist.Normal(a * z, r))

    elbo = PlainELBO()
    elbo.loss(model, guide)
    latent = elbo.last.terms[0].latent
    assert not latent["z"].analytic and latent["t"].analytic
    per_point = (latent["z"].kl + latent["t"].kl).double()  # -ELBO of each point
    # exact -ELBO: E[log q(z) + log q(t|z) - log p(t) - log p(z|t)] for Gaussians
    ez2 = m**2 + s**2
    exact = (
        -0.5 * math.log(s**2)
        - 0.5 * math.log(r**2)
        - 1.0
        + 0.5 * (a**2 * ez2 + r**2)
        + 0.5 * ((1 - a) ** 2 * ez2 + r**2)
    )
    se = float(per_point.std()) / math.sqrt(n)
    assert abs(float(per_point.mean()) - exact) < 4 * se
    assert a * s**2 > 30 * se  # the closed form would be off by a s^2: far outside
