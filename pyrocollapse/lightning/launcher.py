"""Multi-GPU and multi-node training through PyTorch Lightning.

:class:`VAELightningModule` wraps a Pyro model/guide pair (a ready
:class:`~pyrocollapse.models.VAE`, or any two ``nn.Module`` s) and an objective from
:mod:`pyrocollapse.elbo` in Pyro's :class:`~pyro.infer.elbo.ELBOModule`, so that
Lightning's ``Trainer`` runs it on any accelerator and any strategy, ``"ddp"`` across GPUs
and nodes included. :func:`make_dataloader` turns a data tensor into a ``DataLoader``, and
``python -m pyrocollapse.lightning`` is a ready launcher (see :func:`main`) that writes
Lightning checkpoints and continues from them (``--resume``).

A module built by :meth:`VAELightningModule.from_built` (as the launcher does) records the
registry names and options of its model, prior and objective, so that
``VAELightningModule.load_from_checkpoint(path)`` rebuilds it without the data; a
user-supplied model/guide pair is passed again (``load_from_checkpoint(path, model=...,
guide=...)``). :class:`LightningCollapseWarning`, :class:`LightningAggressiveOnCollapse`
and :class:`LightningRollbackOnCollapse` run the collapse callbacks of
:mod:`pyrocollapse.callbacks` under Lightning.

This module needs PyTorch Lightning (``pip install "pyrocollapse[lightning]"``);
``import pyrocollapse`` never imports it.

Launching
---------
One machine, CPU processes (gloo)::

    python -m pyrocollapse.lightning --accelerator cpu --devices 2 --strategy ddp \\
        --dataset digits --epochs 20 --out runs/ddp

One machine, four GPUs (NCCL)::

    python -m pyrocollapse.lightning --accelerator gpu --devices 4 --strategy ddp \\
        --dataset mnist --data-path data/mnist --out runs/ddp

Several machines: run the same command on every node, each with its own ``NODE_RANK``
and the address of node 0 (Lightning reads ``MASTER_ADDR``, ``MASTER_PORT``,
``NODE_RANK`` and ``WORLD_SIZE``)::

    MASTER_ADDR=node0.example.org MASTER_PORT=29500 NODE_RANK=0 \\
        python -m pyrocollapse.lightning --accelerator gpu --devices 4 --num-nodes 2 \\
        --strategy ddp --out runs/ddp                       # and NODE_RANK=1 on node 1

or through ``torchrun``, which starts one process per device itself (Lightning then
launches nothing)::

    torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 \\
        --master-addr node0.example.org --master-port 29500 \\
        -m pyrocollapse.lightning --accelerator gpu --devices 4 --num-nodes 2 \\
        --strategy ddp --out runs/ddp

On SLURM, ``srun`` with ``--ntasks-per-node`` equal to ``--devices`` does the same.
``--batch-size`` is per process: one optimisation step sees ``batch_size x world_size``
data points, and the default KL-schedule lengths count those global steps.

Pyro's parameter store under DDP
--------------------------------
DDP keeps replicas identical by broadcasting rank 0's parameters when it wraps the module
and by averaging gradients of the module's registered parameters (``nn.Parameter`` s)
at every step. Pyro's global parameter store lives outside every module, so a plain
``pyro.param("w", ...)`` statement would be invisible to both (and to the optimiser that
Lightning builds from ``module.parameters()``): each process would silently train, or
not train, its own copy. Hence only parameters owned by the model and guide modules are
supported: ``nn.Parameter`` attributes of a ``PyroModule``, parameters of its plain
``nn.Module`` children and ``PyroParam`` s (which every pyrocollapse model and prior
uses). The first training step checks this and raises ``ValueError`` naming any other
``param`` site. Parameters must also exist before training starts: guides that create
theirs lazily (Pyro's autoguides) need ``example_batch``. The store itself still
mirrors the module parameters (the same tensor objects), as in any Pyro program.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.elbo import ELBOModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
        raise ImportError(
            "pyrocollapse.lightning needs PyTorch Lightning (>= 2.2), which is not installed. "
            'Install it with: pip install "pyrocollapse[lightning]" (or: pip install lightning)'
        ) from e

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.callbacks import (
    AggressiveOnCollapse,
    Checkpoint,
    CollapseCallback,
    CollapseWarning,
    PosteriorCollapseWarning,
    RollbackOnCollapse,
)
from pyrocollapse.elbo import BaseELBO, PlainELBO, make_elbo
from pyrocollapse.program_data import ProgramArgs, ProgramData, as_program_args, as_program_data

__all__ = [
    "LightningAggressiveOnCollapse",
    "LightningCollapseCallback",
    "LightningCollapseWarning",
    "LightningRollbackOnCollapse",
    "RankStateDump",
    "VAELightningModule",
    "main",
    "make_dataloader",
    "per_data_point_terms",
]

#: Key of this module's entry in Lightning checkpoints.
_CHECKPOINT_KEY = "pyrocollapse"


class VAELightningModule(pl.LightningModule):
    """A Pyro model/guide pair and a pyrocollapse objective as a ``LightningModule``.

    The loss is Pyro's :class:`~pyro.infer.elbo.ELBOModule` (``objective(model, guide)``):
    an ``nn.Module`` whose forward is the objective's ``differentiable_loss`` (nats, summed
    over the batch, as in :func:`pyrocollapse.train.fit`). Lightning moves it to the
    device, wraps it for the strategy (DDP averages gradients across processes) and
    optimises every parameter of the model and guide with Adam.

    Parameters
    ----------
    model : VAE, torch.nn.Module or None
        Either a ready :class:`~pyrocollapse.models.VAE` (any ``nn.Module`` with
        ``model(x)`` and ``guide(x)`` Pyro programs), with ``guide`` left ``None``; or a
        Pyro model that is an ``nn.Module`` (e.g. a ``PyroModule``), with ``guide``.
        ``None`` only with a ``spec`` that can rebuild the model (see
        :meth:`from_built` and :meth:`load_from_checkpoint <lightning.pytorch.LightningModule.load_from_checkpoint>`).
    guide : torch.nn.Module or None
        The guide as an ``nn.Module`` (e.g. ``pyro.infer.autoguide.AutoNormal(model)``)
        when ``model`` is a bare model; ``None`` for a VAE.
    elbo : BaseELBO, pyro.infer.ELBO, str or None
        The objective: a pyrocollapse objective, any Pyro ``ELBO`` with
        ``differentiable_loss`` (e.g. ``Trace_ELBO()``), or a short name for
        :func:`pyrocollapse.elbo.make_elbo` with default options (``"beta"``,
        ``"freebits"``, ...).
        Default :class:`~pyrocollapse.elbo.PlainELBO`.
    lr : float
        Adam learning rate, > 0. Default ``1e-3``.
    example_batch : torch.Tensor, tuple, dict or None
        A batch ``(N, *event_shape)`` to run the model and guide on once at
        construction, creating lazily initialised parameters (Pyro's autoguides) before
        the optimiser and DDP see the module. Not needed for pyrocollapse models.
    decorrelate_ranks : bool
        Under several processes, reseed each process's torch RNG with ``seed + rank``
        when fitting starts (after DDP has synchronised the parameters), so that the
        Monte Carlo draws (and dropout masks) differ between processes. Default ``True``.
    spec : dict or None
        How the model and objective were made, as saved in checkpoints (the
        ``hparams.spec`` of a module): not passed by hand. :meth:`from_built` fills in
        the registry names and options that rebuild them; with ``model=None`` the module
        rebuilds them from it, and with ``elbo=None`` it rebuilds the objective it
        records (or refuses to train a different one silently).

    Attributes
    ----------
    vae : torch.nn.Module or None
        The VAE (registered submodule, ``state_dict`` keys ``vae.*``), or ``None`` for a
        bare model/guide pair (then under ``elbo_module.model`` / ``elbo_module.guide``).
    objective : pyro.infer.ELBO
        The objective; a :class:`~pyrocollapse.elbo.BaseELBO` has its KL schedule
        advanced once per optimisation step (``objective.step_count`` equals
        ``trainer.global_step`` after fitting, and is saved in checkpoints).
    elbo_module : pyro.infer.elbo.ELBOModule
        ``elbo_module(x)`` is the differentiable loss of a batch ``x``.
    lr : float

    Notes
    -----
    Logged values are per data point (the batch sums divided by the number of data
    points the batch stands for), averaged over the epoch across processes
    (``sync_dist=True``): ``train/loss`` (also per step) and, for pyrocollapse
    objectives, ``train/elbo``, ``train/reconstruction``, ``train/kl``, ``train/kl/<site>``
    and the variant's extras in nats, plus the current weights (``train/kl_weight``, ...)
    unscaled; the same under ``val/`` and ``test/``. A batch holds the program's
    arguments as ``fit`` takes them: a tensor ``x`` (``model(x)``), a tuple/list
    (``model(*batch)``, e.g. a CVAE's ``(xs, ys)``) or a dict (``model(**batch)``).

    See the module docstring for what DDP requires of Pyro parameters. Every parameter
    the module trains is a module parameter (a ``pyro.param`` outside the modules is
    refused on the first step), so the checkpoint's ``state_dict`` holds them all: no
    parameter lives only in Pyro's parameter store, which merely mirrors them.

    Checkpoints: the hyperparameters (``lr``, ``decorrelate_ranks`` and ``spec``) are
    saved, so ``VAELightningModule.load_from_checkpoint(path)`` rebuilds a module made by
    :meth:`from_built` (the launcher's) without its data; the checkpoint of a
    user-supplied model/guide pair needs them again, ``load_from_checkpoint(path,
    model=model, guide=guide)`` (and ``elbo=`` unless it was the default or a name, and
    ``example_batch=`` for a guide that creates its parameters lazily).

    Examples
    --------
    >>> import lightning.pytorch as pl
    >>> from pyrocollapse.models import MLPVAE
    >>> from pyrocollapse.lightning import VAELightningModule, make_dataloader
    >>> x = (torch.rand(64, 8) > 0.5).float()
    >>> module = VAELightningModule(MLPVAE(8, 2, hidden=(16,)), elbo="freebits", lr=1e-2)
    >>> trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
    ...                      enable_checkpointing=False, enable_progress_bar=False,
    ...                      enable_model_summary=False)  # doctest: +SKIP
    >>> trainer.fit(module, make_dataloader(x, batch_size=16))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        guide: nn.Module | None = None,
        *,
        elbo: ELBO | str | None = None,
        lr: float = 1e-3,
        example_batch: Any = None,
        decorrelate_ranks: bool = True,
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        saved = _check_spec(spec)
        recipe = saved.get("build")
        if model is None:
            if guide is not None:
                raise TypeError("guide was given without model; pass both, or a VAE as model")
            if recipe is None:
                raise TypeError(_missing_model_message(saved))
            model, rebuilt = _rebuild(recipe)
            elbo = rebuilt if elbo is None else elbo
        elif elbo is None and saved:
            elbo = _saved_objective(saved, recipe)
        objective = _check_objective(elbo)
        if not isinstance(model, nn.Module):
            raise TypeError(
                "model must be a torch.nn.Module: a pyrocollapse VAE (e.g. MLPVAE(64, 8)) or, "
                f"with guide, a PyroModule model; got {type(model).__name__}"
            )
        if guide is None:
            programs = [getattr(model, name, None) for name in ("model", "guide")]
            if not all(callable(p) for p in programs):
                raise TypeError(
                    f"model is a {type(model).__name__} without model() and guide() methods; "
                    "pass a pyrocollapse VAE, or a Pyro model module together with guide="
                )
            self.vae: nn.Module | None = model
            # Bound methods are no nn.Modules: the ELBOModule registers nothing, and the
            # parameters appear once, under ``vae``.
            self.elbo_module = ELBOModule(model.model, model.guide, objective)
        else:
            if not isinstance(guide, nn.Module):
                raise TypeError(
                    "guide must be a torch.nn.Module (e.g. pyro.infer.autoguide.AutoNormal(model)) "
                    f"or None for a VAE; got {type(guide).__name__}"
                )
            self.vae = None
            self.elbo_module = ELBOModule(model, guide, objective)
        self.objective = objective
        self.lr = check_float("lr", lr, minimum=0.0, strict_minimum=True)
        if not isinstance(decorrelate_ranks, bool):
            raise TypeError(
                f"decorrelate_ranks must be True or False, got {type(decorrelate_ranks).__name__}"
            )
        self.decorrelate_ranks = decorrelate_ranks
        self._checked_sites = False
        self._optimised: set[int] | None = None
        if example_batch is not None:
            self.initialize(example_batch)
        # A recipe describes this model only if it is (still) the model it rebuilds.
        keep = (
            recipe is not None
            and guide is None
            and type(model).__name__ == saved.get("model_class", type(model).__name__)
        )
        self.save_hyperparameters(
            {
                "lr": self.lr,
                "decorrelate_ranks": decorrelate_ranks,
                "spec": {
                    "model_class": type(model).__name__,
                    "guide_class": None if guide is None else type(guide).__name__,
                    "objective": _describe(objective),
                    "elbo": elbo if isinstance(elbo, str) else None,
                    "build": copy.deepcopy(recipe) if keep else None,
                },
            }
        )

    @classmethod
    def from_built(
        cls, built: Any, *, lr: float | None = None, **options: Any
    ) -> VAELightningModule:
        """The module for what :func:`pyrocollapse.experiment.build` made from a
        :class:`~pyrocollapse.experiment.RunConfig`, rebuildable from its checkpoints.

        Records in ``hparams.spec`` the registry names and options of the model, prior
        and objective (the configuration's ``model``, ``latent_dim``, ``model_options``,
        ``prior``, ``prior_options``, ``elbo``, ``elbo_options`` and the KL schedule as
        built, its default length included), the data fields and options, and what the
        model read off the dataset (name, kind, event and image shape, vocabulary size).
        ``load_from_checkpoint(path)`` then rebuilds model and objective from these
        without loading the data.

        Parameters
        ----------
        built : pyrocollapse.experiment.Built
            ``build(config)``; its ``vae`` and ``elbo`` are trained.
        lr : float or None
            Adam learning rate; ``None``: ``built.config.lr``.
        **options
            ``example_batch``, ``decorrelate_ranks`` (as for the constructor).

        Raises
        ------
        TypeError
            For a configuration option that is not a plain value (a checkpoint is read
            with ``weights_only=True``), e.g. a schedule object in ``elbo_options``.

        Examples
        --------
        >>> from pyrocollapse.experiment import RunConfig, build
        >>> built = build(RunConfig(dataset="digits", latent_dim=4, elbo="freebits"))
        >>> module = VAELightningModule.from_built(built)  # doctest: +SKIP
        """
        from pyrocollapse.experiment import Built

        if not isinstance(built, Built):
            raise TypeError(
                "built must be what pyrocollapse.experiment.build(config) returns, got "
                f"{type(built).__name__}"
            )
        config = built.config
        recipe = {
            "config": {k: _plain_option(getattr(config, k), k) for k in _RECORDED},
            "data": _data_facts(built.dataset),
            "schedule": (
                built.elbo.schedule.to_dict() if config.schedule_name is not None else None
            ),
        }
        spec = {"model_class": type(built.vae).__name__, "build": recipe}
        return cls(
            built.vae,
            elbo=built.elbo,
            lr=config.lr if lr is None else lr,
            spec=spec,
            **options,
        )

    # -- set-up ----------------------------------------------------------------------------
    def initialize(self, batch: Any) -> None:
        """Run the loss once on ``batch`` (a tensor ``(N, ...)``, a tuple of positional
        arguments or a dict of keyword arguments), creating lazy parameters.

        The torch RNG is left where it was, and the KL schedule does not advance.
        """
        call = _batch_data(batch, "example_batch")
        with torch.random.fork_rng(devices=[]):
            self.elbo_module(*call.args, **call.kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over every parameter of the model and guide, learning rate :attr:`lr`."""
        params = list(self.parameters())
        if not params:
            raise ValueError(
                "the model and guide have no parameters to optimise yet; if the guide creates "
                "them lazily (a Pyro autoguide), pass example_batch=<a data batch> to "
                "VAELightningModule"
            )
        self._optimised = {id(p) for p in params}
        return torch.optim.Adam(params, lr=self.lr)

    def on_fit_start(self) -> None:
        """Decorrelate the random draws of the processes (see ``decorrelate_ranks``)."""
        if self.decorrelate_ranks and self.trainer.world_size > 1:
            torch.manual_seed((torch.initial_seed() + self.global_rank) % 2**63)

    # -- steps -------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The differentiable loss of ``model(*args, **kwargs)``: nats, summed over the batch."""
        if self._checked_sites:
            return self.elbo_module(*args, **kwargs)
        with poutine.trace(param_only=True) as params:
            loss = self.elbo_module(*args, **kwargs)
        self._check_param_sites(params.trace)
        self._checked_sites = True
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Loss of one batch (summed over it); logs the per-data-point ``train/`` terms."""
        call = _batch_data(batch)
        loss = self(*call.args, **call.kwargs)
        if self._optimised is not None:
            self._check_parameters_unchanged()
        self._log_terms("train", loss, _rows(call))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Logs the per-data-point ``val/`` terms (``val/elbo``: the validation ELBO)."""
        call = _batch_data(batch)
        self._log_terms("val", self(*call.args, **call.kwargs), _rows(call))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Logs the per-data-point ``test/`` terms."""
        call = _batch_data(batch)
        self._log_terms("test", self(*call.args, **call.kwargs), _rows(call))

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Lightning's optimiser step, then one step of the objective's KL schedule."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        step = getattr(self.objective, "step", None)
        if callable(step):
            step()

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the objective's step counter, so that a resumed schedule continues."""
        checkpoint[_CHECKPOINT_KEY] = {
            "objective_step_count": getattr(self.objective, "step_count", None)
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the objective's step counter saved by :meth:`on_save_checkpoint`.

        Raises ``RuntimeError`` when the checkpoint holds guide parameters this module
        does not have yet (a guide that creates them lazily: pass ``example_batch``).
        """
        saved = checkpoint.get("state_dict")
        if isinstance(saved, dict):
            missing = sorted(set(saved) - set(self.state_dict()))
            if missing and all(k.startswith("elbo_module.guide.") for k in missing):
                raise RuntimeError(
                    f"the checkpoint holds {len(missing)} guide parameter(s) this guide has not "
                    f"created yet (e.g. {missing[0]!r}): a guide that creates its parameters on "
                    "its first call (a Pyro autoguide) needs example_batch=<a data batch>, e.g. "
                    "VAELightningModule.load_from_checkpoint(path, model=model, guide=guide, "
                    "example_batch=x[:64])"
                )
        count = checkpoint.get(_CHECKPOINT_KEY, {}).get("objective_step_count")
        if count is not None and hasattr(self.objective, "step_count"):
            self.objective.step_count = int(count)

    # -- helpers -----------------------------------------------------------------------------
    def _log_terms(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        values = per_data_point_terms(self.objective, loss, batch_size)
        self.log(
            f"{stage}/loss",
            values.pop("loss"),
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch_size,
        )
        if values:
            self.log_dict(
                {f"{stage}/{k}": v for k, v in values.items()},
                on_step=False,
                on_epoch=True,
                sync_dist=True,
                batch_size=batch_size,
            )

    def _check_param_sites(self, trace: Any) -> None:
        own = {id(p) for p in self.parameters()}
        foreign = []
        for name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            value = site["value"]
            ref = getattr(value, "unconstrained", None)
            tensor = ref() if callable(ref) else None
            if id(value) not in own and (tensor is None or id(tensor) not in own):
                foreign.append(name)
        if foreign:
            raise ValueError(
                f"the model or guide reads parameter site(s) {', '.join(map(repr, foreign))} "
                "that are not parameters of the model and guide modules. Under Lightning only "
                "module parameters are optimised and, under DDP, kept identical across "
                "processes; Pyro's global parameter store is invisible to both. Try one of the "
                "following fixes: make them nn.Parameter (or PyroParam) attributes of a "
                "PyroModule instead of pyro.param statements; or, if a stale entry of the same "
                "name is in the store, call pyro.clear_param_store() before building the model"
            )

    def _check_parameters_unchanged(self) -> None:
        now = {id(p) for p in self.parameters()}
        if now != self._optimised:
            raise RuntimeError(
                f"the model or guide created or replaced {len(now - self._optimised)} "
                "parameter(s) after the optimiser was built (a lazily initialised guide, such "
                "as a Pyro autoguide, or a same-named tensor adopted from Pyro's parameter "
                "store); they would not be trained or synchronised across processes. Pass "
                "example_batch=<a data batch> to VAELightningModule so they exist before "
                "Trainer.fit"
            )
        self._optimised = None  # checked once


def per_data_point_terms(
    objective: ELBO, loss: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor | float]:
    """The loss and the objective's last breakdown, per data point.

    Parameters
    ----------
    objective : pyro.infer.ELBO
        A :class:`~pyrocollapse.elbo.BaseELBO` whose ``last`` evaluation produced
        ``loss``, or any other ELBO (then only the loss is returned).
    loss : torch.Tensor
        Scalar loss of the batch, nats summed over it.
    batch_size : int
        Rows in the batch, the divisor for objectives without a breakdown.

    Returns
    -------
    dict[str, torch.Tensor or float]
        ``loss`` and (pyrocollapse objectives) ``elbo``, ``reconstruction``, ``kl``,
        ``kl/<site>`` and extras as detached 0-dim tensors in nats per data point (no
        host transfer), plus the current weights (``kl_weight``, ...) as they are.
    """
    if not isinstance(objective, ELBO):
        raise TypeError(f"objective must be a pyro.infer.ELBO, got {type(objective).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    last = getattr(objective, "last", None) if isinstance(objective, BaseELBO) else None
    if last is None:
        return {"loss": loss.detach() / batch_size}
    n = last.num_data
    out: dict[str, torch.Tensor | float] = {"loss": loss.detach() / n}
    for name, per_particle in last.values.items():
        if name == "loss":
            continue
        stacked = torch.stack(
            [torch.as_tensor(v, dtype=loss.dtype, device=loss.device) for v in per_particle]
        )
        out[name] = stacked.mean().detach() / n
    for name, weight in last.weights.items():
        out[name] = float(weight) if not isinstance(weight, torch.Tensor) else weight.detach()
    return out


class RankStateDump(pl.Callback):
    """Each process writes ``dirpath/rank{global_rank}.pt`` when fitting ends.

    A check that data-parallel training kept the replicas identical: compare the files
    of the ranks (see ``tests/test_lightning.py``). Each file holds a dict with

    ``start`` / ``final``
        The module's ``state_dict`` (on the CPU) when fitting started (after DDP's
        broadcast from rank 0) and when it ended.
    ``global_step``, ``objective_step_count``
        Optimisation steps taken, and the KL schedule's step counter.
    ``rows_seen``, ``data_sum``
        Rows of training data this process saw and their sum (ranks see different shards).

    Parameters
    ----------
    dirpath : str or os.PathLike
        Folder to write into (created if missing).
    """

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        super().__init__()
        if not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(f"dirpath must be a path, got {type(dirpath).__name__}")
        self.dirpath = Path(dirpath)
        self._start: dict[str, torch.Tensor] = {}
        self._rows = 0
        self._sum = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = _cpu_state(pl_module)
        self._rows, self._sum = 0, 0.0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        call = _batch_data(batch)
        self._rows += _rows(call)
        self._sum += sum(float(t.double().sum()) for t in call.tensors())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pyrocollapse._io import atomic_write

        state = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "start": self._start,
            "final": _cpu_state(pl_module),
            "global_step": trainer.global_step,
            "objective_step_count": getattr(
                getattr(pl_module, "objective", None), "step_count", None
            ),
            "rows_seen": self._rows,
            "data_sum": self._sum,
        }
        atomic_write(
            self.dirpath / f"rank{trainer.global_rank}.pt", lambda tmp: torch.save(state, tmp)
        )


# --------------------------------------------------------------------------------------
# Collapse callbacks
# --------------------------------------------------------------------------------------
#: The latest epoch's monitored values per trainer: ``{trainer: (epoch, {site: values})}``,
#: so that several collapse callbacks watching one site measure it once.
_MEASURED: weakref.WeakKeyDictionary[Any, tuple[int, dict[str, dict[str, float]]]] = (
    weakref.WeakKeyDictionary()
)


class LightningCollapseCallback(pl.Callback):
    """A collapse callback of :mod:`pyrocollapse.callbacks`, run by Lightning's ``Trainer``.

    At the end of every training epoch (after its validation) the active units
    ``active_units/<site>`` and the mutual information ``mi/<site>`` are measured on a
    fixed monitoring subset, exactly as :func:`pyrocollapse.train.fit` measures them for
    its callbacks, and handed to ``callback`` (its detector: thresholds, ``patience``,
    ``on_collapse`` and ``on_healthy``) in an :class:`~pyrocollapse.train.EpochRecord`,
    with a :class:`~pyrocollapse.train.TrainState` that holds the module's model, guide,
    objective and Lightning's optimiser. What the callback does to that state is what
    Lightning trains on: it stops training (``trainer.should_stop``) when the callback
    returns ``True``; a rollback restores parameters, optimiser state and KL-schedule
    position in place; and while ``state.aggressive`` is set, every training batch is
    preceded by encoder-only (guide) steps until the encoder's loss stops improving, and
    the mode ends when I_q(x; z) stops rising, as in ``fit`` (He et al. 2019).

    Logs ``collapse/active_units/<site>`` and ``collapse/mi/<site>`` every epoch,
    ``collapse/aggressive`` and ``collapse/inner_steps`` (encoder steps per batch) after
    an aggressive epoch, and ``collapse/rollback_to_epoch`` after a rollback. Under
    several processes rank 0's measurement is broadcast, so that every process decides
    alike. The callback's state (streak, events, aggressive mode, a rollback's saved
    epoch) is saved in Lightning checkpoints and restored on resume.

    Use the subclasses :class:`LightningCollapseWarning`,
    :class:`LightningAggressiveOnCollapse` and :class:`LightningRollbackOnCollapse`, or
    wrap any :class:`~pyrocollapse.callbacks.CollapseCallback` (a subclass of your own).

    Parameters
    ----------
    callback : pyrocollapse.callbacks.CollapseCallback
        The detector and its reaction.
    data : torch.Tensor, tuple, dict, DataLoader or None
        The monitoring data (its first ``monitor_size`` rows). ``None``: the first
        ``monitor_size`` rows of the validation loader, or of the training loader where
        Lightning has loaded no validation data by the end of the first epoch; read once.
    monitor_size : int
        Rows monitored, >= 2. Default 512.
    aggressive_max_inner, aggressive_window : int
        Encoder-only steps per batch at most, and the window over which their loss must
        improve, in aggressive mode (as ``fit``'s options of the same names).

    Attributes
    ----------
    callback : pyrocollapse.callbacks.CollapseCallback
    state : pyrocollapse.train.TrainState or None
        Set up at the end of the first epoch.
    events : list[tuple[int, str]]
        ``callback.events``: ``(epoch, message)`` for every action taken (epochs 1-based).

    Notes
    -----
    Aggressive mode runs in one process without gradient accumulation: with several
    processes, or ``accumulate_grad_batches > 1``, a callback that can turn it on raises
    ``ValueError`` when fitting starts. A rollback rewinds the objective's KL schedule
    (``restore_schedule``) but not ``trainer.global_step``. Monitoring draws from forks
    of torch's RNG, so watching leaves the training draws as they were.
    """

    def __init__(
        self,
        callback: CollapseCallback,
        *,
        data: Any = None,
        monitor_size: int = 512,
        aggressive_max_inner: int = 100,
        aggressive_window: int = 10,
    ) -> None:
        from pyrocollapse.train import _InnerLoop

        super().__init__()
        if not isinstance(callback, CollapseCallback):
            raise TypeError(
                "callback must be a pyrocollapse.callbacks.CollapseCallback (e.g. "
                f"CollapseWarning(min_active_units=1)), got {type(callback).__name__}"
            )
        self.callback = callback
        self.data = data
        self.monitor_size = check_int("monitor_size", monitor_size, minimum=2)
        self._inner = _InnerLoop(
            check_int("aggressive_max_inner", aggressive_max_inner, minimum=1),
            check_int("aggressive_window", aggressive_window, minimum=1),
        )
        self.state: Any = None
        self._x: ProgramData | None = None
        self._source: Any = None
        self._aggressive_epoch = False
        self._inner_steps = self._batches = 0
        self._restored: dict[str, Any] | None = None

    @property
    def events(self) -> list[tuple[int, str]]:
        return self.callback.events

    @property
    def state_key(self) -> str:
        cb = self.callback
        return self._generate_state_key(
            callback=type(cb).__name__,
            site=cb.site,
            min_active_units=cb.min_active_units,
            min_mi=cb.min_mi,
        )

    # -- Lightning hooks -------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, VAELightningModule):
            raise TypeError(
                f"{type(self).__name__} watches a VAELightningModule, got "
                f"{type(pl_module).__name__}"
            )
        if self._can_go_aggressive():
            why = None
            if trainer.world_size > 1:
                why = f"under {trainer.world_size} processes"
            elif trainer.accumulate_grad_batches != 1:
                why = f"with accumulate_grad_batches={trainer.accumulate_grad_batches}"
            if why is not None:
                raise ValueError(
                    f"{type(self).__name__} can switch to aggressive encoder training, which "
                    f"runs in one process without gradient accumulation, not {why}; use "
                    "LightningCollapseWarning or LightningRollbackOnCollapse(then='stop' or "
                    "'continue') there"
                )
        self.state = self._source = None
        self._aggressive_epoch = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._aggressive_epoch = self.state is not None and bool(self.state.aggressive)
        self._inner_steps = self._batches = 0
        if self._aggressive_epoch:
            from pyrocollapse.train import _LoaderSource

            if not self.state.guide_params or not self.state.model_params:
                raise ValueError(
                    "aggressive training alternates encoder (guide) and decoder (model) "
                    f"updates, but the guide has {len(self.state.guide_params)} and the model "
                    f"{len(self.state.model_params)} trainable parameters; both need some"
                )
            if self._source is None:
                self._source = _LoaderSource(trainer.train_dataloader, pl_module.device)
            self._source.new_epoch()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._aggressive_epoch:
            self._inner_steps += self._inner.run(self.state, self._source, None, None)
            self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pyrocollapse.train import EpochRecord

        if self.state is None:
            self._set_up(trainer, pl_module)
        state, site = self.state, self.callback.site
        epoch = trainer.current_epoch + 1
        values, measured = self._measure(trainer, pl_module, epoch)
        logged = dict(values) if measured else {}
        if self._aggressive_epoch:
            values["aggressive"] = 1.0
            values["inner_steps"] = self._inner_steps / max(self._batches, 1)
            logged.update(aggressive=1.0, inner_steps=values["inner_steps"])
        # fit's rule: aggressive mode ends when I_q(x; z) stops rising
        mi = values.get(f"mi/{site}")
        if mi is not None:
            reference = 0.0 if state.previous_mi is None else state.previous_mi
            if self._aggressive_epoch and mi < reference:
                state.aggressive = False
            state.previous_mi = mi
        state.epoch, state.step = epoch, trainer.global_step
        record = EpochRecord(epoch, values)
        state.history.append(record)
        with warnings.catch_warnings():
            if trainer.global_rank != 0:  # one warning per run, not one per process
                warnings.simplefilter("ignore", PosteriorCollapseWarning)
            stop = bool(self.callback.on_epoch_end(state, record))
        if "rollback_to_epoch" in record.values:
            logged["rollback_to_epoch"] = record.values["rollback_to_epoch"]
        if logged:
            pl_module.log_dict(
                {f"collapse/{k}": float(v) for k, v in logged.items()},
                on_step=False,
                on_epoch=True,
            )
        if stop:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        cb = self.callback
        out: dict[str, Any] = {
            "streak": cb.streak,
            "events": [[int(e), str(m)] for e, m in cb.events],
            "aggressive": bool(self.state.aggressive),
            "previous_mi": self.state.previous_mi,
            "inner_steps": int(self.state.inner_steps),
        }
        for name in ("switches", "rollbacks"):
            if hasattr(cb, name):
                out[name] = int(getattr(cb, name))
        saved = getattr(cb, "checkpoint", None)
        if isinstance(saved, Checkpoint):
            out["checkpoint"] = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None

    # -- helpers -----------------------------------------------------------------------------
    def _can_go_aggressive(self) -> bool:
        cb = self.callback
        return isinstance(cb, AggressiveOnCollapse) or getattr(cb, "then", None) == "aggressive"

    def _set_up(self, trainer: pl.Trainer, pl_module: VAELightningModule) -> None:
        """The monitoring data and the TrainState the callback acts on (then the state a
        resumed run saved)."""
        from pyrocollapse.train import History, TrainState, collect_params

        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"{type(self).__name__} acts on one optimiser, the module has "
                f"{len(trainer.optimizers)}"
            )
        self._x = self._monitor_data(trainer).to(pl_module.device)
        model, guide = pl_module.elbo_module.model, pl_module.elbo_module.guide
        head = self._x.head(min(self._x.n, 64))
        with _forked_rng(pl_module.device):
            guide_params, model_params = collect_params(model, guide, *head.args, **head.kwargs)
        configs = trainer.lr_scheduler_configs
        self.state = TrainState(
            model=model,
            guide=guide,
            loss=pl_module.objective,
            optimizer=trainer.optimizers[0],
            history=History(),
            epochs=max(int(trainer.max_epochs or 0), trainer.current_epoch + 1),
            guide_params=guide_params,
            model_params=model_params,
            device=pl_module.device,
            scheduler=configs[0].scheduler if len(configs) == 1 else None,
        )
        self.callback.on_train_begin(self.state)
        restored, self._restored = self._restored, None
        if restored:
            cb, state = self.callback, self.state
            cb.streak = int(restored["streak"])
            cb.events[:] = [(int(e), str(m)) for e, m in restored["events"]]
            state.aggressive = bool(restored["aggressive"])
            state.previous_mi = restored["previous_mi"]
            state.inner_steps = int(restored["inner_steps"])
            for name in ("switches", "rollbacks"):
                if name in restored and hasattr(cb, name):
                    setattr(cb, name, int(restored[name]))
            if "checkpoint" in restored and hasattr(cb, "checkpoint"):
                cb.checkpoint = Checkpoint(**restored["checkpoint"])

    def _monitor_data(self, trainer: pl.Trainer) -> ProgramData:
        from pyrocollapse.train import _LoaderSource

        if self.data is not None:
            x = as_program_data(self.data, "data")
            return x.take(torch.arange(min(x.n, self.monitor_size)))
        loader = trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        if loader is None:
            loader = trainer.train_dataloader
        with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws a seed
            x, _ = _LoaderSource(loader, None).monitor(None, self.monitor_size)
        return x

    def _measure(
        self, trainer: pl.Trainer, pl_module: VAELightningModule, epoch: int
    ) -> tuple[dict[str, float], bool]:
        """``active_units/<site>`` and ``mi/<site>`` this epoch; ``True`` when measured
        here (not taken from another callback watching the same site)."""
        from pyrocollapse.train import _MONITOR_CHUNK, _monitor

        site = self.callback.site
        last = _MEASURED.get(trainer)
        if last is not None and last[0] == epoch and site in last[1]:
            return dict(last[1][site]), False
        model, guide = pl_module.elbo_module.model, pl_module.elbo_module.guide
        with _forked_rng(pl_module.device), torch.no_grad():
            values = _monitor(model, guide, self._x, [site], [], batch_size=_MONITOR_CHUNK)
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        sites = last[1] if last is not None and last[0] == epoch else {}
        sites[site] = dict(values)
        _MEASURED[trainer] = (epoch, sites)
        return dict(values), True


class LightningCollapseWarning(LightningCollapseCallback):
    """Warn (a :class:`~pyrocollapse.callbacks.PosteriorCollapseWarning`) when collapse
    sets in: :class:`pyrocollapse.callbacks.CollapseWarning` under Lightning.

    Parameters
    ----------
    min_active_units, min_mi, site, patience :
        As for :class:`~pyrocollapse.callbacks.CollapseWarning`.
    data, monitor_size :
        As for :class:`LightningCollapseCallback`.
    """

    def __init__(
        self,
        *,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
        data: Any = None,
        monitor_size: int = 512,
    ) -> None:
        super().__init__(
            CollapseWarning(
                min_active_units=min_active_units, min_mi=min_mi, site=site, patience=patience
            ),
            data=data,
            monitor_size=monitor_size,
        )


class LightningAggressiveOnCollapse(LightningCollapseCallback):
    """Switch to aggressive inference-network training when collapse sets in:
    :class:`pyrocollapse.callbacks.AggressiveOnCollapse` under Lightning.

    From the next epoch every training batch is preceded by encoder-only steps, until
    I_q(x; z) stops rising (He et al. 2019). One process, no gradient accumulation.

    Parameters
    ----------
    max_switches, min_active_units, min_mi, site, patience :
        As for :class:`~pyrocollapse.callbacks.AggressiveOnCollapse`.
    data, monitor_size, aggressive_max_inner, aggressive_window :
        As for :class:`LightningCollapseCallback`.
    """

    def __init__(
        self,
        *,
        max_switches: int | None = 1,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
        data: Any = None,
        monitor_size: int = 512,
        aggressive_max_inner: int = 100,
        aggressive_window: int = 10,
    ) -> None:
        super().__init__(
            AggressiveOnCollapse(
                max_switches=max_switches,
                min_active_units=min_active_units,
                min_mi=min_mi,
                site=site,
                patience=patience,
            ),
            data=data,
            monitor_size=monitor_size,
            aggressive_max_inner=aggressive_max_inner,
            aggressive_window=aggressive_window,
        )


class LightningRollbackOnCollapse(LightningCollapseCallback):
    """Roll back to the last healthy epoch when collapse sets in:
    :class:`pyrocollapse.callbacks.RollbackOnCollapse` under Lightning.

    Restores the parameters, the optimiser state and (``restore_schedule``) the KL
    schedule's position saved after the last healthy epoch, then stops training
    (``then="stop"``), continues, or continues aggressively (one process only).

    Parameters
    ----------
    then, max_rollbacks, restore_schedule, min_active_units, min_mi, site, patience :
        As for :class:`~pyrocollapse.callbacks.RollbackOnCollapse`.
    data, monitor_size, aggressive_max_inner, aggressive_window :
        As for :class:`LightningCollapseCallback`.
    """

    def __init__(
        self,
        *,
        then: str = "stop",
        max_rollbacks: int = 3,
        restore_schedule: bool = True,
        min_active_units: int | None = 1,
        min_mi: float | None = None,
        site: str = "z",
        patience: int = 1,
        data: Any = None,
        monitor_size: int = 512,
        aggressive_max_inner: int = 100,
        aggressive_window: int = 10,
    ) -> None:
        super().__init__(
            RollbackOnCollapse(
                then=then,
                max_rollbacks=max_rollbacks,
                restore_schedule=restore_schedule,
                min_active_units=min_active_units,
                min_mi=min_mi,
                site=site,
                patience=patience,
            ),
            data=data,
            monitor_size=monitor_size,
            aggressive_max_inner=aggressive_max_inner,
            aggressive_window=aggressive_window,
        )


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Draws inside leave torch's RNG (CPU, and ``device``'s when CUDA) as it was."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield


def make_dataloader(
    data: Any,
    *,
    batch_size: int = 128,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over the rows of a data tensor.

    Under DDP, Lightning replaces the sampler with a ``DistributedSampler``, so each
    process sees its own shard (padded to equal length), reshuffled every epoch when
    ``shuffle``.

    Parameters
    ----------
    data : torch.Tensor or pyrocollapse.data.Dataset
        Shape ``(N, *event_shape)``, or a dataset (its ``data``).
    batch_size : int
        Rows per batch (per process under DDP), >= 1.
    shuffle : bool
        Reshuffle the rows every epoch (training); ``False`` for validation.
    drop_last : bool
        Drop a last, incomplete batch.
    num_workers : int
        Loader worker processes, >= 0. In-memory tensors need none (the default).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields one-element lists ``[x]`` with ``x`` of shape ``(batch_size, *event_shape)``,
        which :class:`VAELightningModule` unpacks.
    """
    tensor = getattr(data, "data", data) if not isinstance(data, torch.Tensor) else data
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            "data must be a torch.Tensor of shape (N, ...) or a pyrocollapse.data.Dataset, "
            f"got {type(data).__name__}"
        )
    if tensor.dim() < 1 or len(tensor) == 0:
        raise ValueError(f"data must have at least one row, got shape {tuple(tensor.shape)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_workers = check_int("num_workers", num_workers, minimum=0)
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
    return DataLoader(
        TensorDataset(tensor),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
    )


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _check_objective(elbo: object) -> ELBO:
    if elbo is None:
        return PlainELBO()
    if isinstance(elbo, str):
        return make_elbo(elbo)
    if not isinstance(elbo, ELBO) or not callable(getattr(elbo, "differentiable_loss", None)):
        raise TypeError(
            "elbo must be a pyrocollapse objective (e.g. make_elbo('annealed')), a Pyro ELBO "
            "with differentiable_loss (e.g. Trace_ELBO()), a registered name such as "
            f"'freebits', or None; got {type(elbo).__name__}"
        )
    return elbo


def _describe(objective: ELBO) -> dict[str, Any]:
    if isinstance(objective, BaseELBO):
        return objective.hyperparameters()
    return {"class": type(objective).__name__, "num_particles": objective.num_particles}


def _check_spec(spec: object) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise TypeError(
            "spec must be None or the dict a checkpoint holds (hparams['spec']), got "
            f"{type(spec).__name__}"
        )
    return spec


def _missing_model_message(spec: dict[str, Any]) -> str:
    if not spec:
        return (
            "VAELightningModule needs a model: a pyrocollapse VAE (e.g. MLPVAE(64, 8)), or a "
            "Pyro model module together with guide="
        )
    pair = str(spec.get("model_class"))
    if spec.get("guide_class") is not None:
        pair += f" with guide {spec['guide_class']}"
    return (
        f"this checkpoint holds a user-supplied model ({pair}), which it cannot rebuild: only "
        "modules made by VAELightningModule.from_built (as the launcher does) record how to "
        "rebuild theirs. Pass the model and guide again: "
        "VAELightningModule.load_from_checkpoint(path, model=model, guide=guide)"
    )


def _saved_objective(spec: dict[str, Any], recipe: dict[str, Any] | None) -> ELBO | str | None:
    """The objective a checkpoint's ``spec`` records, for a module loaded without
    ``elbo``: rebuilt from its recipe or its registry name; the default when it was the
    default; else ``ValueError`` (a different objective must not be trained silently)."""
    if recipe is not None:
        return _rebuild_objective(recipe)
    if isinstance(spec.get("elbo"), str):
        return spec["elbo"]
    recorded = spec.get("objective")
    if recorded is None or recorded == _describe(PlainELBO()):
        return None
    raise ValueError(
        f"the checkpoint was trained with the objective {recorded!r}, which it cannot rebuild; "
        "pass it again: VAELightningModule.load_from_checkpoint(path, model=..., elbo=...)"
    )


def _plain_option(value: Any, where: str) -> Any:
    """A configuration value as a checkpoint holds it (loaded with ``weights_only=True``:
    plain values only): paths become strings; other objects are refused."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_option(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain_option(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"config.{where} is a {type(value).__name__}, which a checkpoint cannot record; give "
        "options as plain values (numbers, strings, lists, dicts), e.g. a KL schedule by name "
        "(schedule='linear', schedule_options={'warmup_steps': 1000})"
    )


def _data_facts(dataset: Any) -> dict[str, Any]:
    """What a model's ``from_dataset`` reads off a :class:`~pyrocollapse.data.Dataset`."""
    return {
        "name": dataset.name,
        "kind": dataset.kind,
        "event_shape": list(dataset.event_shape),
        "image_shape": None if dataset.image_shape is None else list(dataset.image_shape),
        "vocab_size": None if dataset.vocab is None else len(dataset.vocab),
    }


def _dataset_stub(facts: dict[str, Any]) -> Any:
    """A one-row dataset with the recorded name, kind and shapes: enough for a model's
    ``from_dataset``, which reads no data values (the trained weights are loaded after)."""
    from pyrocollapse.data import BOS_ID, EOS_ID, SPECIAL_TOKENS, Dataset

    shape = tuple(int(n) for n in facts["event_shape"])
    if facts["kind"] == "tokens":
        row = torch.zeros((1, *shape), dtype=torch.int64)
        row[0, 0], row[0, 1] = BOS_ID, EOS_ID
        extra = int(facts["vocab_size"]) - len(SPECIAL_TOKENS)
        return Dataset(
            data=row,
            name=facts["name"],
            kind="tokens",
            event_shape=shape,
            vocab=SPECIAL_TOKENS + tuple(f"<token {i}>" for i in range(extra)),
            lengths=torch.tensor([2]),
        )
    image = facts.get("image_shape")
    return Dataset(
        data=torch.zeros((1, *shape)),
        name=facts["name"],
        kind=facts["kind"],
        event_shape=shape,
        image_shape=None if image is None else tuple(int(n) for n in image),
    )


def _rebuild(recipe: dict[str, Any]) -> tuple[nn.Module, ELBO]:
    """The model and objective a :meth:`VAELightningModule.from_built` recipe describes,
    as :func:`pyrocollapse.experiment.build` made them but without the data (fresh
    weights, drawn with torch's RNG left where it was)."""
    from pyrocollapse.experiment import RunConfig
    from pyrocollapse.models import MODELS
    from pyrocollapse.priors import PRIORS

    config = RunConfig.from_dict(dict(recipe["config"]))
    dataset = _dataset_stub(recipe["data"])
    with torch.random.fork_rng(devices=[]):
        prior = PRIORS.get(config.prior).from_options(
            config.latent_dim, input_shape=dataset.event_shape, **config.prior_options
        )
        vae = MODELS.get(config.model).from_dataset(
            dataset, latent_dim=config.latent_dim, prior=prior, **config.model_options
        )
    return vae, _rebuild_objective(recipe)


def _rebuild_objective(recipe: dict[str, Any]) -> ELBO:
    from pyrocollapse.elbo import ELBOS
    from pyrocollapse.experiment import _schedule_argument
    from pyrocollapse.schedules import Schedule

    config = recipe["config"]
    elbo_cls = ELBOS.get(config["elbo"])
    options = dict(config["elbo_options"])
    if recipe.get("schedule") is not None:
        options[_schedule_argument(elbo_cls)] = Schedule.from_dict(recipe["schedule"])
    return elbo_cls(**options)


def _batch_data(batch: Any, name: str = "batch") -> ProgramArgs:
    """A batch as the arguments of one call: a tensor ``x`` (``model(x)``), a tuple/list
    (``model(*batch)``) or a dict (``model(**batch)``), as ``fit`` takes them."""
    return as_program_args(batch, name, check_values=False)


def _rows(call: ProgramArgs) -> int:
    """Rows of a batch, the per-data-point divisor for objectives without a breakdown
    (pyrocollapse objectives use the traced data plate)."""
    return call.leading_size() or 1


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------
#: What the launcher writes into ``--out``.
OUTPUT_FILES = ("model.pt", "config.json", "checkpoints", "logs", "ranks")
#: The launcher's checkpoint folder in ``--out``, and its last checkpoint there.
CHECKPOINT_FOLDER, LAST_CHECKPOINT = "checkpoints", "last.ckpt"
#: Where a resumed run keeps the metrics rows of its earlier part until it finishes.
_EARLIER_METRICS = ".metrics.earlier.csv"
#: The :class:`~pyrocollapse.experiment.RunConfig` fields the launcher uses (and records).
_RECORDED = (
    *("dataset", "dataset_options", "valid_fraction", "model", "latent_dim", "model_options"),
    *("prior", "prior_options", "elbo", "elbo_options", "schedule", "schedule_options"),
    *("epochs", "batch_size", "lr", "seed"),
)


def _build_parser() -> argparse.ArgumentParser:
    from pyrocollapse.cli import add_data_model_arguments, add_objective_arguments

    p = argparse.ArgumentParser(
        prog="python -m pyrocollapse.lightning",
        description=(
            "Train a pyrocollapse VAE with PyTorch Lightning on one or many devices and nodes. "
            "Writes OUT/model.pt (weights), OUT/config.json, OUT/checkpoints/ (last.ckpt and "
            "the best by validation ELBO) and OUT/logs/ (metrics.csv with --logger csv)."
        ),
        epilog=(
            "examples: --accelerator cpu --devices 2 --strategy ddp | --accelerator gpu "
            "--devices 4 --strategy ddp | multi-node: add --num-nodes N and set MASTER_ADDR, "
            "MASTER_PORT and NODE_RANK on every node (or launch with torchrun); see "
            "docs/lightning.md"
        ),
    )
    add_data_model_arguments(p)
    add_objective_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=60)
    g.add_argument("--batch-size", type=int, default=128, help="minibatch size per process")
    g.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    g.add_argument("--seed", type=int, default=0, help="seed of the data split and the weights")
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a JSON or YAML file of run settings (the fields of RunConfig, as for "
        "'pyrocollapse run --config'); flags given on the command line override it",
    )
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    g = p.add_argument_group("devices (passed to lightning's Trainer)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, tpu or auto")
    g.add_argument(
        "--devices", default="auto", help="devices per node: a count, a list '0,2', -1 or auto"
    )
    g.add_argument("--num-nodes", type=int, default=1, help="machines taking part")
    g.add_argument(
        "--strategy", default="auto", help="ddp, ddp_spawn, fsdp, ... or auto (one device)"
    )
    g.add_argument("--precision", default=None, help="e.g. 32-true, bf16-mixed")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="runs/lightning", help="output folder")
    g.add_argument(
        "--overwrite", action="store_true", help="replace an existing, non-empty OUT folder"
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CKPT",
        help="continue the run into OUT from its last checkpoint: an interrupted run's (kept "
        "beside OUT), else a finished run's (to train on up to a larger --epochs); without "
        "one, start afresh. --resume CKPT continues from that checkpoint file. The other "
        "options must be the run's, --epochs aside",
    )
    g.add_argument(
        "--logger",
        choices=("csv", "tensorboard", "none"),
        default="csv",
        help="where metrics go: OUT/logs/metrics.csv, TensorBoard event files in OUT/logs/ "
        "(needs: pip install tensorboard), or nowhere",
    )
    g.add_argument(
        "--save-rank-states",
        action="store_true",
        help="every process writes OUT/ranks/rank{r}.pt (to check that replicas agree)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    g.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    return p


def _devices(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _launch_rank() -> bool:
    """True in the process that launches the run (before Lightning or torchrun set ranks)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _staging_folder(out: Path) -> Path:
    """Where every process of a run writes until the launch process renames it to ``out``.

    A name every process computes alike (``.<name>.lightning.tmp`` beside ``out``); only
    the holder of ``out``'s lock creates, clears or renames it.
    """
    out = Path(out).resolve()
    return out.parent / f".{out.name}.lightning.tmp"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _resume_source(resume: str | None, out: Path, staging: Path) -> Path | None:
    """The checkpoint ``--resume`` names, where it is before the run sets up: the
    interrupted run's last checkpoint (in the staging folder), else the finished run's
    (in ``out``), or the file given; ``None`` when there is nothing to resume."""
    if resume is None:
        return None
    if resume == "last":
        for folder in (staging, out):
            candidate = folder / CHECKPOINT_FOLDER / LAST_CHECKPOINT
            if candidate.is_file():
                return candidate
        return None
    path = Path(resume).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint file")
    return path


def _in_staging(source: Path | None, out: Path, staging: Path) -> Path | None:
    """Where the run reads ``source`` from once set up: a checkpoint of ``out`` is read
    from its copy in the staging folder."""
    if source is not None and _inside(source, out):
        return staging / source.relative_to(out)
    return source


def _read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """The launcher's record in a checkpoint: ``spec`` (the module's), ``global_step``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--resume: cannot read the checkpoint {str(path)!r}: {e}") from e
    spec = (saved.get("hyper_parameters") or {}).get("spec") if isinstance(saved, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("build"), dict):
        raise ValueError(
            f"--resume: {str(path)!r} is not a checkpoint of this launcher (it records no "
            "model recipe); continue it from Python with "
            "VAELightningModule.load_from_checkpoint or Trainer.fit(ckpt_path=...)"
        )
    return {"spec": spec, "global_step": int(saved.get("global_step", 0))}


def _check_same_run(config: Any, spec: dict[str, Any], path: Path) -> None:
    """``--resume`` continues a run with its options: all but ``epochs`` must match."""
    then = spec["build"]["config"]
    now = {k: getattr(config, k) for k in _RECORDED}
    changed = [
        f"{k}: {then.get(k)!r} then, {now[k]!r} now"
        for k in _RECORDED
        if k != "epochs" and _plain(then.get(k)) != _plain(now[k])
    ]
    if changed:
        raise ValueError(
            f"--resume: the checkpoint {str(path)!r} was trained with other options "
            f"({'; '.join(changed)}); rerun with the same options (only --epochs may differ), "
            "or drop --resume to start afresh"
        )


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists (a command line gives either), for comparing."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _has_checkpoints(staging: Path) -> bool:
    return any((staging / CHECKPOINT_FOLDER).glob("*.ckpt"))


@contextlib.contextmanager
def _claim_out(
    out: Path, overwrite: bool, resume: str | None, config: Any
) -> Iterator[tuple[Path | None, bool]]:
    """In the launch process: lock ``out`` for the run and set up its staging folder.

    Like ``pyrocollapse run``: a second launcher on the same ``--out`` is refused
    (:class:`~pyrocollapse._io.TargetBusyError`), a non-empty ``out`` needs
    ``overwrite`` (unless the run continues the one in it), and ``out`` appears whole at
    the end or not at all. A run that fails or is killed after writing a checkpoint
    leaves its staging folder, which ``--resume`` continues; without ``--resume`` it is
    kept unless ``overwrite``. ``--resume`` of a finished run copies ``out`` into the
    staging folder and continues there.

    Yields
    ------
    (Path or None, bool)
        The checkpoint to continue from (``None``: start afresh), and whether the run
        continues the one into ``out`` (which it then replaces without ``overwrite``).
    """
    from pyrocollapse._io import lock_directory, remove_stale_temporaries
    from pyrocollapse.experiment import check_output_folder

    out = check_output_folder("--out", out)
    staging = _staging_folder(out)
    with lock_directory(out):
        source = _resume_source(resume, out, staging)
        if resume is None and _has_checkpoints(staging) and not overwrite:
            raise FileExistsError(
                f"{str(staging)!r} holds the checkpoints of an interrupted run into --out "
                f"{str(out)!r}; pass --resume to continue it, or --overwrite to start afresh"
            )
        if resume is not None and source is None:
            print(
                f"python -m pyrocollapse.lightning: --resume: no checkpoint of a run into "
                f"{str(out)!r}; starting afresh",
                file=sys.stderr,
            )
        if source is not None:
            _check_same_run(config, _read_resume_checkpoint(source)["spec"], source)
        continuing = source is not None and (_inside(source, staging) or _inside(source, out))
        if out.exists() and any(out.iterdir()) and not overwrite and not continuing:
            present = sorted(p.name for p in out.iterdir())
            raise FileExistsError(
                f"--out {str(out)!r} already holds {', '.join(present[:5])}"
                f"{', ...' if len(present) > 5 else ''}; pass --overwrite to replace the folder "
                "or choose another folder"
            )
        remove_stale_temporaries(out.parent, out.name)
        if source is None or not _inside(source, staging):
            shutil.rmtree(staging, ignore_errors=True)  # left by a killed run into ``out``
            if source is not None and _inside(source, out):
                shutil.copytree(out, staging, symlinks=True)
            else:
                staging.mkdir(parents=True)
        try:
            yield _in_staging(source, out, staging), continuing
        except BaseException:
            if _has_checkpoints(staging):
                print(
                    f"python -m pyrocollapse.lightning: the run's checkpoints are kept in "
                    f"{str(staging / CHECKPOINT_FOLDER)!r}; the same command with --resume "
                    "continues it",
                    file=sys.stderr,
                )
            else:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)  # renamed to ``out`` on success


def _tensorboard_installed() -> bool:
    """Whether Lightning's ``TensorBoardLogger`` finds a writer (either package)."""
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def _check_logger(name: str) -> None:
    if name == "tensorboard" and not _tensorboard_installed():
        raise ValueError(
            "--logger tensorboard needs TensorBoard, which is not installed: "
            "pip install tensorboard (or choose --logger csv or none)"
        )


def _make_logger(name: str, staging: Path) -> Any:
    if name == "csv":
        return CSVLogger(save_dir=staging, name="logs", version="")
    if name == "tensorboard":
        return TensorBoardLogger(save_dir=staging, name="logs", version="")
    return False


def _train(args: argparse.Namespace) -> int:
    """Run the launcher on parsed arguments (every process runs this)."""
    from pyrocollapse.cli import data_model_fields, objective_fields
    from pyrocollapse.experiment import RunConfig

    check_int("--num-nodes", args.num_nodes, minimum=1)
    check_int("--num-workers", args.num_workers, minimum=0)
    _check_logger(args.logger)
    def from_args(a: argparse.Namespace) -> RunConfig:
        return RunConfig(
            **data_model_fields(a),
            **objective_fields(a),
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            seed=a.seed,
        )

    config = from_args(args)
    if args.config is not None:
        from pyrocollapse.cli import _merge_config, _read_config

        defaults = from_args(_build_parser().parse_args([]))
        config = _merge_config(_read_config(args.config), config, defaults)
    config = config.validate()
    out = Path(args.out)
    staging = _staging_folder(out)
    launch = _launch_rank()
    if launch:
        with _claim_out(out, args.overwrite, args.resume, config) as (source, continuing):
            _train_into(args, config, out, staging, launch, source, continuing)
    else:  # the launch process has set up the staging folder: find the same checkpoint
        resolved = Path(out).resolve()
        source = _in_staging(_resume_source(args.resume, resolved, staging), resolved, staging)
        _train_into(args, config, out, staging, launch, source, source is not None)
    return 0


def _stash_earlier_metrics(staging: Path, global_step: int) -> None:
    """Before a resumed run: move the metrics rows logged up to the checkpoint (steps
    before ``global_step``) out of ``logs/``, which Lightning's CSV logger clears."""
    rows: list[dict[str, str]] = []
    for path in (staging / _EARLIER_METRICS, staging / "logs" / "metrics.csv"):
        rows += _read_rows(path)
    kept = [r for r in rows if _row_step(r) < global_step]
    _write_rows(staging / _EARLIER_METRICS, kept)
    for name in ("metrics.csv", "hparams.yaml"):
        with contextlib.suppress(FileNotFoundError):
            (staging / "logs" / name).unlink()


def _merge_earlier_metrics(staging: Path) -> None:
    """After a resumed run: ``logs/metrics.csv`` = the earlier rows, then this run's."""
    earlier = staging / _EARLIER_METRICS
    if not earlier.exists():
        return
    path = staging / "logs" / "metrics.csv"
    rows = _read_rows(earlier) + _read_rows(path)
    if rows:
        _write_rows(path, rows)
    earlier.unlink()


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    from pyrocollapse._io import atomic_write

    names = sorted({k for r in rows for k in r})

    def write(tmp: Any) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or math.inf)
    except ValueError:
        return math.inf


def _train_into(
    args: argparse.Namespace,
    config: Any,
    out: Path,
    staging: Path,
    launch: bool,
    source: Path | None,
    continuing: bool,
) -> None:
    """Train, every process writing into ``staging``; the launch process renames it to
    ``out`` once all have finished. ``source``: the checkpoint to continue from."""
    from pyrocollapse._io import atomic_write, atomic_write_text, json_default, replace_directory
    from pyrocollapse.experiment import build

    saved = _read_resume_checkpoint(source) if source is not None else None
    checkpoints = ModelCheckpoint(
        dirpath=staging / CHECKPOINT_FOLDER,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/elbo",
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    callbacks: list[pl.Callback] = [checkpoints]
    if args.save_rank_states:
        callbacks.append(RankStateDump(staging / "ranks"))
    if launch and saved is not None and continuing and args.logger == "csv":
        _stash_earlier_metrics(staging, saved["global_step"])
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=config.epochs,
        logger=_make_logger(args.logger, staging),
        callbacks=callbacks,
        enable_checkpointing=True,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=not args.no_progress,
    )
    world = trainer.world_size
    # One optimisation step sees batch_size x world rows: the default schedule lengths
    # (a fraction of all steps) count those steps.
    built = build(dataclasses.replace(config, batch_size=config.batch_size * world))
    steps_per_epoch = math.ceil(math.ceil(len(built.train) / world) / config.batch_size)
    trainer.log_every_n_steps = min(trainer.log_every_n_steps, steps_per_epoch)
    if saved is None:
        # the recipe records the options as given (--batch-size per process)
        module = VAELightningModule.from_built(dataclasses.replace(built, config=config))
    else:  # the model and objective (its KL schedule as set up then) of the checkpoint
        module = VAELightningModule(spec=saved["spec"], lr=config.lr)
    loaders = [
        make_dataloader(part, batch_size=config.batch_size, shuffle=shuffle, num_workers=n)
        for part, shuffle, n in ((built.train, True, args.num_workers), (built.valid, False, 0))
    ]
    with warnings.catch_warnings():
        # In-memory tensors need no loader workers; Lightning's advice to add some does not
        # apply (and workers would only copy the data). Lightning 2.6 itself still builds
        # pytree LeafSpecs, which recent torch deprecates: not the user's to act on. A
        # resumed run writes into the checkpoint folder it continues, or starts its own.
        warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        if saved is not None:
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists")
            # another run's checkpoint: this run tracks its own best from the start
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        trainer.fit(module, *loaders, ckpt_path=None if source is None else str(source))
    trainer.strategy.barrier("pyrocollapse-outputs")  # every process's files are written

    if trainer.is_global_zero:
        if launch:
            _merge_earlier_metrics(staging)
        vae = module.vae
        atomic_write(staging / "model.pt", lambda tmp: torch.save(vae.state_dict(), tmp))
        best = checkpoints.best_model_path
        resumed = None
        if saved is not None and source is not None:
            where = source.relative_to(staging) if _inside(source, staging) else source
            resumed = {"checkpoint": str(where), "global_step": saved["global_step"]}
        record = {
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k in _RECORDED},
            "objective": _describe(module.objective),
            "trainer": {
                "accelerator": type(trainer.accelerator).__name__,
                "strategy": type(trainer.strategy).__name__,
                "world_size": world,
                "num_nodes": args.num_nodes,
                "global_step": trainer.global_step,
            },
            "checkpoints": {
                "last": f"{CHECKPOINT_FOLDER}/{LAST_CHECKPOINT}",
                "best": f"{CHECKPOINT_FOLDER}/{Path(best).name}" if best else None,
                "best_val_elbo": (
                    None
                    if checkpoints.best_model_score is None
                    else float(checkpoints.best_model_score)
                ),
            },
            "resumed_from": resumed,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        atomic_write_text(
            staging / "config.json", json.dumps(record, indent=2, default=json_default) + "\n"
        )
        elbo = trainer.callback_metrics.get("val/elbo")
        summary = f"val/elbo {float(elbo):.2f} nats per data point, " if elbo is not None else ""
    if launch:
        replace_directory(staging, out, overwrite=args.overwrite or continuing)
    if trainer.is_global_zero:
        print(
            f"trained on {world} process(es), {trainer.global_step} steps; {summary}wrote {out}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pyrocollapse.lightning``; returns the exit status.

    Every process of a run executes it (Lightning re-executes the command line for the
    other local processes; ``torchrun`` and SLURM start them all). User errors print one
    line and return 2 (``--verbose`` shows the traceback), Lightning's
    ``MisconfigurationException`` (e.g. ``--accelerator gpu`` without a GPU) included.
    """
    from pyrocollapse.cli import USER_ERRORS

    if isinstance(argv, str) or not (argv is None or isinstance(argv, (list, tuple))):
        raise TypeError(
            f"argv must be a list of strings such as ['--devices', '2'], got "
            f"{type(argv).__name__} {argv!r}"
        )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    try:
        return _train(args)
    except (*USER_ERRORS, MisconfigurationException) as e:
        if args.verbose:
            raise
        print(f"python -m pyrocollapse.lightning: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the imported module's main, so that its classes are pyrocollapse.lightning.*
    # (not __main__.*) in pickles and checkpoints.
    from pyrocollapse.lightning import main as _main

    sys.exit(_main())
