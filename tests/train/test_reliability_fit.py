"""Reliability of training and the data path (issue #16): resume equals an uninterrupted
run for every objective, checkpoints are checksummed and refused clearly when damaged,
and data of any floating dtype (or NumPy) reaches every entry point in the model's dtype.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrocollapse import diagnose, fit, to_inference_data
from pyrocollapse.diagnostics import iw_log_likelihood, kl_per_dimension, mutual_information
from pyrocollapse.elbo import (
    ELBOS,
    IWAEELBO,
    AnnealedELBO,
    BetaELBO,
    BetaTCELBO,
    FreeBitsELBO,
    InfoVAEELBO,
    MIRegularizedELBO,
    PlainELBO,
)
from pyrocollapse.factorvae import FactorVAEELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear
from pyrocollapse.train import CHECKPOINT_NAME, _read_checkpoint

# --------------------------------------------------------------------------------------
# Resume equals the uninterrupted run, for every registered objective
# --------------------------------------------------------------------------------------
#: One instance per registered objective, with options that make its extra terms count.
OBJECTIVES = {
    "elbo": lambda: PlainELBO(),
    "annealed": lambda: AnnealedELBO(Linear(4)),
    "beta": lambda: BetaELBO(2.0),
    "freebits": lambda: FreeBitsELBO(0.3),
    "mi": lambda: MIRegularizedELBO(alpha=1.0),
    "infovae": lambda: InfoVAEELBO(alpha=0.0, lambda_=10.0),
    "iwae": lambda: IWAEELBO(3),
    "betatc": lambda: BetaTCELBO(beta=4.0),
    # its discriminators and their optimisers travel in the objective's state_dict
    "factorvae": lambda: FactorVAEELBO(gamma=2.0, hidden=(8,)),
}
#: Wall-clock columns: the only ones that may differ between two runs.
TIME_COLUMNS = {"time", "epoch_time"}


def test_every_registered_objective_has_a_resume_case():
    assert sorted(OBJECTIVES) == sorted(ELBOS.names())


def _vae() -> MLPVAE:
    pyro.set_rng_seed(11)  # the same initial parameters for every run
    return MLPVAE(16, 2, hidden=(8,))


def _run(data, name, epochs, folder, **options):
    vae = _vae()
    hist = fit(
        vae.model,
        vae.guide,
        data,
        loss=OBJECTIVES[name](),
        epochs=epochs,
        batch_size=16,
        seed=3,
        progress=False,
        monitor_size=16,
        checkpoint_dir=folder,
        **options,
    )
    return hist, vae


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_resume_repeats_the_uninterrupted_run_bit_for_bit(tmp_path, digits, name):
    data = digits[:48, :16]
    hist_a, vae_a = _run(data, name, 3, tmp_path / "a")
    pyro.clear_param_store()
    _run(data, name, 1, tmp_path / "b")  # interrupted after one epoch
    pyro.clear_param_store()
    hist_b, vae_b = _run(data, name, 3, tmp_path / "b", resume=True)

    df_a, df_b = hist_a.to_dataframe(), hist_b.to_dataframe()
    assert list(df_a.columns) == list(df_b.columns)
    assert any(c.startswith("mi/") for c in df_a.columns)  # the monitor ran too
    for col in df_a.columns:
        if col not in TIME_COLUMNS:
            assert np.array_equal(df_a[col].to_numpy(), df_b[col].to_numpy()), col
    assert (hist_a.kl_matrix("z") == hist_b.kl_matrix("z")).all()
    pa, pb = vae_a.state_dict(), vae_b.state_dict()
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_validation_never_changes_the_numbers(digits):
    """Pyro's validation adds checks; the pairwise densities are the same without it."""
    from pyrocollapse.elbo import local_site, log_density_matrix

    vae = _vae()
    terms = PlainELBO().evaluate(vae.model, vae.guide, digits[:32, :16]).terms[0]
    site = local_site(terms.latent["z"], "test")
    for per_dim in (False, True):
        with pyro.validation_enabled(True):
            on = log_density_matrix(site, per_dim=per_dim)
        with pyro.validation_enabled(False):
            off = log_density_matrix(site, per_dim=per_dim)
        assert torch.equal(on, off)


# --------------------------------------------------------------------------------------
# Checkpoints: checksummed, every damage a ValueError naming the file
# --------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, digits):
    _run(digits[:32, :16], "elbo", 1, tmp_path, monitor=None)
    path = tmp_path / CHECKPOINT_NAME
    return path, path.read_bytes()


def _resume(path, digits):
    pyro.clear_param_store()
    return _run(digits[:32, :16], "elbo", 2, path.parent, monitor=None, resume=True)


def test_the_checkpoint_round_trips_with_its_checksum(checkpoint, digits):
    path, good = checkpoint
    assert good.startswith(b"PYROCOLLAPSE-FIT-CHECKPOINT 2\nsha256 ")
    assert _read_checkpoint(path)["epoch"] == 1
    hist, _ = _resume(path, digits)
    assert [r.epoch for r in hist] == [1, 2]


@pytest.mark.parametrize("keep", [0, 10, 40, 0.5, -1])
def test_a_truncated_checkpoint_is_refused(checkpoint, digits, keep):
    path, good = checkpoint
    n = int(len(good) * keep) if isinstance(keep, float) else keep % len(good)
    path.write_bytes(good[:n])
    with pytest.raises(
        ValueError, match=rf"checkpoint '{re.escape(str(path))}'.*(corrupt|truncated|empty)"
    ):
        _resume(path, digits)


@pytest.mark.parametrize("where", [0, 5, 31, 40, 80, 100, 0.25, 0.5, 0.75, -30, -1])
def test_a_flipped_byte_is_refused_never_resumed(checkpoint, digits, where):
    path, good = checkpoint
    i = int(len(good) * where) if isinstance(where, float) else where % len(good)
    bad = bytearray(good)
    bad[i] ^= 0x10
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=rf"checkpoint '{re.escape(str(path))}'") as info:
        _resume(path, digits)
    assert any(w in str(info.value) for w in ("checksum mismatch", "corrupt", "not a fit"))


def _rewrite(path, change):
    """Load the payload, change it, and write it back with a valid checksum."""
    from pyrocollapse.train import _atomic_save

    payload = _read_checkpoint(path)
    change(payload)
    _atomic_save(path, payload)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p.pop("optimizer"), "missing field 'optimizer'"),
        (lambda p: p.pop("history"), "missing field 'history'"),
        (lambda p: p["rng"]["numpy"].pop("keys"), r"missing field 'rng\.numpy\.keys'"),
        (lambda p: p["state"].pop("step"), r"missing field 'state\.step'"),
        (lambda p: p.update(epoch="1"), "field 'epoch' is a str, expected int"),
        (lambda p: p.update(params=None), "field 'params' is a NoneType, expected a list"),
        (lambda p: p["history"].append(p["history"][0]), "at epoch 1 but holds 2 History"),
        (lambda p: p["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)), "cannot be restored"),
    ],
    ids=[
        "optimizer",
        "history",
        "rng.numpy.keys",
        "state.step",
        "epoch-str",
        "params-none",
        "history-length",
        "rng-state-size",
    ],
)
def test_a_payload_with_missing_or_wrong_fields_is_refused(checkpoint, digits, change, match):
    path, _ = checkpoint
    _rewrite(path, change)
    with pytest.raises(ValueError, match=rf"checkpoint '{re.escape(str(path))}'.*{match}"):
        _resume(path, digits)


def test_a_legacy_checkpoint_without_checksum_still_resumes(checkpoint, digits, caplog):
    path, _ = checkpoint
    payload = _read_checkpoint(path)
    payload["format"] = "pyrocollapse.fit/1"
    torch.save(payload, path)  # as pyrocollapse up to 0.1 wrote it
    with caplog.at_level(logging.INFO, logger="pyrocollapse"):
        hist, _ = _resume(path, digits)
    assert [r.epoch for r in hist] == [1, 2]
    assert "without a checksum" in caplog.text
    assert path.read_bytes().startswith(b"PYROCOLLAPSE-FIT-CHECKPOINT 2\n")  # rewritten


# --------------------------------------------------------------------------------------
# Data types: any floating dtype and NumPy, at every entry point
# --------------------------------------------------------------------------------------
class TwoArgModule(nn.Module):
    """A conditional VAE-like program taking ``(xs, ys)``: ``ys`` float labels."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 4)
        self.dec = nn.Linear(3, 4)

    def model(self, xs, ys):
        pyro.module("two_arg", self)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(2), 1.0).to_event(1))
            loc = self.dec(torch.cat([z, ys], -1))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=xs)

    def guide(self, xs, ys):
        pyro.module("two_arg", self)
        h = self.enc(torch.cat([xs, ys], -1))
        with pyro.plate("data", xs.shape[0]):
            pyro.sample(
                "z", dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:]) + 1e-3).to_event(1)
            )


def _programs(kind):
    torch.manual_seed(0)
    if kind == "mlpvae":
        vae = MLPVAE(4, 2, hidden=(8,))
        return vae.model, vae.guide
    m = TwoArgModule()
    return m.model, m.guide


def _data(kind, dtype):
    g = torch.Generator().manual_seed(1)
    xs = torch.rand(12, 4, generator=g, dtype=torch.float64)
    ys = torch.rand(12, 1, generator=g, dtype=torch.float64)

    def cast(t):
        return t.numpy() if dtype == "numpy" else t.to(dtype)

    return cast(xs) if kind == "mlpvae" else (cast(xs), cast(ys))


ENTRY_POINTS = {
    "fit": lambda m, g, x: fit(m, g, x, loss=PlainELBO(), epochs=1, batch_size=6, progress=False),
    "diagnose": lambda m, g, x: diagnose(m, g, x, seed=0),
    "kl_per_dimension": lambda m, g, x: kl_per_dimension(m, g, x),
    "mutual_information": lambda m, g, x: mutual_information(m, g, x),
    "iw_log_likelihood": lambda m, g, x: iw_log_likelihood(m, g, x, num_samples=4),
    "to_inference_data": lambda m, g, x: to_inference_data(m, g, x, 3, seed=0),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, "numpy"],
                         ids=["float64", "float16", "bfloat16", "numpy-float64"])  # fmt: skip
@pytest.mark.parametrize("kind", ["mlpvae", "two-arg"])
def test_every_entry_point_takes_any_floating_dtype(entry, dtype, kind, caplog):
    from pyrocollapse import program_data

    program_data._ANNOUNCED.clear()
    model, guide = _programs(kind)
    with caplog.at_level(logging.INFO, logger="pyrocollapse"):
        out = ENTRY_POINTS[entry](model, guide, _data(kind, dtype))
    assert out is not None
    assert "converted floating data of dtype" in caplog.text and "to float32" in caplog.text
    assert caplog.text.count("converted floating data") <= 2  # once per argument


def test_a_float64_model_gets_float64_data_and_integer_data_stay_integer():
    from pyrocollapse._validation import program_dtype
    from pyrocollapse.program_data import as_program_data

    vae = MLPVAE(4, 2, hidden=(8,)).to(torch.float64)
    assert program_dtype(vae.model, vae.guide) == torch.float64
    data = as_program_data((torch.rand(5, 4), torch.arange(5)), dtype=torch.float64)
    xs, ids = data.parts[0].template.args
    assert xs.dtype == torch.float64 and ids.dtype == torch.int64
    fit(vae.model, vae.guide, np.random.default_rng(0).random((8, 4), dtype=np.float32),
        loss=PlainELBO(), epochs=1, progress=False)  # fmt: skip


def test_values_that_overflow_the_model_dtype_are_refused():
    from pyrocollapse.program_data import as_program_data

    x = torch.full((3, 2), 1e300, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^data holds 6 value\(s\) too large for float32"):
        as_program_data(x, dtype=torch.float32)


@pytest.mark.parametrize(
    "data, exc, match",
    [
        (lambda: torch.tensor(1.0), ValueError, r"^data must have shape \(N, \.\.\.\)"),
        (lambda: torch.rand(4, 4).to_sparse(), TypeError, r"^data is a sparse tensor"),
        (lambda: torch.empty(4, 4, device="meta"), ValueError, r"^data is on the 'meta' device"),
        (lambda: (torch.rand(4, 4).to_sparse(), torch.rand(4, 1)), TypeError,
         r"^data\[0\] is a sparse tensor"),
        (lambda: {"xs": torch.empty(4, 4, device="meta")}, ValueError,
         r"^data\['xs'\] is on the 'meta' device"),
    ],
    ids=["0-d", "sparse", "meta", "sparse-in-tuple", "meta-in-dict"],
)  # fmt: skip
@pytest.mark.parametrize("entry", ["fit", "diagnose", "to_inference_data"])
def test_0d_sparse_and_meta_data_are_refused_clearly(data, exc, match, entry):
    model, guide = _programs("mlpvae")
    with pytest.raises(exc, match=match):
        ENTRY_POINTS[entry](model, guide, data())
