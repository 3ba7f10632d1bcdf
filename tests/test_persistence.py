"""Saving and loading: every model and prior round-trips; bad files are refused; run folders.

``MODEL_CASES`` and ``PRIOR_CASES`` hold one small instance of every registered model and
prior (and of the variants whose saved arguments differ: fixed noise, an autoregressive
head, a GRU, flows of each family); each round-trip test is parametrised over them, and a
coverage test fails when a registered name has no case.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro import poutine
from torch import nn

from pyrocollapse.data import make_ppca, make_sequences, make_shapes
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import (
    MLPVAE,
    MODELS,
    VAE,
    ConvVAE,
    LadderVAE,
    LinearVAE,
    SequenceVAE,
)
from pyrocollapse.persistence import FORMAT, FORMAT_VERSION, LoadedRun, Saveable, load_run
from pyrocollapse.priors import (
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
from pyrocollapse.testing import tiny_config


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------
def _unit(d: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.rand(6, d, generator=torch.Generator().manual_seed(3))


def _shapes() -> torch.Tensor:
    return make_shapes(6, size=8, seed=1).data


def _tokens() -> torch.Tensor:
    return make_sequences(6, vocab_size=12, max_len=7, n_topics=2, seed=1).data


def _ppca() -> torch.Tensor:
    return make_ppca(6, spectrum=(2.0, 1.0), input_dim=6, seed=1).data


#: (id, factory, data) for every model configuration.
MODEL_CASES: list[tuple[str, Callable[[], VAE], Callable[[], torch.Tensor]]] = [
    ("linear", lambda: LinearVAE(6, 2), _ppca),
    ("linear-fixed-noise", lambda: LinearVAE(6, 2, noise=0.5, init_std=0.2), _ppca),
    ("mlp", lambda: MLPVAE(16, 2, hidden=(8,)), _unit(16)),
    (
        "mlp-gaussian-vamp",
        lambda: MLPVAE(
            16,
            2,
            VampPrior(None, 3, (16,), latent_dim=2, support="real"),
            likelihood="gaussian",
            hidden=(8, 4),
            decoder_hidden=(5,),
        ),
        _unit(16),
    ),
    (
        "ladder",
        lambda: LadderVAE(16, 2, z1_dim=3, hidden=(8,), top_hidden=(4,)),
        _unit(16),
    ),
    ("conv", lambda: ConvVAE((1, 8, 8), 2, channels=(4, 8)), _shapes),
    (
        "conv-pixelcnn-gaussian",
        lambda: ConvVAE(
            [1, 8, 8],
            2,
            channels=(4,),
            autoregressive=True,
            ar_hidden=4,
            ar_layers=1,
            likelihood="gaussian",
        ),
        _shapes,
    ),
    ("sequence", lambda: SequenceVAE(12, 2, embed=4, hidden=8, max_len=7), _tokens),
    (
        "sequence-gru",
        lambda: SequenceVAE(
            12, 2, embed=4, hidden=8, cell="gru", latent_every_step=False, word_dropout=0.3
        ),
        _tokens,
    ),
]


def _user_encoder() -> Callable[[torch.Tensor], dist.TorchDistribution]:
    torch.manual_seed(5)
    net = nn.Linear(3, 6)

    def encoder(x: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = net(x).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 0.2).to_event(1)

    return encoder


#: (id, factory) for every prior configuration (VampPriors are covered below).
PRIOR_CASES: list[tuple[str, Callable[[], Prior]]] = [
    ("standard", lambda: StandardNormalPrior(3)),
    ("learnable", lambda: LearnableGaussianPrior(2, init_scale=0.5, min_scale=1e-3)),
    ("ard", lambda: ARDPrior(3)),
    ("mixture", lambda: MixturePrior(3, 4)),
    ("mixture-fixed-weights", lambda: MixturePrior(2, n_components=3, learn_weights=False)),
    ("vamp-unbound", lambda: VampPrior(None, 4, (5,), latent_dim=2)),
    ("hierarchical", lambda: HierarchicalPrior(3, top_dim=2, hidden=(8,), guide_hidden=(4,))),
    ("flow", lambda: FlowPrior(2)),
    ("flow-1d", lambda: FlowPrior(1, count_bins=4)),
    ("flow-affine-autoregressive", lambda: FlowPrior(3, "affine_autoregressive", hidden=(6,))),
    ("flow-affine-coupling", lambda: FlowPrior(3, "affine_coupling", num_transforms=3)),
]


def test_every_registered_model_and_prior_has_a_case():
    models = {type(make()) for _, make, _ in MODEL_CASES}
    assert [n for n in MODELS.names() if MODELS.get(n) not in models] == []
    priors = {type(make()) for _, make in PRIOR_CASES}
    assert [n for n in PRIORS.names() if PRIORS.get(n) not in priors] == []


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
@torch.no_grad()
def _perturb(module: nn.Module, seed: int = 7) -> None:
    """Move every floating parameter and buffer away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            t.add_(0.05 * torch.randn(t.shape, generator=g, dtype=t.dtype))


def _assert_same_tensors(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert sa[name].device == sb[name].device, name
        assert torch.equal(sa[name], sb[name]), name
    pa = dict(a.named_parameters())
    pb = dict(b.named_parameters())
    assert list(pa) == list(pb)
    assert all(pb[n].requires_grad for n in pb)


def _model_outputs(vae: VAE, x: torch.Tensor, seed: int = 11) -> list[tuple[str, torch.Tensor]]:
    """Every sample value and log-density of a guide trace replayed in the model."""
    pyro.set_rng_seed(seed)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    out = []
    for tr in (guide, model):
        tr.compute_log_prob()
        for name, site in tr.nodes.items():
            if site["type"] == "sample":
                out.append((name, site["value"].detach()))
                out.append((name + ":log_prob", site["log_prob"].detach()))
    out.append(("sample", vae.sample(3)))
    return out


def _prior_outputs(prior: Prior, seed: int = 11) -> list[torch.Tensor]:
    pyro.set_rng_seed(seed)
    z = torch.randn(5, prior.latent_dim)
    return [prior.log_prob(z).detach(), prior.sample(4)]


def _global_states() -> tuple:
    """Python's, NumPy's and torch's global random states."""
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global state Pyro's seed sets)
    return random.getstate(), numpy_state[1].copy(), torch.random.get_rng_state()


def _assert_same_states(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


def _assert_equal_outputs(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            assert x[0] == y[0]
            x, y = x[1], y[1]
        assert torch.equal(x, y)


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, data", [(m, d) for _, m, d in MODEL_CASES], ids=[i for i, _, _ in MODEL_CASES]
)
def test_every_model_round_trips(make, data, tmp_path):
    vae = make()
    _perturb(vae)
    vae.eval()
    x = data()
    path = vae.save(tmp_path / "model.pt")
    assert path == tmp_path / "model.pt"
    for loader in (VAE, type(vae)):
        loaded = loader.load(path)
        assert type(loaded) is type(vae)
        assert not loaded.training
        assert loaded is not vae and loaded._pyro_name != vae._pyro_name
        _assert_same_tensors(vae, loaded)
        assert loaded.constructor_arguments().keys() == vae.constructor_arguments().keys()
        assert type(loaded.prior) is type(vae.prior)
        _assert_equal_outputs(_model_outputs(vae, x), _model_outputs(loaded, x))
    # the file is what the module docstring says it is
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    config = json.loads(payload["config"])
    assert config["kind"] == "model" and MODELS.get(config["registry_name"]) is type(vae)
    assert "name" not in config["arguments"]


@pytest.mark.parametrize("make", [m for _, m in PRIOR_CASES], ids=[i for i, _ in PRIOR_CASES])
def test_every_prior_round_trips(make, tmp_path):
    prior = make()
    _perturb(prior)
    path = prior.save(tmp_path / "prior.pt")
    for loader in (Prior, type(prior)):
        loaded = loader.load(path)
        assert type(loaded) is type(prior) and not loaded.training
        _assert_same_tensors(prior, loaded)
        assert loaded.latent_dim == prior.latent_dim
        if isinstance(prior, VampPrior):
            assert loaded.encoder is None
            continue
        _assert_equal_outputs(_prior_outputs(prior), _prior_outputs(loaded))


@pytest.mark.parametrize("name", PRIORS.names())
def test_a_model_with_every_prior_round_trips(name, tmp_path):
    prior = make_prior(name, 2, input_shape=(10,))
    vae = MLPVAE(10, 2, prior, hidden=(6,))
    _perturb(vae)
    vae.save(tmp_path / "m.pt")
    loaded = MLPVAE.load(tmp_path / "m.pt")
    assert type(loaded.prior) is type(prior)
    _assert_same_tensors(vae, loaded)
    x = _unit(10)()
    vae.eval()
    _assert_equal_outputs(_model_outputs(vae, x), _model_outputs(loaded, x))
    pyro.set_rng_seed(0)
    a = PlainELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    assert PlainELBO().loss(loaded.model, loaded.guide, x) == a


@pytest.mark.parametrize("how", ["attached", "encoder"])
def test_vamp_prior_is_reattached_to_the_loaded_encoder(how, tmp_path):
    if how == "attached":
        vae = MLPVAE(8, 2, VampPrior(None, 5, (8,), latent_dim=2), hidden=(6,))
    else:
        vae = MLPVAE(8, 2, hidden=(6,))
        vae.prior = VampPrior(vae.encode, 5, (8,))
    _perturb(vae)
    vae.save(tmp_path / "m.pt")
    loaded = VAE.load(tmp_path / "m.pt")
    assert loaded.prior.encoder == loaded.encode and vae.prior.encoder == vae.encode
    z = torch.randn(7, 2)
    assert torch.equal(loaded.prior.log_prob(z), vae.prior.log_prob(z))
    # the prior shares the live encoder of the loaded model (and only of that one)
    with torch.no_grad():
        loaded.encoder[0].weight.add_(1.0)
    assert not torch.equal(loaded.prior.log_prob(z), vae.prior.log_prob(z))
    assert torch.equal(vae.prior.log_prob(z), vae.prior.log_prob(z))


def test_vamp_prior_on_another_models_encoder_cannot_be_saved(tmp_path):
    other = MLPVAE(8, 2, hidden=(6,))
    vae = MLPVAE(8, 2, hidden=(6,))
    vae.prior = VampPrior(other.encode, 5, (8,))
    with pytest.raises(ValueError, match="not the model's own encode"):
        vae.save(tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_standalone_vamp_prior_loads_unbound_or_with_its_encoder(tmp_path):
    encoder = _user_encoder()
    prior = VampPrior(encoder, 4, (3,), support="real")
    _perturb(prior)
    prior.save(tmp_path / "p.pt")
    unbound = Prior.load(tmp_path / "p.pt")
    assert unbound.encoder is None and unbound.latent_dim == 3
    _assert_same_tensors(prior, unbound)
    bound = VampPrior.load(tmp_path / "p.pt", encoder=encoder)
    _assert_equal_outputs(_prior_outputs(prior), _prior_outputs(bound))


def test_arguments_json_cannot_hold_must_be_passed_again(tmp_path):
    def transforms():
        torch.manual_seed(1)
        return [T.spline_coupling(2, hidden_dims=[4]), T.Permute(torch.tensor([1, 0]))]

    prior = FlowPrior(2, transforms())
    _perturb(prior)
    prior.save(tmp_path / "p.pt")
    with pytest.raises(
        ValueError, match=r"FlowPrior's argument 'transforms' \(a list\).*transforms=\.\.\."
    ):
        Prior.load(tmp_path / "p.pt")
    loaded = FlowPrior.load(tmp_path / "p.pt", transforms=transforms())
    _assert_same_tensors(prior, loaded)
    _assert_equal_outputs(_prior_outputs(prior), _prior_outputs(loaded))
    # inside a model: pass the prior again
    vae = MLPVAE(6, 2, FlowPrior(2, transforms()), hidden=(4,))
    vae.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="'transforms'"):
        VAE.load(tmp_path / "m.pt")
    loaded = VAE.load(tmp_path / "m.pt", prior=FlowPrior(2, transforms()))
    _assert_same_tensors(vae, loaded)


def test_dtype_device_and_name_are_restored_or_chosen(tmp_path):
    vae = MLPVAE(6, 2, LearnableGaussianPrior(2), hidden=(4,)).double()
    _perturb(vae)
    vae.save(tmp_path / "m.pt")
    loaded = VAE.load(tmp_path / "m.pt", device="cpu", name="restored")
    assert loaded._pyro_name == "restored"
    assert all(t.dtype == torch.float64 for t in loaded.parameters())
    _assert_same_tensors(vae, loaded)
    if torch.cuda.is_available():
        on_gpu = VAE.load(tmp_path / "m.pt", device="cuda")
        assert on_gpu.device.type == "cuda" and on_gpu.prior.device.type == "cuda"


def test_a_training_model_saves_and_loads_in_eval_mode(tmp_path):
    vae = MLPVAE(6, 2, hidden=(4,), decoder_dropout=0.5)
    assert vae.training
    vae.save(tmp_path / "m.pt")
    assert json.loads(torch.load(tmp_path / "m.pt", weights_only=True)["config"])["training"]
    assert not VAE.load(tmp_path / "m.pt").training


def test_loading_leaves_the_global_random_state_alone(tmp_path):
    MixturePrior(2, 3).save(tmp_path / "p.pt")  # its constructor draws random numbers
    MLPVAE(6, 2, hidden=(4,)).save(tmp_path / "m.pt")
    before = _global_states()
    Prior.load(tmp_path / "p.pt")
    VAE.load(tmp_path / "m.pt")
    _assert_same_states(before, _global_states())


class _Custom(MLPVAE):
    """A user's model defined at module level: saved with no extra code."""

    def __init__(self, input_dim: int, *extra: int, scale: float = 2.0, **options) -> None:
        super().__init__(input_dim, 2, hidden=extra or (4,), **options)
        self.scale = scale


def test_a_new_subclass_gets_saving_for_free(tmp_path):
    vae = _Custom(6, 5, 3, scale=3.0, likelihood="gaussian")
    assert vae.constructor_arguments() == {
        "input_dim": 6,
        "extra": (5, 3),
        "scale": 3.0,
        "options": {"likelihood": "gaussian"},
    }
    _perturb(vae)
    vae.save(tmp_path / "m.pt")
    loaded = MLPVAE.load(tmp_path / "m.pt")
    assert type(loaded) is _Custom and loaded.scale == 3.0
    _assert_same_tensors(vae, loaded)


def test_save_is_atomic_and_refuses_to_overwrite_unless_asked(tmp_path, monkeypatch):
    vae = MLPVAE(6, 2, hidden=(4,))
    path = tmp_path / "m.pt"
    vae.save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        MLPVAE(6, 2, hidden=(4,)).save(path)
    assert path.read_bytes() == before

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        MLPVAE(6, 2, hidden=(4,)).save(path, overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    other = MLPVAE(6, 2, hidden=(3,))
    other.save(path, overwrite=True)
    assert VAE.load(path).decoder[0].out_features == 3
    with pytest.raises(ValueError, match="is a folder"):
        vae.save(tmp_path)


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------
def _payload(**changes) -> dict:
    """The payload of a saved MLPVAE(6, 2, hidden=(4,)); ``config`` entries (a dict) are
    updated, ``config_text`` replaces the JSON text, other keys replace the entries."""
    vae = MLPVAE(6, 2, hidden=(4,))
    config = {
        "kind": "model",
        "class": "pyrocollapse.models.mlp:MLPVAE",
        "registry_name": "mlp",
        "arguments": {"input_dim": 6, "latent_dim": 2, "hidden": {"__tuple__": [4]}},
    }
    config.update(changes.pop("config", {}))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": changes.pop("config_text", json.dumps(config)),
        "state_dict": vae.state_dict(),
    }
    payload.update(changes)
    return payload


def _write(tmp_path: Path, obj: object, name: str = "bad.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_the_payload_helper_writes_a_loadable_file(tmp_path):
    assert type(VAE.load(_write(tmp_path, _payload()))) is MLPVAE


class _NotATensor:
    pass


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "nope.pt", r"nope\.pt.*the file does not exist"),
        (lambda d: d, r"is a folder, not a file written by save\(\).*load_run"),
        (
            lambda d: (d / "a.txt", (d / "a.txt").write_text("hello"))[0],
            r"a\.txt.*not a file written by save\(\)",
        ),
        (
            lambda d: _write(d, MLPVAE(6, 2).state_dict()),
            r"bad\.pt.*holds a bare state dict.*'format' and 'config'",
        ),
        (lambda d: _write(d, {"weights": torch.zeros(2), "note": "x"}), r"has no 'format'"),
        (
            lambda d: _write(d, _payload(format_version=FORMAT_VERSION + 1)),
            r"written by a newer pyrocollapse \(save format version 2; .*reads versions up to 1\)",
        ),
        (
            lambda d: _write(d, _payload(format_version="1")),
            r"'format_version' is missing or not a positive int",
        ),
        (
            lambda d: _write(d, {k: v for k, v in _payload().items() if k != "state_dict"}),
            r"damaged, it lacks 'state_dict'",
        ),
        (lambda d: _write(d, _payload(config_text="{not json")), r"'config' is not valid JSON"),
        (
            lambda d: _write(d, _payload(config_text=json.dumps({"kind": "model"}))),
            r"config lacks 'class', 'arguments'",
        ),
        (
            lambda d: _write(d, _payload(state_dict={"w": [1, 2]})),
            r"'state_dict' is not a dict of name -> tensor",
        ),
        (
            lambda d: StandardNormalPrior(2).save(d / "p.pt"),
            r"holds a saved prior, not a model; load it with Prior\.load",
        ),
        (
            lambda d: ConvVAE((1, 8, 8), 2, channels=(4,)).save(d / "c.pt"),
            r"holds a ConvVAE, not a MLPVAE; load it with ConvVAE\.load or VAE\.load",
        ),
        (
            lambda d: _write(d, _payload(config={"class": "os:system", "registry_name": None})),
            r"saved class 'os:system' is not a VAE; refusing to call it",
        ),
        (
            lambda d: _write(
                d, _payload(config={"class": "not_imported_pkg.mod:Model", "registry_name": None})
            ),
            r"module 'not_imported_pkg\.mod' is not imported: import it first",
        ),
        (
            lambda d: _write(
                d, _payload(config={"class": "pyrocollapse.models.mlp:Gone", "registry_name": None})
            ),
            r"saved class 'pyrocollapse\.models\.mlp:Gone' was not found",
        ),
        (
            lambda d: _write(
                d, _payload(config={"arguments": {"input_dim": 6, "latent_dim": 2, "width": 3}})
            ),
            r"MLPVAE takes no argument\(s\) width",
        ),
        (
            lambda d: _write(d, _payload(config={"arguments": {"input_dim": 0, "latent_dim": 2}})),
            r"could not rebuild MLPVAE from its saved arguments: input_dim must be >= 1",
        ),
        (
            lambda d: _write(
                d,
                _payload(
                    config={
                        "arguments": {"input_dim": 6, "latent_dim": 2, "hidden": {"__tuple__": [5]}}
                    }
                ),
            ),
            r"weights do not fit the rebuilt MLPVAE",
        ),
        (lambda d: _write(d, _NotATensor()), r"torch\.load\(weights_only=True\) failed"),
    ],
    ids=[
        "missing",
        "folder",
        "text-file",
        "bare-state-dict",
        "no-format",
        "newer-version",
        "bad-version",
        "no-state-dict",
        "config-not-json",
        "config-lacks-keys",
        "state-dict-not-tensors",
        "a-prior",
        "another-model",
        "not-a-vae",
        "module-not-imported",
        "class-gone",
        "unknown-argument",
        "bad-argument",
        "weights-do-not-fit",
        "pickled-object",
    ],
)
def test_load_refuses_what_is_not_a_saved_model(make, match, tmp_path):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        MLPVAE.load(path)
    assert str(path) in str(info.value)


def test_the_registry_name_finds_a_class_that_moved(tmp_path):
    path = _write(tmp_path, _payload(config={"class": "pyrocollapse.models.old:MLPVAE"}))
    assert type(VAE.load(path)) is MLPVAE


def test_load_rejects_bad_arguments(tmp_path):
    MLPVAE(6, 2, hidden=(4,)).save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"MLPVAE takes no argument\(s\) width"):
        VAE.load(tmp_path / "m.pt", width=3)
    with pytest.raises(ValueError, match="weights do not fit"):
        VAE.load(tmp_path / "m.pt", hidden=(7,))
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        VAE.load(3)
    with pytest.raises(ValueError, match="device 'gpu' is not a torch device"):
        VAE.load(tmp_path / "m.pt", device="gpu")


def test_objects_not_built_by_their_class_cannot_be_saved(tmp_path):
    prior = StandardNormalPrior.__new__(StandardNormalPrior)
    with pytest.raises(ValueError, match="was not built by calling its class"):
        prior.constructor_arguments()

    def make():
        class Local(StandardNormalPrior):
            pass

        return Local(2)

    with pytest.raises(ValueError, match="defined inside a function"):
        make().save(tmp_path / "p.pt")
    assert list(tmp_path.iterdir()) == []
    assert issubclass(VAE, Saveable) and issubclass(Prior, Saveable)


# --------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pyrocollapse.experiment import run_experiment

    out = tmp_path_factory.mktemp("runs") / "run"
    pyro.set_rng_seed(0)
    result = run_experiment(
        tiny_config(),
        out=out,
        progress=False,
    )
    return out, result


def _elbo(vae: VAE, x: torch.Tensor) -> float:
    pyro.set_rng_seed(0)
    return PlainELBO(num_particles=3).loss(vae.model, vae.guide, x)


def _check_loaded(run: LoadedRun, result) -> None:
    original = result.built.vae
    assert type(run.model) is type(original) and not run.model.training
    _assert_same_tensors(original, run.model)
    x = result.built.valid.data
    assert _elbo(run.model, x) == _elbo(original, x)
    assert run.prior is run.model.prior

    def record(config):
        return json.loads(json.dumps(config.to_dict()))

    assert record(run.config) == record(result.built.config)
    assert run.report.verdict == result.report.verdict
    assert run.report.to_dict() == json.loads(json.dumps(result.report.to_dict()))
    assert run.metrics["config"]["model"] == "mlp"
    assert len(run.history) == len(result.history) == 1
    assert type(run.objective) is type(result.built.elbo)
    assert run.objective.hyperparameters() == result.built.elbo.hyperparameters()
    assert torch.equal(run.held_out.data, x)
    assert "LoadedRun(" in repr(run)


def test_load_run_reads_a_run_folder(tiny_run):
    out, result = tiny_run
    before = _global_states()
    run = load_run(out)
    _assert_same_states(before, _global_states())
    _check_loaded(run, result)


def test_load_run_reads_a_model_pt_written_by_save(tiny_run, tmp_path):
    import shutil

    out, result = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result.built.vae.save(copy / "model.pt", overwrite=True)
    run = load_run(copy)
    assert run._built is None  # the model needed no data
    _check_loaded(run, result)
    (copy / "history.csv").unlink()
    assert load_run(copy).history is None
    # a model.pt of another model than metrics.json describes
    LinearVAE(64, 2).save(copy / "model.pt", overwrite=True)
    with pytest.raises(
        ValueError, match=r"model\.pt' holds a LinearVAE, but .*metrics\.json' describes a MLPVAE"
    ):
        load_run(copy)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: d / "absent", r"run folder '.*absent' does not exist"),
        (lambda d: d / "metrics.json", r"metrics\.json' is not a folder"),
        (lambda d: (d / "metrics.json").unlink() or d, r"metrics\.json' not found"),
        (lambda d: (d / "metrics.json").write_text("{") and d, r"metrics\.json' is not valid JSON"),
        (
            lambda d: (d / "model.pt").unlink() or d,
            r"model\.pt' not found: the run folder holds no trained model",
        ),
        (
            lambda d: (d / "model.pt").write_bytes(b"garbage") and d,
            r"model\.pt'.*torch\.load\(weights_only=True\) failed",
        ),
        (
            lambda d: torch.save({"x": torch.zeros(1)}, d / "model.pt") or d,
            r"model\.pt': its weights do not fit the MLPVAE that .*metrics\.json' describes",
        ),
        (
            lambda d: (d / "history.csv").write_text("elbo\n1\n") and d,
            r"history\.csv' could not be read",
        ),
    ],
    ids=[
        "missing",
        "a-file",
        "no-metrics",
        "bad-metrics",
        "no-model",
        "garbage-model",
        "wrong-weights",
        "bad-history",
    ],
)
def test_load_run_refuses_a_damaged_folder(damage, match, tiny_run, tmp_path):
    import shutil

    out, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = damage(copy)
    with pytest.raises(ValueError, match=match):
        load_run(path)


def test_load_run_refuses_metrics_without_a_config(tiny_run, tmp_path):
    import shutil

    out, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["config"]["epochs"] = 0
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(
        ValueError,
        match=r"metrics\.json': its 'config' is not a valid run configuration \(--epochs must be >= 1",
    ):
        load_run(copy)
    del metrics["config"]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"metrics\.json' has no run configuration"):
        load_run(copy)


def test_load_run_is_exported_at_the_top_level():
    import pyrocollapse

    assert pyrocollapse.load_run is load_run and "load_run" in pyrocollapse.__all__
