"""The per-dimension status rule: information carried, tested against its Monte Carlo
error and a practical floor (issue 17, item 1)."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse import diagnose
from pyrocollapse.report import (
    ACTIVE,
    COLLAPSED,
    NEAR,
    CollapseReport,
    SiteReport,
    _verdict,
    classify,
)


def _channel(gain: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None = None):
    """x ~ N(0, I_D); q(z_d | x) = N(shift_d + gain_d x_d, scale_d^2), p(z) = N(0, I).

    I_q(x; z_d) = 0.5 log(1 + gain_d^2 / scale_d^2) in the population."""
    shift = torch.zeros_like(gain) if shift is None else shift
    dim = len(gain)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(torch.zeros_like(x), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(shift + gain * x, scale).to_event(1))

    return model, guide


def _data(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_classify_uses_noise_then_floor():
    info = np.array([0.0, 0.005, 0.03, 0.03, 0.5, 0.2])
    se = np.array([0.0, 0.0, 0.001, 0.02, 0.01, 0.2])
    status = classify(info, se, mi_threshold=0.01, info_floor=0.1)
    # not above the zero threshold; measurably above zero but below the floor; within
    # 2 s.e. of zero; above the floor; within noise although above the floor
    assert status == [COLLAPSED, COLLAPSED, NEAR, COLLAPSED, ACTIVE, COLLAPSED]
    # with an upper bound (the KL) the activity test decides between active and near
    kl = np.array([0.5, 0.5, 0.005])
    assert classify(
        kl, np.zeros(3), mi_threshold=0.01, info_floor=0.1, active=[True, False, True]
    ) == [ACTIVE, NEAR, COLLAPSED]
    assert classify([math.nan], [0.0], mi_threshold=0.01) == [COLLAPSED]


@pytest.mark.parametrize(
    "status, verdict",
    [
        ([ACTIVE, ACTIVE], "healthy"),
        ([ACTIVE, NEAR], "partial collapse"),
        ([ACTIVE, COLLAPSED], "partial collapse"),
        ([NEAR, COLLAPSED], "near collapse"),
        ([NEAR, NEAR], "near collapse"),
        ([COLLAPSED, COLLAPSED], "full collapse"),
    ],
)
def test_verdicts(status, verdict):
    assert _verdict(status) == verdict


def test_information_spread_thin_is_near_collapse_although_every_mean_varies():
    """16 dimensions of 0.03 nats each (0.5 nats in all): the activity rule of Burda et
    al. calls all 16 active (Cov_x E_q[z_d] = 0.06 > 0.01); the information rule calls
    them near collapse."""
    dim = 16
    target = 0.03  # nats per dimension
    ratio = math.exp(2 * target) - 1  # gain^2 / scale^2
    scale = torch.full((dim,), 0.97)
    gain = scale * math.sqrt(ratio)
    model, guide = _channel(gain, scale)
    report = diagnose(model, guide, _data(2000, dim), estimators=("kl", "au", "mi"))
    s = report["z"]
    np.testing.assert_allclose(s.mi_per_dim, target, atol=0.02)
    assert s.burda_active_units == dim
    assert s.active_units == 0
    assert all(st == NEAR for st in s.status)
    assert report.verdict == "near collapse"
    assert any("near collapse" in n and "spread thin" in n for n in report.notes())


def test_statuses_on_a_channel_with_known_information_per_dimension():
    # 1.0 nats, 0.05 nats, 0 nats (q ignores x)
    gain = torch.tensor([math.sqrt(math.exp(2.0) - 1), math.sqrt(math.exp(0.1) - 1), 0.0])
    scale = torch.ones(3)
    model, guide = _channel(gain, scale)
    report = diagnose(model, guide, _data(3000, 3), estimators=("kl", "au", "mi"))
    s = report["z"]
    assert s.status == [ACTIVE, NEAR, COLLAPSED]
    assert s.verdict == "partial collapse"
    assert s.status_basis == "mi"
    # every status is stated against its noise: the s.e. are small next to the gaps
    assert np.all(s.mi_per_dim_stderr < 0.03)


def test_without_mi_the_kl_and_activity_stand_in():
    gain = torch.tensor([1.0, 0.0])
    scale = torch.tensor([0.5, 1.0])
    model, guide = _channel(gain, scale)
    report = diagnose(model, guide, _data(500, 2), estimators=("kl", "au"))
    s = report["z"]
    assert s.status_basis == "kl"
    assert s.status == [ACTIVE, COLLAPSED]


def test_kl_paid_without_information_is_collapsed_and_explained():
    """q(z_0 | x) = N(2, 1) for every x: 2 nats of KL, no information."""
    gain = torch.tensor([0.0, 1.0])
    scale = torch.tensor([1.0, 0.5])
    model, guide = _channel(gain, scale, shift=torch.tensor([2.0, 0.0]))
    report = diagnose(model, guide, _data(1000, 2), estimators=("kl", "au", "mi"))
    s = report["z"]
    assert s.kl_per_dim[0] == pytest.approx(2.0, abs=1e-4)
    assert s.status[0] == COLLAPSED
    assert any("dims [0]" in n and "KL spent on a prior that does not fit" in n for n in s.notes())


def test_free_bits_floor_is_labelled():
    # KL of dim 0 about 0.5 nats: 0.5 * (s^2 + m^2 - 1 - log s^2) with m = 1, s = 1
    gain = torch.tensor([0.0, 1.5])
    scale = torch.tensor([1.0, 0.4])
    model, guide = _channel(gain, scale, shift=torch.tensor([1.0, 0.0]))
    report = diagnose(model, guide, _data(800, 2), estimators=("kl", "au", "mi"), free_bits=0.5)
    s = report["z"]
    assert s.on_free_bits_floor.tolist() == [True, False]
    assert any("free-bits floor" in n and "dims [0]" in n for n in s.notes())
    assert "(on free-bits floor)" in str(report)
    # no floor known: no label
    plain = diagnose(model, guide, _data(800, 2), estimators=("kl", "au", "mi"))
    assert not plain["z"].on_free_bits_floor.any()


def test_new_fields_round_trip_through_json(tmp_path):
    gain = torch.tensor([1.0, 0.0])
    model, guide = _channel(gain, torch.ones(2))
    report = diagnose(model, guide, _data(300, 2), estimators=("kl", "au", "mi"), free_bits=0.2)
    s = report["z"]
    s.mi_upper = math.inf
    path = tmp_path / "r.json"
    report.to_json(str(path))
    back = CollapseReport.from_json(str(path))
    b = back["z"]
    assert b.status == s.status and b.verdict == s.verdict
    assert b.info_floor == s.info_floor and b.mi_threshold == s.mi_threshold
    assert b.free_bits == 0.2 and b.status_basis == "mi"
    assert b.mi_upper == math.inf


def test_reports_of_earlier_versions_still_read():
    """A report written with the activity rule (status inactive-but-informative)."""
    d = SiteReport(
        site="z",
        kl_per_dim=np.array([0.5, 0.2]),
        kl_estimator="analytic",
        kl_fraction_below=np.zeros(2),
        au_variance=np.array([0.5, 0.001]),
        au_threshold=0.01,
        mi=0.6,
        mi_per_dim=np.array([0.4, 0.2]),
        aggregate_kl=0.1,
        aggregate_kl_per_dim=None,
        status=["active", "inactive-but-informative"],
    ).to_dict()
    for key in ("info_floor", "mi_threshold", "status_basis", "free_bits", "mi_upper"):
        d.pop(key)
    s = SiteReport.from_dict(d)
    assert s.status == ["active", "inactive-but-informative"]
    assert s.verdict == "partial collapse"


@pytest.mark.parametrize("bad", [{"info_floor": -1.0}, {"info_floor": 0.001}, {"free_bits": -0.5}])
def test_bad_thresholds_are_refused(bad):
    model, guide = _channel(torch.ones(1), torch.ones(1))
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        diagnose(model, guide, _data(50, 1), **bad)


def test_a_saturated_mi_is_said_to_be_a_lower_bound_and_reads_back(tmp_path):
    """I_q far above log N: the report says the estimate is only a lower bound."""
    gain = torch.full((6,), 30.0)
    model, guide = _channel(gain, torch.full((6,), 0.1))
    report = diagnose(model, guide, _data(64, 6), estimators=("kl", "au", "mi"))
    s = report["z"]
    assert s.mi_saturated and s.mi <= s.mi_log_n + 1e-5  # float32 rounding
    assert s.mi_ci[0] <= s.mi <= s.mi_ci[1]
    note = next(n for n in s.notes() if "log N" in n)
    assert "lower bound" in note and f">= {s.mi:.3f} only" in note
    path = tmp_path / "r.json"
    report.to_json(str(path))
    back = CollapseReport.from_json(str(path))["z"]
    assert back.mi_saturated and back.mi_ci[1] >= back.mi_ci[0]
    assert back.mi_points_needed == s.mi_points_needed or (
        back.mi_points_needed is None and not math.isfinite(s.mi_points_needed)
    )
