"""Multi-GPU and multi-node training through PyTorch Lightning.

:class:`VAELightningModule` wraps a Pyro model/guide pair (a ready
:class:`~pyrocollapse.models.VAE`, or any two ``nn.Module`` s) and an objective from
:mod:`pyrocollapse.elbo` in Pyro's :class:`~pyro.infer.elbo.ELBOModule`, so that
Lightning's ``Trainer`` runs it on any accelerator and any strategy, ``"ddp"`` across GPUs
and nodes included. :func:`make_dataloader` turns a data tensor into a ``DataLoader``, and
``python -m pyrocollapse.lightning`` is a ready launcher (see :func:`main`).

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
import dataclasses
import json
import math
import os
import sys
import warnings
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
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
except ImportError:  # the standalone "pytorch-lightning" distribution has the same API
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.loggers import CSVLogger
        from pytorch_lightning.utilities.exceptions import MisconfigurationException
    except ImportError as e:
        raise ImportError(
            "pyrocollapse.lightning needs PyTorch Lightning (>= 2.2), which is not installed. "
            'Install it with: pip install "pyrocollapse[lightning]" (or: pip install lightning)'
        ) from e

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.elbo import BaseELBO, PlainELBO, make_elbo
from pyrocollapse.program_data import ProgramArgs, as_program_args

__all__ = [
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
    model : VAE or torch.nn.Module
        Either a ready :class:`~pyrocollapse.models.VAE` (any ``nn.Module`` with
        ``model(x)`` and ``guide(x)`` Pyro programs), with ``guide`` left ``None``; or a
        Pyro model that is an ``nn.Module`` (e.g. a ``PyroModule``), with ``guide``.
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

    See the module docstring for what DDP requires of Pyro parameters.

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
        model: nn.Module,
        guide: nn.Module | None = None,
        *,
        elbo: ELBO | str | None = None,
        lr: float = 1e-3,
        example_batch: Any = None,
        decorrelate_ranks: bool = True,
    ) -> None:
        super().__init__()
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
        self.save_hyperparameters(
            {
                "model": type(model).__name__,
                "guide": None if guide is None else type(guide).__name__,
                "objective": _describe(objective),
                "lr": self.lr,
            }
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
        """Restore the objective's step counter saved by :meth:`on_save_checkpoint`."""
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
OUTPUT_FILES = ("model.pt", "config.json", "logs", "ranks")
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
            "Writes OUT/model.pt (weights), OUT/config.json and OUT/logs/metrics.csv."
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


@contextlib.contextmanager
def _claim_out(out: Path, overwrite: bool) -> Iterator[None]:
    """In the launch process: lock ``out`` for the run and set up its staging folder.

    Like ``pyrocollapse run``: a second launcher on the same ``--out`` is refused
    (:class:`~pyrocollapse._io.TargetBusyError`), a non-empty ``out`` needs
    ``overwrite``, and ``out`` appears whole at the end or not at all (a killed run
    leaves only the staging folder, which the next run into ``out`` clears).
    """
    import shutil

    from pyrocollapse._io import lock_directory, remove_stale_temporaries
    from pyrocollapse.experiment import check_output_folder

    out = check_output_folder("--out", out)
    staging = _staging_folder(out)
    with lock_directory(out):
        if out.exists() and any(out.iterdir()) and not overwrite:
            present = sorted(p.name for p in out.iterdir())
            raise FileExistsError(
                f"--out {str(out)!r} already holds {', '.join(present[:5])}"
                f"{', ...' if len(present) > 5 else ''}; pass --overwrite to replace the folder "
                "or choose another folder"
            )
        remove_stale_temporaries(out.parent, out.name)
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed run into ``out``
        staging.mkdir(parents=True)
        try:
            yield
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # renamed to ``out`` on success


def _train(args: argparse.Namespace) -> int:
    """Run the launcher on parsed arguments (every process runs this)."""
    from pyrocollapse.cli import data_model_fields, objective_fields
    from pyrocollapse.experiment import RunConfig

    check_int("--num-nodes", args.num_nodes, minimum=1)
    check_int("--num-workers", args.num_workers, minimum=0)
    config = RunConfig(
        **data_model_fields(args),
        **objective_fields(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    ).validate()
    out = Path(args.out)
    staging = _staging_folder(out)
    launch = _launch_rank()
    with _claim_out(out, args.overwrite) if launch else contextlib.nullcontext():
        _train_into(args, config, out, staging, launch)
    return 0


def _train_into(
    args: argparse.Namespace, config: Any, out: Path, staging: Path, launch: bool
) -> None:
    """Train, every process writing into ``staging``; the launch process renames it to
    ``out`` once all have finished."""
    from pyrocollapse._io import atomic_write, atomic_write_text, json_default, replace_directory
    from pyrocollapse.experiment import build

    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=config.epochs,
        logger=CSVLogger(save_dir=staging, name="logs", version=""),
        callbacks=[RankStateDump(staging / "ranks")] if args.save_rank_states else [],
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=not args.no_progress,
    )
    world = trainer.world_size
    # One optimisation step sees batch_size x world rows: the default schedule lengths
    # (a fraction of all steps) count those steps.
    built = build(dataclasses.replace(config, batch_size=config.batch_size * world))
    steps_per_epoch = math.ceil(math.ceil(len(built.train) / world) / config.batch_size)
    trainer.log_every_n_steps = min(trainer.log_every_n_steps, steps_per_epoch)
    module = VAELightningModule(built.vae, elbo=built.elbo, lr=config.lr)
    loaders = [
        make_dataloader(part, batch_size=config.batch_size, shuffle=shuffle, num_workers=n)
        for part, shuffle, n in ((built.train, True, args.num_workers), (built.valid, False, 0))
    ]
    with warnings.catch_warnings():
        # In-memory tensors need no loader workers; Lightning's advice to add some does not
        # apply (and workers would only copy the data). Lightning 2.6 itself still builds
        # pytree LeafSpecs, which recent torch deprecates: not the user's to act on.
        warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        trainer.fit(module, *loaders)
    trainer.strategy.barrier("pyrocollapse-outputs")  # every process's files are written

    if trainer.is_global_zero:
        atomic_write(staging / "model.pt", lambda tmp: torch.save(built.vae.state_dict(), tmp))
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
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        atomic_write_text(
            staging / "config.json", json.dumps(record, indent=2, default=json_default) + "\n"
        )
        elbo = trainer.callback_metrics.get("val/elbo")
        summary = f"val/elbo {float(elbo):.2f} nats per data point, " if elbo is not None else ""
    if launch:
        replace_directory(staging, out, overwrite=args.overwrite)
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
