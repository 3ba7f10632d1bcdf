"""Diagnostics on Pyro programs with several arguments (issue 14, item 6): the same
``data`` forms as fit (tuples, dicts, loaders, NumPy), every batched argument chunked
together, and the same numbers as a single-tensor program over the same data."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pyrocollapse import diagnose, to_inference_data
from pyrocollapse.diagnostics import (
    active_units,
    decoder_sensitivity,
    iw_log_likelihood,
    kl_per_dimension,
    latent_site_names,
    latent_traversal,
    mutual_information,
    posterior_densities,
    reconstruction_means,
)

X_DIM, Z_DIM = 3, 2
W = torch.tensor([[0.8, -0.3, 0.0], [0.1, 0.5, 0.0]])  # dim 1 of z ignores the label
C = torch.tensor([1.0, 0.0])
SCALE = torch.tensor([0.6, 0.9])
D = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.3, 0.0]])


def model(xs, ys, scale_obs=1.0):
    """Linear-Gaussian conditional model: p(z) = N(0, I), p(x | z, y) = N(D z + y, s)."""
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(xs.new_zeros(Z_DIM), 1.0).to_event(1))
        loc = z @ D.T + ys[..., None]
        pyro.sample("x", dist.Normal(loc, scale_obs).to_event(1), obs=xs)


def guide(xs, ys, scale_obs=1.0):
    with pyro.plate("data", xs.shape[0]):
        pyro.sample("z", dist.Normal(xs @ W.T + ys[..., None] * C, SCALE).to_event(1))


def wrapped_model(x):
    return model(x[..., :X_DIM], x[..., X_DIM])


def wrapped_guide(x):
    return guide(x[..., :X_DIM], x[..., X_DIM])


def data(n=60):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, X_DIM, generator=g), torch.randn(n, generator=g)


def joined(xs, ys):
    return torch.cat([xs, ys[:, None]], 1)


def forms(xs, ys):
    return {
        "tuple": (xs, ys),
        "list": [xs, ys],
        "dict": {"xs": xs, "ys": ys},
        "tuple+kwarg-constant": (xs, ys, 1.0),
        "numpy": (xs.numpy(), ys.numpy()),
        "loader": DataLoader(TensorDataset(xs, ys), batch_size=16),
        "loader-of-dicts": DataLoader(
            [{"xs": a, "ys": b} for a, b in zip(xs, ys, strict=True)], batch_size=16
        ),
    }


FORMS = list(forms(*data(4)))


def test_kl_per_dimension_matches_the_closed_form_on_tuple_data():
    xs, ys = data()
    res = kl_per_dimension(model, guide, (xs, ys), batch_size=16)
    mu = xs @ W.T + ys[:, None] * C
    closed = 0.5 * (SCALE**2 + mu**2 - 1 - 2 * torch.log(SCALE))
    np.testing.assert_allclose(res.per_dim, closed.mean(0).double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.per_point, closed.double().numpy(), rtol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_each_data_form_gives_the_same_numbers_as_a_single_tensor_program(form):
    xs, ys = data()
    d = forms(xs, ys)[form]
    x = joined(xs, ys)

    def both(fn, **kw):
        pyro.set_rng_seed(3)
        a = fn(model, guide, d, **kw)
        pyro.set_rng_seed(3)
        b = fn(wrapped_model, wrapped_guide, x, **kw)
        return a, b

    a, b = both(kl_per_dimension, batch_size=16)
    np.testing.assert_allclose(a.per_dim, b.per_dim, rtol=1e-6)
    a, b = both(mutual_information, batch_size=16, num_samples=2)
    np.testing.assert_allclose(a.total, b.total, rtol=1e-6)
    np.testing.assert_allclose(a.per_dim, b.per_dim, rtol=1e-6)
    a, b = both(active_units, batch_size=16)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-6)
    a, b = both(iw_log_likelihood, batch_size=16, num_samples=20)
    np.testing.assert_allclose(a.per_point, b.per_point, rtol=1e-5)
    assert latent_site_names(model, guide, d) == ["z"]


def exact_guide(xs, ys, scale_obs=1.0):
    """The exact posterior of :func:`model`: N(S D^T (x - y), S), S = (I + D^T D)^-1."""
    cov = torch.linalg.inv(torch.eye(Z_DIM) + D.T @ D)
    with pyro.plate("data", xs.shape[0]):
        loc = (xs - ys[..., None]) @ D @ cov
        pyro.sample("z", dist.MultivariateNormal(loc, cov))


def test_iw_log_likelihood_with_the_exact_posterior_is_log_p_x_given_y():
    # p(x | y) = N(y, D D^T + I); with q the exact posterior every weight is p(x | y)
    xs, ys = data(30)
    res = iw_log_likelihood(model, exact_guide, (xs, ys), num_samples=5)
    cov = D @ D.T + torch.eye(X_DIM)
    exact = dist.MultivariateNormal(ys[:, None].expand(-1, X_DIM), cov).log_prob(xs)
    np.testing.assert_allclose(res.per_point, exact.double().numpy(), atol=1e-4)
    np.testing.assert_allclose(res.elbo_per_point, exact.double().numpy(), atol=1e-4)


def test_to_inference_data_on_a_tuple_equals_the_wrapper():
    xs, ys = data(20)
    a = to_inference_data(model, guide, (xs, ys), 10, seed=1, prior_samples=50)
    b = to_inference_data(
        wrapped_model, wrapped_guide, joined(xs, ys), 10, seed=1, prior_samples=50
    )
    np.testing.assert_allclose(a.posterior["z"].values, b.posterior["z"].values, rtol=1e-6)
    np.testing.assert_allclose(
        a.log_likelihood["x"].values, b.log_likelihood["x"].values, rtol=1e-6
    )
    np.testing.assert_array_equal(a.observed_data["x"].values, xs.numpy())  # from the trace
    assert a.posterior["z"].shape == (2, 10, 20, Z_DIM)  # two chains by default


def test_diagnose_and_probes_run_on_a_dict():
    xs, ys = data()
    d = {"xs": xs, "ys": ys}
    pyro.set_rng_seed(0)
    rep = diagnose(model, guide, d, estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw"))
    pyro.set_rng_seed(0)
    ref = diagnose(
        wrapped_model,
        wrapped_guide,
        joined(xs, ys),
        estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw"),
    )
    assert rep.num_points == 60
    for key in ("elbo", "reconstruction", "kl", "log_likelihood"):
        np.testing.assert_allclose(rep.elbo[key], ref.elbo[key], rtol=1e-5)
    sens = decoder_sensitivity(model, guide, d, method="finite_difference")
    np.testing.assert_allclose(sens.per_dim, (D**2).sum(0).double().numpy(), rtol=1e-4)
    means = reconstruction_means(model, guide, d)
    mu = xs @ W.T + ys[:, None] * C
    np.testing.assert_allclose(means, (mu @ D.T + ys[:, None]).double().numpy(), rtol=1e-5)
    trav = latent_traversal(model, guide, {"xs": xs[:1], "ys": ys[:1]}, dims=[0])
    assert trav.means.shape == (1, 7, X_DIM)
    dens = posterior_densities(model, guide, (xs, ys), num_points=3)
    assert dens.posterior.shape[:2] == (3, Z_DIM)


def test_diagnose_subsets_every_argument_by_the_same_rows():
    xs, ys = data(50)
    xs = xs.clone()
    xs[:, 2] = ys  # each row carries its second argument

    def check(xs_b, ys_b):
        assert torch.equal(xs_b[..., 2], ys_b.expand_as(xs_b[..., 2]))
        return model(xs_b, ys_b)

    diagnose(check, guide, (xs, ys), max_points=20, batch_size=8)


# --------------------------------------------------------------------------------------
# an M2-like program: labelled and unlabelled blocks
# --------------------------------------------------------------------------------------
def m2_model(xs, ys=None):
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(xs.new_zeros(Z_DIM), 1.0).to_event(1))
        y = pyro.sample("y", dist.Bernoulli(0.5), obs=ys)
        pyro.sample("x", dist.Normal(z @ D.T + y[..., None], 1.0).to_event(1), obs=xs)


def m2_guide(xs, ys=None):
    with pyro.plate("data", xs.shape[0]):
        if ys is None:
            ys = pyro.sample("y", dist.Bernoulli(logits=xs[..., 0]))
        pyro.sample("z", dist.Normal(xs @ W.T + ys[..., None] * C, SCALE).to_event(1))


def test_m2_loader_mixing_labelled_and_unlabelled_batches():
    xs, ys = data(48)
    ys = (ys > 0).float()
    batches = [{"xs": xs[:16], "ys": ys[:16]}, {"xs": xs[16:32]}, {"xs": xs[32:]}]
    rep = kl_per_dimension(m2_model, m2_guide, DataLoader(batches, batch_size=None))
    mu_l = xs[:16] @ W.T + ys[:16, None] * C
    closed = 0.5 * (SCALE**2 + mu_l**2 - 1 - 2 * torch.log(SCALE))
    assert rep.per_point.shape == (48, Z_DIM)
    np.testing.assert_allclose(rep.per_point[:16], closed.double().numpy(), rtol=1e-5)
    mi = mutual_information(m2_model, m2_guide, DataLoader(batches, batch_size=None))
    assert np.isfinite(mi.total)
    assert diagnose(m2_model, m2_guide, DataLoader(batches, batch_size=None)).num_points == 48


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
class TimeMajor:
    def __iter__(self):
        return iter([(torch.zeros(7, 4, 3), torch.ones(4))])


@pytest.mark.parametrize(
    "d, exc, match",
    [
        (
            (torch.zeros(10, 3), torch.zeros(9)),
            ValueError,
            r"data\[0\] has 10, data\[1\] has 9 rows",
        ),
        ({"xs": torch.zeros(10, 3), "ys": torch.zeros(8)}, ValueError, r"data\['xs'\] has 10"),
        ({}, ValueError, "data is an empty dict"),
        (DataLoader(["a", "b"], batch_size=None), TypeError, r"data batch 0 must be a tensor x"),
        (DataLoader([], batch_size=None), ValueError, "yielded no batches"),
        (TimeMajor(), ValueError, "do not share their leading size"),
        (
            (torch.zeros(4, 3), torch.full((4,), float("inf"))),
            ValueError,
            r"data\[1\] contains 4 NaN",
        ),
        ((np.array(["a", "b"]), torch.zeros(2)), TypeError, r"data\[0\] is a NumPy array of dtype"),
    ],
)
def test_bad_program_data_is_refused_clearly(d, exc, match):
    with pytest.raises(exc, match=match):
        kl_per_dimension(model, guide, d)


def test_probe_failure_on_several_arguments_says_what_was_traced():
    xs, ys = data(5)
    with pytest.raises(
        RuntimeError, match=r"(?s)While tracing the model and guide on the first two data points"
    ):
        diagnose(model, guide, (xs[:, :2], ys))
