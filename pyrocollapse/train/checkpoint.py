"""Checkpoints of :func:`~pyrocollapse.train.fit`: atomic writes, checked reads, and bit-
for-bit resume."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyrocollapse.program_data import (
    ProgramData,
)
from pyrocollapse.train.history import EpochRecord, History
from pyrocollapse.train.sources import _LoaderSource, _MemorySource
from pyrocollapse.train.state import TrainState

_log = logging.getLogger("pyrocollapse")

#: File name of the checkpoint ``fit`` writes into ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
#: Format tag stored in every checkpoint's payload (checked on resume).
_CHECKPOINT_FORMAT = "pyrocollapse.fit/2"
#: The payload format of pyrocollapse up to 0.1, written without a checksum (still read).
_LEGACY_FORMAT = "pyrocollapse.fit/1"
#: First line of a checkpoint file; the second is ``sha256 <hex digest>`` of the rest.
_CHECKPOINT_MAGIC = b"PYROCOLLAPSE-FIT-CHECKPOINT 2\n"


def _open_checkpoint(
    checkpoint_dir: str | os.PathLike[str] | None, resume: bool
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint path, and the checkpoint to resume from (``None``: start afresh)."""
    if checkpoint_dir is None:
        if resume:
            raise ValueError(
                "resume=True needs checkpoint_dir, the folder holding the checkpoint to continue from"
            )
        return None, None
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint_dir must be a path (str or os.PathLike) or None, got "
            f"{type(checkpoint_dir).__name__}"
        )
    folder = Path(checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir {str(folder)!r} exists and is not a folder")
    path = folder / CHECKPOINT_NAME
    if not path.exists():
        return path, None
    if not resume:
        raise ValueError(
            f"checkpoint_dir {str(folder)!r} already holds a checkpoint ({CHECKPOINT_NAME}); pass "
            "resume=True to continue from it, or choose another folder"
        )
    return path, _read_checkpoint(path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint: every failure is a ``ValueError`` naming the file.

    The file is :data:`_CHECKPOINT_MAGIC`, a line ``sha256 <hex digest>`` and the bytes
    of the ``torch.save``-d payload; the digest is checked before the payload is loaded
    with ``weights_only=True`` (tensors and plain values only, never code), then every
    field is checked (:func:`_check_payload`). A file of pyrocollapse up to 0.1 (a bare
    ``torch.save`` archive, format ``pyrocollapse.fit/1``) has no checksum: it is
    read, its fields checked, and the ``"pyrocollapse"`` logger says so.
    """
    where = f"the checkpoint {str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {where}: {e}") from e
    if raw.startswith(_CHECKPOINT_MAGIC):
        header, sep, body = raw[len(_CHECKPOINT_MAGIC) :].partition(b"\n")
        if not sep or not header.startswith(b"sha256 "):
            raise ValueError(
                f"{where} is corrupt or truncated: its second line is not 'sha256 <digest>'"
            )
        stored = header[len(b"sha256 ") :].decode("ascii", errors="replace")
        if hashlib.sha256(body).hexdigest() != stored:
            raise ValueError(
                f"{where}: checksum mismatch: the file is corrupt (truncated or altered; "
                f"{len(body)} payload bytes). Resume from another copy, or start afresh in "
                "another checkpoint_dir"
            )
        payload = _load_payload(io.BytesIO(body), where)
    elif raw.startswith(b"PK"):  # a bare torch.save archive: pyrocollapse up to 0.1
        payload = _load_payload(io.BytesIO(raw), where)
        if isinstance(payload, dict) and payload.get("format") == _LEGACY_FORMAT:
            _log.info("%s was written without a checksum (format %s)", where, _LEGACY_FORMAT)
    elif raw and _CHECKPOINT_MAGIC.startswith(raw):
        raise ValueError(f"{where} is corrupt: truncated to {len(raw)} bytes, within its header")
    else:
        what = "an empty file" if not raw else f"a file starting with {raw[:16]!r}"
        raise ValueError(
            f"cannot read {where}: it is {what}, not a fit checkpoint (which starts with "
            f"{_CHECKPOINT_MAGIC.strip().decode()!r})"
        )
    if not isinstance(payload, dict) or payload.get("format") not in (
        _CHECKPOINT_FORMAT,
        _LEGACY_FORMAT,
    ):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{str(path)!r} is not a fit checkpoint of format {_CHECKPOINT_FORMAT!r} "
            f"(found {found!r})"
        )
    _check_payload(payload, where)
    return payload


def _load_payload(f: io.BytesIO, where: str) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read {where} (loaded with weights_only=True, which accepts tensors and "
            f"plain Python values only): {e}"
        ) from e


_Real = (int, float)
_OptReal = (int, float, type(None))
#: The fields of a checkpoint payload: a type (or types), a nested dict of fields, or
#: ``[spec]`` for a list whose every item matches ``spec``.
_PAYLOAD_FIELDS: dict[str, Any] = {
    "format": str,
    "epoch": int,
    "elapsed": _Real,
    "params": [torch.Tensor],
    "num_guide_params": int,
    "modules": [dict],
    "optimizer_class": str,
    "optimizer": {"state": dict, "param_groups": [dict]},
    "loss": {"step_count": (int, type(None))},
    "state": {"step": int, "aggressive": bool, "inner_steps": int, "previous_mi": _OptReal},
    "rng": {
        "torch": torch.Tensor,
        "cuda": dict,
        "random": {"version": int, "state": torch.Tensor, "gauss_next": _OptReal},
        "numpy": {
            "name": str,
            "keys": torch.Tensor,
            "pos": int,
            "has_gauss": int,
            "cached_gaussian": _Real,
        },
    },
    "generator": torch.Tensor,
    "loader_generators": [torch.Tensor],
    "monitor": dict,
    "scheduler_class": (str, type(None)),
    "scheduler": (dict, type(None)),
    "history": [{"epoch": int, "values": dict, "kl_per_dim": dict}],
}


def _check_fields(value: Any, spec: Any, field: str, where: str) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ValueError(
                f"{where} is malformed: field {field!r} is a {type(value).__name__}, expected "
                "a dict"
            )
        for key, sub in spec.items():
            name = f"{field}.{key}" if field else key
            if key not in value:
                raise ValueError(f"{where} is malformed: missing field {name!r}")
            _check_fields(value[key], sub, name, where)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise ValueError(
                f"{where} is malformed: field {field!r} is a {type(value).__name__}, expected "
                "a list"
            )
        for i, item in enumerate(value):
            _check_fields(item, spec[0], f"{field}[{i}]", where)
    else:
        types = spec if isinstance(spec, tuple) else (spec,)
        bad_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or bad_bool:
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ValueError(
                f"{where} is malformed: field {field!r} is a {type(value).__name__}, expected "
                f"{expected}"
            )


def _check_payload(payload: dict[str, Any], where: str) -> None:
    """Every field :func:`_restore_checkpoint` reads, present and of its type."""
    _check_fields(payload, _PAYLOAD_FIELDS, "", where)
    epoch, history = payload["epoch"], payload["history"]
    if epoch < 1 or len(history) != epoch:
        raise ValueError(
            f"{where} is malformed: it is at epoch {epoch} but holds {len(history)} History "
            "record(s), one per epoch"
        )
    if not 0 <= payload["num_guide_params"] <= len(payload["params"]):
        raise ValueError(
            f"{where} is malformed: num_guide_params={payload['num_guide_params']} for "
            f"{len(payload['params'])} parameter tensors"
        )


def _atomic_save(path: Path, payload: dict[str, Any]) -> None:
    """The payload serialised with ``torch.save``, after :data:`_CHECKPOINT_MAGIC` and its
    sha256 digest, written to a temporary file beside ``path``, flushed to disk, then
    renamed over ``path``: a crash leaves either the old or the new checkpoint, never a
    torn one, and a file altered later fails its checksum."""
    from pyrocollapse._io import atomic_write

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = _CHECKPOINT_MAGIC + b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def _rng_payload(cuda: Sequence[int]) -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and ``random`` RNG states as tensors and plain values
    (``weights_only`` refuses NumPy arrays)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global)
    return {
        "torch": torch.get_rng_state(),
        "cuda": {int(i): torch.cuda.get_rng_state(i) for i in cuda},
        "random": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def _restore_rng(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    for i, s in saved["cuda"].items():
        if torch.cuda.is_available() and int(i) < torch.cuda.device_count():
            torch.cuda.set_rng_state(s, int(i))
    r = saved["random"]
    random.setstate((r["version"], tuple(int(v) for v in r["state"].tolist()), r["gauss_next"]))
    n = saved["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global state Pyro's seed sets)
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )


def _history_payload(history: History) -> list[dict[str, Any]]:
    """The History as plain floats and tensors (exact: float64 values, arrays' dtypes kept)."""
    out = []
    for r in history:
        values = {}
        for k, v in r.values.items():
            try:
                values[str(k)] = float(v)
            except (TypeError, ValueError):
                raise TypeError(
                    f"epoch {r.epoch}'s value {k!r} is a {type(v).__name__}; History values must "
                    "be numbers to be checkpointed (a callback may have added it)"
                ) from None
        kl = {str(k): torch.from_numpy(np.array(v)) for k, v in r.kl_per_dim.items()}
        out.append({"epoch": int(r.epoch), "values": values, "kl_per_dim": kl})
    return out


def _write_checkpoint(
    path: Path,
    state: TrainState,
    modules: Sequence[torch.nn.Module],
    gen: torch.Generator,
    source: _MemorySource | _LoaderSource,
    monitor_x: ProgramData | None,
    monitor_idx: torch.Tensor | None,
    elapsed: float,
) -> None:
    """Write everything :func:`fit` needs to continue bit for bit (see its Notes)."""
    loss_state: dict[str, Any] = {"step_count": getattr(state.loss, "step_count", None)}
    if callable(getattr(state.loss, "state_dict", None)):
        loss_state["state_dict"] = state.loss.state_dict()
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "epoch": int(state.epoch),
        "elapsed": float(elapsed),
        "params": [p.detach().cpu() for p in state.guide_params + state.model_params],
        "num_guide_params": len(state.guide_params),
        "modules": [m.state_dict() for m in modules],
        "optimizer_class": type(state.optimizer).__name__,
        "optimizer": state.optimizer.state_dict(),
        "loss": loss_state,
        "state": {
            "step": int(state.step),
            "aggressive": bool(state.aggressive),
            "inner_steps": int(state.inner_steps),
            "previous_mi": None if state.previous_mi is None else float(state.previous_mi),
        },
        "rng": _rng_payload(state._rng_devices),
        "generator": gen.get_state(),
        "loader_generators": [g.get_state() for g in source.generators()],
        "monitor": _monitor_payload(monitor_x, monitor_idx),
        "scheduler_class": (None if state.scheduler is None else type(state.scheduler).__name__),
        "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
        "history": _history_payload(state.history),
    }
    _atomic_save(path, payload)
    state.checkpoint = str(path)


def _monitor_payload(
    monitor_x: ProgramData | None, monitor_idx: torch.Tensor | None
) -> dict[str, Any]:
    """The monitoring subset in a checkpoint: row indices for data held in memory, the
    rows themselves for a loader (``"x"``: one tensor; ``"batches"``: the arguments)."""
    if monitor_idx is not None:
        return {"indices": monitor_idx}
    if monitor_x is None:
        return {}
    tensor = monitor_x.tensor
    if tensor is not None:
        return {"x": tensor.detach().cpu()}
    return {"batches": monitor_x.to_payload()}


def _restore_checkpoint(
    saved: dict[str, Any],
    state: TrainState,
    modules: Sequence[torch.nn.Module],
    gen: torch.Generator,
    source: _MemorySource | _LoaderSource,
    path: Path,
) -> float:
    """Load ``saved`` into the live run after checking that it fits; returns the training
    time (seconds) the checkpoint had used."""
    params = state.guide_params + state.model_params
    now = [tuple(p.shape) for p in params]
    then = [tuple(t.shape) for t in saved["params"]]
    if now != then:
        if len(now) != len(then):
            why = f"it holds {len(then)} parameter tensors, the model and guide have {len(now)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(now, then)) if a != b)
            why = f"parameter {i} has shape {then[i]} there and {now[i]} here"
        raise ValueError(
            f"the checkpoint {str(path)!r} does not match this model and guide: {why}. Resume "
            "with a model and guide built as for the original run, or use another checkpoint_dir"
        )
    if len(saved["modules"]) != len(modules):
        raise ValueError(
            f"the checkpoint {str(path)!r} holds the state of {len(saved['modules'])} module(s) "
            f"behind model and guide, but {len(modules)} are reachable now; pass model and guide "
            "as in the original run (e.g. vae.model and vae.guide)"
        )
    if saved["optimizer_class"] != type(state.optimizer).__name__:
        raise ValueError(
            f"the checkpoint {str(path)!r} holds the state of a {saved['optimizer_class']} "
            f"optimiser, but optim builds a {type(state.optimizer).__name__}; resume with the "
            "original optim"
        )
    then_sched = saved.get("scheduler_class")
    now_sched = None if state.scheduler is None else type(state.scheduler).__name__
    if then_sched != now_sched:
        raise ValueError(
            f"the checkpoint {str(path)!r} holds "
            + ("no learning-rate scheduler" if then_sched is None else f"a {then_sched} scheduler")
            + ", but optim and scheduler build "
            + ("none" if now_sched is None else f"a {now_sched}")
            + "; resume with the original optim and scheduler"
        )
    generators = source.generators()
    if len(saved["loader_generators"]) != len(generators):
        raise ValueError(
            f"the checkpoint {str(path)!r} holds {len(saved['loader_generators'])} DataLoader "
            f"generator state(s), but data has {len(generators)}; resume with a DataLoader built "
            "as for the original run"
        )
    try:
        for m, sd in zip(modules, saved["modules"], strict=True):
            m.load_state_dict(sd)
        with torch.no_grad():
            for p, t in zip(params, saved["params"], strict=True):
                p.copy_(t)
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(
            f"the checkpoint {str(path)!r} does not fit this model, guide and optimiser: {e}"
        ) from e
    try:
        loss_state = saved["loss"]
        if loss_state.get("step_count") is not None and hasattr(state.loss, "step_count"):
            state.loss.step_count = loss_state["step_count"]
        if "state_dict" in loss_state and callable(getattr(state.loss, "load_state_dict", None)):
            state.loss.load_state_dict(loss_state["state_dict"])
        s = saved["state"]
        state.step, state.aggressive = s["step"], s["aggressive"]
        state.inner_steps, state.previous_mi = s["inner_steps"], s["previous_mi"]
        state.epoch = saved["epoch"]
        state.history.records = [
            EpochRecord(
                r["epoch"], dict(r["values"]), {k: v.numpy() for k, v in r["kl_per_dim"].items()}
            )
            for r in saved["history"]
        ]
        _restore_rng(saved["rng"])
        gen.set_state(saved["generator"])
        for g, s in zip(generators, saved["loader_generators"], strict=True):
            g.set_state(s)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, OverflowError) as e:
        raise ValueError(
            f"the checkpoint {str(path)!r} is malformed: its training state cannot be restored "
            f"({type(e).__name__}: {e})"
        ) from e
    state.checkpoint = str(path)
    return float(saved["elapsed"])


#: Points per traced chunk of the monitoring subset (at least; fit's batch size if larger):
