"""One training run, end to end: the engine behind ``pyrocollapse run`` and ``compare``.

A :class:`RunConfig` names everything by its registry name and plain options (so it
serialises to JSON and travels to worker processes); :func:`build` turns it into the
dataset, model and objective; :func:`run_experiment` trains, diagnoses and writes the
report folder.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrocollapse._io import json_default
from pyrocollapse._validation import check_choice, check_float, check_int

__all__ = ["Built", "RunConfig", "RunResult", "build", "run_experiment"]

_log = logging.getLogger("pyrocollapse.experiment")


@dataclass
class RunConfig:
    """Everything one run needs, by name and plain options.

    Attributes mirror ``pyrocollapse run``'s options (``--dataset``, ``--model``, ...);
    ``*_options`` are keyword arguments for the registered dataset, model, prior, objective
    and schedule.

    ``schedule`` is the KL-weight schedule: ``None`` means the objective's own default
    (a linear warm-up over a third of training for ``annealed``, a constant weight for the
    others); a name (``linear``, ``cyclical``, ``sigmoid``, ``constant``) anneals any
    objective. ``schedule_options`` missing ``warmup_steps``/``period``/``midpoint`` get
    defaults scaled to the total number of steps.

    ``aggressive`` turns on aggressive inference-network training (He et al. 2019);
    ``on_collapse`` (``"warn"``, ``"aggressive"``, ``"rollback"`` or ``None``) adds the
    matching :mod:`pyrocollapse.callbacks` callback with thresholds ``min_active_units``
    and ``min_mi``.

    ``estimators`` are the names of :data:`RUN_ESTIMATORS`: those of
    :func:`pyrocollapse.diagnose` and ``"disentanglement"``, which scores the posterior
    means of each continuous local site on the held-out points against the data set's
    known generative factors (MIG, SAP, DCI, FactorVAE; see
    :func:`pyrocollapse.diagnostics._disentanglement_report.disentanglement_by_site`),
    with ``disentanglement_options`` (``max_points``, ``regressor``, ``bins``,
    ``factorvae``, ``n_estimators``).
    """

    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    valid_fraction: float = 0.1
    model: str = "mlp"
    latent_dim: int = 16
    model_options: dict[str, Any] = field(default_factory=dict)
    prior: str = "standard"
    prior_options: dict[str, Any] = field(default_factory=dict)
    elbo: str = "annealed"
    elbo_options: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    schedule_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    num_samples: int = 8
    estimators: tuple[str, ...] = (
        "kl", "au", "mi", "rhat", "sensitivity", "iw", "psis", "causes", "disentanglement",
    )  # fmt: skip
    bootstrap: int = 200
    importance_samples: int = 100
    posterior_samples: int = 100
    posterior_points: int = 500
    aggressive: bool = False
    on_collapse: str | None = None
    min_active_units: int | None = 1
    min_mi: float | None = None
    disentanglement_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RunConfig:
        """Check every value and name before any work; returns ``self``.

        Raises ``ValueError``/``TypeError`` naming the option (as on the command line).
        """
        from pyrocollapse.data import DATASETS
        from pyrocollapse.models import MODELS
        from pyrocollapse.priors import PRIORS
        from pyrocollapse.schedules import SCHEDULES

        registry = objectives()
        check_int("--epochs", self.epochs, minimum=1)
        check_int("--batch-size", self.batch_size, minimum=1)
        check_int("--latent-dim", self.latent_dim, minimum=1)
        check_int("--seed", self.seed, minimum=0)
        check_int("--num-samples", self.num_samples, minimum=1)
        check_int("--bootstrap", self.bootstrap, minimum=0)
        if self.bootstrap == 1:
            raise ValueError("--bootstrap must be 0 or >= 2, got 1")
        check_int("--importance-samples", self.importance_samples, minimum=1)
        check_int("--posterior-samples", self.posterior_samples, minimum=0)
        check_int("--posterior-points", self.posterior_points, minimum=1)
        valid_estimators = _run_estimators()
        if isinstance(self.estimators, str) or not isinstance(self.estimators, (tuple, list)):
            raise TypeError(
                "--estimators must be a sequence of names such as ('kl', 'au'), got "
                f"{type(self.estimators).__name__} {self.estimators!r}"
            )
        self.estimators = tuple(self.estimators)
        unknown = [e for e in self.estimators if e not in valid_estimators]
        if unknown or not self.estimators:
            raise ValueError(
                f"--estimators names unknown estimators {unknown}; valid names: "
                f"{', '.join(valid_estimators)}"
            )
        from pyrocollapse.diagnostics._disentanglement_report import (
            check_disentanglement_options,
        )

        self.disentanglement_options = check_disentanglement_options(self.disentanglement_options)
        if "psis" in self.estimators and self.importance_samples < 50:
            raise ValueError(
                f"--importance-samples must be >= 50 with the 'psis' estimator, got {self.importance_samples}"
            )
        check_float("--lr", self.lr, minimum=0.0, strict_minimum=True)
        check_float(
            "--valid-fraction", self.valid_fraction, minimum=0.0, maximum=0.9, strict_minimum=True
        )
        _check_options("dataset", DATASETS.get(self.dataset), self.dataset_options)
        _check_options(
            "model",
            MODELS.get(self.model).__init__,
            self.model_options,
            skip=("latent_dim", "prior"),
        )
        _check_options(
            "prior", PRIORS.get(self.prior).__init__, self.prior_options, skip=("latent_dim",)
        )
        elbo_cls = registry.get(self.elbo)
        _check_options("elbo", elbo_cls.__init__, self.elbo_options)
        schedule = self.schedule_name
        if schedule is not None:
            _check_options("schedule", SCHEDULES.get(schedule).__init__, self.schedule_options)
            if _schedule_argument(elbo_cls) is None:
                raise ValueError(f"objective {self.elbo!r} takes no KL schedule; drop --schedule")
        elif self.schedule_options:
            raise ValueError("schedule options need --schedule NAME for this objective")
        if not isinstance(self.aggressive, bool):
            raise TypeError(f"aggressive must be a bool, got {self.aggressive!r}")
        if self.on_collapse is not None:
            check_choice("--on-collapse", self.on_collapse, ON_COLLAPSE)
        if self.min_active_units is not None:
            check_int("--min-active-units", self.min_active_units, minimum=1)
        if self.min_mi is not None:
            check_float("--min-mi", self.min_mi, minimum=0.0)
        if self.on_collapse is not None and self.min_active_units is None and self.min_mi is None:
            raise ValueError("--on-collapse needs --min-active-units or --min-mi")
        return self

    def notes(self) -> list[str]:
        """What this configuration does that a reader might not expect (printed at the
        start of a run): free bits per dimension with a prior that does not factorise
        over dimensions are applied per site instead."""
        from pyrocollapse.priors import PRIORS

        registry = objectives()
        out = []
        elbo_cls, prior_cls = registry.get(self.elbo), PRIORS.get(self.prior)
        per = self.elbo_options.get("per", _default(elbo_cls, "per"))
        if per == "dimension" and not getattr(prior_cls, "factorized", True):
            out.append(
                f"--prior {self.prior} does not factorise over dimensions (no per-dimension "
                f"KL), so --elbo {self.elbo} floors the KL of site 'z' as one group (free bits "
                "per site); --elbo-option per=site says so explicitly, and a factorised prior "
                f"({', '.join(_factorized_priors())}) gives free bits per dimension"
            )
        return out

    @property
    def schedule_name(self) -> str | None:
        """The schedule to build: ``schedule``, or ``"linear"`` for ``annealed`` by default."""
        if (
            self.schedule is None
            and self.elbo == "annealed"
            and "schedule" not in self.elbo_options
        ):
            return "linear"
        return self.schedule

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        if not isinstance(d, dict):
            raise TypeError(f"a run configuration must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown run option(s) {sorted(unknown)}; accepted: {sorted(names)}")
        return cls(**d)


#: Estimators of ``pyrocollapse run`` that :func:`pyrocollapse.diagnose` does not run
#: itself: computed by :func:`run_experiment` after the diagnosis.
RUN_ONLY_ESTIMATORS = ("disentanglement",)


def _run_estimators() -> tuple[str, ...]:
    """Every estimator name ``RunConfig.estimators`` accepts: :data:`pyrocollapse.diagnostics.ESTIMATORS`
    and :data:`RUN_ONLY_ESTIMATORS`."""
    from pyrocollapse.diagnostics import ESTIMATORS

    return (*ESTIMATORS, *(e for e in RUN_ONLY_ESTIMATORS if e not in ESTIMATORS))


def objectives() -> Any:
    """The objective registry :data:`pyrocollapse.elbo.ELBOS` (importing
    :mod:`pyrocollapse.elbo` registers every objective the command line offers,
    ``"factorvae"`` included); imported on first use, not at module import."""
    from pyrocollapse.elbo import ELBOS

    return ELBOS


def _check_options(
    what: str, target: Any, options: dict[str, Any], skip: tuple[str, ...] = ()
) -> None:
    if not isinstance(options, dict):
        raise TypeError(f"{what} options must be a dict, got {type(options).__name__}")
    params = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", *skip)
    ]
    for key in options:
        if key not in params:
            raise ValueError(
                f"unknown {what} option {key!r}; accepted: {', '.join(params) or 'none'}"
            )


def _default(target: Any, name: str) -> Any:
    """The default of ``target.__init__``'s parameter ``name`` (None if it has none)."""
    param = inspect.signature(target.__init__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def check_output_folder(name: str, out: str | Path) -> Path:
    """``out`` as a Path, checked (before any work) to be a folder that can be written.

    A run replaces ``out`` as a whole (see :func:`pyrocollapse._io.atomic_directory`), so
    what must be writable is the folder that holds it: the nearest existing folder above
    ``out``. ``out`` may not be the current folder, a folder above it, or a folder that
    holds the ``pyrocollapse`` package.

    Raises ``ValueError`` if ``out`` or the nearest existing folder above it is a file,
    or ``out`` is one of the folders above, and ``PermissionError`` if that folder
    cannot be written to.
    """
    import os

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {str(out)!r} is a file, not a folder; choose a folder")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    package = Path(__file__).resolve().parent
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(
            f"{name} {str(out)!r} is the current folder or a folder above it, which a run "
            "would replace as a whole; choose a new folder, e.g. runs/latest"
        )
    if resolved == package or resolved in package.parents:
        raise ValueError(
            f"{name} {str(out)!r} holds the pyrocollapse package ({str(package)!r}), which a "
            "run would replace as a whole; choose a new folder, e.g. runs/latest"
        )
    if resolved.parent == resolved:
        raise ValueError(f"{name} {str(out)!r} is the root folder; choose a new folder")
    ancestor = resolved.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"{name} {str(out)!r} cannot be created: {str(ancestor)!r} is a file, not a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{name} {str(out)!r} cannot be written: no write permission in {str(ancestor)!r}"
        )
    return out


def work_folder(out: str | Path) -> Path:
    """The work folder of an unfinished run into ``out``: ``<out>.partial`` beside it.

    It holds the run's checkpoint (``.checkpoint/checkpoint.pt``) and its configuration
    (``config.json``) while ``pyrocollapse run --checkpoint-every N`` trains, so that
    ``--resume`` continues an interrupted run; it is removed when the run finishes.
    """
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``None`` if unknown)."""
    import os

    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        return int(vm.available + swap.free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {k: v for k, _, v in (line.partition(":") for line in f)}
        kib = int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])
        return kib * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def memory_estimates(config: RunConfig, n_train: int, n_valid: int) -> list[tuple[str, int, str]]:
    """Lower bounds on the largest tensors a run of ``config`` holds at once.

    Each entry is ``(what, bytes, options)``: rows x sizes x 4 bytes (float32; 8 for the
    float64 importance weights), for ``n_train`` training and ``n_valid`` held-out rows.
    """
    d = config.latent_dim
    batch = max(1, min(config.batch_size, n_train))
    valid = max(1, n_valid)
    rows = max(1, min(256, valid))  # diagnose's chunks
    out = [
        (
            f"one training batch of z, its mean and scale ({batch} rows x {d} dims x 3 x 4 bytes)",
            batch * d * 3 * 4,
            "--latent-dim or --batch-size",
        ),
        (
            f"the draws of one diagnostic chunk ({config.num_samples} samples x {rows} held-out "
            f"rows x {d} dims x 4 bytes)",
            config.num_samples * rows * d * 4,
            "--latent-dim or --num-samples",
        ),
    ]
    if {"iw", "psis"} & set(config.estimators):
        out.append(
            (
                f"the importance weights of one chunk ({config.importance_samples} samples x "
                f"{rows} rows x 8 bytes)",
                config.importance_samples * rows * 8,
                "--importance-samples",
            )
        )
    if config.posterior_samples:
        points = min(config.posterior_points, valid)
        out.append(
            (
                f"posterior.nc's draws ({config.posterior_samples} samples x {points} points x "
                f"{d} dims x 4 bytes)",
                config.posterior_samples * points * d * 4,
                "--latent-dim, --posterior-samples or --posterior-points",
            )
        )
    return out


def check_memory(config: RunConfig, n_train: int, n_valid: int) -> None:
    """Refuse, before any model is built, a run whose sizes cannot fit in memory.

    Raises ``ValueError`` naming the sizes, the memory they need at least (see
    :func:`memory_estimates`) and the memory available; does nothing when the available
    memory is unknown.
    """
    available = _available_memory()
    if available is None:
        return
    for what, need, options in memory_estimates(config, n_train, n_valid):
        if need > available:
            raise ValueError(
                f"the run cannot fit in memory: it needs at least {_gib(need)} for {what}, "
                f"but {_gib(available)} is available; lower {options}"
            )


def _factorized_priors() -> list[str]:
    from pyrocollapse.priors import PRIORS

    return [n for n in PRIORS.names() if getattr(PRIORS.get(n), "factorized", True)]


def _check_config(config: Any) -> RunConfig:
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"config must be a RunConfig, got {type(config).__name__} (use RunConfig(**options) "
            "or RunConfig.from_dict)"
        )
    return config.validate()


def _schedule_argument(elbo_cls: type) -> str | None:
    """The constructor argument that takes a KL schedule (``schedule`` or ``kl_weight``)."""
    params = inspect.signature(elbo_cls.__init__).parameters
    for name in ("schedule", "kl_weight"):
        if name in params:
            return name
    return None


#: ``on_collapse`` choices -> callback class names in :mod:`pyrocollapse.callbacks`.
ON_COLLAPSE = {
    "warn": "CollapseWarning",
    "aggressive": "AggressiveOnCollapse",
    "rollback": "RollbackOnCollapse",
}


@dataclass
class Built:
    """The objects a :class:`RunConfig` describes."""

    config: RunConfig
    dataset: Any
    train: Any
    valid: Any
    vae: Any
    elbo: Any


def build(config: RunConfig) -> Built:
    """Seed, load and split the data, and build the prior, model and objective."""
    import pyro

    from pyrocollapse.data import load_dataset
    from pyrocollapse.models import MODELS
    from pyrocollapse.priors import PRIORS
    from pyrocollapse.schedules import SCHEDULES

    _check_config(config)
    registry = objectives()
    pyro.set_rng_seed(config.seed)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    train, valid = dataset.split(config.valid_fraction, seed=config.seed)
    check_memory(config, len(train), len(valid))
    prior = PRIORS.get(config.prior).from_options(
        config.latent_dim, input_shape=dataset.event_shape, **config.prior_options
    )
    vae = MODELS.get(config.model).from_dataset(
        dataset, latent_dim=config.latent_dim, prior=prior, **config.model_options
    )
    elbo_cls = registry.get(config.elbo)
    options = dict(config.elbo_options)
    schedule = config.schedule_name
    if schedule is not None:
        total = config.epochs * -(-len(train) // config.batch_size)
        sched = dict(config.schedule_options)
        defaults = {
            "linear": {"warmup_steps": max(1, total // 3)},
            "cyclical": {"period": max(1, total // 4)},
            "sigmoid": {"midpoint": max(1, total // 4), "steepness": 10.0 / max(1, total)},
        }
        for k, v in defaults.get(schedule, {}).items():
            sched.setdefault(k, v)
        options[_schedule_argument(elbo_cls)] = SCHEDULES.get(schedule)(**sched)
    return Built(config, dataset, train, valid, vae, elbo_cls(**options))


def collapse_callbacks(config: RunConfig) -> list[Any]:
    """The :mod:`pyrocollapse.callbacks` callback that ``config.on_collapse`` asks for."""
    if config.on_collapse is None:
        return []
    from pyrocollapse import callbacks

    cls = getattr(callbacks, ON_COLLAPSE[config.on_collapse])
    return [cls(min_active_units=config.min_active_units, min_mi=config.min_mi)]


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


def _check_empty(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {str(out)!r} exists and is not empty; choose another folder or pass --overwrite"
        )


def _checkpoint_name() -> str:
    from pyrocollapse.train import CHECKPOINT_NAME

    return CHECKPOINT_NAME


def _config_record(config: RunConfig) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(config.to_dict(), default=json_default))


def _prepare_work_folder(config: RunConfig, out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Set up ``<out>.partial/`` for a checkpointed run; returns the checkpoint folder.

    Called under the lock of ``out``. Refuses to start afresh over an interrupted run's
    checkpoint unless ``overwrite``, and to resume one started with other options.
    """
    import json
    import os
    import shutil

    from pyrocollapse._io import atomic_write_text, remove_stale_temporaries

    work = work_folder(out)
    if os.path.lexists(work) and not work.is_dir():
        raise ValueError(
            f"{str(work)!r} (the work folder of --out {str(out)!r}) is a file; remove it"
        )
    checkpoint_dir = work / ".checkpoint"
    record = work / "config.json"
    if (checkpoint_dir / _checkpoint_name()).exists():
        if not resume:
            if not overwrite:
                raise FileExistsError(
                    f"{str(work)!r} holds the checkpoint of an interrupted run into --out "
                    f"{str(out)!r}; pass --resume to continue it, or --overwrite to start afresh"
                )
            shutil.rmtree(work)
        elif record.exists():
            try:
                saved = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read {str(record)!r}: {e}") from None
            now = _config_record(config)
            changed = [
                f"{k}: {saved.get(k)!r} then, {now[k]!r} now"
                for k in now
                if not isinstance(saved, dict) or saved.get(k) != now[k]
            ]
            if changed:
                raise ValueError(
                    f"--resume: the interrupted run in {str(work)!r} was started with other "
                    f"options ({'; '.join(changed)}); rerun it with the same options, or drop "
                    "--resume and pass --overwrite to start afresh"
                )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for folder in (work, checkpoint_dir):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"the checkpoint folder {str(folder)!r} cannot be written")
        remove_stale_temporaries(folder)
    atomic_write_text(record, json.dumps(_config_record(config), indent=2) + "\n")
    return checkpoint_dir


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


def write_run_folder(result: RunResult, out: str | Path, *, overwrite: bool = False) -> list[str]:
    """Write the report folder of a run atomically; returns the names written.

    ``metrics.json``, ``history.csv``, ``posterior.nc``, ``figures/*.png``, ``report.html``
    and ``model.pt`` (see :func:`pyrocollapse.report_folder.write_report_folder`).
    """
    import json

    from pyrocollapse.report_folder import write_report_folder

    config = result.built.config
    metrics = json.loads(json.dumps(result.metrics, default=json_default))
    return write_report_folder(
        out,
        metrics=metrics,
        report=result.report,
        history=result.history,
        vae=result.built.vae,
        held_out=result.built.valid,
        posterior_samples=config.posterior_samples,
        posterior_points=config.posterior_points,
        seed=config.seed,
        overwrite=overwrite,
    )
