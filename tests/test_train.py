import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse.elbo import AnnealedELBO, PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear
from pyrocollapse.train import Callback, History, fit


def small_vae(seed=0):
    pyro.set_rng_seed(seed)
    return MLPVAE(64, 4, hidden=(32,))


def test_fit_records_one_entry_per_epoch(digits):
    vae = small_vae()
    elbo = AnnealedELBO(Linear(10))
    hist = fit(
        vae.model,
        vae.guide,
        digits[:300],
        loss=elbo,
        epochs=4,
        batch_size=64,
        seed=0,
        progress=False,
    )
    assert len(hist) == 4 and [r.epoch for r in hist] == [1, 2, 3, 4]
    df = hist.to_dataframe()
    for col in (
        "elbo",
        "reconstruction",
        "kl",
        "kl/z",
        "kl_weight",
        "time",
        "epoch_time",
        "active_units/z",
        "mi/z",
        "kl/z/0",
        "kl/z/3",
    ):
        assert col in df.columns, col
    # 5 steps per epoch: kl weight at the end of epoch k is min(1, 5k/10)
    np.testing.assert_allclose(df["kl_weight"], [0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(df["elbo"], df["reconstruction"] - df["kl"], rtol=1e-5)
    np.testing.assert_allclose(hist.kl_matrix("z").sum(0), df["kl"], rtol=1e-4)
    assert hist.kl_matrix("z").shape == (4, 4)
    assert (df["time"].diff().dropna() > 0).all()
    assert df["elbo"].iloc[-1] > df["elbo"].iloc[0]


def test_fit_is_deterministic_given_seed(digits):
    runs = []
    for _ in range(2):
        vae = small_vae(seed=1)
        hist = fit(
            vae.model,
            vae.guide,
            digits[:200],
            loss=PlainELBO(),
            epochs=2,
            batch_size=50,
            seed=7,
            progress=False,
        )
        runs.append(hist.column("elbo"))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_history_csv_round_trip(tmp_path, digits):
    import pandas as pd

    vae = small_vae()
    hist = fit(
        vae.model,
        vae.guide,
        digits[:100],
        loss=PlainELBO(),
        epochs=2,
        batch_size=50,
        seed=0,
        progress=False,
    )
    hist.to_csv(str(tmp_path / "h.csv"))
    again = History.from_dataframe(pd.read_csv(tmp_path / "h.csv"))
    np.testing.assert_allclose(again.column("elbo"), hist.column("elbo"))
    np.testing.assert_allclose(again.kl_matrix("z"), hist.kl_matrix("z"))


def test_hand_written_model_with_pyro_param_trains_with_pyro_optim_and_stock_elbo():
    # fit works with a plain Pyro ELBO and plain pyro.param sites
    x = torch.randn(200, 1) * 0.5 + 3.0

    def model(x):
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 0.5), obs=x[:, 0])

    def guide(x):
        pass

    fit(
        model,
        guide,
        x,
        loss=pyro.infer.Trace_ELBO(),
        optim=pyro.optim.Adam({"lr": 0.1}),
        epochs=30,
        batch_size=50,
        seed=0,
        progress=False,
        monitor=None,
    )
    assert pyro.param("mu").detach().item() == pytest.approx(float(x.mean()), abs=0.1)


def test_callbacks_can_stop_training(digits):
    class StopAt2(Callback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, state):
            self.calls.append("begin")

        def on_epoch_end(self, state, record):
            self.calls.append(record.epoch)
            return record.epoch == 2

        def on_train_end(self, state):
            self.calls.append("end")

    cb = StopAt2()
    vae = small_vae()
    hist = fit(
        vae.model,
        vae.guide,
        digits[:64],
        loss=PlainELBO(),
        epochs=10,
        batch_size=32,
        progress=False,
        callbacks=[cb],
        monitor=None,
    )
    assert len(hist) == 2 and cb.calls == ["begin", 1, 2, "end"]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"loss": "elbo"}, TypeError, "loss must be a pyro.infer.ELBO"),
        (
            {"optim": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)},
            TypeError,
            "optim must be a factory, not an optimizer instance",
        ),
        ({"optim": 3}, TypeError, "optim must be None, a pyro.optim.PyroOptim or a callable"),
        ({"callbacks": [print]}, TypeError, "callbacks must be Callback instances"),
        ({"data": torch.zeros(0, 64)}, ValueError, "data is empty"),
        ({"data": torch.full((3, 64), float("nan"))}, ValueError, "data contains 192 NaN"),
        ({"data": np.zeros((3, 64))}, TypeError, "data must be a torch.Tensor"),
        ({"data": torch.rand(3, 5)}, ValueError, r"x must have shape \(N, 64\), got \(3, 5\)"),
    ],
)
def test_bad_input(kwargs, exc, match, digits):
    vae = small_vae()
    args = {
        "data": digits[:32],
        "loss": PlainELBO(),
        "epochs": 1,
        "batch_size": 16,
        "progress": False,
        "optim": functools.partial(torch.optim.Adam, lr=1e-3),
    }
    args.update(kwargs)
    data = args.pop("data")
    with pytest.raises(exc, match=match):
        fit(vae.model, vae.guide, data, **args)
