"""Behaviour of each model in the zoo: closed forms, masks, generation, collapse.

The generic contract (shapes, plates, every prior, every ELBO) is in ``test_models.py``.
"""

import functools
import itertools
import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyrocollapse.cli import main
from pyrocollapse.data import make_ppca, make_sequences, ppca_population_covariance
from pyrocollapse.diagnostics import diagnose
from pyrocollapse.elbo import ELBOS, AnnealedELBO, BetaELBO, PlainELBO
from pyrocollapse.models import ConvVAE, LadderVAE, LinearVAE, PPCASolution, SequenceVAE
from pyrocollapse.models._layers import MaskedConv2d
from pyrocollapse.priors import Prior, StandardNormalPrior
from pyrocollapse.schedules import Cyclical
from pyrocollapse.train import fit

LOG_2PI = math.log(2 * math.pi)


def _adam(lr):
    return functools.partial(torch.optim.Adam, lr=lr)


class ShiftedPrior(StandardNormalPrior):
    """N(m, diag(s^2)) with fixed m = 0.5 and s = 2: a non-standard diagonal Gaussian."""

    def distribution(self):
        return dist.Normal(self._loc + 0.5, self._scale * 2.0).to_event(1)


class StudentPrior(Prior):
    """A non-Gaussian prior, for which the linear closed forms do not exist."""

    def distribution(self):
        return dist.StudentT(3.0, torch.zeros(self.latent_dim), 1.0).to_event(1)


# ======================================================================================
# LinearVAE: probabilistic PCA
# ======================================================================================
def test_ppca_optimum_recovers_the_population_parameters_exactly():
    # Tipping & Bishop on the exact population covariance: the discarded eigenvalues are
    # all noise^2, so sigma^2 and W W^T are recovered exactly, and the expected
    # log-likelihood is -1/2 (D log 2 pi + log det Sigma + D).
    ds = make_ppca(10, spectrum=(4.0, 2.0, 1.0), noise=0.5, input_dim=7, seed=3)
    cov = ppca_population_covariance(ds)
    opt = LinearVAE.ppca_optimum(cov, 3, covariance=True)
    assert isinstance(opt, PPCASolution) and opt.latent_dim == 3
    assert opt.noise_variance == pytest.approx(0.25, abs=1e-12)
    torch.testing.assert_close(opt.leading_eigenvalues, torch.tensor([4.0, 2.0, 1.0]).double())
    torch.testing.assert_close(opt.covariance, cov, atol=1e-12, rtol=0)
    expected = -0.5 * (7 * LOG_2PI + float(torch.logdet(cov)) + 7)
    assert opt.log_likelihood == pytest.approx(expected, abs=1e-10)
    # W has orthogonal columns with ||W_i||^2 = lambda_i - sigma^2
    gram = opt.loading.T @ opt.loading
    torch.testing.assert_close(gram, torch.diag(torch.tensor([3.75, 1.75, 0.75]).double()))
    assert not opt.collapsed.any()


def test_ppca_optimum_on_data_is_the_maximum_of_the_exact_likelihood():
    x = make_ppca(400, seed=0).data
    opt = LinearVAE.ppca_optimum(x, 3)
    vae = LinearVAE(10, 3)
    vae.load_ppca(opt)
    best = float(vae.marginal_log_likelihood(x).detach().mean())
    assert best == pytest.approx(opt.log_likelihood, abs=2e-5)
    # ... and the same number from an independent Gaussian log-density
    mvn = torch.distributions.MultivariateNormal(opt.mean, covariance_matrix=opt.covariance)
    assert float(mvn.log_prob(x.double()).mean()) == pytest.approx(opt.log_likelihood, abs=1e-9)
    # any perturbation of the optimum is worse
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        with torch.no_grad():
            vae.load_ppca(opt)
            vae.loading.add_(0.05 * torch.randn(vae.loading.shape, generator=g))
            vae.log_noise.add_(0.05)
        assert float(vae.marginal_log_likelihood(x).detach().mean()) < best - 1e-4


def test_elbo_is_tight_at_the_optimum_and_q_is_the_exact_posterior():
    # Lucas et al. (2019): at the pPCA optimum the diagonal Gaussian q(z|x) equals the
    # exact posterior, so the ELBO equals log p(x).
    x = make_ppca(300, seed=1).data
    opt = LinearVAE.ppca_optimum(x, 3)
    vae = LinearVAE(10, 3)
    vae.load_ppca(opt)
    with torch.no_grad():
        post, q = vae.posterior(x), vae.encode(x).base_dist
        torch.testing.assert_close(post.mean, q.loc, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            post.covariance_matrix[0], torch.diag(q.scale[0] ** 2), atol=1e-5, rtol=1e-4
        )
        gap = vae.marginal_log_likelihood(x) - vae.analytic_elbo(x)
    assert float(gap.abs().max()) < 1e-3
    # the expected KL per dimension at the optimum is log(lambda_i / sigma^2) / 2
    kl = diagnose(vae.model, vae.guide, x, vae.latent_sites).sites["z"].kl_per_dim
    np.testing.assert_allclose(kl, opt.kl_per_dim.numpy(), atol=1e-4)


def test_analytic_elbo_equals_pyros_monte_carlo_elbo():
    # Away from the optimum (random parameters) the closed-form ELBO must agree with
    # Pyro's own estimator run on the model/guide programs.
    pyro.set_rng_seed(0)
    x = make_ppca(40, seed=2).data
    vae = LinearVAE(10, 3, ShiftedPrior(3), noise=0.8, init_std=0.3)
    with torch.no_grad():
        vae.posterior_log_scale.fill_(-0.5)
        closed = float(vae.analytic_elbo(x).sum())
        pyro_elbo = -TraceMeanField_ELBO(
            num_particles=4000, vectorize_particles=True, max_plate_nesting=1
        ).loss(vae.model, vae.guide, x)
    # Monte Carlo standard error of the reconstruction term is ~0.1 here
    assert pyro_elbo == pytest.approx(closed, abs=0.5)


def test_closed_forms_use_any_diagonal_gaussian_prior_and_refuse_others():
    x = make_ppca(50, seed=4).data
    vae = LinearVAE(10, 2, ShiftedPrior(2), init_std=0.5)
    w, mu, sigma = vae.loading.detach(), vae.loc.detach(), float(vae.noise_std.detach())
    m, s = torch.full((2,), 0.5), torch.full((2,), 2.0)
    cov = (w * s**2) @ w.T + sigma**2 * torch.eye(10)
    expected = torch.distributions.MultivariateNormal(w @ m + mu, cov).log_prob(x)
    torch.testing.assert_close(vae.marginal_log_likelihood(x).detach(), expected)
    # Bayes: p(z|x) p(x) = p(x|z) p(z) at any z
    z = torch.randn(50, 2)
    with torch.no_grad():
        lhs = vae.posterior(x).log_prob(z) + vae.marginal_log_likelihood(x)
        rhs = vae.decode(z).log_prob(x) + dist.Normal(m, s).to_event(1).log_prob(z)
    torch.testing.assert_close(lhs, rhs, atol=1e-3, rtol=1e-4)
    other = LinearVAE(10, 2, StudentPrior(2))
    for method in (other.marginal_log_likelihood, other.posterior, other.analytic_elbo):
        with pytest.raises(NotImplementedError, match="Gaussian prior with diagonal covariance"):
            method(x)


def test_analytic_collapse_rule():
    lam = [3.0, 1.0, 0.25, 0.2]
    assert LinearVAE.collapsed_dimensions(lam, 0.5).tolist() == [False, False, True, True]
    assert LinearVAE.collapsed_dimensions(lam, 0.5, beta=5.0).tolist() == [False, True, True, True]
    assert LinearVAE.collapsed_dimensions(lam, 2.0).tolist() == [True] * 4
    # the optimum obeys the rule: zero loading, unit posterior scale, zero KL
    ds = make_ppca(10, spectrum=(3.0, 1.0, 0.3), noise=0.5, input_dim=6, seed=0)
    opt = LinearVAE.ppca_optimum(ppca_population_covariance(ds), 3, covariance=True, noise=0.8)
    assert opt.collapsed.tolist() == [False, False, True]
    assert float(opt.loading[:, 2].abs().max()) == 0.0 and float(opt.kl_per_dim[2]) == 0.0
    assert float(opt.posterior_scale[2]) == 1.0 and float(opt.encoder_weight[2].abs().max()) == 0.0
    assert float(opt.kl_per_dim[0]) == pytest.approx(0.5 * math.log(3.0 / 0.64))
    beta_opt = LinearVAE.ppca_optimum(
        ppca_population_covariance(ds), 3, covariance=True, noise=0.8, beta=2.0
    )
    assert beta_opt.collapsed.tolist() == [False, True, True]


def test_trained_linear_vae_reaches_the_ppca_log_likelihood():
    # Tolerance: 0.01 nats per point (training is stochastic; the optimum is the maximum).
    x = make_ppca(1000, seed=0).data
    opt = LinearVAE.ppca_optimum(x, 3)
    pyro.set_rng_seed(0)
    vae = LinearVAE(10, 3)
    fit(
        vae.model,
        vae.guide,
        x,
        loss=PlainELBO(),
        optim=_adam(0.02),
        epochs=800,
        batch_size=len(x),
        seed=0,
        progress=False,
        monitor=None,
    )
    with torch.no_grad():
        ll = float(vae.marginal_log_likelihood(x).mean())
        elbo = float(vae.analytic_elbo(x).mean())
    assert ll <= opt.log_likelihood + 1e-4
    assert ll == pytest.approx(opt.log_likelihood, abs=0.01)
    assert elbo == pytest.approx(ll, abs=0.04)  # the ELBO is (nearly) tight
    assert float(vae.noise_std.detach()) ** 2 == pytest.approx(opt.noise_variance, rel=0.03)
    ww = (vae.loading @ vae.loading.T).detach().double()
    assert float(torch.linalg.norm(ww - opt.loading @ opt.loading.T) / torch.linalg.norm(ww)) < 0.05


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_collapsed_dimensions_match_the_analytic_rule(beta):
    # Fixed sigma = 1: eigenvalues (about) 6, 3, 0.6, 0.4 -> with beta sigma^2 = 1 the last
    # two collapse, with beta sigma^2 = 2 as well (3 > 2 stays active).
    x = make_ppca(1000, spectrum=(6.0, 3.0, 0.6, 0.4), noise=0.5, input_dim=8, seed=1).data
    opt = LinearVAE.ppca_optimum(x, 4, noise=1.0, beta=beta)
    rule = LinearVAE.collapsed_dimensions(opt.leading_eigenvalues, 1.0, beta=beta)
    assert rule.tolist() == [False, False, True, True] == opt.collapsed.tolist()
    pyro.set_rng_seed(0)
    vae = LinearVAE(8, 4, noise=1.0)
    fit(
        vae.model,
        vae.guide,
        x,
        loss=BetaELBO(beta),
        optim=_adam(0.05),
        epochs=600,
        batch_size=len(x),
        seed=0,
        progress=False,
        monitor=None,
    )
    site = diagnose(vae.model, vae.guide, x, vae.latent_sites).sites["z"]
    assert sorted(site.status) == ["active", "active", "collapsed", "collapsed"]
    order = np.argsort(-site.kl_per_dim)
    assert (site.kl_per_dim[order[2:]] < 0.01).all()
    np.testing.assert_allclose(site.kl_per_dim[order], opt.kl_per_dim.numpy(), atol=0.05)
    assert float(vae.marginal_log_likelihood(x).detach().mean()) == pytest.approx(
        opt.log_likelihood, abs=0.01
    )


def test_linear_vae_validation():
    with pytest.raises(ValueError, match="noise must be one of 'learned'"):
        LinearVAE(4, 2, noise="fixed")
    with pytest.raises(ValueError, match="noise must be > 0.0"):
        LinearVAE(4, 2, noise=0.0)
    with pytest.raises(TypeError, match="noise must be 'learned' or a positive float"):
        LinearVAE(4, 2, noise=True)
    vae = LinearVAE(4, 2, noise=0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4\), got \(3, 5\)"):
        vae.marginal_log_likelihood(torch.zeros(3, 5))
    x = torch.randn(20, 4)
    with pytest.raises(
        ValueError, match="solution has noise variance .* fixed at sigma\\^2 = 0.25"
    ):
        vae.load_ppca(LinearVAE.ppca_optimum(x, 2))
    with pytest.raises(ValueError, match=r"needs \(4, 2\)"):
        vae.load_ppca(LinearVAE.ppca_optimum(x, 3, noise=0.5))
    with pytest.raises(ValueError, match="beta != 1 needs a fixed noise"):
        LinearVAE.ppca_optimum(x, 2, beta=2.0)
    with pytest.raises(ValueError, match="latent_dim = D = 4 leaves no eigenvalue"):
        LinearVAE.ppca_optimum(x, 4)
    with pytest.raises(ValueError, match="latent_dim must be <= D = 4"):
        LinearVAE.ppca_optimum(x, 5, noise=1.0)
    with pytest.raises(ValueError, match=r"covariance must be square \(D, D\)"):
        LinearVAE.ppca_optimum(x, 2, covariance=True)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        LinearVAE.ppca_optimum(torch.ones(5, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="eigenvalues must be finite and >= 0"):
        LinearVAE.collapsed_dimensions([1.0, -1.0], 1.0)


# ======================================================================================
# ConvVAE and its PixelCNN head
# ======================================================================================
def _all_binary_images(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


@pytest.mark.parametrize("colors", [1, 2])
def test_autoregressive_likelihood_is_normalised_over_all_images(colors):
    # sum over all 2^(C*H*W) binary images of p(x|z) = 1 only if every conditional sees
    # exactly the earlier pixels (and colours): a check of the masks and of the scoring.
    pyro.set_rng_seed(0)
    vae = ConvVAE((colors, 2, 2), 2, channels=(3,), autoregressive=True, ar_hidden=6, ar_kernel=3)
    images = _all_binary_images(colors * 4)
    z = torch.randn(1, 2).expand(len(images), 2)
    with torch.no_grad():
        total = torch.logsumexp(vae.decode(z, images).log_prob(images), 0).exp()
    assert float(total) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("colors", [1, 3])
def test_pixelcnn_head_is_causal_in_raster_and_colour_order(colors):
    pyro.set_rng_seed(0)
    vae = ConvVAE((colors, 4, 4), 2, channels=(2,), autoregressive=True, ar_hidden=6, ar_layers=2)
    x = torch.rand(1, colors, 4, 4, requires_grad=True)
    features = vae._features(torch.randn(1, 2))
    out = vae.head(x, features)
    order = lambda c, i, j: (i * 4 + j, c)  # noqa: E731  (pixel first, then colour)
    for c, i, j in itertools.product(range(colors), range(4), range(4)):
        (grad,) = torch.autograd.grad(out[0, c, i, j], x, retain_graph=True)
        for cc, ii, jj in itertools.product(range(colors), range(4), range(4)):
            if order(cc, ii, jj) >= order(c, i, j):
                assert grad[0, cc, ii, jj] == 0, f"output {(c, i, j)} sees input {(cc, ii, jj)}"
    # and the receptive field is not empty: the last output sees the first pixel
    (grad,) = torch.autograd.grad(out[0, colors - 1, 3, 3], x)
    assert grad[0, 0, 0, 0] != 0


def test_masked_convolution_masks():
    a = MaskedConv2d(1, 1, 3, mask_type="A").mask[0, 0]
    b = MaskedConv2d(1, 1, 3, mask_type="B").mask[0, 0]
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        MaskedConv2d(1, 1, 2, mask_type="A")


def test_greedy_generation_is_a_fixed_point_of_the_teacher_forced_decoder():
    pyro.set_rng_seed(1)
    vae = ConvVAE((1, 5, 6), 3, channels=(2,), autoregressive=True, ar_hidden=8)
    z = torch.randn(4, 3)
    x = vae.generate(z, greedy=True)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    logits = vae.decode(z, x).base_dist.logits
    assert torch.equal((logits > 0).float(), x)


def test_sampled_images_follow_the_autoregressive_likelihood():
    pyro.set_rng_seed(2)
    vae = ConvVAE((1, 2, 2), 2, channels=(3,), autoregressive=True, ar_hidden=6, ar_kernel=3)
    with torch.no_grad():
        for p in vae.head.parameters():
            p.mul_(4.0)  # a peaked, far-from-uniform distribution over the 16 images
    z = torch.randn(1, 2)
    n = 20000
    draws = vae.generate(z.expand(n, 2))
    codes = (draws * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / n
    images = _all_binary_images(4)
    with torch.no_grad():
        probs = vae.decode(z.expand(16, 2), images).log_prob(images).exp().double()
    # 4 binomial standard errors per cell
    assert torch.all((freq - probs).abs() <= 4 * torch.sqrt(probs * (1 - probs) / n) + 1e-3)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("autoregressive", [False, True])
def test_conv_vae_odd_sizes_likelihoods_and_image_inputs(likelihood, autoregressive):
    vae = ConvVAE(
        (2, 7, 9),
        3,
        likelihood=likelihood,
        channels=(4, 4),
        autoregressive=autoregressive,
        ar_hidden=4,
    )
    x = torch.rand(5, 2 * 7 * 9)
    z = torch.randn(5, 3)
    d = vae.decode(z, x)
    assert d.batch_shape == (5,) and d.event_shape == (126,)
    # the image layout (N, C, H, W) gives the same q(z|x) and the same likelihood
    images = x.reshape(5, 2, 7, 9)
    torch.testing.assert_close(vae.encode(images).mean, vae.encode(x).mean)
    torch.testing.assert_close(vae.decode(z, images).log_prob(x), d.log_prob(x))
    tr = poutine.trace(vae.model).get_trace(images)
    assert tr.nodes["x"]["value"].shape == (5, 126)
    # vectorised particles: leading batch dimensions of z
    assert vae.decode(torch.randn(4, 5, 3), x).batch_shape == (4, 5)


def test_factorised_decoder_ignores_the_context_and_the_autoregressive_one_needs_it():
    z = torch.randn(3, 2)
    plain = ConvVAE((1, 4, 4), 2, channels=(2,))
    torch.testing.assert_close(plain.decode(z).mean, plain.decode(z, torch.rand(3, 16)).mean)
    ar = ConvVAE((1, 4, 4), 2, channels=(2,), autoregressive=True, ar_hidden=4)
    with pytest.raises(ValueError, match="needs the context image x"):
        ar.decode(z)
    with pytest.raises(ValueError, match="x has 4 rows but z has batch shape \\(3,\\)"):
        ar.decode(z, torch.rand(4, 16))


def test_conv_vae_validation():
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        ConvVAE((8, 8), 2)
    with pytest.raises(ValueError, match="H and W must be >= 4"):
        ConvVAE((1, 3, 8), 2, channels=(4, 4))
    with pytest.raises(ValueError, match="ar_kernel must be odd"):
        ConvVAE((1, 8, 8), 2, autoregressive=True, ar_kernel=4)
    with pytest.raises(TypeError, match="autoregressive must be a bool"):
        ConvVAE((1, 8, 8), 2, autoregressive=1)
    vae = ConvVAE((1, 4, 4), 2, channels=(2,))
    with pytest.raises(
        ValueError,
        match=r"x must have shape \(N, 16\) \(flattened\) or \(N, 1, 4, 4\), got \(3, 15\)",
    ):
        vae.model(torch.rand(3, 15))
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\] for likelihood='bernoulli'"):
        vae.guide(torch.rand(3, 16) + 1)
    with pytest.raises(
        ValueError, match=r"x must have shape \(N, 16\) \(flattened\) or \(N, 1, 4, 4\)"
    ):
        vae.encode(torch.rand(3, 2, 4, 4))


# ======================================================================================
# SequenceVAE
# ======================================================================================
def _enumerate_sequences(vocab_size, length):
    """Every distinct row <bos> t_1 .. t_{L-1} over the tokens that can follow (eos, unk,
    words), with <pad> after the first <eos>."""
    rows = set()
    for toks in itertools.product(range(2, vocab_size), repeat=length - 1):
        row, done = [1], False
        for t in toks:
            row.append(0 if done else t)
            done = done or t == 2
        rows.add(tuple(row))
    return torch.tensor(sorted(rows))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("latent_every_step", [True, False])
def test_sequence_likelihood_is_normalised_over_all_sequences(cell, latent_every_step):
    # The completed sequences plus the truncated ones (no <eos> by T) partition the
    # outcomes, so their probabilities sum to 1: checks teacher forcing, the masks after
    # <eos> and the zero probability of <pad>/<bos>.
    pyro.set_rng_seed(0)
    vae = SequenceVAE(6, 2, embed=3, hidden=5, cell=cell, latent_every_step=latent_every_step)
    rows = _enumerate_sequences(6, 4)
    assert len(rows) == 1 + 3 + 9 + 27  # <eos> at position 1, 2 or 3, or no <eos>
    z = torch.randn(1, 2).expand(len(rows), 2)
    with torch.no_grad():
        total = torch.logsumexp(vae.decode(z, rows).log_prob(rows[:, 1:]), 0).exp()
    assert float(total) == pytest.approx(1.0, abs=1e-5)


def test_positions_after_eos_contribute_exactly_zero():
    pyro.set_rng_seed(0)
    vae = SequenceVAE(10, 2, embed=4, hidden=6, word_dropout=0.4)
    x = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0], [1, 4, 5, 6, 7, 2]])
    garbage = x.clone()
    garbage[0, 4:] = torch.tensor([9, 3])
    garbage[1, 3:] = torch.tensor([2, 1, 8])  # even special tokens are ignored after <eos>

    def traces(data):
        pyro.set_rng_seed(7)  # same word-dropout draws
        return (
            poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(data),
            poutine.trace(vae.guide).get_trace(data),
        )

    pyro.set_rng_seed(3)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    (m1, g1), (m2, g2) = traces(x), traces(garbage)
    per_pos = m1.nodes["x"]["fn"].base_dist.log_prob(m1.nodes["x"]["value"])
    assert per_pos.shape == (3, 5)
    assert torch.all(per_pos[0, 3:] == 0) and torch.all(per_pos[1, 2:] == 0)
    assert torch.all(per_pos[0, :3] < 0) and torch.all(per_pos[2] < 0)
    assert torch.equal(m1.log_prob_sum(), m2.log_prob_sum())
    torch.testing.assert_close(g1.nodes["z"]["fn"].mean, g2.nodes["z"]["fn"].mean, atol=0, rtol=0)
    pyro.set_rng_seed(5)
    loss1 = PlainELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    assert PlainELBO().loss(vae.model, vae.guide, garbage) == loss1


def test_encode_reads_each_row_to_its_length_whatever_the_padding():
    vae = SequenceVAE(10, 3, embed=4, hidden=6)
    rows = [[1, 5, 2], [1, 6, 7, 8, 9, 2], [1, 4, 4, 2]]
    batch = torch.zeros(3, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r)
    q = vae.encode(batch)
    for i, r in enumerate(rows):
        alone = vae.encode(torch.tensor([r]))
        torch.testing.assert_close(q.mean[i], alone.mean[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(q.stddev[i], alone.stddev[0], atol=1e-6, rtol=1e-5)


def _spy_decoder_inputs(vae):
    seen = []
    run = vae._run

    def spy(z, inputs, state):
        seen.append(inputs.clone())
        return run(z, inputs, state)

    vae._run = spy
    return seen


def test_word_dropout_replaces_inputs_by_unk_at_the_given_rate_in_training_only():
    pyro.set_rng_seed(0)
    vae = SequenceVAE(12, 2, embed=4, hidden=6, word_dropout=0.3)
    x = make_sequences(2000, vocab_size=12, max_len=8, seed=0).data
    seen = _spy_decoder_inputs(vae)
    vae.guide(x)
    z = torch.zeros(len(x), 2)
    pyro.set_rng_seed(1)
    with poutine.condition(data={"z": z}):
        vae.model(x)
    inputs, original = seen[-1], x[:, :-1]
    assert torch.equal(inputs[:, 0], original[:, 0])  # <bos> is never dropped
    words = original[:, 1:] != 3  # positions not already <unk>
    dropped = (inputs[:, 1:] != original[:, 1:]) & words
    assert torch.all(inputs[:, 1:][dropped] == 3)
    assert float(dropped.sum() / words.sum()) == pytest.approx(0.3, abs=0.015)  # ~3.5 sd
    # the same seed drops the same words
    pyro.set_rng_seed(1)
    with poutine.condition(data={"z": z}):
        vae.model(x)
    assert torch.equal(seen[-1], inputs)
    # evaluation mode: no word dropout
    vae.eval()
    with poutine.condition(data={"z": z}):
        vae.model(x)
    assert torch.equal(seen[-1], original)


def test_full_word_dropout_makes_the_decoder_input_free():
    pyro.set_rng_seed(0)
    vae = SequenceVAE(10, 2, embed=4, hidden=6, word_dropout=1.0)
    a = torch.tensor([[1, 5, 6, 7, 2]])
    b = torch.tensor([[1, 9, 4, 8, 2]])
    z = torch.randn(1, 2)

    def logits(x):
        with poutine.condition(data={"z": z}):
            tr = poutine.trace(vae.model).get_trace(x)
        return tr.nodes["x"]["fn"].base_dist.base_dist.logits

    torch.testing.assert_close(logits(a), logits(b))
    vae.eval()
    assert not torch.allclose(logits(a)[0, 1:], logits(b)[0, 1:])


def test_greedy_decoding_takes_the_argmax_and_pads_after_eos():
    pyro.set_rng_seed(2)
    vae = SequenceVAE(8, 2, embed=4, hidden=6, max_len=9)
    z = torch.randn(50, 2) * 3
    x = vae.generate(z, greedy=True)
    assert x.shape == (50, 9) and x.dtype == torch.long and torch.all(x[:, 0] == 1)
    vae.check_input(x)  # a valid batch: no <pad>/<bos> inside, padding after <eos>
    ended = (x == 2).any(1)
    assert ended.any() and (~ended).any()
    logits = vae.decode(z, x).base_dist.base_dist.logits
    scored = vae.valid_positions(x)[:, 1:]
    assert torch.equal(logits.argmax(-1)[scored], x[:, 1:][scored])
    assert torch.all(x[:, 1:][~scored] == 0)
    torch.testing.assert_close(vae.generate(z, greedy=True), x, atol=0, rtol=0)
    assert vae.generate(z[:3], max_len=4).shape == (3, 4)


def test_sampled_sequences_follow_the_model_distribution():
    pyro.set_rng_seed(3)
    vae = SequenceVAE(5, 2, embed=3, hidden=4)
    z = torch.randn(1, 2)
    rows = _enumerate_sequences(5, 4)
    with torch.no_grad():
        probs = vae.decode(z.expand(len(rows), 2), rows).log_prob(rows[:, 1:]).exp().double()
    n = 20000
    draws = vae.generate(z.expand(n, 2), max_len=4)
    index = {tuple(r.tolist()): i for i, r in enumerate(rows)}
    counts = torch.zeros(len(rows), dtype=torch.float64)
    for r in draws.tolist():
        counts[index[tuple(r)]] += 1
    freq = counts / n
    assert torch.all((freq - probs).abs() <= 4 * torch.sqrt(probs * (1 - probs) / n) + 1e-3)


def test_reconstruct_greedily_decodes_the_posterior_mean():
    pyro.set_rng_seed(0)
    vae = SequenceVAE(10, 2, embed=4, hidden=6)
    x = make_sequences(6, vocab_size=10, max_len=7, n_topics=2, seed=2).data
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape
    torch.testing.assert_close(rec, vae.generate(vae.encode(x).mean, greedy=True, max_len=7))


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (
            torch.tensor([[1.0, 4.0, 2.0]]),
            TypeError,
            r"x must hold int64 token ids \(torch.long\), got torch.float32",
        ),
        (
            torch.tensor([[1, 4, 2]], dtype=torch.int32),
            TypeError,
            "got torch.int32; convert with x.long()",
        ),
        (torch.tensor([1, 4, 2]), ValueError, r"x must have shape \(N, T\) with T >= 2"),
        (torch.tensor([[1]]), ValueError, r"x must have shape \(N, T\) with T >= 2"),
        (
            torch.tensor([[1, 4, 2], [1, 10, 2]]),
            ValueError,
            r"outside the vocabulary \[0, 10\): x\[1, 1\] = 10",
        ),
        (torch.tensor([[1, -1, 2]]), ValueError, "outside the vocabulary"),
        (
            torch.tensor([[1, 4, 2], [5, 4, 2]]),
            ValueError,
            r"must start with <bos> \(id 1\); row 1 starts with id 5",
        ),
        (
            torch.tensor([[1, 4, 0, 5, 2]]),
            ValueError,
            r"x\[0, 2\] is <pad> \(id 0\) before the row's <eos>",
        ),
        (torch.tensor([[1, 4, 1, 2]]), ValueError, r"x\[0, 2\] is a second <bos>"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "x is empty"),
    ],
)
def test_sequence_input_validation(x, exc, match):
    vae = SequenceVAE(10, 2, embed=4, hidden=4)
    with pytest.raises(exc, match=match):
        vae.model(x)
    with pytest.raises(exc, match=match):
        vae.encode(x)


def test_sequence_decode_needs_context_and_constructor_validation():
    vae = SequenceVAE(10, 2, embed=4, hidden=4)
    with pytest.raises(ValueError, match="use generate\\(z\\) for greedy or sampled decoding"):
        vae.decode(torch.randn(2, 2))
    with pytest.raises(ValueError, match="x has 1 rows but z has batch shape \\(2,\\)"):
        vae.decode(torch.randn(2, 2), torch.tensor([[1, 4, 2]]))
    with pytest.raises(ValueError, match="vocab_size must be >= 5"):
        SequenceVAE(4, 2)
    with pytest.raises(ValueError, match="word_dropout must be <= 1.0"):
        SequenceVAE(10, 2, word_dropout=1.5)
    with pytest.raises(ValueError, match="cell must be one of 'lstm', 'gru'"):
        SequenceVAE(10, 2, cell="rnn")


# -- collapse and its remedies ---------------------------------------------------------
def _train_sequence_vae(data, *, objective, word_dropout=0.0, epochs, seed=0):
    train, valid = data.split(0.2, seed=0)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = SequenceVAE(len(data.vocab), 4, embed=32, hidden=64, word_dropout=word_dropout)
    steps = epochs * -(-len(train) // 50)
    loss = {
        "plain": lambda: PlainELBO(),
        "cyclical": lambda: AnnealedELBO(Cyclical(period=max(1, steps // 4))),
        "freebits": lambda: ELBOS.get("freebits")(free_bits=0.25),
    }[objective]()
    fit(
        vae.model,
        vae.guide,
        train.data,
        loss=loss,
        optim=_adam(3e-3),
        epochs=epochs,
        batch_size=50,
        seed=seed,
        progress=False,
        monitor=None,
    )
    vae.eval()
    return diagnose(vae.model, vae.guide, valid.data, vae.latent_sites).sites["z"]


@pytest.fixture(scope="module")
def topic_sequences():
    return make_sequences(600, vocab_size=20, max_len=10, n_topics=4, seed=0)


def test_sequence_vae_collapses_with_the_plain_elbo(topic_sequences):
    site = _train_sequence_vae(topic_sequences, objective="plain", epochs=20)
    assert site.active_units == 0
    assert site.mi < 0.05 and site.kl < 0.05
    assert set(site.status) == {"collapsed"}


def test_cyclical_annealing_with_word_dropout_prevents_collapse(topic_sequences):
    site = _train_sequence_vae(topic_sequences, objective="cyclical", word_dropout=0.5, epochs=20)
    assert site.active_units >= 1
    assert site.mi > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sequence_collapse_and_remedies_across_seeds(seed):
    data = make_sequences(1500, vocab_size=24, max_len=12, n_topics=4, seed=seed)
    plain = _train_sequence_vae(data, objective="plain", epochs=15, seed=seed)
    assert plain.active_units == 0 and plain.mi < 0.05
    remedied = _train_sequence_vae(
        data, objective="cyclical", word_dropout=0.5, epochs=15, seed=seed
    )
    assert remedied.active_units >= 1 and remedied.mi > 0.3
    if "freebits" in ELBOS:
        free = _train_sequence_vae(data, objective="freebits", epochs=15, seed=seed)
        assert free.active_units >= 1 and free.mi > 0.3


# ======================================================================================
# LadderVAE
# ======================================================================================
def test_ladder_guide_merges_bottom_up_and_top_down_by_precision():
    pyro.set_rng_seed(0)
    vae = LadderVAE(12, 2, z1_dim=3, hidden=(8,), top_hidden=(5,), likelihood="gaussian")
    x = torch.randn(6, 12)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    z2 = guide_tr.nodes["z2"]["value"]
    estimate, _ = vae._bottom_up(x)
    p = model_tr.nodes["z1"]["fn"].base_dist  # the model's p(z1|z2) at the guide's z2
    prior_again = vae.z1_prior(z2).base_dist
    torch.testing.assert_close(p.loc, prior_again.loc)
    q = guide_tr.nodes["z1"]["fn"].base_dist
    var = 1 / (estimate.scale**-2 + p.scale**-2)
    torch.testing.assert_close(q.scale**2, var)
    torch.testing.assert_close(q.loc, var * (estimate.loc / estimate.scale**2 + p.loc / p.scale**2))
    assert torch.all(q.scale < torch.minimum(estimate.scale, p.scale))
    # the top layer is purely bottom-up and is what encode returns
    torch.testing.assert_close(guide_tr.nodes["z2"]["fn"].mean, vae.encode(x).mean)
    layers = vae.encode_layers(x, z2)
    torch.testing.assert_close(layers["z1"].mean, q.loc)


def test_ladder_prior_applies_to_the_top_layer_and_each_layer_is_diagnosed():
    vae = LadderVAE(16, 2, ShiftedPrior(2), z1_dim=3, hidden=(8,), top_hidden=(4,))
    x = torch.rand(40, 16)
    tr = poutine.trace(vae.model).get_trace(x)
    assert float(tr.nodes["z2"]["fn"].mean.mean()) == pytest.approx(0.5)
    breakdown = PlainELBO().breakdown(vae.model, vae.guide, x)
    assert breakdown["z1"].shape == (3,) and breakdown["z2"].shape == (2,)
    report = diagnose(vae.model, vae.guide, x, vae.latent_sites)
    assert list(report.sites) == ["z1", "z2"]
    assert report.sites["z1"].latent_dim == 3 and report.sites["z2"].latent_dim == 2
    assert report.sites["z1"].kl_estimator == "analytic"
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d["sites"]) == {"z1", "z2"}


def test_ladder_reconstruct_and_sample_follow_the_hierarchy():
    pyro.set_rng_seed(0)
    vae = LadderVAE(16, 2, z1_dim=3, hidden=(8,), top_hidden=(4,))
    x = torch.rand(5, 16)
    z1 = vae.encode_layers(x)["z1"].mean
    torch.testing.assert_close(vae.reconstruct(x), vae.decode(z1).mean)
    pyro.set_rng_seed(1)
    s = vae.sample(4)
    pyro.set_rng_seed(1)
    z2 = vae.prior.sample(4)
    expected = vae.decode(vae.z1_prior(z2).sample()).sample()
    torch.testing.assert_close(s, expected)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 3\)"):
        vae.generate(torch.zeros(2, 2))


def test_ladder_validation():
    with pytest.raises(ValueError, match="hidden must have at least one layer"):
        LadderVAE(8, 2, hidden=())
    with pytest.raises(ValueError, match="top_hidden must have at least one layer"):
        LadderVAE(8, 2, top_hidden=())
    with pytest.raises(ValueError, match="z1_dim must be >= 1"):
        LadderVAE(8, 2, z1_dim=0)
    vae = LadderVAE(8, 2, hidden=(4,), top_hidden=(4,))
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        vae.model(torch.full((2, 8), 2.0))


# ======================================================================================
# Command line
# ======================================================================================
@pytest.mark.parametrize(
    "model, dataset, options",
    [
        ("linear", "ppca", ["--dataset-option", "n=200"]),
        ("conv", "shapes", ["--dataset-option", "n=200", "--model-option", "channels=4,8"]),
        (
            "conv",
            "digits",
            [
                "--model-option",
                "channels=4",
                "--model-option",
                "autoregressive=true",
                "--model-option",
                "ar_hidden=4",
                "--model-option",
                "ar_layers=1",
            ],
        ),
        (
            "sequence",
            "sequences",
            [
                "--dataset-option",
                "n=200",
                "--model-option",
                "embed=8",
                "--model-option",
                "hidden=16",
            ],
        ),
        (
            "ladder",
            "ppca",
            [
                "--dataset-option",
                "n=200",
                "--model-option",
                "hidden=16",
                "--model-option",
                "top_hidden=8",
            ],
        ),
    ],
)
def test_cli_runs_every_model(tmp_path, capsys, model, dataset, options):
    # (mlp is run end to end by test_cli.py)
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--model",
            model,
            "--dataset",
            dataset,
            "--epochs",
            "1",
            "--latent-dim",
            "2",
            "--batch-size",
            "256",
            *options,
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    sites = ("z1", "z2") if model == "ladder" else ("z",)
    assert tuple(metrics["report"]["sites"]) == sites
    assert (out / "model.pt").exists() and any((out / "figures").glob("*.png"))


def test_cli_reports_a_wrong_dataset_kind(tmp_path, capsys):
    code = main(
        [
            "run",
            "--model",
            "sequence",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "x"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "model 'sequence' needs token sequences" in capsys.readouterr().err


def test_collapse_rule_counts_ties_at_the_boundary_as_collapsed():
    lam = 0.3
    sigma = math.sqrt(lam)
    assert sigma**2 < lam  # the tie rounds to the "active" side without a tolerance
    assert LinearVAE.collapsed_dimensions([1.0, lam], sigma).tolist() == [False, True]
    assert LinearVAE.collapsed_dimensions([1.0, lam], sigma, rtol=0.0).tolist() == [False, False]
    assert LinearVAE.collapsed_dimensions([0.31], sigma, rtol=0.0, atol=0.02).tolist() == [True]
    assert LinearVAE.collapsed_dimensions([0.31], sigma).tolist() == [False]
    with pytest.raises(ValueError, match="rtol must be >= 0"):
        LinearVAE.collapsed_dimensions([lam], sigma, rtol=-1e-3)
    with pytest.raises(TypeError, match="atol must be a real number"):
        LinearVAE.collapsed_dimensions([lam], sigma, atol="0")
    # the optimum at a tie: collapsed, with exactly zero loading and KL, unit scale
    cov = torch.diag(torch.tensor([2.0, lam, 0.1], dtype=torch.float64))
    opt = LinearVAE.ppca_optimum(cov, 2, covariance=True, noise=sigma)
    assert opt.collapsed.tolist() == [False, True]
    assert opt.collapsed_dimensions(rtol=0.0).tolist() == [False, False]
    assert float(opt.loading[:, 1].abs().max()) == 0.0 and float(opt.kl_per_dim[1]) == 0.0
    assert float(opt.posterior_scale[1]) == 1.0 and float(opt.encoder_weight[1].abs().max()) == 0.0
    assert float(opt.kl_per_dim[0]) == pytest.approx(0.5 * math.log(2.0 / lam))
