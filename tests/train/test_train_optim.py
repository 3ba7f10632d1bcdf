"""fit honours every pyro.optim optimiser, PyroLRScheduler and torch schedulers (issue 14,
item 5): the optimiser and learning rate are the ones asked for, schedules are stepped as
documented and recorded in History's ``lr`` column, checkpoints carry the scheduler, and
anything else is refused."""

from __future__ import annotations

import functools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.train import Callback, fit, make_optimization, make_optimizer


def small_vae(seed: int = 0) -> MLPVAE:
    pyro.set_rng_seed(seed)
    return MLPVAE(64, 4, hidden=(32,))


class Spy(Callback):
    """Keeps the optimiser and scheduler fit built."""

    def on_train_begin(self, state):
        self.optimizer, self.scheduler = state.optimizer, state.scheduler


def train(optim, digits, *, epochs=3, n=64, batch_size=32, spy=None, **options):
    vae = small_vae()
    hist = fit(
        vae.model,
        vae.guide,
        digits[:n],
        loss=PlainELBO(),
        optim=optim,
        epochs=epochs,
        batch_size=batch_size,
        seed=0,
        progress=False,
        monitor=None,
        callbacks=[spy] if spy else (),
        **options,
    )
    return vae, hist


# --------------------------------------------------------------------------------------
# every pyro.optim optimiser is the one asked for
# --------------------------------------------------------------------------------------
PYRO_OPTIMS = [
    (pyro.optim.Adam, torch.optim.Adam, {"lr": 0.01}),
    (pyro.optim.ClippedAdam, pyro.optim.clipped_adam.ClippedAdam, {"lr": 0.01, "clip_norm": 5.0}),
    (pyro.optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.5}),
    (pyro.optim.AdagradRMSProp, pyro.optim.adagrad_rmsprop.AdagradRMSProp, {"eta": 0.1}),
    (pyro.optim.DCTAdam, pyro.optim.dct_adam.DCTAdam, {"lr": 0.01}),
    (pyro.optim.RMSprop, torch.optim.RMSprop, {"lr": 0.003}),
    (pyro.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.05}),
    (pyro.optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(
    "wrapper, torch_class, args", PYRO_OPTIMS, ids=lambda v: getattr(v, "__name__", "")
)
def test_every_pyro_optim_builds_its_own_optimizer_and_trains(wrapper, torch_class, args, digits):
    spy = Spy()
    _, hist = train(wrapper(dict(args)), digits, spy=spy)
    assert type(spy.optimizer) is torch_class
    for key, value in args.items():
        assert spy.optimizer.param_groups[0][key] == value
    assert spy.scheduler is None
    assert np.isfinite(hist.column("elbo")).all()
    if "lr" in args:  # constant learning rate, recorded every epoch
        np.testing.assert_array_equal(hist.column("lr"), [args["lr"]] * 3)


def test_default_optimizer_is_adam_at_1e_3_and_lr_is_recorded(digits):
    spy = Spy()
    _, hist = train(None, digits, spy=spy)
    assert type(spy.optimizer) is torch.optim.Adam
    np.testing.assert_array_equal(hist.column("lr"), [1e-3] * 3)


# --------------------------------------------------------------------------------------
# schedulers: stepped once per epoch by default, or per step
# --------------------------------------------------------------------------------------
def test_exponential_lr_halves_the_learning_rate_every_epoch(digits):
    spy = Spy()
    optim = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.02}, "gamma": 0.5}
    )
    _, hist = train(optim, digits, epochs=4, spy=spy)
    assert type(spy.optimizer) is torch.optim.Adam
    assert isinstance(spy.scheduler, torch.optim.lr_scheduler.ExponentialLR)
    np.testing.assert_array_equal(hist.column("lr"), [0.02, 0.01, 0.005, 0.0025])
    assert spy.optimizer.param_groups[0]["lr"] == 0.02 * 0.5**4  # stepped after the last epoch


def test_step_lr_follows_its_schedule(digits):
    optim = pyro.optim.StepLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, "step_size": 2, "gamma": 0.1}
    )
    _, hist = train(optim, digits, epochs=5)
    np.testing.assert_allclose(hist.column("lr"), [0.01, 0.01, 0.001, 0.001, 0.0001], rtol=1e-12)


def test_scheduler_step_per_step_steps_after_every_decoder_step(digits):
    # 64 rows, batches of 32: two steps per epoch; the epoch's last step ran at lr0 * g^(2e-1)
    optim = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.02}, "gamma": 0.5}
    )
    _, hist = train(optim, digits, epochs=3, scheduler_step="step")
    np.testing.assert_allclose(
        hist.column("lr"), [0.02 * 0.5 ** (2 * e - 1) for e in (1, 2, 3)], rtol=1e-12
    )


def test_one_cycle_lr_per_step_matches_torch(digits):
    epochs, steps = 3, 2
    optim = pyro.optim.OneCycleLR(
        {
            "optimizer": torch.optim.SGD,
            "optim_args": {"lr": 1e-4},
            "max_lr": 1e-3,
            "total_steps": epochs * steps,
        }
    )
    _, hist = train(optim, digits, epochs=epochs, scheduler_step="step")
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=1e-3, total_steps=epochs * steps)
    expected = []
    for _ in range(epochs):
        for _ in range(steps):
            lr = ref_opt.param_groups[0]["lr"]
            ref_opt.step()
            ref.step()
        expected.append(lr)
    np.testing.assert_allclose(hist.column("lr"), expected, rtol=1e-12)


def test_reduce_lr_on_plateau_gets_the_epoch_loss(digits):
    optim = pyro.optim.ReduceLROnPlateau(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 1e-3}, "factor": 0.5, "patience": 0}
    )
    _, hist = train(optim, digits, epochs=6)
    # replay the recorded per-data-point epoch losses through a reference scheduler
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, factor=0.5, patience=0)
    expected = []
    for loss in hist.column("loss"):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref.step(loss)
    np.testing.assert_array_equal(hist.column("lr"), expected)


def test_torch_optimizer_with_a_scheduler_factory(digits):
    spy = Spy()
    _, hist = train(
        functools.partial(torch.optim.SGD, lr=1e-3),
        digits,
        epochs=3,
        spy=spy,
        scheduler=lambda opt: torch.optim.lr_scheduler.MultiplicativeLR(opt, lambda e: 0.1),
    )
    assert isinstance(spy.scheduler, torch.optim.lr_scheduler.MultiplicativeLR)
    np.testing.assert_allclose(hist.column("lr"), [1e-3, 1e-4, 1e-5], rtol=1e-12)


# --------------------------------------------------------------------------------------
# per-parameter arguments and clipping, as Pyro applies them
# --------------------------------------------------------------------------------------
def point_model(x):
    loc = pyro.param("loc", torch.zeros(x.shape[-1]))
    shift = pyro.param("shift", torch.zeros(()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc + shift, 1.0).to_event(1), obs=x)


def empty_guide(x):
    pass


def fit_point(optim, x, epochs, **options):
    return fit(
        point_model,
        empty_guide,
        x,
        loss=Trace_ELBO(),
        optim=optim,
        epochs=epochs,
        batch_size=len(x),
        seed=0,
        progress=False,
        monitor=None,
        **options,
    )


def svi_point(optim, x, steps):
    pyro.clear_param_store()
    svi = SVI(point_model, empty_guide, optim, loss=Trace_ELBO())
    for _ in range(steps):
        svi.step(x)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("argc", [1, 2])
def test_per_parameter_callable_gets_pyro_names(argc):
    x = torch.randn(20, 3) + 5.0
    seen = []

    def one(name):
        seen.append(name)
        return {"lr": 0.0 if name == "shift" else 0.1}

    def two(module_name, name):
        seen.append((module_name, name))
        return {"lr": 0.0 if name == "shift" else 0.1}

    hist = fit_point(pyro.optim.Adam(one if argc == 1 else two), x, 3)
    store = pyro.get_param_store()
    assert float(store["shift"].detach()) == 0.0  # lr 0 for this parameter alone
    assert bool((store["loc"] > 0.2).all())
    # as pyro.optim calls it (for a plain pyro.param, Pyro's module name is the name)
    assert sorted(seen) == (["loc", "shift"] if argc == 1 else [("loc", "loc"), ("shift", "shift")])
    np.testing.assert_array_equal(hist.column("lr"), [0.1] * 3)  # the first group's


def test_per_parameter_callable_of_a_module_gets_the_module_name(digits):
    names = []

    def args(module_name, param_name):
        names.append((module_name, param_name))
        return {"lr": 1e-3}

    vae = small_vae()

    def model(x):
        pyro.module("dec", vae.decoder)
        return vae.model(x)

    fit(
        model,
        vae.guide,
        digits[:32],
        loss=PlainELBO(),
        optim=pyro.optim.Adam(args),
        epochs=1,
        progress=False,
        monitor=None,
    )
    first = next(iter(dict(vae.decoder.named_parameters())))
    assert ("dec", first) in names


@pytest.mark.parametrize("clip", [0.5, 1e9])
def test_clipped_adam_clipping_matches_pyro_svi(clip):
    x = torch.randn(20, 3) * 0.1 + torch.tensor([30.0, -20.0, 4.0])  # large gradients
    args = {"lr": 0.5, "clip_norm": clip, "lrd": 0.9}
    fit_point(pyro.optim.ClippedAdam(dict(args)), x, 4)
    got = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    want = svi_point(pyro.optim.ClippedAdam(dict(args)), x, 4)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_clipped_adam_clip_changes_the_result():
    x = torch.randn(20, 3) * 0.1 + torch.tensor([30.0, -20.0, 4.0])
    fit_point(pyro.optim.ClippedAdam({"lr": 0.5, "clip_norm": 0.5}), x, 4)
    clipped = pyro.get_param_store()["loc"].detach().clone()
    pyro.clear_param_store()
    fit_point(pyro.optim.ClippedAdam({"lr": 0.5, "clip_norm": 1e9}), x, 4)
    free = pyro.get_param_store()["loc"].detach().clone()
    assert not torch.allclose(clipped, free)


def test_pyro_optim_clip_args_clip_each_parameter_as_pyro_does():
    x = torch.randn(20, 3) + torch.tensor([30.0, -20.0, 4.0])

    def optim():
        return pyro.optim.PyroOptim(torch.optim.SGD, {"lr": 0.01}, {"clip_norm": 1.0})

    fit_point(optim(), x, 3)
    got = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    want = svi_point(optim(), x, 3)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    # each step moved loc by at most lr * clip_norm
    assert float(got["loc"].norm()) <= 3 * 0.01 * 1.0 + 1e-6


# --------------------------------------------------------------------------------------
# checkpoints carry the scheduler
# --------------------------------------------------------------------------------------
def _sched_optim():
    return pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.02}, "gamma": 0.7}
    )


@pytest.mark.parametrize("kind", ["pyro", "torch"])
def test_resume_with_a_scheduler_equals_an_uninterrupted_run(kind, digits, tmp_path):
    def options():
        if kind == "pyro":
            return {"optim": _sched_optim()}
        return {
            "optim": functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
            "scheduler": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        }

    vae_a, hist_a = train(digits=digits, epochs=4, **options())
    vae_b = small_vae()
    common = dict(loss=PlainELBO(), batch_size=32, seed=0, progress=False, monitor=None)
    fit(
        vae_b.model,
        vae_b.guide,
        digits[:64],
        epochs=2,
        checkpoint_dir=tmp_path,
        **common,
        **options(),
    )
    pyro.clear_param_store()
    vae_b = small_vae(seed=123)  # different initial values: the checkpoint overwrites them
    hist_b = fit(
        vae_b.model,
        vae_b.guide,
        digits[:64],
        epochs=4,
        checkpoint_dir=tmp_path,
        resume=True,
        **common,
        **options(),
    )
    for col in ("elbo", "lr", "kl"):
        np.testing.assert_array_equal(hist_a.column(col), hist_b.column(col))
    for (ka, a), (kb, b) in zip(
        vae_a.state_dict().items(), vae_b.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(a, b)


def test_resume_with_another_scheduler_is_refused(digits, tmp_path):
    vae = small_vae()
    common = dict(
        loss=PlainELBO(), batch_size=32, progress=False, monitor=None, checkpoint_dir=tmp_path
    )
    fit(vae.model, vae.guide, digits[:64], epochs=1, optim=_sched_optim(), **common)
    with pytest.raises(
        ValueError, match="holds a ExponentialLR scheduler, but optim and scheduler build none"
    ):
        fit(
            vae.model,
            vae.guide,
            digits[:64],
            epochs=2,
            resume=True,
            optim=pyro.optim.Adam({"lr": 0.02}),
            **common,
        )


# --------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------
def _opt():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)


@pytest.mark.parametrize(
    "options, exc, match",
    [
        (
            {"optim": 3},
            TypeError,
            r"optim must be None, a pyro.optim.PyroOptim or a callable.*Accepted: None \(Adam",
        ),
        ({"optim": "adam"}, TypeError, "optim must be None, a pyro.optim.PyroOptim"),
        ({"optim": _opt()}, TypeError, "optim must be a factory, not an optimizer instance"),
        (
            {"optim": torch.optim.lr_scheduler.StepLR(_opt(), 1)},
            TypeError,
            "optim must not be a learning-rate scheduler instance",
        ),
        (
            {"optim": _sched_optim(), "scheduler": lambda o: torch.optim.lr_scheduler.StepLR(o, 1)},
            ValueError,
            "optim is a pyro.optim.PyroLRScheduler, which brings its own scheduler",
        ),
        ({"scheduler": 3}, TypeError, "scheduler must be None or a callable optimizer"),
        (
            {"scheduler": lambda o: o},
            TypeError,
            r"scheduler\(optimizer\) must return a torch.optim.lr_scheduler",
        ),
        (
            {"scheduler": lambda o: torch.optim.lr_scheduler.StepLR(_opt(), 1)},
            ValueError,
            "must schedule the optimizer it is given",
        ),
        ({"scheduler_step": "batch"}, ValueError, "scheduler_step"),
        (
            {"optim": pyro.optim.Adam(lambda name: 0.1)},
            TypeError,
            "must return a dict of arguments, got float",
        ),
        (
            {"optim": pyro.optim.Adam({"learning_rate": 0.1})},
            TypeError,
            r"optim \(PyroOptim over Adam\) could not build its optimiser",
        ),
        (
            {
                "optim": pyro.optim.ExponentialLR(
                    {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}}
                )
            },
            TypeError,
            r"optim \(PyroLRScheduler over ExponentialLR\) could not build its scheduler",
        ),
    ],
)
def test_bad_optim_is_refused_clearly(options, exc, match, digits):
    with pytest.raises(exc, match=match):
        train(options.pop("optim", None), digits, epochs=1, **options)


def test_make_optimizer_refuses_a_per_param_callable_without_names():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(
        ValueError, match="per-parameter callable of arguments.*no names are available"
    ):
        make_optimizer(pyro.optim.Adam(lambda name: {"lr": 0.1}), [p])
    opt, sched, clip = make_optimization(pyro.optim.Adam(lambda name: {"lr": 0.1}), [p], ["w"])
    assert opt.param_groups[0]["lr"] == 0.1 and sched is None and clip == []


def test_loader_training_records_lr_too(digits):
    loader = DataLoader(TensorDataset(digits[:64]), batch_size=32)
    vae = small_vae()
    hist = fit(
        vae.model,
        vae.guide,
        loader,
        loss=PlainELBO(),
        optim=_sched_optim(),
        epochs=2,
        progress=False,
        monitor=None,
    )
    np.testing.assert_allclose(hist.column("lr"), [0.02, 0.014], rtol=1e-12)
    assert not math.isnan(hist.column("elbo")[-1])
