import pyro
import pytest
import torch
from pyro import poutine

from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE, MODELS, make_model
from pyrocollapse.priors import StandardNormalPrior


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_mlpvae_shapes_and_sites(likelihood):
    vae = MLPVAE(12, 3, likelihood=likelihood, hidden=(8,))
    x = torch.rand(5, 12)
    q = vae.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    assert vae.decode(torch.randn(7, 3)).event_shape == (12,)
    assert vae.decode(torch.randn(7, 3)).batch_shape == (7,)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (5, 3)
    assert model_tr.nodes["x"]["is_observed"]
    assert [f.name for f in model_tr.nodes["z"]["cond_indep_stack"]] == ["data"]
    assert vae.sample(4).shape == (4, 12)
    assert vae.reconstruct(x).shape == (5, 12)
    assert vae.latent_sites == ("z",)
    assert torch.isfinite(torch.tensor(PlainELBO().loss(vae.model, vae.guide, x)))


def test_prior_is_an_argument_and_is_used():
    class Shifted(StandardNormalPrior):
        def distribution(self):
            return pyro.distributions.Normal(self._loc + 5.0, self._scale).to_event(1)

    vae = MLPVAE(6, 2, prior=Shifted(2), hidden=(4,))
    tr = poutine.trace(vae.model).get_trace(torch.rand(3, 6))
    assert tr.nodes["z"]["fn"].mean.mean() == pytest.approx(5.0)
    assert vae.sample(1000).shape == (1000, 6)


def test_decoder_weakening_knobs():
    vae = MLPVAE(6, 2, hidden=(8, 4), decoder_hidden=(), decoder_dropout=0.0)
    assert [type(m).__name__ for m in vae.decoder] == ["Linear"]
    vae = MLPVAE(6, 2, hidden=(8,), decoder_dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout) for m in vae.decoder)


def test_two_models_do_not_share_weights_through_the_param_store():
    a, b = MLPVAE(4, 2, hidden=(3,)), MLPVAE(4, 2, hidden=(3,))
    x = torch.rand(2, 4)
    ta = poutine.trace(a.guide).get_trace(x)
    tb = poutine.trace(b.guide).get_trace(x)
    pa = {n for n, s in ta.nodes.items() if s["type"] == "param"}
    pb = {n for n, s in tb.nodes.items() if s["type"] == "param"}
    assert pa and pb and not pa & pb
    # every parameter the guide of b uses is one of b's own tensors
    own = {id(p) for p in b.parameters()}
    assert all(id(tb.nodes[n]["value"]) in own for n in pb)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda v: v.model(torch.rand(3, 5)),
            ValueError,
            r"x must have shape \(N, 6\), got \(3, 5\)",
        ),
        (lambda v: v.guide(torch.rand(3, 6).double() * 2), ValueError, r"x must lie in \[0, 1\]"),
        (
            lambda v: v.model(torch.ones(3, 6, dtype=torch.long)),
            TypeError,
            "x must have a floating dtype",
        ),
        (lambda v: v.model(torch.full((2, 6), float("nan"))), ValueError, "x contains 12 NaN"),
        (lambda v: v.sample(0), ValueError, "n must be >= 1"),
    ],
)
def test_input_validation(call, exc, match):
    vae = MLPVAE(6, 2, hidden=(4,))
    with pytest.raises(exc, match=match):
        call(vae)


def test_constructor_validation():
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        MLPVAE(4, 0)
    with pytest.raises(ValueError, match=r"prior.latent_dim \(3\) must equal latent_dim \(2\)"):
        MLPVAE(4, 2, prior=StandardNormalPrior(3))
    with pytest.raises(TypeError, match="prior must be a pyrocollapse.priors.Prior"):
        MLPVAE(4, 2, prior="standard")
    with pytest.raises(
        ValueError,
        match="likelihood must be one of 'bernoulli', 'continuous_bernoulli', 'gaussian'",
    ):
        MLPVAE(4, 2, likelihood="poisson")
    with pytest.raises(ValueError, match=r"hidden\[1\] must be >= 1"):
        MLPVAE(4, 2, hidden=(3, 0))
    with pytest.raises(ValueError, match="unknown model 'cnn'; valid names: mlp"):
        make_model("cnn")
    assert "mlp" in MODELS
