"""PyTorch Lightning itself, from ``lightning`` or the standalone ``pytorch_lightning``.

Every module of :mod:`pyrocollapse.lightning` takes Lightning's names from here, so that
a missing Lightning is reported once, with the extra to install.
"""

from __future__ import annotations

import importlib

__all__ = [
    "CSVLogger",
    "MisconfigurationException",
    "ModelCheckpoint",
    "TensorBoardLogger",
    "check_installed",
    "pl",
]

#: The message of the ImportError raised when Lightning is missing.
_MISSING = (
    "pyrocollapse.lightning needs PyTorch Lightning (>= 2.2), which is not installed. "
    'Install it with: pip install "pyrocollapse[lightning]" (or: pip install lightning)'
)

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
except ImportError:  # the standalone "pytorch-lightning" distribution has the same API
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import ModelCheckpoint
        from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
        from pytorch_lightning.utilities.exceptions import MisconfigurationException
    except ImportError as e:
        raise ImportError(_MISSING) from e


def check_installed() -> None:
    """Raise ``ImportError`` naming the extra to install unless Lightning imports now.

    :mod:`pyrocollapse.lightning` calls this each time it is imported: this module may
    already be loaded (and so not run again) when Lightning has become unimportable.
    """
    try:
        importlib.import_module(pl.__name__)
    except ImportError as e:
        raise ImportError(_MISSING) from e
