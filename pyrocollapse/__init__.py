"""pyrocollapse: VAEs in Pyro, trained against posterior collapse, with collapse diagnostics.

The top-level names are loaded lazily, so ``import pyrocollapse`` (and the command line)
starts fast; ArviZ in particular is imported only where it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "diagnose": "pyrocollapse.diagnostics",
    "CollapseReport": "pyrocollapse.report",
    "fit": "pyrocollapse.train",
    "History": "pyrocollapse.train",
    "NonFiniteLossError": "pyrocollapse.train",
    "load_dataset": "pyrocollapse.data",
    "to_inference_data": "pyrocollapse.summaries",
    "summarize": "pyrocollapse.summaries",
    "compare": "pyrocollapse.comparison",
    "RunConfig": "pyrocollapse.experiment",
    "run_experiment": "pyrocollapse.experiment",
    "load_run": "pyrocollapse.persistence",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyrocollapse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
