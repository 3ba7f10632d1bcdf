"""Issue 17, item 9: the cause attribution ranks the true cause first on three trained
models that collapse for a known reason (``tests/diagnostics/cause_cases.py``, where each cause is
confirmed by its remedy), and suggests that cause's remedies."""

from __future__ import annotations

import pytest
from cause_cases import CAUSES, make_case

from pyrocollapse import diagnose

SETTING = {
    "decoder_capacity": {"model": "sequence", "prior": "standard", "elbo": "elbo"},
    "prior_mismatch": {"model": "linear", "prior": "standard", "elbo": "elbo"},
    "training_dynamics": {"model": "mlp", "prior": "standard", "elbo": "elbo"},
}
#: A flag each cause's remedies must include.
REMEDY_FLAG = {
    "decoder_capacity": "--model-option word_dropout=",
    "prior_mismatch": "--prior mixture",
    "training_dynamics": "--aggressive",
}


@pytest.mark.parametrize("name", CAUSES)
def test_the_true_cause_ranks_first(name):
    case = make_case(name, 0)
    case.vae.eval()
    report = diagnose(
        case.model,
        case.guide,
        case.test,
        estimators=("kl", "au", "mi", "sensitivity", "iw", "causes"),
        history=case.history,
        setting=SETTING[name],
    )
    assert report.verdict != "healthy"
    analysis = report.causes
    top, second = analysis.causes[0], analysis.causes[1]
    assert top.name == case.cause, [(c.name, c.score) for c in analysis.causes]
    # clearly first: above the evidence floor and ahead of the runner-up
    assert top.score >= 0.1 and top.score > 2 * second.score
    assert analysis.remedies[0].cause == case.cause
    assert any(REMEDY_FLAG[name] in r.cli for r in analysis.remedies if r.cause == case.cause)
    assert f"1. {case.cause}" in str(report)
