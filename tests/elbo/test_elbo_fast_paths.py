"""The fast paths of the ELBO base give the values and gradients of the reference paths.

* the lean trace path (validation off) against the full path (validation on) and against
  Pyro's stock ``Trace_ELBO`` / ``TraceMeanField_ELBO`` on the same random draws;
* the analytic KL against the Monte Carlo estimate it replaces;
* the compiled path (``jit=True``) against eager mode, for every registered variant, and
  its cache: one compilation per input signature, none when the KL weight changes. These
  compile with the ``aot_eager`` backend (the same recorded graph and AOTAutograd
  backward, without inductor's seconds of C++ compilation per graph);
  ``tests/test_jit.py`` checks inductor itself and ``jit="auto"``.

No timing here: performance targets live in ``benchmarks/training.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyrocollapse.jit
from pyrocollapse.elbo import (
    ELBOS,
    LocalSite,
    PlainELBO,
    imq_kernel,
    latent_term,
    log_density_matrix,
    rbf_kernel,
)
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear

#: Options that make each registered variant differ from the plain ELBO.
OPTIONS: dict[str, dict] = {
    "annealed": {"schedule": Linear(4, start=0.2)},
    "beta": {"beta": 3.0},
    "freebits": {"free_bits": 0.3},
    "mi": {"alpha": 0.5},
    "infovae": {"alpha": 0.0, "lambda_": 10.0},
    "iwae": {"num_particles": 3},
    "betatc": {"alpha": 1.0, "beta": 4.0, "gamma": 1.0},
}


def data(n: int = 12, d: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).float()


def studentt_toy() -> tuple[Callable, Callable, torch.Tensor]:
    """Normal guide against a Student-t prior: no closed-form KL (Monte Carlo path)."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))

    def model(x):
        w = pyro.param("w", torch.full((3, 4), 0.2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.StudentT(3.0, torch.zeros(3), torch.ones(3)).to_event(1))
            pyro.sample("x", dist.Normal(z @ w, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.full((x.shape[0], 3), 0.3))
        scale = pyro.param(
            "scale", torch.full((x.shape[0], 3), 0.7), constraint=dist.constraints.positive
        )
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, x


def loss_and_grads(elbo, model, guide, x, *, seed: int = 5, validation: bool = False):
    """Loss and the gradient of every parameter in the store, from one seeded call."""
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(validation):
        loss = elbo.differentiable_loss(model, guide, x)
    names = sorted(pyro.get_param_store().keys())
    params = [pyro.param(k).unconstrained() for k in names]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), dict(zip(names, grads, strict=True))


def assert_grads_close(a: dict, b: dict, rtol: float = 1e-5) -> None:
    """Equal up to float32 rounding: elementwise within ``rtol`` of the tensor's scale."""
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            atol = rtol * max(1.0, float(b[k].abs().max()))
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def make_vae() -> MLPVAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return MLPVAE(10, 3, hidden=(8,), name="fastpaths")


# --------------------------------------------------------------------------------------
# Lean trace path
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("validation", [False, True])
def test_monte_carlo_kl_matches_stock_trace_elbo_loss_and_gradients(validation):
    model, guide, x = studentt_toy()
    ours = loss_and_grads(PlainELBO(), model, guide, x, validation=validation)
    stock = loss_and_grads(Trace_ELBO(), model, guide, x, validation=validation)
    assert ours[0] == pytest.approx(stock[0], rel=1e-6)
    assert_grads_close(ours[1], stock[1])


@pytest.mark.parametrize("validation", [False, True])
def test_analytic_kl_matches_stock_trace_mean_field(validation):
    vae = make_vae()
    x = data()
    ours = loss_and_grads(PlainELBO(), vae.model, vae.guide, x, validation=validation)
    stock = loss_and_grads(TraceMeanField_ELBO(), vae.model, vae.guide, x, validation=validation)
    assert ours[0] == pytest.approx(stock[0], rel=1e-6)
    assert_grads_close(ours[1], stock[1])


def test_analytic_kl_differs_from_monte_carlo_by_the_estimation_error_only():
    """On one trace, ELBO(analytic) - ELBO(MC) = KL_MC - KL_analytic, both per dimension,
    and the MC estimate averages to the analytic KL over many draws."""
    vae = make_vae()
    x = data()
    elbo = PlainELBO()
    pyro.set_rng_seed(3)
    with pyro.validation_enabled(False):
        (model_trace, guide_trace), *_ = list(elbo.particle_traces(vae.model, vae.guide, x))
    analytic = latent_term("z", guide_trace.nodes["z"], model_trace.nodes["z"])
    mc = latent_term("z", guide_trace.nodes["z"], model_trace.nodes["z"], closed_form=False)
    assert analytic.analytic and not mc.analytic
    q, z = guide_trace.nodes["z"]["fn"], guide_trace.nodes["z"]["value"]
    expected = q.base_dist.log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)
    torch.testing.assert_close(mc.kl_per_dim, expected)
    draws = q.base_dist.sample((20000,))
    mc_mean = (q.base_dist.log_prob(draws) - dist.Normal(0.0, 1.0).log_prob(draws)).mean(0)
    torch.testing.assert_close(analytic.kl_per_dim, mc_mean, atol=0.03, rtol=0.03)


@pytest.mark.parametrize("per_dim", [False, True])
def test_pairwise_normal_densities_match_torch_log_prob(per_dim):
    """The fast pairwise Gaussian log-densities of the minibatch estimators (used without
    validation) equal ``Normal.log_prob`` (used with validation), in float64 exactly."""
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(7, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(7, 3, generator=g, dtype=torch.float64) + 0.05
    q = dist.Normal(loc, scale).to_event(1)
    z = q.sample()
    site = LocalSite(
        "z",
        q,
        dist.Normal(0.0, 1.0).expand([3]).to_event(1),
        z,
        torch.ones(7, dtype=torch.bool),
        torch.ones(7, dtype=torch.float64),
    )
    with pyro.validation_enabled(False):
        fast = log_density_matrix(site, per_dim=per_dim)
    with pyro.validation_enabled(True):
        reference = log_density_matrix(site, per_dim=per_dim)
    assert fast.shape == ((7, 7, 3) if per_dim else (7, 7))
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ELBOS.names())
def test_lean_path_equals_validated_path(name):
    """Validation off (training path) and on (Pyro's full path) give the same numbers."""
    results = []
    for validation in (True, False):
        vae = make_vae()
        elbo = ELBOS.get(name)(**OPTIONS.get(name, {}))
        loss, grads = loss_and_grads(elbo, vae.model, vae.guide, data(), validation=validation)
        results.append((loss, grads, dict(elbo.last.components)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert_grads_close(results[0][1], results[1][1])
    assert results[0][2].keys() == results[1][2].keys()
    for k, v in results[0][2].items():
        assert v == pytest.approx(results[1][2][k], rel=1e-5, abs=1e-5), k


def test_components_are_floats_read_from_the_breakdown_tensors():
    vae = make_vae()
    elbo = PlainELBO(num_particles=3)
    pyro.set_rng_seed(4)
    elbo.loss(vae.model, vae.guide, data())
    ev = elbo.last
    c = ev.components
    assert all(type(v) is float for v in c.values())
    assert c["loss"] == pytest.approx(float(ev.loss), rel=1e-6)
    for k in ("elbo", "reconstruction", "kl", "kl/z"):
        mean = sum(float(v) for v in ev.values[k]) / 3
        assert c[k] == pytest.approx(mean, rel=1e-12)
    assert c["elbo"] == pytest.approx(c["reconstruction"] - c["kl"], rel=1e-6)
    assert c["num_data"] == 12.0 and c["kl_weight"] == 1.0
    assert ev.components is c  # materialised once


# --------------------------------------------------------------------------------------
# Compiled path
# --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fast_backend(monkeypatch):
    monkeypatch.setattr(pyrocollapse.jit, "BACKEND", "aot_eager")


def run_steps(name: str, jit: bool, steps: int = 4, x: torch.Tensor | None = None):
    """Losses, gradients and components of ``steps`` seeded steps of a fresh model."""
    vae = make_vae()
    x = data() if x is None else x
    elbo = ELBOS.get(name)(**OPTIONS.get(name, {}), jit=jit)
    out = []
    for i in range(steps):
        loss, grads = loss_and_grads(elbo, vae.model, vae.guide, x, seed=10 + i)
        out.append((loss, grads, dict(elbo.last.components), elbo.last.kl_per_dim))
        elbo.step()
    return out, elbo


# FactorVAE refuses jit=True (side effects in its evaluation; see tests/test_jit.py)
@pytest.mark.parametrize("name", [n for n in ELBOS.names() if ELBOS.get(n).compilable])
def test_jit_equals_eager_on_the_same_draws(name):
    eager, _ = run_steps(name, jit=False)
    compiled, elbo = run_steps(name, jit=True)
    assert elbo.compiled.compilations == 1  # steps 2-4 replayed the graph
    for (le, ge, ce, de), (lc, gc, cc, dc) in zip(eager, compiled, strict=True):
        assert lc == pytest.approx(le, rel=1e-5, abs=1e-5)
        assert_grads_close(gc, ge)
        assert cc.keys() == ce.keys()
        for k in ce:
            assert cc[k] == pytest.approx(ce[k], rel=1e-5, abs=1e-5), k
        assert de.keys() == dc.keys()
        for k in de:
            torch.testing.assert_close(dc[k], de[k], rtol=1e-5, atol=1e-5)


def test_changing_kl_weight_does_not_recompile_and_is_applied():
    """The annealing schedule reaches the compiled graph as an input tensor."""
    eager, _ = run_steps("annealed", jit=False, steps=6)
    compiled, elbo = run_steps("annealed", jit=True, steps=6)
    betas = [c[2]["kl_weight"] for c in compiled]
    assert len(set(betas)) == 5  # Linear(4, start=0.2): 0.2, 0.4, 0.6, 0.8, 1.0, 1.0
    assert elbo.compiled.compilations == 1 and len(elbo.compiled) == 1
    for (le, *_), (lc, *_) in zip(eager, compiled, strict=True):
        assert lc == pytest.approx(le, rel=1e-5)


def test_new_batch_shape_compiles_once_more():
    vae = make_vae()
    elbo = PlainELBO(jit=True)
    full, last = data(12), data(5, seed=3)
    with pyro.validation_enabled(False):
        for x in (full, full, last, full, last, last, full):
            elbo.differentiable_loss(vae.model, vae.guide, x)
    assert elbo.compiled.compilations == 2 and len(elbo.compiled) == 2
    # the smaller batch's graph gives the eager value
    pyro.set_rng_seed(7)
    compiled = float(elbo.loss(vae.model, vae.guide, last))
    pyro.set_rng_seed(7)
    eager = float(PlainELBO().loss(vae.model, vae.guide, last))
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_all_loss_methods_go_through_the_compiled_graph():
    vae = make_vae()
    x = data()
    elbo = PlainELBO(jit=True)
    reference = PlainELBO()
    elbo.loss(vae.model, vae.guide, x)  # compiles
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        a = elbo.loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(seed)
        b = float(elbo.differentiable_loss(vae.model, vae.guide, x).detach())
        pyro.set_rng_seed(seed)
        c = elbo.loss_and_grads(vae.model, vae.guide, x)
        pyro.set_rng_seed(seed)
        r = reference.loss(vae.model, vae.guide, x)
        assert a == pytest.approx(r, rel=1e-5) and b == pytest.approx(r, rel=1e-5)
        assert c == pytest.approx(r, rel=1e-5)
    assert elbo.compiled.compilations == 1
    assert elbo.last.terms == []  # compiled: no traces; breakdown() runs eagerly
    assert elbo.breakdown(vae.model, vae.guide, x)["z"].shape == (3,)


def test_replaced_parameters_recompile():
    x = data()
    elbo = PlainELBO(jit=True)
    make_vae()
    vae = MLPVAE(10, 3, hidden=(8,), name="fastpaths")
    elbo.loss(vae.model, vae.guide, x)
    elbo.loss(vae.model, vae.guide, x)
    assert elbo.compiled.compilations == 1
    pyro.clear_param_store()
    vae = MLPVAE(10, 3, hidden=(8,), name="fastpaths")
    pyro.set_rng_seed(3)
    compiled = elbo.loss(vae.model, vae.guide, x)
    assert elbo.compiled.compilations == 2
    pyro.set_rng_seed(3)
    assert compiled == pytest.approx(PlainELBO().loss(vae.model, vae.guide, x), rel=1e-5)


def test_jit_bad_input_errors():
    with pytest.raises(TypeError, match="jit must be True or False"):
        PlainELBO(jit=1)
    with pytest.raises(TypeError, match="jit must be True or False"):
        make_elbo_with_jit("mi", "yes")
    vae = make_vae()
    x = data()

    def model(x, extra):
        return vae.model(x)

    def guide(x, extra):
        return vae.guide(x)

    with pytest.raises(
        TypeError, match=r"argument #1 of type list is neither a tensor nor hashable"
    ):
        PlainELBO(jit=True).loss(model, guide, x, [1, 2])


def make_elbo_with_jit(name: str, jit: object):
    return ELBOS.get(name)(jit=jit)


def test_untraceable_program_raises_naming_the_objective():
    """A trainable tensor outside Pyro's parameter store cannot become a graph input."""
    hidden = torch.nn.Parameter(torch.ones(3))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z * hidden, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(3) + hidden, 1.0).to_event(1))

    with pytest.raises(RuntimeError, match=r"BetaELBO\(jit=True\) could not compile"):
        ELBOS.get("beta")(2.0, jit=True).loss(model, guide, torch.zeros(4, 3))
    assert math.isfinite(ELBOS.get("beta")(2.0).loss(model, guide, torch.zeros(4, 3)))


@pytest.mark.parametrize("kernel", [rbf_kernel, imq_kernel])
def test_kernels_from_matrix_products_match_the_broadcast_distance(kernel):
    """The kernels' squared distances come from one float64 matrix product; they equal
    the broadcast difference ``sum_d (x_id - y_jd)^2``."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 4, generator=g) * 3.0, torch.randn(6, 4, generator=g) + 5.0
    dist2 = (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)
    expected = torch.exp(-dist2 / 2.5) if kernel is rbf_kernel else 2.5 / (2.5 + dist2)
    torch.testing.assert_close(kernel(x, y, 2.5), expected, rtol=1e-6, atol=1e-7)
    assert bool((kernel(x, x, 2.5).diagonal() == 1.0).all())
