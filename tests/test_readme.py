"""Every command and Python snippet in README.md and tutorials/README.md runs as written.

Commands run in a fresh working folder, in the order written (a later command may read an
earlier one's output), with a small budget: ``--epochs`` set to 1, ``--seeds`` to 1, the
diagnostics' sample sizes to their minimum and the sequences data set to 500 sequences (the
*small-budget switch*, :func:`_budget`).
Python blocks of one file run in order in one namespace, like a reader's session. A
command that cannot run here (it needs GPUs, a network install, an interactive program, or
is itself a test run) is listed in :data:`NOT_RUN` with the reason; any other command in a
README must run, so a new example cannot go untested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = ("README.md", "tutorials/README.md")

#: Commands not run here, by prefix, with the reason.
NOT_RUN = {
    "make ": "the set-up and test commands themselves (CI runs `make test`)",
    "python3 -m venv": "set-up (done by `make setup`)",
    "pip install": "installs from the network",
    ".venv/bin/python -m pip install": "installs from the network",
    ".venv/bin/jupyter notebook": "starts an interactive server",
    ".venv/bin/jupyter nbconvert": "a full-budget notebook run (smoke runs: tests/test_notebooks.py)",
    "PYROCOLLAPSE_SMOKE=1 .venv/bin/jupyter execute": "executed by tests/test_notebooks.py",
    ".venv/bin/python -m pytest": "a test run",
    ".venv/bin/python benchmarks/": "a benchmark (timings, not behaviour)",
    ".venv/bin/python tutorials/build_notebooks.py": "checked by tests/test_notebooks.py",
    ".venv/bin/python tutorials/build.py": "checked by tests/test_notebooks.py",
    "python -m pyrocollapse.lightning --accelerator gpu": "needs GPUs",
    "MASTER_ADDR=": "needs several GPU nodes",
    "torchrun": "needs several GPU nodes",
}

#: Python blocks not run, by a line they contain, with the reason.
NOT_RUN_PYTHON = {
    'accelerator="gpu"': "needs GPUs",
}


def _blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced block."""
    out, lang, lines, start = [], None, [], 0
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^```(\w*)\s*$", line)
        if m and lang is None:
            lang, lines, start = m.group(1) or "text", [], i
        elif line.startswith("```") and lang is not None:
            out.append((lang, "\n".join(lines), start))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def _commands(text: str) -> list[str]:
    """Shell commands of a bash block: continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            cmd = re.sub(r"\s+#.*$", "", current).strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
            current = ""
    return out


def _skip_reason(cmd: str) -> str | None:
    for prefix, why in NOT_RUN.items():
        if cmd.startswith(prefix):
            return why
    return None


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


def _budget(argv: list[str]) -> list[str]:
    """The small-budget switch: the same command with 1 epoch, 1 seed, the smallest
    diagnostic samples and (the sequences data set) 500 of its sequences."""
    argv = list(argv)
    if "--epochs" in argv:
        argv = _set(argv, "--epochs", "1")
    if argv and argv[0] in ("run", "compare"):
        argv = _set(argv, "--epochs", "1")
        argv = _set(argv, "--bootstrap", "0")
        argv = _set(argv, "--importance-samples", "50")
        argv = _set(argv, "--posterior-samples", "5")
        argv = _set(argv, "--posterior-points", "20")
        if "--no-progress" not in argv:
            argv.append("--no-progress")
    if argv and argv[0] == "compare":
        argv = _set(argv, "--seeds", "1")
    if "sequences" in argv and not any(o.startswith("n=") for o in argv):
        argv += ["--dataset-option", "n=500"]  # a quarter of the bundled sequences
    return argv


def _all_commands() -> list[tuple[str, str]]:
    out = []
    for name in READMES:
        for lang, text, line in _blocks(ROOT / name):
            if lang in ("bash", "sh", "shell"):
                out.extend((f"{name}:{line}", c) for c in _commands(text))
    return out


def test_every_readme_command_is_run_or_excused():
    runnable = ("pyrocollapse ", "python -m pyrocollapse")
    for where, cmd in _all_commands():
        assert cmd.startswith(runnable) or _skip_reason(cmd), (
            f"{where}: command {cmd!r} is neither run by this test nor listed in NOT_RUN"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", READMES)
def test_readme_runs_as_written(name, tmp_path, monkeypatch, capsys):
    """The README read top to bottom: its commands (small budget) and Python blocks (one
    namespace), in order, in one working folder."""
    from pyrocollapse.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__readme__"}
    for lang, text, line in _blocks(ROOT / name):
        where = f"{name}:{line}"
        if lang == "python":
            if any(key in text for key in NOT_RUN_PYTHON):
                continue
            try:
                exec(compile(text, where, "exec"), namespace)
            except Exception as e:  # the block and the error, not just the error
                pytest.fail(f"{where}: block failed: {type(e).__name__}: {e}\n{text}")
            capsys.readouterr()
            continue
        if lang not in ("bash", "sh", "shell"):
            continue
        for cmd in _commands(text):
            if _skip_reason(cmd):
                continue
            argv = shlex.split(cmd)
            if argv[0] == "pyrocollapse":
                code = main(_budget(argv[1:]))
                out = capsys.readouterr()
                assert code == 0, f"{where}: {cmd!r} exited {code}\n{out.out[-2000:]}\n{out.err[-2000:]}"
            else:  # python -m pyrocollapse.lightning ...: its own processes
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                proc = subprocess.run(
                    _lightning_budget([sys.executable, *argv[1:]]), cwd=tmp_path, env=env,
                    capture_output=True, text=True, timeout=900,
                )  # fmt: skip
                assert proc.returncode == 0, f"{where}: {cmd!r}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _lightning_budget(argv: list[str]) -> list[str]:
    return _set(list(argv), "--epochs", "1") if "--epochs" in argv else argv
