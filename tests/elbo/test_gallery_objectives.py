"""Contract suite: every objective on every gallery program (issue 14).

At its special value (weight 1, no extras, Monte Carlo KL) each objective's loss and
gradients equal Pyro's reference ELBO for the program (``Trace_ELBO`` or
``TraceEnum_ELBO``) on the same random draws; an objective that cannot apply to a
program raises a ``ValueError`` naming the site and the reason. Each program then trains
with every applicable objective through ``SVI``. A program added to the gallery inherits
the whole suite.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from gallery import CASES, PROGRAMS, GalleryProgram, build, case_id
from pyro.infer import SVI, TraceEnum_ELBO

from pyrocollapse.elbo import (
    IWAEELBO,
    AnnealedELBO,
    BaseELBO,
    BetaELBO,
    BetaTCELBO,
    FreeBitsELBO,
    InfoVAEELBO,
    MIRegularizedELBO,
    PlainELBO,
)

#: Objective name -> factory at its special value (equal to the plain ELBO).
SPECIAL: dict[str, Callable[[], BaseELBO]] = {
    "elbo": lambda: PlainELBO(analytic_kl=False),
    "annealed": lambda: AnnealedELBO(1.0, analytic_kl=False),
    "beta": lambda: BetaELBO(1.0, analytic_kl=False),
    "freebits": lambda: FreeBitsELBO(0.0, analytic_kl=False),
    "mi": lambda: MIRegularizedELBO(0.0, analytic_kl=False),
    "infovae": lambda: InfoVAEELBO(0.0, 1.0, analytic_kl=False),
    "betatc": lambda: BetaTCELBO(1.0, 1.0, 1.0, analytic_kl=False),
    "iwae": lambda: IWAEELBO(1, analytic_kl=False),
}

#: Objectives whose minibatch estimators need one reparameterised draw per data point.
_MINIBATCH = {"mi", "infovae", "betatc"}


_case_id = case_id


def _refusal(objective: str, program: GalleryProgram) -> str | None:
    """The error an objective must raise on a program (a pattern naming the site), or
    ``None`` where it applies."""
    features = program.features
    if objective in _MINIBATCH and "enumerate_guide" in features:
        return r"latent site '\w+' lies under the enumerated guide site"
    if objective == "betatc" and "flow_guide" in features:
        return r"latent site '\w+': per-dimension densities need a factorised guide"
    if objective == "iwae" and (
        features & {"enumerate_guide", "enumerate_model", "non_reparam", "delta_guide"}
        or program.global_latents
    ):
        return r"IWAEELBO.*(site.{0,2} '\w+'|sites \[')"
    return None


def _params(program: GalleryProgram) -> list[torch.Tensor]:
    """Every trainable tensor the program uses (after one run of model and guide)."""
    with pyro.poutine.trace(param_only=True) as tr:
        program.guide(*program.args, **program.kwargs)
        guide_tr = pyro.poutine.trace(program.guide).get_trace(*program.args, **program.kwargs)
        pyro.poutine.replay(program.model, trace=guide_tr)(*program.args, **program.kwargs)
    seen, out = set(), []
    for site in tr.trace.nodes.values():
        v = site["value"]
        u = v.unconstrained() if hasattr(v, "unconstrained") else v
        if u.requires_grad and id(u) not in seen:
            seen.add(id(u))
            out.append(u)
    return out


def _reference(program: GalleryProgram):
    """Pyro's ELBO with the same estimator: ``TraceEnum_ELBO`` (DiCE, per-plate
    downstream costs) where the program has score-function sites, else its reference."""
    if "non_reparam" in program.features:
        return TraceEnum_ELBO(
            max_plate_nesting=program.max_plate_nesting, strict_enumeration_warning=False
        )
    return program.reference_elbo()


def _loss_and_grads(elbo, program, params, seed=7):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(program.model, program.guide, *program.args, **program.kwargs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads


def _modules_eval(program: GalleryProgram) -> None:
    # BatchNorm batch statistics depend on the batch only, but running averages change
    # with every call; evaluation mode makes repeated runs identical.
    for m in program.modules:
        m.eval()


@pytest.mark.parametrize("objective", sorted(SPECIAL))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_objective_at_its_special_value_equals_pyros_elbo(case, objective):
    name, options = case
    program = build(name, **options)
    _modules_eval(program)
    elbo = SPECIAL[objective]()
    elbo.max_plate_nesting = program.max_plate_nesting
    refusal = _refusal(objective, program)
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            elbo.loss(program.model, program.guide, *program.args, **program.kwargs)
        return
    params = _params(program)
    ref_loss, ref_grads = _loss_and_grads(_reference(program), program, params)
    loss, grads = _loss_and_grads(elbo, program, params)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=2e-4)
    for p, a, b in zip(params, grads, ref_grads, strict=True):
        if a is None or b is None:
            assert a is None and b is None, f"gradient of a {tuple(p.shape)} parameter"
            continue
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("objective", ["elbo", "annealed", "beta", "freebits", "mi", "betatc"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_program_trains_with_every_applicable_objective(case, objective):
    name, options = case
    program = build(name, **options)
    if _refusal(objective, program) is not None:
        pytest.skip("the objective refuses this program (checked above)")
    factories = {
        "elbo": lambda: PlainELBO(),
        "annealed": lambda: AnnealedELBO(0.5),
        "beta": lambda: BetaELBO(2.0),
        "freebits": lambda: FreeBitsELBO(0.1),
        "mi": lambda: MIRegularizedELBO(0.5),
        "betatc": lambda: BetaTCELBO(1.0, 2.0, 1.0),
    }
    elbo = factories[objective]()
    elbo.max_plate_nesting = program.max_plate_nesting
    svi = SVI(program.model, program.guide, pyro.optim.Adam({"lr": 1e-2}), loss=elbo)
    before = [p.detach().clone() for p in _params(program)]
    losses = [svi.step(*program.args, **program.kwargs) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = _params(program)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    comps = elbo.last.components
    assert comps["num_data"] == pytest.approx(program.num_data)
    assert comps["loss"] == pytest.approx(losses[-1], rel=1e-5, abs=1e-4)


# --------------------------------------------------------------------------------------
# Gradient variance and a trained M2 VAE
# --------------------------------------------------------------------------------------
def _guide_gradients(elbo, program, draws: int) -> torch.Tensor:
    params = _params(program)
    out = []
    for seed in range(draws):
        _, grads = _loss_and_grads(elbo, program, params, seed=seed)
        out.append(torch.cat([g.flatten() for g in grads if g is not None]))
    return torch.stack(out)


@pytest.mark.parametrize("objective", ["elbo", "annealed", "beta", "freebits"])
@pytest.mark.parametrize("name", [n for n in PROGRAMS if "non_reparam" in build(n).features])
def test_score_function_gradient_variance_within_pyros(name, objective):
    program = build(name)
    factories = {
        "elbo": PlainELBO,
        "annealed": lambda: AnnealedELBO(1.0),
        "beta": lambda: BetaELBO(1.0),
        "freebits": lambda: FreeBitsELBO(0.0),
    }
    ours = _guide_gradients(factories[objective](), program, 100)
    pyro_ = _guide_gradients(pyro.infer.Trace_ELBO(), program, 100)
    assert float(ours.var(0).sum()) <= 1.5 * float(pyro_.var(0).sum())


@pytest.mark.slow
def test_m2_reaches_trace_enum_accuracy_under_annealing():
    """Issue 14: the M2 VAE trained with AnnealedELBO (KL warm-up over the first 100 of
    1,050 steps) classifies as well as with Pyro's TraceEnum_ELBO: mean held-out accuracy
    over four seeds within 0.05 (single seeds vary by about 0.1 with either objective).
    Before enumeration was summed, the annealed M2 VAE reached 0.13."""
    from gallery import m2_accuracy, m2_data

    from pyrocollapse.schedules import Linear

    x_l, y_l, x_u, _ = m2_data(seed=0, n_labelled=30, n_unlabelled=300)
    _, _, x_test, y_test = m2_data(seed=1, n_labelled=0, n_unlabelled=300)
    accuracy: dict[str, list[float]] = {"trace_enum": [], "annealed": []}
    for seed in range(4):
        for label in accuracy:
            program = build("m2", seed=seed)
            elbo = (
                program.reference_elbo(strict_enumeration_warning=False)
                if label == "trace_enum"
                else AnnealedELBO(Linear(warmup_steps=100), max_plate_nesting=1)
            )
            svi = SVI(program.model, program.guide, pyro.optim.Adam({"lr": 3e-3}), loss=elbo)
            pyro.set_rng_seed(seed)
            for _ in range(150):
                for batch in x_u.split(50):
                    svi.step(batch, ys=None)
                svi.step(x_l, ys=y_l)
            accuracy[label].append(m2_accuracy(program, x_test, y_test))
    mean = {k: sum(v) / len(v) for k, v in accuracy.items()}
    assert mean["trace_enum"] >= 0.8, accuracy
    assert abs(mean["annealed"] - mean["trace_enum"]) <= 0.05, accuracy


@pytest.mark.parametrize("objective", ["elbo", "annealed", "freebits", "mi"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_program_trains_through_fit(case, objective):
    """``fit`` takes each program's own data form (a tensor, a tuple of arguments, a dict
    with ``ys=None``) with no wrapper. Full batches: several programs have per-point guide
    parameters (the mixture's assignment logits). The per-epoch monitor on these programs
    is issue 15's; here it is off."""
    from pyrocollapse import fit

    name, options = case
    program = build(name, **options)
    if _refusal(objective, program) is not None:
        pytest.skip("the objective refuses this program (checked above)")
    factories = {
        "elbo": PlainELBO,
        "annealed": lambda **kw: AnnealedELBO(0.5, **kw),
        "freebits": lambda **kw: FreeBitsELBO(0.1, **kw),
        "mi": lambda **kw: MIRegularizedELBO(0.5, **kw),
    }
    elbo = factories[objective](max_plate_nesting=program.max_plate_nesting)
    history = fit(
        program.model,
        program.guide,
        program.train_data,
        loss=elbo,
        epochs=2,
        batch_size=program.num_data,
        seed=0,
        progress=False,
        monitor=None,
    )
    assert len(history) == 2
    record = history[-1].values
    assert torch.isfinite(torch.tensor(record["elbo"]))
    # per-data-point: the loss summed over the epoch divided by the data plate's size
    assert record["loss"] == pytest.approx(elbo.last.components["loss"] / program.num_data, rel=1e-5)
