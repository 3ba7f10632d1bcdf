"""SiteReport.notes(): the warnings printed next to a site's numbers, and the JSON round
trip of the fields they read."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyrocollapse.report import SENSITIVITY_FLOOR, SiteReport


def _site(**kw) -> SiteReport:
    d = 3
    base = dict(
        site="z",
        kl_per_dim=np.array([1.0, 0.0, 0.0]),
        kl_estimator="analytic",
        kl_fraction_below=np.zeros(d),
        au_variance=np.array([0.5, 0.0, 0.0]),
        au_threshold=0.01,
        mi=0.9,
        mi_per_dim=np.array([0.9, 0.0, 0.0]),
        aggregate_kl=0.1,
        aggregate_kl_per_dim=np.array([0.1, 0.0, 0.0]),
        status=["active", "collapsed", "collapsed"],
    )
    base.update(kw)
    return SiteReport(**base)


def test_a_consistent_site_has_no_notes():
    assert _site().notes() == []


def test_negative_marginal_kl_is_explained_as_noise_with_its_standard_error():
    site = _site(mi=1.03, aggregate_kl=-0.03, aggregate_kl_stderr=0.02)
    (note,) = site.notes()
    assert "-0.030 ± 0.020" in note and "Monte Carlo noise" in note
    # a conditional prior's "marginal KL" may be genuinely negative: no such note
    conditional = _site(mi=1.03, aggregate_kl=-0.03, conditional_prior=True)
    assert not any("below 0" in n for n in conditional.notes())


def test_aggregate_kl_stderr_survives_the_json_round_trip():
    site = _site(aggregate_kl_stderr=0.0125)
    back = SiteReport.from_dict(site.to_dict())
    assert back.aggregate_kl_stderr == pytest.approx(0.0125)
    assert SiteReport.from_dict(_site().to_dict()).aggregate_kl_stderr is None


@pytest.mark.parametrize(
    ("sensitivity", "lagging"),
    [
        # the decoder reacts to collapsed dim 1 as much as to the active dim: lagging encoder
        (np.array([2.0, 1.5, 0.0]), True),
        # same proportions, but every sensitivity is below the floor: the decoder ignores z
        (np.array([2.0, 1.5, 0.0]) * SENSITIVITY_FLOOR / 10, False),
        # the decoder ignores the collapsed dims
        (np.array([2.0, 1e-4, 0.0]), False),
        # a fully collapsed model: every dimension barely moves the decoder (issue 17)
        (np.array([0.045, 0.03, 0.035]), False),
        # a quarter of a small largest sensitivity, but below the absolute floor
        (np.array([2.0, 0.8, 0.0]) * SENSITIVITY_FLOOR, False),
    ],
)
def test_lagging_inference_network_note_needs_a_sensitive_decoder(sensitivity, lagging):
    notes = _site(sensitivity=sensitivity).notes()
    found = [n for n in notes if "lagging inference network" in n]
    assert bool(found) is lagging
    if lagging:
        assert "dims [1]" in found[0]


def test_unused_information_note_names_the_active_dimension_the_decoder_ignores():
    site = _site(
        status=["active", "active", "collapsed"],
        au_variance=np.array([0.5, 0.4, 0.0]),
        sensitivity=np.array([3.0, 1e-5, 0.0]),
    )
    (note,) = site.notes()
    assert "dims [1]" in note and "decoder ignores" in note
    assert math.isclose(site.kl_identity_gap, 0.0, abs_tol=1e-12)
