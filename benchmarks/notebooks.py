"""Wall time of each tutorial notebook in smoke mode (``PYROCOLLAPSE_SMOKE=1``).

``tests/test_notebooks.py`` checks that every notebook runs and what it shows, never how
long it takes (a test must not fail on a loaded machine); the times live here. The
target is about 30 s per notebook in smoke mode on an idle machine.

Usage::

    python benchmarks/notebooks.py                 # every notebook in tutorials/
    python benchmarks/notebooks.py 01_quickstart   # those whose name contains a word
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
#: Seconds per notebook in smoke mode that the tutorials aim at.
TARGET = 30.0


def main() -> None:
    import nbclient
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose name holds one")
    args = parser.parse_args()
    os.environ["PYROCOLLAPSE_SMOKE"] = "1"
    os.environ["MPLBACKEND"] = "Agg"
    notebooks = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:
        notebooks = [p for p in notebooks if any(n in p.name for n in args.names)]
    print(f"{'notebook':<40} {'seconds':>8}  target {TARGET:.0f} s")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as tmp:
            client = nbclient.NotebookClient(
                nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp}}
            )
            start = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - start
        flag = "" if seconds <= TARGET else "  over target"
        print(f"{path.name:<40} {seconds:8.1f}{flag}")


if __name__ == "__main__":
    main()
