"""``python -m pyrocollapse.lightning``: runs :func:`pyrocollapse.lightning.main`.

The launcher's classes live in the package's modules, so they are
``pyrocollapse.lightning.*`` (not ``__main__.*``) in pickles and checkpoints.
"""

import sys

from pyrocollapse.lightning.launcher import main

if __name__ == "__main__":
    sys.exit(main())
