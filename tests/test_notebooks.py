"""The tutorial notebooks: their jupytext sources lint clean, the committed notebooks are
exactly what ``tutorials/build_notebooks.py`` writes from the sources (no outputs), and
they run top to bottom in smoke mode.

Each notebook ``tutorials/NN_name.ipynb`` is generated from its jupytext percent-format
source ``tutorials/NN_name.py``, the single source of truth.

Executing a notebook starts a Jupyter kernel (the ``python3`` kernel of this environment)
with ``PYROCOLLAPSE_SMOKE=1``, which shrinks every budget in the notebooks, and
``MPLBACKEND=Agg``. Any cell error fails the test with the cell and its traceback.
Kernel-side warnings do not affect pytest; the notebooks' files go to a temporary folder.
The tests assert behaviour, never wall time (a loaded machine must not fail them); how
long the smoke runs take is for ``benchmarks/``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = [
    pytest.mark.notebooks,
    # jupyter_client's and zmq's event-loop plumbing, raised in this process, not ours
    pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_core.*"),
]

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
SOURCES = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
REBUILD = "run python tutorials/build_notebooks.py"


def _builder():
    pytest.importorskip("jupytext")
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", TUTORIALS / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str):
    return nbformat.read(TUTORIALS / name, as_version=4)


def test_every_notebook_has_a_source():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"
    assert NOTEBOOKS == [Path(s).with_suffix(".ipynb").name for s in SOURCES], (
        "tutorials/*.ipynb and their sources tutorials/NN_*.py differ: write the source of a new "
        "notebook with jupytext --set-formats ipynb,py:percent NOTEBOOK (or "
        f"delete the stray file) and {REBUILD}"
    )
    assert [p.name for p in _builder().sources()] == SOURCES


def test_build_script_finds_nothing_out_of_date(capsys):
    assert _builder().main(["--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_in_sync_with_its_source_and_has_no_outputs(name):
    builder = _builder()
    source = TUTORIALS / Path(name).with_suffix(".py").name
    built = builder.build(source)  # raises unless the header pairs it: formats ipynb,py:percent
    committed = _read(name)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in built.cells
    ], f"{name} differs from its source {source.name}; {REBUILD}"
    assert committed.metadata["kernelspec"]["name"] == "python3"
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} has outputs; {REBUILD} to strip them"
            )
    # ids, metadata, formatting: the file is byte for byte what the builder writes
    assert (TUTORIALS / name).read_text(encoding="utf-8") == builder.render(built), (
        f"{name} is not exactly what build_notebooks.py writes (cell ids or metadata); {REBUILD}"
    )


def _ruff() -> str | None:
    """The ruff of this environment, else the first on PATH."""
    here = Path(sys.executable).parent / ("ruff.exe" if sys.platform == "win32" else "ruff")
    return str(here) if here.exists() else shutil.which("ruff")


def test_notebook_sources_pass_ruff():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed")
    done = subprocess.run(
        [ruff, "check", "--no-cache", "--output-format", "concise", str(TUTORIALS)],
        cwd=TUTORIALS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"ruff check tutorials failed:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_follows_the_conventions(name):
    nb = _read(name)
    assert re.match(r"# \d\. ", nb.cells[0].source), "the first cell is the '# N. Title' heading"
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    for line in (
        'SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"',
        "pyro.set_rng_seed(0)",
        "torch.set_num_threads(2)",
        "%matplotlib inline",
    ):
        assert line in setup, f"the set-up cell of {name} lacks {line!r}"
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    assert f"({name})" in readme, f"tutorials/README.md does not link {name}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PYROCOLLAPSE_SMOKE", "1")  # read by the kernel we start; restored after
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("data", {}).get("image/png") for o in outputs), (
        f"{name} displayed no figure: a Figure left as a cell's last expression should render"
    )
    assert "smoke mode: True" in "".join(o.get("text", "") for o in outputs)
    assert not any(tmp_path.iterdir()), f"{name} left files in its working folder"
