"""The ``report`` sub-command: re-render a report folder's figures and ``report.html`` from
its saved files.
"""

from __future__ import annotations

import argparse


def report_command(args: argparse.Namespace) -> int:
    """The ``report`` sub-command: re-render a report folder from its saved files."""
    from pyrocollapse.report_folder import rerender

    page, figures = rerender(
        args.folder, figures=not args.no_figures, self_contained=args.self_contained
    )
    embedded = ", figures embedded" if args.self_contained else ""
    print(f"re-rendered {page} ({len(figures)} figures rebuilt{embedded})")
    return 0
