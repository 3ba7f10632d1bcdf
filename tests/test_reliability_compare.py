"""Reliability of the remedy grid: stale or damaged runs are redone, every value is checked
before any work, exit codes, workers die with the grid, one writer per grid folder."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import pyrocollapse.comparison as comparison
from pyrocollapse.cli import main
from pyrocollapse.comparison import compare, run_id
from pyrocollapse.experiment import RunConfig

TINY = RunConfig(
    epochs=1,
    latent_dim=2,
    batch_size=256,
    model_options={"hidden": (16,)},
    bootstrap=0,
    importance_samples=50,
    posterior_samples=0,
    posterior_points=20,
    estimators=("kl", "au"),
)

RID = run_id("standard", "elbo", 0)


def _cli(out, *extra):
    return [
        "compare", "--priors", "standard", "--elbos", "elbo", "--seeds", "1",
        "--epochs", "1", "--model-option", "hidden=16", "--bootstrap", "0",
        "--estimators", "kl,au", "--importance-samples", "50", "--posterior-samples", "0",
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def _grid(out, base=TINY, **kw):
    return compare(
        priors=["standard"], elbos=["elbo"], seeds=1, out=out, base=base, iw_samples=50,
        progress=False, echo=True, **kw,
    )  # fmt: skip


def _run_row(out, rid=RID):
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    return runs.set_index("run").loc[rid]


def test_a_run_built_with_other_settings_is_redone_and_says_why(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(_cli(out, "--latent-dim", "2")) == 0
    metrics = json.loads((out / "runs" / RID / "metrics.json").read_text())
    assert metrics["config"]["latent_dim"] == 2 and len(metrics["fingerprint"]) == 64
    capsys.readouterr()
    # other options: the run is trained again, and the output names it and the fields
    assert main(_cli(out, "--latent-dim", "3")) == 0
    printed = capsys.readouterr().out
    assert f"run {RID}: training it again: it was built with other settings" in printed
    assert "latent_dim: 2 -> 3" in printed
    row = _run_row(out)
    assert not row["resumed"] and "latent_dim: 2 -> 3" in row["redone"]
    metrics = json.loads((out / "runs" / RID / "metrics.json").read_text())
    assert metrics["config"]["latent_dim"] == 3
    # the same options again: read back, not retrained
    assert main(_cli(out, "--latent-dim", "3")) == 0
    assert "training it again" not in capsys.readouterr().out
    row = _run_row(out)
    assert row["resumed"] and row["redone"] == ""


def test_a_damaged_run_folder_is_redone_and_named(tmp_path, capsys):
    out = tmp_path / "grid"
    _grid(out)
    run = out / "runs" / RID
    capsys.readouterr()
    # a truncated metrics.json
    text = (run / "metrics.json").read_text()
    (run / "metrics.json").write_text(text[: len(text) // 2])
    _grid(out)
    printed = capsys.readouterr().out
    assert f"run {RID}: training it again: its metrics.json cannot be read" in printed
    assert _run_row(out)["status"] == "ok" and not _run_row(out)["resumed"]
    assert json.loads((run / "metrics.json").read_text())["fingerprint"]
    # a missing file
    (run / "history.csv").unlink()
    _grid(out)
    printed = capsys.readouterr().out
    assert (
        f"run {RID}: training it again: its folder is incomplete (history.csv missing)" in printed
    )
    # a metrics.json without a fingerprint (an older version), or with a wrong one
    metrics = json.loads((run / "metrics.json").read_text())
    for fingerprint in (None, "0" * 64):
        if fingerprint is None:
            metrics.pop("fingerprint")
        else:
            metrics["fingerprint"] = fingerprint
        (run / "metrics.json").write_text(json.dumps(metrics))
        _grid(out)
        printed = capsys.readouterr().out
        assert f"run {RID}: training it again: its metrics.json has " in printed
        assert not _run_row(out)["resumed"]
    _grid(out)
    assert "training it again" not in capsys.readouterr().out and _run_row(out)["resumed"]


@pytest.mark.parametrize(
    ("value", "shown"), [("0", "n_components=0"), ("abc", "n_components='abc'")]
)
def test_an_invalid_value_exits_2_before_any_folder_is_made(tmp_path, capsys, value, shown):
    out = tmp_path / "grid"
    code = main(
        _cli(out, "--latent-dim", "2", "--priors", "standard,mixture", "--prior-option",
             f"mixture.n_components={value}")
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert shown in err  # the option and its value
    if value == "abc":  # typed from the constructor's annotation before any run is built
        assert "is not a valid int" in err
    else:  # a valid int the constructor refuses, named with the run
        assert "n_components must be" in err and run_id("mixture", "elbo", 0) in err
    assert not out.exists()


def test_an_invalid_objective_value_is_refused_through_the_python_api(tmp_path):
    with pytest.raises(ValueError, match=r"run standard__freebits__seed0 .*free_bits"):
        compare(
            priors=["standard"], elbos=["elbo", "freebits"], seeds=2, out=tmp_path / "g",
            base=TINY, elbo_options={"freebits": {"free_bits": -1.0}}, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "g").exists()


def test_a_grid_with_a_failed_run_exits_1_and_names_it(tmp_path, capsys, monkeypatch):
    import pyrocollapse.train

    real_fit = pyrocollapse.train.fit

    def fit(*args, loss, **kwargs):  # the beta-VAE runs diverge; the others train
        if type(loss).__name__ == "BetaELBO":
            raise FloatingPointError("loss is nan at step 3")
        return real_fit(*args, loss=loss, **kwargs)

    monkeypatch.setattr(pyrocollapse.train, "fit", fit)
    code = main(_cli(tmp_path / "g", "--latent-dim", "2", "--elbos", "elbo,beta"))
    assert code == 1
    captured = capsys.readouterr()
    assert "(1 ok, 1 failed)" in captured.out
    assert "1 run(s) failed" in captured.err
    assert f"{run_id('standard', 'beta', 0)}: FloatingPointError: loss is nan" in captured.err


def test_a_second_compare_on_a_busy_grid_folder_is_refused(tmp_path, capsys):
    import threading

    from pyrocollapse._io import TargetBusyError, lock_directory

    out = tmp_path / "grid"
    held, release = threading.Event(), threading.Event()

    def other_writer():  # another writer holds the grid folder (a thread counts as one)
        with lock_directory(out):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        assert held.wait(60)
        with pytest.raises(TargetBusyError, match="being written by another process"):
            _grid(out)
        assert main(_cli(out, "--latent-dim", "2")) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert not (out / "runs").exists()
    finally:
        release.set()
        thread.join()
    _grid(out)  # free again once the other one is done
    assert _run_row(out)["status"] == "ok"


def test_worker_initializer_shares_the_cores_and_arms_the_parent_check(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [comparison._threads_per_worker(j) for j in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    armed = []
    monkeypatch.setattr(comparison, "_die_with_parent", armed.append)
    comparison._worker_init(1234, 3)
    assert armed == [1234] and torch.get_num_threads() == 3


def test_compare_starts_workers_with_the_initializer(tmp_path, monkeypatch):
    """In-process stand-in for the pool: the initializer, its arguments, the parent pid."""
    from concurrent.futures import Future

    seen = {}

    class Pool:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, config, out, parent_pid):
            seen.setdefault("parents", []).append(parent_pid)
            fut = Future()
            fut.set_result(fn(config, out))
            return fut

    monkeypatch.setattr(comparison, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(comparison, "_threads_per_worker", lambda jobs: 10 + jobs)
    compare(
        priors=["standard"], elbos=["elbo", "beta"], seeds=1, out=tmp_path, base=TINY,
        jobs=3, progress=False,
    )  # fmt: skip
    assert seen["initializer"] is comparison._worker_init
    assert seen["max_workers"] == 2  # no more workers than runs
    assert seen["initargs"] == (os.getpid(), 12)
    assert seen["parents"] == [os.getpid()] * 2


def test_an_orphaned_run_writes_nothing(tmp_path, monkeypatch):
    class Exited(Exception):
        pass

    def _exit(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", _exit)
    with pytest.raises(Exited):  # its parent is gone: it exits before writing
        comparison._one_run(TINY.to_dict(), str(tmp_path / "run"), parent_pid=os.getppid() + 1)
    assert not (tmp_path / "run").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path):
    out = tmp_path / "grid"
    args = _cli(out, "--latent-dim", "2", "--elbos", "elbo,beta", "--seeds", "2", "--jobs", "2")
    args[args.index("--epochs") + 1] = "100000"  # runs that are still training at the kill
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyrocollapse.cli", *args], stdout=log, stderr=log
        )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in _children(proc.pid) if _is_worker(p)]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, (tmp_path / "log").read_text()
        time.sleep(3)  # let them import and start training
        assert all(_alive(p) for p in workers)
        before = sorted(p.name for p in (out / "runs").iterdir())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "workers outlived their parent"
        after = sorted(p.name for p in (out / "runs").iterdir())
        assert [n for n in after if not n.startswith(".")] == [
            n for n in before if not n.startswith(".")
        ]
        assert not list((out / "runs").glob("*/metrics.json"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_fingerprint_is_stable_and_covers_every_field():
    a = TINY.to_dict()
    assert comparison._fingerprint(a) == comparison._fingerprint(json.loads(json.dumps(a)))
    assert comparison._fingerprint(a) == comparison._fingerprint(dict(reversed(a.items())))
    for change in ({"epochs": 2}, {"lr": 1e-3}, {"model_options": {"hidden": (32,)}}):
        b = replace(TINY, **change).to_dict()
        assert comparison._fingerprint(b) != comparison._fingerprint(a)
        field = next(iter(change))
        assert comparison._differing_fields(a, b).startswith(f"{field}: ")
