"""``python -m pyrocollapse ...``: the ``pyrocollapse`` command (see :mod:`pyrocollapse.cli`)."""

import sys

from pyrocollapse.cli import main

if __name__ == "__main__":
    sys.exit(main())
