"""Shared test set-up: a clean Pyro state, fixed seeds, validation on, figures closed."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    torch.set_num_threads(1)  # tiny test models run fastest (and steadiest) on one thread
    yield
    pyro.clear_param_store()
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    """The bundled digits as a (1797, 64) float tensor in [0, 1]."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
