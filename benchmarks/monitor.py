"""Cost of ``fit``'s per-epoch monitor (active units and MI per latent site).

``pyrocollapse.train.fit`` measures, after every epoch, the active units and the mutual
information I_q(x; z) of each monitored latent site on a fixed subset of
``monitor_size`` (512) points. Target (issue #15, item 13): the monitor costs at most
**5 %** of an epoch's training time.

For each problem the script trains with ``fit`` for ``--repeats`` + 1 epochs with the
default monitor (the first epoch, with Pyro's validation and the first traces, is a
warm-up and not counted) and times each call of the monitor (``train._monitor``,
wrapped) against the same epoch's training time (``epoch_time`` in the History, which
excludes the monitor), so that load from other processes falls on both alike. It then
trains the same number of epochs with ``monitor=None`` for the epoch time without the
monitor. Problems:

* **digits MLPVAE**: ``MLPVAE(64, 16, hidden=(256, 128))`` on the 1,797 x 64 digits,
  batch 128, ``PlainELBO`` (one site ``z``);
* **deep Markov model**: the test gallery's DMM (``tests/gallery``: GRU guide, gated
  transition, ``z_1 .. z_T`` sites, masks past each sequence's length) on 512 and 2048
  synthetic binary sequences (10 bits) of up to ``T`` steps, batch 32, ``PlainELBO``
  (``T`` sites). With 512 sequences the monitoring subset is the whole data set.

and, for comparison, the cost of what the monitor did before (one ``active_units`` and
one ``mutual_information`` call per site, each tracing the subset) on the same subset.

Usage::

    python benchmarks/monitor.py              # digits, DMM 512 and 2048, T = 16, 5 repeats
    python benchmarks/monitor.py --quick      # 2 repeats, T = 8
    python benchmarks/monitor.py --threads 2  # torch intra-op threads (default 1)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch

import pyrocollapse.train as train_module
from pyrocollapse.diagnostics import active_units, mutual_information
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.train import fit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

#: The monitor may cost at most this fraction of an epoch's training time.
TARGET = 0.05


def digits_problem() -> tuple[str, Callable, Callable, Any, int, Any]:
    from sklearn.datasets import load_digits

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    vae = MLPVAE(64, 16, hidden=(256, 128))
    return "digits MLPVAE (1797 x 64, batch 128, 1 site)", vae.model, vae.guide, x, 128, vae


def dmm_problem(n: int, t_max: int) -> tuple[str, Callable, Callable, Any, int, Any]:
    from gallery.programs import DMM, _dmm_data

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = _dmm_data(n, t_max, 10, torch.Generator().manual_seed(0))
    dmm = DMM(10, 4, 32, 32)
    label = f"deep Markov model ({n} sequences, T {t_max}, batch 32, {t_max} sites)"
    return label, dmm.model, dmm.guide, data, 32, dmm


def run(
    model: Callable, guide: Callable, data: Any, batch_size: int, epochs: int, monitor: Any
) -> tuple[list[float], list[float], Any]:
    """Train; return per-epoch training times, monitor times and the last subset."""
    monitor_times: list[float] = []
    subset: list[Any] = []
    real = train_module._monitor

    def timed(model: Callable, guide: Callable, x: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = real(model, guide, x, *args, **kwargs)
        monitor_times.append(time.perf_counter() - t0)
        subset[:] = [x]
        return out

    train_module._monitor = timed
    try:
        hist = fit(
            model,
            guide,
            data,
            loss=PlainELBO(),
            epochs=epochs,
            batch_size=batch_size,
            seed=0,
            progress=False,
            monitor=monitor,
        )
    finally:
        train_module._monitor = real
    return list(hist.column("epoch_time")), monitor_times, (subset[0] if subset else None)


def old_monitor(model: Callable, guide: Callable, x: Any, sites: list[str]) -> float:
    """Seconds the per-site calls of the former monitor take on the subset ``x``."""
    t0 = time.perf_counter()
    for site in sites:
        active_units(model, guide, x, site=site)
        mutual_information(model, guide, x, site=site, num_samples=1)
    return time.perf_counter() - t0


def bench(problem: tuple, repeats: int) -> dict[str, Any]:
    label, model, guide, data, batch_size, _ = problem
    epochs = repeats + 1
    with_times, mon, subset = run(model, guide, data, batch_size, epochs, "default")
    train_t, mon = with_times[1:], mon[1:]
    share = [m / t for m, t in zip(mon, train_t, strict=True)]
    # the same epochs without the monitor (continuing from the trained parameters)
    without, _, _ = run(model, guide, data, batch_size, epochs, None)
    without = without[1:]
    sites = [
        k.split("/", 1)[1]
        for k in train_module._monitor(model, guide, subset, "default", [])
        if k.startswith("mi/")
    ]
    before = [old_monitor(model, guide, subset, sites) for _ in range(max(1, repeats // 2))]
    return {
        "label": label,
        "sites": len(sites),
        "points": subset.n,
        "epoch_with": statistics.median(train_t),
        "epoch_without": statistics.median(without),
        "monitor_median": statistics.median(mon),
        "monitor_best": min(mon),
        "share_median": statistics.median(share),
        "share_best": min(share),
        "before": statistics.median(before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, T = 8")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="DMM length T (default 16)")
    parser.add_argument(
        "--sequences",
        type=int,
        nargs="+",
        default=[512, 2048],
        help="DMM data set sizes (default 512 2048)",
    )
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    t_max = args.steps or (8 if args.quick else 16)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}; torch.set_num_threads("
        f"{args.threads}) on {os.cpu_count()} CPUs; load average at start "
        f"{os.getloadavg()[0]:.2f}; {repeats} timed epochs per problem (after one warm-up)"
    )
    rows = [bench(digits_problem(), repeats)]
    rows += [bench(dmm_problem(n, t_max), repeats) for n in args.sequences]
    print()
    header = (
        f"{'problem':<62} {'epoch':>7} {'epoch':>7} {'monitor':>8} {'monitor':>8} "
        f"{'share':>6} {'share':>6} {'before':>8}  target"
    )
    print(header)
    print(
        f"{'':<62} {'w/o mon':>7} {'(train)':>7} {'median':>8} {'best':>8} "
        f"{'median':>6} {'best':>6} {'per-site':>8}"
    )
    print(f"{'':<62} {'ms':>7} {'ms':>7} {'ms':>8} {'ms':>8} {'':>6} {'':>6} {'ms':>8}")
    for r in rows:
        verdict = "met" if r["share_median"] <= TARGET else "MISSED"
        print(
            f"{r['label']:<62} {1e3 * r['epoch_without']:7.1f} {1e3 * r['epoch_with']:7.1f} "
            f"{1e3 * r['monitor_median']:8.2f} {1e3 * r['monitor_best']:8.2f} "
            f"{r['share_median']:6.3f} {r['share_best']:6.3f} {1e3 * r['before']:8.1f}  "
            f"<= {TARGET:.0%}: {verdict}"
        )
    print(
        "(share = monitor time / the same epoch's training time; monitoring subsets of "
        f"{', '.join(str(r['points']) for r in rows)} points; 'before' = one active_units "
        "and one mutual_information call per site, as the monitor did before issue #15; "
        f"load average at end {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
