"""Contract suite and closed-form tests for every ELBO variant in ``pyrocollapse.elbo``.

Each registered objective has one :class:`Variant` fixture; the generic tests (loss paths
agree, special value equals Pyro, gradient equals the closed form, subsampling, scale,
``ELBOModule``/``SVI``, ``History`` columns, command line) run on all of them. Adding a
variant means adding one fixture, and ``test_every_registered_variant_has_a_fixture``
fails until it is there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyrocollapse.cli import main
from pyrocollapse.elbo import (
    ELBOS,
    IWAEELBO,
    AnnealedELBO,
    BaseELBO,
    BetaELBO,
    BetaTCELBO,
    FreeBitsELBO,
    InfoVAEELBO,
    LocalSite,
    MIRegularizedELBO,
    PlainELBO,
    log_aggregate_posterior,
    mmd,
    total_correlation_decomposition,
)
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Constant, Cyclical, Linear
from pyrocollapse.train import fit


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How the contract tests build and read one objective."""

    name: str
    #: The setting at which the objective is the plain ELBO.
    special: Callable[[], BaseELBO]
    #: Whether ``special`` uses the analytic KL (equals TraceMeanField_ELBO) or the Monte
    #: Carlo one (equals Trace_ELBO).
    analytic: bool
    #: KL weight ``beta`` and every extra term switched off.
    weighted: Callable[[float], BaseELBO]
    #: A typical setting, extras on.
    typical: Callable[[], BaseELBO]
    extras: tuple[str, ...]
    weights: tuple[str, ...]
    cli_options: tuple[str, ...]

    def __repr__(self) -> str:
        return self.name


VARIANTS = [
    Variant(
        "elbo",
        PlainELBO,
        True,
        lambda beta: PlainELBO(),
        PlainELBO,
        (),
        ("kl_weight",),
        ("num_particles=2",),
    ),
    Variant(
        "annealed",
        lambda: AnnealedELBO(1.0),
        True,
        lambda beta: AnnealedELBO(Constant(beta)),
        lambda: AnnealedELBO(Linear(4)),
        (),
        ("kl_weight",),
        (),
    ),
    Variant(
        "beta",
        lambda: BetaELBO(1.0),
        True,
        BetaELBO,
        lambda: BetaELBO(2.5),
        (),
        ("kl_weight",),
        ("beta=4",),
    ),
    Variant(
        "freebits",
        lambda: FreeBitsELBO(0.0),
        True,
        lambda beta: FreeBitsELBO(0.0, kl_weight=beta),
        lambda: FreeBitsELBO(0.3, kl_weight=Linear(4)),
        ("kl_floored", "kl_floored/z"),
        ("kl_weight", "free_bits"),
        ("free_bits=0.2", "per=site"),
    ),
    Variant(
        "mi",
        lambda: MIRegularizedELBO(0.0),
        True,
        lambda beta: MIRegularizedELBO(0.0, kl_weight=beta),
        lambda: MIRegularizedELBO(1.0),
        ("mi_batch", "mi_batch/z"),
        ("kl_weight", "mi_weight"),
        ("alpha=0.5", "estimator=stratified"),
    ),
    Variant(
        "infovae",
        lambda: InfoVAEELBO(0.0, 1.0),
        True,
        lambda beta: InfoVAEELBO(0.0, 1.0, kl_weight=beta),
        lambda: InfoVAEELBO(0.5, 10.0, kernel="rbf"),
        ("mmd", "mmd/z"),
        ("kl_weight", "mmd_weight"),
        ("alpha=0.5", "lambda_=10", "kernel=rbf"),
    ),
    Variant(
        "iwae",
        lambda: IWAEELBO(1),
        False,
        lambda beta: IWAEELBO(1, kl_weight=beta),
        lambda: IWAEELBO(4),
        ("iwae",),
        ("kl_weight",),
        ("num_particles=3",),
    ),
    Variant(
        "betatc",
        lambda: BetaTCELBO(1.0, 1.0, 1.0),
        False,
        lambda beta: BetaTCELBO(1.0, 1.0, 1.0, kl_weight=beta),
        lambda: BetaTCELBO(1.0, 4.0, 1.0),
        ("index_code_mi", "total_correlation", "dimwise_kl", "total_correlation/z"),
        ("kl_weight", "mi_weight", "tc_weight", "dimwise_kl_weight"),
        ("beta=4", "estimator=mws"),
    ),
]


def toy(prior: str = "normal", n: int = 6, d: int = 3, x_dim: int = 4):
    """A Normal guide (one learnable posterior per point) and a model whose reconstruction
    depends on the sum of z; safe under vectorised particles and subsampling."""
    x = torch.randn(n, x_dim)

    def model(x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            if prior == "normal":
                p = dist.Normal(torch.zeros(d), torch.ones(d))
            else:  # no closed-form KL from a Normal
                p = dist.StudentT(3.0, torch.zeros(d), torch.ones(d))
            z = pyro.sample("z", p.to_event(1))
            loc = z.sum(-1, keepdim=True).expand(*z.shape[:-1], x_dim)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[idx])

    def guide(x, subsample_size=None):
        loc = pyro.param("loc", torch.linspace(-1.0, 1.0, x.shape[0] * d).reshape(-1, d))
        scale = pyro.param(
            "scale",
            torch.linspace(0.4, 0.9, x.shape[0] * d).reshape(-1, d),
            constraint=dist.constraints.positive,
        )
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))

    return model, guide, x


def seeded(fn: Callable, seed: int = 3):
    pyro.set_rng_seed(seed)
    return fn()


def param_grads() -> dict[str, torch.Tensor]:
    out = {}
    for name in ("loc", "scale"):
        u = pyro.param(name).unconstrained()
        out[name] = u.grad.clone()
        u.grad = None
    return out


# --------------------------------------------------------------------------------------
# The contract, for every variant
# --------------------------------------------------------------------------------------
def test_every_registered_variant_has_a_fixture():
    # FactorVAE (registered by pyrocollapse.elbo too) has its own tests/elbo/test_factorvae.py
    assert sorted(v.name for v in VARIANTS) == sorted(n for n in ELBOS.names() if n != "factorvae")
    for v in VARIANTS:
        assert type(v.special()) is ELBOS.get(v.name)


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
@pytest.mark.parametrize("setting", ["special", "typical"])
def test_loss_differentiable_loss_and_loss_and_grads_agree(variant, setting):
    model, guide, x = toy()
    make = getattr(variant, setting)
    a = seeded(lambda: make().loss(model, guide, x))
    elbo_b = make()
    b = seeded(lambda: elbo_b.differentiable_loss(model, guide, x))
    b.backward()
    grads_b = param_grads()
    c = seeded(lambda: make().loss_and_grads(model, guide, x))
    grads_c = param_grads()
    assert a == pytest.approx(float(b.detach()), rel=1e-6, abs=1e-6)
    assert a == pytest.approx(c, rel=1e-6, abs=1e-6)
    for k in grads_b:
        torch.testing.assert_close(grads_b[k], grads_c[k])
        assert grads_b[k].abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
@pytest.mark.parametrize("prior", ["normal", "studentt"])
def test_special_value_equals_pyro_elbo_on_the_same_trace(variant, prior):
    model, guide, x = toy(prior)
    # a Student-t prior has no closed-form KL: every variant then uses the MC estimate
    reference = TraceMeanField_ELBO() if variant.analytic and prior == "normal" else Trace_ELBO()
    ours = seeded(lambda: variant.special().loss(model, guide, x))
    pyros = seeded(lambda: reference.loss(model, guide, x))
    assert ours == pytest.approx(pyros, rel=1e-5)


def conjugate(n: int = 6, d: int = 2, s: float = 0.7):
    """z_i ~ N(0, I), x_i | z_i ~ N(z_i, s^2 I); guide N(m_i, exp(log_s_i)) per point."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, d, generator=g) * math.sqrt(1 + s**2)
    m0 = 0.5 * torch.randn(n, d, generator=g)
    ls0 = 0.3 * torch.randn(n, d, generator=g) - 0.3

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    def guide(x):
        m = pyro.param("loc", m0.clone())
        ls = pyro.param("scale", ls0.clone())  # log-scale, unconstrained
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, ls.exp()).to_event(1))

    def analytic_grad(beta: float) -> dict[str, torch.Tensor]:
        """Gradient of -(E_q log p(x|z) - beta KL(q || p)) in closed form."""
        m = m0.clone().requires_grad_()
        ls = ls0.clone().requires_grad_()
        v = (2 * ls).exp()
        rec = -0.5 * math.log(2 * math.pi * s**2) - ((x - m) ** 2 + v) / (2 * s**2)
        kl = 0.5 * (v + m**2 - 1 - 2 * ls)
        (-(rec - beta * kl).sum()).backward()
        return {"loc": m.grad, "scale": ls.grad}

    return model, guide, x, analytic_grad


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_gradient_matches_closed_form_on_conjugate_normal_model(variant):
    # The average of R independent reparameterised gradients must match the analytic
    # gradient of the weighted ELBO: every coordinate within 4.5 standard errors
    # (24 coordinates: a false alarm has probability < 2e-4 under normality).
    beta = 1.0 if variant.name == "elbo" else 0.3
    model, guide, x, analytic_grad = conjugate()
    elbo = variant.weighted(beta)
    pyro.set_rng_seed(1)
    reps = 300
    grads: dict[str, list[torch.Tensor]] = {"loc": [], "scale": []}
    for _ in range(reps):
        elbo.loss_and_grads(model, guide, x)
        for k, g in param_grads().items():
            grads[k].append(g)
    expected = analytic_grad(beta)
    for k, g in grads.items():
        g = torch.stack(g)
        se = g.std(0) / math.sqrt(reps)
        z = (g.mean(0) - expected[k]) / se
        assert z.abs().max() < 4.5, (k, z)


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_subsampled_plate_scales_like_pyro(variant):
    model, guide, x = toy(n=8)
    reference = TraceMeanField_ELBO() if variant.analytic else Trace_ELBO()
    elbo = variant.special()
    ours = seeded(lambda: elbo.loss(model, guide, x, subsample_size=3))
    pyros = seeded(lambda: reference.loss(model, guide, x, subsample_size=3))
    assert ours == pytest.approx(pyros, rel=1e-5)
    assert elbo.last.components["num_data"] == pytest.approx(8.0)
    typical = variant.typical()
    assert math.isfinite(seeded(lambda: typical.loss(model, guide, x, subsample_size=3)))
    assert typical.last.components["num_data"] == pytest.approx(8.0)


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_poutine_scale_multiplies_loss_and_extras(variant):
    model, guide, x = toy()
    make = variant.typical
    if variant.name == "betatc":  # "stratified" reads N from the scale; "batch" does not
        make = lambda: BetaTCELBO(1.0, 4.0, 1.0, estimator="batch")  # noqa: E731
    base, scaled = make(), make()
    a = seeded(lambda: base.loss(model, guide, x))
    b = seeded(lambda: scaled.loss(poutine.scale(model, 2.5), poutine.scale(guide, 2.5), x))
    assert b == pytest.approx(2.5 * a, rel=1e-5)
    for key in variant.extras:
        assert scaled.last.components[key] == pytest.approx(
            2.5 * base.last.components[key], rel=1e-4, abs=1e-5
        )


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_trains_under_svi_and_elbo_module(variant):
    pyro.set_rng_seed(0)
    vae = MLPVAE(10, 2, hidden=(8,))
    x = (torch.rand(16, 10) > 0.5).float()
    elbo = variant.typical()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=elbo)
    losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses) and elbo.step_count == 3
    module = elbo(vae.model, vae.guide)
    assert isinstance(module, pyro.infer.elbo.ELBOModule)
    module(x).backward()
    assert all(p.grad is not None for p in vae.encoder.parameters())
    assert any(p.grad.abs().sum() > 0 for p in vae.decoder.parameters())


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_fit_history_records_components_and_weights(variant, digits):
    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 3, hidden=(16,))
    elbo = variant.typical()
    hist = fit(
        vae.model,
        vae.guide,
        digits[:96],
        loss=elbo,
        epochs=2,
        batch_size=32,
        seed=0,
        progress=False,
        monitor=None,
    )
    df = hist.to_dataframe()
    for col in ("loss", "elbo", "reconstruction", "kl", "kl/z", *variant.extras, *variant.weights):
        assert col in df.columns, col
        assert np.isfinite(df[col]).all(), col
    for k, v in elbo.weights.items():  # weights are recorded as they are, not per point
        assert df[k].iloc[-1] == pytest.approx(v)
    np.testing.assert_allclose(df["elbo"], df["reconstruction"] - df["kl"], rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_command_line_accepts_variant_with_options(variant, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--dataset", "ppca", "--dataset-option", "n=200", "--elbo", variant.name]
    for opt in variant.cli_options:
        args += ["--elbo-option", opt]
    args += ["--epochs", "1", "--latent-dim", "2", "--model-option", "hidden=8"]
    args += ["--batch-size", "64", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == 1
    for col in (*variant.extras, *variant.weights):
        assert col in hist.columns, col


# --------------------------------------------------------------------------------------
# Free bits
# --------------------------------------------------------------------------------------
def free_bits_model():
    """Reconstruction depends on z_0 only; dimension 1 has KL 0.0076 nats per point,
    dimension 2 has 0.818."""
    n = 5
    x = torch.randn(n, 2)
    loc0 = torch.tensor([0.5, 0.1, 1.0]).expand(n, 3).clone()
    scale0 = torch.tensor([0.8, 0.95, 0.5]).expand(n, 3).clone()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Normal(z[..., :1].expand(*z.shape[:-1], 2), 1.0).to_event(1), obs=x
            )

    def guide(x):
        loc = pyro.param("loc", loc0)
        scale = pyro.param("scale", scale0, constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    kl = 0.5 * (scale0**2 + loc0**2 - 1 - torch.log(scale0**2))
    return model, guide, x, kl


def test_free_bits_dimension_below_floor_gets_no_kl_gradient():
    model, guide, x, kl = free_bits_model()
    assert kl[0, 1] < 0.1 < kl[0, 2]
    elbo = FreeBitsELBO(0.1, kl_weight=0.5)
    elbo.loss_and_grads(model, guide, x)
    grads = param_grads()
    # dimension 1: below the floor, and the reconstruction ignores it: exactly zero
    assert torch.equal(grads["loc"][:, 1], torch.zeros(5))
    assert torch.equal(grads["scale"][:, 1], torch.zeros(5))
    # dimension 2: above the floor: exactly beta times the analytic KL gradient
    loc = torch.full((5,), 1.0, requires_grad=True)
    raw = torch.full((5,), 0.5).log().requires_grad_()  # positive constraint: exp
    (0.5 * 0.5 * ((2 * raw).exp() + loc**2 - 1 - 2 * raw)).sum().backward()
    torch.testing.assert_close(grads["loc"][:, 2], loc.grad)
    torch.testing.assert_close(grads["scale"][:, 2], raw.grad)
    # the floored KL: max(lambda N, sum_n KL_nd) per dimension
    expected = torch.clamp(kl.sum(0), min=0.1 * 5).sum()
    assert elbo.last.components["kl_floored"] == pytest.approx(float(expected), rel=1e-5)


def test_free_bits_per_site_floors_the_total():
    model, guide, x, kl = free_bits_model()
    total = float(kl.sum(1).mean())  # ~1.0 nats per point
    FreeBitsELBO(total + 0.5, per="site").loss_and_grads(model, guide, x)
    g_below = param_grads()
    assert torch.equal(g_below["loc"][:, 1:], torch.zeros(5, 2))
    FreeBitsELBO(total - 0.5, per="site").loss_and_grads(model, guide, x)
    g_above = param_grads()
    assert (g_above["loc"][:, 1:].abs() > 0).all()


def test_free_bits_per_dimension_floors_a_non_factorised_site_as_one_group(caplog):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), 0.5 * torch.eye(2)))

    x = torch.randn(4, 2)
    per_dim = FreeBitsELBO(0.1)
    with caplog.at_level("WARNING", logger="pyrocollapse"):
        pyro.set_rng_seed(0)
        a = per_dim.loss(model, guide, x)
    assert per_dim.per_site_fallback == ["z"]
    assert "latent site 'z' has no KL per dimension" in caplog.text
    pyro.set_rng_seed(0)
    assert a == pytest.approx(FreeBitsELBO(0.1, per="site").loss(model, guide, x))


# --------------------------------------------------------------------------------------
# Aggregate posterior and mutual information
# --------------------------------------------------------------------------------------
def test_aggregate_posterior_weights_are_exact():
    log_q = torch.zeros(4, 4)  # every q(z_i | x_j) = 1
    assert torch.equal(log_aggregate_posterior(log_q), torch.zeros(4))
    torch.testing.assert_close(
        log_aggregate_posterior(log_q, dataset_size=10.0, estimator="stratified"), torch.zeros(4)
    )
    torch.testing.assert_close(
        log_aggregate_posterior(log_q, dataset_size=10.0, estimator="mws"),
        torch.full((4,), -math.log(10.0)),
    )
    log_q = torch.randn(4, 4)
    # no subsampling (N = M): stratified is the batch estimator
    torch.testing.assert_close(
        log_aggregate_posterior(log_q, dataset_size=4.0, estimator="stratified"),
        log_aggregate_posterior(log_q),
    )
    # masked rows are left out of the mixture
    mask = torch.tensor([True, False, True, True])
    keep = mask.nonzero().squeeze(-1)
    torch.testing.assert_close(
        log_aggregate_posterior(log_q, mask=mask)[keep],
        log_aggregate_posterior(log_q[keep][:, keep]),
    )
    with pytest.raises(ValueError, match="dataset_size must be >= the 4 rows"):
        log_aggregate_posterior(log_q, dataset_size=2.0, estimator="mws")
    with pytest.raises(ValueError, match="estimator must be one of 'batch', 'stratified', 'mws'"):
        log_aggregate_posterior(log_q, estimator="mss")


def test_stratified_estimator_is_unbiased_for_the_aggregate_posterior():
    # a data set of N densities q(z | x_n) at a fixed z drawn from x_0; batches hold x_0
    # and M - 1 others drawn uniformly without replacement
    g = torch.Generator().manual_seed(0)
    n, m, trials = 20, 5, 20000
    a = torch.rand(n, generator=g, dtype=torch.float64) * 2
    others = torch.rand(trials, n - 1, generator=g).argsort(-1)[:, : m - 1] + 1
    rows = torch.cat([torch.zeros(trials, 1, dtype=torch.long), others], 1)  # (T, M)
    # trials along the trailing (per-dimension) axis: log_q[i, j, t] = log q(z_0 | x_rows[t, j])
    log_q = a.log()[rows].T.unsqueeze(0).expand(m, m, trials).float()
    est = log_aggregate_posterior(log_q, dataset_size=float(n), estimator="stratified")[0]
    se = est.exp().std() / math.sqrt(trials)
    assert abs(float(est.exp().mean() - a.mean())) < 4 * se
    mws = log_aggregate_posterior(log_q, dataset_size=float(n), estimator="mws")[0]
    assert float(mws.exp().mean()) < 0.5 * float(a.mean())  # MWS is biased low


@pytest.fixture
def lg():
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    s = torch.tensor([0.5, 0.8, 1.0])
    sigma = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 2.0]])
    return LinearGaussian(A, s, sigma)


def test_minibatch_mi_matches_closed_form_for_linear_gaussian_encoder(lg):
    # I(x; z) = 0.5 log det(A Sigma A^T + S) - 0.5 log det S = 1.096 nats; with 2000
    # points the estimate's spread is ~0.03 nats; the mean of 3 batches is within 0.05
    estimates = []
    for seed in range(3):
        x = lg.sample_data(2000, seed=seed)
        elbo = MIRegularizedELBO(1.0)
        seeded(lambda elbo=elbo, x=x: elbo.loss(lg.model, lg.guide, x), seed)
        c = elbo.last.components
        estimates.append(c["mi_batch/z"] / c["num_data"])
    assert np.mean(estimates) == pytest.approx(lg.mi(), abs=0.05)


def separated_site(b: int) -> LocalSite:
    """Posteriors far apart: q(z_i | x_j) ~ 0 for i != j."""
    loc = torch.arange(b, dtype=torch.float32).unsqueeze(-1) * 100.0
    q = dist.Normal(loc, 0.1).to_event(1)
    z = q.sample()
    return LocalSite(
        "z",
        q,
        dist.Normal(0.0, 1.0).expand([b, 1]).to_event(1),
        z,
        torch.ones(b, dtype=torch.bool),
        torch.ones(b),
    )


def test_batch_mi_estimate_saturates_at_log_batch_size():
    from pyrocollapse.elbo import minibatch_mutual_information

    rows = minibatch_mutual_information(separated_site(16))
    torch.testing.assert_close(rows, torch.full((16,), math.log(16)))


def test_mi_regularised_loss_is_weighted_elbo_plus_alpha_mi():
    model, guide, x = toy()
    elbo = MIRegularizedELBO(0.7, kl_weight=0.4)
    loss = elbo.loss(model, guide, x)
    c = elbo.last.components
    assert loss == pytest.approx(
        -(c["reconstruction"] - 0.4 * c["kl"]) - 0.7 * c["mi_batch"], rel=1e-5
    )
    assert c["mi_batch"] / c["num_data"] <= math.log(6) + 1e-6
    assert c["mi_weight"] == 0.7 and c["kl_weight"] == 0.4


# --------------------------------------------------------------------------------------
# InfoVAE and MMD
# --------------------------------------------------------------------------------------
def test_rbf_mmd_matches_gaussian_closed_form():
    # k(x, y) = exp(-|x - y|^2 / C); for u ~ N(delta, v I) in D dims,
    # E exp(-|u|^2 / C) = (1 + 2 v / C)^(-D/2) exp(-|delta|^2 / (C + 2 v))
    d, c, s1, s2 = 2, 4.0, 1.0, 0.6
    mu = torch.tensor([0.8, -0.3])
    kxx = (1 + 4 * s1**2 / c) ** (-d / 2)
    kyy = (1 + 4 * s2**2 / c) ** (-d / 2)
    v = s1**2 + s2**2
    kxy = (1 + 2 * v / c) ** (-d / 2) * math.exp(-float(mu @ mu) / (c + 2 * v))
    exact = kxx + kyy - 2 * kxy
    g = torch.Generator().manual_seed(0)
    reps = [
        float(
            mmd(
                s1 * torch.randn(100, d, generator=g),
                mu + s2 * torch.randn(100, d, generator=g),
                kernel="rbf",
                bandwidth=c,
            )
        )
        for _ in range(150)
    ]
    se = np.std(reps) / math.sqrt(len(reps))
    assert abs(np.mean(reps) - exact) < 4 * se
    assert exact > 0.05  # the test separates the distributions


def test_imq_mmd_by_hand():
    # within x: one pair, k = 1/(1+1) = 0.5; y has one point: V-statistic k(y, y) = 1;
    # across: k(0, 2) = 1/5, k(1, 2) = 1/2
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0]])
    assert float(mmd(x, y, kernel="imq", bandwidth=1.0)) == pytest.approx(0.5 + 1.0 - 2 * 0.35)
    assert float(mmd(x, x, kernel="imq", bandwidth=1.0, unbiased=False)) == pytest.approx(0.0)


def test_unbiased_mmd_of_equal_distributions_is_zero_on_average():
    g = torch.Generator().manual_seed(1)
    reps = [
        float(mmd(torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)))
        for _ in range(300)
    ]
    assert abs(np.mean(reps)) < 4 * np.std(reps) / math.sqrt(300)


def test_infovae_loss_weights_kl_and_mmd():
    model, guide, x = toy()
    elbo = InfoVAEELBO(0.25, 3.0, kl_weight=0.8)
    loss = elbo.loss(model, guide, x)
    c = elbo.last.components
    assert c["kl_weight"] == pytest.approx(0.75 * 0.8) and c["mmd_weight"] == pytest.approx(2.25)
    expected = -(c["reconstruction"] - 0.75 * 0.8 * c["kl"]) + 2.25 * c["mmd"]
    assert loss == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------
# IWAE
# --------------------------------------------------------------------------------------
def conjugate_for_iwae(
    n: int = 8, d: int = 2, s: float = 0.5, shrink: float = 0.8, inflate: float = 1.5
):
    """Conjugate model with exact log p(x); the guide is a deliberately imperfect
    posterior (mean shrunk by ``shrink``, scale inflated by ``inflate``)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g) * math.sqrt(1 + s**2)
    post_loc = x / (1 + s**2)
    post_scale = math.sqrt(s**2 / (1 + s**2))

    def model(x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x[idx])

    def model_observed_outside_plate(x):
        # the same joint density, with x declared as one event outside the plate
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, s).to_event(2), obs=x)

    def guide(x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(shrink * post_loc[idx], inflate * post_scale).to_event(1))

    exact = float(dist.Normal(0.0, math.sqrt(1 + s**2)).log_prob(x).sum())
    return model, model_observed_outside_plate, guide, x, exact


def bound(elbo, model, guide, x, reps: int, *args) -> tuple[float, float]:
    values = torch.tensor([-elbo.loss(model, guide, x, *args) for _ in range(reps)])
    return float(values.mean()), float(values.std() / math.sqrt(reps))


def test_iwae_bound_rises_with_particles_towards_log_evidence():
    model, _, guide, x, exact = conjugate_for_iwae(shrink=0.6, inflate=1.6)
    pyro.set_rng_seed(0)
    runs = [bound(IWAEELBO(k), model, guide, x, 40) for k in (1, 3, 4096)]
    for (lo, se_lo), (hi, se_hi) in itertools.pairwise(runs):
        assert hi - lo > 2 * (se_lo + se_hi)  # rises with K, beyond the noise
    for mean, se in runs:
        assert mean < exact + 4 * se  # a lower bound on log p(x)
    assert runs[0][0] < exact - 3.0
    assert runs[-1][0] == pytest.approx(exact, abs=0.05)


def test_renyi_weighs_whole_traces_unless_every_site_shares_the_data_plate():
    # Pyro's RenyiELBO(alpha=0) keeps only the plates common to every site: with x
    # declared outside the data plate it weighs whole traces, log mean_k prod_b w_kb,
    # a much looser bound than the per-data-point IWAE of the same joint density (on
    # the all-in-plate model it coincides with ours in expectation).
    model, model_outside, guide, x, exact = conjugate_for_iwae(shrink=0.3, inflate=2.0)
    pyro.set_rng_seed(0)
    k, reps = 20, 30
    ours, se_ours = bound(IWAEELBO(k), model, guide, x, reps)
    whole, se_whole = bound(RenyiELBO(alpha=0, num_particles=k), model_outside, guide, x, reps)
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
    same, se_same = bound(renyi, model, guide, x, reps)
    assert whole < ours - 5.0 and ours - whole > 5 * (se_ours + se_whole)
    assert abs(same - ours) < 4 * (se_same + se_ours)
    assert ours < exact + 4 * se_ours
    with pytest.raises(ValueError, match="site 'x' is not inside the data plate"):
        IWAEELBO(k).loss(model_outside, guide, x)


def test_iwae_scales_outside_the_log_mean_exp_where_renyi_scales_inside():
    model, _, guide, x, exact = conjugate_for_iwae(shrink=0.3, inflate=2.0)
    # poutine.scale multiplies our bound exactly ...
    a = seeded(lambda: IWAEELBO(20).loss(model, guide, x))
    b = seeded(lambda: IWAEELBO(20).loss(poutine.scale(model, 4.0), poutine.scale(guide, 4.0), x))
    assert b == pytest.approx(4.0 * a, rel=1e-5)
    # ... so with a subsampled batch of 2 of 8 points it stays a bound on log p(x) on
    # average, while RenyiELBO, which exponentiates the scaled log-weights, overshoots
    pyro.set_rng_seed(0)
    ours, se = bound(IWAEELBO(100), model, guide, x, 100, 2)
    renyi = RenyiELBO(alpha=0, num_particles=100, vectorize_particles=True)
    overshoot, _ = bound(renyi, model, guide, x, 100, 2)
    assert ours < exact + 4 * se
    assert overshoot > exact + 5.0


def test_iwae_refuses_global_latents_and_score_function_sites():
    # one particle keeps the hand-written shapes simple; the checks are the same for K
    x = torch.randn(4, 2)

    def model_global(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0], 2]).to_event(1), obs=x)

    def guide_global(x):
        pyro.sample("mu", dist.Normal(0.1, 0.5))

    with pytest.raises(ValueError, match="site 'mu' is not inside the data plate"):
        IWAEELBO(1).loss(model_global, guide_global, x)

    def model_discrete(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample(
                "x", dist.Normal(c.unsqueeze(-1), 1.0).expand([x.shape[0], 2]).to_event(1), obs=x
            )

    def guide_discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="reparameterised guide sites; 'c' \\(Bernoulli\\)"):
        IWAEELBO(1).loss(model_discrete, guide_discrete, x)


# --------------------------------------------------------------------------------------
# beta-TCVAE
# --------------------------------------------------------------------------------------
def test_tc_decomposition_matches_gaussian_closed_forms(lg):
    # q(z) = N(0, C), C = A Sigma A^T + S: index-code MI = I(x; z), TC = 0.5 (sum log C_dd
    # - log det C), dimension-wise KL = 0.5 sum (C_dd - 1 - log C_dd); the mean of three
    # batches of 2000 points (spread per batch ~0.03 / 0.007 / 0.015 nats)
    cov = lg._asa + torch.diag(lg.s**2)
    diag = torch.diagonal(cov)
    tc = float(0.5 * (diag.log().sum() - torch.logdet(cov)))
    dw = float(0.5 * (diag - 1 - diag.log()).sum())
    parts = {"index_code_mi": [], "total_correlation": [], "dimwise_kl": []}
    for seed in range(3):
        x = lg.sample_data(2000, seed=seed)
        elbo = BetaTCELBO(1.0, 1.0, 1.0)
        seeded(lambda elbo=elbo, x=x: elbo.loss(lg.model, lg.guide, x), seed)
        c = elbo.last.components
        for k in parts:
            parts[k].append(c[k] / c["num_data"])
    assert np.mean(parts["index_code_mi"]) == pytest.approx(lg.mi(), abs=0.05)
    assert np.mean(parts["total_correlation"]) == pytest.approx(tc, abs=0.015)
    assert np.mean(parts["dimwise_kl"]) == pytest.approx(dw, abs=0.03)


@pytest.mark.parametrize("estimator", ["stratified", "mws", "batch"])
def test_tc_terms_add_up_to_the_monte_carlo_kl(estimator):
    b = 7
    q = dist.Normal(torch.randn(b, 3), torch.rand(b, 3) + 0.3).to_event(1)
    z = q.sample()
    p = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    site = LocalSite("z", q, p, z, torch.ones(b, dtype=torch.bool), torch.full((b,), 3.0))
    rows = total_correlation_decomposition(site, estimator)
    torch.testing.assert_close(sum(rows.values()), q.log_prob(z) - p.log_prob(z))


def test_beta_tc_loss_weights_its_three_terms():
    model, guide, x = toy()
    elbo = BetaTCELBO(0.5, 6.0, 2.0, kl_weight=0.9)
    loss = elbo.loss(model, guide, x)
    c = elbo.last.components
    penalty = 0.5 * c["index_code_mi"] + 6.0 * c["total_correlation"] + 2.0 * c["dimwise_kl"]
    assert loss == pytest.approx(-(c["reconstruction"] - 0.9 * penalty), rel=1e-5)
    assert elbo.hyperparameters()["beta"] == 6.0 and elbo.beta == 0.9


# --------------------------------------------------------------------------------------
# Linear VAE (Lucas et al. 2019)
# --------------------------------------------------------------------------------------
class LinearVAE:
    """q(z|x) = N(V x + b, diag(s^2)), p(z) = N(0, I), p(x|z) = N(W z + mu, sigma^2 I)."""

    def __init__(self, x_dim: int, k: int, sigma2: float, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(0.1 * torch.randn(x_dim, k, generator=g))
        self.mu = torch.nn.Parameter(torch.zeros(x_dim))
        self.V = torch.nn.Parameter(0.1 * torch.randn(k, x_dim, generator=g))
        self.b = torch.nn.Parameter(torch.zeros(k))
        self.log_s = torch.nn.Parameter(torch.zeros(k))
        self.sigma, self.k = math.sqrt(sigma2), k

    def params(self) -> list[torch.Tensor]:
        return [self.W, self.mu, self.V, self.b, self.log_s]

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.V.T + self.b
            pyro.sample("z", dist.Normal(loc, self.log_s.exp().expand_as(loc)).to_event(1))

    def set_optimum(self, x: torch.Tensor, beta: float) -> None:
        """The stationary point of Lucas et al.: pPCA with noise beta sigma^2 and the
        exact posterior of that model as the encoder."""
        noise = beta * self.sigma**2
        lam, u = sample_spectrum(x)
        lam, u = lam[: self.k], u[:, : self.k]
        w = u * torch.sqrt(torch.clamp(lam - noise, min=0.0))
        m_diag = (w**2).sum(0) + noise  # W^T W + noise I is diagonal
        with torch.no_grad():
            self.W.copy_(w)
            self.mu.copy_(x.mean(0))
            self.V.copy_(w.T / m_diag.unsqueeze(-1))
            self.b.copy_(-self.V @ x.mean(0))
            self.log_s.copy_(0.5 * torch.log(noise / m_diag))


def sample_spectrum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of the sample covariance (1/n)."""
    xc = (x - x.mean(0)).double()
    lam, u = torch.linalg.eigh(xc.T @ xc / len(x))
    return lam.flip(0).float(), u.flip(1).float()


def lucas_kl(lam: torch.Tensor, beta: float, sigma2: float) -> torch.Tensor:
    """KL per dimension at the optimum: 0.5 log(lambda / (beta sigma^2)) if lambda >
    beta sigma^2, else 0 (collapsed)."""
    return 0.5 * torch.log(torch.clamp(lam / (beta * sigma2), min=1.0))


@pytest.fixture(scope="module")
def ppca():
    from pyrocollapse.data import make_ppca

    # population covariance eigenvalues (6, 3, 0.8, 0.09 x 3); the tests use the sample's
    return make_ppca(1000, spectrum=(6.0, 3.0, 0.8), noise=0.3, input_dim=6, seed=0).data


def test_linear_vae_optimum_has_lucas_kl_and_is_stationary(ppca):
    sigma2, beta = 0.5, 2.0  # beta sigma^2 = 1: dimensions 1, 2 active, 3 collapsed
    x = ppca[:400]
    lam, _ = sample_spectrum(x)
    vae = LinearVAE(6, 3, sigma2)
    vae.set_optimum(x, beta)
    elbo = BetaELBO(beta)
    kl = elbo.breakdown(vae.model, vae.guide, x)["z"] / len(x)
    torch.testing.assert_close(kl, lucas_kl(lam[:3], beta, sigma2), atol=2e-4, rtol=1e-4)
    assert kl[2] < 1e-5  # eigenvalue 0.81 <= beta sigma^2: collapsed
    # the expected gradient vanishes at the optimum (each of the 51 coordinates within
    # 4.5 standard errors of 0 over 100 draws) but not at a perturbed point
    pyro.set_rng_seed(0)

    def mean_grad_z(perturb: bool) -> float:
        if perturb:
            with torch.no_grad():
                vae.W[:, 0] *= 0.8
        grads = []
        for _ in range(100):
            for p in vae.params():
                p.grad = None
            elbo.differentiable_loss(vae.model, vae.guide, x).backward()
            grads.append(torch.cat([p.grad.flatten() for p in vae.params()]) / len(x))
        g = torch.stack(grads)
        return float((g.mean(0) / (g.std(0) / math.sqrt(100) + 1e-8)).abs().max())

    assert mean_grad_z(perturb=False) < 4.5
    assert mean_grad_z(perturb=True) > 20


@pytest.mark.parametrize("beta", [2.0, 0.5])
def test_linear_vae_trained_with_beta_elbo_collapses_iff_eigenvalue_below_beta_sigma2(ppca, beta):
    # Lucas et al. (2019): dimension d collapses iff lambda_d <= beta sigma^2, and an
    # active one has KL = 0.5 ln(lambda_d / (beta sigma^2)) at the optimum
    sigma2 = 0.5
    lam, _ = sample_spectrum(ppca)
    pyro.set_rng_seed(0)
    vae = LinearVAE(6, 3, sigma2)
    elbo = BetaELBO(beta)
    opt = torch.optim.Adam(vae.params(), lr=0.05)
    steps = 1500
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, ppca).backward()
        opt.step()
        sched.step()
    kl = (elbo.breakdown(vae.model, vae.guide, ppca)["z"] / len(ppca)).sort(descending=True).values
    expected = lucas_kl(lam[:3], beta, sigma2)
    collapsed = lam[:3] <= beta * sigma2
    assert collapsed.tolist() == ([False, False, True] if beta == 2.0 else [False] * 3)
    assert (kl[collapsed] < 0.01).all()
    torch.testing.assert_close(kl[~collapsed], expected[~collapsed], atol=0.03, rtol=0.03)


# --------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: BetaELBO(-0.5), ValueError, "beta must be >= 0.0, got -0.5"),
        (lambda: FreeBitsELBO(-0.1), ValueError, "free_bits must be >= 0.0, got -0.1"),
        (
            lambda: FreeBitsELBO(0.1, per="latent"),
            ValueError,
            "per must be one of 'dimension', 'site'; got 'latent'",
        ),
        (lambda: AnnealedELBO(Cyclical(period=0)), ValueError, "period must be >= 1, got 0"),
        (lambda: MIRegularizedELBO(float("inf")), ValueError, "alpha must be finite, got inf"),
        (lambda: MIRegularizedELBO(float("nan")), ValueError, "alpha must be finite, got nan"),
        (lambda: MIRegularizedELBO(-1.0), ValueError, "alpha must be >= 0.0, got -1.0"),
        (
            lambda: MIRegularizedELBO(1.0, estimator="mss"),
            ValueError,
            "estimator must be one of 'batch', 'stratified', 'mws'; got 'mss'",
        ),
        (lambda: InfoVAEELBO(1.5, 1.0), ValueError, "alpha must be <= 1.0, got 1.5"),
        (lambda: InfoVAEELBO(0.0, -1.0), ValueError, "lambda_ must be >= 0.0, got -1.0"),
        (
            lambda: InfoVAEELBO(0.0, 0.5),
            ValueError,
            r"alpha \+ lambda_ - 1 \(the MMD weight\) must be >= 0",
        ),
        (
            lambda: InfoVAEELBO(0.0, 10.0, kernel="laplace"),
            ValueError,
            "kernel must be one of 'imq', 'rbf'; got 'laplace'",
        ),
        (
            lambda: InfoVAEELBO(0.0, 10.0, bandwidth=0.0),
            ValueError,
            "bandwidth must be > 0.0, got 0.0",
        ),
        (lambda: IWAEELBO(0), ValueError, "num_particles must be >= 1, got 0"),
        (lambda: IWAEELBO(2.5), TypeError, "num_particles must be an int, got float 2.5"),
        (lambda: BetaTCELBO(1.0, float("inf"), 1.0), ValueError, "beta must be finite, got inf"),
        (lambda: BetaTCELBO(1.0, 1.0, -2.0), ValueError, "gamma must be >= 0.0, got -2.0"),
        (lambda: BetaTCELBO(1.0, "6", 1.0), TypeError, "beta must be a real number, got str '6'"),
        (lambda: FreeBitsELBO(0.1, kl_weight="warmup"), TypeError, "schedule must be a Schedule"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
def test_hyperparameters_are_json_serialisable(variant):
    import json

    spec = variant.typical().hyperparameters()
    assert spec["name"] == variant.name and spec["class"] == type(variant.typical()).__name__
    assert json.loads(json.dumps(spec)) == spec
