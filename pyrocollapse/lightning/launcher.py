"""The launcher ``python -m pyrocollapse.lightning``: one run on many devices and nodes.

:func:`main` parses the command line, claims the output folder (locked; every process
writes into a staging folder beside it that the launch process renames at the end),
builds the data, model and objective, trains with Lightning's ``Trainer`` (checkpoints,
logs, ``--resume``) and writes ``model.pt`` and ``config.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from pyrocollapse._validation import check_int
from pyrocollapse.lightning._backend import (
    CSVLogger,
    MisconfigurationException,
    ModelCheckpoint,
    TensorBoardLogger,
    pl,
)
from pyrocollapse.lightning.checkpoints import _RECORDED, _describe
from pyrocollapse.lightning.dataloader import make_dataloader
from pyrocollapse.lightning.module import VAELightningModule
from pyrocollapse.lightning.rank_states import RankStateDump

__all__ = ["CHECKPOINT_FOLDER", "LAST_CHECKPOINT", "OUTPUT_FILES", "main"]

#: What the launcher writes into ``--out``.
OUTPUT_FILES = ("model.pt", "config.json", "checkpoints", "logs", "ranks")
#: The launcher's checkpoint folder in ``--out``, and its last checkpoint there.
CHECKPOINT_FOLDER, LAST_CHECKPOINT = "checkpoints", "last.ckpt"
#: Where a resumed run keeps the metrics rows of its earlier part until it finishes.
_EARLIER_METRICS = ".metrics.earlier.csv"


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
        from pyrocollapse.cli.config import _merge_config, _read_config

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
