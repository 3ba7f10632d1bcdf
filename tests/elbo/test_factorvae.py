"""FactorVAE's discriminator estimate of the total correlation against closed forms."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse.factorvae import FactorVAEELBO, permute_dims


def _program(x: torch.Tensor, correlated: bool):
    """Pyro-style model/guide pair whose aggregate posterior q(z) is a known Gaussian.

    q(z | x_i) = N(mu_i, 0.1^2 I) with mu_i = (x_i0, x_i0) (correlated) or (x_i0, x_i1);
    x ~ N(0, I), so q(z) = N(0, [[1.01, c], [c, 1.01]]) with c = 1 or 0.
    """

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        mu = torch.stack([x[:, 0], x[:, 0] if correlated else x[:, 1]], dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mu, 0.1).to_event(1))

    return model, guide


@pytest.mark.parametrize("correlated", [True, False])
def test_discriminator_learns_the_gaussian_total_correlation(correlated: bool) -> None:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    rho = 1.0 / 1.01 if correlated else 0.0
    expected = -0.5 * math.log(1 - rho**2)  # TC of a bivariate Gaussian: 1.96 or 0 nats
    elbo = FactorVAEELBO(gamma=1.0, hidden=(64, 64), discriminator_lr=2e-3)
    estimates = []
    for step in range(1500):
        x = torch.randn(256, 2)
        model, guide = _program(x, correlated)
        elbo.differentiable_loss(model, guide, x)
        if step >= 1300:
            estimates.append(elbo.last.components["total_correlation"] / 256)
    estimate = sum(estimates) / len(estimates)
    assert estimate == pytest.approx(expected, abs=0.35)
    if not correlated:
        # a discriminator that cannot tell the draws apart: cross-entropy 2 log 2
        assert elbo.last.components["discriminator_loss"] == pytest.approx(2 * math.log(2), abs=0.1)


def test_the_loss_is_the_elbo_minus_gamma_tc_and_only_gradient_calls_train() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 2)
    model, guide = _program(x, True)
    elbo = FactorVAEELBO(gamma=3.0, hidden=(8,))
    elbo.differentiable_loss(model, guide, x)  # builds the discriminator
    before = [p.clone() for p in elbo.discriminators["z"].parameters()]
    with torch.no_grad():
        torch.manual_seed(2)
        loss = elbo.loss(model, guide, x)
    assert all(torch.equal(a, b) for a, b in zip(before, elbo.discriminators["z"].parameters()))
    c = elbo.last.components
    assert loss == pytest.approx(-(c["elbo"] - 3.0 * c["total_correlation"]), rel=1e-5)
    torch.manual_seed(2)
    elbo.differentiable_loss(model, guide, x)
    assert not all(torch.equal(a, b) for a, b in zip(before, elbo.discriminators["z"].parameters()))


def test_vae_gradient_does_not_reach_the_discriminator() -> None:
    torch.manual_seed(3)
    pyro.clear_param_store()
    x = torch.randn(32, 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        w = pyro.param("w", torch.eye(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ w, 0.1).to_event(1))

    elbo = FactorVAEELBO(gamma=2.0, hidden=(8,))
    elbo.differentiable_loss(model, guide, x)
    net = elbo.discriminators["z"]
    for p in net.parameters():
        p.grad = None
    loss = elbo.differentiable_loss(model, guide, x)
    for p in net.parameters():
        p.grad = None  # the discriminator's own step set and consumed them
    loss.backward()  # after the discriminator's in-place step: its graph holds copies
    assert all(p.grad is None for p in net.parameters())
    assert pyro.param("w").grad is not None and pyro.param("w").grad.abs().sum() > 0


def test_state_dict_round_trip_restores_the_discriminator() -> None:
    torch.manual_seed(4)
    x = torch.randn(32, 2)
    model, guide = _program(x, True)
    a = FactorVAEELBO(hidden=(8,))
    a.differentiable_loss(model, guide, x)
    b = FactorVAEELBO(hidden=(8,))
    b.load_state_dict(a.state_dict())
    b.differentiable_loss(model, guide, x)  # restored when the site is first built ...
    c = FactorVAEELBO(hidden=(8,))
    c.load_state_dict(a.state_dict())
    torch.manual_seed(5)
    z = torch.randn(5, 2)
    c.discriminator("z", 2, z)  # ... or built directly
    assert torch.allclose(c.discriminators["z"](z), a.discriminators["z"](z))


def test_permute_dims_keeps_each_column_and_breaks_the_rows() -> None:
    torch.manual_seed(6)
    z = torch.randn(200, 3)
    p = permute_dims(z)
    for d in range(3):
        assert torch.equal(p[:, d].sort().values, z[:, d].sort().values)
    assert not torch.equal(p, z)
    with pytest.raises(ValueError, match=r"shape \(B, D\)"):
        permute_dims(torch.randn(3))


def test_factorvae_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="cannot be compiled"):
        FactorVAEELBO(jit=True)
    with pytest.raises(ValueError, match="gamma"):
        FactorVAEELBO(gamma=-1.0)
    with pytest.raises(ValueError, match="discriminator_lr"):
        FactorVAEELBO(discriminator_lr=0.0)
    x = torch.randn(1, 2)
    model, guide = _program(x, True)
    with pytest.raises(ValueError, match="at least 2 rows of site 'z'"):
        FactorVAEELBO().differentiable_loss(model, guide, x)
