"""Disentanglement metrics (MIG, SAP, DCI, FactorVAE score) on codes with known answers.

Codes equal to the factors score (near) 1, a 45-degree rotation mixing two factors
scores near 0, a duplicated factor has no gap and half its completeness, a pure-noise
dimension gets no weight; closed forms are checked exactly on full factor grids, and
the shapes data is scored with its true factors against random projections.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyrocollapse.data import make_shapes
from pyrocollapse.diagnostics.disentanglement import (
    DatasetFactorSampler,
    FactorSampler,
    GenerativeFactorSampler,
    dci,
    disentanglement,
    factorvae_score,
    mig,
    sap,
)
from pyrocollapse.diagnostics.disentanglement._dci import _dci_from_importance

ROT45 = np.array([[1.0, -1.0], [1.0, 1.0]]) / math.sqrt(2.0)
FAST_DCI = {"n_estimators": 30}


def _grid(*sizes: int, repeat: int = 5) -> np.ndarray:
    """Every combination of ``range(size)`` per factor, each row ``repeat`` times:
    the empirical joint is exactly the product of uniform marginals."""
    mesh = np.meshgrid(*(np.arange(s) for s in sizes), indexing="ij")
    return np.repeat(np.column_stack([m.ravel() for m in mesh]).astype(float), repeat, axis=0)


def _mixed_factors(n: int = 1500, seed: int = 0) -> np.ndarray:
    """A discrete factor with 3 classes and two continuous uniform factors."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(3, size=n), rng.random(n), rng.random(n)])


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------
def test_mig_of_code_equal_to_grid_factors_is_exactly_one():
    f = _grid(3, 4)
    result = mig(f, f, bins=20)
    assert result.discrete == (True, True)
    # I(z_k; v_k) = H(v_k) = log(#classes), and independent grid columns share 0 nats.
    np.testing.assert_allclose(np.diag(result.matrix), [math.log(3), math.log(4)], rtol=1e-12)
    assert result.matrix[0, 1] == 0.0 and result.matrix[1, 0] == 0.0
    np.testing.assert_allclose(result.details["entropy"], [math.log(3), math.log(4)])
    assert result.score == pytest.approx(1.0, abs=1e-12)
    assert result.best_dims == (0, 1)


def test_mig_of_duplicated_grid_factor_is_exactly_zero():
    f = _grid(3, 4)
    result = mig(f[:, [0, 1, 0]], f)
    np.testing.assert_allclose(result.per_factor, [0.0, 1.0], atol=1e-12)
    assert result.score == pytest.approx(0.5, abs=1e-12)


def test_mig_is_invariant_to_affine_rescaling_of_codes():
    # Equal-width bins move with an affine map (a negative scale only reverses them).
    f = _grid(3, 4)
    a = mig(f, f)
    b = mig(np.column_stack([10.0 * f[:, 0] - 3.0, 5.0 - 2.0 * f[:, 1]]), f, bins=4)
    assert b.score == pytest.approx(a.score, abs=1e-12)


def test_sap_matrix_is_squared_correlation_for_continuous_factors():
    rng = np.random.default_rng(3)
    f = rng.random((400, 2))
    codes = np.column_stack([f[:, 0], f[:, 1], rng.standard_normal(400)])
    result = sap(codes, f)
    expected = np.corrcoef(np.column_stack([codes, f]).T)[:3, 3:] ** 2
    np.testing.assert_allclose(result.matrix, expected, rtol=1e-10, atol=1e-14)
    second = np.sort(expected, axis=0)[-2]
    np.testing.assert_allclose(result.per_factor, 1.0 - second, rtol=1e-10)
    assert result.best_dims == (0, 1)


def test_sap_with_one_code_dimension_uses_zero_as_second_best():
    rng = np.random.default_rng(0)
    f = rng.random((200, 1))
    result = sap(2.0 * f + 1.0, f)
    assert result.score == pytest.approx(1.0, abs=1e-12)


def test_sap_discrete_factor_separated_by_its_own_dimension_scores_one():
    f = _grid(3, 4, repeat=20)
    rng = np.random.default_rng(0)
    result = sap(f + 1e-3 * rng.standard_normal(f.shape), f)
    # The matching dimension classifies perfectly: chance-adjusted balanced accuracy 1.
    assert np.diag(result.matrix) == pytest.approx([1.0, 1.0])
    assert result.score > 0.9


def test_dci_from_importance_closed_forms():
    d_k, rho, c_f = _dci_from_importance(np.eye(3))
    np.testing.assert_allclose(d_k, 1.0)
    np.testing.assert_allclose(c_f, 1.0)
    np.testing.assert_allclose(rho, 1.0 / 3.0)
    d_k, rho, c_f = _dci_from_importance(np.ones((2, 2)))
    np.testing.assert_allclose(d_k, 0.0, atol=1e-15)
    np.testing.assert_allclose(c_f, 0.0, atol=1e-15)
    # Factor 0 shared equally by dims 0 and 2 of K = 4: C_0 = 1 - log 2 / log 4 = 1/2;
    # a dimension without importance has weight 0.
    r = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    d_k, rho, c_f = _dci_from_importance(r)
    np.testing.assert_allclose(c_f, [0.5, 1.0])
    np.testing.assert_allclose(rho, [0.25, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(d_k[:3], 1.0)


# --------------------------------------------------------------------------------------
# Known behaviour on synthetic codes
# --------------------------------------------------------------------------------------
def test_code_equal_to_factors_scores_near_one():
    f = _mixed_factors()
    rng = np.random.default_rng(1)
    codes = f + 1e-3 * rng.standard_normal(f.shape)
    result = disentanglement(codes, f, factor_names=("shape", "x", "y"), dci_options=FAST_DCI)
    assert result.discrete == (True, False, False)
    scores = result.scores()
    assert scores["mig"] > 0.9
    assert scores["sap"] > 0.95
    assert scores["dci_disentanglement"] > 0.95
    assert scores["dci_completeness"] > 0.95
    assert scores["dci_informativeness"] > 0.95
    assert scores["factorvae_score"] > 0.95
    assert result.mig.best_dims == result.sap.best_dims == (0, 1, 2)
    assert result.factorvae.dim_to_factor == (0, 1, 2)


@pytest.mark.parametrize("regressor", ["gbt", "lasso"])
def test_rotated_code_scores_low_but_stays_informative(regressor):
    rng = np.random.default_rng(2)
    f = rng.random((1500, 2))
    codes = f @ ROT45.T  # each code dimension mixes both factors equally
    result = disentanglement(codes, f, regressor=regressor, dci_options=FAST_DCI)
    scores = result.scores()
    assert scores["mig"] < 0.1
    assert scores["sap"] < 0.1
    assert scores["dci_disentanglement"] < 0.1
    assert scores["dci_completeness"] < 0.1
    assert scores["dci_informativeness"] > 0.9  # the information is all there, mixed
    # The vote is a coin flip between the two mixed dimensions: about 1/2, far from 1.
    assert 0.35 < scores["factorvae_score"] < 0.75


@pytest.mark.parametrize("regressor", ["gbt", "lasso"])
def test_duplicated_factor_and_noise_dimension(regressor):
    rng = np.random.default_rng(1)
    n = 1500
    f = rng.random((n, 2))
    noise = 0.05 * rng.standard_normal((n, 3))
    codes = np.column_stack([f[:, 0], f[:, 1], f[:, 0], np.zeros(n)]) + np.column_stack(
        [noise, rng.standard_normal(n)]
    )
    result = disentanglement(codes, f, regressor=regressor, dci_options=FAST_DCI)
    # Factor 0 lives in two dimensions: no gap; factor 1 in one.
    assert result.mig.per_factor[0] < 0.05 < 0.3 < result.mig.per_factor[1]
    assert result.sap.per_factor[0] < 0.05 and result.sap.per_factor[1] > 0.9
    # Completeness: 1 - log 2 / log 4 = 1/2 for the factor split over two dims.
    assert result.dci.per_factor_completeness[0] == pytest.approx(0.5, abs=0.05)
    assert result.dci.per_factor_completeness[1] > 0.95
    # The noise dimension is not used, and the used ones each predict one factor.
    assert result.dci.code_weights[3] < 0.01
    assert result.dci.disentanglement > 0.95
    # Fixing factor 0 keeps both copies still; either vote maps to factor 0.
    assert result.factorvae.score > 0.95


def test_constant_code_dimension_is_pruned_by_factorvae():
    f = _mixed_factors(800)
    codes = np.column_stack([f, np.full(len(f), 2.0), 1e-4 * f[:, 1]])
    sampler = DatasetFactorSampler(codes, f)
    plain = factorvae_score(lambda z: z, sampler, n_train_votes=200, n_eval_votes=200)
    assert 3 not in plain.active_dims and plain.global_std[3] == 0.0
    pruned = factorvae_score(
        lambda z: z, sampler, n_train_votes=200, n_eval_votes=200, prune_threshold=0.01
    )
    assert pruned.active_dims == (0, 1, 2)
    assert pruned.score > 0.95


def test_constant_factor_is_left_out_of_mig_and_sap():
    f = _mixed_factors(600)
    f[:, 2] = 0.5
    result = disentanglement(f, f, factorvae=False, dci_options=FAST_DCI)
    assert math.isnan(result.mig.per_factor[2]) and math.isnan(result.sap.per_factor[2])
    assert result.mig.best_dims[2] == -1
    assert result.mig.score > 0.9 and result.sap.score > 0.9
    assert result.factorvae is None and result.scores()["factorvae_score"] is None
    d = json.loads(json.dumps(result.to_dict()))  # NaN is written as null
    assert d["mig"]["per_factor"]["factor_2"] is None


def test_results_are_deterministic_and_accept_tensors():
    f = _mixed_factors(600)
    rng = np.random.default_rng(4)
    codes = f @ rng.standard_normal((3, 3))
    a = disentanglement(codes, f, seed=7, dci_options=FAST_DCI).to_dict()
    b = disentanglement(
        torch.as_tensor(codes, dtype=torch.float64),
        torch.as_tensor(f),
        seed=7,
        dci_options=FAST_DCI,
    ).to_dict()
    assert a == b
    assert json.loads(json.dumps(a)) == a
    assert set(a["scores"]) == {
        "mig",
        "sap",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
        "factorvae_score",
    }


# --------------------------------------------------------------------------------------
# FactorVAE score with samplers
# --------------------------------------------------------------------------------------
def _simulator(mixing: np.ndarray) -> GenerativeFactorSampler:
    def sample_factors(batch: int, rng: np.random.Generator) -> np.ndarray:
        return rng.random((batch, 3))

    def render(factors: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(factors @ mixing.T, dtype=torch.float32)

    return GenerativeFactorSampler(
        sample_factors, render, n_factors=3, factor_names=("a", "b", "c")
    )


def test_factorvae_with_simulator_inverting_encoder_is_perfect():
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((6, 3))  # observations of 6 numbers from 3 factors
    sampler = _simulator(mixing)
    assert isinstance(sampler, FactorSampler)
    unmix = torch.as_tensor(np.linalg.pinv(mixing).T, dtype=torch.float32)
    good = factorvae_score(lambda x: x @ unmix, sampler, n_train_votes=300, n_eval_votes=300)
    assert good.score == 1.0 and good.train_accuracy == 1.0
    assert good.dim_to_factor == (0, 1, 2) and good.factor_names == ("a", "b", "c")
    # Codes that rotate factors 0 and 1 into each other lose those two.
    rot = np.eye(3)
    rot[:2, :2] = ROT45
    mixed = unmix @ torch.as_tensor(rot.T, dtype=torch.float32)
    bad = factorvae_score(lambda x: x @ mixed, sampler, n_train_votes=300, n_eval_votes=300)
    assert bad.score < 0.85
    again = factorvae_score(lambda x: x @ mixed, sampler, n_train_votes=300, n_eval_votes=300)
    assert again.to_dict() == bad.to_dict()


def test_factorvae_on_shapes_images_true_factors_vs_random_projection():
    ds = make_shapes(1500, size=16, seed=0)
    # Oracle encoder: an image's code is the mean factor vector of the rows showing
    # exactly that image (positions are only resolved up to the pixel grid).
    table: dict[bytes, list] = {}
    for row, factors in zip(ds.data.to(torch.uint8).numpy(), ds.factors.numpy()):
        entry = table.setdefault(row.tobytes(), [np.zeros(4), 0])
        entry[0] += factors
        entry[1] += 1

    def oracle(x: torch.Tensor) -> np.ndarray:
        rows = x.to(torch.uint8).numpy()
        return np.stack([table[r.tobytes()][0] / table[r.tobytes()][1] for r in rows])

    weights = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    options = {"n_train_votes": 300, "n_eval_votes": 300, "n_variance": 1500}
    truth = factorvae_score(oracle, ds, **options)  # a Dataset is wrapped in a sampler
    projected = factorvae_score(lambda x: x @ weights, ds, **options)
    assert truth.factor_names == ("shape", "scale", "pos_x", "pos_y")
    assert truth.score > 0.95
    assert projected.score < 0.6


def test_shapes_true_factors_vs_random_projection_all_metrics():
    ds = make_shapes(1500, size=16, seed=0)
    noise = 1e-3 * torch.randn(ds.factors.shape, generator=torch.Generator().manual_seed(1))
    projection = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kwargs = {"factor_names": ds.factor_names, "dci_options": FAST_DCI}
    truth = disentanglement(ds.factors + noise, ds.factors, **kwargs)
    mixed = disentanglement(ds.factors.double() @ projection, ds.factors, **kwargs)
    assert truth.discrete == (True, True, False, False)  # shape and scale are classes
    t, m = truth.scores(), mixed.scores()
    for name in ("mig", "sap", "dci_disentanglement", "dci_completeness"):
        assert t[name] > 0.9, name
        assert m[name] < t[name] - 0.5, name
    # The majority vote is lenient with a partial mixing (a dimension dominated by one
    # factor still wins its votes), so the FactorVAE score drops less.
    assert t["factorvae_score"] > 0.95
    assert m["factorvae_score"] < t["factorvae_score"] - 0.2
    assert truth.to_dict()["mig"]["best_dims"] == {"shape": 0, "scale": 1, "pos_x": 2, "pos_y": 3}


def test_dataset_sampler_holds_the_factor_class_fixed():
    f = _mixed_factors(1000)
    sampler = DatasetFactorSampler(torch.as_tensor(f), f, bins=10)
    rng = np.random.default_rng(0)
    shapes = sampler.sample_fixed(0, 50, rng)
    assert isinstance(shapes, torch.Tensor) and shapes.shape == (50, 3)
    assert len(torch.unique(shapes[:, 0])) == 1
    x = sampler.sample_fixed(1, 50, rng)[:, 1]
    assert float(x.max() - x.min()) <= (f[:, 1].max() - f[:, 1].min()) / 10 + 1e-12


# --------------------------------------------------------------------------------------
# Invalid input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codes", "factors", "error", "match"),
    [
        (np.zeros(10), np.zeros((10, 1)), ValueError, "codes must have shape"),
        (np.zeros((10, 2)), np.zeros((9, 1)), ValueError, "same number of rows"),
        (np.full((10, 2), np.nan), np.zeros((10, 1)), ValueError, "codes contains NaN"),
        (torch.zeros(10, 2, dtype=torch.bool), np.zeros((10, 1)), TypeError, "codes must hold"),
        ("abc", np.zeros((10, 1)), TypeError, "codes must be"),
        (np.zeros((10, 2)), np.array([["a"]] * 10), TypeError, "factors must hold"),
        (np.zeros((1, 2)), np.zeros((1, 1)), ValueError, "at least"),
    ],
)
def test_bad_arrays_are_rejected(codes, factors, error, match):
    with pytest.raises(error, match=match):
        mig(codes, factors)


def test_bad_options_are_rejected():
    f = _mixed_factors(100)
    with pytest.raises(ValueError, match="regressor must be one of 'gbt', 'lasso'"):
        dci(f, f, regressor="forest")
    with pytest.raises(ValueError, match="bins must be >= 2"):
        mig(f, f, bins=1)
    with pytest.raises(ValueError, match="test_fraction"):
        sap(f, f, test_fraction=1.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dci(f, f, regressor="lasso", alpha=0.0)
    with pytest.raises(ValueError, match="discrete_factors holds the column 5"):
        mig(f, f, discrete_factors=[5])
    with pytest.raises(ValueError, match="discrete_factors as a mask must have F=3"):
        mig(f, f, discrete_factors=[True, False])
    with pytest.raises(TypeError, match="discrete_factors"):
        mig(f, f, discrete_factors="shape")
    with pytest.raises(ValueError, match="factor_names has 2 names"):
        sap(f, f, factor_names=("a", "b"))
    with pytest.raises(ValueError, match="every factor column is constant"):
        mig(f, np.ones((100, 2)))
    with pytest.raises(TypeError, match="factorvae must be a bool"):
        disentanglement(f, f, factorvae=1)
    with pytest.raises(TypeError, match="dci_options must be a mapping"):
        disentanglement(f, f, dci_options=[1])


def test_bad_factorvae_arguments_are_rejected():
    f = _mixed_factors(100)
    sampler = DatasetFactorSampler(f, f)
    with pytest.raises(TypeError, match="encode must be callable"):
        factorvae_score(None, sampler)
    with pytest.raises(TypeError, match="sampler must be a FactorSampler"):
        factorvae_score(lambda x: x, f)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        factorvae_score(lambda x: x, sampler, batch_size=1)
    with pytest.raises(ValueError, match="prune_threshold must be in"):
        factorvae_score(lambda x: x, sampler, prune_threshold=1.0)
    with pytest.raises(TypeError, match="got a tuple"):
        factorvae_score(lambda x: (x, x), sampler)
    with pytest.raises(ValueError, match="encode returned codes of shape"):
        factorvae_score(lambda x: x[:1] if len(x) < 100 else x, sampler, n_variance=100)
    no_factors = SimpleNamespace(name="digits-like", data=torch.zeros(5, 2), factors=None)
    with pytest.raises(ValueError, match="has no known factors"):
        DatasetFactorSampler.from_dataset(no_factors)
    with pytest.raises(TypeError, match="observations must be"):
        DatasetFactorSampler([1, 2, 3], np.zeros((3, 1)))
    bad = GenerativeFactorSampler(lambda b, rng: rng.random((b, 2)), lambda v: v, n_factors=3)
    with pytest.raises(ValueError, match=r"must return shape \(1000, 3\)"):
        factorvae_score(lambda x: x, bad)


def test_discrete_factors_as_indices_equal_the_mask():
    f = _mixed_factors(300)
    by_index = mig(f, f, discrete_factors=[0])
    by_mask = mig(f, f, discrete_factors=[True, False, False])
    assert by_index.discrete == by_mask.discrete == (True, False, False)
    assert by_index.to_dict() == by_mask.to_dict()
    as_continuous = mig(f, f, discrete_factors=[])
    assert as_continuous.discrete == (False, False, False)


def test_importing_the_module_loads_neither_sklearn_nor_plotting():
    code = (
        "import sys, pyrocollapse.diagnostics.disentanglement; "
        "print(any(m.split('.')[0] in ('sklearn', 'matplotlib') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
