"""The per-epoch monitor of :func:`~pyrocollapse.train.fit`: active units and mutual
information on a fixed subset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyrocollapse.program_data import (
    ProgramData,
)

#: the default subset of 512 points is traced in one call of guide and model.
_MONITOR_CHUNK = 512
#: Draws for the per-dimension MI, which the History does not record: as few as the
#: estimator takes, so that the monitor pays only for the total I_q(x; z).
_MONITOR_PER_DIM_DRAWS = 2
#: Active-unit threshold (Burda et al. 2016) and draws for a Monte Carlo posterior mean,
#: as :func:`pyrocollapse.diagnostics.active_units` uses by default.
_MONITOR_AU_THRESHOLD, _MONITOR_AU_SAMPLES = 0.01, 64


def _monitor(
    model: Callable,
    guide: Callable,
    x: ProgramData,
    monitor: Any,
    default_sites: list[str],
    *,
    au: bool = True,
    batch_size: int = _MONITOR_CHUNK,
) -> dict[str, float]:
    """Active units and MI per site on the monitoring subset ``x``, from one pass of
    guide and model over it (chunks of at least ``batch_size`` points).

    ``monitor``: ``"default"`` (``default_sites``, the sites the objective reports per
    dimension; when it reports none, every local latent site the estimators apply to;
    sites that cannot be monitored are skipped silently), ``None`` (every local latent
    site, skipping likewise: the MI aggressive mode needs) or a list of site names (exactly
    those; one that cannot be monitored raises the reason). A continuous site gets
    ``active_units/<site>`` (unless ``au=False``) and ``mi/<site>`` (one draw of z per
    point, total over dimensions); a discrete site ``mi/<site>`` only (exact). The
    draws come from torch's global RNG, in site order, as in :func:`~pyrocollapse.
    diagnostics.active_units` and :func:`~pyrocollapse.diagnostics.mutual_information`;
    the MI is their ``total`` and nothing else (no prior densities, per-dimension
    values or bounds), and for diagonal-Normal sites it is computed in one batched
    float64 pass over all sites of one dimension (the steps of a sequence model), which
    agrees with the estimator's float32 pass to about 1e-6 nats.
    """
    from pyrocollapse.diagnostics import _sweep
    from pyrocollapse.diagnostics._mi_totals import (
        _batchable,
        _mi_total,
        _mi_total_draws,
        _mi_totals,
        _normal_chunks,
        _TotalDraws,
    )
    from pyrocollapse.diagnostics.activity import _active_count, _au_from_draws
    from pyrocollapse.diagnostics.sites import discrete_summary

    strict = monitor is not None and monitor != "default"
    wanted = list(monitor) if strict else None
    sweep = _sweep(model, guide, x, wanted, max(batch_size, 1), None, elbo_terms=False)
    if wanted is not None:
        sites = wanted
    else:
        found = [s for s in sweep.kinds if s in sweep.draws or s in sweep.discrete]
        if monitor == "default" and default_sites:
            sites = [s for s in default_sites if s in found]
        else:
            sites = found
    out: dict[str, float] = {}
    # per site in order, the draws of torch's RNG (AU's Monte Carlo means, then MI's z);
    # the MI totals of the diagonal-Normal sites afterwards, batched over sites
    pending: dict[str, _TotalDraws] = {}
    with torch.no_grad():
        for site in sites:
            try:
                if site in sweep.discrete:
                    out[f"mi/{site}"] = float(discrete_summary(sweep.discrete[site]).mi)
                    continue
                # a chunk whose rows are all masked at this site (short sequences) has none
                draws = [d for d in sweep.draws[site] if d.z.shape[0] > 0]
                if not draws:
                    continue
                values = {}
                params = _normal_chunks(draws)  # diagonal Normals: exact means, no draws
                if au and params is None:
                    activity = _au_from_draws(
                        draws, _MONITOR_AU_THRESHOLD, _MONITOR_AU_SAMPLES, 0, 0.95
                    )
                    values[f"active_units/{site}"] = float(activity.active.sum())
                elif au:
                    means = torch.cat([loc for loc, _ in params])
                    count = _active_count(means, _MONITOR_AU_THRESHOLD)
                    values[f"active_units/{site}"] = float(count)
                t = _mi_total_draws(draws, 1, _MONITOR_PER_DIM_DRAWS, params)
                if _batchable(t):
                    pending[site] = t
                else:
                    values[f"mi/{site}"] = _mi_total(t)
            except (ValueError, NotImplementedError):
                if strict:
                    raise
                continue  # a site the estimators do not apply to
            out.update(values)
        totals = dict(zip(pending, _mi_totals(list(pending.values()))))
        for site, t in pending.items():
            total = totals[site]
            out[f"mi/{site}"] = _mi_total(t) if total is None else total
    order = {s: i for i, s in enumerate(sites)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0].split("/", 1)[1]]))
