"""Disentanglement of a fitted VAE's local latent sites on data with known factors.

:func:`disentanglement_by_site` encodes held-out points with the guide, takes the posterior
mean ``E_q[z | x]`` of each continuous local latent site as that site's code, and scores
it against the points' known generative factors with
:func:`pyrocollapse.diagnostics.disentanglement.disentanglement` (MIG, SAP, DCI and the
FactorVAE score). ``pyrocollapse run`` calls it after :func:`pyrocollapse.diagnose`
when the ``"disentanglement"`` estimator is asked for (the default) and stores the
results on :attr:`pyrocollapse.report.CollapseReport.disentanglement`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_choice, check_int

__all__ = [
    "DISENTANGLEMENT_OPTIONS",
    "NO_FACTORS",
    "check_disentanglement_options",
    "disentanglement_by_site",
    "disentanglement_options",
    "posterior_mean_codes",
]

#: The reason stored when the data set has no known factors.
NO_FACTORS = "the data set has no known factors"


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def disentanglement_options(
    *,
    max_points: int = 2000,
    regressor: str = "gbt",
    bins: int = 20,
    factorvae: bool = True,
    n_estimators: int = 100,
) -> dict[str, Any]:
    """The options of ``--disentanglement-option KEY=VALUE`` (``RunConfig.
    disentanglement_options``), checked, as a dict; see :func:`disentanglement_by_site`
    for their meaning. Its signature is what the command line parses against.

    Raises ``TypeError``/``ValueError`` naming the option.
    """
    label = "disentanglement option"
    return {
        "max_points": check_int(f"{label} max_points", max_points, minimum=4),
        "regressor": check_choice(f"{label} regressor", regressor, ("gbt", "lasso")),
        "bins": check_int(f"{label} bins", bins, minimum=2),
        "factorvae": _check_bool(f"{label} factorvae", factorvae),
        "n_estimators": check_int(f"{label} n_estimators", n_estimators, minimum=1),
    }


#: The keys of :func:`disentanglement_options` with their defaults.
DISENTANGLEMENT_OPTIONS: dict[str, Any] = disentanglement_options()


def posterior_mean_codes(
    model: Callable,
    guide: Callable,
    data: Any,
    site: str,
    *,
    num_samples: int = 64,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """``E_q[z | x]`` of ``site`` at every point of ``data``, in data order.

    Parameters
    ----------
    model, guide : callable
        The Pyro model and guide (in evaluation mode).
    data : torch.Tensor
        Shape ``(N, ...)``: the points, one row each.
    site : str
        A continuous local latent site with a per-point event of ``D`` values.
    num_samples : int
        Draws per point where ``q`` has no closed-form mean (a flow guide).
    batch_size : int
        Points per guide call.
    device : str, torch.device or None
        Where to run the programs.

    Returns
    -------
    numpy.ndarray
        Shape ``(N, D)``, float64, in the units of ``z`` (for a site with a conditional
        prior, in that prior's standardised coordinates, as the collapse report).

    Raises
    ------
    ValueError
        If the site yields a number of rows other than ``N`` (rows masked out, e.g. the
        padded steps of a sequence), so the codes cannot be matched with the factors.
    """
    from pyrocollapse.diagnostics._site_draws import site_draws
    from pyrocollapse.diagnostics.activity import _posterior_mean

    num_samples = check_int("num_samples", num_samples, minimum=1)
    means = []
    with torch.no_grad():
        for draw in site_draws(model, guide, data, site, batch_size, device=device):
            mean, _ = _posterior_mean(draw.q, num_samples)
            means.append(mean.detach().double().reshape(mean.shape[0], -1).cpu())
    codes = torch.cat(means).numpy() if means else np.zeros((0, 0))
    n = len(data)
    if codes.shape[0] != n:
        raise ValueError(
            f"site {site!r} has {codes.shape[0]} posterior means for {n} points (rows masked "
            "out), so its codes cannot be matched with the points' factors"
        )
    return codes


def disentanglement_by_site(
    model: Callable,
    guide: Callable,
    data: Any,
    factors: Any,
    sites: Sequence[str],
    *,
    factor_names: Sequence[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
    regressor: str = "gbt",
    bins: int = 20,
    factorvae: bool = True,
    n_estimators: int = 100,
    num_samples: int = 64,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """MIG, SAP, DCI and the FactorVAE score of each site's posterior means.

    Parameters
    ----------
    model, guide : callable
        The fitted Pyro model and guide (in evaluation mode).
    data : torch.Tensor
        Shape ``(N, ...)``: the held-out points.
    factors : torch.Tensor or numpy.ndarray
        Shape ``(N, F)``: their known generative factors, same row order.
    sites : sequence of str
        Continuous local latent sites to score (e.g. the collapse report's sites).
    factor_names : sequence of str, optional
        ``F`` names (``Dataset.factor_names``).
    max_points : int
        At most this many points are scored (>= 4): a seeded random subset without
        replacement, kept in data order, when ``N`` is larger (DCI's boosted trees cost
        time linear in the points).
    seed : int
        Seed of the subset and of every metric (>= 0).
    regressor : {"gbt", "lasso"}
        DCI's predictor (``"lasso"`` is much faster).
    bins : int
        Histogram bins of MIG, SAP and the FactorVAE sampler (>= 2).
    factorvae : bool
        Whether to compute the FactorVAE score.
    n_estimators : int
        Boosting stages of DCI's ``"gbt"`` predictor (>= 1).
    num_samples, batch_size, device :
        As for :func:`posterior_mean_codes`.

    Returns
    -------
    results : dict[str, DisentanglementResult]
        Per scored site.
    unavailable : dict[str, str]
        Sites that could not be scored, each with the reason.

    Raises
    ------
    TypeError, ValueError
        For arguments of the wrong type or out of range, naming the argument; a
        ``factors`` whose rows do not match ``data``.
    """
    from pyrocollapse.diagnostics.disentanglement import disentanglement

    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor of shape (N, ...), got {type(data).__name__}")
    if isinstance(factors, torch.Tensor):
        factors = factors.detach().cpu().double().numpy()
    factors = np.asarray(factors, dtype=float)
    if factors.ndim != 2 or factors.shape[0] != len(data):
        raise ValueError(f"factors must have shape (N={len(data)}, F), got {tuple(factors.shape)}")
    if isinstance(sites, str) or not isinstance(sites, Sequence):
        raise TypeError(f"sites must be a sequence of site names, got {type(sites).__name__}")
    max_points = check_int("max_points", max_points, minimum=4)
    seed = check_int("seed", seed, minimum=0)
    regressor = check_choice("regressor", regressor, ("gbt", "lasso"))
    n_estimators = check_int("n_estimators", n_estimators, minimum=1)
    bins = check_int("bins", bins, minimum=2)
    factorvae = _check_bool("factorvae", factorvae)
    n = len(data)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        data = data[torch.as_tensor(rows)]
        factors = factors[rows]
    dci_options = {"n_estimators": n_estimators} if regressor == "gbt" else {}
    results: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for site in sites:
        try:
            codes = posterior_mean_codes(
                model, guide, data, site, num_samples=num_samples, batch_size=batch_size,
                device=device,
            )  # fmt: skip
            results[site] = disentanglement(
                codes,
                factors,
                factor_names=None if factor_names is None else list(factor_names),
                bins=bins,
                regressor=regressor,
                seed=seed,
                factorvae=factorvae,
                dci_options=dci_options,
            )
        except ValueError as e:  # a site the metrics cannot read: said, not raised
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            unavailable[site] = first
    return results, unavailable


def check_disentanglement_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against :func:`disentanglement_options`; returns a copy holding
    only the keys given.

    Raises ``ValueError``/``TypeError`` naming the option and the accepted keys or values.
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"disentanglement options must be a dict, got {type(options).__name__}")
    out = dict(options)
    unknown = [k for k in out if k not in DISENTANGLEMENT_OPTIONS]
    if unknown:
        raise ValueError(
            f"unknown disentanglement option(s) {unknown}; accepted: "
            f"{', '.join(DISENTANGLEMENT_OPTIONS)}"
        )
    disentanglement_options(**out)
    return out
