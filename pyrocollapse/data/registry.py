"""The registry of datasets by short name, :data:`DATASETS`.

Every loader module registers its loaders here when it is imported; ``pyrocollapse.data``
imports them all, in the order of the command line's dataset names
(``pyrocollapse._names.DATASET_NAMES``), and defines :func:`load_dataset` on top of them.
"""

from __future__ import annotations

from typing import Any

from pyrocollapse.registry import Registry

__all__ = ["DATASETS"]

#: Short name -> loader, used by :func:`load_dataset` and ``pyrocollapse run --dataset``.
DATASETS: Registry[Any] = Registry("dataset")
