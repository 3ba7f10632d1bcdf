"""Checks of loader options shared by the loaders: flags and local paths.

Nothing is ever downloaded: a file-based dataset needs a ``path`` that exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyrocollapse.data.dataset import StrPath


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _existing_path(name: str, path: object, *, directory: bool, expected: str = "") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    resolved = Path(path).expanduser()
    hint = f"; expected {expected}" if expected else ""
    if not resolved.exists():
        raise FileNotFoundError(f"{name} {str(resolved)!r} does not exist{hint}")
    if directory and not resolved.is_dir():
        raise NotADirectoryError(f"{name} {str(resolved)!r} is not a directory{hint}")
    if not directory and resolved.is_dir():
        raise IsADirectoryError(f"{name} {str(resolved)!r} is a directory, not a file{hint}")
    return resolved


def _find_file(directory: Path, name: str, *, expected: str) -> Path:
    """``directory/name`` or ``directory/name.gz``, whichever exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {name} nor {name}.gz is in {str(directory)!r}; {expected}")


def _require_path(dataset: str, path: StrPath | None) -> StrPath:
    if path is None:
        raise ValueError(
            f"dataset {dataset!r} reads local files, so a `path` is required, e.g. "
            f"load_dataset({dataset!r}, path=...); data are never downloaded"
        )
    return path
