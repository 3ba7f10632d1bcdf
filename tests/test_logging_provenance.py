"""Provenance in metrics.json, and library messages as log records (issue 18, item 4)."""

from __future__ import annotations

import datetime
import doctest
import json
import logging
import platform
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from pyrocollapse import provenance as provenance_module
from pyrocollapse.experiment import run_experiment
from pyrocollapse.provenance import git_state, package_versions, provenance
from pyrocollapse.testing import tiny_config
from pyrocollapse.tracking import MemoryTracker

TINY = tiny_config()

KEYS = {
    "versions",
    "git_commit",
    "git_dirty",
    "device",
    "argv",
    "timestamp",
    "seed",
    "hostname",
    "platform",
}

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


# --------------------------------------------------------------------------------------
# provenance()
# --------------------------------------------------------------------------------------
def test_provenance_records_what_produced_a_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pyrocollapse", "run", "--seed", "7"])
    info = provenance(seed=7, device="cpu", cwd=tmp_path)
    assert set(info) == KEYS
    assert info["seed"] == 7 and info["device"] == "cpu"
    assert info["argv"] == ["pyrocollapse", "run", "--seed", "7"]
    assert set(info["versions"]) == {
        "pyrocollapse",
        "torch",
        "pyro-ppl",
        "arviz",
        "numpy",
        "python",
    }
    assert info["versions"]["python"] == platform.python_version()
    import numpy
    import torch

    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["versions"]["numpy"] == numpy.__version__
    assert info["versions"]["pyrocollapse"]
    stamp = datetime.datetime.fromisoformat(info["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds() < 60
    assert info["hostname"] and info["platform"] == platform.platform()
    json.dumps(info)  # plain JSON values
    # outside a repository (tmp_path is none, barring a repository above it)
    if git_state(tmp_path) == (None, None):
        assert info["git_commit"] is None and info["git_dirty"] is None


def test_device_may_be_a_torch_device_or_none():
    import torch

    assert provenance(device=torch.device("cpu"))["device"] == "cpu"
    assert provenance()["device"] is None and provenance()["seed"] is None


@needs_git
def test_git_commit_and_dirty_state(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert git_state(repo) == (None, None)  # no commit yet
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_state(repo) == (head, False)
    (repo / "untracked.txt").write_text("run outputs do not count")
    assert git_state(repo) == (head, False)
    (repo / "a.txt").write_text("2")
    assert git_state(repo) == (head, True)
    info = provenance(cwd=repo)
    assert info["git_commit"] == head and info["git_dirty"] is True


def test_git_failures_never_fail_the_run(tmp_path, monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", missing)
    assert git_state(tmp_path) == (None, None)

    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(subprocess, "run", slow)
    info = provenance(seed=1, cwd=tmp_path)
    assert info["git_commit"] is None and info["git_dirty"] is None


def test_git_is_asked_with_a_short_timeout(tmp_path, monkeypatch):
    seen = []

    def record(cmd, **kwargs):
        seen.append((cmd, kwargs["timeout"], kwargs["cwd"]))
        return subprocess.CompletedProcess(cmd, 128, "", "fatal: not a git repository")

    monkeypatch.setattr(subprocess, "run", record)
    assert git_state(tmp_path, timeout=0.5) == (None, None)
    assert seen == [(["git", "rev-parse", "--verify", "HEAD"], 0.5, tmp_path)]
    assert provenance_module.GIT_TIMEOUT <= 10


def test_missing_packages_are_none():
    versions = package_versions(("numpy", "surely-not-a-package-xyz"))
    assert versions["surely-not-a-package-xyz"] is None and versions["numpy"]


def test_docstring_example_runs():
    assert doctest.testmod(provenance_module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


# --------------------------------------------------------------------------------------
# run_experiment: metrics.json, notes, tracker
# --------------------------------------------------------------------------------------
def test_metrics_json_holds_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pyrocollapse", "run", "--epochs", "1"])
    out = tmp_path / "run"
    result = run_experiment(replace(TINY, seed=3), out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    prov = metrics["provenance"]
    assert set(prov) >= KEYS
    assert prov["seed"] == 3 and prov["device"] == "cpu"
    assert prov["argv"] == ["pyrocollapse", "run", "--epochs", "1"]
    assert prov["versions"]["pyro-ppl"] and prov["versions"]["arviz"]
    assert prov == result.metrics["provenance"]
    commit, _ = git_state()  # the working directory's repository, if any
    assert prov["git_commit"] == commit
    assert (prov["git_dirty"] is None) == (commit is None)


def test_without_echo_notes_are_log_records_and_nothing_is_printed(capsys, caplog):
    config = replace(
        TINY, prior="mixture", prior_options={"n_components": 2}, elbo="freebits",
        elbo_options={"free_bits": 0.25},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pyrocollapse"):
        run_experiment(config, progress=False)
    assert capsys.readouterr().out == ""
    notes = [r for r in caplog.records if r.name == "pyrocollapse.experiment"]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING
    assert notes[0].getMessage().startswith("note: --prior mixture does not factorise")


def test_with_echo_notes_stay_in_the_printed_header(capsys, caplog):
    config = replace(
        TINY, prior="mixture", prior_options={"n_components": 2}, elbo="freebits",
        elbo_options={"free_bits": 0.25},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pyrocollapse"):
        run_experiment(config, progress=False, echo=True)
    assert "note: --prior mixture does not factorise" in capsys.readouterr().out
    assert not [r for r in caplog.records if r.name == "pyrocollapse.experiment"]


def test_run_experiment_passes_the_tracker_to_fit():
    tracker = MemoryTracker()
    result = run_experiment(replace(TINY, epochs=2), progress=False, tracker=tracker)
    assert [s for s, _ in tracker.scalars] == [1, 2]
    assert tracker.scalars[-1][1]["elbo"] == result.history[-1].values["elbo"]
    assert tracker.hparams["config.epochs"] == 2 and tracker.hparams["config.prior"] == "standard"
    assert tracker.hparams["epochs"] == 2 and tracker.hparams["loss"] == "AnnealedELBO"
    assert not tracker.closed


def test_a_bad_tracker_is_refused_before_any_work(tmp_path):
    with pytest.raises(TypeError, match="tracker must be None"):
        run_experiment(TINY, tmp_path / "run", tracker=object())
    assert not (tmp_path / "run").exists()


def test_callbacks_actions_are_info_records(digits, caplog):
    import pyro

    from pyrocollapse.callbacks import AggressiveOnCollapse
    from pyrocollapse.elbo import PlainELBO
    from pyrocollapse.models import MLPVAE
    from pyrocollapse.train import fit

    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 2, hidden=(16,))
    cb = AggressiveOnCollapse(min_active_units=3)  # 2 latent dims: always "collapsed"
    with caplog.at_level(logging.INFO, logger="pyrocollapse.callbacks"):
        fit(
            vae.model, vae.guide, digits[:100], loss=PlainELBO(), epochs=1, batch_size=50,
            progress=False, callbacks=[cb], aggressive_max_inner=1,
        )  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.name == "pyrocollapse.callbacks"]
    assert said == [f"AggressiveOnCollapse: {cb.events[0][1]}"]
    assert said[0].startswith("AggressiveOnCollapse: aggressive encoder training from epoch 2")


def _prints(tree):
    """Each ``print(...)`` call with the tests of the ``if`` statements around it."""
    import ast

    out = []

    def visit(node, conditions):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
            out.append((node.lineno, conditions))
        for child in ast.iter_child_nodes(node):
            more = conditions
            if isinstance(node, ast.If) and child in node.body:
                more = [*conditions, ast.unparse(node.test)]
            visit(child, more)

    visit(tree, [])
    return out


def test_the_library_prints_only_output_that_was_asked_for():
    import ast
    import pathlib

    import pyrocollapse

    root = pathlib.Path(pyrocollapse.__file__).parent
    train = sorted(str(p.relative_to(root)) for p in (root / "train").glob("*.py"))
    experiment = sorted(str(p.relative_to(root)) for p in (root / "experiment").glob("*.py"))
    assert "experiment/running.py" in experiment
    for name in (*train, *experiment, "callbacks.py", "tracking.py", "provenance.py"):
        prints = _prints(ast.parse((root / name).read_text(encoding="utf-8")))
        if name == "experiment/running.py":  # the header, notes and report echo=True asks for
            assert prints and all(any("echo" in c for c in conds) for _, conds in prints)
        elif name == "train/callback.py":  # PrintProgress, a callback added to print
            assert len(prints) == 1
        else:
            assert prints == [], name
