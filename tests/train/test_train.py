import functools
import math

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
        ({"data": 3.0}, TypeError, "data must be a torch.Tensor, a NumPy array"),
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


# --------------------------------------------------------------------------------------
# Aggressive inference-network training (He et al. 2019)
# --------------------------------------------------------------------------------------
class SpyAdam(torch.optim.Adam):
    """Records, for every step, which parameters had a gradient (i.e. were updated)."""

    def __init__(self, params, log, **kwargs):
        super().__init__(params, **kwargs)
        self.log = log

    def step(self, closure=None):
        self.log.append(
            {id(p) for g in self.param_groups for p in g["params"] if p.grad is not None}
        )
        return super().step(closure)


def test_aggressive_step_updates_encoder_alone_then_decoder_alone(digits):
    vae = small_vae()
    log: list[set[int]] = []
    elbo = AnnealedELBO(Linear(100))
    hist = fit(
        vae.model,
        vae.guide,
        digits[:64],
        loss=elbo,
        optim=lambda params: SpyAdam(params, log, lr=1e-3),
        epochs=1,
        batch_size=32,
        seed=0,
        progress=False,
        aggressive=True,
        aggressive_max_inner=3,
        monitor=None,
    )
    encoder = {id(p) for p in vae.encoder.parameters()}
    decoder = {id(p) for p in vae.decoder.parameters()}
    # two outer steps, each: 3 encoder-only steps (the cap), then one decoder-only step
    assert log == [encoder] * 3 + [decoder] + [encoder] * 3 + [decoder]
    assert elbo.step_count == 2  # the KL schedule moves once per outer step
    row = hist.to_dataframe().iloc[0]
    assert row["aggressive"] == 1.0 and row["inner_steps"] == 3.0
    assert row["kl_weight"] == pytest.approx(0.02)
    assert "mi/z" in hist.to_dataframe().columns  # measured for the mode even without monitor


class ScriptedLoss:
    """A loss whose per-data-point value follows a script (to test the inner loop)."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def differentiable_loss(self, model, guide, x):
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return torch.tensor(v * len(x)) + 0.0 * (pyro.param("enc") + pyro.param("dec")).sum()


def scripted_pair():
    def model(x):
        dec = pyro.param("dec", torch.ones(()))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) * dec, 1.0).to_event(1), obs=x)

    def guide(x):
        enc = pyro.param("enc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * enc, 1.0).expand([x.shape[0], 2]).to_event(1))

    return model, guide


@pytest.mark.parametrize(
    "script, window, max_inner, expected",
    [
        # window means 5, 4, 3, 3.5: the fourth window is worse, stop after 8 steps
        ([5, 5, 4, 4, 3, 3, 3.5, 3.5], 2, 100, 8),
        # equal windows do not stop the loop (the authors test pre - cur < 0)
        ([5, 5, 5, 5, 6, 6], 2, 100, 6),
        # always improving: the cap
        ([10 - 0.1 * i for i in range(50)], 2, 7, 7),
        # a window of 1 compares consecutive steps
        ([3, 2, 2.5], 1, 100, 3),
    ],
)
def test_inner_encoder_loop_stops_when_the_loss_stops_improving(
    script, window, max_inner, expected
):
    model, guide = scripted_pair()
    loss = ScriptedLoss(script)
    hist = fit(
        model,
        guide,
        torch.randn(8, 1),
        loss=loss,
        epochs=1,
        batch_size=8,  # one outer step per epoch
        seed=0,
        progress=False,
        aggressive=True,
        aggressive_window=window,
        aggressive_max_inner=max_inner,
        monitor=None,
    )
    assert hist[0].values["inner_steps"] == expected
    assert loss.calls == expected + 1  # then one decoder step


def test_aggressive_mode_ends_when_mutual_information_stops_rising(digits, monkeypatch):
    import pyrocollapse.train.fitting as train  # fit looks _monitor up there

    mi = iter([0.2, 0.5, 0.4, 0.9, 1.0])
    monkeypatch.setattr(
        train, "_monitor", lambda *args, **kwargs: {"active_units/z": 4.0, "mi/z": next(mi)}
    )
    vae = small_vae()
    hist = fit(
        vae.model,
        vae.guide,
        digits[:64],
        loss=PlainELBO(),
        epochs=5,
        batch_size=32,
        seed=0,
        progress=False,
        aggressive=True,
        aggressive_max_inner=2,
    )
    # epoch 1: 0.2 > 0 (the authors' start), epoch 2: 0.5 > 0.2, epoch 3: 0.4 < 0.5 -> off
    assert hist.column("aggressive").tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert hist.column("inner_steps").tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]


def test_aggressive_fit_is_deterministic_given_seed(digits):
    runs = []
    for _ in range(2):
        vae = small_vae(seed=1)
        hist = fit(
            vae.model,
            vae.guide,
            digits[:64],
            loss=PlainELBO(),
            epochs=2,
            batch_size=32,
            seed=3,
            progress=False,
            aggressive=True,
            aggressive_max_inner=10,
        )
        runs.append(hist.to_dataframe()[["elbo", "inner_steps", "aggressive", "mi/z"]].to_numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert (runs[0][:, 1] >= 1).all()


def test_plain_epochs_record_no_aggressive_steps(digits):
    vae = small_vae()
    hist = fit(
        vae.model, vae.guide, digits[:64], loss=PlainELBO(), epochs=1, batch_size=32, progress=False
    )
    assert hist[0].values["aggressive"] == 0.0 and hist[0].values["inner_steps"] == 0.0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"aggressive": "yes"}, TypeError, "aggressive must be a bool, got str 'yes'"),
        ({"aggressive_max_inner": 0}, ValueError, "aggressive_max_inner must be >= 1, got 0"),
        ({"aggressive_window": 0}, ValueError, "aggressive_window must be >= 1, got 0"),
    ],
)
def test_bad_aggressive_settings(kwargs, exc, match, digits):
    vae = small_vae()
    with pytest.raises(exc, match=match):
        fit(vae.model, vae.guide, digits[:32], loss=PlainELBO(), epochs=1, progress=False, **kwargs)


def test_aggressive_needs_encoder_and_decoder_parameters():
    def model(x):
        mu = pyro.param("mu", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + mu, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    with pytest.raises(ValueError, match="the guide has 0 and the model 1 trainable parameters"):
        fit(
            model,
            guide,
            torch.randn(8, 1),
            loss=PlainELBO(),
            epochs=1,
            progress=False,
            aggressive=True,
        )


def test_variant_weights_are_recorded_not_averaged(digits):
    from pyrocollapse.elbo import MIRegularizedELBO

    vae = small_vae()
    hist = fit(
        vae.model,
        vae.guide,
        digits[:64],
        loss=MIRegularizedELBO(0.7, kl_weight=Linear(4)),
        epochs=2,
        batch_size=32,
        progress=False,
        monitor=None,
    )
    df = hist.to_dataframe()
    np.testing.assert_allclose(df["mi_weight"], [0.7, 0.7])
    np.testing.assert_allclose(df["kl_weight"], [0.5, 1.0])
    # the minibatch estimate of I_q never exceeds log(batch size)
    assert (df["mi_batch"] <= np.log(32) + 1e-6).all() and (df["mi_batch"] != 0).all()


def test_validation_runs_on_the_first_step_only_unless_asked(digits):
    import pyro.infer.util

    seen = []

    class Spy(PlainELBO):
        def evaluate(self, model, guide, *args, **kwargs):
            seen.append(pyro.infer.util.is_validation_enabled())
            return super().evaluate(model, guide, *args, **kwargs)

    vae = small_vae()
    fit(
        vae.model,
        vae.guide,
        digits[:96],
        loss=Spy(),
        epochs=1,
        batch_size=32,
        progress=False,
        monitor=None,
    )
    assert seen == [True, False, False]
    assert pyro.infer.util.is_validation_enabled()  # restored after training
    seen.clear()
    fit(
        vae.model,
        vae.guide,
        digits[:96],
        loss=Spy(),
        epochs=1,
        batch_size=32,
        progress=False,
        monitor=None,
        validate=True,
    )
    assert seen == [True, True, True]
    # a malformed batch is still caught on the first step
    with pytest.raises(ValueError, match=r"x must have shape \(N, 64\)"):
        fit(
            vae.model,
            vae.guide,
            torch.rand(8, 5),
            loss=Spy(),
            epochs=1,
            progress=False,
            monitor=None,
        )


def test_default_monitoring_with_a_stock_elbo_covers_every_per_dimension_latent(digits):
    # Pyro's own ELBOs report no sites: "default" then monitors every latent site of
    # shape (batch, latent_dim) and skips the others (here a global scalar latent)
    vae = small_vae()

    def model(x):
        pyro.sample("s", dist.Normal(0.0, 1.0))
        vae.model(x)

    def guide(x):
        pyro.sample("s", dist.Normal(pyro.param("s_loc", torch.tensor(0.0)), 1.0))
        vae.guide(x)

    hist = fit(
        model,
        guide,
        digits[:100],
        loss=pyro.infer.Trace_ELBO(),
        epochs=1,
        batch_size=50,
        seed=0,
        progress=False,
    )
    values = hist[0].values
    assert 0 <= values["active_units/z"] <= vae.latent_dim
    assert math.isfinite(values["mi/z"])
    assert not any(k.endswith("/s") for k in values)
    # asking for the scalar site explicitly is an error, not a silent skip
    with pytest.raises(ValueError, match="'s'"):
        fit(
            model,
            guide,
            digits[:100],
            loss=pyro.infer.Trace_ELBO(),
            epochs=1,
            batch_size=50,
            seed=0,
            progress=False,
            monitor=["s"],
        )
