"""Per-dimension marginals p(z_d) of priors without closed-form marginals (normalising
flows): exact for flows that act on each coordinate alone, a Monte Carlo estimate from the
joint density otherwise (importance sampling along the grid, lines through prior draws),
checked against closed forms and numerical quadrature."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro.nn import DenseNN
from torch.distributions import constraints

from pyrocollapse.diagnostics import kl_per_dimension
from pyrocollapse.diagnostics._site_draws import SiteDraw
from pyrocollapse.diagnostics.densities import (
    _densities_from_draw,
    _elementwise_steps,
    _PriorMarginals,
)

F64 = torch.float64
BATCH = 8  # points per chunk: the prior has batch shape (BATCH,)


def _prior_marginals(p: dist.Distribution) -> _PriorMarginals:
    """Prior marginals from one chunk's draw of ``p`` (batch ``(BATCH,)``)."""
    return _PriorMarginals([SiteDraw(None, p, p.sample(), False, False)], "z")


def _std_normal(d: int, dtype: torch.dtype = torch.float32) -> dist.Distribution:
    return dist.Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)).to_event(1)


def _normal_kl(loc_q, scale_q, loc_p, scale_p):
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) elementwise."""
    return (
        torch.log(scale_p / scale_q) + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2) - 0.5
    )


# a dense linear flow z = b + L x, x ~ N(0, I): strongly correlated Gaussian marginals
LINEAR_L = torch.tensor([[1.0, 0.0, 0.0], [1.6, 1.2, 0.0], [-0.9, 0.5, 0.25]])
LINEAR_B = torch.tensor([0.5, -1.0, 2.0])
LINEAR_SD = (LINEAR_L @ LINEAR_L.T).diagonal().sqrt()


def _linear_flow() -> dist.Distribution:
    return dist.TransformedDistribution(_std_normal(3), [T.LowerCholeskyAffine(LINEAR_B, LINEAR_L)])


# --------------------------------------------------------------------------------------
# Exact marginals
# --------------------------------------------------------------------------------------
def test_an_elementwise_affine_flow_has_exact_marginals():
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    scale = torch.tensor([0.3, 2.0, 5.0], dtype=F64)
    p = dist.TransformedDistribution(
        _std_normal(3, F64), [T.AffineTransform(loc, scale, event_dim=1)]
    ).expand([BATCH])
    pm = _prior_marginals(p)
    assert pm.mode == "exact" and not pm.estimated
    z = (loc + scale * torch.linspace(-8, 8, 33, dtype=F64)[:, None]).unsqueeze(1)  # (33, 1, 3)
    lp = pm(p, z)
    torch.testing.assert_close(
        lp, dist.Normal(loc, scale).log_prob(z).expand_as(lp), atol=1e-6, rtol=0
    )


def _spline(d: int, seed: int) -> T.Spline:
    torch.manual_seed(seed)  # Pyro's default spline parameters are random: a wiggly map
    return T.Spline(d, count_bins=6, bound=3.0)


@pytest.mark.parametrize(
    "transforms",
    [
        pytest.param(lambda: [_spline(3, 1)], id="spline"),
        pytest.param(
            lambda: [
                _spline(3, 2),
                T.Permute(torch.tensor([2, 0, 1])),
                T.AffineTransform(
                    torch.tensor([0.3, 0.0, -1.0]), torch.tensor([2.0, 0.5, 1.0]), event_dim=1
                ),
                _spline(3, 3),
            ],
            id="spline-permute-affine-spline",
        ),
        pytest.param(
            lambda: [
                T.IndependentTransform(
                    T.ComposeTransform(
                        [
                            T.AffineTransform(0.5, torch.tensor([1.0, 2.0, 0.7])),
                            T.SigmoidTransform(),
                        ]
                    ),
                    1,
                )
            ],
            id="independent-compose-sigmoid",
        ),
        pytest.param(
            lambda: [T.ExpTransform(), T.ExpTransform().inv, T.TanhTransform()], id="inverse-tanh"
        ),
    ],
)
def test_elementwise_flows_marginals_are_exact(transforms):
    # over a factorised base an elementwise flow's density is the product of its marginals:
    # the log marginals must add up to the joint log density at every point
    p = dist.TransformedDistribution(_std_normal(3), transforms()).expand([BATCH])
    pm = _prior_marginals(p)
    assert not pm.estimated
    z = p.sample((50,))  # (50, BATCH, 3)
    with torch.no_grad():
        lp = pm(p, z)
        torch.testing.assert_close(lp.sum(-1), p.log_prob(z), atol=1e-4, rtol=1e-5)


def test_an_elementwise_flow_over_a_correlated_base_follows_its_permutations():
    # base N(m, S) with correlations, then z = (a + s x)[perm]: z_i is the Normal of base
    # coordinate perm[i]; a wrong reordering would pair the wrong means and scales
    cov = torch.tensor([[1.0, 0.8, 0.3], [0.8, 2.0, -0.5], [0.3, -0.5, 0.5]])
    m = torch.tensor([0.0, 1.0, -1.0])
    a, s = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.5, 3.0])
    perm = torch.tensor([1, 2, 0])
    flow = [T.AffineTransform(a, s, event_dim=1), T.Permute(perm)]
    p = dist.TransformedDistribution(dist.MultivariateNormal(m, cov), flow).expand([BATCH])
    pm = _prior_marginals(p)
    assert not pm.estimated
    loc, scale = (a + s * m)[perm], (s * cov.diagonal().sqrt())[perm]
    z = loc + scale * torch.linspace(-5, 5, 11)[:, None, None]  # (11, 1, 3)
    lp = pm(p, z)
    torch.testing.assert_close(
        lp, dist.Normal(loc, scale).log_prob(z).expand_as(lp), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.affine_autoregressive(3),
        lambda: T.spline_coupling(3),
        lambda: T.affine_coupling(3),
        lambda: T.Planar(3),
        lambda: T.Radial(3),
        lambda: T.Householder(3),
        lambda: T.LowerCholeskyAffine(torch.zeros(3), torch.eye(3)),
        lambda: T.ComposeTransform([T.Spline(3), T.affine_autoregressive(3)]),
    ],
)
def test_transforms_that_mix_coordinates_are_not_taken_for_elementwise(make):
    assert _elementwise_steps(make()) is None


def test_a_one_dimensional_flow_uses_its_density():
    p = dist.TransformedDistribution(
        _std_normal(1), [T.LowerCholeskyAffine(torch.tensor([0.5]), torch.tensor([[2.0]]))]
    ).expand([BATCH])
    pm = _prior_marginals(p)
    assert not pm.estimated
    z = torch.linspace(-20, 20, 9)[:, None, None]
    torch.testing.assert_close(pm(p, z), dist.Normal(0.5, 2.0).log_prob(z).expand(9, BATCH, 1))


# --------------------------------------------------------------------------------------
# Importance-sampling estimates
# --------------------------------------------------------------------------------------
def test_a_dense_linear_flow_gets_its_gaussian_marginals():
    p = _linear_flow().expand([BATCH])
    pm = _prior_marginals(p)
    assert pm.estimated
    # on the grid (to 6 sd), beyond it (12 sd: the table goes on) and far beyond (30 sd)
    k = torch.cat([torch.linspace(-6, 6, 25), torch.tensor([-12.0, 12.0, -30.0, 30.0])])
    z = LINEAR_B + LINEAR_SD * k[:, None]
    with torch.no_grad():
        err = pm(p, z.unsqueeze(1)).squeeze(1) - dist.Normal(LINEAR_B, LINEAR_SD).log_prob(z)
    assert err.abs().max() < 0.01, err


def test_the_densities_for_the_overlay_plot_use_the_estimated_prior_marginals():
    p = _linear_flow().expand([BATCH])
    loc = LINEAR_B + LINEAR_SD * torch.randn(BATCH, 3)
    q = dist.Normal(loc, 0.3 * LINEAR_SD.expand(BATCH, 3)).to_event(1)
    draw = SiteDraw(q, p, q.sample(), False, False)
    out = _densities_from_draw(draw, 3, 41, _PriorMarginals([draw], "z"))
    assert out is not None and out.prior.shape == (3, 41) and out.posterior.shape == (3, 3, 41)
    grid = torch.as_tensor(out.grid).T  # (G, D)
    truth = dist.Normal(LINEAR_B.double(), LINEAR_SD.double()).log_prob(grid).exp().T
    np.testing.assert_allclose(out.prior, truth.numpy(), rtol=0.01, atol=1e-12)


def test_a_prior_that_varies_over_points_without_closed_form_marginals_is_refused():
    loc = torch.randn(BATCH, 3)
    p = dist.TransformedDistribution(
        dist.Normal(loc, 1.0).to_event(1), [T.LowerCholeskyAffine(LINEAR_B, LINEAR_L)]
    )
    with pytest.raises(NotImplementedError, match="depends on other latents"):
        _prior_marginals(p)


class _Banana(T.Transform):
    """A smooth coupling layer on 2-vectors: v -> v exp(a tanh w) + b sin w + c w^2 / (1 +
    w^2 / 10), w passed through (``swap`` picks which coordinate is w). Its conditionals
    shift, bend and change scale with w, so p(z_d) has no closed form and the tails of
    p(u | z_d) lie far from any Gaussian regression line."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, a: float, b: float, c: float, swap: bool) -> None:
        super().__init__(cache_size=0)
        self.a, self.b, self.c, self.swap = a, b, c, swap

    def _parts(self, x):
        return (x[..., 1], x[..., 0]) if self.swap else (x[..., 0], x[..., 1])

    def _join(self, w, v):
        return torch.stack((v, w) if self.swap else (w, v), -1)

    def _shift(self, w):
        return self.b * torch.sin(w) + self.c * w * w / (1 + 0.1 * w * w)

    def _call(self, x):
        w, v = self._parts(x)
        return self._join(w, v * torch.exp(self.a * torch.tanh(w)) + self._shift(w))

    def _inverse(self, y):
        w, v = self._parts(y)
        return self._join(w, (v - self._shift(w)) * torch.exp(-self.a * torch.tanh(w)))

    def log_abs_det_jacobian(self, x, y):
        return self.a * torch.tanh(self._parts(x)[0])


def _banana_flow() -> dist.Distribution:
    layers = [_Banana(0.5, 1.0, 0.3, False), _Banana(0.4, 0.8, 0.3, True)]
    return dist.TransformedDistribution(_std_normal(2, F64), layers)


def _quadrature_log_marginal(p: dist.Distribution, d: int, t: torch.Tensor) -> torch.Tensor:
    """log p(z_d = t) by the trapezoidal rule over the other coordinate on [-40, 40]
    (spacing 0.01: far below the conditionals' scales, which the range covers)."""
    u = torch.linspace(-40.0, 40.0, 8001, dtype=F64)
    log_w = torch.full_like(u, math.log(float(u[1] - u[0])))
    log_w[[0, -1]] -= math.log(2)
    out = []
    for block in t.split(64):
        z = torch.empty(len(block), len(u), 2, dtype=F64)
        z[..., d], z[..., 1 - d] = block[:, None], u
        out.append(torch.logsumexp(p.log_prob(z) + log_w, 1))
    return torch.cat(out)


@pytest.fixture(scope="module")
def banana():
    """The banana flow's prior marginals and moments, from a fixed seed."""
    torch.manual_seed(0)
    p = _banana_flow().expand([BATCH])
    with torch.no_grad():
        pm = _prior_marginals(p)
        s = p.sample((5000,)).reshape(-1, 2)
    return p, pm, s.mean(0), s.std(0)


def test_a_nonlinear_flow_gets_its_marginals_from_the_centre_to_six_sd(banana):
    p, pm, mu, sd = banana
    assert pm.estimated
    k = torch.tensor([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6], dtype=F64)
    with torch.no_grad():
        for d in range(2):
            z = mu.expand(len(k), 2).clone()
            z[:, d] = mu[d] + sd[d] * k
            err = pm(p, z.unsqueeze(1))[:, 0, d] - _quadrature_log_marginal(
                _banana_flow(), d, z[:, d]
            )
            assert err.abs().max() < 0.05, (d, err)


@pytest.mark.parametrize("offset", [-6.0, -4.5, 4.5, 6.0])
def test_the_marginal_kl_of_a_posterior_far_out_in_a_nonlinear_flow_prior(banana, offset):
    # KL(q(z_d) || p(z_d)) for q = N(mu_d + offset sd_d, (sd_d / 2)^2): the same Monte
    # Carlo draws of q against the estimated and the quadrature log p(z_d)
    p, pm, mu, sd = banana
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for d in range(2):
            q = dist.Normal(mu[d] + offset * sd[d], 0.5 * sd[d])
            t = q.loc + q.scale * torch.randn(256, generator=g, dtype=F64)
            z = mu.expand(len(t), 2).clone()
            z[:, d] = t
            log_q = q.log_prob(t)
            kl_est = (log_q - pm(p, z.unsqueeze(1))[:, 0, d]).mean()
            kl_true = (log_q - _quadrature_log_marginal(_banana_flow(), d, t)).mean()
            assert abs(float(kl_est - kl_true)) < 0.1, (d, float(kl_est), float(kl_true))
            assert float(kl_true) > 5  # far out: the old kernel estimate's regime


def _rough_coupling_flow(dim: int) -> dist.Distribution:
    """N(0, I) through one Pyro spline coupling layer whose first half passes through
    (``identity=True``) and whose second half is a rational spline conditioned on the
    first by a network of fixed random weights: the joint log density wiggles by about a
    nat in every coordinate of the second half, and the first half's marginals are
    exactly N(0, 1)."""
    torch.manual_seed(0)
    half, bins = dim // 2, 8
    net = DenseNN(
        half,
        [8 * dim],
        param_dims=[(dim - half) * bins] * 2 + [(dim - half) * (bins - 1), (dim - half) * bins],
    )
    with torch.no_grad():
        net.layers[-1].weight.mul_(0.3)
    layer = T.SplineCoupling(dim, half, net, bins, 3.0, identity=True)
    return dist.TransformedDistribution(_std_normal(dim), [layer])


def test_a_rough_coupling_flow_gets_its_exact_standard_normal_marginals():
    # importance sampling alone feels the wiggles of p(t, u) in u; the lines through
    # prior draws (p(t | u) averaged over u) do not
    dim = 6
    p = _rough_coupling_flow(dim).expand([BATCH])
    torch.manual_seed(10)
    with torch.no_grad():
        pm = _prior_marginals(p)
        assert pm.estimated and bool(pm.use_lines.all())
        z = torch.zeros(49, dim)
        z[:, : dim // 2] = torch.linspace(-6, 6, 49)[:, None]
        err = pm(p, z.unsqueeze(1))[:, 0, : dim // 2] - dist.Normal(0.0, 1.0).log_prob(
            z[:, : dim // 2]
        )
        assert err.abs().max() < 0.15 and err.abs().mean() < 0.05, err
        # KL(N(5, 0.5^2) || N(0, 1)) per pass-through dimension, by Monte Carlo
        zq = torch.zeros(512, dim)
        zq[:, : dim // 2] = 5 + 0.5 * torch.randn(
            512, dim // 2, generator=torch.Generator().manual_seed(0)
        )
        truth = dist.Normal(0.0, 1.0).log_prob(zq[:, : dim // 2])
        gap = (truth - pm(p, zq.unsqueeze(1))[:, 0, : dim // 2]).mean(0)
        assert gap.abs().max() < 0.1, gap


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flow", ["elementwise", "dense"])
def test_kl_per_dimension_against_a_flow_prior_with_the_posterior_five_sd_out(flow):
    # the guide puts q(z_d | x) about 5 prior sd out in every dimension; the prior's
    # marginals are Gaussian, so the per-dimension KL has a closed form
    if flow == "dense":
        prior_loc, prior_sd = LINEAR_B, LINEAR_SD
        transforms = [T.LowerCholeskyAffine(LINEAR_B, LINEAR_L)]
    else:
        prior_loc, prior_sd = torch.tensor([1.0, -1.0, 0.0]), torch.tensor([2.0, 0.5, 1.0])
        transforms = [T.AffineTransform(prior_loc, prior_sd, event_dim=1)]
    sign = torch.tensor([1.0, -1.0, 1.0])
    q_sd = 0.4 * prior_sd

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.TransformedDistribution(_std_normal(3), transforms))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = prior_loc + prior_sd * sign * (5.0 + 0.5 * x.tanh())
            pyro.sample("z", dist.Normal(loc, q_sd.expand_as(loc)).to_event(1))

    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    kl = kl_per_dimension(model, guide, x, num_samples=64)
    loc = prior_loc + prior_sd * sign * (5.0 + 0.5 * x.tanh())
    exact = _normal_kl(loc, q_sd, prior_loc, prior_sd).mean(0)
    assert kl.estimator.startswith("monte_carlo") and kl.estimator.endswith("_marginal")
    np.testing.assert_allclose(kl.per_dim, exact.numpy(), atol=0.1)
