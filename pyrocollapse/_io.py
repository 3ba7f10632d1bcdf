"""Atomic file and folder writes: nothing is ever left half-written.

Temporaries are named ``.<name>.pid<PID>.<random>.tmp`` beside their target, so that
:func:`remove_stale_temporaries` can tell those of a process that was killed (and will
never finish them) from those of a live writer. :func:`lock_directory` keeps a second
writer off a target while the first one is running; :func:`atomic_directory` takes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TargetBusyError",
    "atomic_directory",
    "atomic_write",
    "atomic_write_text",
    "json_default",
    "lock_directory",
    "lock_path",
    "remove_stale_temporaries",
    "replace_directory",
]


class TargetBusyError(ValueError):
    """Another process holds the lock of the output folder (see :func:`lock_directory`)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    """Prefix of this process's temporaries for the target ``name``."""
    return f".{name}.pid{os.getpid()}."


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


# --------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------
#: Locks this process holds: (pid, thread, lock file) -> nesting depth.
_HELD: dict[tuple[int, int, str], int] = {}
_HELD_GUARD = threading.Lock()


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of the output folder ``path``: ``.<name>.lock`` beside it."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}.lock"


def _holder(lock: Path) -> str:
    """The pid written into ``lock`` by its holder (``"unknown"`` if not written yet)."""
    for _ in range(20):
        with contextlib.suppress(OSError):
            text = lock.read_text(encoding="ascii").strip()
            if text.isdigit():
                return text
        time.sleep(0.005)
    return "unknown"


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` without waiting; False if held."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise
    return True


@contextlib.contextmanager
def lock_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``path`` for the ``with`` block.

    The lock is an advisory ``flock`` on the file ``.<name>.lock`` beside ``path`` (see
    :func:`lock_path`), which holds the holder's pid and is removed on release. The
    operating system releases it when the holder dies, however it dies, so a killed
    writer never blocks the next one. Nested use on the same folder by the same thread
    is allowed (the inner block holds nothing more).

    Yields
    ------
    Path
        ``path`` resolved.

    Raises
    ------
    TargetBusyError
        Another process (or thread) holds the lock; the message names the folder and
        the holder's pid. A ``ValueError``, so the command line exits with status 2.
    """
    target = Path(path).resolve()
    lock = lock_path(target)
    key = (os.getpid(), threading.get_ident(), str(lock))
    with _HELD_GUARD:
        nested = key in _HELD
        if nested:
            _HELD[key] += 1
    if nested:
        try:
            yield target
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _try_lock(fd):
                raise TargetBusyError(
                    f"output folder {str(path)!r} is being written by another process (pid "
                    f"{_holder(lock)}); wait for it to finish or choose another folder"
                )
            try:  # the file may have been removed by its last holder before we locked it
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        with _HELD_GUARD:
            _HELD[key] = 1
        yield target
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        with contextlib.suppress(OSError):  # removed while still held: no one can adopt it
            os.unlink(lock)
        os.close(fd)


# --------------------------------------------------------------------------------------
# Stale temporaries
# --------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or not a pid we can ask about): keep
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove the temporaries of processes that died in ``folder``; returns them.

    Temporaries are the ``.<name>.pid<PID>.*.tmp`` files and folders written by
    :func:`atomic_write` and :func:`atomic_directory` (those of target ``name`` only, if
    given); a temporary is removed only when process ``PID`` no longer exists.
    """
    folder = Path(folder)
    stem = re.escape(name) if name is not None else r"[^/]+?"
    pattern = re.compile(rf"^\.{stem}\.pid(\d+)\.[^/]*\.tmp$")
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------
def _is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def replace_directory(
    tmp: str | os.PathLike[str], path: str | os.PathLike[str], *, overwrite: bool
) -> None:
    """Rename the finished folder ``tmp`` to ``path``.

    A missing or empty ``path`` is simply replaced. Anything else at ``path`` is
    replaced only with ``overwrite`` (moved aside, then removed); without it a
    ``FileExistsError`` is raised and nothing at ``path`` is touched (``tmp`` stays).
    """
    tmp, path = Path(tmp), Path(path)
    if not overwrite or not os.path.lexists(path):
        try:
            os.rename(tmp, path)  # onto nothing or an empty folder only
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise FileExistsError(
                f"output folder {str(path)!r} was filled by someone else while this run "
                "was writing; it was left as it is (pass overwrite to replace it)"
            ) from None
        return
    old = path.parent / f"{_temp_prefix(path.name)}old.tmp"
    os.replace(path, old)
    os.replace(tmp, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only if the block succeeds.

    The block runs under :func:`lock_directory` on ``path`` (a second writer gets
    :class:`TargetBusyError`), and temporaries that killed writers left beside ``path``
    are removed first (:func:`remove_stale_temporaries`). Raises ``FileExistsError`` if
    ``path`` exists and is not an empty folder, unless ``overwrite``; a folder that is
    not empty is never removed without ``overwrite``. On an exception the temporary
    folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if os.path.lexists(path) and not _is_empty_folder(path) and not overwrite:
        raise FileExistsError(
            f"output folder {str(path)!r} exists and is not empty; pass overwrite"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_directory(path):
        if os.path.lexists(path) and not _is_empty_folder(path) and not overwrite:
            raise FileExistsError(
                f"output folder {str(path)!r} exists and is not empty; pass overwrite"
            )
        remove_stale_temporaries(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual mode
        try:
            yield tmp
            replace_directory(tmp, path, overwrite=overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback: NumPy arrays and scalars as Python values, paths as str."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
