"""ELBO variants against posterior collapse, as Pyro ELBOs.

Every objective here subclasses :class:`BaseELBO`, itself a :class:`pyro.infer.ELBO`, so it
works as ``SVI(model, guide, optim, loss=...)``, as ``elbo(model, guide)`` (Pyro's
``ELBOModule``, used by Lightning and DDP) and with :func:`pyrocollapse.train.fit`.

====================================  ==========  =====================================================
class                                 CLI name    objective (maximised; ``beta`` is the KL weight)
====================================  ==========  =====================================================
:class:`PlainELBO`                    elbo        E_q[log p(x|z)] - KL
:class:`AnnealedELBO`                 annealed    E_q[log p(x|z)] - beta_t KL, beta_t from a schedule
:class:`BetaELBO`                     beta        E_q[log p(x|z)] - beta KL (Higgins et al. 2017)
:class:`FreeBitsELBO`                 freebits    KL per dimension floored at ``free_bits`` (Kingma
                                                  et al. 2016)
:class:`MIRegularizedELBO`            mi          ELBO + alpha I_q(x; z), minibatch estimate
:class:`InfoVAEELBO`                  infovae     InfoVAE with an MMD divergence (Zhao et al. 2019)
:class:`IWAEELBO`                     iwae        per-data-point importance-weighted bound (Burda
                                                  et al. 2016)
:class:`BetaTCELBO`                   betatc      KL split into index-code MI, total correlation and
                                                  dimension-wise KL (Chen et al. 2018)
:class:`~.factor_vae.FactorVAEELBO`   factorvae   ELBO - gamma TC, the total correlation from a
                                                  density-ratio discriminator (Kim & Mnih 2018)
====================================  ==========  =====================================================

How the base works
------------------
For each particle the base runs the guide, replays the model against it and computes the
*terms* of the ELBO once (:class:`ELBOTerms`):

* the reconstruction term: log-likelihood of every observed site, with plate subsampling
  scale, ``poutine.scale`` and masks applied;
* one :class:`LatentTerm` per latent site: KL(q || p) per data point and, where both q and
  p factorise over the event dimension, per latent dimension. Analytic when Pyro's
  ``kl_divergence`` has a closed form, else the single-sample Monte Carlo estimate
  log q(z) - log p(z);
* guide-only (auxiliary) sites' log q.

Programs with enumerated sites (guide or model), non-reparameterised guide sites or
model-only sites take the general path of :mod:`pyrocollapse._dice`: each term is
weighted by its DiCE weight, so enumerated guide sites are summed exactly (weights q(y)),
enumerated model-only sites are summed out of their log-factors by Pyro's tensor variable
elimination, and each non-reparameterised site receives the score-function gradient of
the terms downstream of it only, per plate, with Pyro's ``baseline`` options. The
variant's weights apply to every term, the KL of a discrete site included. Point
masses (``Delta``), flows, transformed and masked distributions take the Monte Carlo KL
``log q(z) - log p(z)``. ``docs/pyro_programs.md`` lists which Pyro features each
variant supports; ``tests/elbo/test_gallery_objectives.py`` checks each variant against
Pyro's ``Trace_ELBO``/``TraceEnum_ELBO`` on a gallery of Pyro programs.

One hook, :meth:`BaseELBO.combine`, turns the terms into the loss to minimise and the
variant's extra components. ``loss``, ``differentiable_loss`` and ``loss_and_grads`` all
call the same :meth:`BaseELBO.evaluate`, so they can never disagree (Pyro's own
``Trace_ELBO.loss`` takes a separate code path from its gradient). A KL weight of exactly
0 works: weights multiply terms; nothing relies on ``poutine.scale``.

Speed
-----
Without validation (as in ``fit`` after its first step) the traces compute only the
log-probabilities the terms read (:func:`importance_traces`): no log q(z) and log p(z)
beside an analytic KL. Each term is computed once and shared by ``combine`` and the
breakdown, and the breakdown stays on the device as one tensor until
:attr:`Evaluation.components` is read. Every variant takes ``jit``: the whole
evaluation (model, guide, terms, ``combine``) is recorded as one graph per input
signature and compiled with :func:`torch.compile` (inductor; forward and backward),
with the KL weight as a tensor input so that schedules never recompile. The default,
``jit="auto"``, compiles only once a run is long enough to pay for the compilation and
falls back to eager mode (saying why, once) where the program cannot be compiled;
``jit=True`` compiles from the second call, ``jit=False`` never; see
:mod:`pyrocollapse.jit`. ``benchmarks/training.py`` times both against a hand-written
PyTorch step.

The minibatch estimators the variants share are plain functions of a :class:`LocalSite`
(q(z|x), p(z) and the draw z of one latent site over the batch), vectorised over the
batch: :func:`log_density_matrix`, :func:`log_aggregate_posterior`,
:func:`minibatch_mutual_information`, :func:`total_correlation_decomposition`,
:func:`mmd` with :func:`rbf_kernel` / :func:`imq_kernel`, and
:func:`importance_log_weights`.

Modules
-------
Everything below is importable from ``pyrocollapse.elbo``; the code lives in one module
per concept: ``terms`` (:class:`LatentTerm`, :class:`ELBOTerms`, :func:`importance_traces`),
``estimators`` (:class:`LocalSite` and the minibatch estimators), ``base``
(:class:`BaseELBO`, :class:`Evaluation`, :data:`ELBOS`, :func:`make_elbo`) and one module
per variant, named after it (``plain``, ``annealed``, ``beta``, ``free_bits``,
``mi_regularized``, ``info_vae``, ``iwae``, ``beta_tc``, ``factor_vae``).

Adding a variant
----------------
Subclass :class:`BaseELBO` and override :meth:`~BaseELBO.combine` (about twenty lines)::

    class HalfKL(BaseELBO):
        def combine(self, terms):
            kl = 0.5 * terms.kl
            return -(terms.reconstruction - self.beta * kl - terms.auxiliary), {"half_kl": kl}

Extras are scalar tensors summed over the (scaled) batch, like the reconstruction term;
``fit`` divides them by the number of data points for its :class:`~pyrocollapse.train.History`.
Extend :attr:`BaseELBO.weights` when the variant has weights of its own.
"""

# isort: off
# Import order is registration order in ELBOS, which ``pyrocollapse run --help`` and the
# "valid names" of errors list.
from pyrocollapse.elbo.terms import ELBOTerms, LatentTerm, importance_traces
from pyrocollapse.elbo.estimators import (
    LocalSite,
    importance_log_weights,
    imq_kernel,
    local_site,
    local_sites,
    log_aggregate_posterior,
    log_density_matrix,
    minibatch_mutual_information,
    mmd,
    rbf_kernel,
    total_correlation_decomposition
)
from pyrocollapse.elbo.base import BaseELBO, Evaluation, make_elbo
from pyrocollapse.elbo.plain import PlainELBO
from pyrocollapse.elbo.annealed import AnnealedELBO
from pyrocollapse.elbo.beta import BetaELBO
from pyrocollapse.elbo.free_bits import FreeBitsELBO
from pyrocollapse.elbo.mi_regularized import MIRegularizedELBO
from pyrocollapse.elbo.info_vae import InfoVAEELBO
from pyrocollapse.elbo.iwae import IWAEELBO
from pyrocollapse.elbo.beta_tc import BetaTCELBO
from pyrocollapse.elbo.factor_vae import FactorVAEELBO as FactorVAEELBO
from pyrocollapse.elbo.factor_vae import permute_dims as permute_dims

# isort: on
from pyrocollapse.elbo import base as _base
from pyrocollapse.elbo import estimators as _estimators

# Helpers other modules import from here, outside __all__.
from pyrocollapse.elbo.terms import closed_form_allowed as closed_form_allowed
from pyrocollapse.elbo.terms import compute_terms as compute_terms
from pyrocollapse.elbo.terms import data_plate_frame as data_plate_frame
from pyrocollapse.elbo.terms import latent_term as latent_term

# Assigned here, not imported, so that the API reference shows their descriptions.
#: Short name -> ELBO class, used by ``pyrocollapse run --elbo NAME``.
ELBOS = _base.ELBOS
#: Estimators of log q(z_i) from the minibatch, for :func:`log_aggregate_posterior`.
AGGREGATE_ESTIMATORS = _estimators.AGGREGATE_ESTIMATORS
#: Kernel name -> kernel function, for :func:`mmd` and :class:`InfoVAEELBO`.
KERNELS = _estimators.KERNELS

__all__ = [
    "AGGREGATE_ESTIMATORS",
    "ELBOS",
    "IWAEELBO",
    "KERNELS",
    "AnnealedELBO",
    "BaseELBO",
    "BetaELBO",
    "BetaTCELBO",
    "ELBOTerms",
    "Evaluation",
    "FreeBitsELBO",
    "InfoVAEELBO",
    "LatentTerm",
    "LocalSite",
    "MIRegularizedELBO",
    "PlainELBO",
    "importance_log_weights",
    "importance_traces",
    "imq_kernel",
    "local_site",
    "local_sites",
    "log_aggregate_posterior",
    "log_density_matrix",
    "make_elbo",
    "minibatch_mutual_information",
    "mmd",
    "rbf_kernel",
    "total_correlation_decomposition",
]
