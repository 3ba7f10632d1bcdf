""":func:`fit`, composed of small parts: :func:`_check_arguments` (the arguments),
:class:`_Fit` (set-up; the epochs, each its steps, its record and what follows it), and
the data source, step, monitor and checkpoint modules of :mod:`pyrocollapse.train`.

``fit`` looks ``_monitor``, ``_train_step`` and ``_write_checkpoint`` up in this module
when it calls them, so a test or benchmark replaces one here
(``pyrocollapse.train.fitting._monitor``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled

from pyrocollapse._validation import program_dtype
from pyrocollapse.tracking import epoch_scalars
from pyrocollapse.train.callback import Callback
from pyrocollapse.train.checkpoint import _open_checkpoint, _restore_checkpoint, _write_checkpoint
from pyrocollapse.train.devices import _modules_of, _move_in_place, _resolve_device
from pyrocollapse.train.history import EpochRecord, History
from pyrocollapse.train.monitor import _MONITOR_CHUNK, _monitor
from pyrocollapse.train.optim import (
    _collect_named_params,
    _current_lr,
    _step_scheduler,
    make_optimization,
)
from pyrocollapse.train.progress import _Progress
from pyrocollapse.train.settings import _check_arguments, _Settings
from pyrocollapse.train.sources import _make_source, _signature_hint
from pyrocollapse.train.state import TrainState
from pyrocollapse.train.step import _PlateCounter, _train_step


def fit(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    loss: Any,
    optim: Any = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    scheduler_step: str = "epoch",
    epochs: int,
    batch_size: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] | None = (),
    monitor: Any = "default",
    monitor_size: int | None = None,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    aggressive: bool = False,
    aggressive_max_inner: int = 100,
    aggressive_window: int = 10,
    validate: bool = False,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    tracker: Any = None,
) -> History:
    """Train ``model``/``guide`` on ``data`` by stochastic variational inference.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``SVI.step`` calls them, ``model(*args, **kwargs)`` with
        the arguments of one batch: ``vae.model`` and ``vae.guide`` (one tensor ``x`` of
        shape ``(B, ...)``), a conditional VAE's ``model(xs, ys)``, an M2 VAE's
        ``model(xs, ys=None)``, a deep Markov model's ``model(seqs, mask, lengths)``, or
        functions written by hand.
    data : tensor, NumPy array, tuple, list, dict, DataLoader or re-iterable of batches
        Floating data of any dtype (float64, as NumPy makes by default, float16,
        bfloat16, ...) are converted to the floating dtype of the parameters of the
        modules behind ``model`` and ``guide`` (else of Pyro's param store, else torch's
        default dtype), which the ``"pyrocollapse"`` logger says once at INFO; integer
        data (counts, token ids) stay integer. Sparse tensors, tensors on the ``meta``
        device and 0-d data are refused. Held in memory: a tensor of shape ``(N, ...)`` (one positional argument), a
        tuple/list (positional arguments) or a dict (keyword arguments), shuffled (with
        ``seed``) and split into minibatches of ``batch_size`` rows every epoch. In a
        tuple/list/dict every tensor or NumPy array with a dimension is cut along dim 0,
        which must have the same size N in all of them (else ``ValueError`` naming each
        argument and its size); other values (``None``, numbers, strings, 0-d tensors)
        go to every minibatch unchanged; floating NumPy arrays become tensors of the
        default dtype. Or streamed: a ``torch.utils.data.DataLoader`` (or any other
        re-iterable of batches, e.g. a list of batches is *not* one: a list is positional
        arguments) whose batches are used as they come: one epoch is one pass, and each
        batch is a tensor ``x`` (``model(x)``), a tuple/list (``model(*batch)``: a
        ``TensorDataset(xs, ys)`` gives ``model(xs, ys)``) or a dict
        (``model(**batch)``). A loader's tensors need not share a leading size
        (time-major ``(T, B, D)`` sequences may come with their ``(B,)`` lengths). An
        ``IterableDataset`` streaming batches works (with ``batch_size=None`` in the
        loader). With a loader, the first batches are checked (finite, non-empty) and
        later ones are not. *Changed:* a loader yielding tuples passes every element as
        a positional argument; up to pyrocollapse 0.1.0 only the first was passed. A
        model that does not take them fails with a ``TypeError`` saying how to fix it.
    loss : pyro.infer.ELBO
        Any Pyro ELBO with ``differentiable_loss``; pyrocollapse ELBOs also report their
        components and weights and advance their KL schedule once per (decoder) step.
    optim : None, pyro.optim.PyroOptim, pyro.optim.PyroLRScheduler or callable
        The optimiser, never substituted (anything else is a ``TypeError``/``ValueError``
        naming what is accepted):

        * ``None``: Adam with lr 1e-3 (fused where torch supports it for the
          parameters' device and dtype);
        * a ``pyro.optim`` optimiser (``Adam``, ``ClippedAdam``, ``SGD``,
          ``AdagradRMSProp``, ``DCTAdam``, ``RMSprop``, ``Adagrad``, ...): its torch
          optimiser with its arguments. A per-parameter callable of arguments is called
          as Pyro calls it, with each parameter's name (``param_name``, or
          ``(module_name, param_name)``; names from the param sites) and gives one
          parameter group per parameter; ``clip_args`` clip each parameter's gradient
          before the step, as Pyro does;
        * a ``pyro.optim.PyroLRScheduler`` (``ExponentialLR``, ``StepLR``,
          ``OneCycleLR``, ``ReduceLROnPlateau``, ...): the torch optimiser from its
          ``"optimizer"`` and ``"optim_args"``, and the torch scheduler from the
          scheduler constructor with the remaining arguments, stepped as
          ``scheduler_step`` says;
        * a callable ``params -> torch.optim.Optimizer`` (e.g.
          ``functools.partial(torch.optim.SGD, lr=0.1)``), with ``scheduler`` for a
          schedule.
    scheduler : callable or None
        ``optimizer -> torch.optim.lr_scheduler.LRScheduler`` (or ``ReduceLROnPlateau``),
        e.g. ``lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10)``, for an
        ``optim`` without its own scheduler; a ``PyroLRScheduler`` with ``scheduler`` is a
        ``ValueError``.
    scheduler_step : {"epoch", "step"}
        When the scheduler steps: once at the end of every epoch (default; as Pyro's
        documentation steps a ``PyroLRScheduler``), or after every decoder (outer)
        optimisation step (e.g. for ``OneCycleLR`` sized in steps). Encoder-only steps of
        aggressive mode do not step it. ``ReduceLROnPlateau`` is given the epoch's mean
        per-data-point loss (or the step's). The learning rate of the first parameter
        group in the epoch's last step is recorded as the History column ``lr``.
    epochs : int
        Number of passes over the data (>= 1); with ``resume``, the total wanted,
        counting the epochs already in the checkpoint.
    batch_size : int or None
        Minibatch size for tensor data (>= 1; default 128); the last minibatch may be
        smaller. With a DataLoader the loader's batches are used: leave it ``None``.
    seed : int or None
        Seeds Pyro/torch/NumPy/``random`` RNGs and the shuffling: the same seed and
        initial parameters give the same history. A loader that shuffles draws from the
        global torch RNG, which ``seed`` fixes, unless it has its own ``generator``;
        seed that generator too (e.g. ``DataLoader(..., shuffle=True,
        generator=torch.Generator().manual_seed(0))``). Loaders with worker processes
        are deterministic only when their datasets are.
    progress : bool
        Show progress. On a terminal (as tqdm decides): a tqdm bar over the epochs and
        one over the steps of the current epoch, whose postfix counts aggressive mode's
        encoder-only steps. Elsewhere (output to a file or a pipe): INFO records of
        the ``"pyrocollapse.train"`` logger (shown once logging is configured, e.g.
        ``logging.basicConfig(level=logging.INFO)``): one at the start, one at most
        every :data:`PROGRESS_INTERVAL` (30) seconds within an epoch saying which step
        it is at (and how many encoder steps aggressive mode took), and a summary of
        every tenth epoch, the last one, and any epoch ending 30 s or more after the
        previous line. ``False``: nothing.
    callbacks : iterable of Callback or None
        Hooks run at train begin / epoch end / train end (see
        :mod:`pyrocollapse.callbacks` for collapse-aware ones); ``None`` or ``()``: none.
        A single callback goes in a list, ``callbacks=[cb]``.
    monitor : "default", None or list of str
        Latent sites whose active units and mutual information are computed each epoch on
        a fixed subset of ``monitor_size`` points (``"default"``: the sites the ELBO
        reports per dimension, or, for an objective that reports none such as Pyro's
        stock ELBOs, every local latent site the estimators apply to, others (global
        sites, point masses) being skipped; ``None`` turns monitoring off, except for
        the mutual information that aggressive mode needs; a list: exactly those sites,
        raising the reason for one that cannot be monitored). A discrete site gets its
        exact ``mi/<site>`` and no active units. One pass of guide and model over the
        subset (in chunks of ``max(512, batch_size)`` points) serves every site; the
        History records the total MI per site, not per dimension. The subset is a random
        one of tensor data (drawn once, with ``seed``) or the first ``monitor_size`` rows a DataLoader yields (whose
        batches must then share a leading size in each batch, as diagnostics cut every
        argument along dim 0; pass ``monitor=None`` for time-major batches).
    monitor_size : int or None
        Size of the fixed monitoring subset (>= 2). ``None`` (default): a sixteenth of
        in-memory data, at least 64 and at most 512 points (all of them when there are
        fewer), which keeps the monitor near 5 % of an epoch (``benchmarks/monitor.py``);
        512 for a DataLoader.
    clip_norm : float or None
        Clip the global (L2) gradient norm of the parameters being updated to this value
        (> 0), as ``torch.nn.utils.clip_grad_norm_``.
    clip_value : float or None
        Clip every gradient element to ``[-clip_value, clip_value]`` (> 0), after
        ``clip_norm`` where both are given.
    aggressive : bool
        Start in aggressive inference-network mode (He et al. 2019, Algorithm 1).
        While on, every outer step first updates only the encoder (guide parameters) on
        fresh random minibatches until its loss stops improving, then updates only the
        decoder (model parameters) once on the epoch's next minibatch. At the end of
        each aggressive epoch I_q(x; z) is measured on the monitoring subset, and the
        mode ends as soon as it is lower than at the end of the previous epoch (0
        before the first); training then updates both together. The encoder's fresh
        minibatches are rows drawn uniformly from tensor data, or the batches of a
        separate pass over a DataLoader, started anew every epoch.
    aggressive_max_inner : int
        Cap on encoder-only steps per outer step (>= 1; the authors use 100).
    aggressive_window : int
        The inner loop compares the mean per-data-point loss of consecutive windows of
        this many encoder steps and stops when a window is worse than the previous one
        (>= 1; the authors' image code uses 10, their text code 15).
    validate : bool
        Pyro's validation (shape and support checks of every site, where enabled with
        ``pyro.enable_validation``, the default) runs on the first step, which catches a
        malformed model or data at once, and on every later step only with
        ``validate=True``: it costs about half a millisecond a step.
    device : str, torch.device or None
        Train on this device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...):
        the modules behind ``model`` and ``guide`` (the ``nn.Module``/``PyroModule``
        they are methods of, with their buffers) and every parameter the programs use,
        including plain ``pyro.param`` ones, are moved there in place, and each
        minibatch is moved as it is used (the data set itself stays where it is).
        Hand-written programs must create new tensors (initial values, constants) on
        the device themselves, e.g. from ``x.device``. ``None`` (default) moves nothing.
        A device that is not available is a ``ValueError`` listing the available ones.
    checkpoint_dir : str, path or None
        Folder for a checkpoint, ``<checkpoint_dir>/checkpoint.pt``, written
        atomically (temporary file, flushed to disk, then renamed over the previous one)
        every ``checkpoint_every`` epochs and after the last epoch run (also after a
        callback stopped training). It holds everything that ``resume`` needs (see
        Notes), as tensors and plain Python values only, after a header with the sha256
        digest of those bytes: a truncated, altered or incomplete checkpoint is a
        ``ValueError`` naming the file and what is wrong, never a silent resume. Without ``resume``, a folder
        that already holds a checkpoint is refused, so a run never overwrites another's.
    checkpoint_every : int
        Epochs between checkpoints (>= 1).
    tracker : pyrocollapse.tracking.Tracker or None
        Sends the run to an experiment tracker (see :mod:`pyrocollapse.tracking`:
        :class:`~pyrocollapse.tracking.TensorBoardTracker`,
        :class:`~pyrocollapse.tracking.MLflowTracker`, or any object with
        ``log_scalars(step, dict)``): ``log_hparams`` with fit's settings before the first
        epoch, ``log_scalars(epoch, ...)`` with every value of each epoch's record (the
        :meth:`History.to_dataframe` columns, KL per dimension as ``kl/<site>/<d>``)
        after the epoch's callbacks, and, when ``tracker.log_steps`` is ``N >= 1``,
        ``log_scalars(step, ...)`` every ``N`` decoder steps with the step's
        per-data-point terms named ``step/<name>``. ``fit`` does not close it. After a
        resume only the epochs trained in this call are sent.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` (required) up to ``epochs``
        epochs in all; the run then yields the same per-epoch losses, bit for bit on the
        same machine, and the same final parameters as an uninterrupted run with the same
        seed. Pass a model and guide built as for the original run (their parameters are
        overwritten) and the same data. Without a checkpoint in the folder yet, training
        starts from scratch, so one command line serves the first start and every
        restart. The checkpoint's training state (aggressive mode, schedule position,
        History) takes precedence over ``aggressive``. A checkpoint of a different model
        (parameter count or shapes) or optimiser class is a ``ValueError``.

    Returns
    -------
    History
        One :class:`EpochRecord` per epoch (per-data-point ELBO, reconstruction, KL,
        variant extras, weights, time, KL per dimension, aggressive-mode columns, AU and
        MI when monitored); after a resume, including the checkpoint's epochs.

    Raises
    ------
    NonFiniteLossError
        (A ``FloatingPointError``.) When a step's loss or gradient is NaN or infinite:
        before the optimiser steps, so the parameters keep their last finite values and
        the last checkpoint is untouched. The message names the epoch, the step, the
        ELBO term (reconstruction, KL or extra) and the last checkpoint.

    Notes
    -----
    Encoder-only and decoder-only updates use the one optimiser: gradients are computed
    only for the parameter group being updated (``backward(inputs=...)``), and torch
    optimisers skip parameters without a gradient, so their moments stay untouched.
    Encoder steps do not advance the objective's schedule (as in the authors' code,
    the KL weight moves once per outer step).

    Every step checks the loss and the global gradient norm for NaN and infinity with
    a single device-to-host synchronisation. On a failure the minibatch is evaluated
    again with the torch RNG state from before the step, and the reconstruction, KL
    and remaining terms (and their gradients) are checked one by one to name the
    culprit; this costs nothing until something fails.

    A checkpoint holds: the parameters (in :func:`collect_params` order), the state
    dicts (parameters and buffers) of the modules behind ``model`` and ``guide``, the
    optimiser's state, the learning-rate scheduler's state, the objective's ``step_count`` (its schedule position; also its
    ``state_dict()`` where it has one), the :class:`TrainState` counters (``step``,
    ``aggressive``, ``inner_steps``, ``previous_mi``), the torch (CPU and CUDA), NumPy
    and ``random`` RNG states, the shuffling generator, the generators of a DataLoader
    (``loader.generator`` and its sampler's), the monitoring subset (row indices for data
    held in memory, or the arguments of a DataLoader's first rows) and the History.

    Per-data-point values divide the epoch's sums by the number of data points its
    batches stand for: the ``num_data`` a pyrocollapse objective reports (from the traced
    plates), or, for a stock Pyro ELBO, the size of the outermost plate around the
    model's first observed site times that site's scale (plate subsampling), read from
    each step's run of the model (1 when the site lies in no plate). Never the length of
    the first argument: a time-major ``(T, B, D)`` batch in a plate of size B counts B. It is read with
    ``torch.load(weights_only=True)``, which cannot execute code. Not saved: callbacks'
    own state (they start afresh with :meth:`Callback.on_train_begin`; a resumed run
    repeats an uninterrupted one exactly when callbacks keep no state that changes the
    training), buffers of modules reached only through ``pyro.module`` in hand-written
    programs, and the position inside an epoch (checkpoints are written between
    epochs).

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    s = _check_arguments(
        model,
        guide,
        loss=loss,
        scheduler=scheduler,
        scheduler_step=scheduler_step,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        callbacks=callbacks,
        monitor=monitor,
        monitor_size=monitor_size,
        clip_norm=clip_norm,
        clip_value=clip_value,
        aggressive=aggressive,
        aggressive_max_inner=aggressive_max_inner,
        aggressive_window=aggressive_window,
        validate=validate,
        checkpoint_every=checkpoint_every,
        resume=resume,
        tracker=tracker,
    )
    run = _Fit(s, model, guide, data, loss, optim, scheduler, device, checkpoint_dir)
    return run.train()


@dataclass
class _EpochTotals:
    """What one epoch's decoder (outer) steps add up: the summed terms (``sums``), the
    summed KL per dimension of each site (``per_dim``), the data points they stand for
    (``seen``), the outer steps and aggressive mode's encoder-only steps."""

    not_summed: set[str]
    sums: dict[str, float] = field(default_factory=dict)
    per_dim: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: float = 0.0
    outer: int = 0
    inner: int = 0

    def add(self, comps: dict[str, float], dims: dict[str, torch.Tensor]) -> None:
        """Add one outer step's terms (weights are recorded, not summed)."""
        self.seen += comps["num_data"]
        for k, v in comps.items():
            if k not in self.not_summed:
                self.sums[k] = self.sums.get(k, 0.0) + v
        for k, v in dims.items():
            self.per_dim[k] = self.per_dim[k] + v if k in self.per_dim else v.clone()


class _Fit:
    """One call of :func:`fit`.

    ``__init__`` sets up (checkpoint, device, data source, seeds, parameters, optimiser,
    :class:`TrainState`, monitoring subset, resume); :meth:`train` runs the epochs, each
    as :meth:`_steps` (the optimisation steps), :meth:`_record` (the epoch's values,
    monitor and aggressive-mode switch) and :meth:`_after_epoch` (History, callbacks,
    progress, tracker, checkpoint).
    """

    def __init__(
        self,
        s: _Settings,
        model: Callable,
        guide: Callable,
        data: Any,
        loss: Any,
        optim: Any,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None,
        device: str | torch.device | None,
        checkpoint_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.s = s
        self.model, self.guide, self.loss, self.data = model, guide, loss, data
        self.path, saved = _open_checkpoint(checkpoint_dir, s.resume)
        if saved is not None and saved["epoch"] > s.epochs:
            raise ValueError(
                f"epochs={s.epochs} is less than the {saved['epoch']} epochs already in the "
                f"checkpoint {str(self.path)!r}; epochs is the total wanted, counting those"
            )
        resolved = _resolve_device(device)
        self.source = _make_source(data, s.batch_size, resolved, program_dtype(model, guide))
        if s.seed is not None:
            pyro.set_rng_seed(s.seed)
        self.gen = torch.Generator().manual_seed(
            s.seed if s.seed is not None else int(torch.randint(2**31, ()).item())
        )
        self.modules = _modules_of(model, guide)
        if resolved is not None:
            for m in self.modules:
                m.to(resolved)
        self.monitor_size = s.monitor_size
        if self.monitor_size is None:
            n = getattr(self.source, "n", None)
            self.monitor_size = 512 if n is None else max(2, min(512, max(64, n // 16), n))
        self.state = self._make_state(model, guide, loss, optim, scheduler, resolved)
        self.history = self.state.history
        self._pick_monitor_subset()
        self.first_epoch, self.elapsed = 1, 0.0
        if saved is not None:
            if self.monitor_x is not None:
                self.monitor_x = self.source.restore_monitor(saved["monitor"])
            self.monitor_idx = saved["monitor"].get("indices")
            self.elapsed = _restore_checkpoint(
                saved, self.state, self.modules, self.gen, self.source, self.path
            )
            self.first_epoch = saved["epoch"] + 1
        self.start = 0.0
        self.log_steps = 0

    def _make_state(
        self,
        model: Callable,
        guide: Callable,
        loss: Any,
        optim: Any,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None,
        device: torch.device | None,
    ) -> TrainState:
        """The parameters (found by running the programs on the first batch), moved to
        ``device``, the optimiser and scheduler over them, and the :class:`TrainState`."""
        s = self.s
        first = self.source.first_batch(self.monitor_size)
        try:
            guide_named, model_named = _collect_named_params(
                model, guide, *first.args, **first.kwargs
            )
        except TypeError as e:
            hint = _signature_hint(e, first)
            if hint is None:
                raise
            raise hint from e
        guide_params = [p for _, p in guide_named]
        model_params = [p for _, p in model_named]
        if device is not None:
            _move_in_place(guide_params + model_params, device)
        optimizer, lr_scheduler, param_clip = make_optimization(
            optim,
            guide_params + model_params,
            [n for n, _ in guide_named + model_named],
            scheduler=scheduler,
        )
        state = TrainState(
            model,
            guide,
            loss,
            optimizer,
            History(),
            s.epochs,
            aggressive=s.aggressive,
            guide_params=guide_params,
            model_params=model_params,
            validate=s.validate,
            device=device,
            scheduler=lr_scheduler,
        )
        state._param_clip = param_clip
        state._scheduler_step = s.scheduler_step
        if not _reports_terms(loss):
            state._counter = _PlateCounter()
            state._counted_model = state._counter(model)
        state._rng_devices = sorted(
            {p.device.index or 0 for p in guide_params + model_params if p.device.type == "cuda"}
        )
        return state

    def _pick_monitor_subset(self) -> None:
        """The fixed monitoring subset (``monitor_x``, its row indices ``monitor_idx``), or
        ``None`` with the reason (``monitor_error``) when nothing needs it."""
        s = self.s
        self.monitor_error: ValueError | None = None
        try:
            self.monitor_x, self.monitor_idx = self.source.monitor(self.gen, self.monitor_size)
        except ValueError as e:  # batches the diagnostics cannot cut along dim 0
            if s.monitor is not None or s.aggressive:
                raise ValueError(
                    f"{e}. fit monitors active units and mutual information on the first "
                    "monitor_size rows of the data; pass monitor=None to turn monitoring off"
                ) from e
            self.monitor_x, self.monitor_idx, self.monitor_error = None, None, e

    def _log_hparams(self) -> None:
        """``tracker.log_hparams`` with fit's settings; ``log_steps`` from the tracker."""
        s, tracker = self.s, self.s.tracker
        if tracker is None:
            return
        self.log_steps = int(getattr(tracker, "log_steps", 0) or 0)
        log_hparams = getattr(tracker, "log_hparams", None)
        if callable(log_hparams):
            log_hparams(
                _fit_hparams(
                    self.state,
                    epochs=s.epochs,
                    batch_size=getattr(
                        self.source, "batch_size", getattr(self.data, "batch_size", None)
                    ),
                    seed=s.seed,
                    aggressive_max_inner=s.inner.max_inner,
                    aggressive_window=s.inner.window,
                    clip_norm=s.clip_norm,
                    clip_value=s.clip_value,
                    monitor_size=self.monitor_size,
                    resumed_after=self.first_epoch - 1,
                )
            )

    def train(self) -> History:
        """Run the epochs left, between the callbacks' begin and end hooks."""
        s, state = self.s, self.state
        self._log_hparams()
        shown = _Progress(s.progress, s.epochs, self.first_epoch, self.source.steps_per_epoch())
        self.start = time.perf_counter() - self.elapsed
        for cb in s.callbacks:
            cb.on_train_begin(state)
        try:
            for epoch in range(self.first_epoch, s.epochs + 1):
                state.epoch = epoch
                shown.begin_epoch(epoch)
                aggressive_epoch = state.aggressive
                if aggressive_epoch:
                    _check_aggressive(state)
                t0 = time.perf_counter()
                totals = self._steps(epoch, aggressive_epoch, shown)
                record = self._record(epoch, totals, aggressive_epoch, t0)
                if self._after_epoch(record, shown):
                    break
        finally:
            shown.close()
        for cb in s.callbacks:
            cb.on_train_end(state)
        return self.history

    def _steps(self, epoch: int, aggressive_epoch: bool, shown: _Progress) -> _EpochTotals:
        """One pass over the data: an outer step per batch, after aggressive mode's
        encoder-only steps when it is on (then the outer step updates only the decoder)."""
        s, state, source = self.s, self.state, self.source
        totals = _EpochTotals(not_summed={*_weights(self.loss), "num_data"})
        source.new_epoch()
        for i, xb in enumerate(source.epoch(self.gen), start=1):
            state.batch = i
            if aggressive_epoch:
                totals.inner += s.inner.run(
                    state, source, self.gen, s.clip_norm, s.clip_value, on_step=shown.inner_step
                )
                comps, dims = _train_step(
                    state, xb, s.clip_norm, state.model_params, clip_value=s.clip_value
                )
            else:
                comps, dims = _train_step(state, xb, s.clip_norm, clip_value=s.clip_value)
            totals.outer += 1
            shown.outer_step()
            if self.log_steps and state.step % self.log_steps == 0:
                scalars = _step_scalars(comps, totals.not_summed, state._lr)
                s.tracker.log_scalars(state.step, scalars)
            totals.add(comps, dims)
        if totals.outer == 0:
            raise ValueError(f"data (a DataLoader) yielded no batches in epoch {epoch}")
        return totals

    def _record(
        self, epoch: int, totals: _EpochTotals, aggressive_epoch: bool, t0: float
    ) -> EpochRecord:
        """The epoch's record: per-data-point terms, weights, times, the monitor's values;
        ends aggressive mode when I_q(x; z) fell and steps an epoch-wise scheduler."""
        state, seen = self.state, totals.seen
        values = {k: v / seen for k, v in totals.sums.items()}
        values.update(_weights(self.loss))
        values["aggressive"] = float(aggressive_epoch)
        values["inner_steps"] = totals.inner / totals.outer
        values["lr"] = state._lr
        values["epoch_time"] = time.perf_counter() - t0
        values["time"] = time.perf_counter() - self.start
        self._measure(values, epoch, aggressive_epoch, list(totals.per_dim))
        mi = [v for k, v in values.items() if k.startswith("mi/")]
        if mi:
            current = float(sum(mi))
            reference = 0.0 if state.previous_mi is None else state.previous_mi
            if aggressive_epoch and current < reference:
                state.aggressive = False  # I_q stopped rising: back to joint updates
            state.previous_mi = current
        kl_dims = {k: (v / seen).detach().cpu().numpy() for k, v in totals.per_dim.items()}
        if state.scheduler is not None and self.s.scheduler_step == "epoch":
            _step_scheduler(state.scheduler, values.get("loss", -values.get("elbo", 0.0)))
        return EpochRecord(epoch, values, kl_dims)

    def _measure(
        self, values: dict[str, float], epoch: int, aggressive_epoch: bool, kl_sites: list[str]
    ) -> None:
        """Add the monitor's active units and mutual information to ``values`` (and the
        mutual information aggressive mode needs even when monitoring is off)."""
        s, state = self.s, self.state
        if self.monitor_x is None and (s.monitor is not None or aggressive_epoch):
            raise ValueError(
                f"{self.monitor_error}. Aggressive mode measures the mutual information on "
                "the first monitor_size rows of the data, which must be cut along dim 0"
            )
        chunk = max(_MONITOR_CHUNK, getattr(self.source, "batch_size", 0))
        # Pyro's validation as on the training steps: on the first epoch's or always
        checks = is_validation_enabled() and (state.validate or epoch == self.first_epoch)
        model, guide, x = self.model, self.guide, self.monitor_x
        with pyro.validation_enabled(checks):
            if s.monitor is not None:
                values.update(_monitor(model, guide, x, s.monitor, kl_sites, batch_size=chunk))
            if aggressive_epoch and not any(k.startswith("mi/") for k in values):
                # aggressive mode needs I_q even when monitoring is off
                values.update(_monitor(model, guide, x, None, [], au=False, batch_size=chunk))
                if not any(k.startswith("mi/") for k in values):
                    raise ValueError(
                        "aggressive mode compares I_q(x; z) between epochs, but no latent "
                        "site of the guide is one whose mutual information can be "
                        "measured (a local site with one value per data point); train "
                        "with aggressive=False"
                    )

    def _after_epoch(self, record: EpochRecord, shown: _Progress) -> bool:
        """Append ``record`` to the History, run the callbacks (whether one stops the
        run is returned), show progress, send the tracker the epoch, write a checkpoint."""
        s, state, epoch = self.s, self.state, record.epoch
        self.history.append(record)
        stop = False
        for cb in s.callbacks:
            stop = bool(cb.on_epoch_end(state, record)) or stop
        shown.end_epoch(record, last=stop or epoch == s.epochs)
        if s.tracker is not None:
            s.tracker.log_scalars(epoch, epoch_scalars(record))
        if self.path is not None and (stop or epoch == s.epochs or epoch % s.checkpoint_every == 0):
            elapsed = time.perf_counter() - self.start
            _write_checkpoint(
                self.path,
                state,
                self.modules,
                self.gen,
                self.source,
                self.monitor_x,
                self.monitor_idx,
                elapsed,
            )
        return stop


def _fit_hparams(state: TrainState, **settings: Any) -> dict[str, Any]:
    """What ``fit`` gives ``tracker.log_hparams``: its settings, the optimiser, scheduler
    and objective (with ``loss.hyperparameters()`` where the objective has it)."""
    loss = state.loss
    out: dict[str, Any] = dict(settings)
    out["optimizer"] = type(state.optimizer).__name__
    out["lr"] = _current_lr(state.optimizer)
    out["scheduler"] = None if state.scheduler is None else type(state.scheduler).__name__
    out["aggressive"] = bool(state.aggressive)
    out["device"] = None if state.device is None else str(state.device)
    out["loss"] = type(loss).__name__
    hyper = getattr(loss, "hyperparameters", None)
    if callable(hyper):
        try:
            described = hyper()
        except Exception:  # a description must never stop training
            described = None
        if isinstance(described, dict):
            out["objective"] = described
    return out


def _step_scalars(comps: dict[str, float], not_summed: set[str], lr: float) -> dict[str, float]:
    """One decoder step's terms per data point (and its weights, learning rate) as
    ``step/<name>``, for ``tracker.log_steps``."""
    n = max(float(comps.get("num_data", 1.0)), 1e-12)
    out = {f"step/{k}": float(v) / n for k, v in comps.items() if k not in not_summed}
    out.update({f"step/{k}": float(v) for k, v in comps.items() if k in not_summed})
    out.pop("step/num_data", None)
    out["step/lr"] = float(lr)
    return out


def _reports_terms(loss: Any) -> bool:
    """Whether the objective reports its components (a pyrocollapse ELBO: ``last``)."""
    return hasattr(loss, "last") and hasattr(loss, "evaluate")


def _weights(loss: Any) -> dict[str, float]:
    """The objective's current weights (``{"kl_weight": 1.0}`` for a stock Pyro ELBO)."""
    weights = getattr(loss, "weights", None)
    return dict(weights) if isinstance(weights, dict) else {"kl_weight": 1.0}


def _check_aggressive(state: TrainState) -> None:
    if not state.guide_params or not state.model_params:
        raise ValueError(
            "aggressive training alternates encoder (guide) and decoder (model) updates, but "
            f"the guide has {len(state.guide_params)} and the model {len(state.model_params)} "
            "trainable parameters; both need some"
        )
