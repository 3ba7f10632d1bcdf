"""Importance sampling's run plan and paths (issue 19): ``iw_log_likelihood`` and
``posterior_mean_space`` give the same estimator however the K draws of a point are split
over vectorised runs, on the per-draw path of programs that do not broadcast, and against
closed forms (pPCA), 1-d quadrature (a Bernoulli MLP VAE) and Pyro's own importance
sampler."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import PPCA
from pyro import poutine
from pyro.infer import Importance

from models import MLPVAE
from pyrocollapse.diagnostics import importance, iw_log_likelihood, posterior_mean_space


@pytest.fixture
def ppca() -> PPCA:
    g = torch.Generator().manual_seed(0)
    return PPCA(torch.randn(6, 2, generator=g), torch.randn(6, generator=g), 0.5)


@pytest.mark.parametrize("num_samples", [1, 2, 10, 100, 1000, 2048, 2049, 5000, 20000])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 256, 100_000])
@pytest.mark.parametrize("rows", [None, 2**14])  # CPU default, accelerators
def test_run_plan_covers_every_draw_in_even_runs_of_bounded_rows(num_samples, batch_size, rows):
    points, draws = importance._run_plan(num_samples, batch_size, rows)
    rows = importance._IW_ROWS if rows is None else rows
    assert sum(draws) == num_samples and max(draws) - min(draws) <= 1 and min(draws) >= 1
    assert min(2, batch_size) <= points <= batch_size
    assert points * max(draws) <= max(rows, points)
    if 2 * num_samples <= rows and batch_size >= 2:
        assert draws == [num_samples]  # all draws of a point in one run: one encoder pass
    if num_samples * batch_size <= rows:
        assert points == batch_size


@pytest.mark.parametrize("rows", [7, 64, 2**14])
def test_exact_guide_gives_log_p_x_however_the_draws_are_split(ppca, monkeypatch, rows):
    # with q = p(z|x) every log weight is log p(x): exact per point for any run plan
    monkeypatch.setattr(importance, "_IW_ROWS", rows)
    x = ppca.sample(50)
    iw = iw_log_likelihood(ppca.model, ppca.exact_guide(), x, num_samples=9, batch_size=16)
    assert iw.vectorised and iw.per_point.shape == (50,)
    np.testing.assert_allclose(iw.per_point, ppca.log_marginal(x).numpy(), atol=2e-4)
    np.testing.assert_allclose(iw.elbo_per_point, iw.per_point, atol=1e-5)


@pytest.mark.parametrize("rows", [256, 2**12])
def test_split_draws_converge_to_log_p_x_and_give_the_elbo(ppca, monkeypatch, rows):
    # 1000 draws per point in runs of 125 (rows=256) or in one run: the same estimator
    monkeypatch.setattr(importance, "_IW_ROWS", rows)
    x = ppca.sample(200)
    exact = float(ppca.log_marginal(x).mean())
    elbo = float(ppca.mean_field_elbo(x, shift=0.3).mean())
    pyro.set_rng_seed(0)
    iw = iw_log_likelihood(
        ppca.model, ppca.mean_field_guide(shift=0.3), x, num_samples=1000, batch_size=64
    )
    assert exact - 0.03 < iw.mean <= exact + 0.01
    assert iw.elbo == pytest.approx(elbo, abs=0.02)
    assert iw.gap > 0


def _reshaping_model(ppca: PPCA):
    """pPCA whose model reshapes z to (N, D): a particle dimension breaks it."""
    W, mu = ppca.W.float(), ppca.mu.float()

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            z = z.reshape(x.shape[0], 2)
            pyro.sample("x", dist.Normal(z @ W.T + mu, ppca.sigma).to_event(1), obs=x)

    return model


def test_programs_that_do_not_broadcast_take_the_per_draw_path(ppca):
    x = ppca.sample(40)
    model = _reshaping_model(ppca)
    iw = iw_log_likelihood(model, ppca.exact_guide(), x, num_samples=6, batch_size=16)
    assert not iw.vectorised
    np.testing.assert_allclose(iw.per_point, ppca.log_marginal(x).numpy(), atol=2e-4)
    # a poor guide: the per-draw path is the same estimator as the vectorised one
    guide = ppca.mean_field_guide(shift=0.3)
    pyro.set_rng_seed(1)
    slow = iw_log_likelihood(model, guide, x, num_samples=50, batch_size=16)
    pyro.set_rng_seed(2)
    fast = iw_log_likelihood(ppca.model, guide, x, num_samples=50, batch_size=16)
    assert fast.vectorised and not slow.vectorised
    diff = slow.per_point - fast.per_point
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(len(diff)) + 1e-3
    err = slow.elbo_per_point - ppca.mean_field_elbo(x, shift=0.3).numpy()  # Monte Carlo error
    assert abs(err.mean()) < 4 * err.std(ddof=1) / math.sqrt(len(err))


@pytest.mark.parametrize("rows", [256, 2**12])
def test_posterior_means_from_split_runs_match_the_exact_posterior(ppca, monkeypatch, rows):
    # self-normalised weights accumulated over several runs (rows=256: 16 runs of 125)
    monkeypatch.setattr(importance, "_IW_ROWS", rows)
    x = ppca.sample(100)
    pyro.set_rng_seed(0)
    guide = ppca.mean_field_guide(shift=0.3, scale_factor=1.5)  # wide: a high ESS
    res = posterior_mean_space(ppca.model, guide, x, num_samples=2000, batch_size=64)
    mean, _ = ppca.posterior(x)
    np.testing.assert_allclose(res.approximate, mean.numpy() + 0.3, atol=1e-5)
    err = res.model - mean.numpy()  # measured: |err| 0.008 on average, 0.04 at most
    assert np.abs(err).mean() < 0.015 and np.abs(err).max() < 0.08
    assert np.abs(err.mean(0)).max() < 0.005  # the guide's shift of 0.3 is corrected


def _bernoulli_vae() -> tuple[MLPVAE, torch.Tensor]:
    pyro.set_rng_seed(0)
    vae = MLPVAE(8, 1, hidden=(16,))
    vae.eval()
    with torch.no_grad():  # q(z|x) scale softplus(1.5) = 1.7, wider than p(z|x): light tails
        last = vae.encoder[-1]
        last.weight[1].zero_()
        last.bias[1] = 1.5
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((30, 8), 0.4), generator=g)
    return vae, x


@torch.no_grad()
def _quadrature_log_p_x(vae: MLPVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x_n) = log int p(x_n | z) N(z; 0, 1) dz on a fine grid (1-d latent)."""
    z = torch.linspace(-9.0, 9.0, 18001, dtype=torch.float64)
    logits = vae.decoder(z[:, None].float()).double()  # (G, D)
    log_lik = x.double() @ logits.T - torch.nn.functional.softplus(logits).sum(-1)  # (N, G)
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_lik + log_prior, 1) + math.log(float(z[1] - z[0]))


def test_bernoulli_vae_iw_estimate_matches_quadrature_and_pyros_importance():
    vae, x = _bernoulli_vae()
    exact = _quadrature_log_p_x(vae, x).numpy()
    pyro.set_rng_seed(0)
    iw = iw_log_likelihood(vae.model, vae.guide, x, num_samples=20_000)
    assert iw.vectorised  # measured: per-point error sd 0.004, mean -0.0004 nats
    np.testing.assert_allclose(iw.per_point, exact, atol=0.03)
    assert abs(iw.mean - exact.mean()) < 0.005
    # Pyro's importance sampler, one point at a time, with the same K: same estimator
    pyro.set_rng_seed(1)
    k, x, exact = 100, x[:15], exact[:15]
    ours = iw_log_likelihood(vae.model, vae.guide, x, num_samples=k).per_point
    theirs = []
    for n in range(len(x)):
        sampler = Importance(vae.model, vae.guide, num_samples=k).run(x[n : n + 1])
        theirs.append(float(sampler.get_log_normalizer()))
    diff = ours - np.array(theirs)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(len(diff)) + 1e-3
    np.testing.assert_allclose(theirs, exact, atol=0.25)  # K = 100: sd about 0.06 per point


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_bernoulli_log_density_equals_the_distributions(dtype, masked):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 4, 6, generator=g)  # (draws, points, features)
    x = torch.bernoulli(torch.full((4, 6), 0.3), generator=g).to(dtype)
    mask = torch.tensor([True, False, True, True]) if masked else True

    def model() -> None:
        with pyro.plate("data", 4), poutine.mask(mask=mask):
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    site = poutine.trace(model).get_trace().nodes["x"]
    expected = site["fn"].log_prob(x.float())
    if masked:
        expected = expected.masked_fill(~mask, 0.0)
    got = importance._bernoulli_log_prob(site)
    assert got is not None and got.shape == (5, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    # probs-parameterised or mismatched shapes: left to the generic path
    site_probs = {**site, "fn": dist.Bernoulli(probs=torch.sigmoid(logits)).to_event(1)}
    assert importance._bernoulli_log_prob(site_probs) is None
