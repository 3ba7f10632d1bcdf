"""fit's tracker hook and the TensorBoard and MLflow trackers (issue 18, item 4)."""

from __future__ import annotations

import doctest
import math
import sys
import types

import numpy as np
import pyro
import pytest

from pyrocollapse import tracking
from pyrocollapse.callbacks import RollbackOnCollapse
from pyrocollapse.elbo import AnnealedELBO, PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear
from pyrocollapse.tracking import (
    MemoryTracker,
    MLflowTracker,
    TensorBoardTracker,
    Tracker,
    epoch_scalars,
    flatten_hparams,
)
from pyrocollapse.train import fit


def _fit(data, tracker, **kwargs):
    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 3, hidden=(16,))
    options = {
        "loss": AnnealedELBO(Linear(6)),
        "epochs": 3,
        "batch_size": 50,
        "seed": 0,
        "progress": False,
        **kwargs,
    }
    return fit(vae.model, vae.guide, data, tracker=tracker, **options)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def test_a_tracker_gets_exactly_the_history_of_every_epoch(digits):
    tracker = MemoryTracker()
    hist = _fit(digits[:200], tracker)
    assert [s for s, _ in tracker.scalars] == [1, 2, 3]  # per epoch only by default
    df = hist.to_dataframe()
    for (epoch, logged), (_, row) in zip(tracker.scalars, df.iterrows(), strict=True):
        expected = {k: float(v) for k, v in row.items() if k != "epoch"}
        assert epoch == row["epoch"] and _same(logged, expected)
    last = tracker.scalars[-1][1]
    # KL per dimension, active units and MI are among them
    assert {"kl/z/0", "kl/z/1", "kl/z/2", "active_units/z", "mi/z", "kl_weight"} <= set(last)
    np.testing.assert_array_equal([last[f"kl/z/{d}"] for d in range(3)], hist.kl_matrix()[:, -1])
    assert not tracker.closed  # the caller owns it


def test_a_tracker_sees_what_callbacks_noted(digits):
    # a callback's note (here rollback_to_epoch) is in the record the tracker gets
    tracker = MemoryTracker()
    cb = RollbackOnCollapse(min_active_units=3, then="continue", max_rollbacks=5)
    with pytest.warns(UserWarning):
        hist = _fit(digits[:200], tracker, callbacks=[cb], epochs=2)
    for (_, logged), record in zip(tracker.scalars, hist, strict=True):
        assert "rollback_to_epoch" in record.values
        assert _same(logged, epoch_scalars(record))


def test_hparams_describe_the_run(digits):
    tracker = MemoryTracker()
    _fit(digits[:200], tracker, aggressive=True, aggressive_max_inner=2, aggressive_window=2)
    hp = tracker.hparams
    assert hp["epochs"] == 3 and hp["batch_size"] == 50 and hp["seed"] == 0
    assert hp["aggressive"] is True and hp["aggressive_max_inner"] == 2
    assert hp["optimizer"] == "Adam" and hp["lr"] == pytest.approx(1e-3)
    assert hp["loss"] == "AnnealedELBO" and hp["objective.class"] == "AnnealedELBO"
    assert hp["objective.kl_weight.warmup_steps"] == 6
    assert hp["device"] is None and hp["resumed_after"] == 0


def test_per_step_loss_when_asked(digits):
    tracker = MemoryTracker(log_steps=2)
    _fit(digits[:200], tracker, loss=PlainELBO())  # 4 steps per epoch, 12 in all
    steps = tracker.steps()
    assert [s for s, _ in steps] == [2, 4, 6, 8, 10, 12]
    assert {"step/loss", "step/elbo", "step/kl", "step/kl_weight", "step/lr"} <= set(steps[0][1])
    assert steps[0][1]["step/loss"] == pytest.approx(-steps[0][1]["step/elbo"])
    assert len(tracker.epochs()) == 3
    # per data point: the same scale as the epoch's averages
    epoch1 = tracker.epochs()[0][1]
    assert abs(steps[0][1]["step/elbo"] - epoch1["elbo"]) < 0.5 * abs(epoch1["elbo"])


def test_any_object_with_log_scalars_is_a_tracker(digits):
    class Bare:
        def __init__(self):
            self.calls = []

        def log_scalars(self, step, scalars):
            self.calls.append(step)

    bare = Bare()
    assert isinstance(bare, tracking.TrackerLike)
    _fit(digits[:200], bare, epochs=2)
    assert bare.calls == [1, 2]


@pytest.mark.parametrize(
    "tracker, error, message",
    [
        ("tb", TypeError, "tracker must be None or a pyrocollapse.tracking.Tracker"),
        (MemoryTracker, TypeError, "got the class MemoryTracker"),
        (types.SimpleNamespace(log_scalars=print, log_steps=-1), ValueError, "log_steps"),
    ],
)
def test_bad_trackers_are_refused_before_training(digits, tracker, error, message):
    with pytest.raises(error, match=message):
        _fit(digits[:200], tracker)


def test_log_steps_is_checked():
    with pytest.raises(ValueError, match="log_steps must be an int >= 0"):
        MemoryTracker(log_steps=1.5)
    with pytest.raises(NotImplementedError, match="log_scalars"):
        Tracker().log_scalars(1, {})


def test_flatten_hparams():
    flat = flatten_hparams({"a": {"b": 1, "c": {"d": None}}, "e": (1, 2), "f": "x"})
    assert flat == {"a.b": 1, "a.c.d": None, "e": "(1, 2)", "f": "x"}
    with pytest.raises(TypeError, match="hparams must be a dict"):
        flatten_hparams([1])


def test_tracker_is_a_context_manager():
    with MemoryTracker() as t:
        pass
    assert t.closed


def test_module_docstring_example_runs():
    assert doctest.testmod(tracking).failed == 0


# --------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------
def test_tensorboard_tracker_writes_events_tensorboard_reads(digits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardTracker(tmp_path / "tb", log_steps=4) as tb:
        hist = _fit(digits[:200], tb)
    assert tb.log_dir == str(tmp_path / "tb")
    acc = EventAccumulator(tb.log_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    df = hist.to_dataframe()
    assert set(df.columns) - {"epoch"} <= tags
    for name in ("elbo", "kl/z/2", "mi/z", "active_units/z", "kl_weight"):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2, 3]
        np.testing.assert_allclose([e.value for e in events], df[name], rtol=1e-6)
    assert [e.step for e in acc.Scalars("step/loss")] == [4, 8, 12]
    # the hyperparameters went to the HParams plugin, with the final metrics
    assert "final/elbo" in tags
    plugins = acc.PluginTagToContent("hparams")
    assert plugins  # session start info holds the hyperparameters


def test_tensorboard_tracker_without_tensorboard_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardTracker()


# --------------------------------------------------------------------------------------
# MLflow (with a stand-in module: mlflow itself is not a test dependency)
# --------------------------------------------------------------------------------------
class _FakeMLflow(types.ModuleType):
    def __init__(self):
        super().__init__("mlflow")
        self.calls: list[tuple] = []
        self.active = None

    def set_tracking_uri(self, uri):
        self.calls.append(("uri", uri))

    def set_experiment(self, name):
        self.calls.append(("experiment", name))

    def active_run(self):
        return self.active

    def start_run(self, run_name=None, tags=None):
        self.active = types.SimpleNamespace(name=run_name, tags=tags)
        self.calls.append(("start", run_name, tags))
        return self.active

    def end_run(self):
        self.active = None
        self.calls.append(("end",))

    def log_metrics(self, metrics, step=None):
        self.calls.append(("metrics", step, dict(metrics)))

    def log_params(self, params):
        self.calls.append(("params", dict(params)))


def test_mlflow_tracker_logs_metrics_and_params(digits, monkeypatch):
    fake = _FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    with MLflowTracker(experiment="collapse", run_name="r1", tracking_uri="file:/tmp/x") as ml:
        hist = _fit(digits[:200], ml)
        ml.log_hparams({"epochs": 99, "note": "x" * 600, "odd$$$name": 1})
    assert fake.calls[:3] == [
        ("uri", "file:/tmp/x"),
        ("experiment", "collapse"),
        ("start", "r1", None),
    ]
    assert fake.calls[-1] == ("end",)
    metrics = [c for c in fake.calls if c[0] == "metrics"]
    assert [c[1] for c in metrics] == [1, 2, 3]
    assert _same(metrics[-1][2], epoch_scalars(hist[-1]))
    params = [c[1] for c in fake.calls if c[0] == "params"]
    assert params[0]["epochs"] == "3" and params[0]["objective.class"] == "AnnealedELBO"
    # a parameter is never logged twice (MLflow refuses to change one); long values cut
    assert "epochs" not in params[1] and len(params[1]["note"]) == 500
    assert params[1]["odd___name"] == "1"


def test_mlflow_tracker_leaves_an_active_run_open(monkeypatch):
    fake = _FakeMLflow()
    fake.active = types.SimpleNamespace(name="outer")
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    ml = MLflowTracker()
    ml.log_scalars(5, {"a/b:c d": 1.0, "bad key!": 2.0})
    ml.close()
    ml.close()
    assert fake.calls == [("metrics", 5, {"a/b:c d": 1.0, "bad key_": 2.0})]
    assert ml.run.name == "outer"


def test_mlflow_tracker_without_mlflow_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match="pip install mlflow"):
        MLflowTracker()
