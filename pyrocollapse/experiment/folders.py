"""The folders of a run: the report folder, its checks, and the work folder of a resumable run.

:func:`check_output_folder` checks ``--out`` before any work; :func:`work_folder` and
:func:`_prepare_work_folder` hold the checkpoint and configuration of a run that
``--resume`` can continue; :func:`write_run_folder` writes the report folder atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyrocollapse._io import json_default

if TYPE_CHECKING:
    from pyrocollapse.experiment.config import RunConfig
    from pyrocollapse.experiment.running import RunResult


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
    package = Path(__file__).resolve().parent.parent  # pyrocollapse/, not experiment/
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
