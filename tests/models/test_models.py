"""The VAE contract, run on every ready model; plus MLPVAE specifics.

``CASES`` lists one small instance of every model (and model variant); each contract test
is parametrised over it, the way Pyro runs one suite over every distribution fixture. A new
model joins the suite by adding one entry to ``tests/model_cases.py``. Model-specific behaviour (closed forms,
collapse, masks) lives in ``test_model_zoo.py``.
"""

import inspect
import math

import numpy as np
import pyro
import pytest
import torch
from model_cases import CASE_IDS, CASES, INCOMPATIBLE, N
from pyro import poutine

from pyrocollapse.data import make_ppca, make_sequences, make_shapes
from pyrocollapse.diagnostics import diagnose
from pyrocollapse.elbo import ELBOS, PlainELBO
from pyrocollapse.models import (
    MLPVAE,
    MODELS,
    VAE,
    ConvVAE,
    SequenceVAE,
    make_model,
)
from pyrocollapse.priors import PRIORS, StandardNormalPrior
from pyrocollapse.schedules import Linear
from pyrocollapse.train import fit


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
    with pytest.raises(ValueError, match="unknown model 'cnn'; valid names: .*mlp"):
        make_model("cnn")
    assert set(MODELS.names()) == {"mlp", "linear", "conv", "sequence", "ladder"}


# ======================================================================================
# The contract suite
# ======================================================================================
PRIOR_PARAMS = PRIORS.names()


def _traces(vae: VAE, x: torch.Tensor):
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    return model_tr, guide_tr


def test_every_registered_model_has_a_case():
    assert {c.registry_name for c in CASES} == set(MODELS.names())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_programs_have_one_data_plate_and_the_documented_sites(case):
    vae, x = case.build(), case.data()
    assert vae.latent_sites == tuple(case.latent_dims)
    model_tr, guide_tr = _traces(vae, x)
    model_tr.compute_log_prob()
    for site, dim in case.latent_dims.items():
        for tr in (model_tr, guide_tr):
            node = tr.nodes[site]
            assert node["fn"].batch_shape == (N,) and node["fn"].event_shape == (dim,)
            assert [f.name for f in node["cond_indep_stack"]] == ["data"]
            assert node["value"].shape == (N, dim)
    obs = model_tr.nodes[vae.observed_site]
    assert obs["is_observed"] and obs["fn"].batch_shape == (N,)
    assert obs["log_prob"].shape == (N,) and bool(torch.isfinite(obs["log_prob"]).all())
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    assert set(case.latent_dims) <= set(guide_tr.nodes)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_encode_generate_sample_reconstruct_shapes(case):
    vae, x = case.build(), case.data()
    q = vae.encode(x)
    assert q.batch_shape == (N,) and q.event_shape == (vae.latent_dim,)
    z = torch.randn(3, vae.decoder_latent_dim)
    for greedy in (False, True):
        out = vae.generate(z, greedy=greedy)
        assert out.dtype == x.dtype and out.shape[0] == 3 and not out.requires_grad
    samples = vae.sample(5)
    assert samples.dtype == x.dtype and samples.shape == (5, *vae.event_shape)
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape and rec.dtype == x.dtype
    # draws are valid observations: the model accepts them back
    vae.check_input(samples)
    vae.check_input(rec)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sampling_is_deterministic_given_the_seed(case):
    vae = case.build()
    pyro.set_rng_seed(3)
    a = vae.sample(4)
    pyro.set_rng_seed(3)
    b = vae.sample(4)
    assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_training_is_deterministic_given_the_seed_and_moves_every_parameter(case):
    x = case.data()
    runs = []
    for _ in range(2):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = case.build()
        before = {k: v.detach().clone() for k, v in vae.named_parameters()}
        hist = fit(
            vae.model,
            vae.guide,
            x,
            loss=PlainELBO(),
            epochs=2,
            batch_size=6,
            seed=0,
            progress=False,
            monitor=None,
        )
        runs.append([r.values["elbo"] for r in hist])
        after = dict(vae.named_parameters())
        frozen = [k for k in before if torch.equal(before[k], after[k].detach())]
        assert not frozen, f"parameters never updated: {frozen}"
    assert runs[0] == runs[1]
    assert all(math.isfinite(v) for v in runs[0])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_two_instances_never_share_parameters(case):
    a, b = case.build(), case.build()
    x = case.data()
    names_a = {
        n for n, s in poutine.trace(a.guide).get_trace(x).nodes.items() if s["type"] == "param"
    }
    tr_b = poutine.trace(b.guide).get_trace(x)
    names_b = {n for n, s in tr_b.nodes.items() if s["type"] == "param"}
    assert names_a and names_b and not names_a & names_b
    own = {id(p) for p in b.parameters()}
    assert all(id(tr_b.nodes[n]["value"]) in own for n in names_b)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_latent_validation(case):
    vae = case.build()
    with pytest.raises(ValueError, match=rf"z must have shape \(n, {vae.decoder_latent_dim}\)"):
        vae.generate(torch.zeros(2, vae.decoder_latent_dim + 1))
    with pytest.raises(TypeError, match="z must have a floating dtype"):
        vae.generate(torch.zeros(2, vae.decoder_latent_dim, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be >= 1"):
        vae.sample(0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_wrong_prior_dimension_is_refused(case):
    with pytest.raises(ValueError, match=r"prior.latent_dim \(5\) must equal latent_dim \(2\)"):
        case.build(StandardNormalPrior(5))


# -- every model x every prior --------------------------------------------------------
@pytest.mark.parametrize("prior_name", PRIOR_PARAMS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_model_trains_and_is_diagnosed_with_every_prior(case, prior_name):
    x = case.data()
    top = list(case.latent_dims.values())[-1] if case.registry_name == "ladder" else 2
    prior = PRIORS.get(prior_name).from_options(top, input_shape=case.input_shape)
    reason = INCOMPATIBLE.get((case.registry_name, prior_name))
    if reason is not None:
        with pytest.raises(ValueError, match="pseudo-inputs"):
            case.build(prior)
        return
    vae = case.build(prior)
    assert vae.prior is prior
    hist = fit(
        vae.model,
        vae.guide,
        x,
        loss=PlainELBO(),
        epochs=1,
        batch_size=6,
        seed=0,
        progress=False,
        monitor=None,
    )
    assert math.isfinite(hist[-1].values["elbo"])
    report = diagnose(vae.model, vae.guide, x, vae.latent_sites)
    assert list(report.sites) == list(vae.latent_sites)
    for site, dim in case.latent_dims.items():
        assert report.sites[site].kl_per_dim.shape == (dim,)
    assert vae.sample(3).shape[0] == 3


# -- every model x every ELBO variant -------------------------------------------------
def _make_elbo(name: str):
    """Build an objective by name with its defaults (a short schedule where required)."""
    cls = ELBOS.get(name)
    required = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is p.empty
        and p.name != "self"
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    kwargs = {"schedule": Linear(warmup_steps=2)} if "schedule" in required else {}
    unknown = required - set(kwargs)
    assert not unknown, f"ELBO {name!r} has required arguments this test does not know: {unknown}"
    return cls(**kwargs)


@pytest.mark.parametrize("elbo_name", ELBOS.names())
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_model_trains_with_every_elbo(case, elbo_name):
    vae, x = case.build(), case.data()
    hist = fit(
        vae.model,
        vae.guide,
        x,
        loss=_make_elbo(elbo_name),
        epochs=1,
        batch_size=6,
        seed=0,
        progress=False,
        monitor=None,
    )
    values = hist[-1].values
    assert math.isfinite(values["loss"]) and math.isfinite(values["elbo"])


# -- from_dataset ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def datasets():
    from pyrocollapse.data import load_digits

    return {
        "ppca": make_ppca(40, seed=0),
        "digits": load_digits(),
        "shapes": make_shapes(40, size=8, seed=0),
        "sequences": make_sequences(40, vocab_size=12, max_len=8, seed=0),
    }


@pytest.mark.parametrize(
    "model, dataset, options, check",
    [
        ("linear", "ppca", {}, lambda v: v.input_dim == 10 and v.learned_noise),
        ("linear", "digits", {"noise": 0.3}, lambda v: v.input_dim == 64),
        ("mlp", "ppca", {"hidden": (4,)}, lambda v: v.likelihood == "gaussian"),
        (
            "ladder",
            "digits",
            {"hidden": (4,), "top_hidden": (3,)},
            lambda v: v.likelihood == "bernoulli",
        ),
        (
            "ladder",
            "ppca",
            {"hidden": (4,), "top_hidden": (3,)},
            lambda v: v.likelihood == "gaussian",
        ),
        ("conv", "digits", {"channels": (4,)}, lambda v: v.image_shape == (1, 8, 8)),
        (
            "conv",
            "shapes",
            {"channels": (4, 4), "autoregressive": True},
            lambda v: v.autoregressive and v.event_shape == (64,),
        ),
        (
            "sequence",
            "sequences",
            {"embed": 4, "hidden": 4},
            lambda v: v.vocab_size == 12 and v.max_len == 8,
        ),
    ],
)
def test_from_dataset_sizes_the_model(datasets, model, dataset, options, check):
    ds = datasets[dataset]
    vae = MODELS.get(model).from_dataset(ds, latent_dim=2, **options)
    assert isinstance(vae, MODELS.get(model)) and check(vae)
    pyro.set_rng_seed(0)
    assert math.isfinite(PlainELBO().loss(vae.model, vae.guide, ds.data[:8]))


@pytest.mark.parametrize(
    "model, dataset, match",
    [
        (
            "linear",
            "sequences",
            "model 'linear' needs vector data; for token sequences use --model sequence",
        ),
        (
            "mlp",
            "sequences",
            "model 'mlp' needs vector data; for token sequences use --model sequence",
        ),
        ("ladder", "sequences", "model 'ladder' needs vector data"),
        (
            "conv",
            "sequences",
            "model 'conv' needs images; for token sequences use --model sequence",
        ),
        ("conv", "ppca", r"model 'conv' needs an image dataset .* use --model mlp"),
        (
            "sequence",
            "digits",
            r"model 'sequence' needs token sequences .* 'unit_interval': use --model conv or mlp",
        ),
        ("sequence", "ppca", r"'real': use --model mlp or linear"),
    ],
)
def test_from_dataset_refuses_a_wrong_kind_and_names_a_fitting_model(
    datasets, model, dataset, match
):
    with pytest.raises(ValueError, match=match):
        MODELS.get(model).from_dataset(datasets[dataset], latent_dim=2)


def test_from_dataset_refuses_options_read_off_the_dataset(datasets):
    with pytest.raises(ValueError, match="model 'conv' takes image_shape from the dataset"):
        ConvVAE.from_dataset(datasets["digits"], latent_dim=2, image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="model 'sequence' takes vocab_size from the dataset"):
        SequenceVAE.from_dataset(datasets["sequences"], latent_dim=2, vocab_size=40)
    with pytest.raises(TypeError, match=r"dataset must be a pyrocollapse.data.Dataset"):
        MLPVAE.from_dataset(torch.rand(4, 3), latent_dim=2)


def test_base_hooks_default_to_the_factorised_decoder():
    vae = MLPVAE(5, 2, hidden=(3,))
    z = torch.randn(4, 2)
    assert torch.equal(vae.generate(z, greedy=True), vae.decode(z).mean)
    pyro.set_rng_seed(1)
    a = vae.generate(z)
    pyro.set_rng_seed(1)
    assert torch.equal(a, vae.decode(z).sample())
    assert not VAE.autoregressive and vae.decoder_latent_dim == 2
    x = torch.rand(3, 5)
    assert torch.equal(vae.reconstruct(x), vae.decode(vae.encode(x).mean).mean)
    assert np.isfinite(float(PlainELBO().loss(vae.model, vae.guide, x)))


@pytest.mark.parametrize("module", ["base", "mlp", "linear", "conv", "sequence", "ladder"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"pyrocollapse.models.{module}")
    result = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_check_input_scans_values_only_under_validation():
    # type, shape and device are always checked; the NaN and [0, 1] scans read every
    # value, so (like Pyro's support checks) they run only while validation is on
    vae = MLPVAE(input_dim=6, latent_dim=2)
    bad = torch.full((2, 6), float("nan"))
    with pyro.validation_enabled(False):
        assert vae.check_input(bad) is bad
        assert vae.check_input(torch.full((2, 6), 3.0)).shape == (2, 6)
        with pytest.raises(ValueError, match=r"x must have shape \(N, 6\)"):
            vae.check_input(torch.zeros(2, 5))
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError, match="x contains 12 NaN"):
            vae.check_input(bad)
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            vae.check_input(torch.full((2, 6), 3.0))
