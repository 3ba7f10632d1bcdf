"""Memory checks before a run: lower bounds on its largest tensors against what is free.

:func:`check_memory` refuses, before any model is built, a run whose sizes
(:func:`memory_estimates`) cannot fit in the memory :func:`_available_memory` reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyrocollapse.experiment.config import RunConfig


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``None`` if unknown)."""
    import os

    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        return int(vm.available + swap.free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {k: v for k, _, v in (line.partition(":") for line in f)}
        kib = int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])
        return kib * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def memory_estimates(config: RunConfig, n_train: int, n_valid: int) -> list[tuple[str, int, str]]:
    """Lower bounds on the largest tensors a run of ``config`` holds at once.

    Each entry is ``(what, bytes, options)``: rows x sizes x 4 bytes (float32; 8 for the
    float64 importance weights), for ``n_train`` training and ``n_valid`` held-out rows.
    """
    d = config.latent_dim
    batch = max(1, min(config.batch_size, n_train))
    valid = max(1, n_valid)
    rows = max(1, min(256, valid))  # diagnose's chunks
    out = [
        (
            f"one training batch of z, its mean and scale ({batch} rows x {d} dims x 3 x 4 bytes)",
            batch * d * 3 * 4,
            "--latent-dim or --batch-size",
        ),
        (
            f"the draws of one diagnostic chunk ({config.num_samples} samples x {rows} held-out "
            f"rows x {d} dims x 4 bytes)",
            config.num_samples * rows * d * 4,
            "--latent-dim or --num-samples",
        ),
    ]
    if {"iw", "psis"} & set(config.estimators):
        out.append(
            (
                f"the importance weights of one chunk ({config.importance_samples} samples x "
                f"{rows} rows x 8 bytes)",
                config.importance_samples * rows * 8,
                "--importance-samples",
            )
        )
    if config.posterior_samples:
        points = min(config.posterior_points, valid)
        out.append(
            (
                f"posterior.nc's draws ({config.posterior_samples} samples x {points} points x "
                f"{d} dims x 4 bytes)",
                config.posterior_samples * points * d * 4,
                "--latent-dim, --posterior-samples or --posterior-points",
            )
        )
    return out


def check_memory(config: RunConfig, n_train: int, n_valid: int) -> None:
    """Refuse, before any model is built, a run whose sizes cannot fit in memory.

    Raises ``ValueError`` naming the sizes, the memory they need at least (see
    :func:`memory_estimates`) and the memory available; does nothing when the available
    memory is unknown.
    """
    available = _available_memory()
    if available is None:
        return
    for what, need, options in memory_estimates(config, n_train, n_valid):
        if need > available:
            raise ValueError(
                f"the run cannot fit in memory: it needs at least {_gib(need)} for {what}, "
                f"but {_gib(available)} is available; lower {options}"
            )
