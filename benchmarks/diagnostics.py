"""Time and memory of each collapse diagnostic, next to its floor measured in the same run.

Problem: 10,000 x 784 synthetic binary data (a random rank-10 logistic model) and
``MLPVAE(784, 32, hidden=(512, 512))`` (784-512-512-32 encoder and decoder; untrained
weights cost the same as trained ones). For each estimator the script prints its wall
time, the time of its floor (the bare tensor work it cannot avoid, measured here on the
same machine, threads and data), their ratio and the peak extra resident memory:

============================  ===========================================================
estimator                     floor
============================  ===========================================================
kl, au (one guide sweep)      one encoder pass over the N points
mutual information + KL(q||p) the blocked (N x N) float32 matrix product and exp-sum
R-hat                         one encoder pass plus drawing N x 10 x 32 normals
sensitivity ("score")         one decoder forward and backward pass over N points
diagnose (default estimators) the sum of the floors above
iw_log_likelihood (K=100)     bare decoder forward passes over the same N * K samples
psis_khat (K=100)             the same decoder passes
============================  ===========================================================

Targets (issue 6): everything except IW under 3 s in all (the default ``diagnose``);
``iw_log_likelihood`` with K = 100 within 1.5x of its floor; peak extra memory under
1 GiB whatever N. The scaling section times mutual information (O(N^2)) and IW (O(N K))
at growing N next to their floors.

Usage::

    python benchmarks/diagnostics.py              # the full problem (a few minutes)
    python benchmarks/diagnostics.py --quick      # N = 1000, K = 10: a smoke run
    python benchmarks/diagnostics.py --threads 1  # steadier timings on a shared machine

On a machine whose cores are busy with other work, every multi-threaded kernel waits for
its slowest thread, which can inflate both the estimators and their floors many times;
the header prints the load average, and ``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch

from pyrocollapse import diagnostics as dg
from pyrocollapse.diagnostics import _tracing
from pyrocollapse.models import MLPVAE

_ROWS = _tracing._PARTICLE_ROWS
_BLOCK = _tracing._BLOCK


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Peak resident memory above the level at entry, in MiB (``out["peak_mib"]``).

    On Linux the kernel's high-water mark is reset at entry (``/proc/self/clear_refs``);
    elsewhere the growth of ``ru_maxrss`` is reported (a lower bound).
    """
    out: dict[str, float] = {}
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    base = _status_kib("VmRSS") if reset else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield out
    if reset and base is not None:
        out["peak_mib"] = max(0, (_status_kib("VmHWM") or 0) - base) / 1024
    else:
        out["peak_mib"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, float]:
    """Best wall time of ``repeats`` calls (after one warm-up call) and the peak memory."""
    fn()
    best = float("inf")
    peak = 0.0
    for _ in range(repeats):
        with peak_memory() as mem:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        peak = max(peak, mem["peak_mib"])
    return best, peak


# --------------------------------------------------------------------------------------
# Problem and floors
# --------------------------------------------------------------------------------------
def make_data(n: int, dim: int = 784, rank: int = 10, seed: int = 0) -> torch.Tensor:
    """Binary data from a random rank-``rank`` logistic factor model."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(n, rank, generator=g)
    loadings = 1.5 * torch.randn(rank, dim, generator=g)
    return torch.bernoulli(torch.sigmoid(factors @ loadings - 1.0), generator=g)


@torch.no_grad()
def encoder_floor(vae: MLPVAE, x: torch.Tensor, batch: int = 256) -> None:
    for xb in x.split(batch):
        vae.encoder_params(xb)


@torch.no_grad()
def rhat_floor(vae: MLPVAE, x: torch.Tensor, draws: int = 10, batch: int = 256) -> None:
    for xb in x.split(batch):
        loc, scale = vae.encoder_params(xb)
        z = loc + scale * torch.randn(draws, *loc.shape)
        z.mean(0), z.var(0)


@torch.no_grad()
def decoder_floor(vae: MLPVAE, n: int, latent_dim: int) -> None:
    """Bare decoder forward passes over ``n`` latent samples, in IW-sized chunks."""
    for start in range(0, n, _ROWS):
        vae.decoder(torch.randn(min(_ROWS, n - start), latent_dim))


def sensitivity_floor(vae: MLPVAE, x: torch.Tensor, batch: int = 256) -> None:
    for xb in x.split(batch):
        with torch.no_grad():
            loc, _ = vae.encoder_params(xb)
        z = loc.requires_grad_(True)
        torch.autograd.grad(vae.decoder(z).sum(), z)


@torch.no_grad()
def mi_floor(n: int, latent_dim: int, draws: int = 1, per_dim_draws: int = 2048) -> None:
    """The arithmetic mutual information cannot avoid: the blocked (N x N) float32 matrix
    product with its exp-sum, and one exp-sum per dimension over ``per_dim_draws x N``
    entries for the per-dimension aggregate marginals."""
    z = torch.randn(n * draws, 2 * latent_dim)
    w = torch.randn(2 * latent_dim, n)
    rows = max(256, _BLOCK // n)
    width = max(1, _BLOCK // rows)
    for zi in z.split(rows):
        for j in range(0, n, width):
            block = zi @ w[:, j : j + width]
            block.sub_(block.amax(1, keepdim=True)).exp_().sum(1)
    entries = min(per_dim_draws, n * draws) * n * latent_dim
    block = -torch.rand(_tracing._DIM_BLOCK)
    for _ in range(max(1, entries // _tracing._DIM_BLOCK)):
        block.clone().exp_().sum()


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def row(name: str, t: float, floor: float | None, peak: float, note: str = "") -> None:
    ratio = f"{t / floor:6.2f}x" if floor else "      "
    floor_s = f"{floor:8.3f}" if floor else "        "
    print(f"{name:<34} {t:8.3f} {floor_s} {ratio} {peak:9.0f}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1000, K = 10: a smoke run")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, k = (1000, 10) if args.quick else (10_000, 100)
    latent_dim = 32
    pyro.set_rng_seed(0)
    vae = MLPVAE(784, latent_dim, hidden=(512, 512))
    vae.eval()
    x = make_data(n)
    model, guide = vae.model, vae.guide
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"N = {n}, data 784-dim binary, MLPVAE(784, {latent_dim}, hidden=(512, 512)), "
        f"K = {k}, torch threads = {torch.get_num_threads()}, CPUs = {os.cpu_count()}, "
        f"load average = {load:.1f}"
    )
    if load > (os.cpu_count() or 1) - 0.5:
        print(
            "warning: the machine is busy; multi-threaded timings of small kernels then "
            "measure scheduler waits (try --threads 1)"
        )
    print(f"{'estimator':<34} {'time s':>8} {'floor s':>8} {'ratio':>7} {'peak MiB':>9}")

    enc, _ = timed(lambda: encoder_floor(vae, x))
    dec_n, _ = timed(lambda: decoder_floor(vae, n, latent_dim))
    sweep_floor = enc + dec_n
    t, m = timed(lambda: dg.kl_per_dimension(model, guide, x))
    row("kl_per_dimension", t, sweep_floor, m, "floor: encoder + decoder pass")
    t, m = timed(lambda: dg.active_units(model, guide, x))
    row("active_units", t, sweep_floor, m)
    mi_fl, _ = timed(lambda: mi_floor(n, latent_dim))
    t, m = timed(lambda: dg.mutual_information(model, guide, x))
    row(
        "mutual_information (+ marginal KL)",
        t,
        sweep_floor + mi_fl,
        m,
        "floor: sweep + N^2 block pass",
    )
    r_fl, _ = timed(lambda: rhat_floor(vae, x))
    t, m = timed(lambda: dg.datapoint_rhat(model, guide, x))
    row("datapoint_rhat (10 draws)", t, r_fl + dec_n, m)
    s_fl, _ = timed(lambda: sensitivity_floor(vae, x))
    t, m = timed(lambda: dg.decoder_sensitivity(model, guide, x))
    row("decoder_sensitivity (score)", t, s_fl, m, "floor: decoder fwd + bwd")
    default_floor = sweep_floor + mi_fl + r_fl + s_fl
    t, m = timed(lambda: dg.diagnose(model, guide, x, max_points=None))
    row(
        "diagnose (default estimators)",
        t,
        default_floor,
        m,
        f"target < 3 s: {'met' if t < 3 else 'missed'}",
    )
    iw_fl, _ = timed(lambda: decoder_floor(vae, n * k, latent_dim))
    t, m = timed(lambda: dg.iw_log_likelihood(model, guide, x, num_samples=k))
    row(
        f"iw_log_likelihood (K={k})",
        t,
        iw_fl,
        m,
        f"floor: {n * k} decoder passes; target 1.5x: {'met' if t < 1.5 * iw_fl else 'missed'}",
    )
    if k >= 50:
        t, m = timed(lambda: dg.psis_khat(model, guide, x, num_samples=k))
        row(f"psis_khat (K={k})", t, iw_fl, m)

    print("\nscaling with N (time s / floor s)")
    sizes = [n // 4, n // 2, n]
    cells = []
    for size in sizes:
        t, _ = timed(lambda size=size: dg.mutual_information(model, guide, x[:size]))
        fl, _ = timed(lambda size=size: mi_floor(size, latent_dim))
        cells.append(f"N={size}: {t:.3f} / {fl:.3f}")
    print(f"  {'mutual_information':<20} " + "   ".join(cells))
    cells = []
    for size in [s // 10 or 1 for s in sizes]:
        t, _ = timed(lambda size=size: dg.iw_log_likelihood(model, guide, x[:size], num_samples=k))
        fl, _ = timed(lambda size=size: decoder_floor(vae, size * k, latent_dim))
        cells.append(f"N={size}: {t:.3f} / {fl:.3f}")
    print(f"  {'iw_log_likelihood':<20} " + "   ".join(cells))


if __name__ == "__main__":
    main()
