"""fit stops on a NaN/inf loss or gradient, naming where and which term; gradient clipping."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyrocollapse.elbo import PlainELBO
from pyrocollapse.train import (
    CHECKPOINT_NAME,
    Callback,
    NonFiniteLossError,
    _read_checkpoint,
    fit,
)

# Pyro's own NaN warning may precede the error where validation is on
pytestmark = pytest.mark.filterwarnings("ignore:Encountered NaN")


class Poison(Callback):
    """Switches the programs' fault on at the end of epoch ``after``."""

    def __init__(self, flag, after=1, aggressive=False):
        self.flag, self.after, self.aggressive = flag, after, aggressive

    def on_epoch_end(self, state, record):
        if record.epoch == self.after:
            self.flag["on"] = True
            state.aggressive = state.aggressive or self.aggressive


def poisoned_pair(fault, flag):
    """A one-dimensional VAE whose ``fault`` appears while ``flag["on"]``:

    * ``"reconstruction"``: the likelihood's mean becomes NaN;
    * ``"kl"``: the posterior scale becomes 0, so KL(q || p) is infinite;
    * ``"gradient"``: the likelihood gains sqrt(0 * w), finite (0) with a NaN gradient.
    """

    def model(x):
        w = pyro.param("w", torch.ones(()))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            loc = z * w
            if flag["on"] and fault == "reconstruction":
                loc = loc * float("nan")
            if flag["on"] and fault == "gradient":
                loc = loc + torch.sqrt(w * 0.0)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        m = pyro.param("m", torch.zeros(()))
        s = pyro.param("s", torch.ones(()), constraint=constraints.positive)
        scale = s * 0.0 if flag["on"] and fault == "kl" else s
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * m, scale).to_event(1))

    return model, guide


@pytest.mark.parametrize(
    "fault, kind, term, site, detail",
    [
        (
            "reconstruction",
            "loss",
            "reconstruction",
            "x",
            "the reconstruction term of site 'x' is nan",
        ),
        ("kl", "loss", "kl", "z", "the KL term of site 'z' is inf"),
        (
            "gradient",
            "gradient",
            "reconstruction",
            "x",
            "reconstruction term of site 'x' has a non-finite gradient",
        ),
    ],
)
def test_non_finite_step_names_epoch_step_and_term(tmp_path, fault, kind, term, site, detail):
    flag = {"on": False}
    model, guide = poisoned_pair(fault, flag)
    x = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteLossError) as info:
        fit(
            model,
            guide,
            x,
            loss=PlainELBO(),
            epochs=5,
            batch_size=8,  # 4 steps per epoch: the fault hits step 5, minibatch 1 of epoch 2
            seed=0,
            progress=False,
            monitor=None,
            callbacks=[Poison(flag)],
            checkpoint_dir=tmp_path,
        )
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.step, err.kind, err.term, err.site) == (2, 5, kind, term, site)
    message = str(err)
    assert (
        f"non-finite {kind}" in message
        and "at epoch 2, step 5 (minibatch 1 of the epoch)" in message
    )
    assert detail in message
    assert f"the last good checkpoint, {str(tmp_path / CHECKPOINT_NAME)!r}, is intact" in message
    # the checkpoint of epoch 1 is intact, and the optimiser never took the bad step
    saved = _read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert saved["epoch"] == 1 and saved["state"]["step"] == 4
    live = [pyro.param("m").unconstrained(), pyro.param("s").unconstrained(), pyro.param("w")]
    for now, then in zip(live, saved["params"], strict=True):
        assert torch.equal(now.detach(), then)


def test_extra_term_is_named():
    class NaNExtra(PlainELBO):
        """A variant whose added term turns NaN from step 3."""

        def combine(self, terms):
            loss, extras = super().combine(terms)
            bonus = torch.tensor(float("nan") if self.step_count >= 2 else 0.0)
            return loss + bonus, {**extras, "bonus": bonus}

    model, guide = poisoned_pair("none", {"on": False})
    with pytest.raises(NonFiniteLossError, match="at epoch 2, step 3 .* an extra term") as info:
        fit(
            model,
            guide,
            torch.randn(16, 1),
            loss=NaNExtra(),
            epochs=2,
            batch_size=8,
            progress=False,
            monitor=None,
        )
    assert (info.value.term, info.value.site, info.value.checkpoint) == ("extra", None, None)
    assert "no checkpoint was written" in str(info.value)


def test_stock_pyro_elbo_failure_is_reported_without_a_term():
    flag = {"on": False}
    model, guide = poisoned_pair("reconstruction", flag)
    with pytest.raises(NonFiniteLossError, match="Trace_ELBO.* does not expose its terms") as info:
        fit(
            model,
            guide,
            torch.randn(16, 1),
            loss=pyro.infer.Trace_ELBO(),
            epochs=3,
            batch_size=8,
            progress=False,
            monitor=None,
            callbacks=[Poison(flag)],
        )
    assert (info.value.epoch, info.value.kind, info.value.term) == (2, "loss", None)


def test_aggressive_encoder_step_failure_is_located():
    flag = {"on": False}
    model, guide = poisoned_pair("kl", flag)
    with pytest.raises(NonFiniteLossError, match="an encoder-only step of aggressive mode") as info:
        fit(
            model,
            guide,
            torch.randn(16, 1),
            loss=PlainELBO(),
            epochs=3,
            batch_size=8,
            progress=False,
            monitor=None,
            aggressive=True,
            aggressive_max_inner=2,
            callbacks=[Poison(flag, aggressive=True)],
        )
    assert (info.value.epoch, info.value.step, info.value.term) == (2, 3, "kl")


# --------------------------------------------------------------------------------------
# Gradient clipping
# --------------------------------------------------------------------------------------
def far_mean_model(x):
    mu = pyro.param("mu", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)


def one_sgd_step(**options):
    """One SGD step (lr 1) from mu = 0 towards data at (100, 50, -1): returns the update."""
    x = torch.tensor([[100.0, 50.0, -1.0]]).expand(8, 3)
    fit(
        far_mean_model,
        lambda x: None,
        x,
        loss=PlainELBO(),
        optim=lambda params: torch.optim.SGD(params, lr=1.0),
        epochs=1,
        batch_size=8,
        progress=False,
        monitor=None,
        **options,
    )
    return pyro.param("mu").detach().clone()


def test_clipping_bounds_the_update():
    free = one_sgd_step()
    torch.testing.assert_close(free, torch.tensor([800.0, 400.0, -8.0]))  # the full gradient
    pyro.clear_param_store()
    by_norm = one_sgd_step(clip_norm=2.0)
    assert float(by_norm.norm()) == pytest.approx(2.0, rel=1e-5)
    torch.testing.assert_close(by_norm / by_norm.norm(), free / free.norm())  # same direction
    pyro.clear_param_store()
    by_value = one_sgd_step(clip_value=0.5)
    torch.testing.assert_close(by_value, torch.tensor([0.5, 0.5, -0.5]))
    pyro.clear_param_store()
    both = one_sgd_step(clip_norm=9.0, clip_value=5.0)  # norm first (to 9), then each to 5
    assert float(both.abs().max()) == pytest.approx(5.0) and float(both.norm()) <= 9.0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"clip_value": 0.0}, "clip_value must be > 0.0"),
        ({"clip_norm": -1}, "clip_norm must be > 0.0"),
    ],
)
def test_bad_clipping(options, match):
    with pytest.raises(ValueError, match=match):
        one_sgd_step(**options)
