"""The command line starts fast, ``python -m pyrocollapse`` is the console script, the
package ships ``py.typed``, and the version has one source (issue 18, item 6).

``--help``, ``--version`` and argument errors must not import torch, Pyro, ArviZ, pandas,
matplotlib or scikit-learn: the help lists names from :mod:`pyrocollapse._names`, which
must equal the registries. Wall times are not asserted (noisy machines); the imports are.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.resources
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pyrocollapse
from pyrocollapse import _names
from pyrocollapse.cli import main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "pyro", "arviz", "pandas", "matplotlib", "sklearn")


def _python_m(*args: str, importtime: bool = False) -> tuple[subprocess.CompletedProcess, set]:
    """Run ``python -m pyrocollapse ARGS``; return the result (import-time lines removed
    from stderr) and the top-level packages it imported."""
    flags = ["-X", "importtime"] if importtime else []
    res = subprocess.run(
        [sys.executable, *flags, "-m", "pyrocollapse", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    imported, rest = set(), []
    for line in res.stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "package":  # the header line
                imported.add(name.split(".")[0])
        else:
            rest.append(line)
    res.stderr = "".join(rest)
    return res, imported


# --------------------------------------------------------------------------------------
# --help, --version and argument errors import nothing heavy
# --------------------------------------------------------------------------------------
_FAST_CASES = [
    (["--help"], 0, "stdout", "usage: pyrocollapse [-h] [--version] {run,compare,report}"),
    (["run", "--help"], 0, "stdout", "one of: " + ", ".join(_names.PRIOR_NAMES)),
    (
        ["compare", "--help"],
        0,
        "stdout",
        "comma-separated, from: " + ", ".join(_names.ELBO_NAMES),
    ),
    (["report", "--help"], 0, "stdout", "--no-figures"),
    (["--version"], 0, "stdout", f"pyrocollapse {pyrocollapse.__version__}"),
    (["run", "--epochs", "two"], 2, "stderr", "argument --epochs: invalid int value: 'two'"),
    (["run", "--on-collapse", "panic"], 2, "stderr", "argument --on-collapse: invalid choice"),
    (["run", "--no-such-option"], 2, "stderr", "unrecognized arguments: --no-such-option"),
    (["compare", "--seeds", "x"], 2, "stderr", "argument --seeds: invalid int value: 'x'"),
    (["frobnicate"], 2, "stderr", "argument command: invalid choice: 'frobnicate'"),
    (["report"], 2, "stderr", "the following arguments are required: folder"),
    (["run", "--estimators", "kl,mutual"], 2, "stderr", "names unknown estimators ['mutual']"),
    (["compare", "--estimators", "nope"], 2, "stderr", "names unknown estimators ['nope']"),
]


@pytest.mark.parametrize(
    "args, code, stream, text", _FAST_CASES, ids=[" ".join(c[0]) for c in _FAST_CASES]
)
def test_help_version_and_argument_errors_import_nothing_heavy(args, code, stream, text):
    res, imported = _python_m(*args, importtime=True)
    assert res.returncode == code, res
    assert text in " ".join(getattr(res, stream).split()), getattr(res, stream)
    if code == 2:  # one line, as for every user error
        assert res.stdout == ""
        assert res.stderr.startswith("pyrocollapse: error: ") and res.stderr.count("\n") == 1
    assert "pyrocollapse" in imported  # the parse of -X importtime's output works
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_importing_the_cli_and_building_its_parser_import_nothing_heavy():
    code = (
        "import sys, pyrocollapse.cli as c\n"
        "c._build_parser()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_a_name_that_needs_the_registries_is_still_a_clear_exit_2():
    # validating --prior needs the registry (and so torch), after argparse has succeeded
    res, _ = _python_m("run", "--prior", "vampp", "--out", "never-written")
    assert res.returncode == 2 and res.stdout == ""
    valid = ", ".join(_names.PRIOR_NAMES)
    assert res.stderr == f"pyrocollapse: error: unknown prior 'vampp'; valid names: {valid}\n"
    assert not (ROOT / "never-written").exists()


# --------------------------------------------------------------------------------------
# the light name lists are the registries' names
# --------------------------------------------------------------------------------------
def _registries() -> dict[str, tuple[str, ...]]:
    from pyrocollapse.data import DATASETS
    from pyrocollapse.diagnostics import ESTIMATORS
    from pyrocollapse.experiment import RUN_ONLY_ESTIMATORS, objectives
    from pyrocollapse.models import MODELS
    from pyrocollapse.priors import PRIORS
    from pyrocollapse.schedules import SCHEDULES

    return {
        "PRIOR_NAMES": tuple(PRIORS.names()),
        "ELBO_NAMES": tuple(objectives().names()),
        "DATASET_NAMES": tuple(DATASETS.names()),
        "MODEL_NAMES": tuple(MODELS.names()),
        "SCHEDULE_NAMES": tuple(SCHEDULES.names()),
        "ESTIMATOR_NAMES": tuple(ESTIMATORS),
        "RUN_ESTIMATOR_NAMES": (*ESTIMATORS, *RUN_ONLY_ESTIMATORS),
    }


@pytest.mark.parametrize("constant", sorted(_names.__all__))
def test_the_light_name_lists_equal_the_registries(constant):
    registered = _registries()[constant]
    light = getattr(_names, constant)
    assert isinstance(light, tuple) and all(isinstance(n, str) for n in light)
    assert light == registered, (
        f"pyrocollapse/_names.py {constant} is out of date: the registry has "
        f"{registered}; missing there: {sorted(set(registered) - set(light))}, "
        f"not registered: {sorted(set(light) - set(registered))}"
    )


def test_every_light_list_is_checked():
    assert set(_names.__all__) == set(_registries())


def test_help_lists_every_registered_name(capsys):
    regs = _registries()
    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for what, names in (
        ("--dataset DATASET one of:", regs["DATASET_NAMES"]),
        ("--model MODEL one of:", regs["MODEL_NAMES"]),
        ("--prior PRIOR one of:", regs["PRIOR_NAMES"]),
        ("--elbo ELBO one of:", regs["ELBO_NAMES"]),
        ("KL-weight schedule for any objective:", regs["SCHEDULE_NAMES"]),
        ("comma-separated estimators to run, from:", regs["RUN_ESTIMATOR_NAMES"]),
    ):
        assert f"{what} {', '.join(names)}" in out, what
    assert main(["compare", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"--priors PRIORS comma-separated, from: {', '.join(regs['PRIOR_NAMES'])}" in out
    assert f"--elbos ELBOS comma-separated, from: {', '.join(regs['ELBO_NAMES'])}" in out


# --------------------------------------------------------------------------------------
# python -m pyrocollapse is the console script; one version source
# --------------------------------------------------------------------------------------
def test_version_is_the_package_version_and_the_installed_metadata():
    res, _ = _python_m("--version")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout == f"pyrocollapse {pyrocollapse.__version__}\n"
    assert importlib.metadata.version("pyrocollapse") == pyrocollapse.__version__, (
        "the installed metadata is stale: reinstall with "
        "pip install -c constraints.txt -e '.[dev]' --no-deps"
    )


def test_setup_cfg_reads_the_version_from_the_package_and_ships_py_typed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert cfg["metadata"]["version"].strip() == "attr: pyrocollapse.__version__"
    shipped = cfg["options.package_data"]["pyrocollapse"].replace(",", " ").split()
    assert "py.typed" in shipped and "templates/*.html" in shipped
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d+)*", pyrocollapse.__version__)


def test_py_typed_is_in_the_installed_package():
    assert importlib.resources.files("pyrocollapse").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["--version"],
        ["run", "--epochs", "two"],
        ["frobnicate"],
        ["report", "/no/such/report/folder"],
    ],
)
def test_python_m_pyrocollapse_behaves_like_the_console_script(args):
    script = Path(sys.executable).with_name("pyrocollapse")
    if not script.is_file():
        script = Path(shutil.which("pyrocollapse") or "")
    if not script.is_file():
        pytest.skip("the pyrocollapse console script is not installed next to this Python")
    res_m, _ = _python_m(*args)
    res_s = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    assert (res_m.returncode, res_m.stdout, res_m.stderr) == (
        res_s.returncode,
        res_s.stdout,
        res_s.stderr,
    )


def test_a_built_wheel_ships_py_typed_main_and_the_package_version(tmp_path):
    """Build a wheel from a copy of the sources (no network: the running setuptools)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyrocollapse", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = tmp_path / "dist" / res.stdout.strip().splitlines()[-1]
    assert wheel.name.startswith(f"pyrocollapse-{pyrocollapse.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {
            "pyrocollapse/py.typed",
            "pyrocollapse/__main__.py",
            "pyrocollapse/_names.py",
        } <= names
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"\nVersion: {pyrocollapse.__version__}\n" in metadata
