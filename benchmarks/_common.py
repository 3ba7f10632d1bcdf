"""What every benchmark script shares: its command line, torch's threads, the run's context.

Each script under ``benchmarks/`` times pyrocollapse against a hand-written PyTorch
baseline measured in the same run and prints ratios. The context line (versions, threads,
CPUs, load average) is printed first and the load average again last, because on a shared
machine the load moves every timing.
"""

from __future__ import annotations

import argparse
import os


def arguments(doc: str | None, quick: str, threads: int | None = 1) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark takes.

    Parameters
    ----------
    doc : str or None
        The script's ``__doc__``; its first line describes the script in ``--help``.
    quick : str
        What ``--quick`` does in this script (a smoke run of a few steps).
    threads : int or None
        Default of ``--threads`` (torch's intra-op threads); ``None`` keeps torch's own.
    """
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    default = "torch's" if threads is None else str(threads)
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"torch intra-op threads ({default})"
    )
    return parser


def set_threads(parser: argparse.ArgumentParser, threads: int | None) -> None:
    """Apply ``--threads`` (``None``: leave torch's default); exit with a usage error if < 1."""
    import torch

    if threads is None:
        return
    if threads < 1:
        parser.error(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, or ``"unknown"`` where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def context() -> str:
    """One line: torch and Pyro versions, torch's threads, the CPUs, the load at start."""
    import pyro
    import torch

    return (
        f"torch {torch.__version__}, pyro {pyro.__version__}; torch.set_num_threads("
        f"{torch.get_num_threads()}) on {os.cpu_count()} CPUs; load average at start "
        f"{load_average()}"
    )
