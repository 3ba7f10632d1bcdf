"""Nonparametric bootstrap over data points: resampling counts, percentile and basic
(pivotal) intervals, and the check of the ``bootstrap`` and ``ci_level`` arguments."""

from __future__ import annotations

import torch

from pyrocollapse._validation import check_float, check_int


def _bootstrap_counts(n: int, replicates: int, device: torch.device) -> torch.Tensor:
    """Multinomial resampling counts, shape ``(replicates, n)``, float64; each row sums to n."""
    idx = torch.randint(n, (replicates, n), device=device)
    counts = torch.zeros(replicates, n, dtype=torch.float64, device=device)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def _interval(
    values: torch.Tensor, level: float, estimate: float | None = None
) -> tuple[float, float]:
    """Bootstrap interval from replicates ``values`` (first axis): the percentile interval,
    or with ``estimate`` the basic (pivotal) interval ``2 * estimate - quantiles``, which
    corrects to first order a plug-in estimator's bias that the replicates reproduce."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device="cpu")
    lo, hi = (float(v) for v in torch.quantile(values.double().cpu(), q, dim=0))
    if estimate is None:
        return lo, hi
    return 2 * estimate - hi, 2 * estimate - lo


def _check_bootstrap(bootstrap: object, ci_level: object) -> tuple[int, float]:
    bootstrap = check_int("bootstrap", bootstrap, minimum=0)
    ci_level = check_float("ci_level", ci_level, minimum=0.0, maximum=1.0, strict_minimum=True)
    if bootstrap == 1:
        raise ValueError("bootstrap must be 0 (no intervals) or >= 2 replicates, got 1")
    return bootstrap, ci_level
