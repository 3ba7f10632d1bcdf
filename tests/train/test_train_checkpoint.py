"""Checkpoints of :func:`pyrocollapse.train.fit`: atomic, code-free, and resumable bit for bit."""

import os
from typing import ClassVar

import numpy as np
import pyro
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pyrocollapse.elbo import AnnealedELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear
from pyrocollapse.train import CHECKPOINT_NAME, _read_checkpoint, fit

LOSS_COLUMNS = ["elbo", "reconstruction", "kl", "kl/z", "loss", "kl_weight", "mi/z"]


def make_vae(latent_dim=3):
    pyro.set_rng_seed(11)  # the same initial parameters for every run
    return MLPVAE(64, latent_dim, hidden=(16,))


def train(vae, data, epochs, **options):
    args = {
        "loss": AnnealedELBO(Linear(8)),
        "epochs": epochs,
        "batch_size": 32,
        "seed": 5,
        "progress": False,
        "monitor_size": 32,
    }
    args.update(options)
    return fit(vae.model, vae.guide, data, **args)


def params_of(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def assert_same_run(a, b, vae_a, vae_b):
    assert [r.epoch for r in a] == [r.epoch for r in b]
    for col in LOSS_COLUMNS:
        assert (a.column(col) == b.column(col)).all(), col  # bit for bit, not approximately
    assert (a.kl_matrix("z") == b.kl_matrix("z")).all()
    pa, pb = params_of(vae_a), params_of(vae_b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def loader_data(digits):
    """A shuffling DataLoader with its own seeded generator."""
    return DataLoader(
        TensorDataset(digits[:96]),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )


@pytest.mark.parametrize(
    "kind, options",
    [
        ("tensor", {}),
        ("tensor", {"aggressive": True, "aggressive_max_inner": 3}),
        ("loader", {}),
        ("loader", {"aggressive": True, "aggressive_max_inner": 2}),
    ],
    ids=["plain", "aggressive", "dataloader", "dataloader-aggressive"],
)
def test_resumed_run_repeats_the_uninterrupted_run_bit_for_bit(tmp_path, digits, kind, options):
    data = (lambda: digits[:96]) if kind == "tensor" else (lambda: loader_data(digits))
    vae_a = make_vae()
    hist_a = train(vae_a, data(), 4, checkpoint_dir=tmp_path / "a", checkpoint_every=1, **options)

    pyro.clear_param_store()
    vae_b = make_vae()
    first = train(vae_b, data(), 2, checkpoint_dir=tmp_path / "b", **options)
    assert len(first) == 2
    # a fresh process would build the model again from scratch: same init, new objects
    pyro.clear_param_store()
    vae_b = make_vae()
    hist_b = train(vae_b, data(), 4, checkpoint_dir=tmp_path / "b", resume=True, **options)

    assert_same_run(hist_a, hist_b, vae_a, vae_b)
    if options.get("aggressive"):
        assert (hist_b.column("inner_steps") == hist_a.column("inner_steps")).all()
    saved = _read_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert saved["epoch"] == 4 and len(saved["history"]) == 4


def test_checkpoint_every_and_last_epoch(tmp_path, digits, monkeypatch):
    import pyrocollapse.train.fitting as train_module  # fit looks its helpers up there

    written = []
    original = train_module._write_checkpoint

    def spy(path, state, *args):
        written.append(state.epoch)
        original(path, state, *args)

    monkeypatch.setattr(train_module, "_write_checkpoint", spy)
    train(make_vae(), digits[:64], 5, checkpoint_dir=tmp_path, checkpoint_every=2, monitor=None)
    assert written == [2, 4, 5]  # every 2 epochs, and after the last one
    assert _read_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 5


ALLOWED = (torch.Tensor, int, float, str, bool, type(None))


def walk(obj, path="checkpoint"):
    """Every leaf of a nested dict/list/tuple with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{path}: key {k!r}"
            yield from walk(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_checkpoint_holds_only_tensors_and_plain_values(tmp_path, digits):
    vae = make_vae()
    hist = train(vae, digits[:64], 2, checkpoint_dir=tmp_path)
    # weights_only=True refuses anything that would need code to rebuild
    saved = _read_checkpoint(tmp_path / CHECKPOINT_NAME)
    for where, leaf in walk(saved):
        assert isinstance(leaf, ALLOWED), f"{where} is a {type(leaf).__name__}"
    assert saved["epoch"] == 2 and saved["state"]["step"] == 4
    assert saved["loss"]["step_count"] == 4
    assert saved["history"][1]["values"]["elbo"] == hist[1].values["elbo"]
    assert saved["monitor"]["indices"].shape == (32,)
    state = vae.state_dict()
    for k, v in saved["modules"][0].items():
        assert torch.equal(v, state[k]), k
    assert set(saved["rng"]) == {"torch", "cuda", "random", "numpy"}


class Evil:
    """Unpickling this would run code; weights_only must refuse it."""

    ran: ClassVar[list[str]] = []

    def __reduce__(self):
        return (Evil.ran.append, ("executed",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, digits):
    torch.save(
        {"format": "pyrocollapse.fit/1", "epoch": 1, "x": Evil()}, tmp_path / CHECKPOINT_NAME
    )
    with pytest.raises(ValueError, match="cannot read the checkpoint .* weights_only=True"):
        train(make_vae(), digits[:64], 2, checkpoint_dir=tmp_path, resume=True)
    assert Evil.ran == []


def test_interrupted_write_leaves_the_good_checkpoint(tmp_path, digits, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    vae = make_vae()
    train(vae, digits[:64], 2, checkpoint_dir=tmp_path, monitor=None)
    good = path.read_bytes()

    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):  # half a file, then the "crash"
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    pyro.clear_param_store()
    with pytest.raises(OSError, match="disk full"):
        train(make_vae(), digits[:64], 3, checkpoint_dir=tmp_path, resume=True, monitor=None)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # the temporary file was removed
    monkeypatch.setattr(torch, "save", real_save)

    # a process killed mid-write leaves its temporary file behind: it is never read
    (tmp_path / f".{CHECKPOINT_NAME}.k1ll3d.tmp").write_bytes(b"garbage")
    pyro.clear_param_store()
    hist = train(make_vae(), digits[:64], 3, checkpoint_dir=tmp_path, resume=True, monitor=None)
    assert [r.epoch for r in hist] == [1, 2, 3]
    assert _read_checkpoint(path)["epoch"] == 3


def test_resume_without_a_checkpoint_starts_afresh(tmp_path, digits):
    vae_a = make_vae()
    hist_a = train(vae_a, digits[:64], 2, monitor=None)
    pyro.clear_param_store()
    vae_b = make_vae()
    hist_b = train(
        vae_b, digits[:64], 2, checkpoint_dir=tmp_path / "new", resume=True, monitor=None
    )
    assert (hist_a.column("elbo") == hist_b.column("elbo")).all()
    assert (tmp_path / "new" / CHECKPOINT_NAME).exists()


def test_resume_at_the_requested_epoch_trains_no_more(tmp_path, digits):
    vae = make_vae()
    hist = train(vae, digits[:64], 2, checkpoint_dir=tmp_path, monitor=None)
    pyro.clear_param_store()
    again = make_vae()
    resumed = train(again, digits[:64], 2, checkpoint_dir=tmp_path, resume=True, monitor=None)
    assert (resumed.column("elbo") == hist.column("elbo")).all()
    for k, v in params_of(again).items():
        assert torch.equal(v, params_of(vae)[k])


@pytest.mark.parametrize(
    "first, second, exc, match",
    [
        ({}, {"resume": False}, ValueError, "already holds a checkpoint .* pass resume=True"),
        (
            {},
            {"epochs": 1},
            ValueError,
            "epochs=1 is less than the 2 epochs already in the checkpoint",
        ),
        (
            {},
            {"latent_dim": 2},
            ValueError,
            r"does not match this model and guide: parameter \d+ has shape",
        ),
        (
            {},
            {"optim": lambda params: torch.optim.SGD(params, lr=0.1)},
            ValueError,
            "holds the state of a Adam optimiser, but optim builds a SGD",
        ),
    ],
)
def test_resume_checks_the_checkpoint_fits(tmp_path, digits, first, second, exc, match):
    train(make_vae(), digits[:64], 2, checkpoint_dir=tmp_path, monitor=None, **first)
    second = dict(second)
    pyro.clear_param_store()
    vae = make_vae(second.pop("latent_dim", 3))
    options = {"epochs": 3, "resume": True, **second}
    epochs = options.pop("epochs")
    with pytest.raises(exc, match=match):
        train(vae, digits[:64], epochs, checkpoint_dir=tmp_path, monitor=None, **options)


def test_resume_checks_the_parameter_count(tmp_path, digits):
    train(make_vae(), digits[:64], 1, checkpoint_dir=tmp_path, monitor=None)
    pyro.clear_param_store()
    pyro.set_rng_seed(11)
    deeper = MLPVAE(64, 3, hidden=(16, 16))
    with pytest.raises(
        ValueError, match="it holds 8 parameter tensors, the model and guide have 12"
    ):
        train(deeper, digits[:64], 2, checkpoint_dir=tmp_path, resume=True, monitor=None)


@pytest.mark.parametrize(
    "options, exc, match",
    [
        ({"resume": True}, ValueError, "resume=True needs checkpoint_dir"),
        ({"resume": 1}, TypeError, "resume must be a bool, got int 1"),
        (
            {"checkpoint_dir": "x", "checkpoint_every": 0},
            ValueError,
            "checkpoint_every must be >= 1",
        ),
        ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir must be a path"),
    ],
)
def test_bad_checkpoint_options(options, exc, match, digits):
    with pytest.raises(exc, match=match):
        train(make_vae(), digits[:32], 1, monitor=None, **options)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, digits):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        train(make_vae(), digits[:32], 1, checkpoint_dir=tmp_path, resume=True, monitor=None)
    torch.save({"weights": torch.zeros(2)}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="is not a fit checkpoint of format 'pyrocollapse.fit/2'"):
        train(make_vae(), digits[:32], 1, checkpoint_dir=tmp_path, resume=True, monitor=None)


def test_checkpoint_numpy_and_random_states_round_trip(tmp_path, digits):
    import random

    from pyrocollapse.train import _restore_rng, _rng_payload

    # the legacy global NumPy state is the one Pyro's seed sets and a checkpoint keeps
    np.random.seed(4)  # noqa: NPY002
    random.seed(4)
    np.random.normal()  # noqa: NPY002 (leaves a cached Gaussian in the state)
    saved = _rng_payload([])
    expected = (np.random.normal(size=3), random.random(), torch.rand(2))  # noqa: NPY002
    _restore_rng(saved)
    again = (np.random.normal(size=3), random.random(), torch.rand(2))  # noqa: NPY002
    assert (expected[0] == again[0]).all() and expected[1] == again[1]
    assert torch.equal(expected[2], again[2])
