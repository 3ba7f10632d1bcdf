"""What :func:`~pyrocollapse.train.fit` trains with: :class:`TrainState` and
:class:`NonFiniteLossError`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pyrocollapse.train.history import History


@dataclass
class TrainState:
    """What callbacks see and may change: the model/guide, loss, optimiser, history and
    settings of the running :func:`fit`.

    Attributes
    ----------
    model, guide : callable
        The Pyro programs being trained.
    loss : pyro.infer.ELBO
        The objective.
    optimizer : torch.optim.Optimizer
        One optimiser over ``guide_params + model_params``.
    history : History
        Records so far.
    epochs : int
        Epochs requested (the total, counting epochs run before a resume).
    epoch : int
        Current epoch (1-based).
    step : int
        Decoder (outer) optimisation steps taken; the objective's schedule advances with it.
    aggressive : bool
        Whether the next epoch trains the encoder aggressively (He et al. 2019). ``fit``
        clears it when the mutual information stops rising; callbacks may set it.
    inner_steps : int
        Encoder-only steps taken in aggressive mode so far.
    previous_mi : float or None
        I_q(x; z) measured at the end of the previous epoch (summed over monitored
        sites), the reference aggressive mode compares with.
    guide_params, model_params : list[torch.Tensor]
        The encoder (guide) and decoder (model) parameters, as :func:`collect_params`
        finds them.
    validate : bool
        Run Pyro's validation on every step (else on the first step only).
    extras : dict
        Free space for callbacks.
    device : torch.device or None
        The device ``fit`` moved parameters and batches to (``None``: nothing moved).
    batch : int
        1-based index of the current minibatch within the epoch.
    checkpoint : str or None
        Path of the last checkpoint written (or resumed from) in this run.
    scheduler : torch.optim.lr_scheduler.LRScheduler, ReduceLROnPlateau or None
        The learning-rate scheduler of ``optimizer`` (from a ``pyro.optim.PyroLRScheduler``
        or ``fit``'s ``scheduler``), or ``None``.
    """

    model: Callable
    guide: Callable
    loss: Any
    optimizer: torch.optim.Optimizer
    history: History
    epochs: int
    epoch: int = 0
    step: int = 0
    aggressive: bool = False
    inner_steps: int = 0
    previous_mi: float | None = None
    guide_params: list[torch.Tensor] = field(default_factory=list)
    model_params: list[torch.Tensor] = field(default_factory=list)
    validate: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    batch: int = 0
    checkpoint: str | None = None
    scheduler: Any = None
    # set once Pyro's validation has run on a step of this fit call
    _validated: bool = field(default=False, init=False, repr=False)
    # per-parameter clipping of a PyroOptim's clip_args: (param, {"clip_norm": ...})
    _param_clip: list[tuple[torch.Tensor, dict[str, float]]] = field(
        default_factory=list, init=False, repr=False
    )
    # "epoch" or "step": when the scheduler steps
    _scheduler_step: str = field(default="epoch", init=False, repr=False)
    # for objectives that do not report num_data: the model wrapped to count data points
    _counter: Any = field(default=None, init=False, repr=False)
    _counted_model: Any = field(default=None, init=False, repr=False)
    _num_data: float = field(default=1.0, init=False, repr=False)
    # learning rate (first parameter group) of the last optimiser step
    _lr: float = field(default=math.nan, init=False, repr=False)
    # CUDA devices whose RNG state a step snapshots (to replay a failing step)
    _rng_devices: list[int] = field(default_factory=list, init=False, repr=False)


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN or infinite during :func:`fit`.

    Raised before the optimiser steps, so the parameters keep their values from before
    the failing step; a checkpoint written earlier is left intact.

    Attributes
    ----------
    epoch, step : int
        The 1-based epoch, and the 1-based decoder (outer) step that failed; an
        encoder-only step of aggressive mode counts towards the next outer step.
    kind : {"loss", "gradient"}
        Whether the loss value or (with a finite loss) its gradient was not finite.
    term : {"reconstruction", "kl", "extra"} or None
        The ELBO term found responsible, by re-evaluating the same minibatch with the
        same random draws and checking the reconstruction, KL and remaining ("extra":
        auxiliary guide sites and variant terms) parts separately; ``None`` when the
        objective does not expose its terms (a stock Pyro ELBO) or the re-evaluation did
        not reproduce the failure.
    site : str or None
        The sample site of the failing term, where one site was found.
    checkpoint : str or None
        The last good checkpoint of the run (``None`` when none was written).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int,
        kind: str,
        term: str | None,
        site: str | None,
        checkpoint: str | None,
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.kind = kind
        self.term = term
        self.site = site
        self.checkpoint = checkpoint
