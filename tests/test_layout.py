"""The package's house rules (issue 20): no module over ~800 lines, and tests mirror the layout.

* Every module of ``pyrocollapse`` (and of ``pyrocollapse.models``, installed from
  ``models/``) is at most :data:`MAX_LINES` lines long.
* Every subpackage ``pyrocollapse/<name>/`` has its tests in ``tests/<name>/``, and every
  test folder names a subpackage (``tests/gallery/`` is the shared gallery of Pyro
  programs, not tests). Tests of top-level modules and of cross-cutting behaviour (bad
  input, devices, docs, README, notebooks) stay in ``tests/``.
* Test files have unique base names: pytest's default ("prepend") import mode imports
  ``tests/<name>/test_x.py`` as the top-level module ``test_x``, so two files of one name
  in different folders would collide at collection.
* A test file imports another test file only from its own folder (that folder is on
  ``sys.path`` when it runs); what several folders share lives in a support module at the
  top of ``tests/`` (``linear_gaussian.py``, ``model_cases.py``) or in ``tests/gallery/``.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: Package folders by the name their tests folder takes (``pyrocollapse.models`` lives in
#: ``models/`` at the top of the repository).
SOURCES = {"pyrocollapse": ROOT / "pyrocollapse", "models": ROOT / "models"}
MAX_LINES = 800
#: Folders under ``tests/`` that hold shared test programs, not tests of a subpackage.
SUPPORT_FOLDERS = {"gallery"}


def _modules() -> list[Path]:
    return sorted(p for folder in SOURCES.values() for p in folder.rglob("*.py"))


def _subpackages() -> set[str]:
    """Names of the subpackages that get a test folder: ``pyrocollapse``'s and ``models``."""
    names = {
        p.name
        for p in SOURCES["pyrocollapse"].iterdir()
        if p.is_dir() and (p / "__init__.py").is_file()
    }
    return names | {"models"}


def _test_folders() -> set[str]:
    return {
        p.name
        for p in TESTS.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and p.name not in SUPPORT_FOLDERS
    }


def test_the_layout_is_seen() -> None:
    """The checks below look at the real tree (a wrong root would make them pass vacuously)."""
    assert len(_modules()) > 100
    assert {"elbo", "priors", "train", "diagnostics", "data", "models"} <= _subpackages()
    assert {"elbo", "priors", "train", "diagnostics"} <= _test_folders()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_the_size_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(ROOT)} has {lines} lines (limit {MAX_LINES}): split it by concept"
    )


def test_every_subpackage_has_a_test_folder() -> None:
    missing = sorted(
        name for name in _subpackages() if not any((TESTS / name).glob("test_*.py"))
    )
    assert not missing, f"subpackages without tests/<name>/test_*.py: {missing}"


def test_every_test_folder_names_a_subpackage() -> None:
    stray = sorted(_test_folders() - _subpackages())
    assert not stray, (
        f"tests/ folders that name no subpackage of pyrocollapse: {stray}; accepted: "
        f"{sorted(_subpackages())} (or a support folder: {sorted(SUPPORT_FOLDERS)})"
    )


def test_test_files_have_unique_names() -> None:
    counts = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [name for name, n in counts.items() if n > 1]
    # and no test folder is a package, which would change how pytest imports its files
    assert not [p for p in TESTS.rglob("__init__.py") if p.parent.name not in SUPPORT_FOLDERS]


def test_test_files_import_test_files_only_from_their_own_folder() -> None:
    wrong = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top.startswith("test_") and not (path.parent / f"{top}.py").is_file():
                    wrong.append(f"{path.relative_to(ROOT)} imports {top}")
    assert not wrong, f"move what is shared into a support module of tests/: {wrong}"
