"""Provenance of a run: what produced it, where and when.

:func:`provenance` gathers the package versions, the git commit of the working
directory's repository (and whether its tracked files had uncommitted changes), the
device, the command line, a UTC timestamp, the seed, the host name and the platform.
:func:`pyrocollapse.experiment.run_experiment` stores it under ``"provenance"`` in
``metrics.json``.

Nothing here fails a run: a value that cannot be found is ``None``.

Example
-------
>>> from pyrocollapse.provenance import provenance
>>> info = provenance(seed=0, device="cpu")
>>> sorted(info)  # doctest: +NORMALIZE_WHITESPACE
['argv', 'device', 'git_commit', 'git_dirty', 'hostname', 'platform', 'seed', 'timestamp',
 'versions']
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

__all__ = ["GIT_TIMEOUT", "PACKAGES", "git_state", "package_versions", "provenance"]

#: Distributions whose versions :func:`package_versions` reports, by their names on PyPI.
PACKAGES = ("pyrocollapse", "torch", "pyro-ppl", "arviz", "numpy")
#: Seconds each ``git`` call may take before its answer is taken to be unknown.
GIT_TIMEOUT = 5.0


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """The installed version of each distribution in ``packages`` (``None`` when it is not
    installed), plus ``"python"``.

    Read from the installed metadata, without importing the packages; pyrocollapse itself
    falls back to ``pyrocollapse.__version__`` when it runs from a tree that is not
    installed.
    """
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if "pyrocollapse" in out and out["pyrocollapse"] is None:
        from pyrocollapse import __version__

        out["pyrocollapse"] = __version__
    out["python"] = platform.python_version()
    return out


def _git(args: list[str], cwd: str | os.PathLike[str] | None, timeout: float) -> str | None:
    """The stripped standard output of ``git <args>`` in ``cwd``; ``None`` when git is
    missing, fails, or takes longer than ``timeout`` seconds."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def git_state(
    cwd: str | os.PathLike[str] | None = None, *, timeout: float = GIT_TIMEOUT
) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git repository holding ``cwd`` (the working directory
    when ``None``).

    ``commit`` is the full hash of ``HEAD`` (``git rev-parse HEAD``); ``dirty`` whether
    tracked files differ from it (staged or not; untracked files, such as run outputs,
    do not count). Both are ``None`` outside a repository, without git, or when git
    takes longer than ``timeout`` seconds; ``dirty`` is ``None`` when only it failed.
    Never raises.
    """
    commit = _git(["rev-parse", "--verify", "HEAD"], cwd, timeout)
    if not commit:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd, timeout)
    return commit, None if status is None else bool(status)


def _device_name(device: str | None) -> str | None:
    """The accelerator's name for a CUDA device (``None`` otherwise, or when unknown)."""
    if device is None or not device.startswith("cuda") or "torch" not in sys.modules:
        return None
    try:
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # never fail a run for a name
        return None


def provenance(
    seed: int | None = None,
    device: Any = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    git_timeout: float = GIT_TIMEOUT,
) -> dict[str, Any]:
    """What produced a run, as plain JSON values.

    Parameters
    ----------
    seed : int or None
        The run's seed, recorded as given.
    device : str, torch.device or None
        The device the run trains on, recorded as a string (``None``: as given).
    cwd : path or None
        Folder whose git repository is asked for its commit (default: the working
        directory).
    git_timeout : float
        Seconds each git call may take (see :func:`git_state`).

    Returns
    -------
    dict
        ``versions`` (pyrocollapse, torch, pyro-ppl, arviz, numpy and python, see
        :func:`package_versions`), ``git_commit`` and ``git_dirty`` (see
        :func:`git_state`), ``device`` (plus ``device_name``, the GPU's name, for a
        CUDA device), ``argv`` (``sys.argv``), ``timestamp`` (ISO 8601, UTC, e.g.
        ``"2025-01-31T12:00:00.123456+00:00"``), ``seed``, ``hostname`` and ``platform``
        (:func:`platform.platform`).
    """
    commit, dirty = git_state(cwd, timeout=git_timeout)
    device_text = None if device is None else str(device)
    out: dict[str, Any] = {
        "versions": package_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device_text,
        "argv": [str(a) for a in sys.argv],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "seed": seed,
        "hostname": _hostname(),
        "platform": platform.platform(),
    }
    name = _device_name(device_text)
    if name is not None:
        out["device_name"] = name
    return out


def _hostname() -> str | None:
    try:
        return socket.gethostname() or None
    except OSError:
        return None
