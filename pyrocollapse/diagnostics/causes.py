"""Why did it collapse, and what to try next: :func:`explain_collapse`.

For the collapsed and near-collapsed sites of a :class:`~pyrocollapse.report.CollapseReport`
this module measures the evidence for each cause of posterior collapse the literature
names, ranks the causes and turns them into concrete remedies (command-line flags and
Python calls, and a :func:`pyrocollapse.comparison.compare` grid).

The causes and what is measured (all in nats per data point unless stated):

``decoder capacity``
    The likelihood explains x without z (autoregressive decoders, strong conditioning
    inputs). *Context gain*: E log p(x | z, own inputs) - E log p(x | z, another point's
    inputs), z ~ q(z|x) held fixed: what the decoder takes from the program's non-latent
    inputs (teacher-forced previous tokens or pixels, a CVAE's conditioning x). *Latent
    gain*: E log p(x | z ~ q(z|x)) - E log p(x | z ~ q(z|x')), with x' another point:
    what it takes from the point's own z. Score: context / (context + latent gain), 0
    when the context gain is below the floor (a plain VAE decoder reads no input).
``prior mismatch``
    The prior does not fit the data's latent structure, so information costs more KL
    than it must. *Marginal KL* KL(q(z) || p(z)) against MI (ELBO surgery, Hoffman &
    Johnson 2016) and the *richer-prior gain*: E_{q(z)}[log r(z) - log p(z)] on held-out
    draws of the aggregate posterior, r a Gaussian mixture fitted to the other half: the
    ELBO a prior fitted to q(z) would add with encoder and decoder unchanged. Score: the
    gain as a share of the site's KL (0 for a gain under 0.05 nats).
``training dynamics``
    The encoder lags the model's posterior (He et al. 2019): the decoder uses z but
    q(z|x) has not followed. *Posterior-mean lag* per dimension: (Var_x E_p[z_d|x] -
    Var_x E_q[z_d|x]) / Var(z_d), the model posterior's means by self-normalised
    importance sampling with the guide as proposal, over the aggregate variance of
    z_d; plus the inference gap (IW log-likelihood - ELBO) and, with a training
    history, the KL the collapsed dimensions carried at their peak and the epoch it
    fell (reported, not scored: a KL that rose and then fell happens under every
    cause). Score: the mean lag over the collapsed and near-collapsed dimensions.

Scores lie in [0, 1] and are comparable as "share of the evidence"; the ranking is by
score, and a cause under :data:`EVIDENCE_FLOOR` is listed but not suggested.

References
----------
Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio (2016). Generating Sentences from a
Continuous Space. CoNLL (decoder capacity, word dropout, KL annealing).
Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever, Abbeel (2017). Variational
Lossy Autoencoder. ICLR (autoregressive decoders explain x without z).
Hoffman & Johnson (2016). ELBO surgery. NIPS AABI Workshop (marginal KL vs MI).
Tomczak & Welling (2018). VAE with a VampPrior. AISTATS (richer priors).
He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and Posterior
Collapse in Variational Autoencoders. ICLR (training dynamics, aggressive training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pyro import poutine

from pyrocollapse._distributions import strip_mask
from pyrocollapse._records import (
    CAUSES,
    DECODER,
    DYNAMICS,
    EVIDENCE_FLOOR,
    PRIOR,
    UNCLEAR,
    Cause,
    CauseAnalysis,
    Remedy,
)
from pyrocollapse.diagnostics._programs import (
    _check_inputs,
    _chunks,
    _numpy,
    _observed_names,
    _seeded,
    _setup_device,
    eval_mode,
)
from pyrocollapse.diagnostics._site_draws import site_draws

__all__ = ["CAUSES", "EVIDENCE_FLOOR", "Cause", "CauseAnalysis", "Remedy", "explain_collapse"]

#: Nats per point under which a richer prior's gain counts as none.
_GAIN_FLOOR = 0.05
#: Nats per point under which a context gain counts as none.
_CONTEXT_FLOOR = 0.1


def _observed_log_lik(own_tr: Any, other_tr: Any = None) -> float:
    """Sum over the observed sites of log p(value) (masks of ``own_tr``), the densities
    taken from ``other_tr``'s sites where given (same names, same shapes)."""
    total = 0.0
    for name in _observed_names(own_tr):
        site = own_tr.nodes[name]
        own_fn, own_mask = strip_mask(site["fn"])
        fn = own_fn if other_tr is None else strip_mask(other_tr.nodes[name]["fn"])[0]
        lp = fn.log_prob(site["value"])
        for m in (own_mask, site["mask"]):
            if m is not None:
                lp = torch.where(torch.as_tensor(m, device=lp.device).expand_as(lp), lp, 0.0)
        total += float(lp.double().sum())
    return total


def _gains(
    model: Callable, guide: Callable, x: Any, batch_size: int, device: Any, draws: int
) -> dict[str, float]:
    """Context and latent gains (nats per point), see the module docstring."""
    perm = torch.randperm(x.n, device="cpu")
    xp = x.take(perm)
    own = ctx = zsh = 0.0
    with torch.no_grad(), poutine.block(), eval_mode(model, guide):
        for _ in range(draws):
            for xb, xbp in zip(_chunks(x, batch_size, device), _chunks(xp, batch_size, device)):
                g = poutine.trace(guide).get_trace(*xb.args, **xb.kwargs)
                m = poutine.trace(poutine.replay(model, trace=g)).get_trace(*xb.args, **xb.kwargs)
                # same z, another point's inputs (teacher forcing, conditioning x)
                mc = poutine.trace(poutine.replay(model, trace=g)).get_trace(
                    *xbp.args, **xbp.kwargs
                )
                # the point's own inputs, another point's z
                gp = poutine.trace(guide).get_trace(*xbp.args, **xbp.kwargs)
                mz = poutine.trace(poutine.replay(model, trace=gp)).get_trace(
                    *xb.args, **xb.kwargs
                )
                own += _observed_log_lik(m)
                ctx += _observed_log_lik(m, mc)
                zsh += _observed_log_lik(mz)
    n = x.n * draws
    return {"context_gain": (own - ctx) / n, "latent_gain": (own - zsh) / n}


def _richer_prior_gain(
    model: Callable, guide: Callable, x: Any, site: str, batch_size: int, device: Any
) -> dict[str, float]:
    """ELBO gain (nats per point) of a Gaussian and of a Gaussian-mixture prior fitted to
    one half of the aggregate posterior's draws, measured on the other half."""
    from sklearn.mixture import GaussianMixture

    zs, lps = [], []
    # no_grad: a learnable prior's (or guide's) parameters would make log p(z) require grad
    with torch.no_grad():
        for d in site_draws(model, guide, x, site, batch_size, device=device):
            if d.conditional and not d.innovation:
                raise NotImplementedError(
                    f"site {site!r} has a conditional prior that is not a diagonal Normal, so "
                    "a prior fitted to q(z) is not comparable with it"
                )
            z = d.q.sample((4,))  # (4, B, D)
            zs.append(z.reshape(-1, z.shape[-1]))
            lps.append(d.p.log_prob(z).expand(z.shape[:-1]).reshape(-1))
    z = torch.cat(zs).double().cpu().numpy()
    lp = torch.cat(lps).double().cpu().numpy()
    n = len(z)
    if n < 40:
        raise ValueError(f"{n} draws of {site!r} are too few to fit a prior to q(z)")
    order = np.random.default_rng(0).permutation(n)
    fit_rows, test_rows = order[: n // 2], order[n // 2 :]
    out = {}
    best = -math.inf
    for k in (1, 2, 4, 8, 16):
        if k > 1 and k * 20 > len(fit_rows):
            break
        gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=0)
        gm.fit(z[fit_rows])
        gain = float(np.mean(gm.score_samples(z[test_rows]) - lp[test_rows]))
        if k == 1:
            out["gaussian_prior_gain"] = gain
        if gain > best:
            best, out["mixture_components"] = gain, k
    out["mixture_prior_gain"] = best
    return out


def _posterior_lag(
    model: Callable,
    guide: Callable,
    x: Any,
    site: str,
    dims: np.ndarray,
    batch_size: int,
    device: Any,
    samples: int,
    mean_space: Any,
) -> dict[str, Any]:
    """(Var_x E_p[z_d|x] - Var_x E_q[z_d|x]) / Var(z_d) for the dimensions ``dims``."""
    from pyrocollapse.diagnostics._programs import _layout
    from pyrocollapse.diagnostics.importance import _importance_pass

    if mean_space is None:
        layout = _layout(model, guide, x)
        res = _importance_pass(
            model,
            guide,
            x,
            samples,
            batch_size,
            device,
            layout,
            mean_sites=(site,),
            mean_points=500,
        )
        approx, exact = (_numpy(t) for t in res.means[site])
    else:
        approx, exact = np.asarray(mean_space["approximate"]), np.asarray(mean_space["model"])
    # aggregate variance of z_d in the same (raw) coordinates as the means
    with torch.no_grad(), poutine.block(), eval_mode(model, guide):
        vals = []
        for xb in _chunks(x, batch_size, device):
            g = poutine.trace(guide).get_trace(*xb.args, **xb.kwargs)
            v = g.nodes[site]["value"].detach().double()
            vals.append(v.reshape(-1, v.shape[-1]) if v.dim() > 1 else v.reshape(-1, 1))
        total = torch.cat(vals).var(0).cpu().numpy()
    approx = approx.reshape(len(approx), -1)
    exact = exact.reshape(len(exact), -1)
    lag = (exact.var(0) - approx.var(0)) / np.maximum(total, 1e-12)
    lag = np.clip(lag, 0.0, 1.0)
    return {"posterior_mean_lag": lag[dims].tolist(), "lag_dims": dims.tolist()}


def _kl_fall(history: Any, site: str, dims: np.ndarray, floor: float) -> dict[str, Any]:
    """Peak KL of the collapsed dimensions over training and the epoch it fell below
    ``floor`` (``None``: it never rose above it)."""
    mat = history.kl_matrix(site)[dims]  # (len(dims), epochs)
    total = mat.sum(0)
    peak = int(np.argmax(total))
    used = bool(total[peak] >= floor * len(dims))  # z carried information at its peak
    below = np.flatnonzero(total[peak:] < floor * len(dims))
    return {
        "kl_fall": float(1.0 - total[-1] / total[peak]) if used else 0.0,
        "kl_peak": float(total[peak]),
        "kl_peak_epoch": peak + 1,
        "kl_fell_epoch": int(peak + below[0] + 1) if used and len(below) else None,
    }


# --------------------------------------------------------------------------------------
# Remedies
# --------------------------------------------------------------------------------------
def _remedies(cause: str, measurements: dict[str, Any], setting: dict[str, Any]) -> list[Remedy]:
    model_name = setting.get("model")
    if cause == DECODER:
        weaker = {
            "sequence": (
                "word dropout on the decoder's inputs, so that it must read z (Bowman et al. 2016)",
                "--model-option word_dropout=0.5",
                "SequenceVAE(vocab_size, latent_dim, word_dropout=0.5)",
                {"run_options": {"model_options": {"word_dropout": 0.5}}},
            ),
            "conv": (
                "drop the autoregressive (PixelCNN) head, or shrink it (Chen et al. 2017)",
                "--model-option autoregressive=false",
                "ConvVAE(image_shape, latent_dim, autoregressive=False)",
                {"run_options": {"model_options": {"autoregressive": False}}},
            ),
        }.get(
            model_name or "",
            (
                "a weaker decoder: fewer or narrower layers, or less of the input fed to it "
                "(Chen et al. 2017)",
                "--model-option decoder_hidden=64",
                "MLPVAE(input_dim, latent_dim, decoder_hidden=(64,))",
                {"run_options": {"model_options": {"decoder_hidden": [64]}}},
            ),
        )
        return [
            Remedy(DECODER, *weaker),
            Remedy(
                DECODER,
                "free bits: KL below lambda nats per dimension is not penalised, so z is "
                "worth using (Kingma et al. 2016)",
                "--elbo freebits --elbo-option free_bits=0.5",
                "FreeBitsELBO(free_bits=0.5)",
                {"elbo": "freebits", "elbo_options": {"free_bits": 0.5}},
            ),
            Remedy(
                DECODER,
                "reward information: an auxiliary I_q(x; z) term (Zhao et al. 2019)",
                "--elbo mi --elbo-option alpha=1.0",
                "MIRegularizedELBO(alpha=1.0)",
                {"elbo": "mi", "elbo_options": {"alpha": 1.0}},
            ),
        ]
    if cause == PRIOR:
        gains = {
            key.split("/", 1)[1]: v
            for key, v in measurements.items()
            if key.startswith("mixture_prior_gain/")
        }
        best = max(gains, key=gains.get) if gains else None
        gain = gains.get(best, math.nan) if best else math.nan
        k = max(int(measurements.get(f"mixture_components/{best}", 10) or 10), 2)
        return [
            Remedy(
                PRIOR,
                f"a mixture prior with {k} components, learnt with the model (one fitted "
                f"to q(z) afterwards would already add {gain:.2f} nats of ELBO)",
                f"--prior mixture --prior-option n_components={k}",
                f"MixturePrior(latent_dim, n_components={k})",
                {"prior": "mixture", "prior_options": {"n_components": k}},
            ),
            Remedy(
                PRIOR,
                "a VampPrior: the mixture of the encoder's posteriors at learnt pseudo-inputs "
                "(Tomczak & Welling 2018)",
                "--prior vamp --prior-option n_pseudo=50",
                "VampPrior(vae.encode, n_pseudo=50, input_shape=x.shape[1:], latent_dim=latent_dim)",
                {"prior": "vamp", "prior_options": {"n_pseudo": 50}},
            ),
        ]
    if cause == UNCLEAR:
        unclear = [
            r
            for r in _remedies(DYNAMICS, {}, setting)
            if r.grid.get("elbo") == "freebits" or r.grid.get("run_options", {}).get("aggressive")
        ] + [r for r in _remedies(DECODER, {}, setting) if r.grid.get("elbo") == "mi"]
        return [Remedy(UNCLEAR, r.action, r.cli, r.python, r.grid) for r in unclear]
    out = []
    if not setting.get("aggressive"):
        out.append(
            Remedy(
                DYNAMICS,
                "aggressive inference-network training: inner encoder steps until MI stops "
                "rising (He et al. 2019)",
                "--aggressive",
                "fit(model, guide, data, loss=..., epochs=..., aggressive=True)",
                {"run_options": {"aggressive": True}},
            )
        )
    if setting.get("elbo") == "annealed":
        out.append(
            Remedy(
                DYNAMICS,
                "a longer KL warm-up, or cyclical annealing that lets the encoder catch up "
                "again (Fu et al. 2019)",
                "--elbo annealed --schedule cyclical",
                "AnnealedELBO(schedule=Cyclical(period=steps_per_run, n_cycles=4))",
                {"elbo": "annealed", "elbo_options": {}, "run_options": {"schedule": "cyclical"}},
            )
        )
    else:
        out.append(
            Remedy(
                DYNAMICS,
                "KL annealing: the KL weight rises from 0 so that the encoder learns before "
                "the prior pulls it back (Bowman et al. 2016)",
                "--elbo annealed",
                "AnnealedELBO(schedule=Linear(warmup_steps=...))",
                {"elbo": "annealed", "elbo_options": {}},
            )
        )
    out.append(
        Remedy(
            DYNAMICS,
            "free bits, so that the first nats of KL per dimension cost nothing while the "
            "encoder learns (Kingma et al. 2016)",
            "--elbo freebits --elbo-option free_bits=0.5",
            "FreeBitsELBO(free_bits=0.5)",
            {"elbo": "freebits", "elbo_options": {"free_bits": 0.5}},
        )
    )
    return out


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def explain_collapse(
    model: Callable,
    guide: Callable,
    data: Any,
    report: Any,
    *,
    history: Any = None,
    setting: dict[str, Any] | None = None,
    draws: int = 2,
    importance_samples: int = 100,
    batch_size: int = 256,
    max_points: int | None = 1000,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> CauseAnalysis:
    """Measure the evidence for each cause of the collapse in ``report`` and suggest
    remedies (see the module docstring for the measurements and scores).

    Parameters
    ----------
    model, guide, data :
        As for :func:`pyrocollapse.diagnose` (the pair and data ``report`` came from).
    report : CollapseReport
        Its collapsed and near-collapsed continuous sites are analysed; its MI, KL,
        ELBO decomposition and (with ``"iw"``) posterior means are reused.
    history : History or None
        :func:`pyrocollapse.fit`'s record, for when the KL fell during training.
    setting : dict or None
        What the run used, to tailor the remedies and the grid's baseline: ``"model"``
        (the ready model's registry name: ``"mlp"``, ``"sequence"``, ``"conv"``, ...),
        ``"prior"`` and ``"elbo"`` (registry names), ``"aggressive"`` (bool).
    draws : int
        Draws of z per point for the gains.
    importance_samples : int
        Draws per point for the model's posterior means when ``report`` lacks them.
    batch_size, device :
        As for :func:`pyrocollapse.diagnose`.
    max_points : int or None
        Use a random subset of at most this many points (``None``: all).
    seed : int or None
        Seed for the subset, the permutation and the Monte Carlo draws (the global RNG
        state is restored).

    Returns
    -------
    CauseAnalysis
        Causes ranked by score with their measurements; remedies for those at or above
        :data:`EVIDENCE_FLOOR`. A healthy report gives an analysis with no sites.

    Raises
    ------
    TypeError
        When ``report`` is not a :class:`~pyrocollapse.report.CollapseReport`.
    """
    from pyrocollapse._validation import check_int
    from pyrocollapse.report import CollapseReport

    if not isinstance(report, CollapseReport):
        raise TypeError(f"report must be a CollapseReport, got {type(report).__name__}")
    draws = check_int("draws", draws, minimum=1)
    importance_samples = check_int("importance_samples", importance_samples, minimum=2)
    if max_points is not None:
        max_points = check_int("max_points", max_points, minimum=2)
    targets = [
        s
        for s in report.sites.values()
        if s.kind == "continuous" and (s.collapsed.any() or s.near_collapse.any())
    ]
    setting = {} if setting is None else dict(setting)
    if not targets:
        return CauseAnalysis([], [], [])
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    dev = _setup_device(model, guide, x, device)
    unavailable: dict[str, str] = {}
    with _seeded(seed):
        if max_points is not None and x.n > max_points:
            x = x.take(torch.randperm(x.n, device="cpu")[:max_points])
        # --- decoder capacity -----------------------------------------------------------
        try:
            gains = _gains(model, guide, x, batch_size, dev, draws)
        except Exception as e:
            gains = {}
            unavailable["context and latent gains"] = _first_line(e)
        # --- prior mismatch and training dynamics, per analysed site ------------------------
        prior_m: dict[str, Any] = {}
        lag_m: dict[str, Any] = {}
        for s in targets:
            try:
                prior_m[s.site] = _richer_prior_gain(model, guide, x, s.site, batch_size, dev)
            except Exception as e:
                unavailable[f"richer-prior gain of {s.site!r}"] = _first_line(e)
            dims = np.flatnonzero(s.collapsed | s.near_collapse)
            try:
                lag_m[s.site] = _posterior_lag(
                    model, guide, x, s.site, dims, batch_size, dev, importance_samples, s.mean_space
                )
            except Exception as e:
                unavailable[f"posterior-mean lag of {s.site!r}"] = _first_line(e)
            if history is not None:
                try:
                    lag_m.setdefault(s.site, {}).update(
                        _kl_fall(history, s.site, dims, s.info_floor)
                    )
                except (ValueError, KeyError, IndexError) as e:
                    unavailable[f"KL history of {s.site!r}"] = _first_line(e)
    unavailable = _grouped(unavailable)
    causes = [
        _decoder_cause(gains),
        _prior_cause(targets, prior_m),
        _dynamics_cause(targets, lag_m, report),
    ]
    causes.sort(key=lambda c: -c.score if math.isfinite(c.score) else math.inf)
    remedies = [
        r
        for c in causes
        if math.isfinite(c.score) and c.score >= EVIDENCE_FLOOR
        for r in _remedies(c.name, c.measurements, setting)
    ]
    if not remedies:  # nothing singles out a cause: remedies that change the trade-off
        remedies = _remedies(UNCLEAR, {}, setting)
    return CauseAnalysis(
        [s.site for s in targets],
        causes,
        remedies,
        unavailable,
        baseline=(setting.get("prior", "standard"), setting.get("elbo", "elbo")),
    )


def _grouped(unavailable: dict[str, str]) -> dict[str, str]:
    """One entry per (measurement, reason): ``"richer-prior gain of 'z_1', 'z_2'"``."""
    by: dict[tuple[str, str], list[str]] = {}
    for what, why in unavailable.items():
        head, _, site = what.partition(" of ")
        # the reason without the site's own name, so that sites with one cause group
        key = (head, why.replace(site, "<site>") if site else why)
        by.setdefault(key, []).append(site)
    out = {}
    for (head, why), sites in by.items():
        named = [s for s in sites if s]
        label = f"{head} of {', '.join(named)}" if named else head
        out[label] = why.replace("<site>", named[0]) if len(named) == 1 else why
    return out


def _join(parts: list[str], most: int = 3) -> str:
    if len(parts) > most:
        return "; ".join(parts[:most]) + f"; and {len(parts) - most} more sites"
    return "; ".join(parts)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _decoder_cause(gains: dict[str, float]) -> Cause:
    if not gains:
        return Cause(DECODER, math.nan, {}, "not measured")
    c, z = gains["context_gain"], gains["latent_gain"]
    score = 0.0 if c < _CONTEXT_FLOOR else c / (c + max(z, 0.0))
    text = (
        f"the decoder gains {c:.2f} nats per point from the program's own inputs with z held "
        f"fixed (autoregressive or conditioning inputs) and {z:.2f} from the point's own z"
    )
    if c < _CONTEXT_FLOOR:
        text += ": it reads no input besides z, so it cannot model x without z"
    return Cause(DECODER, float(np.clip(score, 0.0, 1.0)), dict(gains), text)


def _prior_cause(targets: Sequence[Any], prior_m: dict[str, Any]) -> Cause:
    if not prior_m:
        return Cause(PRIOR, math.nan, {}, "not measured")
    scores, parts, meas = [], [], {}
    for s in targets:
        if s.site not in prior_m:
            continue
        m = prior_m[s.site]
        gain = m["mixture_prior_gain"]
        # a gain within Monte Carlo noise of 0 is no evidence, whatever the KL
        scores.append(min(gain / max(s.kl, gain), 1.0) if gain >= _GAIN_FLOOR else 0.0)
        meas.update({f"{k}/{s.site}": v for k, v in m.items()})
        meas[f"marginal_kl/{s.site}"] = s.aggregate_kl
        meas[f"mi/{s.site}"] = s.mi
        meas[f"kl/{s.site}"] = s.kl
        parts.append(
            f"{s.site!r}: of KL {s.kl:.2f}, the marginal KL(q(z)||p(z)) is {s.aggregate_kl:.2f} "
            f"against MI {s.mi:.2f}; a {m['mixture_components']}-component prior fitted to q(z) "
            f"would add {m['mixture_prior_gain']:.2f} nats of ELBO (a Gaussian one "
            f"{m['gaussian_prior_gain']:.2f})"
        )
    meas_score = max(scores) if scores else math.nan
    return Cause(PRIOR, meas_score, meas, _join(parts) or "not measured")


def _dynamics_cause(targets: Sequence[Any], lag_m: dict[str, Any], report: Any) -> Cause:
    lags, parts, meas = [], [], {}
    gap = report.elbo.get("inference_gap")
    if gap is not None and math.isfinite(gap):
        meas["inference_gap"] = gap
    for s in targets:
        m = lag_m.get(s.site, {})
        lag = m.get("posterior_mean_lag")
        if lag is not None:
            lags.extend(lag)
            meas[f"posterior_mean_lag/{s.site}"] = lag
            parts.append(
                f"{s.site!r}: the model's posterior means vary across x by "
                f"{100 * float(np.mean(lag)):.0f}% of z's variance more than the encoder's in "
                f"the {len(lag)} collapsed or near-collapsed dims"
            )
        if "kl_peak" in m:
            meas.update({f"{k}/{s.site}": m[k] for k in ("kl_peak", "kl_peak_epoch", "kl_fell_epoch")})
            if m["kl_fell_epoch"] is not None:
                parts.append(
                    f"their KL peaked at {m['kl_peak']:.2f} nats (epoch {m['kl_peak_epoch']}) and "
                    f"fell below the floor by epoch {m['kl_fell_epoch']}"
                )
    if "inference_gap" in meas:
        parts.append(f"inference gap {meas['inference_gap']:.2f} nats")
    if not lags:
        return Cause(DYNAMICS, math.nan, meas, _join(parts) or "not measured")
    # only the model's posterior moving without the encoder's is evidence of a lag; a KL
    # that rose and then fell is reported but not scored: it happens under every cause
    # (a pPCA-like model sheds the directions its prior makes too costly the same way)
    return Cause(DYNAMICS, float(np.clip(np.mean(lags), 0.0, 1.0)), meas, _join(parts))
