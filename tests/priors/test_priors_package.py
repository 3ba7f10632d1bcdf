"""``pyrocollapse.priors`` as a package: one module per prior, the same public names, and
files saved before the split (class ``pyrocollapse.priors:<Class>``) still load."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import pyrocollapse.priors as priors
from pyrocollapse import _saveable
from pyrocollapse.models import MLPVAE, MODELS, VAE
from pyrocollapse.persistence import FORMAT, FORMAT_VERSION
from pyrocollapse.priors import PRIORS, MixturePrior, Prior, StandardNormalPrior

#: Registry name -> the module of the package that defines the prior.
HOMES = {
    "standard": "pyrocollapse.priors.standard",
    "learnable": "pyrocollapse.priors.learnable",
    "mixture": "pyrocollapse.priors.mixture",
    "vamp": "pyrocollapse.priors.vamp",
    "hierarchical": "pyrocollapse.priors.hierarchical",
    "ard": "pyrocollapse.priors.ard",
    "flow": "pyrocollapse.priors.flow",
}


def test_registry_order_and_one_module_per_prior():
    # registration order is what ``--help`` and the "valid names" of errors list
    assert PRIORS.names() == list(HOMES)
    for name, module in HOMES.items():
        cls = PRIORS.get(name)
        assert cls.__module__ == module
        assert getattr(priors, cls.__name__) is cls
        assert getattr(importlib.import_module(module), cls.__name__) is cls


def test_every_public_name_is_exported_as_before():
    expected = {
        "FLOW_TRANSFORMS",
        "PRIORS",
        "ARDPrior",
        "DiagonalNormalMixture",
        "FlowPrior",
        "HierarchicalPrior",
        "LearnableGaussianPrior",
        "MixturePrior",
        "Prior",
        "StandardNormalPrior",
        "VampPrior",
        "make_prior",
    }
    assert set(priors.__all__) == expected
    assert all(hasattr(priors, name) for name in expected)
    # module constants outside __all__ stay reachable
    assert priors.PSEUDO_SUPPORTS == ("unit", "real")
    assert priors.PROPOSALS == ("defensive", "guide", "prior")


def test_monkeypatching_the_package_reaches_callers(monkeypatch):
    """Code that imports a name from ``pyrocollapse.priors`` when it runs sees a patch."""
    calls = []

    def fake(name, latent_dim, **options):
        calls.append((name, latent_dim))
        return StandardNormalPrior(latent_dim)

    monkeypatch.setattr(priors, "make_prior", fake)
    from pyrocollapse.priors import make_prior

    assert isinstance(make_prior("mixture", 3), StandardNormalPrior)
    assert calls == [("mixture", 3)]


def test_saveable_bases_register_without_imports():
    """The persistence layer finds the base classes and registries by kind."""
    assert _saveable._base_class("prior") is Prior
    assert _saveable._base_class("model") is VAE
    assert _saveable._registries("prior") is PRIORS
    assert _saveable._registries("model") is MODELS
    assert _saveable._registries("other") is None
    with pytest.raises(ValueError, match="unknown kind 'other'"):
        _saveable._base_class("other")


def _rewrite_classes(path, old: dict[str, str]) -> None:
    """Rename the saved class paths in ``path`` (``new -> old``), dropping registry names,
    so only the class path can find the class."""
    payload = torch.load(path, weights_only=True)
    config = json.loads(payload["config"])

    def visit(spec: dict) -> None:
        spec["class"] = old.get(spec["class"], spec["class"])
        spec["registry_name"] = None
        for value in spec.get("arguments", {}).values():
            if isinstance(value, dict) and "__module__" in value:
                visit(value["__module__"])

    visit(config)
    payload["config"] = json.dumps(config)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    torch.save(payload, path)


def test_a_prior_saved_under_the_old_module_path_loads(tmp_path):
    prior = MixturePrior(3, n_components=4)
    with torch.no_grad():
        prior.means.normal_()
    path = prior.save(tmp_path / "prior.pt")
    saved = json.loads(torch.load(path, weights_only=True)["config"])
    assert saved["class"] == "pyrocollapse.priors.mixture:MixturePrior"
    _rewrite_classes(path, {saved["class"]: "pyrocollapse.priors:MixturePrior"})

    loaded = Prior.load(path)
    assert type(loaded) is MixturePrior
    z = torch.randn(5, 3)
    torch.testing.assert_close(loaded.log_prob(z), prior.log_prob(z))


def test_a_model_with_a_prior_saved_under_the_old_module_path_loads(tmp_path):
    vae = MLPVAE(6, 2, hidden=(4,), prior=MixturePrior(2, n_components=3))
    path = vae.save(tmp_path / "vae.pt")
    _rewrite_classes(
        path,
        {
            "pyrocollapse.priors.mixture:MixturePrior": "pyrocollapse.priors:MixturePrior",
        },
    )
    spec = json.loads(torch.load(path, weights_only=True)["config"])
    assert spec["arguments"]["prior"]["__module__"]["class"] == "pyrocollapse.priors:MixturePrior"

    loaded = VAE.load(path)
    assert type(loaded) is MLPVAE and type(loaded.prior) is MixturePrior
    torch.testing.assert_close(loaded.prior.means, vae.prior.means)
