import math

import pyro
import pytest
import torch

from pyrocollapse.callbacks import (
    AggressiveOnCollapse,
    CollapseCallback,
    CollapseWarning,
    PosteriorCollapseWarning,
    RollbackOnCollapse,
)
from pyrocollapse.elbo import AnnealedELBO, PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Schedule
from pyrocollapse.train import EpochRecord, History, TrainState, collect_params, fit


def record(epoch: int, au: float = 3.0, mi: float = 0.5, site: str = "z") -> EpochRecord:
    return EpochRecord(epoch, {f"active_units/{site}": au, f"mi/{site}": mi})


@pytest.fixture
def state(digits) -> TrainState:
    """A live training state: a small VAE after one real Adam step (so the optimiser
    has moments to restore)."""
    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 3, hidden=(16,))
    x = digits[:32]
    guide_params, model_params = collect_params(vae.model, vae.guide, x)
    opt = torch.optim.Adam(guide_params + model_params, lr=1e-2)
    elbo = PlainELBO()
    opt.zero_grad()
    elbo.differentiable_loss(vae.model, vae.guide, x).backward()
    opt.step()
    elbo.step()
    return TrainState(
        vae.model,
        vae.guide,
        elbo,
        opt,
        History(),
        epochs=10,
        guide_params=guide_params,
        model_params=model_params,
        extras={"x": x},
    )


def train_one_step(state: TrainState) -> None:
    state.optimizer.zero_grad()
    state.loss.differentiable_loss(state.model, state.guide, state.extras["x"]).backward()
    state.optimizer.step()
    state.loss.step()


# --------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------
def test_detects_each_threshold_and_reports_why():
    cb = CollapseWarning(min_active_units=2, min_mi=0.1)
    assert cb.reasons(record(1, au=2, mi=0.1)) == []
    assert cb.reasons(record(1, au=1, mi=0.5)) == ["active units of 'z' 1 < 2"]
    assert cb.reasons(record(1, au=3, mi=0.05)) == ["I_q(x; z) of 'z' 0.05 nats < 0.1 nats"]
    assert len(cb.reasons(record(1, au=0, mi=0.0))) == 2


def test_missing_monitor_value_is_a_clear_error():
    cb = CollapseWarning(site="h")
    with pytest.raises(
        ValueError,
        match=r"watches 'active_units/h', but epoch 4 has no such value \(monitored sites: 'z'\)",
    ):
        cb.on_epoch_end(None, record(4))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            {"min_active_units": None, "min_mi": None},
            ValueError,
            "needs a threshold: give min_active_units, min_mi or both",
        ),
        ({"min_active_units": 0}, ValueError, "min_active_units must be >= 1, got 0"),
        ({"min_mi": -0.1}, ValueError, "min_mi must be >= 0.0, got -0.1"),
        ({"min_mi": float("nan")}, ValueError, "min_mi must be finite, got nan"),
        ({"patience": 0}, ValueError, "patience must be >= 1, got 0"),
        ({"site": 3}, TypeError, "site must be a latent site name"),
    ],
)
def test_bad_thresholds(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CollapseWarning(**kwargs)


def test_base_class_needs_a_reaction():
    with pytest.raises(NotImplementedError, match="must implement on_collapse"):
        CollapseCallback().on_epoch_end(None, record(1, au=0))


# --------------------------------------------------------------------------------------
# CollapseWarning
# --------------------------------------------------------------------------------------
def test_warning_once_per_collapse_episode_after_patience():
    cb = CollapseWarning(min_active_units=1, patience=2)
    cb.on_train_begin(None)
    cb.on_epoch_end(None, record(1, au=0))  # first collapsed epoch: patience not reached
    with pytest.warns(
        PosteriorCollapseWarning, match="posterior collapse at epoch 2: active units of 'z' 0 < 1"
    ):
        cb.on_epoch_end(None, record(2, au=0))
    cb.on_epoch_end(None, record(3, au=0))  # same episode: no second warning (errors if it warns)
    cb.on_epoch_end(None, record(4, au=2))  # recovery
    cb.on_epoch_end(None, record(5, au=0))
    with pytest.warns(PosteriorCollapseWarning, match="epoch 6"):
        cb.on_epoch_end(None, record(6, au=0))
    assert [e for e, _ in cb.events] == [2, 6]


class Jump(Schedule):
    """KL weight 0 for ``at`` steps, then ``high``: a reliable way to make a VAE collapse."""

    _fields = ("at", "high")

    def __init__(self, at: int, high: float) -> None:
        self.at, self.high = at, high

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.at else self.high


def collapsing_fit(digits, callbacks, epochs=6, **options):
    # 8 steps per epoch; epochs 1-3 train with KL weight 0 (all 4 units active by epoch
    # 2), then a KL weight of 1000 collapses every unit within an epoch
    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 4, hidden=(32,))
    elbo = AnnealedELBO(Jump(24, 1000.0))
    hist = fit(
        vae.model,
        vae.guide,
        digits[:256],
        loss=elbo,
        epochs=epochs,
        batch_size=32,
        seed=0,
        progress=False,
        optim=lambda p: torch.optim.Adam(p, lr=1e-2),
        callbacks=callbacks,
        monitor_size=256,  # every point: the callbacks react to the monitored AU
        **options,
    )
    return vae, elbo, hist


def test_collapse_warning_during_fit(digits):
    with pytest.warns(
        PosteriorCollapseWarning, match=r"posterior collapse at epoch 4: active units of 'z' 0 < 2"
    ):
        _, _, hist = collapsing_fit(digits, [CollapseWarning(min_active_units=2)], epochs=4)
    assert hist.column("active_units/z")[1:3].min() >= 2


# --------------------------------------------------------------------------------------
# AggressiveOnCollapse
# --------------------------------------------------------------------------------------
def test_aggressive_switches_on_at_most_max_switches(state):
    cb = AggressiveOnCollapse(max_switches=1)
    cb.on_train_begin(state)
    cb.on_epoch_end(state, record(1, au=2))
    assert not state.aggressive
    cb.on_epoch_end(state, record(2, au=0))
    assert state.aggressive and cb.switches == 1
    state.aggressive = False  # fit ends the mode when I_q stops rising
    cb.on_epoch_end(state, record(3, au=0))
    assert not state.aggressive  # max_switches reached
    assert cb.events == [(2, "aggressive encoder training from epoch 3: active units of 'z' 0 < 1")]


def test_aggressive_on_collapse_during_fit(digits):
    cb = AggressiveOnCollapse(min_active_units=2)
    _, _, hist = collapsing_fit(digits, [cb], epochs=5, aggressive_max_inner=5)
    aggressive = hist.column("aggressive")
    assert aggressive.tolist()[:4] == [0.0, 0.0, 0.0, 0.0]
    assert aggressive[4] == 1.0 and hist.column("inner_steps")[4] >= 1
    assert cb.switches == 1 and cb.events[0][0] == 4


# --------------------------------------------------------------------------------------
# RollbackOnCollapse
# --------------------------------------------------------------------------------------
def test_rollback_restores_parameters_optimizer_and_schedule_exactly(state):
    cb = RollbackOnCollapse(then="stop")
    cb.on_train_begin(state)
    state.epoch = 1
    assert cb.on_epoch_end(state, record(1, au=3)) is None  # healthy: checkpoint
    params = [p.detach().clone() for p in state.guide_params + state.model_params]
    moments = [state.optimizer.state[p]["exp_avg"].clone() for p in state.guide_params]
    step_count = state.loss.step_count
    for _ in range(3):
        train_one_step(state)
    assert not torch.equal(state.guide_params[0], params[0])
    state.epoch = 2
    rec = record(2, au=0)
    assert cb.on_epoch_end(state, rec) is True  # collapse: roll back and stop
    for live, saved in zip(state.guide_params + state.model_params, params, strict=True):
        assert torch.equal(live, saved)
    for p, m in zip(state.guide_params, moments, strict=True):
        assert torch.equal(state.optimizer.state[p]["exp_avg"], m)
    assert state.loss.step_count == step_count
    assert rec.values["rollback_to_epoch"] == 1.0
    # the restored optimiser still trains the live tensors
    train_one_step(state)
    assert not torch.equal(state.guide_params[0], params[0])


def test_rollback_then_continue_or_aggressive_and_max_rollbacks(state):
    cb = RollbackOnCollapse(then="aggressive", max_rollbacks=2, restore_schedule=False)
    cb.on_train_begin(state)
    state.epoch = 1
    cb.on_epoch_end(state, record(1, au=3))
    state.loss.step_count = 50
    assert cb.on_epoch_end(state, record(2, au=0)) is False
    assert state.aggressive and cb.rollbacks == 1 and state.loss.step_count == 50
    assert cb.on_epoch_end(state, record(3, au=0)) is False  # second rollback
    assert cb.on_epoch_end(state, record(4, au=0)) is True  # max_rollbacks reached: stop
    assert cb.rollbacks == 3 and cb.events[-1][1].endswith("restored epoch 1, stopped")


def test_rollback_without_a_healthy_epoch_warns(state):
    cb = RollbackOnCollapse(then="continue")
    cb.on_train_begin(state)
    rec = record(1, au=0)
    with pytest.warns(
        PosteriorCollapseWarning, match="before any healthy epoch: nothing to roll back to"
    ):
        assert cb.on_epoch_end(state, rec) is False
    assert math.isnan(rec.values["rollback_to_epoch"])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            {"then": "retry"},
            ValueError,
            "then must be one of 'stop', 'continue', 'aggressive'; got 'retry'",
        ),
        ({"max_rollbacks": 0}, ValueError, "max_rollbacks must be >= 1, got 0"),
        ({"restore_schedule": "yes"}, TypeError, "restore_schedule must be a bool"),
    ],
)
def test_rollback_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RollbackOnCollapse(**kwargs)


def test_rollback_during_fit_leaves_the_last_healthy_model(digits):
    cb = RollbackOnCollapse(min_active_units=2)
    vae, elbo, hist = collapsing_fit(digits, [cb])
    assert len(hist) == 4  # stopped at the first collapsed epoch
    assert hist[-1].values["rollback_to_epoch"] == 3.0
    assert hist.column("active_units/z")[-1] < 2 <= hist.column("active_units/z")[2]
    guide_params, model_params = collect_params(vae.model, vae.guide, digits[:2])
    for live, saved in zip(guide_params + model_params, cb.checkpoint.params, strict=True):
        assert torch.equal(live, saved)
    assert elbo.step_count == 24  # the schedule is back at the end of epoch 3
