"""Posterior-collapse diagnostics for any Pyro model/guide pair.

Everything here works from Pyro traces: the guide is traced on a chunk of data and the
model is replayed on the guide's draws, so the estimators apply to hand-written models as
well as to :mod:`pyrocollapse.models`, and to several latent sites (hierarchical models).

What the programs must look like
--------------------------------
* ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` take one chunk of the data,
  as ``SVI.step`` passes it: one tensor ``x`` of shape ``(B, ...)``, or several
  arguments (a tuple or dict of them, or a loader yielding such batches; see
  :mod:`pyrocollapse.program_data`), every tensor of which is cut along dim 0, which
  indexes observations; other values (``None``, numbers) go to every chunk unchanged.
* The **data plate** is the outermost plate around the observed sites. A latent in it is
  local (one value per point): continuous ones (event shape ``(latent_dim,)`` or a
  scalar) get every per-dimension estimator, discrete ones their exact KL and mutual
  information. A latent outside it is global: :func:`diagnose` reports its KL and
  posterior contraction. Point masses (``Delta``) have no density to compare and are
  listed with that reason; ``AutoNormal``'s sites are read through its auxiliary
  distributions.
* Masks (``poutine.mask``, ``.mask(m)``) leave the masked rows out of every estimator
  (the padded steps of a sequence batch). A site whose prior depends on other latents
  (``z_t | z_{t-1}``) is measured in that prior's standardised coordinates, i.e. given
  its parents (see :class:`~pyrocollapse.diagnostics._site_draws.SiteDraw`).
* Programs run in eval mode (dropout off, BatchNorm frozen; modes restored). Programs
  with a plate of fixed size or per-point parameters are diagnosed in one chunk of the
  whole data; programs that do not broadcast over an extra draw dimension run one draw
  at a time where the estimators would vectorise draws.
* Estimators that need the model's density per observation (:func:`iw_log_likelihood`,
  :func:`psis_khat`, :func:`decoder_sensitivity`, :func:`posterior_mean_space`) need every
  model site inside the data plate (no global latent variables); :func:`diagnose`
  records in :attr:`CollapseReport.unavailable` why one could not run instead of
  raising.

Hierarchical models
-------------------
Every metric is computed per latent site. For a site whose prior depends on another
latent (``z ~ p(z | z_top)``) the "prior" of that site is the conditional prior at the
guide's draw of its parents, so its KL is the term the ELBO subtracts,
``E_q[KL(q(z|x, .) || p(z | z_top))]``, and the identity ``KL = I_q(x; z) + marginal KL``
holds with that conditional prior. Likewise, a guide site that depends on another latent
draw is represented by that conditional at one draw. :func:`diagnose` flags such sites
(``SiteReport.conditional_prior``).

Chunking, memory and speed
--------------------------
All estimators run without gradients (except the ``"score"`` decoder sensitivity, which
differentiates with respect to z only) in chunks of ``batch_size`` points. The aggregate
posterior q(z) = (1/N) sum_n q(z | x_n) is evaluated in blocks of at most ``2**18`` pairs,
so memory is O(N * latent_dim) whatever N while the cost stays O(N^2 * num_samples) in
matrix products. Vectorised model runs hold at most ``2**14`` (draws x points) rows.

Devices and reproducibility
---------------------------
Every estimator takes ``device``: ``None`` (default) runs where the data are; a device
(``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`) moves each chunk of
``batch_size`` points there just before it is traced, so the data set itself may stay in
host memory. The model and guide are *not* moved: put their parameters on the device
first (``vae.to("cuda")``). A device this machine lacks raises ``ValueError`` before any
work, and so does a model (a ``PyroModule`` whose bound ``model`` / ``guide`` are passed)
whose parameters sit on another device than the one the chunks go to. Results always
come back on the host, as NumPy arrays, whatever the device. Estimators draw from
torch's global RNG (seed it with ``pyro.set_rng_seed``); :func:`diagnose` seeds it
itself (CPU and, when it runs there, the CUDA device) and restores the previous state.

Submodules
----------
The estimators live in submodules by topic; every public name is importable from here.

* :mod:`~pyrocollapse.diagnostics.kl`: :func:`kl_per_dimension`.
* :mod:`~pyrocollapse.diagnostics.activity`: :func:`active_units`.
* :mod:`~pyrocollapse.diagnostics.aggregate`: the aggregate posterior,
  :func:`mutual_information` and :func:`aggregate_posterior_kl`.
* :mod:`~pyrocollapse.diagnostics.rhat`: :func:`datapoint_rhat`.
* :mod:`~pyrocollapse.diagnostics.densities`: per-dimension densities,
  :func:`marginal_log_prob` and :func:`posterior_densities`.
* :mod:`~pyrocollapse.diagnostics.importance`: :func:`iw_log_likelihood`,
  :func:`psis_khat` and :func:`posterior_mean_space`.
* :mod:`~pyrocollapse.diagnostics.probes`: :func:`decoder_sensitivity`,
  :func:`latent_traversal` and :func:`reconstruction_means`.
* Internal: :mod:`~pyrocollapse.diagnostics._programs` (inputs, devices and seeds,
  tracing the programs on chunks of data), :mod:`~pyrocollapse.diagnostics._site_draws`
  (per-point site densities, :func:`latent_site_names`, :func:`site_draws`,
  :class:`SiteDraw`), :mod:`~pyrocollapse.diagnostics._bootstrap` (bootstrap
  resampling), :mod:`~pyrocollapse.diagnostics._constants` (block sizes and
  tolerances), :mod:`~pyrocollapse.diagnostics._aggregate_posterior` and
  :mod:`~pyrocollapse.diagnostics._mi_totals` (behind
  :mod:`~pyrocollapse.diagnostics.aggregate`).

:func:`diagnose`, which runs them all from one pass over the data, is defined here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.diagnostics._bootstrap import _check_bootstrap
from pyrocollapse.diagnostics._constants import _MEAN_SPACE_POINTS
from pyrocollapse.diagnostics._programs import (
    _check_inputs,
    _chunks,
    _effective_device,
    _latent_names,
    _layout,
    _numpy,
    _observed_names,
    _probe_whole,
    _rows,
    _run,
    _seeded,
    _setup_device,
    eval_mode,
)
from pyrocollapse.diagnostics._site_draws import (
    SiteDraw,
    SiteSkipped,
    _site_draw,
    _site_log_prob,
    latent_site_names,
    site_draws,
)
from pyrocollapse.diagnostics.activity import ActiveUnits, _au_from_draws, active_units
from pyrocollapse.diagnostics.aggregate import (
    MutualInformation,
    _mi_from_draws,
    aggregate_posterior_kl,
    mutual_information,
)
from pyrocollapse.diagnostics.causes import CauseAnalysis, explain_collapse
from pyrocollapse.diagnostics.densities import (
    PosteriorDensities,
    _densities,
    marginal_log_prob,
    posterior_densities,
)
from pyrocollapse.diagnostics.importance import (
    ImportanceWeightedLogLikelihood,
    PosteriorMeanSpace,
    PSISDiagnostic,
    _check_psis_samples,
    _importance_pass,
    iw_log_likelihood,
    posterior_mean_space,
    psis_khat,
)
from pyrocollapse.diagnostics.importance import _psis_khat as _psis_khat  # used by the tests
from pyrocollapse.diagnostics.kl import KLPerDimension, _kl_from_draws, kl_per_dimension
from pyrocollapse.diagnostics.probes import (
    DecoderSensitivity,
    LatentTraversal,
    _sensitivity,
    decoder_sensitivity,
    latent_traversal,
    reconstruction_means,
)
from pyrocollapse.diagnostics.rhat import DatapointRhat, _rhat_from_draws, datapoint_rhat
from pyrocollapse.diagnostics.sites import (
    DiscreteDraw,
    GlobalSite,
    discrete_draw,
    discrete_summary,
    global_summaries,
    site_kinds,
)
from pyrocollapse.program_data import ProgramData

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "ActiveUnits",
    "CauseAnalysis",
    "DatapointRhat",
    "DecoderSensitivity",
    "GlobalSite",
    "ImportanceWeightedLogLikelihood",
    "KLPerDimension",
    "LatentTraversal",
    "MutualInformation",
    "PSISDiagnostic",
    "PosteriorDensities",
    "PosteriorMeanSpace",
    "SiteDraw",
    "SiteSkipped",
    "active_units",
    "aggregate_posterior_kl",
    "datapoint_rhat",
    "decoder_sensitivity",
    "diagnose",
    "explain_collapse",
    "iw_log_likelihood",
    "kl_per_dimension",
    "latent_site_names",
    "latent_traversal",
    "marginal_log_prob",
    "mutual_information",
    "posterior_densities",
    "posterior_mean_space",
    "psis_khat",
    "reconstruction_means",
    "site_draws",
]

#: Every estimator :func:`diagnose` can run.
ESTIMATORS = ("kl", "au", "mi", "rhat", "sensitivity", "psis", "iw", "causes")
#: The ones it runs by default: those that cost about one pass of the guide and model.
DEFAULT_ESTIMATORS = ("kl", "au", "mi", "rhat", "sensitivity")


# --------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------
@dataclass
class _Sweep:
    """One pass of guide and model over the data: draws of the diagnosed sites and the
    per-point sums of the ELBO's terms (every latent site, one draw of z per point).

    Sites are collected over every chunk (a sequence model's chunks may hold different
    time steps); each keeps its own number of rows.
    """

    draws: dict[str, list[SiteDraw]]
    discrete: dict[str, list[DiscreteDraw]]
    kinds: dict[str, str]
    skipped: dict[str, str]
    reconstruction: float
    kl: dict[str, float]
    num_points: int
    conditional_prior: dict[str, bool]
    innovation: dict[str, bool]
    first: Any = None


def _sweep(
    model: Callable,
    guide: Callable,
    x: ProgramData,
    sites: Sequence[str] | None,
    batch_size: int,
    device: torch.device | None,
    *,
    elbo_terms: bool = True,
) -> _Sweep:
    """Trace every chunk once. ``sites=None``: every latent site met (discovery), those
    the estimators do not apply to listed with the reason; else exactly ``sites``, and
    one that cannot be diagnosed raises its reason. ``elbo_terms=False`` skips what
    ``fit``'s monitor does not need: the sums of the ELBO's terms, and the
    ``conditional`` flag of sites whose prior is not a diagonal Normal (``_site_draw``'s
    ``flags``)."""
    from pyrocollapse.diagnostics.sites import data_plate_name
    from pyrocollapse.elbo import PlainELBO, data_plate_frame, latent_term

    draws: dict[str, list[SiteDraw]] = {}
    discrete: dict[str, list[DiscreteDraw]] = {}
    kinds: dict[str, str] = {}
    skipped: dict[str, str] = {}
    conditional: dict[str, bool] = {}
    innovation: dict[str, bool] = {}
    recon, kls = 0.0, {}
    first = None
    points = 0
    elbo_for_sweep = PlainELBO()
    for xb in _chunks(x, batch_size, device):
        first = xb if first is None else first
        with torch.no_grad():
            model_tr, guide_tr = _run(model, guide, xb)
            # rows of the data plate as traced (a subsampling plate traces fewer)
            frame = data_plate_frame(model_tr)
            rows = frame[1] if frame is not None else _rows(xb)
            points += rows
            chunk_kinds = site_kinds(model_tr, guide_tr)
            plate = data_plate_name(model_tr, guide_tr)
            for s, kind in chunk_kinds.items():
                kinds.setdefault(s, kind)
            wanted = list(chunk_kinds) if sites is None else list(sites)
            for s in wanted:
                if s in skipped or (sites is None and chunk_kinds.get(s) == "global"):
                    continue
                if s not in chunk_kinds:
                    continue  # absent from this chunk (missing everywhere: raised below)
                try:
                    if chunk_kinds[s] == "discrete":
                        dd = discrete_draw(model_tr, guide_tr, s, rows)
                        discrete.setdefault(s, []).append(dd)
                        continue
                    d = _site_draw(
                        model_tr, guide_tr, s, rows, flags=elbo_terms, plate=plate
                    )
                except (SiteSkipped, ValueError) as e:
                    if sites is not None:
                        raise
                    skipped[s] = str(e).split("\n")[0]
                    continue
                if d.z.shape[0] == 0:
                    continue  # every row of this chunk masked at this site
                draws.setdefault(s, []).append(d)
                conditional[s] = conditional.get(s, False) or d.conditional
                innovation[s] = innovation.get(s, False) or d.innovation
            if not elbo_terms:
                continue
            model_only = [
                n
                for n, site in model_tr.nodes.items()
                if site["type"] == "sample" and not site["is_observed"] and n not in guide_tr.nodes
            ]
            if model_only:
                # enumerated (or sampled) model-only sites: the ELBO's terms as the
                # objectives compute them, enumerated sites summed out exactly
                with eval_mode(model, guide):
                    ev = elbo_for_sweep.evaluate_eager(model, guide, *xb.args, **xb.kwargs)
                    terms = ev.terms[0]
                recon += float(terms.reconstruction) / _mean_scale(terms)
                for name, term in terms.latent.items():
                    kls[name] = kls.get(name, 0.0) + float(term.total) / _mean_scale(terms)
                continue
            for name in _observed_names(model_tr):
                recon += float(_site_log_prob(model_tr.nodes[name]).sum())
            for name in _latent_names(model_tr, guide_tr):
                term = latent_term(name, guide_tr.nodes[name], model_tr.nodes[name])
                kls[name] = kls.get(name, 0.0) + float(term.kl.sum())
    if sites is not None:
        missing = [s for s in sites if s not in draws and s not in discrete]
        if missing:
            found = [s for s in kinds if s not in missing]
            if any(kinds.get(s) == "global" for s in missing):
                raise ValueError(
                    f"latent site(s) {missing} lie outside the data plate (global latents): "
                    "per-data-point collapse does not apply to them; leave latent_sites=None "
                    "and diagnose() reports their KL and posterior contraction"
                )
            what = (
                f"latent site {missing[0]!r} is not a sample site"
                if len(missing) == 1
                else f"latent sites {', '.join(map(repr, missing))} are not sample sites"
            )
            raise ValueError(
                f"{what} of both guide and model; latent sites found: "
                f"{', '.join(map(repr, found)) or 'none'}"
            )
    return _Sweep(
        draws, discrete, kinds, skipped, recon, kls, points, conditional, innovation, first
    )


def _mean_scale(terms: Any) -> float:
    """The plates' subsampling scale of an evaluation (totals are scaled by it; the sweep
    sums per traced point)."""
    from pyrocollapse.elbo import data_plate_frame

    frame = data_plate_frame(terms.model_trace)
    return 1.0 if frame is None else float(frame[2])


def _check_estimators(estimators: object) -> tuple[str, ...]:
    if isinstance(estimators, str) or not isinstance(estimators, Sequence):
        raise TypeError(
            f"estimators must be a sequence of names such as ('kl', 'au', 'mi'), got {estimators!r}"
        )
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(
            f"unknown estimator(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(ESTIMATORS)}"
        )
    chosen = {"kl", "au", *estimators}
    return tuple(e for e in ESTIMATORS if e in chosen)


def diagnose(
    model: Callable,
    guide: Callable,
    data: Any,
    latent_sites: Sequence[str] | None = None,
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    num_samples: int = 1,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    au_threshold: float = 0.01,
    mi_threshold: float = 0.01,
    info_floor: float = 0.1,
    free_bits: float | None = None,
    history: Any = None,
    setting: dict[str, Any] | None = None,
    bootstrap: int = 0,
    ci_level: float = 0.95,
    rhat_samples: int = 10,
    importance_samples: int = 100,
    sensitivity_method: str = "score",
    per_dim_draws: int | None = 2048,
    max_points: int | None = 5000,
    seed: int | None = 0,
) -> Any:
    """Diagnose posterior collapse of a trained model/guide pair on ``data``.

    One pass of guide and model over the data gives the draws every per-site estimator
    uses (no re-tracing per estimator); the importance-sampling estimators share one
    vectorised pass.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a batch of the data's arguments, ``model(*args, **kwargs)``
        (any Pyro model/guide pair).
    data : torch.Tensor, numpy.ndarray, tuple, list, dict or DataLoader
        Shape ``(N, ...)``, or the programs' arguments: a tuple/list (positional) or dict
        (keyword) whose tensors of shape ``(N, ...)`` are chunked together along dim 0,
        or a loader of such batches (read once, whole); see
        :mod:`pyrocollapse.program_data`.
    latent_sites : sequence of str or None
        Latent sites to diagnose. ``None`` (default): every latent site sampled by guide
        and model, found over all chunks (a sequence model's later time steps
        included): continuous local sites get every estimator, discrete local sites
        their exact KL and mutual information, global sites (outside the data plate)
        their KL and posterior contraction, and sites none of these apply to (a
        point-mass guide) are listed in :attr:`CollapseReport.skipped` with the
        reason. Naming sites diagnoses exactly those and raises the reason for one that
        cannot be diagnosed.
    estimators : sequence of str
        Which of :data:`ESTIMATORS` to run: ``"kl"`` and ``"au"`` (always run: the status
        rule needs them), ``"mi"`` (mutual information and marginal KL),
        ``"rhat"`` (datapoints-as-chains R-hat), ``"sensitivity"`` (decoder
        sensitivity), ``"iw"`` (importance-weighted log-likelihood, inference gap and the
        posterior-mean space), ``"psis"`` (PSIS k-hat per point) and ``"causes"`` (why
        the collapsed sites collapsed and what to try next,
        :func:`~pyrocollapse.diagnostics.causes.explain_collapse`, in
        :attr:`CollapseReport.causes`; about three more passes). The default runs the
        cheap ones; ``"iw"`` and ``"psis"`` cost ``importance_samples`` model passes per
        point.
    num_samples : int
        Draws of z per point for MI, marginal KL, Monte Carlo KLs and the sensitivity
        (MI and marginal KL take more on small data: at least 2048 draws in all).
    batch_size : int
        Points per chunk.
    device : str, torch.device or None
        Device each chunk is moved to (``None``: where the data are); the model and guide
        are not moved, so put them there first (``vae.to(device)``). The report holds
        host (NumPy) values whatever the device.
    au_threshold : float
        Threshold on Cov_x(E_q[z_d]) of Burda et al.'s (2016) active-unit count
        (reported beside the status; it decides the status only where MI is not
        computed).
    mi_threshold : float
        Nats of I_q(x; z_d) at or below which a dimension carries no information
        (collapsed), also when within 2 Monte Carlo standard errors of 0.
    info_floor : float
        Practical floor (nats per point): a dimension carrying measurably more than
        nothing but less than this is ``"near-collapse"``, at or above it ``"active"``.
    free_bits : float or None
        The free-bits floor lambda (nats) of the objective the model was trained with
        (:class:`~pyrocollapse.elbo.FreeBitsELBO`): dimensions whose KL sits on it are
        labelled, since that KL is bought by the floor rather than demanded by the data.
    history : History or None
        :func:`pyrocollapse.fit`'s record, for ``"causes"`` (when the KL fell).
    setting : dict or None
        For ``"causes"``: what the run used (``"model"``, ``"prior"``, ``"elbo"``,
        ``"aggressive"``), to tailor the remedies (see
        :func:`~pyrocollapse.diagnostics.causes.explain_collapse`).
    bootstrap : int
        Bootstrap replicates for intervals on marginal KL and AU (0: none).
    ci_level : float
        Coverage of those intervals.
    rhat_samples : int
        Draws per observation (chain length) for the R-hat.
    importance_samples : int
        Draws per point for ``"iw"`` and ``"psis"`` (>= 50 with ``"psis"``).
    sensitivity_method : {"score", "finite_difference"}
        See :func:`decoder_sensitivity`.
    per_dim_draws : int or None
        Draws used for per-dimension MI (see :func:`mutual_information`).
    max_points : int or None
        Diagnose a random subset of at most this many points (``None``: all).
    seed : int or None
        Seed for the subset and the Monte Carlo draws (the global RNG state is restored).

    Returns
    -------
    CollapseReport
        Per site and dimension: KL, active-unit variance, MI, R-hat, sensitivity and
        status; per-site and overall verdicts; the ELBO decomposition; guide quality.

    Notes
    -----
    The status of dimension d of a site comes from the information it carries,
    I_q(x; z_d) (nats per point), tested against its Monte Carlo standard error and a
    stated practical floor (:data:`pyrocollapse.report.STATUS_RULE`, stated in the report):

    * ``collapsed`` when I_q(x; z_d) <= max(``mi_threshold``, 2 standard errors): z_d
      carries no information about x;
    * ``near-collapse`` when measurably above zero but below ``info_floor``
      (information spread thin);
    * ``active`` at or above ``info_floor``.

    Without ``"mi"`` the KL (an upper bound on I_q) stands in, with the activity
    variance as a second test. The verdict is ``healthy`` (every dimension active),
    ``partial collapse``, ``near collapse`` (none active, some near) or ``full
    collapse`` (every dimension of every site collapsed).

    For its figures the report also keeps the marginal densities of q(z_d | x) for the
    first 5 points and of p(z_d) on 121-point grids, and (with ``"iw"``) the approximate
    and model posterior means of the first 500 points.

    The ELBO decomposition (per point, nats) is ``elbo = reconstruction - kl`` with
    ``kl = sum_site kl/<site>`` and, per site, ``KL = MI + marginal KL`` (Hoffman &
    Johnson 2016); with ``"iw"``, ``log_likelihood`` (IW) and ``inference_gap =
    log_likelihood - elbo``. Guide-only (auxiliary) sites are not counted.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Hoffman & Johnson (2016). ELBO surgery. NIPS AABI Workshop.
    Yao, Vehtari, Simpson, Gelman (2018). Yes, but Did It Work?: Evaluating Variational
    Inference. ICML.
    """
    from pyrocollapse.report import CollapseReport, SiteReport

    x, batch_size = _check_inputs(data, batch_size, model, guide)
    chosen = _check_estimators(estimators)
    dev = _setup_device(model, guide, x, device)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    au_threshold = check_float("au_threshold", au_threshold, minimum=0.0)
    mi_threshold = check_float("mi_threshold", mi_threshold, minimum=0.0)
    info_floor = check_float("info_floor", info_floor, minimum=0.0)
    if info_floor < mi_threshold:
        raise ValueError(
            f"info_floor ({info_floor}) must be at least mi_threshold ({mi_threshold}): a "
            "dimension below the floor but above the threshold is near collapse"
        )
    if free_bits is not None:
        free_bits = check_float("free_bits", free_bits, minimum=0.0)
    bootstrap, ci_level = _check_bootstrap(bootstrap, ci_level)
    rhat_samples = check_int("rhat_samples", rhat_samples, minimum=2)
    importance_samples = (
        _check_psis_samples("importance_samples", importance_samples)
        if "psis" in chosen
        else check_int("importance_samples", importance_samples, minimum=1)
    )
    sensitivity_method = check_choice(
        "sensitivity_method", sensitivity_method, ("score", "finite_difference")
    )
    if per_dim_draws is not None:
        per_dim_draws = check_int("per_dim_draws", per_dim_draws, minimum=2)
    if max_points is not None:
        max_points = check_int("max_points", max_points, minimum=2)
    if latent_sites is not None and (
        isinstance(latent_sites, str) or not all(isinstance(s, str) for s in latent_sites)
    ):
        raise TypeError(
            f"latent_sites must be a sequence of site names, e.g. ('z',); got {latent_sites!r}"
        )
    with _seeded(seed, _effective_device(x, dev)):
        if max_points is not None and x.n > max_points:
            # the subset comes from the CPU generator, the same whatever the device
            x = x.take(torch.randperm(x.n, device="cpu")[:max_points])
        traces, whole = _probe_whole(model, guide, x, dev)
        if whole:
            # a fixed-size plate, per-point parameters or subsampling: one chunk
            batch_size = x.n
        if not _observed_names(traces[0]):
            raise ValueError(
                "the model has no observed site on these arguments, so there is no data to "
                "diagnose collapse against (a CVAE called with ys=None at test time, say). "
                "Pass the arguments under which the model observes the data (e.g. the "
                "(xs, ys) pairs)"
            )
        if latent_sites is not None:
            latent_sites = list(latent_sites)
            if not latent_sites:
                raise ValueError("latent_sites is empty; name at least one latent site")
        layout = _layout(model, guide, x, traces)
        sweep = _sweep(model, guide, x, latent_sites, batch_size, dev)
        unavailable: dict[str, str] = {}
        sites = {}
        continuous = list(sweep.draws)
        with torch.no_grad():
            for site in continuous:
                draws = sweep.draws[site]
                kl = _kl_from_draws(draws, site, max(num_samples, 64))
                au = _au_from_draws(draws, au_threshold, 64, bootstrap, ci_level)
                # small data: more draws per point, so that Monte Carlo error does not
                # hide the information (at least _MI_MIN_DRAWS draws in all)
                n_site = sum(int(d.z.shape[0]) for d in draws)
                mi_samples = max(num_samples, -(-_MI_MIN_DRAWS // max(n_site, 1)))
                mi = (
                    _mi_from_draws(draws, mi_samples, per_dim_draws, bootstrap, ci_level)
                    if "mi" in chosen
                    else None
                )
                rhat = None
                if "rhat" in chosen:
                    try:
                        rhat = _rhat_from_draws(draws, rhat_samples)
                    except _OPTIONAL_ERRORS as e:
                        unavailable[f"R-hat of {site!r}"] = _first_line(e)
                sites[site] = dict(
                    kl=kl,
                    au=au,
                    mi=mi,
                    rhat=rhat,
                    densities=_densities(draws, site),
                )
        for site in continuous:
            sites[site]["sensitivity"] = None
            if "sensitivity" in chosen:
                try:
                    sites[site]["sensitivity"] = _sensitivity(
                        model,
                        guide,
                        x,
                        site,
                        layout,
                        sensitivity_method,
                        num_samples,
                        0.1,
                        None,
                        batch_size,
                        dev,
                    )
                except _OPTIONAL_ERRORS as e:
                    unavailable[f"decoder sensitivity of {site!r}"] = _first_line(e)
        global_names = [s for s, k in sweep.kinds.items() if k == "global"]
        if latent_sites is None:
            global_reports = global_summaries(model, guide, sweep.first, global_names)
        else:
            global_reports = {}
        n = sweep.num_points
        kl_total = sum(total / n for total in sweep.kl.values())
        elbo = {
            "elbo": sweep.reconstruction / n - kl_total,
            "reconstruction": sweep.reconstruction / n,
            "kl": kl_total,
            **{f"kl/{name}": total / n for name, total in sweep.kl.items()},
        }
        guide_quality = None
        res = None
        if "iw" in chosen or "psis" in chosen:
            try:
                res = _importance_pass(
                model,
                guide,
                x,
                importance_samples,
                batch_size,
                dev,
                layout,
                    khat="psis" in chosen,
                    mean_sites=continuous if "iw" in chosen else (),
                    mean_points=_MEAN_SPACE_POINTS,
                )
            except _OPTIONAL_ERRORS as e:
                unavailable["importance sampling (iw, psis)"] = _first_line(e)
        if res is not None:
            if "iw" in chosen:
                elbo["log_likelihood"] = float(res.log_likelihood.mean())
                elbo["log_likelihood_stderr"] = (
                    float(res.log_likelihood.std() / math.sqrt(n)) if n > 1 else math.nan
                )
                elbo["inference_gap"] = elbo["log_likelihood"] - elbo["elbo"]
                for site, (approx, exact) in res.means.items():
                    sites[site]["mean_space"] = PosteriorMeanSpace(
                        _numpy(approx), _numpy(exact), importance_samples
                    )
            if res.khat is not None:
                psis = PSISDiagnostic(_numpy(res.khat), importance_samples)
                guide_quality = {**psis.summary(), "khat": psis.khat}
    reports = {
        site: SiteReport.build(
            site,
            parts["kl"],
            parts["au"],
            parts["mi"],
            mi_threshold=mi_threshold,
            info_floor=info_floor,
            free_bits=free_bits,
            rhat=parts["rhat"],
            sensitivity=parts["sensitivity"],
            densities=parts["densities"],
            mean_space=parts.get("mean_space"),
            conditional_prior=sweep.conditional_prior[site],
            innovation=sweep.innovation[site],
        )
        for site, parts in sites.items()
    }
    for site, ddraws in sweep.discrete.items():
        reports[site] = SiteReport.build_discrete(
            site,
            discrete_summary(ddraws),
            au_threshold=au_threshold,
            mi_threshold=mi_threshold,
            info_floor=info_floor,
        )
    order = list(sweep.kinds) if latent_sites is None else latent_sites
    reports = {s: reports[s] for s in order if s in reports}
    report = CollapseReport(
        sites=reports,
        elbo=elbo,
        num_points=n,
        settings={
            "estimators": list(chosen),
            "au_threshold": au_threshold,
            "mi_threshold": mi_threshold,
            "info_floor": info_floor,
            "free_bits": free_bits,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "whole_data": whole,
            "bootstrap": bootstrap,
            "ci_level": ci_level,
            "rhat_samples": rhat_samples,
            "importance_samples": importance_samples,
            "sensitivity_method": sensitivity_method,
            "per_dim_draws": per_dim_draws,
            "max_points": max_points,
            "seed": seed,
            "device": None if dev is None else str(dev),
        },
        guide_quality=guide_quality,
        global_sites=global_reports,
        skipped=sweep.skipped,
        unavailable=unavailable,
    )
    if "causes" in chosen:
        try:
            report.causes = explain_collapse(
                model,
                guide,
                x,
                report,
                history=history,
                setting=setting,
                importance_samples=max(importance_samples, 2),
                batch_size=batch_size,
                device=dev,
                seed=seed,
            )
        except _OPTIONAL_ERRORS as e:
            unavailable["causes"] = _first_line(e)
    return report


#: Fewest draws of z (over all points) behind the mutual-information estimates: with
#: fewer points than this, each point gets several draws.
_MI_MIN_DRAWS = 2048

#: Errors of an optional estimator that the report records instead of raising.
_OPTIONAL_ERRORS = (ValueError, RuntimeError, IndexError, NotImplementedError, TypeError)


def _first_line(e: BaseException) -> str:
    return str(e).split("\n")[0]
