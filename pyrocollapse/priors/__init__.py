"""Swappable priors p(z) as Pyro programs.

A prior is a :class:`Prior`: a :class:`~pyro.nn.PyroModule` that a model calls inside its
own plates, ``z = prior("z")``. The prior samples the latent site (event shape
``(latent_dim,)``), so a model never hard-codes ``dist.Normal(0, 1)`` and any prior can
be swapped in without touching model code.

Adding a prior means subclassing :class:`Prior` and implementing one method,
:meth:`Prior.distribution`, which returns p(z) as a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (latent_dim,)``. Everything else
(``forward``, ``log_prob``, ``sample``, ``marginal``, registration of learnable
parameters, the command-line name) comes from the base class. Priors with extra latent
sites (:class:`HierarchicalPrior`) override ``forward``, ``guide``, ``log_prob`` and
``sample`` instead. :func:`pyrocollapse.testing.check_prior` runs the contract on any
prior, including your own.

The families, by their command-line names (``pyrocollapse run --prior NAME``):

============  ================================  ==========================================
name          class                             p(z)
============  ================================  ==========================================
standard      :class:`StandardNormalPrior`      N(0, I)
learnable     :class:`LearnableGaussianPrior`   N(mu, diag(sigma^2)), mu and sigma learned
mixture       :class:`MixturePrior`             sum_k pi_k N(mu_k, diag(sigma_k^2)), learned
vamp          :class:`VampPrior`                (1/K) sum_k q(z | u_k), pseudo-inputs u_k
hierarchical  :class:`HierarchicalPrior`        int N(z; mu(t), diag(sigma(t)^2)) N(t; 0, I) dt
ard           :class:`ARDPrior`                 N(0, diag(s^2)), relevances s learned
flow          :class:`FlowPrior`                N(0, I) pushed through learned bijections
============  ================================  ==========================================

Learnable parameters
--------------------
Learnable parameters are plain :class:`torch.nn.Parameter` s on unconstrained scales (the
constraint is applied in :meth:`Prior.distribution`, e.g. ``softplus`` for scales). Inside
a running Pyro program a ``PyroModule`` turns each of them into a ``pyro.param`` site, so
:class:`pyro.infer.SVI` and :func:`pyrocollapse.train.fit` train them, and
``prior.parameters()`` lists them for plain PyTorch. Each prior instance gets a unique
name in Pyro's parameter store (``mixtureprior``, ``mixtureprior_2``, ...; inside a model,
``<model name>.prior``), so two priors never share weights through the store. (Constrained
``PyroParam`` s are avoided on purpose: they adopt a same-named tensor already in the
global store, silently tying two models together.)

Layout
------
One module per prior, named after it (:mod:`~pyrocollapse.priors.standard`,
``learnable``, ``mixture``, ``vamp``, ``hierarchical``, ``ard``, ``flow``), on
:mod:`pyrocollapse.priors.base` (:class:`Prior`, :data:`PRIORS`, :func:`make_prior`)
and :mod:`pyrocollapse.priors.distributions` (:class:`DiagonalNormalMixture`). Import
every name from ``pyrocollapse.priors``: the paths of the modules are not public. Files
saved before the split name their class ``pyrocollapse.priors:<Class>``, which this
package still exports, so they load unchanged.
"""

# isort: off
# Import order is registration order in PRIORS, which ``pyrocollapse run --help`` and the
# "valid names" of errors list.
from pyrocollapse.priors.base import Prior, make_prior
from pyrocollapse.priors.distributions import DiagonalNormalMixture
from pyrocollapse.priors.standard import StandardNormalPrior
from pyrocollapse.priors.learnable import LearnableGaussianPrior
from pyrocollapse.priors.mixture import MixturePrior
from pyrocollapse.priors.vamp import VampPrior
from pyrocollapse.priors.hierarchical import HierarchicalPrior
from pyrocollapse.priors.ard import ARDPrior
from pyrocollapse.priors.flow import FlowPrior

# isort: on
from pyrocollapse.priors import base as _base
from pyrocollapse.priors import flow as _flow

# Module constants reachable as before, outside __all__.
from pyrocollapse.priors.hierarchical import PROPOSALS as PROPOSALS
from pyrocollapse.priors.vamp import PSEUDO_SUPPORTS as PSEUDO_SUPPORTS

# Assigned here, not imported, so that the API reference shows their descriptions.
#: Short name -> prior class, used by ``pyrocollapse run --prior NAME``.
PRIORS = _base.PRIORS
#: Name -> Pyro transform family accepted by ``FlowPrior(transforms=NAME)``.
FLOW_TRANSFORMS = _flow.FLOW_TRANSFORMS

__all__ = [
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
]
