"""Diagnostics on Pyro programs written like Pyro's examples (issue 15).

Gallery x ``diagnose``: every latent site is diagnosed or listed with its reason; a
collapsed posterior (the guide equal to the prior, conditional priors included) reads
"full collapse"; a trained model with a small latent does not. Closed forms: masked
Gaussian mutual information, a conditional Gaussian chain, exact categorical MI,
posterior contraction of a global site, and the marginals of a transformed guide.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from gallery import CASES, GalleryProgram, build, case_id
from pyro import poutine

from pyrocollapse import diagnose, fit
from pyrocollapse.diagnostics import (
    active_units,
    kl_per_dimension,
    mutual_information,
)
from pyrocollapse.elbo import PlainELBO

_case_id = case_id


def prior_guide(model):
    """The guide equal to the prior: the model with its observed sites hidden, so
    q(z | x, parents) = p(z | parents) at every site (a fully collapsed posterior)."""

    def guide(*args, **kwargs):
        return poutine.block(model, hide_fn=lambda msg: msg["is_observed"])(*args, **kwargs)

    return guide


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_latent_site_is_diagnosed_or_listed_with_a_reason(case):
    name, options = case
    program = build(name, **options)
    report = diagnose(program.model, program.guide, program.train_data, num_samples=2)
    listed = set(report.sites) | set(report.global_sites) | set(report.skipped)
    for site in program.local_latents:
        assert site in report.sites or site in report.skipped, site
    for site in program.global_latents:
        assert site in report.global_sites or site in report.skipped, site
    assert set(program.local_latents) | set(program.global_latents) <= listed | set(
        program.enumerated
    )
    for reason in report.skipped.values():
        assert len(reason) > 20  # a sentence, not a bare error
    text = str(report)
    for site in report.global_sites:
        assert f"global site {site!r}" in text


def _with_local_latents() -> list[tuple[str, dict[str, Any]]]:
    return [c for c in CASES if build(c[0], **c[1]).local_latents]


@pytest.mark.parametrize("case", _with_local_latents(), ids=_case_id)
def test_a_guide_equal_to_the_prior_reads_full_collapse(case):
    """Conditional priors included: a deep Markov model whose q(z_t | z_{t-1}, x) is
    p(z_t | z_{t-1}) used to read "active, healthy" from the spread of z_{t-1}."""
    name, options = case
    program = build(name, control=True, **options)
    report = diagnose(program.model, prior_guide(program.model), program.train_data)
    if not report.sites:
        pytest.skip(f"no local site of {name} is diagnosable: {report.skipped}")
    assert report.verdict == "full collapse", {k: v.status for k, v in report.sites.items()}
    for s in report.sites.values():
        assert s.mi == pytest.approx(0.0, abs=1e-4)
        assert s.kl == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("name", ["vae", "m2", "dmm", "prodlda", "cvae", "zoo_mlp"])
def test_a_trained_model_with_a_small_latent_is_not_fully_collapsed(name):
    program = build(name)
    fit(
        program.model,
        program.guide,
        program.train_data,
        loss=PlainELBO(max_plate_nesting=program.max_plate_nesting),
        optim=pyro.optim.Adam({"lr": 2e-2}),
        epochs=150,
        batch_size=program.num_data,
        progress=False,
        seed=0,
        monitor=None,
    )
    report = diagnose(program.model, program.guide, program.train_data)
    assert report.verdict in ("healthy", "partial collapse", "near collapse")


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------
def _gaussian_programs(a: float, s: float, mask: torch.Tensor | None = None):
    """x ~ N(0, 1), q(z | x) = N(a x, s^2), p(z) = N(0, 1); masked rows get a wildly
    different q that must not count: I_q(x; z) = 0.5 log(1 + a^2 / s^2)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=mask if mask is not None else True):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)
            return z

    def guide(x):
        loc = a * x
        if mask is not None:
            loc = torch.where(mask.unsqueeze(-1)[: x.shape[0]], loc, 100.0 + 50 * x)
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=mask if mask is not None else True):
                pyro.sample("z", dist.Normal(loc, s).to_event(1))

    return model, guide


def test_masked_rows_take_no_part_in_mutual_information_and_activity():
    n = 2000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(n) % 2 == 0
    model, guide = _gaussian_programs(1.0, 0.5, mask)
    expected = 0.5 * math.log(1 + 1.0 / 0.25)
    mi = mutual_information(model, guide, x, site="z", num_samples=2, batch_size=n)
    assert mi.total == pytest.approx(expected, abs=0.06)
    au = active_units(model, guide, x, site="z", batch_size=n)
    assert au.variance[0] == pytest.approx(float(x[mask].var(unbiased=False)), rel=1e-4)
    kl = kl_per_dimension(model, guide, x, site="z", batch_size=n)
    closed = 0.5 * (0.25 + x[mask].square() - 1 - math.log(0.25))
    assert kl.per_point.shape == (n // 2, 1)
    np.testing.assert_allclose(kl.per_dim, closed.mean(0).numpy(), rtol=1e-5)


def test_masked_distributions_are_respected_like_poutine_mask():
    n = 400
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(1))
    mask = torch.arange(n) < 300

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1).mask(mask))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x):
        loc = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 0.5).to_event(1).mask(mask))

    report = diagnose(model, guide, x, batch_size=128)
    assert report["z"].mi == pytest.approx(0.5 * math.log(1 + 1 / 0.25), abs=0.1)
    closed = 0.5 * (0.25 + x[mask].square() - 1 - math.log(0.25)).mean()
    assert report["z"].kl == pytest.approx(float(closed), rel=1e-4)


def _chain_programs(c: float, sigma: float):
    """z1 ~ N(0, 1), z2 | z1 ~ N(z1, 0.5^2); q(z1 | x) = N(x, 0.1^2) and
    q(z2 | z1, x) = N(z1 + c x, sigma^2). In the prior's standardised coordinates
    u = (z2 - z1) / 0.5, q(u | x) = N(2 c x, (sigma / 0.5)^2): I(x; u) =
    0.5 log(1 + (2c)^2 / (2 sigma)^2) for x ~ N(0, 1); 0 when c = 0 and sigma = 0.5."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("z2", dist.Normal(z1, 0.5).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x, 0.1).to_event(1))
            pyro.sample("z2", dist.Normal(z1 + c * x, sigma).to_event(1))

    return model, guide


def test_a_markov_chain_site_is_measured_given_its_parent():
    x = torch.randn(1500, 1, generator=torch.Generator().manual_seed(2))
    model, guide = _chain_programs(0.0, 0.5)  # q(z2 | z1, x) = p(z2 | z1)
    report = diagnose(model, guide, x)
    assert report["z1"].status == ["active"]
    assert report["z2"].status == ["collapsed"] and report["z2"].innovation
    assert report["z2"].mi == pytest.approx(0.0, abs=1e-5)
    assert float(report["z2"].au_variance[0]) == pytest.approx(0.0, abs=1e-10)
    model, guide = _chain_programs(0.5, 0.25)
    expected = 0.5 * math.log(1 + 1.0 / 0.25)
    report = diagnose(model, guide, x, num_samples=2)
    assert report["z2"].mi == pytest.approx(expected, abs=0.08)
    assert report["z2"].status == ["active"]
    assert "standardised coordinates" in report.to_dict()["rule"]


def test_discrete_local_site_gets_exact_kl_and_mutual_information():
    program = build("m2")
    xs = program.args[0]
    report = diagnose(program.model, program.guide, program.train_data)
    site = report["y"]
    assert site.kind == "discrete" and site.latent_dim == 1
    m2 = program.modules[0]
    with torch.no_grad():
        m2.eval()
        probs = torch.softmax(m2.encoder_y(xs), -1).double()
    mean = probs.mean(0)
    entropy = -(probs * probs.log()).sum(1)
    mi = float(-(mean * mean.log()).sum() - entropy.mean())
    kl = float((probs * (probs.log() + math.log(3))).sum(1).mean())
    assert site.mi == pytest.approx(mi, rel=1e-5, abs=1e-7)
    assert site.kl == pytest.approx(kl, rel=1e-5)
    assert site.kl == pytest.approx(site.mi + site.aggregate_kl, abs=1e-6)


def test_global_sites_report_posterior_contraction():
    """mu's guide has sd 0.1 against the prior's 5 (contraction 1 - 0.0004); tau's guide
    is its prior (contraction 0 within Monte Carlo error)."""
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def model(sigma, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    def guide(sigma, y):
        pyro.sample("mu", dist.Normal(4.0, 0.1))
        pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            pyro.sample("theta", dist.Normal(y / 2, 1.0))

    report = diagnose(model, guide, (sigma, y))
    mu, tau = report.global_sites["mu"], report.global_sites["tau"]
    assert mu.contraction[0] == pytest.approx(1 - 0.1**2 / 25, abs=0.02)
    assert not mu.uninformed[0]
    assert abs(tau.contraction[0]) < 0.5  # heavy tails: a loose Monte Carlo bound
    assert report.to_dict()["global_sites"]["mu"]["contraction"][0] > 0.9
    restored = type(report).from_dict(report.to_dict())
    assert restored.global_sites["mu"].contraction[0] == pytest.approx(mu.contraction[0])


def test_point_mass_guides_are_refused_clearly_and_listed_by_diagnose():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(x.expand(-1, 2)).to_event(1))

    x = torch.randn(30, 1)
    with pytest.raises(ValueError, match=r"latent site 'z' has a point-mass guide \(Delta\)"):
        mutual_information(model, guide, x)
    report = diagnose(model, guide, x)
    assert "point-mass" in report.skipped["z"] and report.verdict == "no local latent sites"


def test_a_program_without_observed_sites_is_refused():
    program = build("cvae")
    xs, _ = program.train_data
    with pytest.raises(ValueError, match="the model has no observed site on these arguments"):
        diagnose(program.model, program.guide, {"xs": xs, "ys": None})


def test_diagnostics_run_in_eval_mode_and_change_no_buffer():
    program = build("prodlda")
    fit(
        program.model,
        program.guide,
        program.train_data,
        loss=PlainELBO(),
        epochs=3,
        batch_size=program.num_data,
        progress=False,
        seed=0,
        monitor=None,
    )
    module = program.modules[0]
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = [m.training for m in module.modules()]
    report = diagnose(program.model, program.guide, program.train_data)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in module.modules()] == flags
    module.eval()
    again = diagnose(program.model, program.guide, program.train_data)
    assert report.to_dict() == again.to_dict()


def test_sites_that_appear_in_some_chunks_only_are_all_diagnosed_with_their_counts():
    """Sequences of several lengths: a chunk of short sequences has no z_4."""
    lengths = torch.tensor([2] * 6 + [4] * 6)
    x = torch.randn(12, 4)

    def model(x, lengths):
        t_max = int(lengths.max())
        with pyro.plate("sequences", x.shape[0]):
            z = torch.zeros(x.shape[0], 1)
            for t in pyro.markov(range(1, t_max + 1)):
                with poutine.mask(mask=lengths >= t):
                    z = pyro.sample(f"z_{t}", dist.Normal(0.5 * z, 1.0).to_event(1))
                    pyro.sample(f"x_{t}", dist.Normal(z, 1.0).to_event(1), obs=x[:, t - 1 : t])

    def guide(x, lengths):
        t_max = int(lengths.max())
        with pyro.plate("sequences", x.shape[0]):
            for t in pyro.markov(range(1, t_max + 1)):
                with poutine.mask(mask=lengths >= t):
                    pyro.sample(f"z_{t}", dist.Normal(x[:, t - 1 : t], 0.5).to_event(1))

    report = diagnose(model, guide, (x, lengths), batch_size=6)
    assert list(report.sites) == ["z_1", "z_2", "z_3", "z_4"]
    assert report["z_4"].kl_fraction_below.shape == (1,)
    kl = kl_per_dimension(model, guide, (x, lengths), site="z_4", batch_size=6)
    assert kl.per_point.shape == (6, 1)  # only the long sequences have a z_4


def test_a_transformed_guide_gets_monte_carlo_marginals():
    """q = Affine(0, 2) of N(m, 1): marginals N(2m, 4), whose KL to N(0, 1) is known."""
    m = torch.linspace(-1, 1, 40).unsqueeze(-1).expand(40, 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x):
        base = dist.Normal(m[: x.shape[0]], 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z",
                dist.TransformedDistribution(
                    base, [dist.transforms.AffineTransform(0.0, 2.0, event_dim=1)]
                ),
            )

    x = torch.zeros(40, 1)
    kl = kl_per_dimension(model, guide, x, num_samples=256)
    closed = (0.5 * (4.0 + (2 * m) ** 2 - 1 - math.log(4.0))).mean(0)
    assert "kde" in kl.estimator
    np.testing.assert_allclose(kl.per_dim, closed.numpy(), atol=0.08)


def _not_local(program: GalleryProgram) -> bool:
    return not program.local_latents


def _exact_posterior_guide(x):
    """q(z | x) = p(z | x) = N(x / 2, 1/2) for z ~ N(0, 1), x | z ~ N(z, 1)."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))


def test_programs_that_do_not_broadcast_over_draws_are_run_one_draw_at_a_time():
    """A model that reshapes its batch (z.reshape(N, 1)) cannot run under a vectorised
    plate of draws; the importance-sampling estimators fall back to one run per draw.
    With the exact posterior as guide, the IW log-likelihood is log N(x; 0, 2) exactly."""
    from pyrocollapse.diagnostics import iw_log_likelihood

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            loc = z.reshape(x.shape[0], 1)  # breaks under an extra draw dimension
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    guide = _exact_posterior_guide

    x = torch.randn(20, 1, generator=torch.Generator().manual_seed(3))
    iw = iw_log_likelihood(model, guide, x, num_samples=8)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).squeeze(-1)
    np.testing.assert_allclose(iw.per_point, exact.double().numpy(), rtol=1e-5, atol=1e-5)
    report = diagnose(model, guide, x, estimators=("kl", "au", "mi", "iw", "psis"))
    assert report.elbo["log_likelihood"] == pytest.approx(float(exact.mean()), abs=1e-4)
    assert not report.unavailable


def test_per_point_estimators_on_a_global_site_say_what_applies_instead():
    program = build("eight_schools")
    with pytest.raises(ValueError, match=r"latent site 'mu' lies outside the data plate 'schools'"):
        kl_per_dimension(program.model, program.guide, program.train_data, site="mu")


def test_a_chunk_whose_rows_are_all_masked_at_a_site_is_left_out():
    """Sorted lengths with a fixed T: the first chunk's sequences are all too short for
    z_4, whose rows there are all masked."""
    lengths = torch.tensor([2] * 6 + [4] * 6)
    x = torch.randn(12, 4)

    def model(x, lengths):
        with pyro.plate("sequences", x.shape[0]):
            for t in pyro.markov(range(1, 5)):
                with poutine.mask(mask=lengths >= t):
                    z = pyro.sample(f"z_{t}", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
                    pyro.sample(f"x_{t}", dist.Normal(z, 1.0).to_event(1), obs=x[:, t - 1 : t])

    def guide(x, lengths):
        with pyro.plate("sequences", x.shape[0]):
            for t in pyro.markov(range(1, 5)):
                with poutine.mask(mask=lengths >= t):
                    pyro.sample(f"z_{t}", dist.Normal(x[:, t - 1 : t], 0.5).to_event(1))

    report = diagnose(model, guide, (x, lengths), batch_size=6)
    assert list(report.sites) == ["z_1", "z_2", "z_3", "z_4"]
    mi = mutual_information(model, guide, (x, lengths), site="z_4", batch_size=6)
    assert math.isfinite(mi.total)


def test_a_guide_equal_to_the_posterior_has_no_weight_tail():
    """Issue 17: constant log weights (exact posterior, float32 rounding only) gave
    k-hat = inf for a fifth of the points; they have no tail: -inf, i.e. good."""
    from pyrocollapse.diagnostics import psis_khat

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = _exact_posterior_guide

    x = torch.randn(200, 1, generator=torch.Generator().manual_seed(4))
    khat = psis_khat(model, guide, x, num_samples=100)
    assert not np.isposinf(khat.khat).any()
    assert khat.fraction_above(khat.threshold) == 0.0
    assert khat.threshold == pytest.approx(0.5)  # min(1 - 1/log10(100), 0.7)
    assert khat.summary()["fraction_above_threshold"] == 0.0


def test_a_poor_guide_still_gets_a_large_k_hat():
    from pyrocollapse.diagnostics import psis_khat

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    def guide(x):  # far too narrow and off-centre
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x + 0.3, 0.02).to_event(1))

    x = torch.randn(50, 1, generator=torch.Generator().manual_seed(5))
    khat = psis_khat(model, guide, x, num_samples=200)
    assert np.median(khat.khat) > khat.threshold
