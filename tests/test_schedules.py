import json

import numpy as np
import pytest

from pyrocollapse.schedules import Constant, Cyclical, Linear, Schedule, Sigmoid, make_schedule


def test_constant_and_linear_exact_values():
    assert Constant(0.3)(0) == 0.3 and Constant(0.3)(10**6) == 0.3
    lin = Linear(warmup_steps=10)
    assert [lin(t) for t in (0, 1, 5, 10, 11, 1000)] == [0.0, 0.1, 0.5, 1.0, 1.0, 1.0]
    lin2 = Linear(4, start=0.5, end=1.5)
    assert lin2(2) == pytest.approx(1.0)


def test_sigmoid_midpoint_and_limits():
    s = Sigmoid(midpoint=100, steepness=0.1, end=2.0)
    assert s(100) == pytest.approx(1.0)
    assert s(0) == pytest.approx(2.0 / (1 + np.exp(10)))
    assert s(10**6) == pytest.approx(2.0)


def test_cyclical_matches_fu_et_al_definition():
    # Fu et al. (2019): tau = mod(t, T/M) / (T/M); beta = tau / R if tau <= R else 1
    period, n_cycles, ratio = 10, 3, 0.5
    sched = Cyclical(period, n_cycles, ratio)
    for t in range(period * n_cycles):
        tau = (t % period) / period
        expected = tau / ratio if tau <= ratio else 1.0
        assert sched(t) == pytest.approx(expected), t
    assert sched(period * n_cycles) == 1.0 and sched(10**5) == 1.0
    v = sched.values(period * n_cycles)
    assert v[0] == 0.0 and v[period] == 0.0 and v[period - 1] == 1.0
    assert (np.diff(v[:5]) > 0).all()


@pytest.mark.parametrize(
    "sched", [Constant(0.5), Linear(7, 0.1, 0.9), Sigmoid(3, 0.5, 1.0), Cyclical(5, 2, 0.25, 2.0)]
)
def test_schedules_serialise_round_trip(sched):
    spec = json.loads(json.dumps(sched.to_dict()))
    again = Schedule.from_dict(spec)
    assert again == sched and repr(again) == repr(sched)
    assert [again(t) for t in range(20)] == [sched(t) for t in range(20)]
    assert make_schedule(spec) == sched


def test_schedule_plot_returns_figure():
    fig = Linear(5).plot(20)
    assert fig.axes[0].lines[0].get_ydata()[-1] == 1.0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Linear(0), "warmup_steps must be >= 1"),
        (lambda: Cyclical(0), "period must be >= 1"),
        (lambda: Cyclical(5, ratio=0.0), "ratio must be > 0"),
        (lambda: Constant(-1.0), "value must be >= 0"),
        (lambda: Constant(float("nan")), "value must be finite"),
        (lambda: Linear(5)(-1), "step must be >= 0"),
        (lambda: make_schedule("linear"), "schedule must be a Schedule"),
        (
            lambda: Schedule.from_dict({"name": "cosine"}),
            "unknown schedule 'cosine'; valid names: constant",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()
