"""Reliability of ``pyrocollapse run`` (issue 16, items 1, 7 and 9).

Concurrency (two writers, one ``--out``), fault injection (SIGKILL at seeded random
points of a run's life, then ``--resume``), and failures found before any work (an
unwritable or forbidden ``--out``, sizes that cannot fit in memory). The runs are real
``pyrocollapse run`` processes on the smallest budgets the command line allows. No test
asserts a wall time: waits have generous deadlines only so that a hung run fails.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyrocollapse._io import lock_path
from pyrocollapse.cli import main
from pyrocollapse.experiment import work_folder

#: The smallest useful run: 300 ppca rows, a 2-d latent, a few epochs, two estimators.
TINY = [
    *("--dataset", "ppca", "--dataset-option", "n=300", "--valid-fraction", "0.1"),
    *("--model-option", "hidden=8", "--model-option", "likelihood=gaussian"),
    *("--latent-dim", "2", "--epochs", "4", "--batch-size", "32"),
    *("--estimators", "kl,au", "--num-samples", "1", "--bootstrap", "0"),
    *("--posterior-samples", "0"),
]
#: What a finished report folder of a TINY run holds.
COMPLETE = {"metrics.json", "history.csv", "figures", "report.html", "model.pt"}
#: Deadline for one process, only so that a hang fails instead of blocking the suite.
DEADLINE = 300.0


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pyrocollapse.cli", "run", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out, err


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` ends first."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {DEADLINE} s")
        time.sleep(0.01)


def _assert_complete(out: Path) -> dict:
    """``out`` is a whole report folder; returns its metrics."""
    assert {p.name for p in out.iterdir()} == COMPLETE
    assert (out / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert torch.load(out / "model.pt", weights_only=True)
    assert list((out / "figures").glob("*.png"))
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def _leftovers(folder: Path) -> list[str]:
    """Temporaries, lock files and work folders anywhere under ``folder``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith((".tmp", ".lock", ".partial"))
    )


def _assert_same_numbers(a, b, path="metrics") -> None:
    """Equal structure and numbers (to 1e-6), ignoring timings."""
    if isinstance(a, dict):
        keys = {k for k in a if "time" not in k and "seconds" not in k}
        assert keys == {k for k in b if "time" not in k and "seconds" not in k}, path
        for k in keys:
            _assert_same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 * max(1.0, abs(a)), (
            f"{path}: {a} != {b}"
        )
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------------
# Two writers, one target
# --------------------------------------------------------------------------------------
def test_two_runs_into_one_out_one_finishes_the_other_is_refused(tmp_path):
    out = tmp_path / "o"
    first = _start(tmp_path, *TINY, "--seed", "0", "--out", str(out))
    lock = lock_path(out)

    def first_holds_the_lock() -> bool:
        try:
            return lock.read_text().strip() == str(first.pid)
        except FileNotFoundError:
            return False

    _wait_for(first_holds_the_lock, first, "the first run took the lock of --out")
    second = _start(tmp_path, *TINY, "--seed", "1", "--out", str(out))
    code2, out2, err2 = _finish(second)
    code1, out1, err1 = _finish(first)

    assert code1 == 0, err1
    assert f"wrote {out}/" in out1
    assert code2 == 2, err2
    assert err2.splitlines() == [
        f"pyrocollapse: error: output folder {str(out)!r} is being written by another "
        f"process (pid {first.pid}); wait for it to finish or choose another folder"
    ]
    assert "pyrocollapse run:" not in out2 and "wrote" not in out2  # refused before any work
    metrics = _assert_complete(out)
    assert metrics["config"]["seed"] == 0  # the first run's result, intact
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------
# Fault injection: SIGKILL at seeded random points, then --resume
# --------------------------------------------------------------------------------------
def test_killed_runs_leave_no_half_written_out_and_resume_to_the_same_result(tmp_path):
    args = [*TINY, "--seed", "3", "--checkpoint-every", "1"]
    reference = tmp_path / "reference"
    started = time.monotonic()
    code, _, err = _finish(_start(tmp_path, *args, "--out", str(reference)))
    length = time.monotonic() - started  # only to place the kill points inside a run
    assert code == 0, err
    expected = _assert_complete(reference)

    out = tmp_path / "o"
    checkpoint = work_folder(out) / ".checkpoint" / "checkpoint.pt"
    # temporaries of a dead process (to be cleaned) and of a live one (ours: to be kept)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".o.pid{dead.pid}.abcd1234.tmp"
    stale.mkdir()
    (stale / "metrics.json").write_text("{")
    live = tmp_path / f".o.pid{os.getpid()}.abcd1234.tmp"
    live.write_text("")

    rng = random.Random(16)
    kill_points = ["first checkpoint"] + [rng.uniform(0.2, 0.9) * length for _ in range(2)]
    resumed_from_checkpoint = False
    for point in kill_points:
        proc = _start(tmp_path, *args, "--resume", "--out", str(out))
        if point == "first checkpoint":
            _wait_for(checkpoint.exists, proc, "a checkpoint was written")
        else:
            try:
                proc.wait(timeout=point)
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGKILL)
        _, stdout, _ = _finish(proc)
        resumed_from_checkpoint |= "resuming the interrupted run" in stdout
        # never a half-written --out: absent, or whole (if the run had already finished)
        if out.exists():
            assert proc.returncode == 0
            break
        if point == "first checkpoint":
            assert checkpoint.exists()
    if not out.exists():
        code, stdout, err = _finish(_start(tmp_path, *args, "--resume", "--out", str(out)))
        assert code == 0, err
        resumed_from_checkpoint |= "resuming the interrupted run" in stdout
    assert resumed_from_checkpoint
    _assert_same_numbers(_assert_complete(out)["report"], expected["report"], "report")
    _assert_same_numbers(
        _assert_complete(out)["final_epoch"], expected["final_epoch"], "final_epoch"
    )
    # the dead process's temporaries are gone, the live one's kept, nothing else left
    assert _leftovers(tmp_path) == [live.name]
    live.unlink()


def test_a_checkpoint_is_not_overwritten_by_a_fresh_run_or_resumed_with_other_options(
    tmp_path, capsys
):
    out = tmp_path / "o"
    work = work_folder(out)
    (work / ".checkpoint").mkdir(parents=True)
    (work / ".checkpoint" / "checkpoint.pt").write_bytes(b"a checkpoint")
    (work / "config.json").write_text(json.dumps({"epochs": 99}))
    assert main(["run", *TINY, "--checkpoint-every", "1", "--out", str(out)]) == 2
    assert "holds the checkpoint of an interrupted run" in capsys.readouterr().err
    assert main(["run", *TINY, "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume: the interrupted run in" in err and "epochs: 99 then, 4 now" in err
    assert (work / ".checkpoint" / "checkpoint.pt").read_bytes() == b"a checkpoint"
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Failures found before any work
# --------------------------------------------------------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    """Make training fail loudly: the checks below must stop the run before it."""
    import pyrocollapse.train

    def fit(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pyrocollapse.train, "fit", fit)


def _one_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "pyrocollapse run:" not in captured.out and "epoch" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--checkpoint-every", "1"]])
def test_out_dot_is_refused_before_any_work(extra, tmp_path, monkeypatch, capsys, no_training):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "--out", ".", *extra]) == 2
    assert _one_error(capsys) == (
        "pyrocollapse: error: --out '.' is the current folder or a folder above it, which a "
        "run would replace as a whole; choose a new folder, e.g. runs/latest"
    )
    assert main(["run", *TINY, "--out", "..", *extra]) == 2
    assert "is the current folder or a folder above it" in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_out_holding_the_package_is_refused(tmp_path, monkeypatch, capsys, no_training):
    import pyrocollapse

    package = Path(pyrocollapse.__file__).resolve().parent
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "--out", str(package.parent), "--overwrite"]) == 2
    assert "holds the pyrocollapse package" in _one_error(capsys)
    assert (package / "__init__.py").exists()


@pytest.mark.parametrize("extra", [[], ["--checkpoint-every", "1"]])
def test_unwritable_out_parent_is_refused_before_any_work(extra, tmp_path, capsys, no_training):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("this user can write to a 0o500 folder (root)")
        out = parent / "o"
        assert main(["run", *TINY, "--out", str(out), *extra]) == 2
        assert _one_error(capsys) == (
            f"pyrocollapse: error: --out {str(out)!r} cannot be written: no write permission "
            f"in {str(parent)!r}"
        )
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_an_existing_out_is_checked_through_its_parent(tmp_path, capsys, no_training):
    """A run replaces --out as a whole: the folder above must be writable, and an
    existing --out does not hide an unwritable one."""
    parent = tmp_path / "readonly"
    out = parent / "o"
    out.mkdir(parents=True)
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("this user can write to a 0o500 folder (root)")
        assert main(["run", *TINY, "--out", str(out)]) == 2
        assert f"no write permission in {str(parent)!r}" in _one_error(capsys)
    finally:
        parent.chmod(0o700)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--latent-dim", "1000000000", "--batch-size", "128"],
            r"it needs at least 1\.4 TiB for one training batch of z, its mean and scale "
            r"\(128 rows x 1000000000 dims x 3 x 4 bytes\), but [\d.]+ [GTMK]iB is available; "
            r"lower --latent-dim or --batch-size",
        ),
        (
            ["--estimators", "kl,iw", "--importance-samples", str(10**12)],
            r"it needs at least [\d.]+ TiB for the importance weights of one chunk "
            r"\(1000000000000 samples x 30 rows x 8 bytes\).* lower --importance-samples",
        ),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_any_work(
    extra, message, tmp_path, capsys, no_training
):
    import re

    from pyrocollapse.experiment.memory import _available_memory

    if (_available_memory() or 0) > 2**40:
        pytest.skip("this machine has more than 1 TiB of memory")
    out = tmp_path / "o"
    assert main(["run", *TINY, *extra, "--out", str(out), "--checkpoint-every", "1"]) == 2
    line = _one_error(capsys)
    assert line.startswith("pyrocollapse: error: the run cannot fit in memory: ")
    assert re.search(message, line), line
    assert list(tmp_path.iterdir()) == []  # no --out, no checkpoint, no lock
