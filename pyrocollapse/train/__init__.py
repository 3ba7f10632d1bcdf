"""Training: :func:`fit` a Pyro model/guide pair with any ELBO, recording a :class:`History`.

``fit`` runs the ELBO's ``differentiable_loss`` under one ``torch.optim`` optimiser over
the parameters the model and guide use (found from their ``param`` sites, so plain
``pyro.param`` statements, ``pyro.module`` and ``PyroModule`` parameters all train).

With ``aggressive=True`` (or when a callback such as
:class:`pyrocollapse.callbacks.AggressiveOnCollapse` sets ``state.aggressive``) it trains
the inference network aggressively, as He et al. (2019) propose against posterior
collapse: before each decoder update the encoder alone is updated until its loss stops
improving, and the mode ends once the mutual information I_q(x; z) stops rising.

``fit`` also runs on any torch device (``device="cuda"``), streams data from a
``torch.utils.data.DataLoader``, writes resumable checkpoints (``checkpoint_dir``,
``resume=True``: a resumed run repeats the uninterrupted one bit for bit) and stops with
a :class:`NonFiniteLossError` naming the epoch, step and ELBO term when a loss or a
gradient stops being finite.

While it trains, ``fit`` shows progress bars over epochs and over the steps of each
epoch on a terminal, and logs periodic lines (the ``"pyrocollapse.train"`` logger)
elsewhere; ``tracker=`` sends every epoch's values to TensorBoard, MLflow or a tracker
of your own (:mod:`pyrocollapse.tracking`).

The package holds one concept per module: ``history`` (:class:`EpochRecord`,
:class:`History`), ``callback`` (:class:`Callback`, :class:`PrintProgress`), ``progress``
(bars and log lines), ``state`` (:class:`TrainState`, :class:`NonFiniteLossError`),
``optim`` (parameters, optimiser, scheduler, clipping), ``devices``, ``sources`` (data held
in memory or read from a loader), ``settings`` (fit's arguments, checked), ``step`` (one
optimisation step, its non-finite checks and aggressive mode's encoder loop),
``checkpoint``, ``monitor`` (active units and mutual information each epoch) and
``fitting`` (:func:`fit`, composed of those parts). Every name is imported from here,
``pyrocollapse.train``; code that replaces one of fit's private helpers (tests,
benchmarks) patches it in the module that looks it up, e.g.
``pyrocollapse.train.fitting._monitor``.
"""

from __future__ import annotations

# Private names marked F401 are not in ``__all__``: other modules, tests and benchmarks
# import them from here.
from pyrocollapse.train import checkpoint as _checkpoint
from pyrocollapse.train import progress as _progress
from pyrocollapse.train.callback import (
    Callback,
    PrintProgress,
    _epoch_line,  # noqa: F401
)
from pyrocollapse.train.checkpoint import (
    _atomic_save,  # noqa: F401
    _read_checkpoint,  # noqa: F401
    _restore_rng,  # noqa: F401
    _rng_payload,  # noqa: F401
    _write_checkpoint,  # noqa: F401
)
from pyrocollapse.train.fitting import fit
from pyrocollapse.train.history import EpochRecord, History
from pyrocollapse.train.monitor import (
    _MONITOR_CHUNK,  # noqa: F401
    _monitor,  # noqa: F401
)
from pyrocollapse.train.optim import (
    _fused_supported,  # noqa: F401
    collect_params,
    make_optimization,  # noqa: F401
    make_optimizer,  # noqa: F401
)
from pyrocollapse.train.progress import (
    _BAR_REFRESH,  # noqa: F401
    _Progress,  # noqa: F401
)
from pyrocollapse.train.sources import (
    _LoaderSource,  # noqa: F401
    _MemorySource,  # noqa: F401
)
from pyrocollapse.train.state import NonFiniteLossError, TrainState
from pyrocollapse.train.step import (
    _InnerLoop,  # noqa: F401
    _train_step,  # noqa: F401
)

__all__ = [
    "CHECKPOINT_NAME",
    "Callback",
    "EpochRecord",
    "History",
    "NonFiniteLossError",
    "PrintProgress",
    "TrainState",
    "collect_params",
    "fit",
]

#: File name of the checkpoint ``fit`` writes into ``checkpoint_dir``.
CHECKPOINT_NAME = _checkpoint.CHECKPOINT_NAME
#: Seconds between the plain progress lines ``fit(progress=True)`` logs when its output
#: is not a terminal (at most one line per interval within an epoch). ``fit`` reads
#: ``pyrocollapse.train.progress.PROGRESS_INTERVAL``; set that one to change it.
PROGRESS_INTERVAL = _progress.PROGRESS_INTERVAL

# The public functions keep the home they had before ``pyrocollapse.train`` became a
# package, for the API reference (Sphinx gives classes their defining module as a
# canonical name, not functions) and the top-level table of ``pyrocollapse``.
fit.__module__ = __name__
collect_params.__module__ = __name__
