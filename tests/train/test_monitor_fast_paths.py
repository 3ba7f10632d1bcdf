"""The fast paths behind ``fit``'s monitor and the SequenceVAE's input check: each gives
what the general code gives (values, torch's RNG use, error messages)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrocollapse.diagnostics._mi_totals import (
    _batchable,
    _mi_total,
    _mi_total_draws,
    _mi_total_from_draws,
    _mi_totals,
)
from pyrocollapse.diagnostics._site_draws import SiteDraw, _shared_over_points, _varies_over_points
from pyrocollapse.diagnostics.aggregate import _mi_from_draws
from pyrocollapse.models import SequenceVAE


def _normal_draws(sizes, dim, seed, spread=1.0):
    """Chunks of a site with diagonal-Normal q(z|x) of the given row counts."""
    g = torch.Generator().manual_seed(seed)
    draws = []
    for n in sizes:
        loc = spread * torch.randn(n, dim, generator=g)
        scale = 0.2 + torch.rand(n, dim, generator=g)
        q = dist.Normal(loc, scale).to_event(1)
        p = dist.Normal(torch.zeros(dim), torch.ones(dim)).expand([n, dim]).to_event(1)
        draws.append(SiteDraw(q, p, q.sample()))
    return draws


def test_total_is_mutual_informations_total_and_uses_the_rng_alike():
    draws = _normal_draws([7, 5], 3, 0)
    pyro.set_rng_seed(11)
    full = _mi_from_draws(draws, 2, 2, 0, 0.95, prior_dims=False)
    after_full = torch.rand(3)
    pyro.set_rng_seed(11)
    total = _mi_total_from_draws(draws, 2, 2)
    assert torch.equal(torch.rand(3), after_full)
    assert total == full.total  # same draws, same float32 pass: the same bits


@pytest.mark.parametrize("num_samples", [1, 3])
def test_batched_totals_agree_with_the_blockwise_pass(num_samples):
    # three sites of one dimension and different sizes (padded to the largest), one of
    # another dimension (its own group); one chunk or two per site
    sites = [
        _normal_draws([12], 4, 1),
        _normal_draws([5, 4], 4, 2, spread=3.0),
        _normal_draws([20], 4, 3, spread=0.1),
        _normal_draws([9], 2, 4),
    ]
    pyro.set_rng_seed(0)
    ts = [_mi_total_draws(d, num_samples, 2) for d in sites]
    assert all(_batchable(t) for t in ts)
    batched = _mi_totals(ts)
    for t, value, d in zip(ts, batched, sites):
        exact = _mi_total(t)
        assert value == pytest.approx(exact, abs=1e-5)
        assert value <= math.log(sum(x.z.shape[0] for x in d)) + 1e-9  # InfoNCE <= log N


def test_a_site_without_diagonal_normal_posteriors_is_left_to_the_blockwise_pass():
    n, d = 6, 2
    q = dist.MultivariateNormal(torch.randn(n, d), torch.eye(d).expand(n, d, d))
    p = dist.Normal(torch.zeros(d), torch.ones(d)).expand([n, d]).to_event(1)
    draws = [SiteDraw(q, p, q.sample())]
    normal = _mi_total_draws(_normal_draws([6], 2, 5), 1, 2)
    other = _mi_total_draws(draws, 1, 2)
    assert not _batchable(other)
    out = _mi_totals([other, normal])
    assert out[0] is None and out[1] is not None
    assert math.isfinite(_mi_total(other))


def test_a_prior_shared_by_the_points_is_told_from_its_layout():
    n, d = 5, 3
    shared = dist.Normal(torch.zeros(d), torch.ones(d)).expand([n, d]).to_event(1)
    broadcast = dist.Normal(torch.zeros(1, d), torch.ones(1, d)).to_event(1)
    per_point = dist.Normal(torch.randn(n, d), torch.ones(n, d)).to_event(1)
    equal_rows = dist.Normal(torch.ones(n, d), torch.ones(n, d)).to_event(1)  # not expanded
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.ones(2)), dist.Normal(torch.zeros(2, d), 1.0).to_event(1)
    )
    z = torch.randn(n, d)
    assert _shared_over_points(shared, n) and _shared_over_points(broadcast, n)
    assert not _shared_over_points(per_point, n)
    assert not _shared_over_points(equal_rows, n)  # the layout does not tell: scored
    assert not _shared_over_points(mixture, n)
    # the decision is the one scoring gives
    for p, varies in ((shared, False), (broadcast, False), (per_point, True), (equal_rows, False)):
        assert _varies_over_points(p, z) is varies


VOCAB = 10


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1, 5, 12, 2]], r"outside the vocabulary \[0, 10\): x\[0, 2\] = 12"),
        ([[1, 5, 2, 0], [4, -1, 2, 0]], r"outside the vocabulary \[0, 10\): x\[1, 1\] = -1"),
        ([[1, 5, 2, 0], [5, 6, 2, 0]], r"row 1 starts with id 5"),
        ([[1, 5, 0, 2]], r"x\[0, 2\] is <pad> \(id 0\) before the row's <eos>"),
        ([[1, 5, 1, 2]], r"x\[0, 2\] is a second <bos> \(id 1\) before the row's <eos>"),
        ([[0, 5, 2, 0]], r"row 0 starts with id 0"),
    ],
)
def test_sequence_input_errors_name_the_first_problem(rows, message):
    vae = SequenceVAE(VOCAB, 2, embed=4, hidden=4)
    with pytest.raises(ValueError, match=message):
        vae.check_input(torch.tensor(rows))


def test_sequence_input_accepts_padding_and_tokens_after_eos():
    vae = SequenceVAE(VOCAB, 2, embed=4, hidden=4)
    # after <eos> anything goes (even <bos> or <pad>); a row without <eos> runs to T
    x = torch.tensor([[1, 5, 2, 0, 0], [1, 2, 1, 0, 7], [1, 4, 5, 6, 7]])
    assert vae.check_input(x) is x
    assert vae.valid_positions(x).tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True] * 5,
    ]


def test_monitor_of_a_flow_prior_model_is_the_estimators():
    # the monitor skips the prior's densities (a flow's transforms) and its conditional
    # flag; its values and RNG use are those of the estimators without the flow's
    # per-dimension marginals (which mutual_information estimates from draws of its own,
    # before it draws z)
    from pyrocollapse.diagnostics import active_units
    from pyrocollapse.diagnostics._site_draws import site_draws
    from pyrocollapse.models import MLPVAE
    from pyrocollapse.priors import FlowPrior
    from pyrocollapse.program_data import as_program_data
    from pyrocollapse.train import _monitor

    pyro.set_rng_seed(0)
    vae = MLPVAE(6, 2, FlowPrior(2, "spline_coupling", num_transforms=1), hidden=(8,))
    x = as_program_data(torch.rand(20, 6))
    pyro.set_rng_seed(3)
    out = _monitor(vae.model, vae.guide, x, "default", [], batch_size=20)
    after = torch.rand(3)
    pyro.set_rng_seed(3)
    au = active_units(vae.model, vae.guide, x, batch_size=20)
    pyro.set_rng_seed(3)
    draws = list(site_draws(vae.model, vae.guide, x, "z", 20))
    with torch.no_grad():
        mi = _mi_from_draws(draws, 1, 2, 0, 0.95, prior_dims=False)
    assert torch.equal(torch.rand(3), after)
    assert out["active_units/z"] == float(au.active.sum())
    assert out["mi/z"] == pytest.approx(mi.total, abs=1e-5)
