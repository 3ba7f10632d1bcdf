"""One training run, end to end: :func:`run_experiment`, the engine of ``pyrocollapse run``.

It checks every option and the report folder, builds the run (:func:`build`), trains,
diagnoses on the held-out split (with the disentanglement scores when asked), and writes
the report folder (:func:`write_run_folder`), checkpointing for ``--resume`` on request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyrocollapse._validation import check_int
from pyrocollapse.experiment.building import Built, build, collapse_callbacks
from pyrocollapse.experiment.config import RUN_ONLY_ESTIMATORS, RunConfig, _check_config
from pyrocollapse.experiment.folders import (
    _check_empty,
    _checkpoint_name,
    _config_record,
    _prepare_work_folder,
    check_output_folder,
    work_folder,
    write_run_folder,
)

#: The logger of the configuration notes a run without ``echo`` reports (the name the
#: module had before it became a package).
_log = logging.getLogger("pyrocollapse.experiment")


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the built objects, history, report and metrics."""

    built: Built
    history: Any
    report: Any
    metrics: dict[str, Any]


def run_experiment(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: tuple[Any, ...] = (),
    echo: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tracker: Any = None,
    device: Any = None,
) -> RunResult:
    """Train, diagnose on the held-out split, and (if ``out``) write the report folder.

    The model is fitted in training mode and diagnosed (and drawn, and sampled for
    ``posterior.nc``) in evaluation mode, so that dropout such as ``decoder_dropout`` is
    off in the diagnosis; it is returned in evaluation mode. Every option is checked
    before any data is loaded or anything is written.

    Parameters
    ----------
    config : RunConfig
    out : path or None
        Report folder, written atomically (see :func:`write_run_folder`). The run holds
        :func:`~pyrocollapse._io.lock_directory` on it from start to end, so a second run
        into the same folder is refused (``TargetBusyError``) instead of racing this one.
    overwrite : bool
        Replace a non-empty ``out`` (and, without ``resume``, discard the checkpoint of
        an interrupted run into it).
    progress : bool
        Progress as :func:`~pyrocollapse.train.fit` shows it: bars on a terminal,
        periodic INFO records of the ``"pyrocollapse.train"`` logger elsewhere.
    callbacks : tuple of Callback
        Extra :func:`~pyrocollapse.train.fit` callbacks.
    echo : bool
        Print a header (with the configuration's :meth:`RunConfig.notes`), the collapse
        report and the folder written, on standard output. Without it the notes are
        WARNING records of the ``"pyrocollapse.experiment"`` logger and nothing is
        printed.
    checkpoint_every : int or None
        Write a training checkpoint every this many epochs into
        ``<out>.partial/.checkpoint/`` (see :func:`work_folder`), removed when the run
        finishes. Needs ``out``.
    resume : bool
        Continue the interrupted run into ``out`` from its checkpoint (and keep
        checkpointing, every ``checkpoint_every`` epochs, 1 by default); the
        configuration must be the one the run started with. Without a checkpoint the run
        starts afresh. A resumed run ends as the uninterrupted one would have.
    device : str, torch.device or None
        Where to train and diagnose (``"cuda"``, ``"cuda:1"``, ...; ``None``: the CPU);
        the model comes back to the CPU before the report folder is written. Checked
        before any work (an unavailable device is a ``ValueError``).
    tracker : pyrocollapse.tracking.Tracker or None
        Passed to :func:`~pyrocollapse.train.fit` (per-epoch scalars, fit's settings),
        after ``tracker.log_hparams({"config": ...})`` with the configuration. Not closed.

    Notes
    -----
    ``metrics.json`` holds, under ``"provenance"``, what produced the run (see
    :func:`pyrocollapse.provenance.provenance`): package versions, the git commit of the
    working directory's repository and whether its tracked files were modified, the
    device, ``sys.argv``, the UTC time training started, the seed, the host name and
    the platform.
    """
    import shutil

    from pyrocollapse._io import lock_directory, remove_stale_temporaries
    from pyrocollapse.tracking import check_tracker

    _check_config(config)
    check_tracker(tracker)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__} {overwrite!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__} {resume!r}")
    if checkpoint_every is not None:
        check_int("--checkpoint-every", checkpoint_every, minimum=1)
    from pyrocollapse._validation import check_device

    device = check_device("--device", device)
    if out is None:
        if checkpoint_every is not None or resume:
            raise ValueError(
                "checkpoint_every and resume need out: the checkpoint is kept in "
                "<out>.partial/.checkpoint/"
            )
        return _train_and_diagnose(
            config, progress=progress, callbacks=callbacks, echo=echo, tracker=tracker,
            device=device,
        )  # fmt: skip
    if not isinstance(out, (str, Path)):
        raise TypeError(f"out must be a str, a Path or None, got {type(out).__name__}")
    out = check_output_folder("--out", out)
    _check_empty(out, overwrite)
    with lock_directory(out):
        _check_empty(out, overwrite)  # again: another run may have finished meanwhile
        remove_stale_temporaries(out.parent, out.name)
        checkpoint_dir = None
        if checkpoint_every is not None or resume:
            checkpoint_dir = _prepare_work_folder(config, out, resume=resume, overwrite=overwrite)
            if echo and (checkpoint_dir / _checkpoint_name()).exists():
                print(f"resuming the interrupted run from {checkpoint_dir}/", flush=True)
        try:
            result = _train_and_diagnose(
                config,
                progress=progress,
                callbacks=callbacks,
                echo=echo,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every or 1,
                resume=resume,
                tracker=tracker,
                device=device,
            )
            written = write_run_folder(result, out, overwrite=overwrite)
        except BaseException:
            if checkpoint_dir is not None and not (checkpoint_dir / _checkpoint_name()).exists():
                shutil.rmtree(work_folder(out), ignore_errors=True)  # nothing to resume from
            raise
        if checkpoint_dir is not None:
            shutil.rmtree(work_folder(out), ignore_errors=True)
    if echo:
        print(f"\nwrote {out}/: {', '.join(written)}")
    return result


def _free_bits_floor(objective: Any) -> float | None:
    """The per-dimension free-bits floor of ``objective`` (``None`` when it has none or
    floors some site as a whole, where a per-dimension label would be wrong)."""
    from pyrocollapse.elbo import FreeBitsELBO

    if not isinstance(objective, FreeBitsELBO) or objective.per != "dimension":
        return None
    if objective.per_site_fallback:
        return None
    return objective.free_bits


def _train_and_diagnose(
    config: RunConfig,
    *,
    progress: bool,
    callbacks: tuple[Any, ...],
    echo: bool,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    tracker: Any = None,
    device: Any = None,
) -> RunResult:
    """Build, fit and diagnose ``config`` (no files but the checkpoint) on ``device``."""
    import torch

    from pyrocollapse.diagnostics import diagnose
    from pyrocollapse.provenance import provenance
    from pyrocollapse.train import fit

    built = build(config)
    for note in config.notes():
        if echo:  # part of the header the caller asked for
            print(f"note: {note}", flush=True)
        else:
            _log.warning("note: %s", note)
    if echo:
        print(
            f"pyrocollapse run: {config.model} VAE (latent_dim={config.latent_dim}, prior={config.prior}) "
            f"on {built.dataset.name} ({len(built.train)} train / {len(built.valid)} held out), "
            f"objective {config.elbo}, {config.epochs} epochs",
            flush=True,
        )
    vae = built.vae
    if device is not None:
        vae.to(device)
    origin = provenance(seed=config.seed, device=_model_device(vae))
    if tracker is not None and callable(getattr(tracker, "log_hparams", None)):
        tracker.log_hparams({"config": _config_record(config)})
    start = time.perf_counter()
    vae.train()  # dropout (e.g. decoder_dropout) is on while fitting ...
    history = fit(
        vae.model,
        vae.guide,
        built.train.data,
        loss=built.elbo,
        optim=lambda params: torch.optim.Adam(params, lr=config.lr),
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
        callbacks=[*collapse_callbacks(config), *callbacks],
        aggressive=config.aggressive,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume and checkpoint_dir is not None,
        tracker=tracker,
        device=device,
    )
    train_time = time.perf_counter() - start
    vae.eval()  # ... and off for the diagnosis, posterior.nc and figures: a deterministic decoder
    report = diagnose(
        vae.model,
        vae.guide,
        built.valid.data,
        vae.latent_sites,
        estimators=tuple(e for e in config.estimators if e not in RUN_ONLY_ESTIMATORS),
        num_samples=config.num_samples,
        bootstrap=config.bootstrap,
        importance_samples=config.importance_samples,
        seed=config.seed,
        device=device,
        free_bits=_free_bits_floor(built.elbo),
        history=history,
        setting={
            "model": config.model,
            "prior": config.prior,
            "elbo": config.elbo,
            "aggressive": config.aggressive,
        },
    )
    if "disentanglement" in config.estimators:
        _add_disentanglement(report, vae, built.valid, config, device)
    if device is not None:
        vae.cpu()  # the report folder (posterior.nc, figures, model.pt) is made on the host
    if echo:
        print()
        print(report)
    metrics = {
        "report": report.to_dict(),
        "final_epoch": history[-1].values,
        "train_seconds": train_time,
        "config": config.to_dict(),
        "objective": built.elbo.hyperparameters()
        if hasattr(built.elbo, "hyperparameters")
        else type(built.elbo).__name__,
        "dataset": built.dataset.describe(),
        "provenance": origin,
    }
    return RunResult(built, history, report, metrics)


def _add_disentanglement(
    report: Any, vae: Any, held_out: Any, config: RunConfig, device: Any
) -> None:
    """Score each continuous local site of ``report`` on ``held_out`` (a Dataset) against
    its known factors, into ``report.disentanglement``; the reason why not into
    ``report.unavailable["disentanglement"]``."""
    from pyrocollapse.diagnostics._disentanglement_report import (
        NO_FACTORS,
        disentanglement_by_site,
    )
    from pyrocollapse.report import DISENTANGLEMENT

    if held_out.factors is None:
        report.unavailable[DISENTANGLEMENT] = NO_FACTORS
        return
    sites = [name for name, s in report.sites.items() if s.kind != "discrete"]
    if not sites:
        report.unavailable[DISENTANGLEMENT] = "the model has no continuous local latent site"
        return
    results, failed = disentanglement_by_site(
        vae.model,
        vae.guide,
        held_out.data,
        held_out.factors,
        sites,
        factor_names=held_out.factor_names,
        seed=config.seed,
        num_samples=config.num_samples,
        device=device,
        **config.disentanglement_options,
    )
    report.disentanglement.update(results)
    for site, reason in failed.items():
        report.unavailable[f"disentanglement of {site!r}"] = reason
    if not results:
        report.unavailable[DISENTANGLEMENT] = "no site could be scored"


def _model_device(model: Any) -> str | None:
    """The device of the model's first parameter (``None`` when it has none)."""
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    for p in parameters():
        return str(p.device)
    return None
