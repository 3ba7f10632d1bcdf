import pyro
import pytest
import torch
from pyro import poutine

from pyrocollapse.priors import PRIORS, Prior, StandardNormalPrior, make_prior


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


def test_registry_contains_standard():
    assert "standard" in PRIORS
    assert isinstance(make_prior("standard", 3), StandardNormalPrior)
