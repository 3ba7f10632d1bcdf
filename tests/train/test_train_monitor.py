"""``fit``'s per-epoch monitor: one pass over the monitoring subset, the numbers of the
public estimators, and every gallery program under the default settings."""

import math

import numpy as np
import pyro
import pytest
import torch
from gallery import PROGRAMS, build

import pyrocollapse.train.fitting as train_module  # fit looks _monitor up there
from pyrocollapse.diagnostics import active_units, mutual_information
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.program_data import as_program_data
from pyrocollapse.train import _monitor, fit

#: Sites the default monitor records for each gallery program (PlainELBO): continuous
#: local sites get active units and MI, discrete ones MI only; global sites, point
#: masses (lda's Delta guide) and sites without an enumerable support (poisson's count)
#: are skipped.
DMM_SITES = tuple(f"z_{t}" for t in range(1, 7))
EXPECTED = {
    ("vae", ()): (("z",), ()),
    ("m2", ()): (("z",), ()),  # the ELBO reports z per dimension: that is the default
    ("dmm", ()): (DMM_SITES, ()),
    ("prodlda", ()): (("logtheta",), ()),
    ("cvae", ()): (("z",), ()),
    ("hier_autonormal", ()): ((), ()),
    ("hier_autodiagnormal", ()): ((), ()),
    ("eight_schools", ()): (("theta_tilde",), ()),
    ("lda", ()): ((), ()),
    ("mixture", ()): ((), ("assignment",)),
    ("mixture_enum", ()): ((), ()),
    ("poisson", ()): ((), ()),
    ("zoo_mlp", ()): (("z",), ()),
    ("dmm", (("iaf", True),)): (DMM_SITES, ()),
    ("vae", (("subsample_size", 8),)): (("z",), ()),
    ("eight_schools", (("guide", "auto"),)): (("theta_tilde",), ()),
}
assert {name for name, _ in EXPECTED} == set(PROGRAMS)


def fit_gallery(program, **options):
    args = dict(
        loss=PlainELBO(max_plate_nesting=program.max_plate_nesting),
        epochs=1,
        batch_size=program.num_data,
        progress=False,
        seed=0,
    )
    args.update(options)
    return fit(program.model, program.guide, program.train_data, **args)


@pytest.mark.parametrize(("name", "options"), list(EXPECTED), ids=lambda v: str(v))
def test_default_monitor_runs_on_every_gallery_program(name, options):
    program = build(name, **dict(options))
    values = fit_gallery(program)[0].values
    continuous, discrete = EXPECTED[name, options]
    monitored = {k for k in values if k.startswith(("mi/", "active_units/"))}
    expected = {f"{c}/{s}" for s in continuous for c in ("active_units", "mi")}
    expected |= {f"mi/{s}" for s in discrete}
    assert monitored == expected
    for key in monitored:
        assert math.isfinite(values[key]), key
        assert values[key] >= 0 or key.startswith("mi/")  # MC noise can make MI < 0


def test_monitor_traces_the_programs_once_per_epoch(monkeypatch):
    # a 6-site deep Markov model: the former monitor traced guide and model twice per
    # site (active_units, mutual_information), 12 passes per epoch
    dmm = build("dmm")
    calls = {"model": 0, "guide": 0}

    def model(*args):
        calls["model"] += 1
        return dmm.model(*args)

    def guide(*args):
        calls["guide"] += 1
        return dmm.guide(*args)

    during = []
    real = train_module._monitor

    def counted(*args, **kwargs):
        before = dict(calls)
        out = real(*args, **kwargs)
        during.append({k: calls[k] - before[k] for k in calls})
        return out

    monkeypatch.setattr(train_module, "_monitor", counted)
    hist = fit(
        model,
        guide,
        dmm.train_data,
        loss=PlainELBO(max_plate_nesting=1),
        epochs=3,
        batch_size=4,
        progress=False,
        seed=0,
    )
    assert during == [{"model": 1, "guide": 1}] * 3
    for record in hist:
        for site in DMM_SITES:
            assert f"active_units/{site}" in record.values
            assert f"mi/{site}" in record.values


def test_monitor_chunks_large_subsets():
    # more points than a chunk: one pass still, in chunks of batch_size points
    dmm = build("dmm")
    x = as_program_data(dmm.train_data)
    calls = []

    def model(*args):
        calls.append(args[0].shape[0])
        return dmm.model(*args)

    out = _monitor(model, dmm.guide, x, "default", [], batch_size=3)
    assert calls == [3, 3, 2]
    assert set(out) == {f"{c}/{s}" for s in DMM_SITES for c in ("active_units", "mi")}


def _direct(model, guide, x, site, seed):
    pyro.set_rng_seed(seed)
    au = active_units(model, guide, x, site=site, batch_size=x.n)
    pyro.set_rng_seed(seed)
    mi = mutual_information(model, guide, x, site=site, num_samples=1, batch_size=x.n)
    return float(au.active.sum()), mi.total


#: The monitor's MI is mutual_information's total from the same draws, computed in
#: float64 (mutual_information's block pass runs in float32): they agree to float32
#: rounding, far below the estimate's Monte Carlo error (~1e-2 nats here).
SAME_DRAWS = 1e-5


def test_monitor_equals_the_estimators_on_one_site():
    # same subset, same seed: the monitor's one pass draws what active_units and
    # mutual_information draw (the guide's trace, then z ~ q), so the values are equal
    # (MI up to float32 rounding) and the RNG ends in the same state
    program = build("vae")
    x = as_program_data(program.train_data)
    pyro.set_rng_seed(7)
    out = _monitor(program.model, program.guide, x, ["z"], [], batch_size=x.n)
    after_monitor = torch.rand(4)
    pyro.set_rng_seed(7)
    au = active_units(program.model, program.guide, x, site="z", batch_size=x.n)
    pyro.set_rng_seed(7)
    # per_dim_draws as the monitor's: the same draw of the subset for the per-dimension MI
    mi = mutual_information(
        program.model, program.guide, x, site="z", batch_size=x.n, per_dim_draws=2
    )
    assert torch.equal(torch.rand(4), after_monitor)
    assert set(out) == {"active_units/z", "mi/z"}
    assert out["active_units/z"] == float(au.active.sum())
    assert out["mi/z"] == pytest.approx(mi.total, abs=SAME_DRAWS)


def test_monitor_equals_the_estimators_on_a_markov_chain():
    # the 6-site DMM: active units are exact (the posterior means at the same draw of
    # the chain); the MI of the first site too, and of the others, drawn after the first
    # sites' MI draws, within Monte Carlo error of the estimator
    program = build("dmm")
    x = as_program_data(program.train_data)
    pyro.set_rng_seed(7)
    out = _monitor(program.model, program.guide, x, list(DMM_SITES), [], batch_size=x.n)
    for i, site in enumerate(DMM_SITES):
        au, mi = _direct(program.model, program.guide, x, site, 7)
        assert out[f"active_units/{site}"] == au, site
        if i == 0:
            assert out[f"mi/{site}"] == pytest.approx(mi, abs=SAME_DRAWS)
            continue
        others = []
        for seed in range(8, 28):
            pyro.set_rng_seed(seed)
            others.append(
                mutual_information(
                    program.model, program.guide, x, site=site, num_samples=1, batch_size=x.n
                ).total
            )
        spread = np.std([*others, mi])
        assert abs(out[f"mi/{site}"] - np.mean([*others, mi])) <= 5 * spread + 1e-9, site


def test_fit_records_the_estimators_of_its_monitoring_subset():
    # end to end: fit's subset (the first draw of its generator) and trained parameters;
    # active units exact, MI within Monte Carlo error (the RNG state at the end of the
    # epoch is fit's)
    program = build("vae")
    hist = fit_gallery(program, epochs=2, monitor_size=24)
    idx = torch.randperm(program.num_data, generator=torch.Generator().manual_seed(0))[:24]
    x = as_program_data(program.train_data).take(idx)
    au, _ = _direct(program.model, program.guide, x, "z", 0)
    assert hist[-1].values["active_units/z"] == au
    draws = []
    for seed in range(20):
        pyro.set_rng_seed(seed)
        draws.append(
            mutual_information(program.model, program.guide, x, site="z", batch_size=24).total
        )
    assert abs(hist[-1].values["mi/z"] - np.mean(draws)) <= 5 * np.std(draws) + 1e-9


def test_named_sites_discrete_mi_only_and_reasons_raised():
    m2 = build("m2")
    values = fit_gallery(m2, monitor=["y", "z"])[0].values
    assert {k for k in values if "/" in k and k.split("/")[0] in ("mi", "active_units")} >= {
        "mi/y",
        "mi/z",
        "active_units/z",
    }
    assert "active_units/y" not in values
    assert 0.0 <= values["mi/y"] <= math.log(10) + 1e-9
    with pytest.raises(ValueError, match="'k'"):
        fit_gallery(build("poisson"), monitor=["k"])
    with pytest.raises(ValueError, match="global"):
        fit_gallery(build("eight_schools"), monitor=["mu"])


def test_aggressive_mode_without_monitor_measures_mi_only():
    program = build("vae")
    hist = fit_gallery(program, monitor=None, aggressive=True, aggressive_max_inner=2, epochs=2)
    assert {k for k in hist[0].values if "/" in k and k.startswith(("mi/", "active_"))} == {"mi/z"}
