import os
import stat

import pytest

from pyrocollapse._io import atomic_directory, atomic_write_text


def test_atomic_files_and_folders_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_failed_writes_leave_nothing_behind(tmp_path):
    atomic_write_text(tmp_path / "keep.txt", "old")

    def boom(tmp):
        raise RuntimeError("disk full")

    from pyrocollapse._io import atomic_write

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "keep.txt", boom)
    assert (tmp_path / "keep.txt").read_text() == "old"
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_directory(tmp_path / "out") as d:
            (d / "metrics.json").write_text("{}")
            raise RuntimeError("half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("1")
        with atomic_directory(tmp_path / "full"):
            pass


def _hold_lock_in_another_process(path):
    """A child process that holds ``lock_directory(path)`` until its stdin closes."""
    import subprocess
    import sys

    code = (
        "import sys; from pyrocollapse._io import lock_directory\n"
        f"with lock_directory({str(path)!r}):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_naming_the_folder_and_the_holder(tmp_path):
    from pyrocollapse._io import TargetBusyError, lock_directory, lock_path

    out = tmp_path / "out"
    child = _hold_lock_in_another_process(out)
    try:
        with pytest.raises(
            TargetBusyError,
            match=rf"'{out}' is being written by another process \(pid {child.pid}\)",
        ):
            with lock_directory(out):
                pass
        with pytest.raises(ValueError, match="being written"):  # a ValueError: CLI exit 2
            with atomic_directory(out):
                pass
    finally:
        child.communicate()  # closes its stdin: it releases the lock and ends
    assert not lock_path(out).exists()  # released: the lock file is gone
    with lock_directory(out):  # free again; nested use in one thread is allowed
        with atomic_directory(out) as d:
            (d / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_killed_holder_does_not_block_the_next_writer(tmp_path):
    from pyrocollapse._io import lock_directory

    out = tmp_path / "out"
    child = _hold_lock_in_another_process(out)
    child.kill()
    child.communicate()
    with lock_directory(out):  # the lock file is still there, but nobody holds it
        pass


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from pyrocollapse._io import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        f".out.pid{dead.pid}.x1.tmp": True,  # a killed writer's folder
        f".metrics.json.pid{dead.pid}.x2.tmp": True,  # a killed writer's file
        f".out.pid{os.getpid()}.x3.tmp": False,  # a live writer's
        ".out.x4.tmp": False,  # no pid: not ours to judge
        "out": False,
    }
    for name in names:
        (tmp_path / name).mkdir() if "x1" in name or name == "out" else (
            tmp_path / name
        ).write_text("")
    removed = remove_stale_temporaries(tmp_path, "out")
    assert [p.name for p in removed] == [f".out.pid{dead.pid}.x1.tmp"]
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [f".metrics.json.pid{dead.pid}.x2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, gone in names.items() if not gone
    )


def test_a_folder_filled_meanwhile_is_never_replaced_without_overwrite(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="was filled by someone else"):
        with atomic_directory(out) as d:
            (d / "mine").write_text("x")
            out.mkdir()
            (out / "theirs").write_text("keep")
    assert sorted(p.name for p in out.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_directory(out, overwrite=True) as d:
        (d / "mine").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["mine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
