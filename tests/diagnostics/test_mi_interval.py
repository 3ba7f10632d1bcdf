"""The interval of :func:`mutual_information` for the population I_q(x; z): InfoNCE
(``total``) below, leave-one-out (``upper``) above, delta-method standard errors; and
saturation of the estimator at log N."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse.diagnostics import mutual_information
from pyrocollapse.diagnostics._aggregate_posterior import _AggregatePosterior
from pyrocollapse.diagnostics.aggregate import MutualInformation

A = torch.tensor([[1.0, 0.4], [-0.3, 0.8]])


class LinearGaussianEncoder:
    """x ~ N(0, I_k), q(z|x) = N(W x, diag(s^2)), p(z) = N(0, I); the likelihood does not
    enter I_q, whose population value is 0.5 log det(W W^T + diag s^2) - 0.5 sum log s^2."""

    def __init__(self, w: torch.Tensor, scale: float) -> None:
        self.w, self.scale = w, scale

    @property
    def mi(self) -> float:
        d = self.w.shape[0]
        cov = self.w @ self.w.T + self.scale**2 * torch.eye(d)
        return 0.5 * float(torch.logdet(cov.double())) - d * math.log(self.scale)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.w.shape[0]), 1.0).to_event(1))
            mean = z @ self.w
            pyro.sample("obs", dist.Normal(mean, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.w.T
            pyro.sample("z", dist.Normal(loc, torch.full_like(loc, self.scale)).to_event(1))

    def data(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, self.w.shape[1], generator=torch.Generator().manual_seed(seed))


def _encoder(target: float) -> LinearGaussianEncoder:
    """The 2-d encoder W = c A, s = 1 with population I_q = ``target`` (bisection on c)."""
    lo, hi = 1e-3, 100.0
    for _ in range(80):
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if LinearGaussianEncoder(c * A, 1.0).mi < target else (lo, c)
    return LinearGaussianEncoder(0.5 * (lo + hi) * A, 1.0)


def _intervals(enc: LinearGaussianEncoder, n: int, seeds: range) -> list[MutualInformation]:
    out = []
    for seed in seeds:
        x = enc.data(n, 1000 + seed)  # fresh data ...
        pyro.set_rng_seed(seed)  # ... and fresh draws of z per seed
        out.append(mutual_information(enc.model, enc.guide, x, per_dim_draws=2))
    return out


def _covered(results: list[MutualInformation], truth: float) -> np.ndarray:
    return np.array([r.ci[0] <= truth <= r.ci[1] for r in results])


LEVELS = [0.3, 1.25, 3.6]


@pytest.mark.slow
@pytest.mark.parametrize("target", LEVELS)
def test_interval_covers_the_population_mi_at_close_to_nominal_rate(target):
    # N = 500 (log N = 6.21), nominal 0.95; about 5 s per level
    enc = _encoder(target)
    assert enc.mi == pytest.approx(target, abs=1e-6)
    results = _intervals(enc, 500, range(80))
    coverage = _covered(results, enc.mi).mean()
    assert 0.88 <= coverage <= 1.0
    if target == LEVELS[0]:
        # not covering by being wide: at small I the two ends are about the usual
        # estimate +- 1.96 s.e. (measured: mean width 2.2 x 1.96 sd of the estimates)
        totals = np.array([r.total for r in results])
        widths = np.array([r.ci[1] - r.ci[0] for r in results])
        assert widths.mean() < 4 * 1.96 * totals.std()


@pytest.mark.parametrize("target", LEVELS)
def test_interval_brackets_the_population_mi_on_a_few_seeds(target):
    enc = _encoder(target)
    results = _intervals(enc, 500, range(4))
    assert _covered(results, enc.mi).sum() >= 3
    for r in results:
        assert r.ci[0] <= r.total <= r.ci[1]
        assert 0 < r.total_stderr < 0.2
        assert not r.saturated and r.points_needed is None
        assert r.log_n == pytest.approx(math.log(500))
        if math.isfinite(r.upper):
            assert r.upper >= r.total and 0 < r.upper_stderr < 0.3


def test_upper_agrees_with_total_when_mi_is_small_against_log_n():
    enc = _encoder(0.3)
    x = enc.data(1000, 7)
    pyro.set_rng_seed(7)
    mi = mutual_information(enc.model, enc.guide, x, num_samples=2, per_dim_draws=2)
    assert mi.total <= mi.upper < mi.total + 3 * mi.total_stderr
    assert mi.upper_stderr == pytest.approx(mi.total_stderr, rel=0.1)
    # the delta-method s.e. matches the spread of the estimate over fresh data sets
    sd = np.std([r.total for r in _intervals(enc, 1000, range(30))])
    assert mi.total_stderr == pytest.approx(sd, rel=0.35)


def test_tiny_posterior_scales_saturate_at_log_n():
    # I_q = 9.1 nats against log 64 = 4.16: every z identifies its point
    enc = LinearGaussianEncoder(A, 0.01)
    n = 64
    x = enc.data(n, 0)
    pyro.set_rng_seed(0)
    mi = mutual_information(enc.model, enc.guide, x, num_samples=2)
    assert mi.saturated and mi.log_n == pytest.approx(math.log(n))
    assert mi.total <= mi.log_n and mi.log_n - mi.total < 0.01
    assert mi.ci[0] <= mi.total <= mi.ci[1] and mi.ci[0] <= mi.log_n
    # the own component holds nearly all of the aggregate's mass: the leave-one-out
    # estimate (kept at full precision) is far above the truth, so the interval says
    # little above; resolving I_q needs more points than exist
    assert mi.upper > 10 * mi.log_n and mi.ci[1] >= mi.upper
    assert mi.points_needed > n


def test_saturation_with_a_finite_upper_end_asks_for_enough_points():
    # 20 weakly informative dimensions (I_q = 4.95 nats, log 64 = 4.16): saturated, while
    # no single draw is left to its own component
    d, n = 20, 64
    enc = LinearGaussianEncoder(0.8 * torch.eye(d), 1.0)
    x = enc.data(n, 0)
    pyro.set_rng_seed(0)
    mi = mutual_information(enc.model, enc.guide, x, num_samples=4)
    assert mi.saturated and mi.log_n - mi.total < 1
    assert math.isfinite(mi.upper) and mi.upper > mi.log_n > mi.total
    assert mi.ci[0] <= enc.mi <= mi.ci[1]
    assert mi.points_needed == math.ceil(math.exp(mi.ci[1] + 1))
    assert math.log(mi.points_needed) >= mi.ci[1] + 1 and mi.points_needed > n


def test_low_mi_is_not_saturated():
    enc = _encoder(0.3)
    x = enc.data(64, 0)
    pyro.set_rng_seed(0)
    mi = mutual_information(enc.model, enc.guide, x, num_samples=4)
    assert not mi.saturated and mi.points_needed is None
    assert mi.ci[0] <= mi.total <= mi.ci[1] < mi.log_n


def test_interval_is_the_bracket_whether_or_not_bootstrapping():
    enc = _encoder(1.25)
    x = enc.data(300, 3)
    pyro.set_rng_seed(3)
    plain = mutual_information(enc.model, enc.guide, x, num_samples=2)
    pyro.set_rng_seed(3)
    boot = mutual_information(enc.model, enc.guide, x, num_samples=2, bootstrap=50)
    # the same draws; the bootstrap rows only change the float32 block sums' rounding
    assert boot.ci == pytest.approx(plain.ci, rel=1e-6) and plain.aggregate_kl_ci is None
    assert boot.aggregate_kl_ci is not None
    z = 1.959963984540054
    lo = plain.total - z * plain.total_stderr
    hi = plain.upper + z * plain.upper_stderr
    assert plain.ci == pytest.approx((lo, hi), rel=1e-12)
    pyro.set_rng_seed(3)
    narrow = mutual_information(enc.model, enc.guide, x, num_samples=2, ci_level=0.5)
    assert plain.ci[0] < narrow.ci[0] <= narrow.ci[1] < plain.ci[1]


def test_a_collapsed_encoder_has_the_interval_zero():
    enc = LinearGaussianEncoder(torch.zeros(2, 2), 1.0)
    x = enc.data(100, 0)
    pyro.set_rng_seed(0)
    mi = mutual_information(enc.model, enc.guide, x)
    assert mi.total == pytest.approx(0, abs=1e-5) and mi.upper == pytest.approx(0, abs=1e-5)
    assert mi.ci[0] == min(0.0, mi.total) and mi.ci[1] == pytest.approx(0, abs=1e-4)
    assert not mi.saturated


def test_a_single_point_has_an_unbounded_interval():
    enc = _encoder(1.25)
    pyro.set_rng_seed(0)
    mi = mutual_information(enc.model, enc.guide, enc.data(1, 0), num_samples=3)
    assert mi.log_n == 0 and mi.total == pytest.approx(0, abs=1e-5)
    assert math.isnan(mi.total_stderr) and mi.upper == math.inf
    assert mi.ci == (min(0.0, mi.total), math.inf)
    assert mi.saturated and mi.points_needed == math.ceil(math.exp(mi.total + 2))


@pytest.mark.parametrize("mvn", [False, True])
def test_leave_one_out_sum_from_the_block_pass_is_exact(mvn):
    # several column blocks (Normal fast path) or several components (log_prob path), and
    # a far-off point whose draws the other components barely reach
    g = torch.Generator().manual_seed(0)
    n = 3000
    loc = torch.randn(n, 2, generator=g)
    loc[0] = 12.0
    scale = 0.1 + torch.rand(n, 2, generator=g)
    if mvn:
        tril = torch.diag_embed(scale)
        qs = [
            dist.MultivariateNormal(loc[:1000], scale_tril=tril[:1000]),
            dist.MultivariateNormal(loc[1000:], scale_tril=tril[1000:]),
        ]
    else:
        qs = [dist.Normal(loc, scale).to_event(1)]
    agg = _AggregatePosterior(qs)
    own = torch.arange(0, n, 7)
    z = dist.Normal(loc[own], scale[own]).sample() + 0.01
    agg.select_precision(z, own)
    counts = torch.randint(0, 3, (2, n), generator=g).double()
    weights = torch.cat([torch.ones(1, n, dtype=torch.float64), counts])
    log_q, log_rest = agg.log_prob(z, weights, own=own)
    lp = dist.Normal(loc.double(), scale.double()).log_prob(z.double()[:, None]).sum(-1)
    rows = torch.arange(len(own))
    rest = lp.clone()
    rest[rows, own] = -math.inf
    expected = torch.stack([(lp + w.log()).logsumexp(1) for w in weights], 1) - math.log(n)
    tol = 2e-3 if agg.dtype == torch.float32 else 1e-8
    torch.testing.assert_close(log_q, expected, atol=tol, rtol=0)
    torch.testing.assert_close(log_rest, rest.logsumexp(1), atol=tol, rtol=0)
    # the far-off point: the others' share is tiny, yet kept to full relative precision
    assert float(log_rest[0] - lp[0, 0]) < -20
    # without ``own`` the same aggregate as before
    torch.testing.assert_close(agg.log_prob(z, weights), log_q, atol=tol, rtol=0)


def test_positional_construction_keeps_its_meaning():
    mi = MutualInformation(1.0, None, 0.5, None, 1, (0.5, 1.5), None, None, 0, 0.1, 0.1, False)
    assert mi.ci == (0.5, 1.5) and mi.conditional_prior is False
    assert math.isnan(mi.total_stderr) and math.isnan(mi.upper) and math.isnan(mi.log_n)
    assert mi.saturated is False and mi.points_needed is None
