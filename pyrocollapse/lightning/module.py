"""The ``LightningModule`` of a Pyro model/guide pair and a pyrocollapse objective."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.elbo import ELBOModule
from torch import nn

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.elbo import BaseELBO, PlainELBO, make_elbo
from pyrocollapse.lightning._backend import pl
from pyrocollapse.lightning.checkpoints import (
    _CHECKPOINT_KEY,
    _RECORDED,
    _check_spec,
    _data_facts,
    _describe,
    _missing_model_message,
    _plain_option,
    _rebuild,
    _saved_objective,
)
from pyrocollapse.program_data import ProgramArgs, as_program_args

__all__ = ["VAELightningModule", "per_data_point_terms"]


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

    See :mod:`pyrocollapse.lightning` for what DDP requires of Pyro parameters. Every parameter
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


def _batch_data(batch: Any, name: str = "batch") -> ProgramArgs:
    """A batch as the arguments of one call: a tensor ``x`` (``model(x)``), a tuple/list
    (``model(*batch)``) or a dict (``model(**batch)``), as ``fit`` takes them."""
    return as_program_args(batch, name, check_values=False)


def _rows(call: ProgramArgs) -> int:
    """Rows of a batch, the per-data-point divisor for objectives without a breakdown
    (pyrocollapse objectives use the traced data plate)."""
    return call.leading_size() or 1
