"""Write the tutorial notebooks (.ipynb) from their jupytext sources (.py).

Each notebook ``tutorials/NN_name.ipynb`` is generated from ``tutorials/NN_name.py``, a
jupytext percent-format script (``# %%`` code cells, ``# %% [markdown]`` text cells, magics
commented as ``# %matplotlib inline``) whose header pairs it with the notebook
(``formats: ipynb,py:percent``). The ``.py`` files are the source of truth: edit them, then::

    python tutorials/build_notebooks.py            # rewrite every notebook that changed
    python tutorials/build_notebooks.py --check    # exit 1 if a notebook is out of date

The notebooks are written without outputs, with stable cell ids (``01-00``, ``01-01``, ...:
the notebook's number and the cell's position), the kernelspec of the source's header and a
fixed ``language_info``, so that rebuilding changes nothing. ``tests/test_notebooks.py``
fails when a committed notebook differs from what this script writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent

#: The pairing every source declares in its jupytext header.
FORMATS = "ipynb,py:percent"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


def sources() -> list[Path]:
    """The notebook sources, ``tutorials/NN_*.py``, in order."""
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def build(source: Path | str) -> nbformat.NotebookNode:
    """The notebook of the jupytext source ``source`` (a path, or a name in ``tutorials/``)."""
    source = HERE / source if isinstance(source, str) else Path(source)
    nb = jupytext.read(source, fmt="py:percent")
    formats = nb.metadata.get("jupytext", {}).get("formats")
    if formats != FORMATS:
        raise ValueError(f"{source.name}: the jupytext header must pair it with formats: {FORMATS}")
    nb.metadata = {
        "jupytext": {"formats": FORMATS},
        "kernelspec": dict(nb.metadata.get("kernelspec") or KERNELSPEC),
        "language_info": dict(LANGUAGE_INFO),
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.name[:2]}-{i:02d}"  # stable ids: rebuilding changes nothing
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The notebook as the text written to disk."""
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the notebooks are up to date"
    )
    args = parser.parse_args(argv)
    stale = []
    for source in sources():
        path = source.with_suffix(".ipynb")
        text = render(build(source))
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            if args.check:
                stale.append(path.name)
            else:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(HERE.parent)}")
    expected = {s.with_suffix(".ipynb").name for s in sources()}
    strays = sorted(p.name for p in HERE.glob("*.ipynb") if p.name not in expected)
    if strays:
        print(
            f"no .py source for {', '.join(strays)}: create it with "
            "jupytext --set-formats ipynb,py:percent NOTEBOOK, or delete the notebook",
            file=sys.stderr,
        )
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python tutorials/build_notebooks.py",
            file=sys.stderr,
        )
    return 1 if stale or strays else 0


if __name__ == "__main__":
    sys.exit(main())
