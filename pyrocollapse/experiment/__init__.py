"""One training run, end to end: the engine behind ``pyrocollapse run`` and ``compare``.

A :class:`RunConfig` names everything by its registry name and plain options (so it
serialises to JSON and travels to worker processes); :func:`build` turns it into the
dataset, model and objective; :func:`run_experiment` trains, diagnoses and writes the
report folder.

The package holds one concept per module: :mod:`~pyrocollapse.experiment.config` (the
configuration and its checks), :mod:`~pyrocollapse.experiment.memory` (memory checks
before a run), :mod:`~pyrocollapse.experiment.building` (what a configuration builds),
:mod:`~pyrocollapse.experiment.folders` (report and work folders) and
:mod:`~pyrocollapse.experiment.running` (the run itself). Every name is also importable
from here, where it lived before ``pyrocollapse.experiment`` became a package.

The command line looks :func:`run_experiment` up here when it runs, so that replacing
``pyrocollapse.experiment.run_experiment`` (e.g. with ``monkeypatch.setattr``) reaches
it; the functions of the submodules call each other directly.
"""

from __future__ import annotations

# ``X as X`` marks what is importable from here besides ``__all__``, as before
# ``pyrocollapse.experiment`` became a package (the command line, the Lightning launcher and
# user scripts use these); private helpers are imported from their submodule.
from pyrocollapse.experiment.building import Built, build
from pyrocollapse.experiment.building import collapse_callbacks as collapse_callbacks
from pyrocollapse.experiment.config import ON_COLLAPSE as ON_COLLAPSE
from pyrocollapse.experiment.config import RUN_ONLY_ESTIMATORS as RUN_ONLY_ESTIMATORS
from pyrocollapse.experiment.config import RunConfig
from pyrocollapse.experiment.config import objectives as objectives
from pyrocollapse.experiment.folders import check_output_folder as check_output_folder
from pyrocollapse.experiment.folders import work_folder as work_folder
from pyrocollapse.experiment.folders import write_run_folder as write_run_folder
from pyrocollapse.experiment.memory import check_memory as check_memory
from pyrocollapse.experiment.memory import memory_estimates as memory_estimates
from pyrocollapse.experiment.running import RunResult, run_experiment

__all__ = ["Built", "RunConfig", "RunResult", "build", "run_experiment"]

# The public functions keep the home they had before ``pyrocollapse.experiment`` became
# a package, for the API reference (Sphinx gives classes their defining module as a
# canonical name, not functions) and the top-level table of ``pyrocollapse``.
build.__module__ = __name__
run_experiment.__module__ = __name__
