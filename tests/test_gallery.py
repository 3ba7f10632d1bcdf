"""The gallery of Pyro programs (tests/gallery) runs, and its metadata tells the truth."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from gallery import FEATURES, PROGRAMS, GalleryProgram, build, m2_accuracy, m2_data
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.infer import SVI
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.subsample_messenger import _Subsample

# Every program with its default options, plus the option variants.
CASES: list[tuple[str, dict]] = [(name, {}) for name in PROGRAMS] + [
    ("vae", {"subsample_size": 8}),
    ("m2", {"labelled": True}),
    ("dmm", {"iaf": True}),
    ("eight_schools", {"guide": "auto"}),
    ("mixture", {"delta_locs": True}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CASES]


def _traces(program: GalleryProgram) -> tuple[poutine.Trace, poutine.Trace]:
    guide_tr = poutine.trace(program.guide).get_trace(*program.args, **program.kwargs)
    model_tr = poutine.trace(poutine.replay(program.model, trace=guide_tr)).get_trace(
        *program.args, **program.kwargs
    )
    return guide_tr, model_tr


def _latents(tr: poutine.Trace) -> dict[str, dict]:
    return {
        name: site
        for name, site in tr.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not isinstance(site["fn"], _Subsample)
    }


def _observed(tr: poutine.Trace) -> dict[str, dict]:
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample" and s["is_observed"]}


def _plates(site: dict) -> set[str]:
    return {f.name for f in site["cond_indep_stack"]}


def _unwrap(fn: object) -> object:
    while isinstance(fn, (MaskedDistribution, dist.Independent)):
        fn = fn.base_dist
    return fn


def test_program_list_and_features() -> None:
    assert len(set(PROGRAMS)) == len(PROGRAMS) == 13
    for name, opts in CASES:
        program = build(name, **opts)
        assert program.name == name
        assert program.features <= FEATURES
    used = set().union(*(build(name, **opts).features for name, opts in CASES))
    assert used == FEATURES, f"features no program exercises: {sorted(FEATURES - used)}"


def test_build_errors() -> None:
    with pytest.raises(ValueError, match="unknown gallery program"):
        build("nope")
    with pytest.raises(ValueError, match="no option"):
        build("vae", iaf=True)
    for name in ("hier_autonormal", "hier_autodiagnormal", "mixture_enum"):
        with pytest.raises(ValueError, match="no local latents"):
            build(name, control=True)


@pytest.mark.parametrize("name", ["vae", "dmm", "lda"])
def test_build_is_reproducible(name: str) -> None:
    def snapshot() -> list[torch.Tensor]:
        p = build(name, seed=3)
        tensors = [a for a in p.args if isinstance(a, torch.Tensor)]
        tensors += [t.detach().clone() for m in p.modules for t in m.parameters()]
        return tensors

    first, second = snapshot(), snapshot()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(build(name, seed=4).args[0], build(name, seed=3).args[0])


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_svi_runs_with_reference_elbo(name: str, opts: dict) -> None:
    program = build(name, **opts)
    elbo = program.reference_elbo()
    assert type(elbo).__name__ == program.reference
    assert elbo.max_plate_nesting == program.max_plate_nesting
    svi = SVI(program.model, program.guide, pyro.optim.Adam({"lr": 1e-2}), loss=elbo)
    losses = [svi.step(*program.args, **program.kwargs) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses), losses
    assert pyro.get_param_store().keys(), "the program has no parameters to train"
    for module in program.modules:
        assert isinstance(module, torch.nn.Module)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("control", [False, True], ids=["", "control"])
def test_vectorized_particles(name: str, opts: dict, control: bool) -> None:
    """Programs broadcast over a leading particle dimension (Vindex, no hard shapes)."""
    if control and not build(name, **opts).local_latents:
        pytest.skip("no control variant")
    program = build(name, control=control, **opts)
    elbo = program.reference_elbo(num_particles=3, vectorize_particles=True)
    optim = pyro.optim.Adam({"lr": 1e-2})
    loss = SVI(program.model, program.guide, optim, loss=elbo).step(*program.args, **program.kwargs)
    assert math.isfinite(loss)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_metadata_matches_traces(name: str, opts: dict) -> None:
    program = build(name, **opts)
    guide_tr, model_tr = _traces(program)
    guide_latents, model_latents = _latents(guide_tr), _latents(model_tr)
    observed = _observed(model_tr)
    assert observed, "the model observes nothing"

    for site in program.local_latents:
        assert site in guide_latents, f"local latent {site} not sampled by the guide"
        assert site in model_latents, f"local latent {site} not in the model"
        assert program.data_plate in _plates(model_latents[site])
        assert program.data_plate in _plates(guide_latents[site])
    for site in program.global_latents:
        assert site in model_latents and site in guide_latents, site
        assert program.data_plate not in _plates(model_latents[site])
    for site in program.enumerated:
        where = guide_latents if site in guide_latents else model_latents
        assert site in where, site
        assert where[site]["infer"].get("enumerate") == "parallel", site
    # every model latent is accounted for
    claimed = set(program.local_latents) | set(program.global_latents) | set(program.enumerated)
    assert set(model_latents) == claimed

    # the data plate holds num_data points
    sizes = {
        f.size
        for site in model_tr.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.name == program.data_plate
    }
    subsample = model_tr.nodes.get(program.data_plate)
    if subsample is not None:  # a subsampled plate: num_data is its full size
        assert isinstance(subsample["fn"], _Subsample)
        assert sizes == {subsample["value"].shape[0]}
        sizes = {subsample["fn"].size}
    assert sizes == {program.num_data}
    leading = program.train_data
    if isinstance(leading, dict):
        leading = [v for v in leading.values() if v is not None]
    elif isinstance(leading, torch.Tensor):
        leading = [leading]
    assert all(t.shape[0] == program.num_data for t in leading)

    # features that can be read off the traces
    feats = program.features
    guide_enum = [s for s in program.enumerated if s in guide_latents]
    assert ("enumerate_guide" in feats) == bool(guide_enum)
    assert ("enumerate_model" in feats) == (len(guide_enum) < len(program.enumerated))
    if program.enumerated:
        assert program.reference == "TraceEnum_ELBO"
    assert ("global_latent" in feats) == bool(program.global_latents)
    assert ("obs_named_obs" in feats) == ("obs" in observed)
    assert ("autoguide" in feats) == isinstance(program.guide, AutoGuide)
    assert ("multi_arg" in feats) == (len(program.args) + len(program.kwargs) > 1)
    non_reparam = [
        n
        for n, s in guide_latents.items()
        if n not in program.enumerated and not s["fn"].has_rsample
    ]
    assert ("non_reparam" in feats) == bool(non_reparam)
    deltas = [n for n, s in guide_latents.items() if isinstance(_unwrap(s["fn"]), dist.Delta)]
    assert ("delta_guide" in feats) == bool(deltas)
    flows = [
        n
        for n, s in guide_latents.items()
        if isinstance(_unwrap(s["fn"]), dist.TransformedDistribution)
    ]
    assert ("flow_guide" in feats) == bool(flows)
    masked = [n for n, s in model_tr.nodes.items() if isinstance(s.get("fn"), MaskedDistribution)]
    assert ("mask" in feats) == bool(masked)
    subsampled = [
        s
        for s in model_tr.nodes.values()
        if isinstance(s.get("fn"), _Subsample) and s["value"].shape[0] < s["fn"].size
    ]
    assert ("subsample" in feats) == bool(subsampled)
    batchnorm = [
        m for mod in program.modules for m in mod.modules() if isinstance(m, torch.nn.BatchNorm1d)
    ]
    assert ("batchnorm" in feats) == bool(batchnorm)
    supports = [_unwrap(s["fn"]).support for s in model_latents.values()]
    constrained = [c for c in supports if not c.is_discrete and c is not dist.constraints.real]
    assert ("constrained" in feats) == bool(constrained)


def _obs_log_lik(
    program: GalleryProgram, guide_tr: poutine.Trace, redraw: tuple[str, ...]
) -> float:
    """log p(observed | latents) with latents from ``guide_tr``, ``redraw`` ones from the prior."""
    tr = guide_tr.copy()
    for name in redraw:
        tr.remove_node(name)
    model_tr = poutine.trace(poutine.replay(program.model, trace=tr)).get_trace(
        *program.args, **program.kwargs
    )
    model_tr.compute_log_prob()
    return sum(s["log_prob_sum"].item() for s in _observed(model_tr).values())


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_control_ignores_local_latents(name: str, opts: dict) -> None:
    if not build(name, **opts).local_latents:
        pytest.skip("no local latents")
    results = {}
    for control in (False, True):
        program = build(name, control=control, **opts)
        for module in program.modules:
            module.eval()  # no dropout noise, BatchNorm with running statistics
        guide_tr = poutine.trace(program.guide).get_trace(*program.args, **program.kwargs)
        base = _obs_log_lik(program, guide_tr, ())
        redrawn = []
        for seed in (1, 2):
            pyro.set_rng_seed(seed)
            redrawn.append(_obs_log_lik(program, guide_tr, program.local_latents))
        results[control] = (base, redrawn)
    base, redrawn = results[True]
    assert all(math.isclose(base, r, rel_tol=1e-5, abs_tol=1e-4) for r in redrawn), results
    base, redrawn = results[False]
    assert not all(math.isclose(base, r, rel_tol=1e-5) for r in redrawn), results


def test_cvae_and_m2_optional_arguments() -> None:
    """The CVAE's ``ys=None`` path has no observed site; M2's labelled path observes y."""
    program = build("cvae")
    xs = program.args[0]
    guide_tr = poutine.trace(program.guide).get_trace(xs)
    model_tr = poutine.trace(poutine.replay(program.model, trace=guide_tr)).get_trace(xs)
    assert not _observed(model_tr)
    assert model_tr.nodes["_RETURN"]["value"].shape == xs.shape
    labelled = build("m2", labelled=True)
    _, model_tr = _traces(labelled)
    assert set(_observed(model_tr)) == {"y", "x"}


@pytest.mark.slow
def test_m2_learns_a_classifier() -> None:
    """Pure M2 (no auxiliary classification loss): q(y|x) is trained only through the
    enumerated unlabelled ELBO, so this checks guide-side enumeration end to end."""
    program = build("m2", seed=0)
    x_l, y_l, x_u, _ = m2_data(seed=0, n_labelled=30, n_unlabelled=300)
    _, _, x_test, y_test = m2_data(seed=1, n_labelled=0, n_unlabelled=300)
    # One TraceEnum_ELBO serves both kinds of batch; labelled ones enumerate nothing.
    elbo = program.reference_elbo(strict_enumeration_warning=False)
    svi = SVI(program.model, program.guide, pyro.optim.Adam({"lr": 3e-3}), loss=elbo)
    assert m2_accuracy(program, x_test, y_test) < 0.7
    for _ in range(150):
        for batch in x_u.split(50):
            svi.step(batch, ys=None)
        svi.step(x_l, ys=y_l)
    accuracy = m2_accuracy(program, x_test, y_test)
    assert accuracy >= 0.7, accuracy
