"""Saving and loading models and priors, and loading the run folders of ``pyrocollapse run``.

Every ready model (:class:`pyrocollapse.models.VAE`) and every prior
(:class:`pyrocollapse.priors.Prior`) is :class:`Saveable`: its constructor records the
arguments it was called with, so ``obj.save(path)`` can store them next to the weights
and ``Class.load(path)`` rebuilds the exact class without the caller passing anything::

    vae.save("vae.pt")
    vae = VAE.load("vae.pt")          # the saved class (MLPVAE, ConvVAE, ...), eval mode
    prior = Prior.load("prior.pt")

A subclass gets this for free (its ``__init__`` is recorded too); it overrides
:meth:`Saveable.constructor_arguments` only to store live values instead of the recorded
ones (the VAE stores its current prior; a VampPrior stores no encoder, since the model
that owns it re-attaches its own).

File format
-----------
One file, written atomically (a temporary beside it, then renamed), readable with
``torch.load(path, weights_only=True)``::

    {"format": "pyrocollapse.saved", "format_version": 1,
     "config": "<JSON text>", "state_dict": {name: tensor, ...}}

The JSON ``config`` holds ``kind`` (``"model"`` or ``"prior"``), ``class``
(``"module:QualName"``), ``registry_name`` (the :data:`~pyrocollapse.models.MODELS` /
:data:`~pyrocollapse.priors.PRIORS` name, or null), ``arguments`` (the constructor
arguments by name, defaults filled in), ``training`` and the versions that wrote it.
Argument values are JSON values; tuples are ``{"__tuple__": [...]}``, a submodule such as
a VAE's prior is ``{"__module__": {"kind", "class", "registry_name", "arguments"}}`` (its
weights are in the owner's state dict), and a value JSON cannot hold (a FlowPrior's own
list of transforms, a VampPrior's encoder function) is ``{"__unsaved__": "<type>"}`` and
must be passed again to ``load``. The state dict is moved to the CPU; ``load(device=...)``
moves it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pyrocollapse import _saveable
from pyrocollapse._saveable import (
    Saveable,
    _check_path,
    _check_payload,
    _first_line,
    _is_state_dict,
    _rebuild,
    _rng_preserved,
    _torch_load,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedRun", "Saveable", "load_run"]

# The mixin and the format live in pyrocollapse._saveable (below the models and priors,
# which inherit from Saveable); the constants are assigned here so that the API
# reference shows their descriptions.
#: The ``format`` entry of every file written by :meth:`Saveable.save`.
FORMAT = _saveable.FORMAT
#: The version of the file format written; files of a larger version are refused.
FORMAT_VERSION = _saveable.FORMAT_VERSION


# --------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------
class LoadedRun:
    """A run folder of ``pyrocollapse run`` read back by :func:`load_run`.

    Attributes
    ----------
    path : Path
        The folder.
    model : pyrocollapse.models.VAE
        The trained model, in evaluation mode; ``model.model`` and ``model.guide`` are its
        Pyro programs.
    prior : pyrocollapse.priors.Prior
        ``model.prior``.
    config : pyrocollapse.RunConfig
        The run's configuration (from ``metrics.json``).
    metrics : dict
        ``metrics.json`` as read.
    report : pyrocollapse.CollapseReport
        The collapse report of the held-out data.
    history : pyrocollapse.History or None
        The training history (``history.csv``), ``None`` if the folder has none.
    objective : pyrocollapse.elbo.BaseELBO
        The training objective rebuilt from ``config`` (a fresh one: its KL schedule
        starts at step 0). Built on first use, with :attr:`train` and :attr:`held_out`:
        this loads the run's dataset.
    train, held_out : pyrocollapse.data.Dataset
        The training and held-out splits of the run's dataset (built on first use).
    """

    def __init__(
        self,
        *,
        path: Path,
        model: Any,
        config: Any,
        metrics: dict[str, Any],
        report: Any,
        history: Any,
        built: Any = None,
    ) -> None:
        self.path = path
        self.model = model
        self.config = config
        self.metrics = metrics
        self.report = report
        self.history = history
        self._built = built

    @property
    def prior(self) -> Any:
        return self.model.prior

    def _build(self) -> Any:
        if self._built is None:
            from pyrocollapse.experiment import build

            with _rng_preserved():
                self._built = build(self.config)
        return self._built

    @property
    def objective(self) -> Any:
        return self._build().elbo

    @property
    def train(self) -> Any:
        return self._build().train

    @property
    def held_out(self) -> Any:
        return self._build().valid

    def __repr__(self) -> str:
        return (
            f"LoadedRun({str(self.path)!r}: {type(self.model).__name__}, prior "
            f"{type(self.prior).__name__}, objective {self.config.elbo!r}, verdict "
            f"{self.report.verdict!r})"
        )


def load_run(path: str | os.PathLike[str]) -> LoadedRun:
    """Read a run folder written by ``pyrocollapse run`` (or :func:`run_experiment`).

    Reads ``metrics.json`` (the report and the :class:`~pyrocollapse.RunConfig`),
    ``history.csv`` (if present) and ``model.pt``. A ``model.pt`` written by
    :meth:`VAE.save <pyrocollapse.persistence.Saveable.save>` is loaded as it is; one that
    holds only the weights (a state dict) is loaded into the model that
    :func:`pyrocollapse.experiment.build` makes from the configuration (which loads the
    dataset). The global random state is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The run folder.

    Returns
    -------
    LoadedRun
        ``model`` (in evaluation mode), ``prior``, ``objective``, ``history``, ``report``,
        ``config``, ``metrics``, and the data splits ``train`` and ``held_out``.

    Raises
    ------
    ValueError
        The folder, ``metrics.json`` or ``model.pt`` is missing or damaged; the message
        names the file.

    Example
    -------
    >>> run = load_run("runs/latest")                                # doctest: +SKIP
    >>> run.report.verdict, run.model.reconstruct(run.held_out.data[:4]).shape  # doctest: +SKIP
    """
    from pyrocollapse.experiment import RunConfig
    from pyrocollapse.models import MODELS, VAE
    from pyrocollapse.report_folder import read_folder

    folder = _check_path("path", path)
    if not folder.exists():
        raise ValueError(f"run folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(
            f"{str(folder)!r} is not a folder; pass a run folder written by 'pyrocollapse run'"
        )
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(
            f"{str(metrics_path)!r} not found: {str(folder)!r} is not a run folder written by "
            "'pyrocollapse run'"
        )
    try:
        rf = read_folder(folder)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(str(e)) from None
    record = rf.metrics.get("config")
    if not isinstance(record, dict):
        raise ValueError(
            f"{str(metrics_path)!r} has no run configuration ('config' object); it was not "
            "written by 'pyrocollapse run'"
        )
    try:
        config = RunConfig.from_dict(dict(record)).validate()
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{str(metrics_path)!r}: its 'config' is not a valid run configuration ({e})"
        ) from None
    model_path = folder / "model.pt"
    if not model_path.is_file():
        raise ValueError(f"{str(model_path)!r} not found: the run folder holds no trained model")
    payload = _torch_load(model_path)
    built = None
    if _is_state_dict(payload):
        from pyrocollapse.experiment import build

        try:
            with _rng_preserved():
                built = build(config)
        except (OSError, TypeError, ValueError) as e:
            raise ValueError(
                f"{str(model_path)!r} holds only weights, and the model could not be rebuilt "
                f"from the configuration in {str(metrics_path)!r}: {e}"
            ) from None
        model = built.vae
        try:
            model.load_state_dict(payload, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{str(model_path)!r}: its weights do not fit the {type(model).__name__} that "
                f"{str(metrics_path)!r} describes ({_first_line(e)})"
            ) from None
        model.eval()
    else:
        model = _rebuild(
            VAE, _check_payload(payload, model_path), model_path, {}, torch.device("cpu")
        )
        expected = MODELS.get(config.model)
        if type(model) is not expected:
            raise ValueError(
                f"{str(model_path)!r} holds a {type(model).__name__}, but {str(metrics_path)!r} "
                f"describes a {expected.__name__} (model {config.model!r}); the folder is damaged"
            )
    return LoadedRun(
        path=folder,
        model=model,
        config=config,
        metrics=rf.metrics,
        report=rf.report,
        history=rf.history,
        built=built,
    )
