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
iw_log_likelihood (K=100)     bare decoder forward passes over the same N * K draws
psis_khat (K=100)             the same decoder passes
============================  ===========================================================

``diagnose`` runs on all N points (``max_points=None``: no subsampling) with its default
estimators; the report does not record per-estimator times, so the script times the
always-on part (``estimators=("kl", "au")``: the guide/model sweep, KL and active units)
and the increment of adding each other default estimator on its own.

Importance sampling is timed in interleaved rounds (every entry once per round, the order
rotated each round, so that load from other processes falls on all entries alike), with
the median and the best round of each:

* **bare decoder** (the floor): ``vae.decoder`` on N * K standard-normal draws, in chunks
  of ``2**14`` rows and in chunks of the rows of one ``iw_log_likelihood`` run; the
  faster chunking is the floor;
* **hand-written IW**: the same estimator written in plain PyTorch (encoder once per point,
  K reparameterised draws, decoder, Bernoulli log-likelihood, prior and guide densities,
  ``logsumexp``), chunked as ``iw_log_likelihood`` chunks; its mean is printed next to
  ``iw_log_likelihood``'s as a check of the estimate;
* **iw_log_likelihood** (Pyro traces of the programs, vectorised over the K draws).

Targets: everything except IW under 3 s in all (issue 6, the default ``diagnose``);
``iw_log_likelihood`` with K = 100 within 1.3x of the bare decoder passes over the same
draws (issue 19; the ratio of medians decides, the ratio of best rounds is printed too);
peak extra memory under 1 GiB whatever N. The scaling section times mutual information
(O(N^2)) and IW (O(N K)) at growing N next to their floors.

Usage::

    python benchmarks/diagnostics.py              # the full problem (a few minutes)
    python benchmarks/diagnostics.py --quick      # N = 1000, K = 10: a smoke run
    python benchmarks/diagnostics.py --threads 1  # steadier timings on a shared machine
    python benchmarks/diagnostics.py --only iw    # just the importance-sampling rounds
    python benchmarks/diagnostics.py --only diagnose  # diagnose and its estimators
    python benchmarks/diagnostics.py --only iw --n 2000 --rounds 5  # a smaller IW problem

On a machine whose cores are busy with other work, every multi-threaded kernel waits for
its slowest thread, which can inflate both the estimators and their floors many times;
the header prints the load average, and ``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from _common import arguments, set_threads

from pyrocollapse import diagnostics as dg
from pyrocollapse.diagnostics import _constants, importance
from pyrocollapse.models import MLPVAE

_ROWS = _constants._PARTICLE_ROWS
_IW_ROWS = importance._IW_ROWS
_BLOCK = _constants._BLOCK


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


def interleaved(
    entries: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall times and process CPU times of every entry over ``rounds`` rounds (after one
    warm-up call each).

    Each round calls every entry once, the order rotated by one each round, so that load
    from other processes falls on all entries alike. With one torch thread the CPU time
    leaves out the time the process waited for a core: on a busy machine it is the
    steadier measure of the work done.
    """
    names = list(entries)
    for name in names:
        entries[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            entries[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


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
def decoder_floor(vae: MLPVAE, n: int, latent_dim: int, rows: int = _ROWS) -> None:
    """Bare decoder forward passes over ``n`` standard-normal latent draws, in chunks of
    ``rows`` draws."""
    for start in range(0, n, rows):
        vae.decoder(torch.randn(min(rows, n - start), latent_dim))


@torch.no_grad()
def hand_iw(vae: MLPVAE, x: torch.Tensor, k: int, points: int) -> torch.Tensor:
    """The IW estimate of log p(x_n) per point, shape ``(N,)``, in plain PyTorch.

    Per chunk of ``points`` points: the encoder once, ``k`` reparameterised draws, the
    decoder on all of them, the Bernoulli log-likelihood as ``x . l - sum softplus(l)``,
    log N(z; 0, I) - log q(z | x), and ``logsumexp`` over the draws.
    """
    out = []
    for xb in x.split(points):
        loc, scale = vae.encoder_params(xb)
        eps = torch.randn(k, *loc.shape)
        z = loc + scale * eps
        logits = vae.decoder(z)  # (k, b, D)
        softplus = torch.nn.functional.softplus(logits).sum(-1)
        log_lik = torch.einsum("kbd,bd->kb", logits, xb) - softplus
        log_prior = -0.5 * z.square().sum(-1)
        log_q = -0.5 * eps.square().sum(-1) - scale.log().sum(-1)
        lw = log_lik + log_prior - log_q  # the two -D/2 log(2 pi) cancel
        out.append(torch.logsumexp(lw.double(), 0) - math.log(k))
    return torch.cat(out)


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
    block = -torch.rand(_constants._DIM_BLOCK)
    for _ in range(max(1, entries // _constants._DIM_BLOCK)):
        block.clone().exp_().sum()


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def row(name: str, t: float, floor: float | None, peak: float, note: str = "") -> None:
    ratio = f"{t / floor:6.2f}x" if floor else "      "
    floor_s = f"{floor:8.3f}" if floor else "        "
    print(f"{name:<34} {t:8.3f} {floor_s} {ratio} {peak:9.0f}  {note}")


def stats(times: list[float]) -> tuple[float, float]:
    """Median and best of some wall times."""
    return statistics.median(times), min(times)


def bench_diagnose(model: Any, guide: Any, x: torch.Tensor, floor: float | None) -> None:
    """``diagnose`` with its default estimators on every point, and what each costs."""
    t, m = timed(lambda: dg.diagnose(model, guide, x, max_points=None))
    row(
        "diagnose (default estimators)",
        t,
        floor,
        m,
        f"all {len(x)} points; target < 3 s: {'met' if t < 3 else 'missed'}",
    )
    base, m = timed(lambda: dg.diagnose(model, guide, x, estimators=("kl", "au"), max_points=None))
    row("  of which sweep + kl + au", base, None, m, "estimators=('kl', 'au')")
    for name in ("mi", "rhat", "sensitivity"):
        t, m = timed(
            lambda name=name: dg.diagnose(
                model, guide, x, estimators=("kl", "au", name), max_points=None
            )
        )
        row(f"  + {name}", t - base, None, m, f"diagnose with kl, au, {name}: {t:.3f} s")


def bench_iw(vae: MLPVAE, x: torch.Tensor, k: int, rounds: int) -> None:
    """``iw_log_likelihood`` against the bare decoder and a hand-written IW, interleaved."""
    n, latent_dim = len(x), vae.latent_dim
    points, draws = importance._run_plan(k, 256)
    run_rows = points * max(draws)
    results: dict[str, Any] = {}

    def iw() -> None:
        results["iw"] = dg.iw_log_likelihood(vae.model, vae.guide, x, num_samples=k)

    def hand() -> None:
        results["hand"] = hand_iw(vae, x, k, points)

    entries = {
        f"bare decoder, {_ROWS}-row chunks": lambda: decoder_floor(vae, n * k, latent_dim),
        f"bare decoder, {run_rows}-row chunks": lambda: decoder_floor(
            vae, n * k, latent_dim, run_rows
        ),
        "hand-written IW": hand,
        f"iw_log_likelihood (K={k})": iw,
    }
    wall, cpu = interleaved(entries, rounds)
    print(
        f"\nimportance sampling, N = {n}, K = {k}: {n * k} decoder rows; iw_log_likelihood "
        f"runs {len(draws)} x {max(draws)} draws of {points} points ({run_rows} rows) at a "
        f"time; {rounds} interleaved rounds"
    )
    print(f"{'entry':<34} {'median s':>8} {'best s':>8} {'CPU med':>8} {'CPU best':>8}")
    for name in entries:
        print(
            f"{name:<34} {statistics.median(wall[name]):8.3f} {min(wall[name]):8.3f} "
            f"{statistics.median(cpu[name]):8.3f} {min(cpu[name]):8.3f}"
        )
    iw_name = f"iw_log_likelihood (K={k})"
    for label, times in (("wall", wall), ("CPU", cpu)):
        floors = [stats(times[name]) for name in list(entries)[:2]]
        floor_med, floor_best = min(f[0] for f in floors), min(f[1] for f in floors)
        iw_med, iw_best = stats(times[iw_name])
        hand_med, hand_best = stats(times["hand-written IW"])
        ratio = iw_med / floor_med
        verdict = f"target 1.3x (median): {'met' if ratio <= 1.3 else 'missed'}"
        print(
            f"{label:>4} time, iw_log_likelihood / bare decoder: {ratio:.2f}x median, "
            f"{iw_best / floor_best:.2f}x best; {verdict if label == 'wall' else ''}"
        )
        print(
            f"{'':>4}       iw_log_likelihood / hand-written IW: {iw_med / hand_med:.2f}x "
            f"median, {iw_best / hand_best:.2f}x best; hand-written / bare decoder: "
            f"{hand_med / floor_med:.2f}x median"
        )
    res = results["iw"]
    print(
        f"estimates: iw_log_likelihood {res.mean:.3f} +- {res.stderr:.3f} nats "
        f"({'vectorised' if res.vectorised else 'per-draw'} path), hand-written "
        f"{float(results['hand'].mean()):.3f}"
    )


def main() -> None:
    parser = arguments(__doc__, quick="N = 1000, K = 10: a smoke run", threads=None)
    parser.add_argument(
        "--only",
        choices=("all", "diagnose", "iw"),
        default="all",
        help="run one section: the per-estimator table with diagnose, or importance sampling",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of the IW timings (5)"
    )
    parser.add_argument("--n", type=int, default=None, help="data points (overrides --quick)")
    parser.add_argument("--k", type=int, default=None, help="IW draws (overrides --quick)")
    args = parser.parse_args()
    set_threads(parser, args.threads)
    n, k = (1000, 10) if args.quick else (10_000, 100)
    n, k = args.n or n, args.k or k
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
        hint = " (try --threads 1)" if torch.get_num_threads() > 1 else ""
        print(
            "warning: the machine is busy; timings include waits for the CPU, and "
            f"multi-threaded kernels wait for their slowest thread{hint}"
        )
    if args.only in ("all", "diagnose"):
        print(f"{'estimator':<34} {'time s':>8} {'floor s':>8} {'ratio':>7} {'peak MiB':>9}")
        enc, _ = timed(lambda: encoder_floor(vae, x))
        dec_n, _ = timed(lambda: decoder_floor(vae, n, latent_dim))
        sweep_floor = enc + dec_n
        mi_fl, _ = timed(lambda: mi_floor(n, latent_dim))
        r_fl, _ = timed(lambda: rhat_floor(vae, x))
        s_fl, _ = timed(lambda: sensitivity_floor(vae, x))
        if args.only == "all":
            t, m = timed(lambda: dg.kl_per_dimension(model, guide, x))
            row("kl_per_dimension", t, sweep_floor, m, "floor: encoder + decoder pass")
            t, m = timed(lambda: dg.active_units(model, guide, x))
            row("active_units", t, sweep_floor, m)
            t, m = timed(lambda: dg.mutual_information(model, guide, x))
            row(
                "mutual_information (+ marginal KL)",
                t,
                sweep_floor + mi_fl,
                m,
                "floor: sweep + N^2 block pass",
            )
            t, m = timed(lambda: dg.datapoint_rhat(model, guide, x))
            row("datapoint_rhat (10 draws)", t, r_fl + dec_n, m)
            t, m = timed(lambda: dg.decoder_sensitivity(model, guide, x))
            row("decoder_sensitivity (score)", t, s_fl, m, "floor: decoder fwd + bwd")
        bench_diagnose(model, guide, x, sweep_floor + mi_fl + r_fl + s_fl)
    if args.only in ("all", "iw"):
        bench_iw(vae, x, k, args.rounds)
    if args.only != "all":
        return
    if k >= 50:
        iw_fl, _ = timed(lambda: decoder_floor(vae, n * k, latent_dim, _IW_ROWS))
        t, m = timed(lambda: dg.psis_khat(model, guide, x, num_samples=k))
        print(f"{'estimator':<34} {'time s':>8} {'floor s':>8} {'ratio':>7} {'peak MiB':>9}")
        row(f"psis_khat (K={k})", t, iw_fl, m, "floor: the IW decoder passes")

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
        fl, _ = timed(lambda size=size: decoder_floor(vae, size * k, latent_dim, _IW_ROWS))
        cells.append(f"N={size}: {t:.3f} / {fl:.3f}")
    print(f"  {'iw_log_likelihood':<20} " + "   ".join(cells))


if __name__ == "__main__":
    main()
