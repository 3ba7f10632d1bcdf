"""fit on a DataLoader (streaming data) and on a chosen device."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pyrocollapse.elbo import AnnealedELBO, PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear
from pyrocollapse.train import Callback, fit

COLUMNS = ["elbo", "reconstruction", "kl", "kl_weight", "mi/z", "active_units/z"]


def make_vae():
    pyro.set_rng_seed(2)
    return MLPVAE(64, 3, hidden=(16,))


def train(data, vae=None, **options):
    vae = vae or make_vae()
    args = {
        "loss": AnnealedELBO(Linear(6)),
        "epochs": 2,
        "seed": 4,
        "progress": False,
        "monitor_size": 40,
    }
    args.update(options)
    return vae, fit(vae.model, vae.guide, data, **args)


class Stream(IterableDataset):
    """Streams ready-made minibatches (plain tensors), as a data pipeline larger than
    memory would."""

    def __init__(self, x, batch_size):
        self.x, self.batch_size = x, batch_size

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i : i + self.batch_size].clone()


def same_history(a, b):
    for col in COLUMNS:
        assert (a.column(col) == b.column(col)).all(), col
    assert (a.kl_matrix("z") == b.kl_matrix("z")).all()


def test_dataloader_and_stream_of_the_same_batches_train_identically(digits):
    x = digits[:96]
    _, from_loader = train(DataLoader(TensorDataset(x), batch_size=32, shuffle=False))
    pyro.clear_param_store()
    _, from_stream = train(DataLoader(Stream(x, 32), batch_size=None))
    same_history(from_loader, from_stream)
    # 3 minibatches per epoch: the schedule moved 3 steps per epoch
    assert from_loader.column("kl_weight").tolist() == [0.5, 1.0]
    assert from_loader[0].kl_per_dim["z"].shape == (3,)


def test_seeded_shuffling_loader_is_deterministic(digits):
    def loader():
        g = torch.Generator().manual_seed(9)
        return DataLoader(TensorDataset(digits[:96]), batch_size=32, shuffle=True, generator=g)

    _, a = train(loader())
    pyro.clear_param_store()
    _, b = train(loader())
    same_history(a, b)
    pyro.clear_param_store()
    g = torch.Generator().manual_seed(10)  # another shuffle, another run
    _, c = train(DataLoader(TensorDataset(digits[:96]), batch_size=32, shuffle=True, generator=g))
    assert (a.column("elbo") != c.column("elbo")).any()


def test_monitoring_subset_is_the_first_rows_of_the_loader(digits, monkeypatch):
    import pyrocollapse.train.fitting as train_module  # fit looks its helpers up there

    seen = []

    def spy(model, guide, x, *args, **kwargs):
        seen.append(x)
        return {"mi/z": 1.0}

    monkeypatch.setattr(train_module, "_monitor", spy)
    train(DataLoader(TensorDataset(digits[:96]), batch_size=32), epochs=1, monitor_size=40)
    assert torch.equal(seen[0].tensor, digits[:40])


def test_aggressive_training_draws_encoder_batches_from_the_loader(digits):
    x = digits[:64]
    options = {"aggressive": True, "aggressive_max_inner": 3, "loss": PlainELBO(), "monitor": None}
    _, hist = train(DataLoader(TensorDataset(x), batch_size=16), epochs=1, **options)
    assert hist[0].values["aggressive"] == 1.0 and hist[0].values["inner_steps"] == 3.0
    pyro.clear_param_store()
    _, again = train(DataLoader(Stream(x, 16), batch_size=None), epochs=1, **options)
    assert again[0].values["elbo"] == hist[0].values["elbo"]


def test_integer_token_batches_from_a_loader():
    def model(x):
        logits = pyro.param("logits", torch.zeros(5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Categorical(logits=logits), obs=x)

    tokens = torch.tensor([0, 1, 1, 2, 1, 1, 3, 1] * 4)
    fit(
        model,
        lambda x: None,
        DataLoader(TensorDataset(tokens), batch_size=8),
        loss=PlainELBO(),
        optim=pyro.optim.Adam({"lr": 0.1}),
        epochs=20,
        progress=False,
        monitor=None,
    )
    probs = torch.softmax(pyro.param("logits").detach(), -1)
    assert int(probs.argmax()) == 1 and float(probs[4]) < 0.05


class Strings(IterableDataset):
    def __iter__(self):
        yield "not a tensor"


class Empty(IterableDataset):
    def __iter__(self):
        return iter(())


@pytest.mark.parametrize(
    "make_data, options, exc, match",
    [
        (
            lambda x: DataLoader(TensorDataset(x), batch_size=16),
            {"batch_size": 8},
            ValueError,
            r"batch_size=8 cannot apply to a DataLoader, whose batches are its own \(batch_size=16\)",
        ),
        (
            lambda x: DataLoader(Strings(), batch_size=None),
            {},
            TypeError,
            "must yield tensors x, tuples/lists of positional arguments or dicts of keyword "
            "arguments, got str",
        ),
        (lambda x: DataLoader(Empty(), batch_size=None), {}, ValueError, "yielded no batches"),
        (
            lambda x: DataLoader(TensorDataset(torch.full_like(x, float("nan"))), batch_size=16),
            {},
            ValueError,
            "data batch 0 contains 1024 NaN or infinite values",
        ),
        (
            lambda x: "digits.csv",
            {},
            TypeError,
            "data must be a torch.Tensor, a NumPy array, a tuple/list of positional "
            "arguments, a dict of keyword arguments, or a torch.utils.data.DataLoader",
        ),
    ],
)
def test_bad_loader(make_data, options, exc, match, digits):
    with pytest.raises(exc, match=match):
        train(make_data(digits[:32]), epochs=1, **options)


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------
class Where(Callback):
    """Records the device of every parameter and of the optimiser setting."""

    def on_train_begin(self, state):
        self.devices = {p.device for p in state.guide_params + state.model_params}
        self.state_device = state.device
        self.fused = state.optimizer.defaults.get("fused")


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_cpu_device_trains_exactly_as_without_one(device, digits):
    _, plain = train(digits[:64], batch_size=32)
    pyro.clear_param_store()
    where = Where()
    _, on_cpu = train(digits[:64], batch_size=32, device=device, callbacks=[where])
    same_history(plain, on_cpu)
    assert where.devices == {torch.device("cpu")} and where.state_device == torch.device("cpu")
    assert where.fused is True  # the default Adam is fused where torch supports it


@pytest.mark.parametrize(
    "device, exc, match",
    [
        ("nonsense", ValueError, r"^device 'nonsense' is not a torch device"),
        ("meta", ValueError, r"^device 'meta' holds no values"),
        (
            3,
            TypeError,
            r"^device must be None, a str such as 'cpu' or 'cuda:0', or a torch\.device",
        ),
        ("cuda:64", ValueError, r"^device 'cuda:64' is not available"),
    ],
)
def test_bad_device(device, exc, match, digits):
    with pytest.raises(exc, match=match):
        train(digits[:32], epochs=1, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(digits):
    with pytest.raises(
        ValueError, match=r"^device 'cuda' is not available: torch finds no CUDA device"
    ):
        train(digits[:32], epochs=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_moves_modules_params_and_batches(digits, tmp_path):
    # plain pyro.param next to a module: both must move, in place
    vae = make_vae()
    where = Where()
    _, hist = train(
        DataLoader(TensorDataset(digits[:96]), batch_size=32),
        vae=vae,
        device="cuda",
        callbacks=[where],
        checkpoint_dir=tmp_path,
    )
    assert {d.type for d in where.devices} == {"cuda"}
    assert all(p.is_cuda for p in vae.parameters())
    assert torch.isfinite(torch.tensor(hist.column("elbo"))).all()
    # resume on the device from a checkpoint read onto the CPU
    pyro.clear_param_store()
    again = make_vae()
    _, resumed = train(
        DataLoader(TensorDataset(digits[:96]), batch_size=32),
        vae=again,
        device="cuda",
        epochs=3,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert len(resumed) == 3 and resumed.column("elbo")[1] == hist.column("elbo")[1]


def test_default_optimizer_falls_back_to_unfused():
    from pyrocollapse.train import _fused_supported, make_optimizer

    p = torch.zeros(2, requires_grad=True)
    assert make_optimizer(None, [p]).defaults["fused"] is True
    assert not _fused_supported([torch.zeros(2, device="meta", requires_grad=True)])
