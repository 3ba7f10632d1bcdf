"""pyrocollapse: train VAEs against posterior collapse, diagnose it, compare remedies.

``pyrocollapse run`` trains a VAE on a dataset, prints progress and a collapse report, and
writes a report folder (see :mod:`pyrocollapse.report_folder`); ``pyrocollapse report DIR``
re-renders a folder's figures and ``report.html`` from its saved files.
``python -m pyrocollapse`` is the same command.

``--help``, ``--version`` and usage errors import no torch (the help lists the registered
names from :mod:`pyrocollapse._names`), so they answer in a fraction of a second; names
are checked against the registries once the arguments parse.

Exit status: 0 on success; 2 for a user error (a bad option, name or value, a missing or
unsuitable file or folder), printed as one line ``pyrocollapse: error: ...`` on stderr;
1 for an unexpected failure while running; 130 when interrupted (Ctrl-C). No traceback
is printed unless ``--verbose`` is given, which adds it above the one-line message.

The command is a package of one concept per module: :mod:`~pyrocollapse.cli.options`
(``KEY=VALUE`` options), :mod:`~pyrocollapse.cli.arguments` (the shared argument
groups), :mod:`~pyrocollapse.cli.parser` (the parser), :mod:`~pyrocollapse.cli.fields`
(RunConfig fields from the flags), :mod:`~pyrocollapse.cli.config` (``--config`` files)
and one module per sub-command (:mod:`~pyrocollapse.cli.command_run`,
:mod:`~pyrocollapse.cli.command_compare`, :mod:`~pyrocollapse.cli.command_report`); this
module holds the entry point, the exit statuses and the error reporting.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

# ``X as X`` marks what is importable from here besides ``__all__``, as before
# ``pyrocollapse.cli`` became a package (the Lightning launcher builds its parser from the
# argument groups and fields); private helpers are imported from their submodule.
from pyrocollapse.cli.arguments import RUN_ESTIMATORS as RUN_ESTIMATORS
from pyrocollapse.cli.arguments import add_data_model_arguments as add_data_model_arguments
from pyrocollapse.cli.arguments import add_objective_arguments as add_objective_arguments
from pyrocollapse.cli.command_compare import compare_command
from pyrocollapse.cli.command_report import report_command
from pyrocollapse.cli.command_run import run
from pyrocollapse.cli.fields import data_model_fields as data_model_fields
from pyrocollapse.cli.fields import objective_fields as objective_fields
from pyrocollapse.cli.options import parse_options
from pyrocollapse.cli.parser import _build_parser

__all__ = ["main", "parse_options"]

#: Exceptions that mean "the user asked for something that cannot be done": exit status 2.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    NotImplementedError,
)


class UsageError(Exception):
    """A user error detected by the CLI itself."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyrocollapse`` console script; returns the exit status."""
    if isinstance(argv, str) or not (argv is None or isinstance(argv, (list, tuple))):
        raise TypeError(
            f"argv must be a list of strings such as ['run', '--epochs', '5'], got "
            f"{type(argv).__name__} {argv!r}"
        )
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    with _library_logging(verbose):
        return _main(argv, verbose)


class _Stderr(logging.StreamHandler):
    """A handler that writes to the current ``sys.stderr`` (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _library_logging:
    """Show the library's log records (progress lines, notes, fallbacks) on stderr while
    a command runs: INFO, or DEBUG with ``--verbose``; the logger is restored after."""

    def __init__(self, verbose: bool) -> None:
        self.level = logging.DEBUG if verbose else logging.INFO

    def __enter__(self) -> None:
        self.log = logging.getLogger("pyrocollapse")
        self.old = self.log.level
        self.handler = _Stderr()
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.log.addHandler(self.handler)
        self.log.setLevel(self.level)

    def __exit__(self, *exc: object) -> None:
        self.log.removeHandler(self.handler)
        self.log.setLevel(self.old)


def _main(argv: list[str], verbose: bool) -> int:
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        return {"run": run, "compare": compare_command, "report": report_command}[args.command](
            args
        )
    except SystemExit as e:  # argparse: --help, --version, usage errors (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except USER_ERRORS as e:
        _report_error(e, verbose)
        return 2
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print("pyrocollapse: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as e:  # unexpected failures
        _report_error(e, verbose, unexpected=True)
        return 1


def _report_error(e: BaseException, verbose: bool, *, unexpected: bool = False) -> None:
    """One line on stderr (the traceback above it with ``verbose``)."""
    if verbose:
        traceback.print_exc()
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = lines[0] if lines else type(e).__name__
    if unexpected:
        message = f"unexpected {type(e).__name__}: {message}"
    if len(lines) > 1 or unexpected:
        message += " (rerun with --verbose for the details)" if not verbose else ""
    print(f"pyrocollapse: error: {message}", file=sys.stderr)
