"""Posterior summaries with ArviZ: the guide's draws as ``InferenceData``.

``arviz.from_pyro`` accepts only MCMC results; here the guide's draws of every latent
site (local latents q(z | x_n), global latents, discrete ones) become an
:class:`arviz.InferenceData` with the groups ``posterior``, ``prior``, ``observed_data``,
``log_likelihood`` and ``posterior_predictive``, dims named after the Pyro plates
(``chain, draw, data, z_dim_0`` for a VAE's ``z`` in ``pyro.plate("data")``), which saves
to and loads from netCDF unchanged. :func:`summarize` turns it into a
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
import pyro
import torch

from pyrocollapse._inference_draws import (
    _ROWS_PER_RUN,
    _all_rows,
    _concat_chunks,
    _dim_renames,
    _draw_chunk,
    _find_data_plate,
    _global_trace,
    _Named,
    _plate_nesting,
    _prior_draws,
    _records,
    _trace_pair,
    _unique_names,
)
from pyrocollapse._validation import check_bool, check_float, check_int
from pyrocollapse.diagnostics._programs import _VECTORISE_ERRORS, _sample_sites

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


def to_inference_data(
    model: Callable,
    guide: Callable,
    data: Any,
    num_samples: int = 100,
    *,
    chains: int = 2,
    latent_sites: Sequence[str] | None = None,
    prior: bool = True,
    prior_samples: int | None = None,
    log_likelihood: bool = True,
    posterior_predictive: bool = True,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> Any:
    """Draws of the guide q(z | x), the prior and the data as ``arviz.InferenceData``.

    Works on any Pyro model/guide pair: local latents (one per data point, inside the
    data plate), global latents (outside it: eight schools' ``mu`` and ``tau``, the sites
    of an autoguide), discrete latents (sampled in the guide, or enumerated in the model
    only, which are then drawn from their exact conditional posterior given the guide's
    draws with :func:`pyro.infer.infer_discrete`), masked sites and programs taking
    several arguments.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking the data's arguments, ``model(*args, **kwargs)``.
    data : torch.Tensor, numpy.ndarray, tuple, list, dict or DataLoader
        Shape ``(N, ...)``, or the programs' arguments in any form
        :mod:`pyrocollapse.program_data` accepts (every batched argument cut along dim 0).
    num_samples : int
        Draws per chain.
    chains : int
        Independent chains of draws (default 2, so that ``arviz.summary``'s ``r_hat`` is
        defined; draws from q are independent, so chains differ only by their random
        numbers and ``r_hat`` is about 1 by construction).
    latent_sites : sequence of str or None
        Latent sites to include (default every latent site: the guide's, auxiliary sites
        of autoguides left out, and the model's enumerated sites).
    prior : bool
        Add the ``prior`` group: the latent sites drawn by running the model alone
        (ancestral sampling, so a hierarchical prior is sampled jointly) on one data point,
        the data plate dropped (on all the data where the program needs them, e.g. a
        plate of fixed size; the data plate is then kept).
    prior_samples : int or None
        Prior draws per chain (default ``max(num_samples, 1000)``, so that the prior's
        summaries are as precise as the aggregate posterior's).
    log_likelihood : bool
        Add the ``log_likelihood`` group: each observed site's log density (nats, its
        ``poutine.scale`` not applied) per data point under each draw, summed over the
        site's other plates and event dims. Masked elements (``.mask(m)``,
        ``poutine.mask``) are left out of the sum, and a point whose every element is
        masked is NaN (the padded steps of a sequence model), never 0 nats.
    posterior_predictive : bool
        Add the ``posterior_predictive`` group: one replicate of each observed site per
        draw, drawn from the site's distribution in the model replayed on the draw
        (masked elements NaN).
    batch_size : int
        Points per chunk. Programs whose plates cannot be cut (a plate of fixed size, a
        parameter per data point) run on all the data at once.
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
        Groups ``posterior``, ``prior``, ``observed_data``, ``log_likelihood`` and
        ``posterior_predictive``, variables named after the Pyro sites. Dims are named
        after the Pyro plates (``<plate name>``, e.g. ``data``) and the sites' event
        dims (``<site>_dim_<i>``): a local latent ``z`` of a VAE has dims ``(chain, draw,
        data, z_dim_0)``, a global scalar ``mu`` has ``(chain, draw)``, the log-likelihood
        ``(chain, draw, data)``. The data plate is recorded in each group's attribute
        ``data_plate``. Values keep the programs' dtype (float32 for the ready models);
        integer sites with masked elements become float64 with NaN there. Coordinates are
        integer indices; attributes record that the draws come from a variational guide,
        not MCMC, and (``draw_method``) whether they were vectorised.

    Notes
    -----
    **No name clashes.** A dim named after a plate cannot share its name with a site
    (Pyro gives a plate a site of its own name), and event dims carry their site's name.
    Should a dim name still equal a variable name, the dim gets a ``plate_`` prefix. A
    site called ``chain`` or ``draw`` (ArviZ's sample dims) is stored as ``chain_site`` /
    ``draw_site``; every variable's attribute ``pyro_site`` names its site.

    **What the log-likelihood means, and** ``az.loo``. For local latents the
    ``log_likelihood`` group holds log p(x_n | z_n^(s), globals^(s)): the density of
    observation n given draw s of *its own* latent from q(z | x_n), which has seen x_n.
    It is not integrated over the posterior predictive of a new point, so ``az.loo``
    or ``az.waic`` computed on it is **not** the model's leave-one-out predictive
    accuracy: it scores how well each observation is reconstructed from its own
    encoding, and is optimistic (the more so the more the latent memorises x_n). For the
    model's predictive density of a point use the importance-weighted estimate
    :func:`pyrocollapse.diagnostics.iw_log_likelihood`, log p(x_n) with the local
    latents integrated out. For programs with global latents only (eight schools' theta
    aside), ``az.loo`` has its usual meaning, for the variational posterior instead of
    the exact one.

    **Posterior predictive.** ``pyro.infer.Predictive(model, guide=guide)`` keeps an
    observed site at its data when the model is called with the observations (it
    resamples ``obs=`` sites only when the program's observation argument is ``None``,
    which depends on each program's signature). Here each observed site is drawn from its
    distribution in the model trace replayed on the posterior draw, ``site["fn"].sample()``,
    whatever the signature. Where an observed site's distribution depends on another
    observed site (an autoregressive likelihood), the replicate is conditioned on the
    observed values (one step ahead), not on the replicates.

    **Vectorisation and modules.** The draws of a chunk run as a vectorised plate of
    draws left of the programs' plates; programs that do not broadcast over it (boolean-
    mask indexing, a batch flattened into a network, a fixed-size plate that meets the
    draws) run one draw at a time instead (``draw_method`` attribute). Every
    ``nn.Module`` behind the programs (a module, a method bound to one, or one held by a
    closure) is in eval mode during the draws (dropout off, BatchNorm's running
    statistics used and left unchanged) and its train/eval flags are restored afterwards.

    References
    ----------
    Kumar, Carroll, Hartikainen, Martin (2019). ArviZ a unified library for exploratory
    analysis of Bayesian models in Python. JOSS 4(33).
    Vehtari, Gelman, Gabry (2017). Practical Bayesian model evaluation using leave-one-out
    cross-validation and WAIC. Statistics and Computing 27(5).
    """
    from pyrocollapse import __version__
    from pyrocollapse.diagnostics._programs import (
        _check_inputs,
        _effective_device,
        _seeded,
        _setup_device,
        eval_mode,
    )

    az = _arviz()
    num_samples = check_int("num_samples", num_samples, minimum=1)
    chains = check_int("chains", chains, minimum=1)
    prior = check_bool("prior", prior)
    log_likelihood = check_bool("log_likelihood", log_likelihood)
    posterior_predictive = check_bool("posterior_predictive", posterior_predictive)
    prior_samples = (
        max(num_samples, 1000)
        if prior_samples is None
        else check_int("prior_samples", prior_samples, minimum=1)
    )
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    dev = _setup_device(model, guide, x, device)
    if latent_sites is not None and (
        isinstance(latent_sites, str) or not all(isinstance(s, str) for s in latent_sites)
    ):
        raise TypeError(f"latent_sites must be a sequence of site names; got {latent_sites!r}")
    total = chains * num_samples
    with _seeded(seed, _effective_device(x, dev)), eval_mode(model, guide):
        chunked = x.n > batch_size
        first = next(iter(x.chunks(batch_size, dev)))
        try:
            probe = _trace_pair(model, guide, first, particles=None, nesting=1)
        except _VECTORISE_ERRORS:
            if not chunked:
                raise
            chunked, first = False, _all_rows(x, dev)  # e.g. a plate of fixed size
            probe = _trace_pair(model, guide, first, particles=None, nesting=1)
        model_tr, guide_tr = probe
        nesting = _plate_nesting(probe)
        names = [
            s
            for s, site in _sample_sites(guide_tr)
            if not site["is_observed"]
            and s in model_tr.nodes
            and not site["infer"].get("is_auxiliary")
        ]
        enumerated = [
            s
            for s, site in _sample_sites(model_tr)
            if not site["is_observed"]
            and s not in guide_tr.nodes
            and site["infer"].get("enumerate") == "parallel"
        ]
        names += enumerated
        sites = names if latent_sites is None else list(latent_sites)
        missing = [s for s in sites if s not in names]
        if missing:
            raise ValueError(
                f"latent sites {missing} are not latent sites of the programs; found {names}"
            )
        observed = [s for s, site in _sample_sites(model_tr) if site["is_observed"]]
        rows = first.leading_size() or x.n
        data_plate = _find_data_plate(probe, names, rows)
        chunked = chunked and data_plate is not None
        per_run: int | None = max(1, min(total, _ROWS_PER_RUN // max(1, rows)))

        def run(traces: tuple[Any, Any], particles: bool) -> dict[str, dict[str, _Named]]:
            return _records(
                traces,
                sites,
                nesting,
                data_plate,
                particles,
                log_likelihood=log_likelihood,
                predictive=posterior_predictive,
            )

        chunks = iter(x.chunks(batch_size, dev)) if chunked else iter([first])
        xa = next(chunks)
        args = (model, guide, xa, total)
        try:
            records, guides = _draw_chunk(*args, per_run, None, run, nesting, bool(enumerated))
        except _VECTORISE_ERRORS:
            per_run = None  # the programs do not broadcast over a plate of draws
            records, guides = _draw_chunk(*args, per_run, None, run, nesting, bool(enumerated))
        found = [records]
        replay = [_global_trace(g, data_plate) for g in guides]
        for xa in chunks:
            found.append(
                _draw_chunk(
                    model, guide, xa, total, per_run, replay, run, nesting, bool(enumerated)
                )[0]
            )
        groups_t = _concat_chunks(found, data_plate)
        if prior:
            groups_t["prior"] = _prior_draws(
                model, x, dev, chains * prior_samples, sites, nesting, data_plate
            )
    if not log_likelihood:
        del groups_t["log_likelihood"]
    if not posterior_predictive:
        del groups_t["posterior_predictive"]
    var_of = _unique_names(names, observed)
    renames = _dim_renames(groups_t, set(var_of.values()))
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "pyrocollapse",
        "creation_library_version": __version__,
        "posterior_kind": "draws of a variational guide q(z | x), not MCMC",
        "data_plate": renames.get(data_plate, data_plate) if data_plate is not None else "",
        "draw_method": "vectorised" if per_run is not None else "one draw at a time",
    }
    kinds = {
        "prior": "ancestral draws of the model's latent sites",
        "log_likelihood": "log p(x_n | draws of x_n's own latents); not a predictive density",
        "posterior_predictive": "observed sites drawn from the model replayed on each draw",
    }
    groups: dict[str, Any] = {}
    for group, tensors in groups_t.items():
        draws = prior_samples if group == "prior" else num_samples
        lead = [] if group == "observed_data" else [chains, draws]
        data_vars, dims, coords = {}, {}, {}
        for site, (value, site_dims) in tensors.items():
            arr = _numpy(value)
            arr = arr.reshape(*lead, *arr.shape[1 if lead else 0 :])
            var = var_of[site]
            data_vars[var] = arr
            dims[var] = [renames.get(d, d) for d in site_dims]
            for d, size in zip(dims[var], arr.shape[len(lead) :], strict=True):
                coords[d] = np.arange(size)
        ds = az.dict_to_dataset(
            data_vars,
            coords=coords,
            dims=dims,
            attrs={**attrs, f"{group}_kind": kinds.get(group, "")} if group in kinds else attrs,
            library=None,
            **({"default_dims": []} if not lead else {}),
        )
        for site in tensors:
            ds[var_of[site]].attrs["pyro_site"] = site
        groups[group] = ds
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


def _pooled_dims(array: Any, data_plate: str) -> np.ndarray:
    """A variable's values as ``(chain, draw, points, dimensions)``: the data plate (size 1
    when absent) and every other dim flattened into one axis of dimensions."""
    rest = [d for d in array.dims[2:] if d != data_plate]
    local = data_plate in array.dims
    values = array.transpose("chain", "draw", *([data_plate] if local else []), *rest).values
    c, s = values.shape[:2]
    n = values.shape[2] if local else 1
    return values.reshape(c, s, n, -1)


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
        From :func:`to_inference_data` (needs ``posterior`` and ``prior``). The
        observations are the dim of the data plate (the groups' ``data_plate``
        attribute; ``obs`` in files written before it); every other dim of a site is
        flattened into its dimensions. A global site counts as one observation, so its
        ``obs_sd`` is the sd of its draws and its ``rhat_obs`` is NaN.
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
    data_plate = idata.posterior.attrs.get("data_plate", "obs")  # files before 0.x: "obs"
    tables = []
    for name in names:
        values = _pooled_dims(idata.posterior[name], data_plate)  # (C, S, N, D)
        if name not in idata.prior.data_vars:
            raise ValueError(f"the prior group has no variable {name!r}")
        prior_values = _pooled_dims(idata.prior[name], data_plate)
        c, s, n, d = values.shape
        dim = f"{name}_dim"
        pooled = xr.Dataset(
            {name: (("chain", "draw", dim), values.reshape(c, s * n, d))},
            coords={"chain": np.arange(c), "draw": np.arange(s * n), dim: np.arange(d)},
        )
        stats = az.summary(pooled, kind="stats", hdi_prob=hdi_prob, round_to="none")
        pc, ps, pn, _ = prior_values.shape
        prior_pooled = xr.Dataset(
            {name: (("chain", "draw", dim), prior_values.reshape(pc, ps * pn, d))},
            coords={"chain": np.arange(pc), "draw": np.arange(ps * pn), dim: np.arange(d)},
        )
        prior_stats = az.summary(
            prior_pooled, kind="stats", hdi_prob=hdi_prob, round_to="none"
        ).add_prefix("prior_")
        obs_sd = values.std(axis=1, ddof=1).mean(axis=(0, 1)) if s > 1 else np.full(d, np.nan)
        as_chains = xr.Dataset(
            {name: (("chain", "draw", dim), values.transpose(0, 2, 1, 3).reshape(c * n, s, d))},
            coords={"chain": np.arange(c * n), "draw": np.arange(s), dim: np.arange(d)},
        )
        rhat = (
            az.rhat(as_chains, method="identity")[name].values
            if s > 1 and n > 1
            else np.full(d, np.nan)
        )
        table = stats.join(prior_stats)
        table.insert(0, "dim", np.arange(d))
        table.insert(0, "site", name)
        table["obs_sd"] = obs_sd
        table["sd_ratio"] = obs_sd / table["prior_sd"].to_numpy()
        table["rhat_obs"] = rhat
        tables.append(table)
    return pd.concat(tables)
