"""The compiled evaluation (``pyrocollapse/jit.py``): ``jit="auto"`` and its fallback,
the checks that refuse a graph which froze values, and inductor itself (slow).

Most tests use the ``aot_eager`` backend (the recorded graph and its AOTAutograd
backward, compiled in well under a second); ``tests/elbo/test_elbo_fast_paths.py`` checks
every variant's compiled values against eager mode. No timing here: the speed targets
live in ``benchmarks/training.py``.
"""

from __future__ import annotations

import ast
import copy
import logging
import pathlib
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrocollapse.jit
from pyrocollapse.elbo import ELBOS, PlainELBO
from pyrocollapse.jit import check_jit
from pyrocollapse.models import MLPVAE


@pytest.fixture
def fast_backend(monkeypatch):
    monkeypatch.setattr(pyrocollapse.jit, "BACKEND", "aot_eager")


def data(n: int = 12, d: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).float()


def make_vae() -> MLPVAE:
    pyro.set_rng_seed(0)
    return MLPVAE(10, 3, hidden=(8,), name="compile")


def seeded(fn, seed: int):
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        return fn()


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pyrocollapse"]


def test_jit_accepts_auto_true_false_and_defaults_to_auto():
    assert check_jit("auto") == "auto" and check_jit(True) is True and check_jit(False) is False
    for name in ELBOS.names():
        args = (0.5,) if name == "annealed" else ()
        objective = ELBOS.get(name)(*args)
        # an objective with side effects in its evaluation (factorvae) is never compiled
        assert objective.jit == ("auto" if objective.compilable else False), name
    assert PlainELBO(jit=False).compiled is None and PlainELBO(jit=False).jit is False
    with pytest.raises(TypeError, match=r"^jit must be True or False, got str 'yes' \(or 'auto'"):
        PlainELBO(jit="yes")


def test_auto_stays_eager_in_short_runs(fast_backend):
    vae, x = make_vae(), data()
    elbo = PlainELBO()
    for seed in range(5):
        seeded(lambda: elbo.differentiable_loss(vae.model, vae.guide, x), seed)
    assert elbo.compiled.compilations == 0 and elbo.last.terms  # eager: the terms are kept
    assert 0 < elbo.compiled.eager_seconds < pyrocollapse.jit.AUTO_AFTER_SECONDS


def test_auto_compiles_once_the_run_is_long_enough_and_matches_eager(fast_backend, monkeypatch):
    monkeypatch.setattr(pyrocollapse.jit, "AUTO_AFTER_SECONDS", 0.0)
    vae, x = make_vae(), data()
    elbo, reference = PlainELBO(), PlainELBO(jit=False)
    for seed in range(4):
        compiled = seeded(
            lambda: float(elbo.differentiable_loss(vae.model, vae.guide, x).detach()), seed
        )
        eager = seeded(
            lambda: float(reference.differentiable_loss(vae.model, vae.guide, x).detach()), seed
        )
        assert compiled == pytest.approx(eager, rel=1e-5)
    assert elbo.compiled.compilations == 1 and elbo.compiled.fallback is None
    assert elbo.last.terms == []  # compiled: no traces


def test_auto_falls_back_to_eager_and_says_why_once(fast_backend, monkeypatch, caplog):
    """A trainable tensor outside Pyro's parameter store: ``jit=True`` raises, ``"auto"``
    evaluates eagerly (same values as ``jit=False``) and logs the reason once."""
    monkeypatch.setattr(pyrocollapse.jit, "AUTO_AFTER_SECONDS", 0.0)
    hidden = torch.nn.Parameter(torch.ones(3))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z * hidden, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(3) + hidden, 1.0).to_event(1))

    x = torch.zeros(4, 3)
    elbo = ELBOS.get("beta")(2.0)
    with caplog.at_level(logging.WARNING, logger="pyrocollapse"):
        values = [seeded(lambda: elbo.loss(model, guide, x), s) for s in range(4)]
    eager = [
        seeded(lambda: ELBOS.get("beta")(2.0, jit=False).loss(model, guide, x), s) for s in range(4)
    ]
    assert values == pytest.approx(eager)
    said = messages(caplog)
    assert len(said) == 1, said
    assert said[0].startswith("BetaELBO(jit='auto'): evaluating eagerly, not compiled:")
    assert "not Pyro parameters" in said[0]
    assert elbo.compiled.compilations == 0 and elbo.compiled.fallback is not None
    with pytest.raises(RuntimeError, match=r"BetaELBO\(jit=True\) could not compile"):
        seeded(lambda: ELBOS.get("beta")(2.0, jit=True).loss(model, guide, x), 0)


def frozen_count_program():
    """A model whose likelihood scale is a number read off the data: the recording
    freezes it at the first batch's value."""

    def model(x):
        ones = float(x.sum())  # read into Python: frozen by a recorded graph
        w = pyro.param("w", torch.full((3, 4), 0.2))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w, 1.0 + ones).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.full((3,), 0.3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    g = torch.Generator().manual_seed(4)
    return model, guide, torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) + 3.0


def test_a_graph_that_froze_a_data_value_is_refused_on_its_first_compiled_call(
    fast_backend, monkeypatch, caplog
):
    monkeypatch.setattr(pyrocollapse.jit, "AUTO_AFTER_SECONDS", 0.0)
    model, guide, x1, x2 = frozen_count_program()
    elbo = PlainELBO()
    with caplog.at_level(logging.WARNING, logger="pyrocollapse"):
        seeded(lambda: elbo.loss(model, guide, x1), 0)  # records on x1
        got = seeded(lambda: elbo.loss(model, guide, x2), 1)  # checked on x2: refused
        again = seeded(lambda: elbo.loss(model, guide, x2), 1)
    want = seeded(lambda: PlainELBO(jit=False).loss(model, guide, x2), 1)
    assert got == pytest.approx(want, rel=1e-6) and again == pytest.approx(want, rel=1e-6)
    said = messages(caplog)
    assert len(said) == 1 and "differs from the eager evaluation" in said[0], said
    assert len(elbo.compiled) == 0
    strict = PlainELBO(jit=True)
    seeded(lambda: strict.loss(model, guide, x1), 0)
    with pytest.raises(RuntimeError, match=r"PlainELBO\(jit=True\): the compiled graph's loss"):
        seeded(lambda: strict.loss(model, guide, x2), 1)


def test_no_grad_calls_do_not_compile_a_second_graph(fast_backend):
    vae, x = make_vae(), data()
    elbo = PlainELBO(jit=True)
    for seed in range(3):
        seeded(lambda: elbo.differentiable_loss(vae.model, vae.guide, x), seed)
    entry = next(iter(elbo.compiled._cache.values()))
    want = seeded(lambda: PlainELBO(jit=False).loss(vae.model, vae.guide, x), 9)
    assert seeded(lambda: elbo.loss(vae.model, vae.guide, x), 9) == pytest.approx(want, rel=1e-5)
    assert elbo.compiled.compilations == 1 and entry.calls == 3


def test_copies_and_pickles_keep_the_mode_and_start_without_graphs(fast_backend):
    vae, x = make_vae(), data()
    elbo = PlainELBO(jit=True)
    for seed in range(2):
        seeded(lambda: elbo.loss(vae.model, vae.guide, x), seed)
    assert len(elbo.compiled) == 1
    for other in (copy.deepcopy(elbo), pickle.loads(pickle.dumps(elbo))):
        assert other.jit is True and len(other.compiled) == 0
        assert other.compiled is not elbo.compiled
    assert pickle.loads(pickle.dumps(PlainELBO())).jit == "auto"


def test_the_compiled_path_does_not_import_the_objectives():
    """``pyrocollapse.jit`` sits below ``pyrocollapse.elbo``: it names the objectives for
    type checking only, so there is no import cycle."""
    source = pathlib.Path(pyrocollapse.jit.__file__).read_text()
    tree = ast.parse(source)
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            guarded.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import) and id(node) not in guarded:
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            assert not any(n and n.startswith("pyrocollapse") for n in names), ast.unparse(node)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["elbo", "betatc"])
def test_inductor_compiled_step_equals_eager_on_the_same_draws(name):
    """The default backend: generated kernels, the eager random kernels
    (``fallback_random``), so the same seed gives the same draws, loss and gradients."""
    options = {"betatc": {"alpha": 1.0, "beta": 4.0, "gamma": 1.0}}.get(name, {})
    vae, x = make_vae(), data()
    elbo, reference = ELBOS.get(name)(**options, jit=True), ELBOS.get(name)(**options, jit=False)
    params = list(vae.parameters())
    for seed in range(3):
        lc = seeded(lambda: elbo.differentiable_loss(vae.model, vae.guide, x), seed)
        le = seeded(lambda: reference.differentiable_loss(vae.model, vae.guide, x), seed)
        assert float(lc.detach()) == pytest.approx(float(le.detach()), rel=1e-5)
        for gc, ge in zip(
            torch.autograd.grad(lc, params), torch.autograd.grad(le, params), strict=True
        ):
            torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-5)
        assert elbo.last.components.keys() == reference.last.components.keys()
    assert elbo.compiled.compilations == 1
