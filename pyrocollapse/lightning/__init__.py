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

Modules
-------
One concept each: ``module`` (:class:`VAELightningModule`, :func:`per_data_point_terms`),
``checkpoints`` (what a module records to be rebuilt from a checkpoint),
``collapse_callbacks`` (the ``Lightning*OnCollapse`` callbacks), ``rank_states``
(:class:`RankStateDump`), ``dataloader`` (:func:`make_dataloader`) and ``launcher``
(:func:`main`, run by ``python -m pyrocollapse.lightning``). Every public name is
importable from ``pyrocollapse.lightning``.
"""

from __future__ import annotations

from pyrocollapse.lightning._backend import check_installed as _check_installed
from pyrocollapse.lightning.collapse_callbacks import (
    LightningAggressiveOnCollapse,
    LightningCollapseCallback,
    LightningCollapseWarning,
    LightningRollbackOnCollapse,
)
from pyrocollapse.lightning.dataloader import make_dataloader
from pyrocollapse.lightning.launcher import CHECKPOINT_FOLDER as CHECKPOINT_FOLDER
from pyrocollapse.lightning.launcher import LAST_CHECKPOINT as LAST_CHECKPOINT
from pyrocollapse.lightning.launcher import OUTPUT_FILES as OUTPUT_FILES
from pyrocollapse.lightning.launcher import _staging_folder as _staging_folder
from pyrocollapse.lightning.launcher import main
from pyrocollapse.lightning.module import VAELightningModule, per_data_point_terms
from pyrocollapse.lightning.rank_states import RankStateDump

# Without Lightning, the imports above raise ImportError naming the extra to install;
# this raises it too where they come from sys.modules (loaded while Lightning was there).
_check_installed()

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
