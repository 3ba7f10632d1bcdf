"""Importance sampling: :func:`iw_log_likelihood`, :func:`psis_khat` and
:func:`posterior_mean_space`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask

from pyrocollapse._validation import check_int
from pyrocollapse.diagnostics._programs import (
    _check_inputs,
    _chunks,
    _effective_device,
    _latent_names,
    _Layout,
    _layout,
    _numpy,
    _probe,
    _rows,
    _run,
    _run_once,
    _sample_sites,
    _setup_device,
    _stack_traces,
    _Stacked,
)
from pyrocollapse.diagnostics._site_draws import _per_point, _site_log_prob
from pyrocollapse.diagnostics.activity import _posterior_mean
from pyrocollapse.program_data import ProgramArgs, ProgramData

# --------------------------------------------------------------------------------------
# Importance sampling: IW log-likelihood, PSIS k-hat, posterior-mean space
# --------------------------------------------------------------------------------------
#: (draws x points) rows per vectorised model run of importance sampling. Measured on
#: the MLP VAE of ``benchmarks/diagnostics.py`` (784-512-512 decoder): runs of about
#: 2**12 rows keep the decoder's output and the likelihood's elementwise passes in cache
#: and cost less per row than runs of 2**14, while Pyro's fixed cost per run (about 2 ms)
#: stays a few per cent of a run.
_IW_ROWS = 2**12
#: The same on accelerators, where a run of 2**12 rows would leave the device idle
#: behind Pyro's fixed cost per run.
_IW_ROWS_ACCELERATOR = 2**14


def _run_plan(num_samples: int, batch_size: int, rows: int | None = None) -> tuple[int, list[int]]:
    """How the ``num_samples`` draws of a chunk's points are split over vectorised runs
    of about ``rows`` (draws x points) rows (default :data:`_IW_ROWS`).

    Returns ``(points, draws)``: data chunks of at most ``points`` points (at most
    ``batch_size``), each run with ``draws[i]`` draws of all its points, ``sum(draws) ==
    num_samples``. All K draws of a point go into one run where ``K * 2 <= rows``, so
    that the guide's networks run once per point rather than once per run; fewer points
    per run is the price, never fewer than 2 (a program may not expect a chunk of one).
    Where K must be split, the runs split it as evenly as possible (5000 draws of 2
    points: three runs of 1667, 1667 and 1666 draws).
    """
    rows = _IW_ROWS if rows is None else rows
    points = max(min(2, batch_size), min(batch_size, rows // num_samples))
    per_run = max(1, rows // points)
    runs = -(-num_samples // per_run)
    base, extra = divmod(num_samples, runs)
    return points, [base + (i < extra) for i in range(runs)]


class _Runner:
    """Vectorised (model, guide) trace pairs of ``draws`` draws on a chunk, no gradients.

    Runs try the vectorised particle plate (:func:`_run`) until one falls back to one
    run per draw, stacked (the programs do not broadcast over the plate); every later run
    then takes that per-draw path at once, not retrying the vectorised run and its error
    each time. :attr:`vectorised` tells which path ran (``True`` also for runs of a
    single draw, where the two paths are the same).
    """

    def __init__(self, model: Callable, guide: Callable, nesting: int) -> None:
        self.model, self.guide, self.nesting = model, guide, nesting
        self.vectorised: bool | None = None  # None: nothing ran yet

    def __call__(self, xb: ProgramArgs, draws: int) -> tuple[Any, Any]:
        with torch.no_grad():
            if self.vectorised is not False or draws == 1:
                traces = _run(self.model, self.guide, xb, particles=draws, nesting=self.nesting)
                if draws > 1:
                    stacked = any(
                        isinstance(site["fn"], _Stacked) for _, site in _sample_sites(traces[0])
                    )
                    self.vectorised = not stacked
                elif self.vectorised is None:
                    self.vectorised = True
                return traces
            runs = [
                _run_once(self.model, self.guide, xb, None, self.nesting, None, None)
                for _ in range(draws)
            ]
        return (
            _stack_traces([r[0] for r in runs], self.nesting),
            _stack_traces([r[1] for r in runs], self.nesting),
        )


def _particle_chunks(
    runner: _Runner,
    x: ProgramData,
    num_samples: int,
    batch_size: int,
    device: torch.device | None,
) -> Iterator[tuple[slice, Iterator[tuple[Any, Any]]]]:
    """Per data chunk, its points and an iterator of vectorised (model, guide) trace
    pairs that together hold ``num_samples`` draws of every point (see :func:`_run_plan`)."""
    where = _effective_device(x, device)
    rows = _IW_ROWS if where.type == "cpu" else _IW_ROWS_ACCELERATOR
    points, draws = _run_plan(num_samples, batch_size, rows)

    def runs(xb: ProgramArgs) -> Iterator[tuple[Any, Any]]:
        for k in draws:
            yield runner(xb, k)

    start = 0
    for xb in _chunks(x, points, device):
        rows = _rows(xb)
        yield slice(start, start + rows), runs(xb)
        start += rows


def _bernoulli_log_prob(site: dict[str, Any]) -> torch.Tensor | None:
    """The log density of a ``Bernoulli(logits=l).to_event(r)`` site whose value has the
    logits' event shape, ``sum_f x_f l_f - softplus(l_f)`` (mask applied), else ``None``.

    As :func:`pyrocollapse.diagnostics._site_draws._log_prob`'s fused form, with the data
    term as an elementwise product and sum: with draws (K, B, F) against data (B, F) the
    broadcast ``einsum`` there becomes K * B tiny matrix-vector products, measured four
    times slower on CPU (3.7 ms against 0.95 ms for 100 x 40 x 784; a run's whole data
    term is then about 1 % of its decoder pass rather than 5 %).
    """
    fn = site["fn"]
    base = fn.base_dist if isinstance(fn, dist.Independent) else None
    if type(base) is not dist.Bernoulli or "logits" not in base.__dict__:
        return None
    r = fn.reinterpreted_batch_ndims
    logits = base.logits
    value = site["value"].to(logits.dtype)
    if value.dim() < r or tuple(value.shape[-r:]) != tuple(logits.shape[-r:]):
        return None
    lf, vf = logits.flatten(-r), value.flatten(-r) if value.dim() > r else value.reshape(-1)
    lp = (lf * vf).sum(-1) - torch.nn.functional.softplus(lf).sum(-1)
    if site["mask"] is not None:
        lp = scale_and_mask(lp, mask=site["mask"])
    return lp


def _log_weights(model_tr: Any, guide_tr: Any, layout: _Layout) -> torch.Tensor:
    """log p(x_n, z) - log q(z | x_n) per particle and point, shape ``(P, B)``."""
    total = 0.0
    for sign, tr in ((1.0, model_tr), (-1.0, guide_tr)):
        for _, site in _sample_sites(tr):
            lp = _bernoulli_log_prob(site) if site["is_observed"] else None
            lp = _site_log_prob(site) if lp is None else lp
            total = total + sign * _per_point(lp, site, layout, particles=True)
    return total  # type: ignore[return-value]


@dataclass
class ImportanceWeightedLogLikelihood:
    """The importance-weighted estimate of log p(x) (Burda et al. 2016).

    Attributes
    ----------
    per_point : numpy.ndarray
        Shape ``(N,)``: ``log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n)``, nats.
    elbo_per_point : numpy.ndarray
        Shape ``(N,)``: the mean of the K log weights, an ELBO estimate from the same draws.
    num_samples : int
        K, draws per point.
    vectorised : bool
        Which path ran: ``True``, the K draws of a chunk's points in vectorised runs (a
        particle plate left of the programs' plates); ``False``, one run of the programs
        per draw, stacked (programs that do not broadcast over a leading draw dimension:
        boolean-mask indexing, reshapes of the batch, a fixed-size plate). Same estimate,
        up to K times slower.
    """

    per_point: np.ndarray
    elbo_per_point: np.ndarray
    num_samples: int
    vectorised: bool = True

    @property
    def mean(self) -> float:
        """Average IW log-likelihood per point (nats)."""
        return float(self.per_point.mean())

    @property
    def elbo(self) -> float:
        """Average ELBO per point from the same draws (nats)."""
        return float(self.elbo_per_point.mean())

    @property
    def gap(self) -> float:
        """IW bound minus ELBO: a lower bound on the average KL(q(z|x) || p(z|x))."""
        return self.mean - self.elbo

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over data points."""
        n = len(self.per_point)
        return float(self.per_point.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


@dataclass
class PSISDiagnostic:
    """Pareto-smoothed importance sampling k-hat of the guide, per data point.

    Attributes
    ----------
    khat : numpy.ndarray
        Shape ``(N,)``. Below 0.5: q(z|x_n) is a good importance proposal for p(z|x_n);
        up to :attr:`threshold`: usable; above: poor (Yao et al. 2018; Vehtari et al.
        2024). ``-inf`` where the largest weights are all equal (a guide equal to the
        posterior there: the weights have no tail to smooth); ``inf`` where fewer than 10
        distinct tail weights were left to fit.
    num_samples : int
        Draws per point, S.

    References
    ----------
    Vehtari, Simpson, Gelman, Yao, Gabry (2024). Pareto Smoothed Importance Sampling.
    JMLR 25 (the sample-size-dependent threshold).
    """

    khat: np.ndarray
    num_samples: int

    @property
    def threshold(self) -> float:
        """``min(1 - 1 / log10(S), 0.7)``: the k-hat above which S draws cannot give a
        reliable estimate (ArviZ's rule; 0.5 for S = 100, 0.7 from S = 2154)."""
        s = max(self.num_samples, 2)
        return float(min(1.0 - 1.0 / math.log10(s), 0.7)) if s > 10 else 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.khat))

    @property
    def max(self) -> float:
        return float(np.max(self.khat))

    def fraction_above(self, threshold: float = 0.7) -> float:
        """Fraction of points whose k-hat exceeds ``threshold``."""
        return float(np.mean(self.khat > threshold))

    def summary(self) -> dict[str, float]:
        """Mean, median, max, the fractions above 0.5 and 0.7, and the sample-size
        threshold with the fraction above it."""
        return {
            "mean": self.mean,
            "median": float(np.median(self.khat)),
            "max": self.max,
            "fraction_above_0.5": self.fraction_above(0.5),
            "fraction_above_0.7": self.fraction_above(0.7),
            "threshold": self.threshold,
            "fraction_above_threshold": self.fraction_above(self.threshold),
            "num_samples": float(self.num_samples),
        }


@dataclass
class PosteriorMeanSpace:
    """Approximate vs model posterior means per point (He et al. 2019, Fig. 1).

    Attributes
    ----------
    approximate : numpy.ndarray
        Shape ``(N, D)``: E_q[z | x_n].
    model : numpy.ndarray
        Shape ``(N, D)``: E_{p(z|x_n)}[z] by self-normalised importance sampling with q as
        proposal (consistent in the number of draws; trust it where PSIS k-hat < 0.7).
    num_samples : int
        Draws per point.
    """

    approximate: np.ndarray
    model: np.ndarray
    num_samples: int


def _psis_khat(log_w: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Pareto k-hat of each column of log weights ``(K, B)``, shape ``(B,)``.

    Row-batched version of :func:`pyro.infer.importance.psis_diagnostic`'s tail fit
    (same tail, cutoff and :func:`pyro.ops.stats.fit_generalized_pareto` estimator).
    A column whose tail weights all equal the cutoff weight up to rounding (``eps``: the
    machine epsilon of the dtype the weights were computed in; default ``log_w``'s) (constant log weights, as with a guide equal to the posterior) has
    no tail: ``-inf``, not the ``inf`` of a tail too short to fit.
    """
    lw = log_w.double().T  # (B, K)
    # differences below the rounding error of the weights' dtype are ties, not a tail
    eps = torch.finfo(log_w.dtype).eps if eps is None else eps
    tol = 64 * eps * (1.0 + lw.abs().amax(1))
    lw = (lw - lw.amax(1, keepdim=True)).sort(1).values
    k = lw.shape[1]
    tail_len = math.ceil(min(0.2 * k, 3.0 * math.sqrt(k)))
    cutoff = lw[:, -tail_len - 1].clamp_min(math.log(1.0e-15))
    tail = lw[:, -tail_len:]
    valid = tail > cutoff[:, None]
    n = valid.sum(1)
    x = torch.where(valid, tail.exp() - cutoff.exp()[:, None], 0.0)
    khat = _fit_generalized_pareto_k(x, valid, n)
    flat = (lw[:, -1] - lw[:, -tail_len - 1]) <= tol
    short = torch.where(flat, -math.inf, math.inf).to(khat.dtype)
    return torch.where(n >= 10, khat, short)


def _fit_generalized_pareto_k(
    x: torch.Tensor, valid: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """Zhang & Stephens (2009) estimate of the GPD shape k with Vehtari et al.'s prior,
    for each row of ``x`` ``(B, T)`` whose valid entries (a right-aligned, ascending block
    of length ``n``) are the data; as :func:`pyro.ops.stats.fit_generalized_pareto`."""
    t = x.shape[1]
    nf = n.double().clamp_min(1)
    m = 30 + n.double().clamp_min(1).sqrt().floor()  # grid size per row
    j = torch.arange(1, 30 + int(math.sqrt(t)) + 1, dtype=torch.float64, device=x.device)
    grid = j[None, :] <= m[:, None]  # (B, M)
    quartile = (t - n) + torch.floor(nf / 4 - 0.5).long().clamp_min(0)
    x_q = x.gather(1, quartile.clamp_max(t - 1)[:, None]).squeeze(1)
    bs = 1.0 - m[:, None].sqrt() / (j[None, :] - 0.5).sqrt()
    bs = bs / (3.0 * x_q[:, None]) + 1.0 / x[:, -1:]
    logs = torch.log1p(-bs[:, :, None] * x[:, None, :])  # (B, M, T)
    ks = torch.where(valid[:, None, :], logs, 0.0).sum(2) / nf[:, None]
    ls = nf[:, None] * (torch.log(-bs / ks) - (ks + 1.0))
    ls = torch.where(grid, ls, -math.inf)
    diff = ls[:, None, :] - ls[:, :, None]  # [i, j] = L_j - L_i
    weights = torch.where(grid, 1.0 / diff.exp().sum(2), 0.0)
    weights = torch.where(weights > 1.0e-30, weights, 0.0)
    weights = weights / weights.sum(1, keepdim=True)
    b = (torch.where(grid, bs, 0.0) * weights).sum(1)
    k = torch.where(valid, torch.log1p(-b[:, None] * x), 0.0).sum(1) / nf
    return k * nf / (nf + 10.0) + 5.0 / (nf + 10.0)


@dataclass
class _ImportancePass:
    log_likelihood: torch.Tensor  # (N,)
    elbo: torch.Tensor  # (N,)
    khat: torch.Tensor | None  # (N,)
    means: dict[str, tuple[torch.Tensor, torch.Tensor]]  # site -> (approx (N, D), model (N, D))
    vectorised: bool = True  # False: the per-draw path ran (see _Runner)


@torch.no_grad()
def _importance_pass(
    model: Callable,
    guide: Callable,
    x: ProgramData,
    num_samples: int,
    batch_size: int,
    device: torch.device | None,
    layout: _Layout,
    *,
    khat: bool = False,
    mean_sites: Sequence[str] = (),
    mean_points: int | None = None,
) -> _ImportancePass:
    """One vectorised importance-sampling pass: per point the IW log-likelihood, the mean
    log weight, optionally PSIS k-hat and self-normalised posterior means of some sites
    (for the first ``mean_points`` points). No gradients: the programs run and their
    densities are evaluated under :func:`torch.no_grad`."""
    ll, el, kh = [], [], []
    sums: dict[str, list[list[torch.Tensor]]] = {s: [[], []] for s in mean_sites}
    runner = _Runner(model, guide, layout.nesting)
    for points, runs in _particle_chunks(runner, x, num_samples, batch_size, device):
        want_means = mean_sites and (mean_points is None or points.start < mean_points)
        lws, m = [], None
        acc: dict[str, list[torch.Tensor]] = {}
        for model_tr, guide_tr in runs:
            raw = _log_weights(model_tr, guide_tr, layout)
            eps = torch.finfo(raw.dtype).eps if raw.is_floating_point() else None
            lw = raw.double()  # (k, B)
            lws.append(lw)
            if not want_means:
                continue
            mb = lw.amax(0)
            mn = mb if m is None else torch.maximum(m, mb)
            w = (lw - mn).exp()  # (k, B)
            for s in mean_sites:
                site = guide_tr.nodes[s]
                z = site["value"].double()
                qmean = _posterior_mean(site["fn"], 16)[0].double().expand_as(z)
                new = [w.sum(0), (w[..., None] * z).sum(0), qmean.sum(0)]
                if s in acc:
                    scale = (m - mn).exp()  # type: ignore[operator]
                    acc[s] = [
                        acc[s][0] * scale + new[0],
                        acc[s][1] * scale[:, None] + new[1],
                        acc[s][2] + new[2],
                    ]
                else:
                    acc[s] = new
            m = mn
        lw = torch.cat(lws)  # (K, B)
        ll.append(torch.logsumexp(lw, 0) - math.log(num_samples))
        el.append(lw.mean(0))
        if khat:
            kh.append(_psis_khat(lw, eps))
        for s, (sw, swz, sq) in acc.items():
            sums[s][0].append(sq / num_samples)
            sums[s][1].append(swz / sw[:, None])
    means = {}
    for s, (approx, exact) in sums.items():
        a, e = torch.cat(approx), torch.cat(exact)
        if mean_points is not None:
            a, e = a[:mean_points], e[:mean_points]
        means[s] = (a, e)
    return _ImportancePass(
        torch.cat(ll),
        torch.cat(el),
        torch.cat(kh) if khat else None,
        means,
        runner.vectorised is not False,
    )


def _importance_setup(
    model: Callable, guide: Callable, data: object, batch_size: object, device: object
) -> tuple[ProgramData, int, torch.device | None, _Layout]:
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    device = _setup_device(model, guide, x, device)
    return x, batch_size, device, _layout(model, guide, x, _probe(model, guide, x, device))


def iw_log_likelihood(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    num_samples: int = 100,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> ImportanceWeightedLogLikelihood:
    """The importance-weighted estimate of log p(x) with the guide as proposal.

    ``log p(x_n) ~ log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n)``, z_k ~ q(z | x_n): a lower
    bound in expectation that increases with K and converges to log p(x_n) (Burda et al.
    2016). Every latent site of the programs is sampled jointly (hierarchical models
    included) and every model site must lie in the data plate. Runs chunked over data
    and draws: each vectorised run of the programs holds all K draws of
    ``max(2, 4096 // K)`` points (at most ``batch_size``; K is split over several runs
    only where ``2 * K > 4096``), about ``2**12`` (draws x points) rows (``2**14`` on an
    accelerator); its cost is that of
    ``N * K`` decoder passes and ``N`` encoder passes (``benchmarks/diagnostics.py``:
    within 1.3x of the bare decoder passes over the same draws). Programs that do not
    broadcast over a leading draw dimension run once per draw instead (same estimate,
    slower); the result's ``vectorised`` says which path ran.

    Parameters
    ----------
    model, guide, data, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        K, draws per point.

    Returns
    -------
    ImportanceWeightedLogLikelihood
        Per-point estimates (nats) and the ELBO from the same draws.

    References
    ----------
    Burda, Grosse, Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    x, batch_size, device, layout = _importance_setup(model, guide, data, batch_size, device)
    res = _importance_pass(model, guide, x, num_samples, batch_size, device, layout)
    return ImportanceWeightedLogLikelihood(
        _numpy(res.log_likelihood), _numpy(res.elbo), num_samples, res.vectorised
    )


def _check_psis_samples(name: str, num_samples: object) -> int:
    num_samples = check_int(name, num_samples, minimum=1)
    if num_samples < 50:
        raise ValueError(
            f"{name} must be >= 50 for PSIS k-hat (the Pareto tail needs at least 10 of the "
            f"largest weights), got {num_samples}"
        )
    return num_samples


def psis_khat(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    num_samples: int = 200,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> PSISDiagnostic:
    """Pareto-smoothed importance sampling k-hat of q(z | x_n) against p(z | x_n), per point.

    For each observation the log importance weights ``log p(x_n, z_k) - log q(z_k | x_n)``
    of ``num_samples`` draws are computed in one vectorised pass (no Python loop over
    points), and the generalised-Pareto shape k of their upper tail is fitted as
    :func:`pyro.infer.importance.psis_diagnostic` does for a whole data set, row-batched.
    A high k-hat says the guide is a poor approximation of that point's posterior, so a
    dimension that looks collapsed there may reflect the guide, not the model.

    Parameters
    ----------
    model, guide, data, batch_size, device :
        As for :func:`kl_per_dimension`.
    num_samples : int
        Draws per point (>= 50; Pyro's default for the whole-data diagnostic is 1000).

    Returns
    -------
    PSISDiagnostic

    References
    ----------
    Yao, Vehtari, Simpson, Gelman (2018). Yes, but Did It Work?: Evaluating Variational
    Inference. ICML.
    Vehtari, Simpson, Gelman, Yao, Gabry (2024). Pareto Smoothed Importance Sampling. JMLR.
    Zhang & Stephens (2009). A new and efficient estimation method for the generalized
    Pareto distribution. Technometrics.
    """
    num_samples = _check_psis_samples("num_samples", num_samples)
    x, batch_size, device, layout = _importance_setup(model, guide, data, batch_size, device)
    res = _importance_pass(model, guide, x, num_samples, batch_size, device, layout, khat=True)
    return PSISDiagnostic(_numpy(res.khat), num_samples)  # type: ignore[arg-type]


def posterior_mean_space(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    num_samples: int = 100,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> PosteriorMeanSpace:
    """Approximate posterior mean E_q[z|x] against the model posterior mean E_p[z|x].

    The model posterior mean is the self-normalised importance-sampling estimate
    ``sum_k w_k z_k / sum_k w_k`` with q as proposal, from the draws of
    :func:`iw_log_likelihood`. In the "posterior mean space" plot of He et al. (2019), a
    lagging inference network shows points off the diagonal with E_q near 0 while E_p
    varies; collapse shows every point at the prior's mean.

    Returns
    -------
    PosteriorMeanSpace
        Shapes ``(N, D)``, units of z.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    device = _setup_device(model, guide, x, device)
    traces = _probe(model, guide, x, device)
    names = _latent_names(*traces)
    if site not in names:
        raise ValueError(
            f"site must be a latent site of both guide and model, got {site!r}; "
            f"latent sites found: {', '.join(map(repr, names)) or 'none'}"
        )
    layout = _layout(model, guide, x, traces)
    res = _importance_pass(
        model, guide, x, num_samples, batch_size, device, layout, mean_sites=(site,)
    )
    approx, exact = res.means[site]
    return PosteriorMeanSpace(_numpy(approx), _numpy(exact), num_samples)
