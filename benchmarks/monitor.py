"""Cost of ``fit``'s per-epoch monitor (active units and MI per latent site).

``pyrocollapse.train.fit`` measures, after every epoch, the active units and the mutual
information I_q(x; z) of each monitored latent site on a fixed subset of
``monitor_size`` (512) points. Target (issue #15, item 13): the monitor costs at most
**5 %** of an epoch's training time.

For each problem the script trains with ``fit`` for ``--repeats`` + 1 epochs with the
default monitor (the first epoch, with Pyro's validation and the first traces, is a
warm-up and not counted) and times each call of the monitor (``train.fitting._monitor``,
wrapped) against the same epoch's training time (``epoch_time`` in the History, which
excludes the monitor), so that load from other processes falls on both alike; and the
same in the thread's CPU time (``time.thread_time``; torch runs on the calling thread
with ``--threads 1``), which other processes' load moves least on a shared machine: the
target is judged on the median CPU-time share. It then trains the same number of epochs
with ``monitor=None`` for the epoch time without the monitor. Problems:

* **digits MLPVAE**: ``MLPVAE(64, 16, hidden=(256, 128))`` on the 1,797 x 64 digits,
  batch 128, ``PlainELBO`` (one site ``z``);
* **deep Markov model**: the test gallery's DMM (``tests/gallery``: GRU guide, gated
  transition, ``z_1 .. z_T`` sites, masks past each sequence's length) on 512 and 2048
  synthetic binary sequences (10 bits) of up to ``T`` steps, batch 32, ``PlainELBO``
  (``T`` sites);
* **flow prior** and **VampPrior**: tutorial 4's model, ``MLPVAE(20, 4, prior,
  likelihood="gaussian", hidden=(64, 64))`` on 1,600 points of
  ``load_dataset("mixture", n=2000, input_dim=20)``, batch 100, with
  ``FlowPrior(4, "spline_coupling", num_transforms=2)`` and with
  ``VampPrior(n_pseudo=50)`` (pseudo-inputs seeded from the data): priors whose
  density costs more than a Normal's, which the monitor does not evaluate (the MI
  needs q only) beyond its check of whether the prior differs between points.

The monitoring subset is ``fit``'s default (``monitor_size=None``: a sixteenth of the
data, between 64 and 512 points).

and, for comparison, the cost of what the monitor did before (one ``active_units`` and
one ``mutual_information`` call per site, each tracing the subset) on the same subset.

Usage::

    python benchmarks/monitor.py              # every problem, DMM T = 16, 5 repeats
    python benchmarks/monitor.py --quick      # 2 repeats, T = 8
    python benchmarks/monitor.py --threads 2  # torch intra-op threads (default 1)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from _common import arguments, context, load_average, set_threads

import pyrocollapse.train.fitting as train_module  # fit looks _monitor up there
from pyrocollapse.diagnostics import active_units, mutual_information
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.train import Callback, fit

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


def prior_problem(name: str) -> tuple[str, Callable, Callable, Any, int, Any]:
    """Tutorial 4's MLP VAE with a flow prior (``"flow"``) or a VampPrior (``"vamp"``)."""
    from pyrocollapse import load_dataset
    from pyrocollapse.priors import FlowPrior, VampPrior

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = load_dataset("mixture", n=2000, n_components=4, latent_dim=2, input_dim=20, seed=0)
    train, _ = data.split(0.2, seed=0)
    if name == "flow":
        prior = FlowPrior(4, "spline_coupling", num_transforms=2)
        what = "flow prior"
    else:
        prior = VampPrior(None, n_pseudo=50, input_shape=(20,), latent_dim=4, support="real")
        what = "VampPrior"
    vae = MLPVAE(20, 4, prior, likelihood="gaussian", hidden=(64, 64))
    if name == "vamp":
        prior.init_pseudo_inputs(train.data)
    label = f"MLPVAE, {what} ({train.data.shape[0]} x 20, batch 100, 1 site)"
    return label, vae.model, vae.guide, train.data, 100, vae


class _CpuClock(Callback):
    """The calling thread's CPU time at the start of training and at each epoch's end."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, state: Any) -> None:
        self.marks = [time.thread_time()]

    def on_epoch_end(self, state: Any, record: Any) -> None:
        self.marks.append(time.thread_time())


def run(
    model: Callable, guide: Callable, data: Any, batch_size: int, epochs: int, monitor: Any
) -> dict[str, Any]:
    """Train; return per-epoch training and monitor times (wall and CPU) and the last
    subset."""
    monitor_wall: list[float] = []
    monitor_cpu: list[float] = []
    subset: list[Any] = []
    real = train_module._monitor

    def timed(model: Callable, guide: Callable, x: Any, *args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = real(model, guide, x, *args, **kwargs)
        monitor_wall.append(time.perf_counter() - t0)
        monitor_cpu.append(time.thread_time() - c0)
        subset[:] = [x]
        return out

    clock = _CpuClock()
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
            callbacks=[clock],
        )
    finally:
        train_module._monitor = real
    # an epoch's CPU time between two epoch ends, less its monitor: the training
    epoch_cpu = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    if monitor_cpu:
        epoch_cpu = [e - m for e, m in zip(epoch_cpu, monitor_cpu, strict=True)]
    return {
        "epoch_wall": list(hist.column("epoch_time")),
        "epoch_cpu": epoch_cpu,
        "monitor_wall": monitor_wall,
        "monitor_cpu": monitor_cpu,
        "subset": subset[0] if subset else None,
    }


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
    on = run(model, guide, data, batch_size, epochs, "default")
    train_t, mon = on["epoch_wall"][1:], on["monitor_wall"][1:]
    share = [m / t for m, t in zip(mon, train_t, strict=True)]
    share_cpu = [m / t for m, t in zip(on["monitor_cpu"][1:], on["epoch_cpu"][1:], strict=True)]
    subset = on["subset"]
    # the same epochs without the monitor (continuing from the trained parameters)
    without = run(model, guide, data, batch_size, epochs, None)["epoch_wall"][1:]
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
        "share_cpu": statistics.median(share_cpu),
        "before": statistics.median(before),
    }


def main() -> None:
    parser = arguments(__doc__, quick="2 repeats, T = 8")
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
    set_threads(parser, args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    t_max = args.steps or (8 if args.quick else 16)
    print(f"{context()}; {repeats} timed epochs per problem (after one warm-up)")
    rows = [bench(digits_problem(), repeats)]
    rows += [bench(dmm_problem(n, t_max), repeats) for n in args.sequences]
    rows += [bench(prior_problem(name), repeats) for name in ("flow", "vamp")]
    print()
    header = (
        f"{'problem':<66} {'epoch':>7} {'epoch':>7} {'monitor':>8} {'monitor':>8} "
        f"{'share':>6} {'share':>6} {'share':>6} {'before':>8}  target (CPU share)"
    )
    print(header)
    print(
        f"{'':<66} {'w/o mon':>7} {'(train)':>7} {'median':>8} {'best':>8} "
        f"{'median':>6} {'best':>6} {'CPU':>6} {'per-site':>8}"
    )
    print(f"{'':<66} {'ms':>7} {'ms':>7} {'ms':>8} {'ms':>8} {'':>6} {'':>6} {'':>6} {'ms':>8}")
    for r in rows:
        verdict = "met" if r["share_cpu"] <= TARGET else "MISSED"
        print(
            f"{r['label']:<66} {1e3 * r['epoch_without']:7.1f} {1e3 * r['epoch_with']:7.1f} "
            f"{1e3 * r['monitor_median']:8.2f} {1e3 * r['monitor_best']:8.2f} "
            f"{r['share_median']:6.3f} {r['share_best']:6.3f} {r['share_cpu']:6.3f} "
            f"{1e3 * r['before']:8.1f}  <= {TARGET:.0%}: {verdict}"
        )
    print(
        "(share = monitor time / the same epoch's training time, in wall time (median, best) "
        "and in the thread's CPU time (median; the target's figure: other processes' load "
        "moves it least); monitoring subsets of "
        f"{', '.join(str(r['points']) for r in rows)} points; 'before' = one active_units "
        "and one mutual_information call per site, as the monitor did before issue #15; "
        f"load average at end {load_average()})"
    )


if __name__ == "__main__":
    main()
