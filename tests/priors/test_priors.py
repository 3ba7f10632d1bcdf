"""Behaviour of every prior family: closed forms, quadrature, moments, training, swapping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN

from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.priors import (
    FLOW_TRANSFORMS,
    PRIORS,
    ARDPrior,
    FlowPrior,
    HierarchicalPrior,
    LearnableGaussianPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
    make_prior,
)

ALL_NAMES = ("standard", "learnable", "mixture", "vamp", "hierarchical", "ard", "flow")


class LinearEncoder(torch.nn.Module):
    """A tiny x -> N(Wx + b, softplus(Vx + c)) encoder, standing in for a VAE's encode."""

    def __init__(self, input_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(input_dim, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = self.net(x).chunk(2, -1)
        return dist.Normal(loc, torch.nn.functional.softplus(raw) + 0.1).to_event(1)


def build(name: str, latent_dim: int) -> Prior:
    """A freshly initialised prior of family ``name`` (VampPrior with its own encoder)."""
    if name == "vamp":
        return VampPrior(LinearEncoder(5, latent_dim), 4, (5,))
    if name == "hierarchical":
        return HierarchicalPrior(latent_dim, 1, hidden=(8,))
    return make_prior(name, latent_dim)


def perturb(prior: Prior) -> Prior:
    """Move every parameter away from its initial value (e.g. zero means).

    Flows get a smaller nudge: their layers start near the identity, and large random
    spline parameters give spiky densities that a quadrature grid cannot resolve.
    """
    size = 0.05 if isinstance(prior, FlowPrior) else 0.3
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(size * torch.randn_like(p))
    return prior


def grid(latent_dim: int, half_width: float, n: int) -> tuple[torch.Tensor, float]:
    """Points of a regular grid on [-h, h]^D, shape (n^D, D), and the cell volume."""
    axis = torch.linspace(-half_width, half_width, n)
    pts = torch.cartesian_prod(*([axis] * latent_dim)).reshape(-1, latent_dim)
    return pts, (axis[1] - axis[0]).item() ** latent_dim


# --------------------------------------------------------------------------------------
# The base and the standard normal (unchanged behaviour)
# --------------------------------------------------------------------------------------
def test_standard_normal_log_prob_matches_closed_form():
    prior = StandardNormalPrior(3)
    z = torch.randn(5, 7, 3)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert prior.log_prob(z).shape == (5, 7)
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_sample_moments():
    z = StandardNormalPrior(4).sample(20000)
    assert z.shape == (20000, 4)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(4), atol=0.05, rtol=0)


def test_call_inside_plates_samples_site_with_event_shape():
    prior = StandardNormalPrior(2)

    def model():
        with pyro.plate("outer", 3, dim=-2), pyro.plate("data", 5):
            return prior("z")

    tr = poutine.trace(model).get_trace()
    site = tr.nodes["z"]
    assert site["value"].shape == (3, 5, 2)
    assert site["fn"].event_shape == (2,) and site["fn"].batch_shape == (3, 5)


def test_respects_subsampling_scale_and_poutine_scale():
    prior = StandardNormalPrior(2)

    def model():
        with poutine.scale(scale=0.5), pyro.plate("data", 100, subsample_size=10):
            prior("z")

    tr = poutine.trace(model).get_trace()
    assert tr.nodes["z"]["scale"] == pytest.approx(0.5 * 100 / 10)


def test_validation_errors():
    with pytest.raises(ValueError, match="latent_dim must be >= 1, got 0"):
        StandardNormalPrior(0)
    with pytest.raises(TypeError, match="latent_dim must be an int"):
        StandardNormalPrior(2.5)
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., latent_dim=3\)"):
        StandardNormalPrior(3).log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="unknown prior 'vampp'; valid names: standard"):
        make_prior("vampp", 2)


def test_base_class_requires_distribution():
    with pytest.raises(NotImplementedError, match="must implement distribution"):
        Prior(2).sample(3)


def test_registry_contains_every_family_by_short_name():
    assert PRIORS.names() == list(ALL_NAMES)
    classes = [
        StandardNormalPrior,
        LearnableGaussianPrior,
        MixturePrior,
        VampPrior,
        HierarchicalPrior,
        ARDPrior,
        FlowPrior,
    ]
    for name, cls in zip(ALL_NAMES, classes, strict=True):
        prior = make_prior(name, 3, input_shape=(6,)) if name == "vamp" else make_prior(name, 3)
        assert type(prior) is cls and prior.latent_dim == 3


def test_factorized_flags():
    factorised = {n: PRIORS.get(n).factorized for n in ALL_NAMES}
    assert factorised == {
        "standard": True,
        "learnable": True,
        "mixture": False,
        "vamp": False,
        "hierarchical": False,
        "ard": True,
        "flow": False,
    }


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LearnableGaussianPrior, ARDPrior])
def test_diagonal_gaussians_match_torch_normal(cls):
    prior = perturb(cls(3, init_scale=0.7))
    loc = prior.loc.detach()
    scale = torch.nn.functional.softplus(prior.raw_scale.detach()) + prior.min_scale
    if cls is ARDPrior:
        assert not any(n == "loc" for n, _ in prior.named_parameters())
        torch.testing.assert_close(loc, torch.zeros(3))
    z = torch.randn(4, 6, 3) * 2
    expected = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)
    torch.testing.assert_close(prior.scales, scale)
    marginal = torch.distributions.Normal(loc[1], scale[1]).log_prob(z[..., 1])
    torch.testing.assert_close(prior.marginal(1).log_prob(z[..., 1]), marginal)
    assert cls(2, init_scale=0.3).scales.tolist() == pytest.approx([0.3, 0.3])


def test_mixture_log_prob_is_exact_logsumexp():
    prior = perturb(MixturePrior(2, n_components=3))
    means = prior.means.detach()
    scales = torch.nn.functional.softplus(prior.raw_scales.detach()) + prior.min_scale
    log_w = torch.log_softmax(prior.logits.detach(), -1)
    z = torch.randn(5, 4, 2) * 3
    comp = torch.distributions.Normal(means, scales).log_prob(z.unsqueeze(-2)).sum(-1)
    expected = torch.logsumexp(comp + log_w, -1)
    torch.testing.assert_close(prior.log_prob(z), expected)
    # marginal of dimension 1: univariate mixture with the same weights
    comp1 = torch.distributions.Normal(means[:, 1], scales[:, 1]).log_prob(z[..., 1:2])
    torch.testing.assert_close(
        prior.marginal(1).log_prob(z[..., 1]), torch.logsumexp(comp1 + log_w, -1)
    )
    torch.testing.assert_close(prior.weights, log_w.exp())


def test_mixture_fixed_weights_stay_uniform_and_are_not_parameters():
    prior = MixturePrior(2, n_components=4, learn_weights=False)
    assert {n for n, _ in prior.named_parameters()} == {"means", "raw_scales"}
    torch.testing.assert_close(prior.weights, torch.full((4,), 0.25))


def test_mixture_initial_means_are_spread_out():
    prior = MixturePrior(2, n_components=10)
    d = torch.cdist(prior.means.detach(), prior.means.detach())
    nearest = (d + torch.eye(10) * 1e9).min(-1).values
    # k-means++ seeding from N(0, 2^2 I): no two means on top of each other
    assert float(nearest.min()) > 0.5
    assert 1.0 < float(prior.means.detach().std()) < 4.0


def test_vamp_log_prob_is_the_uniform_mixture_of_encoder_posteriors():
    enc = LinearEncoder(5, 2)
    prior = perturb(VampPrior(enc, 4, (5,)))
    assert prior.latent_dim == 2  # inferred from the encoder
    u = torch.sigmoid(prior.raw_pseudo.detach())
    assert float(u.min()) > 0 and float(u.max()) < 1
    q = enc(u)
    z = torch.randn(6, 3, 2)
    comp = q.base_dist.log_prob(z.unsqueeze(-2)).sum(-1)  # (6, 3, 4)
    torch.testing.assert_close(prior.log_prob(z), torch.logsumexp(comp, -1) - math.log(4))


def test_vamp_shares_the_live_encoder_of_its_model():
    vae = MLPVAE(6, 2, prior=VampPrior(None, 3, (6,), latent_dim=2), hidden=(8,))
    prior = vae.prior
    # the encoder is referenced, not owned: its weights are named once, by the model
    assert {n for n, _ in prior.named_parameters()} == {"raw_pseudo"}
    assert sum(n.startswith("prior.") for n, _ in vae.named_parameters()) == 1
    z = torch.randn(10, 2)
    before = prior.log_prob(z).detach()
    with torch.no_grad():
        vae.encoder[-1].bias.add_(1.0)
    after = prior.log_prob(z).detach()
    assert not torch.allclose(before, after)
    q = vae.encode(prior.pseudo_inputs)
    comp = q.base_dist.log_prob(z.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(after, torch.logsumexp(comp, -1) - math.log(3))
    # the bound encoder is the model's own method
    assert prior.encoder == vae.encode


def test_vamp_init_pseudo_inputs_from_data(digits):
    prior = VampPrior(None, 8, (64,), latent_dim=2)
    pyro.set_rng_seed(1)
    prior.init_pseudo_inputs(digits[:100], noise=0.0)
    u = prior.pseudo_inputs
    clipped = digits[:100].clamp(1e-3, 1 - 1e-3)
    # every pseudo-input is one of the data rows (up to the clipping to the open interval)
    assert all(bool((clipped - row).abs().amax(-1).min() < 1e-4) for row in u)
    real = VampPrior(None, 20, (3,), latent_dim=2, support="real")
    real.init_pseudo_inputs(torch.full((2, 3), 7.0), noise=0.0)
    torch.testing.assert_close(real.pseudo_inputs, torch.full((20, 3), 7.0))


class _LinearGaussianHierarchy(HierarchicalPrior):
    """p(z | t) = N(A t + b, diag(s^2)): then p(z) = N(b, A A^T + diag(s^2)) exactly."""

    A = torch.tensor([[1.5], [-0.7]])
    b = torch.tensor([0.3, -0.2])
    s = torch.tensor([0.5, 0.8])

    def conditional(self, z_top):
        return dist.Normal(z_top @ self.A.T + self.b, self.s.expand(*z_top.shape[:-1], 2)).to_event(
            1
        )

    def exact(self) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(self.b, self.A @ self.A.T + torch.diag(self.s**2))


class _ExactPosterior(_LinearGaussianHierarchy):
    """... with the exact posterior p(t | z) as the guide piece."""

    def posterior(self, z):
        prec = 1.0 + (self.A[:, 0] ** 2 / self.s**2).sum()
        mean = ((z - self.b) * self.A[:, 0] / self.s**2).sum(-1, keepdim=True) / prec
        return dist.Normal(mean, prec**-0.5).to_event(1)


def test_hierarchical_log_prob_is_exact_with_the_exact_posterior_as_proposal():
    prior = _ExactPosterior(2, 1, hidden=(8,))
    z = torch.randn(20, 2) * 3
    # every importance weight equals p(z): zero variance, for any number of samples
    estimate = prior.log_prob(z, num_samples=3, proposal="guide")
    torch.testing.assert_close(estimate, prior.exact().log_prob(z), atol=1e-4, rtol=0)


@pytest.mark.parametrize("proposal", ["defensive", "prior"])
def test_hierarchical_log_prob_estimate_converges_to_the_closed_form(proposal):
    prior = _LinearGaussianHierarchy(2, 1, hidden=(8,))
    z = prior.sample(50)
    exact = prior.exact().log_prob(z)
    with torch.no_grad():
        estimate = prior.log_prob(z, num_samples=20000, proposal=proposal)
    torch.testing.assert_close(estimate, exact, atol=0.1, rtol=0)
    assert float((estimate - exact).abs().mean()) < 0.02


def test_defensive_proposal_is_robust_to_an_untrained_guide():
    prior = _LinearGaussianHierarchy(2, 1, hidden=(8,))
    z = prior.sample(50)
    exact = prior.exact().log_prob(z)
    with torch.no_grad():
        errors = {
            proposal: (prior.log_prob(z, num_samples=4000, proposal=proposal) - exact).abs()
            for proposal in ("defensive", "guide")
        }
    # an untrained q(t | z) misses p(t | z) for some z: its weights explode there, while
    # the defensive mixture's weights stay bounded by 2 p(z | t)
    assert float(errors["guide"].max()) > 1.0
    assert float(errors["defensive"].max()) < 0.3
    assert float(errors["defensive"].mean()) < 0.05


def test_hierarchical_log_prob_is_a_lower_bound_in_expectation():
    prior = _LinearGaussianHierarchy(2, 1, hidden=(8,))
    z = prior.sample(200) * 1.5
    exact = prior.exact().log_prob(z)
    with torch.no_grad():
        rough = torch.stack([prior.log_prob(z, 2, proposal="prior") for _ in range(50)]).mean(0)
        fine = torch.stack([prior.log_prob(z, 64, proposal="prior") for _ in range(50)]).mean(0)
    # Jensen: E[log p_hat] <= log p, and the gap closes with more samples
    gap_rough, gap_fine = float((exact - rough).mean()), float((exact - fine).mean())
    assert gap_rough > 0.05
    assert gap_rough > gap_fine > -0.01


def test_flow_with_a_fixed_affine_map_is_a_gaussian():
    prior = FlowPrior(2, [T.AffineTransform(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]))])
    z = torch.randn(7, 3, 2) * 3
    expected = torch.distributions.Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]))
    torch.testing.assert_close(prior.log_prob(z), expected.log_prob(z).sum(-1))
    assert list(prior.parameters()) == []


def test_flow_registers_user_transform_modules():
    spline = T.spline_coupling(3)
    prior = FlowPrior(3, [spline, T.Permute(torch.tensor([2, 0, 1])), T.affine_autoregressive(3)])
    assert len(prior.flows) == 2 and prior.flows[0] is spline
    n_params = sum(p.numel() for p in spline.parameters()) + sum(
        p.numel() for p in prior.flows[1].parameters()
    )
    assert sum(p.numel() for p in prior.parameters()) == n_params


@pytest.mark.parametrize("family", sorted(FLOW_TRANSFORMS))
def test_every_flow_family_builds_and_evaluates(family):
    d = 1 if family == "spline" else 3
    hidden = None if family == "spline" else (8,)
    prior = FlowPrior(d, family, num_transforms=2, hidden=hidden)
    z = prior.sample(5)
    assert z.shape == (5, d)
    assert prior.log_prob(z.reshape(5, 1, d)).shape == (5, 1)
    assert prior.family == family


def _two_pass_log_prob(prior: FlowPrior, z: torch.Tensor) -> torch.Tensor:
    """Pyro's plain TransformedDistribution on the same layers, caches off: each layer's
    Jacobian term comes from a second, forward pass."""
    d = prior.distribution()
    return dist.TransformedDistribution(d.base_dist, d.transforms).log_prob(z)


def _count_network_calls(prior: FlowPrior) -> list[int]:
    calls = [0]
    for m in prior.modules():
        if isinstance(m, (ConditionalDenseNN, ConditionalAutoRegressiveNN)):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("family", sorted(FLOW_TRANSFORMS))
def test_flow_log_prob_is_the_two_pass_density_in_one_pass(family):
    d = 1 if family == "spline" else 4
    prior = FlowPrior(d, family, num_transforms=2)
    z = torch.randn(32, d, generator=torch.Generator().manual_seed(1)) * 1.5
    one, two = prior.log_prob(z), _two_pass_log_prob(prior, z)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    params = list(prior.parameters())
    g_one = torch.autograd.grad(one.sum(), params)
    g_two = torch.autograd.grad(two.sum(), params)
    for a, b in zip(g_one, g_two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # each layer's network runs once per score: a coupling layer's once, an autoregressive
    # layer's d times (its inverse is sequential); the two-pass path adds one forward each
    calls = _count_network_calls(prior)
    prior.log_prob(z)
    layer_passes = {"spline": 0, "spline_coupling": 1, "affine_coupling": 1}.get(family, d)
    assert calls[0] == 2 * layer_passes
    calls[0] = 0
    _two_pass_log_prob(prior, z)
    assert calls[0] == 2 * layer_passes + (0 if family == "spline" else 2)


def test_flow_scores_the_same_tensor_afresh_after_an_update():
    """The single pass caches within one call only: after a parameter update, scoring the
    very same tensor again gives the new density, and no layer keeps a cache."""
    prior = FlowPrior(3, "spline_coupling")
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    before = prior.log_prob(z).detach()
    opt = torch.optim.SGD(prior.parameters(), lr=0.5)
    (-prior.log_prob(z).sum()).backward()
    opt.step()
    after = prior.log_prob(z)
    assert (after.detach() - before).abs().max() > 1e-3
    fresh = FlowPrior(3, "spline_coupling")  # same parameters, never scored z before
    fresh.load_state_dict(prior.state_dict())
    torch.testing.assert_close(after, fresh.log_prob(z))
    for t in prior.flows:
        assert t._cache_size == 0 and t._cached_x_y == (None, None)
    with pytest.raises(ValueError):  # a failing call switches the caches off too
        prior.distribution().log_prob(torch.full((2, 3), float("nan")))
    assert all(t._cache_size == 0 for t in prior.flows)


# --------------------------------------------------------------------------------------
# Quadrature and moments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_log_prob_integrates_to_one(name, latent_dim):
    prior = perturb(build(name, latent_dim))
    pts, cell = grid(latent_dim, 12.0, 2401 if latent_dim == 1 else 161)
    with torch.no_grad():
        mass = float(prior.log_prob(pts).double().exp().sum() * cell)
    # the hierarchical density is an importance-sampled estimate (unbiased for p(z))
    assert mass == pytest.approx(1.0, abs=0.02 if name == "hierarchical" else 3e-3)


def _mixture_moments(means, variances, weights):
    mean = (weights[:, None] * means).sum(0)
    second = (
        weights[:, None, None]
        * (torch.diag_embed(variances) + means[:, :, None] * means[:, None, :])
    ).sum(0)
    return mean, second - torch.outer(mean, mean)


def _analytic_moments(prior: Prior) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance from the prior's parameters (closed forms, or quadrature)."""
    with torch.no_grad():
        if isinstance(prior, HierarchicalPrior):
            # law of total (co)variance with Gauss-Hermite quadrature over t ~ N(0, 1)
            nodes, w = np.polynomial.hermite_e.hermegauss(60)
            t = torch.tensor(nodes, dtype=torch.float32).unsqueeze(-1)
            w = torch.tensor(w / w.sum(), dtype=torch.float32)
            p = prior.conditional(t).base_dist
            return _mixture_moments(p.loc, p.scale**2, w)
        if isinstance(prior, FlowPrior):
            pts, _ = grid(prior.latent_dim, 10.0, 161)
            w = torch.softmax(prior.log_prob(pts), 0)
            return _mixture_moments(pts, torch.zeros_like(pts), w)
        d = prior.distribution()
        if isinstance(d, dist.MixtureSameFamily):
            comp = d.component_distribution.base_dist
            return _mixture_moments(comp.loc, comp.scale**2, d.mixture_distribution.probs)
        return d.mean, torch.diag(d.variance)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_sample_moments_match_the_prior(name):
    prior = perturb(build(name, 2))
    z = prior.sample(20000)
    mean, cov = _analytic_moments(prior)
    sd = cov.diagonal().sqrt()
    # Monte Carlo error of 20000 draws: ~0.007 sd for the mean, ~0.015 relative for the cov
    torch.testing.assert_close(z.mean(0), mean, atol=float(0.025 * sd.max()), rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=float(0.05 * sd.max() ** 2), rtol=0)


# --------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------
def _fit_alone(prior: Prior, z: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-prior.log_prob(z).mean()).backward()
        opt.step()


def test_mixture_recovers_well_separated_cluster_means():
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    scales = torch.tensor([[0.3, 0.3], [0.5, 0.2], [0.2, 0.4]])
    labels = torch.multinomial(weights, 2000, replacement=True)
    z = centres[labels] + scales[labels] * torch.randn(2000, 2)
    prior = MixturePrior(2, n_components=3, init_scale=2.0)
    assign = prior.init_components(z)
    assert assign.shape == (2000,)
    # k-means starts the means near the centres; maximum likelihood then fits the rest
    prior.raw_scales.data.fill_(0.5)
    prior.logits.data.zero_()
    _fit_alone(prior, z, steps=150, lr=0.04)
    perm = min(
        itertools.permutations(range(3)),
        key=lambda p: float((prior.means.detach()[list(p)] - centres).norm()),
    )
    perm = list(perm)
    torch.testing.assert_close(prior.means.detach()[perm], centres, atol=0.05, rtol=0)
    torch.testing.assert_close(prior.weights[perm], weights, atol=0.03, rtol=0)
    torch.testing.assert_close(prior.scales[perm], scales, atol=0.04, rtol=0)


def test_mixture_init_components_is_k_means_on_the_codes():
    z = torch.cat([torch.randn(40, 2) * 0.1 + 3, torch.randn(60, 2) * 0.2 - 3])
    prior = MixturePrior(2, n_components=2)
    assign = prior.init_components(z)
    order = [int(assign[0]), int(assign[-1])]
    assert sorted(order) == [0, 1] and (assign[:40] == order[0]).all()
    torch.testing.assert_close(
        prior.means.detach()[order], torch.stack([z[:40].mean(0), z[40:].mean(0)])
    )
    torch.testing.assert_close(prior.weights[order], torch.tensor([0.4, 0.6]))
    sd = torch.stack([z[:40].std(0, unbiased=False), z[40:].std(0, unbiased=False)])
    torch.testing.assert_close(prior.scales[order], sd, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="z must have at least n_components=5 rows, got 3"):
        MixturePrior(2, 5).init_components(torch.zeros(3, 2))


def test_ard_switches_off_an_unused_dimension():
    z = torch.randn(2000, 3) * torch.tensor([1.0, 0.01, 2.0])
    prior = ARDPrior(3)
    assert not prior.switched_off().any()
    _fit_alone(prior, z, steps=600, lr=0.05)
    torch.testing.assert_close(prior.scales, torch.tensor([1.0, 0.01, 2.0]), rtol=0.06, atol=2e-3)
    assert prior.switched_off(0.05).tolist() == [False, True, False]
    torch.testing.assert_close(prior.relevance(), prior.scales / prior.scales.max())


@pytest.mark.parametrize("name", ALL_NAMES)
def test_each_prior_trains_under_svi_inside_mlpvae(name, digits):
    """Swapping priors needs no change to the model: the same MLPVAE code for every prior."""
    latent_dim = 2
    prior = (
        VampPrior(None, 10, (64,), latent_dim=latent_dim)
        if name == "vamp"
        else make_prior(name, latent_dim)
    )
    vae = MLPVAE(64, latent_dim, prior=prior, hidden=(32,))
    initial = {k: p.detach().clone() for k, p in prior.named_parameters()}
    x = digits[:64]
    # pyrocollapse's ELBO: closed-form KL where it exists and is valid, Monte Carlo otherwise
    elbo = PlainELBO()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=elbo)
    losses = [svi.step(x) / len(x) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 2.0
    # the prior's own parameters are trained by SVI ...
    for k, p in prior.named_parameters():
        assert not torch.equal(p.detach(), initial[k]), f"{name}: parameter {k} did not move"
    # ... because they receive nonzero gradients from the loss
    for p in vae.parameters():
        p.grad = None
    elbo.loss_and_grads(vae.model, vae.guide, x)
    for k, p in prior.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{name}: no gradient to {k}"
    # and Pyro's parameter store holds these very tensors, under the model's name
    store = dict(pyro.get_param_store().named_parameters())
    held = {id(p): n for n, p in store.items()}
    for k, p in prior.named_parameters():
        assert held.get(id(p), "").startswith(f"{vae._pyro_name}.prior."), k


@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_users_own_pyro_model_takes_any_prior_unchanged(name):
    """A hand-written model/guide pair, written once, with each prior swapped in."""
    prior = build(name, 2)
    decoder = torch.nn.Linear(2, 3)
    encoder = torch.nn.Linear(3, 4)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            z = prior("z")
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x[idx])

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            loc, raw = encoder(x[idx]).chunk(2, -1)
            z = pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1))
            prior.guide("z", z)

    x = torch.randn(10, 3)
    guide_tr = poutine.trace(guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    assert model_tr.nodes["z"]["value"].shape == (4, 2)
    assert model_tr.nodes["z"]["scale"] == pytest.approx(10 / 4)
    latent = {
        n for n, s in model_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]
    }
    assert latent - {"data"} <= set(guide_tr.nodes)  # the guide covers every latent site
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=Trace_ELBO())
    before = {k: p.detach().clone() for k, p in prior.named_parameters()}
    assert all(math.isfinite(svi.step(x)) for _ in range(3))
    if name == "vamp":  # the user's encoder is not registered by this model: only u_k train
        assert set(before) == {"raw_pseudo"}
    for k, p in prior.named_parameters():
        assert not torch.equal(p.detach(), before[k]), f"{name}: {k} not trained by SVI"


def test_two_standalone_priors_do_not_share_parameters():
    a, b = LearnableGaussianPrior(2), LearnableGaussianPrior(2)
    assert a._pyro_name != b._pyro_name

    def model():
        with pyro.plate("data", 3):
            a("za")
            b("zb")

    tr = poutine.trace(model).get_trace()
    params = {n: s["value"] for n, s in tr.nodes.items() if s["type"] == "param"}
    assert params[f"{a._pyro_name}.loc"] is a.loc
    assert params[f"{b._pyro_name}.loc"] is b.loc


def test_hierarchical_prior_has_a_matching_guide_piece_and_diagnoses(digits):
    from pyrocollapse.diagnostics import diagnose, kl_per_dimension

    prior = HierarchicalPrior(2, top_dim=1, hidden=(8,))
    vae = MLPVAE(64, 2, prior=prior, hidden=(16,))
    x = digits[:40]
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z_top"]["fn"].batch_shape == (40,)
    assert model_tr.nodes["z_top"]["value"] is guide_tr.nodes["z_top"]["value"]
    assert model_tr.nodes["z"]["fn"].batch_shape == (40,)
    kl = kl_per_dimension(vae.model, vae.guide, x, site="z_top")
    assert kl.per_dim.shape == (1,) and kl.estimator == "analytic"
    report = diagnose(vae.model, vae.guide, x, latent_sites=("z", "z_top"))
    assert set(report.sites) == {"z", "z_top"}


def test_pyrocollapse_elbo_is_unbiased_for_the_hierarchical_prior(digits):
    """The guide q(z|x) q(t|z) is not mean-field, so the z term must not be the closed-form
    KL(q(z|x) || p(z|t)) at a t drawn given z (that would be off by ~13 nats per point here).

    On the same traces, PlainELBO's loss minus the plain Monte Carlo loss -log p(x, z, t) +
    log q(z, t | x) must average to zero.
    """
    vae = MLPVAE(64, 2, prior=HierarchicalPrior(2, 1, hidden=(16,)), hidden=(16,))
    x = digits[:16]
    elbo = PlainELBO()
    diffs = []
    with torch.no_grad():
        for p in vae.prior.net.parameters():
            p.mul_(3.0)  # a strongly t-dependent p(z | t)
        for _ in range(100):
            ev = elbo.evaluate(vae.model, vae.guide, x)
            tr = ev.terms[0]
            monte_carlo = tr.guide_trace.log_prob_sum() - tr.model_trace.log_prob_sum()
            diffs.append(float(ev.loss - monte_carlo) / len(x))
    diffs = torch.tensor(diffs)
    # standard error ~0.01 nats per point
    assert abs(float(diffs.mean())) < 0.1


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: LearnableGaussianPrior(2, init_scale=0.0), ValueError, "init_scale must be > 0"),
        (
            lambda: ARDPrior(2, init_scale=1e-6, min_scale=1e-5),
            ValueError,
            "init_scale must be > min_scale",
        ),
        (lambda: MixturePrior(2, n_components=0), ValueError, "n_components must be >= 1, got 0"),
        (
            lambda: MixturePrior(2, 3, learn_weights="yes"),
            TypeError,
            "learn_weights must be a bool",
        ),
        (lambda: MixturePrior(2, 3, init_spread=-1.0), ValueError, "init_spread must be > 0"),
        (lambda: VampPrior("encoder", 3, (4,)), TypeError, "encoder must be a callable"),
        (
            lambda: VampPrior(None, 3, (4,)),
            ValueError,
            "latent_dim is required when encoder is None",
        ),
        (lambda: VampPrior(None, 0, (4,), latent_dim=2), ValueError, "n_pseudo must be >= 1"),
        (
            lambda: VampPrior(None, 3, "64", latent_dim=2),
            TypeError,
            "input_shape must be a non-empty tuple",
        ),
        (
            lambda: VampPrior(None, 3, (4,), latent_dim=2, support="binary"),
            ValueError,
            "support must be one of 'unit', 'real'",
        ),
        (
            lambda: VampPrior(LinearEncoder(4, 3), 3, (4,), latent_dim=2),
            ValueError,
            r"event shape \(2,\) \(latent_dim=2\), got batch \(3,\) and event \(3,\)",
        ),
        (
            lambda: VampPrior(lambda x: dist.Normal(x, 1.0), 3, (4,)),
            ValueError,
            "encoder must return a distribution with event shape",
        ),
        (
            lambda: VampPrior(LinearEncoder(5, 2), 3, (4,)),
            ValueError,
            "could not evaluate the encoder on pseudo-inputs of shape",
        ),
        (lambda: HierarchicalPrior(2, top_dim=0), ValueError, "top_dim must be >= 1"),
        (
            lambda: HierarchicalPrior(2, hidden=()),
            ValueError,
            "hidden must have at least one hidden layer",
        ),
        (
            lambda: FlowPrior(2, "realnvp"),
            ValueError,
            "transforms must be one of 'spline', 'spline_coupling'",
        ),
        (
            lambda: FlowPrior(1, "spline_coupling"),
            ValueError,
            "needs latent_dim >= 2, got latent_dim=1; use transforms='spline'",
        ),
        (
            lambda: FlowPrior(3, [T.spline_coupling(2)]),
            ValueError,
            r"transforms\[0\] \(SplineCoupling\) failed on vectors of size latent_dim=3",
        ),
        (
            lambda: FlowPrior(2, [torch.nn.Linear(2, 2)]),
            TypeError,
            r"transforms\[0\] must be a torch.distributions.Transform",
        ),
        (lambda: FlowPrior(2, []), TypeError, "non-empty sequence of transforms"),
        (lambda: FlowPrior(2, num_transforms=0), ValueError, "num_transforms must be >= 1"),
        (
            lambda: FlowPrior(1, "spline", hidden=(8,)),
            ValueError,
            r"hidden do\(es\) not apply to transforms='spline'",
        ),
        (
            lambda: FlowPrior(2, "affine_coupling", count_bins=4),
            ValueError,
            r"count_bins do\(es\) not apply to transforms='affine_coupling'",
        ),
        (
            lambda: FlowPrior(2, [T.spline(2)], num_transforms=3),
            ValueError,
            "num_transforms apply to a named family of transforms, not to your own",
        ),
    ],
)
def test_constructor_errors_name_the_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_usage_errors():
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        HierarchicalPrior(2).log_prob(torch.zeros(3, 2), num_samples=0)
    with pytest.raises(ValueError, match="proposal must be one of 'defensive', 'guide', 'prior'"):
        HierarchicalPrior(2).log_prob(torch.zeros(3, 2), proposal="posterior")
    with pytest.raises(NotImplementedError, match="no tractable p\\(z\\) distribution"):
        HierarchicalPrior(2).distribution()
    with pytest.raises(NotImplementedError, match="no closed-form univariate marginal"):
        FlowPrior(2).marginal(0)
    with pytest.raises(ValueError, match="dim must be < latent_dim=2, got 2"):
        MixturePrior(2, 3).marginal(2)
    with pytest.raises(RuntimeError, match="VampPrior has no encoder yet"):
        VampPrior(None, 3, (4,), latent_dim=2).sample(2)
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        StandardNormalPrior(2)("")
    with pytest.raises(ValueError, match="VampPrior needs input_shape"):
        make_prior("vamp", 2)
    vamp = VampPrior(None, 3, (6,), latent_dim=2)
    MLPVAE(6, 2, prior=vamp, hidden=(4,))
    with pytest.raises(ValueError, match="already bound to the encoder of another model"):
        MLPVAE(6, 2, prior=vamp, hidden=(4,))
    with pytest.raises(TypeError, match="needs a model with an encode"):
        VampPrior(None, 3, (6,), latent_dim=2).attach(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
#: Command-line options exercising each prior's own arguments.
CLI_OPTIONS = {
    "standard": [],
    "learnable": ["init_scale=0.5"],
    "mixture": ["n_components=3", "learn_weights=false"],
    "vamp": ["n_pseudo=5", "support=real"],
    "hierarchical": ["hidden=8", "top_dim=1"],
    "ard": ["init_scale=2"],
    "flow": ["transforms=affine_coupling", "num_transforms=3", "hidden=8,8"],
}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_cli_builds_every_prior_from_its_short_name_and_options(name):
    """The exact path of ``pyrocollapse run --prior NAME --prior-option KEY=VALUE``."""
    from pyrocollapse.cli import parse_options

    cls = PRIORS.get(name)
    options = parse_options(CLI_OPTIONS[name], cls.__init__, "prior", skip=("latent_dim",))
    prior = cls.from_options(3, input_shape=(64,), **options)
    assert type(prior) is cls and prior.latent_dim == 3
    for key, value in options.items():
        got = getattr(prior, key, None)
        if got is not None and key not in ("hidden", "transforms", "num_transforms"):
            assert got == value, key
    if "init_scale" in options:
        torch.testing.assert_close(prior.scales, torch.full((3,), float(options["init_scale"])))
    if name == "flow":
        assert prior.family == "affine_coupling" and len(prior.flows) == 3
    MLPVAE(64, 3, prior=prior, hidden=(8,))  # every prior fits the model as built


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_NAMES)
def test_cli_runs_with_every_prior(name, tmp_path, capsys):
    from pyrocollapse.cli import main

    out = tmp_path / name
    status = main(
        [
            "run",
            "--prior",
            name,
            "--epochs",
            "1",
            "--latent-dim",
            "2",
            "--model-option",
            "hidden=16",
            "--out",
            str(out),
            "--no-progress",
        ]
        + [arg for option in CLI_OPTIONS[name] for arg in ("--prior-option", option)]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"prior={name}" in captured.out
    assert (out / "metrics.json").exists() and (out / "model.pt").exists()


def test_cli_rejects_unknown_prior_options(tmp_path, capsys):
    from pyrocollapse.cli import main

    status = main(
        [
            "run",
            "--prior",
            "mixture",
            "--prior-option",
            "components=3",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert status == 2
    assert "unknown prior option 'components'; accepted: n_components" in capsys.readouterr().err


@pytest.mark.parametrize("value_shape", [(7, 5), (3, 7, 5), (5,)])
@pytest.mark.parametrize("min_scale", [1.0, 1e-3])
def test_diagonal_normal_mixture_log_prob_equals_mixture_same_family(value_shape, min_scale):
    # the matrix-product log-density agrees with torch's (K, D)-broadcast one, values and
    # gradients, down to tiny component scales (float64 inside)
    from pyrocollapse.priors import DiagonalNormalMixture

    torch.manual_seed(0)
    k, d = 4, 5
    logits = torch.randn(k, requires_grad=True)
    loc = torch.randn(k, d, requires_grad=True)
    raw = torch.randn(k, d, requires_grad=True)
    value = torch.randn(value_shape) * 2

    def both(cls):
        scale = torch.nn.functional.softplus(raw) * min_scale + 1e-4
        mix = cls(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
        lp = mix.log_prob(value)
        grads = torch.autograd.grad(lp.sum(), (logits, loc, raw))
        return lp, grads

    fast, fast_grads = both(DiagonalNormalMixture)
    ref, ref_grads = both(dist.MixtureSameFamily)
    assert fast.shape == ref.shape == torch.Size(value_shape[:-1])
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_mixture_and_vamp_priors_use_the_fast_mixture():
    from pyrocollapse.priors import DiagonalNormalMixture

    prior = MixturePrior(3, n_components=4).distribution()
    assert isinstance(prior, DiagonalNormalMixture)
    # expanded inside a plate it stays a DiagonalNormalMixture with the same density
    expanded = prior.expand((6,))
    assert isinstance(expanded, DiagonalNormalMixture) and expanded.batch_shape == (6,)
    z = torch.randn(6, 3)
    torch.testing.assert_close(expanded.log_prob(z), prior.log_prob(z))
    # a mixture with batch dimensions falls back to MixtureSameFamily's own log_prob
    mix = DiagonalNormalMixture(
        dist.Categorical(logits=torch.zeros(2, 3)),
        dist.Normal(torch.zeros(2, 3, 4), 1.0).to_event(1),
    )
    ref = dist.MixtureSameFamily(mix.mixture_distribution, mix.component_distribution)
    z = torch.randn(6, 2, 4)
    torch.testing.assert_close(mix.log_prob(z), ref.log_prob(z))
