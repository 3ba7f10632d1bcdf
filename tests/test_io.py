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
