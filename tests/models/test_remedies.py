"""Model-side remedies against collapse: posterior families (BN-VAE, δ-VAE), skip
decoders (skip-VAE) and semi-amortised refinement (SA-VAE), with closed forms where
they exist."""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import kl_divergence

from pyrocollapse.models import MLPVAE, VAE, ConvVAE
from pyrocollapse.models._layers import SkipMLP, mlp
from pyrocollapse.models.posteriors import (
    POSTERIORS,
    BatchNormPosterior,
    CommittedRatePosterior,
    GaussianPosterior,
    committed_rate_scale,
    make_posterior,
)
from pyrocollapse.models.refinement import point_elbo
from pyrocollapse.priors import LearnableGaussianPrior, StandardNormalPrior


def _kl_to_standard(q: torch.distributions.Distribution) -> torch.Tensor:
    """Per-dimension KL(q || N(0, 1)) of a diagonal Normal (event dims kept), nats."""
    base = q.base_dist
    return kl_divergence(base, torch.distributions.Normal(torch.zeros_like(base.loc), 1.0))


# -- δ-VAE: committed rate -----------------------------------------------------------------
@pytest.mark.parametrize("delta", [1e-3, 0.1, 0.5, 2.0])
def test_committed_rate_scale_solves_the_kl_equation(delta: float) -> None:
    sigma = committed_rate_scale(delta)
    assert 0 < sigma < 1
    kl = 0.5 * (sigma**2 - 1 - math.log(sigma**2))
    assert kl == pytest.approx(delta, rel=1e-12, abs=1e-15)


def test_committed_rate_scale_decreases_with_the_rate() -> None:
    scales = [committed_rate_scale(d) for d in (0.01, 0.1, 1.0)]
    assert scales[0] > scales[1] > scales[2]


def test_committed_rate_posterior_never_goes_below_delta() -> None:
    torch.manual_seed(0)
    family = CommittedRatePosterior(4, delta=0.2)
    out = torch.cat([torch.randn(500, 4) * 3, torch.randn(500, 4) * 10], dim=1)
    kl = _kl_to_standard(family(out))
    assert kl.min().item() >= 0.2 - 1e-6
    # the floor is attained: mean 0 and the largest scale
    at_floor = family(torch.cat([torch.zeros(1, 4), torch.full((1, 4), 50.0)], dim=1))
    assert _kl_to_standard(at_floor) == pytest.approx(torch.full((1, 4), 0.2), abs=1e-6)
    assert family.kl_floor == 0.2


def test_committed_rate_posterior_rejects_a_floor_above_the_cap() -> None:
    with pytest.raises(ValueError, match="min_scale .* must be below the committed-rate scale cap"):
        CommittedRatePosterior(2, delta=5.0, min_scale=0.5)
    with pytest.raises(ValueError, match="delta"):
        CommittedRatePosterior(2, delta=0.0)


# -- BN-VAE ---------------------------------------------------------------------------------
def test_batchnorm_posterior_bounds_the_batch_averaged_kl() -> None:
    torch.manual_seed(1)
    family = BatchNormPosterior(3, gamma=0.6)
    with torch.no_grad():
        family.shift.copy_(torch.tensor([0.0, 0.5, -1.0]))
    # an encoder that has collapsed its means to nearly a constant
    out = torch.cat([1e-3 * torch.randn(64, 3) + 2.0, torch.full((64, 3), 3.0)], dim=1)
    q = family(out)
    loc = q.base_dist.loc
    # batch statistics: mean of mu_d^2 = gamma^2 + shift_d^2 (biased batch variance)
    expected = 0.36 + torch.tensor([0.0, 0.25, 1.0])
    assert (loc**2).mean(0).detach().numpy() == pytest.approx(expected.numpy(), rel=2e-2)
    kl = _kl_to_standard(q).mean(0)
    assert (kl >= 0.5 * expected - 1e-5).all()
    assert family.kl_floor == pytest.approx(0.18)


def test_batchnorm_posterior_needs_two_points_in_training_and_uses_running_stats_in_eval() -> None:
    family = BatchNormPosterior(2)
    with pytest.raises(ValueError, match="at least 2 points per batch"):
        family(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        family(torch.randn(3, 5, 4))
    family(torch.randn(32, 4) + 1.0)
    family.eval()
    one = family(torch.randn(1, 4))  # running statistics: one point is fine
    assert one.batch_shape == (1,)


# -- the registry and its errors -----------------------------------------------------------
def test_make_posterior_by_name_and_its_errors() -> None:
    assert set(POSTERIORS.names()) >= {"gaussian", "batchnorm", "delta"}
    family = make_posterior("delta", 3, options={"delta": 0.3})
    assert isinstance(family, CommittedRatePosterior) and family.delta == 0.3
    with pytest.raises(ValueError, match="unknown posterior 'bn'; valid names: gaussian, batchnorm, delta"):
        make_posterior("bn", 3)
    with pytest.raises(TypeError, match="posterior_options must be a dict"):
        make_posterior("delta", 3, options=[("delta", 0.3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass them to the GaussianPosterior constructor"):
        make_posterior(GaussianPosterior(3), 3, options={"min_scale": 0.1})
    with pytest.raises(ValueError, match=r"posterior.latent_dim \(2\) must equal latent_dim \(3\)"):
        make_posterior(GaussianPosterior(2), 3)
    with pytest.raises(TypeError, match="posterior 'batchnorm': .*unexpected keyword argument 'delta'"):
        make_posterior("batchnorm", 3, options={"delta": 0.1})
    with pytest.raises(ValueError, match="last dimension 2 \\* latent_dim = 6"):
        family(torch.randn(4, 5))


def test_a_floor_with_another_prior_is_flagged() -> None:
    with pytest.warns(UserWarning, match="standard Normal prior only"):
        MLPVAE(6, 2, LearnableGaussianPrior(2), hidden=(8,), posterior="batchnorm")


def test_the_default_posterior_is_the_former_diagonal_normal() -> None:
    torch.manual_seed(2)
    vae = MLPVAE(6, 2, hidden=(8,))
    x = torch.rand(5, 6).round()
    out = vae.encoder(x)
    q = vae.encode(x).base_dist
    loc, raw = out.chunk(2, dim=-1)
    assert torch.equal(q.loc, loc)
    assert torch.allclose(q.scale, torch.nn.functional.softplus(raw) + 1e-4)
    assert vae.encoder_params(x)[1].shape == (5, 2)


# -- skip-VAE -------------------------------------------------------------------------------
def test_skip_decoder_keeps_z_at_every_layer() -> None:
    torch.manual_seed(3)
    z = torch.randn(7, 2)
    plain, skip = mlp((2, 8, 8, 5)), SkipMLP((2, 8, 8, 5))
    assert [layer.in_features for layer in skip.layers] == [2, 10, 10]
    # switch off the path through the hidden layers: the plain MLP forgets z, skip does not
    with torch.no_grad():
        plain[0].weight.zero_()
        skip.layers[0].weight.zero_()
    assert torch.allclose(plain(z), plain(z[:1]).expand(7, 5))
    assert skip(z).std(0).min() > 1e-3
    # leading (particle) dimensions pass through
    assert skip(torch.randn(3, 7, 2)).shape == (3, 7, 5)


def test_mlpvae_skip_option_builds_a_skip_decoder() -> None:
    vae = MLPVAE(6, 2, hidden=(8, 4), skip=True)
    assert isinstance(vae.decoder, SkipMLP)
    assert vae.decode(torch.randn(3, 2)).batch_shape == (3,)
    with pytest.raises(TypeError, match="skip must be True or False"):
        MLPVAE(6, 2, skip="yes")  # type: ignore[arg-type]


# -- SA-VAE ---------------------------------------------------------------------------------
def _linear_gaussian_vae(seed: int) -> tuple[MLPVAE, torch.Tensor]:
    """An MLP VAE with a linear Gaussian decoder (exact posterior in closed form)."""
    torch.manual_seed(seed)
    vae = MLPVAE(5, 2, hidden=(8,), decoder_hidden=(), likelihood="gaussian")
    with torch.no_grad():
        vae.log_scale.fill_(-1.0)
    return vae, torch.randn(40, 5) * 2


def _exact_posterior_mean(vae: MLPVAE, x: torch.Tensor) -> torch.Tensor:
    layer = vae.decoder[0]
    w, b = layer.weight.detach(), layer.bias.detach()  # (5, 2), (5,)
    noise = torch.nn.functional.softplus(vae.log_scale.detach()) + 1e-3
    precision = torch.eye(2) + w.T @ (w / noise[:, None] ** 2)
    return torch.linalg.solve(precision, (w.T @ ((x - b) / noise**2).T)).T


def test_refinement_moves_q_towards_the_exact_posterior() -> None:
    pyro.set_rng_seed(0)
    vae, x = _linear_gaussian_vae(4)
    exact = _exact_posterior_mean(vae, x)
    before = (vae.encode(x).base_dist.loc - exact).norm(dim=1).mean()
    vae.refine_steps, vae.refine_lr = 150, 0.02
    with torch.no_grad():
        refined = vae.guide_posterior(x).base_dist.loc
    after = (refined - exact).norm(dim=1).mean()
    assert after < 0.15 * before
    # and the per-point ELBO improved (averaged over many draws)
    with torch.no_grad():
        out0 = vae.encoder_output(x)
        q = vae.guide_posterior(x)
        refined_out = torch.cat([q.base_dist.loc, torch.log(torch.expm1(q.base_dist.scale - 1e-4))], 1)
        e0 = torch.stack([point_elbo(vae, out0, x) for _ in range(200)]).mean()
        e1 = torch.stack([point_elbo(vae, refined_out, x) for _ in range(200)]).mean()
    assert e1 > e0 + 1.0


def test_refinement_adds_no_site_to_the_guide_and_trains_the_encoder_through_the_steps() -> None:
    pyro.clear_param_store()
    torch.manual_seed(5)
    vae = MLPVAE(6, 2, hidden=(8,), refine_steps=2, refine_lr=0.5)
    x = torch.rand(10, 6).round()
    trace = poutine.trace(vae.guide).get_trace(x)
    samples = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert samples == ["z"] or samples == ["data", "z"]
    elbo = pyro.infer.Trace_ELBO()
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert vae.encoder[0].weight.grad is not None and vae.encoder[0].weight.grad.abs().sum() > 0
    # without gradients (diagnostics) the refined q is detached
    with torch.no_grad():
        q = vae.guide_posterior(x)
    assert not q.base_dist.loc.requires_grad


def test_refinement_and_families_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="refine_steps"):
        MLPVAE(6, 2, refine_steps=-1)
    with pytest.raises(ValueError, match="refine_lr"):
        MLPVAE(6, 2, refine_lr=0.0)
    with pytest.raises(NotImplementedError, match="does not expose its encoder output"):
        VAE.encoder_output(VAE(2), torch.zeros(1, 2))


@pytest.mark.parametrize(
    "options",
    [
        {"posterior": "batchnorm", "posterior_options": {"gamma": 0.7}},
        {"posterior": "delta", "posterior_options": {"delta": 0.2}},
        {"skip": True, "refine_steps": 1},
    ],
)
def test_remedy_options_survive_save_and_load(tmp_path, options) -> None:
    torch.manual_seed(6)
    vae = MLPVAE(6, 2, StandardNormalPrior(2), hidden=(8,), **options)
    x = torch.rand(16, 6).round()
    vae.guide(x)  # a training-mode call updates the batch-norm running statistics
    vae.eval()
    path = tmp_path / "m.pt"
    vae.save(path)
    loaded = MLPVAE.load(path)
    assert torch.allclose(loaded.encode(x).base_dist.loc, vae.encode(x).base_dist.loc)
    assert loaded.refine_steps == vae.refine_steps
    assert type(loaded.posterior_family) is type(vae.posterior_family)


def test_convvae_takes_a_posterior_family() -> None:
    vae = ConvVAE((1, 8, 8), 3, channels=(4,), posterior="delta")
    q = vae.encode(torch.rand(4, 64).round())
    assert (_kl_to_standard(q) >= 0.1 - 1e-6).all()


def test_sequencevae_takes_every_remedy() -> None:
    from pyrocollapse.models import SequenceVAE

    torch.manual_seed(7)
    x = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2]])
    skip = SequenceVAE(20, 3, embed=8, hidden=16, skip=True)
    assert skip.output.in_features == 16 + 3
    # the output layer reads z directly: with the RNN's output path zeroed, z still moves it
    with torch.no_grad():
        skip.output.weight[:, :16].zero_()
    z = torch.randn(3, 3)
    d1, d2 = skip.decode(z, x), skip.decode(z + 1.0, x)
    assert not torch.allclose(d1.log_prob(x[:, 1:]), d2.log_prob(x[:, 1:]))
    delta = SequenceVAE(20, 3, embed=8, hidden=16, posterior="delta", posterior_options={"delta": 0.3})
    assert (_kl_to_standard(delta.encode(x)) >= 0.3 - 1e-6).all()
    refined = SequenceVAE(20, 3, embed=8, hidden=16, refine_steps=2, word_dropout=0.3)
    trace = poutine.trace(refined.guide).get_trace(x)
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample"] in (["z"], ["data", "z"])
    loss = pyro.infer.Trace_ELBO().differentiable_loss(refined.model, refined.guide, x)
    loss.backward()
    assert refined.encoder_head.weight.grad.abs().sum() > 0
