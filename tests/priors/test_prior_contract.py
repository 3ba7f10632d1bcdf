"""The prior contract (:func:`pyrocollapse.testing.check_prior`) over every prior family.

Adding a prior means adding one entry to ``PRIOR_FIXTURES``; the whole contract then runs
on it (as Pyro's ``tests/distributions/conftest.py`` fixtures do for distributions).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from torch import nn

from pyrocollapse.models import MLPVAE
from pyrocollapse.priors import (
    PRIORS,
    ARDPrior,
    FlowPrior,
    HierarchicalPrior,
    LearnableGaussianPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
)
from pyrocollapse.testing import check_prior


def _vamp_in_model(latent_dim: int) -> Prior:
    """A VampPrior bound by its model (the usual way), pseudo-inputs in (0, 1)."""
    vae = MLPVAE(6, latent_dim, prior=VampPrior(None, 4, (6,), latent_dim=latent_dim), hidden=(8,))
    return vae.prior


def _vamp_standalone(latent_dim: int) -> Prior:
    """A VampPrior on a user's encoder function, real-valued pseudo-inputs."""
    net = nn.Linear(3, 2 * latent_dim)

    def encoder(x: torch.Tensor) -> dist.TorchDistribution:
        loc, raw = net(x).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 0.2).to_event(1)

    return VampPrior(encoder, 5, (3,), support="real")


#: (id, factory) for every prior configuration the contract runs on.
PRIOR_FIXTURES: list[tuple[str, Callable[[], Prior]]] = [
    ("standard-1", lambda: StandardNormalPrior(1)),
    ("standard-3", lambda: StandardNormalPrior(3)),
    ("learnable-2", lambda: LearnableGaussianPrior(2, init_scale=0.5)),
    ("ard-3", lambda: ARDPrior(3)),
    ("mixture-1", lambda: MixturePrior(1, n_components=3)),
    ("mixture-3", lambda: MixturePrior(3, n_components=5)),
    ("mixture-fixed-weights", lambda: MixturePrior(2, n_components=4, learn_weights=False)),
    ("vamp-model", lambda: _vamp_in_model(2)),
    ("vamp-standalone", lambda: _vamp_standalone(3)),
    ("hierarchical-1", lambda: HierarchicalPrior(1, hidden=(8,))),
    ("hierarchical-3", lambda: HierarchicalPrior(3, top_dim=2, hidden=(16,))),
    ("flow-1", lambda: FlowPrior(1)),
    ("flow-2", lambda: FlowPrior(2)),
    ("flow-affine-autoregressive", lambda: FlowPrior(3, "affine_autoregressive")),
    ("flow-spline-autoregressive", lambda: FlowPrior(2, "spline_autoregressive", hidden=(8,))),
    ("flow-affine-coupling", lambda: FlowPrior(3, "affine_coupling", num_transforms=3)),
    ("flow-custom", lambda: FlowPrior(2, [T.spline_coupling(2), T.Permute(torch.tensor([1, 0]))])),
]


def test_every_registered_prior_has_a_fixture():
    covered = {type(make()) for _, make in PRIOR_FIXTURES}
    missing = [name for name in PRIORS.names() if PRIORS.get(name) not in covered]
    assert not missing, f"add PRIOR_FIXTURES entries for {missing}"


@pytest.mark.parametrize("make", [m for _, m in PRIOR_FIXTURES], ids=[i for i, _ in PRIOR_FIXTURES])
def test_prior_contract(make):
    check_prior(make())


#: One configuration per family, for the slower checks.
ONE_PER_FAMILY = [
    (i, m)
    for i, m in PRIOR_FIXTURES
    if i
    in {
        "learnable-2",
        "ard-3",
        "mixture-3",
        "vamp-model",
        "hierarchical-3",
        "flow-2",
        "flow-affine-autoregressive",
    }
]


@pytest.mark.parametrize("make", [m for _, m in ONE_PER_FAMILY], ids=[i for i, _ in ONE_PER_FAMILY])
def test_priors_stay_valid_after_training_steps(make):
    """The contract holds away from the initialisation too (parameters moved by Adam)."""
    prior = make()
    params = list(prior.parameters())
    if params:
        opt = torch.optim.Adam(params, lr=0.05)
        target = torch.randn(256, prior.latent_dim) * 1.5 + 0.5
        for _ in range(10):
            opt.zero_grad()
            (-prior.log_prob(target).mean()).backward()
            opt.step()
    check_prior(prior, n=1500, atol=0.2, batch_shapes=((3,),))


# --------------------------------------------------------------------------------------
# The checker catches broken priors
# --------------------------------------------------------------------------------------
class _Unnormalised(StandardNormalPrior):
    def log_prob(self, z):
        return super().log_prob(z) + 0.5


class _LogProbDisagrees(Prior):
    """Samples N(0, 4) but scores N(0, 1)."""

    def distribution(self):
        return dist.Normal(torch.zeros(self.latent_dim), 2.0).to_event(1)

    def log_prob(self, z):
        self._check_z(z)
        return dist.Normal(0.0, 1.0).log_prob(z).sum(-1)


class _ShiftedSamples(StandardNormalPrior):
    def sample(self, n):
        return super().sample(n) + 1.0


class _NoEventDim(Prior):
    def distribution(self):
        return dist.Normal(torch.zeros(self.latent_dim), 1.0)


class _UnusedParameter(StandardNormalPrior):
    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.unused = nn.Parameter(torch.zeros(latent_dim))


class _ParameterNotRegistered(Prior):
    """Reads its parameter around the PyroModule machinery: SVI would never see it."""

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))

    def distribution(self):
        return dist.Normal(self._parameters["loc"], 1.0).to_event(1)


class _OverridesScale(StandardNormalPrior):
    def forward(self, name="z"):
        with pyro_scale(2.0):
            return super().forward(name)


def pyro_scale(value):
    from pyro import poutine

    return poutine.scale(scale=value)


class _NoShapeCheck(StandardNormalPrior):
    def log_prob(self, z):
        return self.distribution().log_prob(z[..., : self.latent_dim])


class _WrongLogProbShape(StandardNormalPrior):
    def log_prob(self, z):
        self._check_z(z)
        return dist.Normal(0.0, 1.0).log_prob(z)  # forgot to sum the event dimension


class _SampleWithGrad(LearnableGaussianPrior):
    def sample(self, n):
        return self.distribution().rsample((n,))


class _MissingGuidePiece(HierarchicalPrior):
    def guide(self, name, z):
        return None


class _IgnoresName(StandardNormalPrior):
    def forward(self, name="z"):
        return super().forward("z")


@pytest.mark.parametrize(
    "prior, check",
    [
        (_Unnormalised(2), r"\(log_prob vs program\): sum of log_prob\(z\)"),
        (_LogProbDisagrees(2), r"\(log_prob vs program\)"),
        (_ShiftedSamples(2), r"\(log_prob vs sample\): E_p\[z\] from log_prob"),
        (_NoEventDim(2), r"\(plates\): prior\('z'\) failed inside plates of shape \(3, 5\)"),
        (_UnusedParameter(2), r"\(gradients\): parameter 'unused' gets no gradient"),
        (
            _ParameterNotRegistered(2),
            r"\(parameter registration\): parameter 'loc' does not appear",
        ),
        (_OverridesScale(2), r"\(subsampling and poutine.scale\): site 'z' has scale 10"),
        (_NoShapeCheck(2), r"\(validation\): log_prob accepted z of shape \(2, 3\)"),
        (
            _WrongLogProbShape(2),
            r"\(log_prob shape\): log_prob\(z\) for z of shape \(2,\) returned",
        ),
        (_SampleWithGrad(2), r"\(sample\): sample\(n\) must return draws without gradient"),
        (
            _MissingGuidePiece(2),
            r"\(guide piece\): the prior samples extra latent sites \['z_top'\]",
        ),
        (_IgnoresName(2), r"\(site name\): prior\('w'\) recorded sample sites \['z'\]"),
    ],
    ids=lambda v: type(v).__name__.strip("_") if isinstance(v, Prior) else "",
)
def test_checker_rejects_a_broken_prior(prior, check):
    with pytest.raises(
        AssertionError, match=type(prior).__name__ + r" violates the prior contract " + check
    ):
        check_prior(prior)


def test_checker_detects_parameters_shadowed_in_the_param_store():
    """Two priors under one name: Pyro's store hands the second one the first one's tensor."""
    first, second = LearnableGaussianPrior(2), LearnableGaussianPrior(2)
    second._pyro_name = first._pyro_name
    check_prior(first, statistics=False)
    with pytest.raises(AssertionError, match=r"store returned a different tensor for '.*\.loc'"):
        check_prior(second, statistics=False)


def test_checker_restores_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_prior(StandardNormalPrior(2), n=200)
    torch.testing.assert_close(torch.rand(3), expected)


def test_checker_argument_errors():
    with pytest.raises(TypeError, match="prior must be a pyrocollapse.priors.Prior"):
        check_prior(dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="n must be >= 100, got 10"):
        check_prior(StandardNormalPrior(2), n=10)
    with pytest.raises(ValueError, match="atol must be > 0.0, got 0.0"):
        check_prior(StandardNormalPrior(2), atol=0.0)
    with pytest.raises(TypeError, match="batch_shapes must be a sequence of tuples"):
        check_prior(StandardNormalPrior(2), batch_shapes=(3,))
