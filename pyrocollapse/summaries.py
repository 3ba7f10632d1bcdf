"""Posterior summaries with ArviZ: the guide's draws as ``InferenceData``.

``arviz.from_pyro`` accepts only MCMC results; here the amortised guide's draws
q(z | x_n) of every latent site become an :class:`arviz.InferenceData` with the groups
``posterior`` (dims ``chain, draw, obs, <site>_dim``), ``prior`` (``chain, draw,
<site>_dim``), ``observed_data`` and ``log_likelihood`` (``chain, draw, obs``), which
saves to and loads from netCDF unchanged. :func:`summarize` turns it into a
per-latent-dimension table built on ``arviz.summary`` in which collapse shows as the
posterior matching the prior.

This module is the ArviZ adapter: every ArviZ call in pyrocollapse goes through it, and
ArviZ is imported only when one of its functions runs (the import costs about 2 s). It
targets ArviZ 0.x, the line that runs on Python 3.11; ArviZ 1.x (Python >= 3.12) moved
``InferenceData`` to xarray's ``DataTree`` and is refused with a clear error until an
adapter for it is added here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pyrocollapse._validation import check_float, check_int

__all__ = ["load_inference_data", "save_inference_data", "summarize", "to_inference_data"]

#: ArviZ major versions this adapter supports.
SUPPORTED_ARVIZ = (0,)


def _arviz() -> Any:
    """Import ArviZ, checking that this adapter supports its version."""
    import arviz as az

    major = int(str(az.__version__).split(".")[0])
    if major not in SUPPORTED_ARVIZ:
        raise ImportError(
            f"pyrocollapse.summaries supports ArviZ 0.x; found ArviZ {az.__version__}, whose "
            "InferenceData API differs. Install 'arviz<1' or add a 1.x adapter to "
            "pyrocollapse/summaries.py"
        )
    return az


def _dim_name(site: str) -> str:
    return f"{site}_dim"


def to_inference_data(
    model: Callable,
    guide: Callable,
    data: Any,
    num_samples: int = 100,
    *,
    chains: int = 1,
    latent_sites: Sequence[str] | None = None,
    prior: bool = True,
    prior_samples: int | None = None,
    log_likelihood: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> Any:
    """Draws of the guide q(z | x), the prior and the data as ``arviz.InferenceData``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking a chunk of the data's arguments, ``model(*args, **kwargs)``
        (see :mod:`pyrocollapse.diagnostics` for what they must look like; the posterior
        and log-likelihood groups need programs that broadcast over a vectorised particle
        plate).
    data : torch.Tensor, numpy.ndarray, tuple, list, dict or DataLoader
        Shape ``(N, ...)``, or the programs' arguments in any form
        :func:`~pyrocollapse.diagnostics.kl_per_dimension` accepts (every batched
        argument chunked together along dim 0).
    num_samples : int
        Draws per chain.
    chains : int
        Independent chains of draws (draws from q are independent, so chains differ
        only by their random numbers).
    latent_sites : sequence of str or None
        Latent sites to include (default every latent site of the guide).
    prior : bool
        Add the ``prior`` group: the latent sites drawn by running the model alone on
        one observation (ancestral sampling, so a hierarchical prior is sampled jointly).
    prior_samples : int or None
        Prior draws per chain (default ``max(num_samples, 1000)``, so that the prior's
        summaries are as precise as the aggregate posterior's).
    log_likelihood : bool
        Add the ``log_likelihood`` group: each observed site's log density per
        observation under each posterior draw, dims ``chain, draw, obs`` (nats).
    batch_size : int
        Points per chunk.
    device : str, torch.device or None
        Device each chunk is moved to (``None``: where the data are); the model is not
        moved (``vae.to(device)`` first). A device this machine lacks, or a model on
        another device, raises ``ValueError``. The returned arrays are NumPy (host) arrays
        whatever the device.
    seed : int or None
        Seed for the draws (the global RNG state is restored afterwards).

    Returns
    -------
    arviz.InferenceData
        ``posterior`` variables named after the latent sites, dims ``(chain, draw, obs,
        <site>_dim)``; ``prior`` the same sites with dims ``(chain, draw, <site>_dim)``;
        ``observed_data`` and ``log_likelihood`` variables named after the observed
        sites. Values keep the programs' dtype (float32 for the ready models).
        Coordinates are integer indices; attributes record that the draws come from a
        variational guide, not MCMC.

    References
    ----------
    Kumar, Carroll, Hartikainen, Martin (2019). ArviZ a unified library for exploratory
    analysis of Bayesian models in Python. JOSS 4(33).
    """
    import pyro
    from pyro import poutine

    from pyrocollapse import __version__
    from pyrocollapse.diagnostics._tracing import (
        _check_inputs,
        _effective_device,
        _latent_names,
        _layout,
        _observed_names,
        _per_point,
        _probe,
        _seeded,
        _setup_device,
        _site_log_prob,
        _vectorised,
    )
    from pyrocollapse.diagnostics.importance import _particle_chunks

    az = _arviz()
    num_samples = check_int("num_samples", num_samples, minimum=1)
    chains = check_int("chains", chains, minimum=1)
    prior_samples = (
        max(num_samples, 1000)
        if prior_samples is None
        else check_int("prior_samples", prior_samples, minimum=1)
    )
    x, batch_size = _check_inputs(data, batch_size)
    dev = _setup_device(model, guide, x, device)
    if latent_sites is not None and (
        isinstance(latent_sites, str) or not all(isinstance(s, str) for s in latent_sites)
    ):
        raise TypeError(f"latent_sites must be a sequence of site names; got {latent_sites!r}")
    total = chains * num_samples
    with _seeded(seed, _effective_device(x, dev)):
        traces = _probe(model, guide, x, dev)
        layout = _layout(model, guide, x, traces)
        names = _latent_names(*traces)
        sites = names if latent_sites is None else list(latent_sites)
        missing = [s for s in sites if s not in names]
        if missing:
            raise ValueError(
                f"latent sites {missing} are not latent sites of both guide and model; found {names}"
            )
        post: dict[str, list[list[torch.Tensor]]] = {s: [] for s in sites}
        loglik: dict[str, list[list[torch.Tensor]]] = {}
        observed: dict[str, list[torch.Tensor]] = {}
        for _, runs in _particle_chunks(model, guide, x, total, batch_size, dev, layout):
            chunk_post: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
            chunk_ll: dict[str, list[torch.Tensor]] = {}
            for i, (model_tr, guide_tr) in enumerate(runs):
                for s in sites:
                    chunk_post[s].append(guide_tr.nodes[s]["value"])  # (k, B, D)
                for name in _observed_names(model_tr):
                    site = model_tr.nodes[name]
                    if i == 0:
                        observed.setdefault(name, []).append(site["value"])
                    if log_likelihood:
                        lp = _per_point(_site_log_prob(site), site, layout, particles=True)
                        chunk_ll.setdefault(name, []).append(lp)
            for s in sites:
                post[s].append(chunk_post[s])
            for name, parts in chunk_ll.items():
                loglik.setdefault(name, []).append(parts)
        groups: dict[str, Any] = {}
        coords: dict[str, Any] = {
            "obs": np.arange(x.n),
            "chain": np.arange(chains),
            "draw": np.arange(num_samples),
        }
        posterior = {}
        dims: dict[str, list[str]] = {}
        for s in sites:
            arr = torch.cat([torch.cat(parts, 0) for parts in post[s]], 1)  # (total, N, D)
            arr = _numpy(arr).reshape(chains, num_samples, *arr.shape[1:])
            posterior[s] = arr
            dims[s] = ["obs", _dim_name(s)]
            coords[_dim_name(s)] = np.arange(arr.shape[-1])
        attrs = {
            "inference_library": "pyro",
            "inference_library_version": pyro.__version__,
            "creation_library": "pyrocollapse",
            "creation_library_version": __version__,
            "posterior_kind": "draws of an amortised variational guide q(z | x_n), not MCMC",
        }
        groups["posterior"] = az.dict_to_dataset(
            posterior, coords=coords, dims=dims, attrs=attrs, library=None
        )
        obs_data, obs_dims = {}, {}
        for name, parts in observed.items():
            arr = _numpy(torch.cat(parts, 0))
            obs_data[name] = arr
            obs_dims[name] = ["obs", *(f"{name}_dim_{i}" for i in range(arr.ndim - 1))]
            for i, size in enumerate(arr.shape[1:]):
                coords[f"{name}_dim_{i}"] = np.arange(size)
        groups["observed_data"] = az.dict_to_dataset(
            obs_data, coords=coords, dims=obs_dims, default_dims=[], attrs=attrs, library=None
        )
        if log_likelihood:
            ll = {
                name: _numpy(torch.cat([torch.cat(p, 0) for p in parts], 1)).reshape(
                    chains, num_samples, -1
                )
                for name, parts in loglik.items()
            }
            groups["log_likelihood"] = az.dict_to_dataset(
                ll, coords=coords, dims={k: ["obs"] for k in ll}, attrs=attrs, library=None
            )
        if prior:
            first = x.head(1).to(dev)
            with torch.no_grad(), poutine.block():
                tr = poutine.trace(
                    _vectorised(model, chains * prior_samples, layout.nesting)
                ).get_trace(*first.args, **first.kwargs)
            pr = {s: _numpy(tr.nodes[s]["value"]).reshape(chains, prior_samples, -1) for s in sites}
            groups["prior"] = az.dict_to_dataset(
                pr,
                coords={**coords, "draw": np.arange(prior_samples)},
                dims={s: [_dim_name(s)] for s in sites},
                attrs={**attrs, "prior_kind": "ancestral draws of the model's latent sites"},
                library=None,
            )
    return az.InferenceData(**groups)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def save_inference_data(idata: Any, path: str | os.PathLike[str]) -> None:
    """Write ``idata`` to netCDF (h5netcdf engine) atomically: a temporary file beside
    ``path`` renamed over it, so a failed write leaves no partial file."""
    from pyrocollapse._io import atomic_write

    _check_idata(idata)
    atomic_write(path, lambda tmp: idata.to_netcdf(tmp, engine="h5netcdf"))


def _check_idata(idata: Any) -> Any:
    """Import ArviZ; TypeError unless ``idata`` is an ``arviz.InferenceData``."""
    az = _arviz()
    if not isinstance(idata, az.InferenceData):
        raise TypeError(
            f"idata must be an arviz.InferenceData (e.g. from to_inference_data), "
            f"got {type(idata).__name__}"
        )
    return az


def load_inference_data(path: str | os.PathLike[str]) -> Any:
    """Read InferenceData written by :func:`save_inference_data` (values, dims, coords
    and attributes unchanged)."""
    az = _arviz()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no InferenceData file at {str(path)!r}")
    try:
        return az.from_netcdf(str(path), engine="h5netcdf")
    except (OSError, ValueError) as e:
        raise ValueError(
            f"path {str(path)!r} is not an InferenceData netCDF file "
            f"(as save_inference_data writes): {e}"
        ) from None


def summarize(
    idata: Any,
    *,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
) -> Any:
    """Per-latent-dimension table: the posterior aggregated over observations next to
    the prior, so that collapse shows as q matching p.

    For each latent site and dimension (rows ``"<site>[d]"``), built on
    ``arviz.summary(kind="stats")``:

    * ``mean``, ``sd``, ``hdi_<lo>%``, ``hdi_<hi>%``: the aggregate posterior q(z_d), all
      draws of all observations pooled;
    * ``prior_mean``, ``prior_sd``, ``prior_hdi_<lo>%``, ``prior_hdi_<hi>%``: the prior;
    * ``obs_sd``: the average over observations of the sd of q(z_d | x_n);
    * ``sd_ratio``: ``obs_sd / prior_sd``; about 1 for a collapsed dimension (every
      posterior is the prior), below 1 for an informative one;
    * ``rhat_obs``: ``arviz.rhat(method="identity")`` with the observations as chains,
      about 1 when q(z_d | x) does not depend on x (see
      :func:`pyrocollapse.diagnostics.datapoint_rhat`).

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`to_inference_data` (needs ``posterior`` and ``prior``).
    var_names : sequence of str or None
        Latent sites to summarise (default every posterior variable).
    hdi_prob : float
        Probability mass of the highest-density intervals.

    Returns
    -------
    pandas.DataFrame
        One row per (site, dimension), the columns above plus ``site`` and ``dim``.

    Notes
    -----
    ``summarize`` takes no ``device``: it reads the NumPy arrays of ``idata``, which
    :func:`to_inference_data` always brings back to the host, so it runs on the CPU
    whatever device the draws were made on.

    References
    ----------
    Kumar, Carroll, Hartikainen, Martin (2019). ArviZ. JOSS 4(33).
    Gelman & Rubin (1992). Inference from Iterative Simulation Using Multiple Sequences.
    Statistical Science 7(4).
    """
    import pandas as pd
    import xarray as xr

    az = _check_idata(idata)
    hdi_prob = check_float("hdi_prob", hdi_prob, minimum=0.0, maximum=1.0, strict_minimum=True)
    for group in ("posterior", "prior"):
        if not hasattr(idata, group):
            raise ValueError(
                f"idata has no {group!r} group; build it with to_inference_data(..., prior=True)"
            )
    names = list(idata.posterior.data_vars) if var_names is None else list(var_names)
    missing = [n for n in names if n not in idata.posterior.data_vars]
    if missing:
        raise ValueError(
            f"var_names {missing} are not posterior variables; found {list(idata.posterior.data_vars)}"
        )
    tables = []
    for name in names:
        post = idata.posterior[name]
        dim = _dim_name(name)
        if post.dims != ("chain", "draw", "obs", dim):
            raise ValueError(
                f"posterior variable {name!r} must have dims (chain, draw, obs, {dim}); got {post.dims}"
            )
        if name not in idata.prior.data_vars:
            raise ValueError(f"the prior group has no variable {name!r}")
        values = post.values  # (C, S, N, D)
        c, s, n, d = values.shape
        pooled = xr.Dataset(
            {name: (("chain", "draw", dim), values.reshape(c, s * n, d))},
            coords={"chain": np.arange(c), "draw": np.arange(s * n), dim: np.arange(d)},
        )
        stats = az.summary(pooled, kind="stats", hdi_prob=hdi_prob, round_to="none")
        prior_stats = az.summary(
            idata.prior[[name]], kind="stats", hdi_prob=hdi_prob, round_to="none"
        ).add_prefix("prior_")
        obs_sd = values.std(axis=1, ddof=1).mean(axis=(0, 1)) if s > 1 else np.full(d, np.nan)
        as_chains = xr.Dataset(
            {name: (("chain", "draw", dim), values.transpose(0, 2, 1, 3).reshape(c * n, s, d))},
            coords={"chain": np.arange(c * n), "draw": np.arange(s), dim: np.arange(d)},
        )
        rhat = az.rhat(as_chains, method="identity")[name].values if s > 1 else np.full(d, np.nan)
        table = stats.join(prior_stats)
        table.insert(0, "dim", np.arange(d))
        table.insert(0, "site", name)
        table["obs_sd"] = obs_sd
        table["sd_ratio"] = obs_sd / table["prior_sd"].to_numpy()
        table["rhat_obs"] = rhat
        tables.append(table)
    return pd.concat(tables)
