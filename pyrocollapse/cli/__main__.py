"""``python -m pyrocollapse.cli ...``: the ``pyrocollapse`` command, as ``python -m pyrocollapse``."""

import sys

from pyrocollapse.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
