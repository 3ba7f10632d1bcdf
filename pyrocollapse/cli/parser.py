"""The ``pyrocollapse`` command line's parser: the ``run``, ``compare`` and ``report``
sub-commands and their flags.

Building the parser and parsing with it import no torch, so ``--help``, ``--version`` and
usage errors answer at once; a usage error is one line ``pyrocollapse: error: ...`` and
exit status 2.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from pyrocollapse._names import ELBO_NAMES, PRIOR_NAMES
from pyrocollapse._run_summary import ADJUSTMENTS
from pyrocollapse.cli.arguments import _add_data_model_training, add_objective_arguments

#: The parser's description (the first line of :mod:`pyrocollapse.cli`'s docstring).
DESCRIPTION = "pyrocollapse: train VAEs against posterior collapse, diagnose it, compare remedies."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"pyrocollapse: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    """The command line's parser; building it and parsing with it import no torch (the help
    lists names from :mod:`pyrocollapse._names`), so ``--help``, ``--version`` and usage
    errors answer at once."""
    parser = _Parser(prog="pyrocollapse", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="train a VAE, print the collapse report, write a report folder",
        description="Train a VAE on a dataset, print progress and a collapse report, and write "
        "OUT/metrics.json, OUT/history.csv, OUT/posterior.nc, OUT/figures/*.png, OUT/report.html "
        "and OUT/model.pt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data_model_training(run)
    add_objective_arguments(run)
    run.add_argument(
        "--device",
        default=None,
        help="where to train and diagnose: cpu, cuda, cuda:1, ... (default: the CPU)",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice, all cores)",
    )
    run.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a JSON or YAML file of run settings (the fields of RunConfig, e.g. epochs: 30, "
        "prior: mixture, prior_options: {n_components: 5}); flags given on the command line "
        "override it",
    )
    run.add_argument("--seed", type=int, default=0, help="random seed")
    g = run.add_argument_group("output")
    g.add_argument("--out", default="runs/latest", help="report folder to write")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing, non-empty --out folder (and, without --resume, discard an "
        "interrupted run's checkpoint)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="write a training checkpoint every N epochs into OUT.partial/.checkpoint/ (removed "
        "when the run finishes), so that --resume can continue an interrupted run",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run into --out from its checkpoint (same options; "
        "keeps checkpointing every --checkpoint-every epochs, 1 by default); without a "
        "checkpoint, start afresh",
    )

    cmp = sub.add_parser(
        "compare",
        help="train every prior x objective x seed and compare the remedies",
        description="Train every combination of --priors, --elbos, --variants (model "
        "variants, optional) and --seeds (each into OUT/runs/<prior>__<elbo>__seed<k>/, or "
        "<prior>__<elbo>__<variant>__seed<k>/ with --variants, a full report folder) and "
        "write OUT/runs.csv, "
        "OUT/comparison.csv (mean and spread over seeds, and each cell's paired per-seed "
        "differences against --baseline with 95% t-intervals) and OUT/figures/au_vs_nll.png "
        "(active units and MI against held-out NLL). Runs with the same seed share their "
        "train/held-out split; a cell's rank is 1 + the number of cells whose paired "
        "difference of held-out IW log-likelihood to it has an interval above 0, so cells "
        "that cannot be told apart are printed as ties (=1). "
        "Every option value of the grid is checked before any run (exit 2). A finished run "
        "is reused when the grid is started again only if its folder is complete and its "
        "configuration fingerprint matches; otherwise it is trained again and the reason "
        "said. A failed run is recorded and does not stop the others; the command then "
        "exits 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data_model_training(cmp)
    cmp.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a JSON or YAML file: priors, elbos, variants (lists), seeds, baseline, adjust, jobs, "
        "prior_options, elbo_options and variant_options (per name) and base (the fields of "
        "RunConfig); flags given on the command line override it",
    )
    g = cmp.add_argument_group("grid")
    g.add_argument(
        "--priors", default="standard", help=f"comma-separated, from: {', '.join(PRIOR_NAMES)}"
    )
    g.add_argument(
        "--elbos",
        default="elbo,annealed",
        help=f"comma-separated, from: {', '.join(ELBO_NAMES)}",
    )
    g.add_argument(
        "--prior-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="option for one prior, e.g. mixture.n_components=10 (repeatable)",
    )
    g.add_argument(
        "--elbo-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="option for one objective, e.g. freebits.free_bits=0.5 (repeatable)",
    )
    g.add_argument(
        "--variants",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="model variants, a third axis of the grid (comma-separated or repeatable), each "
        "configured by --variant-option; runs go into OUT/runs/<prior>__<elbo>__<variant>__"
        "seed<k>/ (default: no variant axis)",
    )
    g.add_argument(
        "--variant-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="model option of one variant, applied on top of --model-option, e.g. "
        "skip.skip=true or bn.posterior=batchnorm or refine.refine_steps=5 (repeatable)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds 0..SEEDS-1 per combination (at least 2 for intervals; 3 or more to rank)",
    )
    g.add_argument(
        "--from-run",
        default=None,
        metavar="RUN_FOLDER",
        help="run the grid that a run's report suggests (its causes' remedies against the "
        "run's own prior and objective), with that run's data, model and training settings "
        "(read from RUN_FOLDER/metrics.json; --priors, --elbos and the data, model and "
        "training options are then taken from there)",
    )
    g.add_argument(
        "--baseline",
        default=None,
        metavar="PRIOR:OBJECTIVE[:VARIANT]",
        help="the cell every other cell is compared with, paired by seed (PRIOR:OBJECTIVE:"
        "VARIANT with --variants); None: the first of --priors with the first of --elbos "
        "(and the first of --variants)",
    )
    g.add_argument(
        "--adjust",
        default="none",
        choices=ADJUSTMENTS,
        help="multiple-comparison adjustment: none (each interval and each pairwise test of "
        "the ranking at 95%% on its own) or bonferroni (they hold jointly at 95%% over the "
        "grid)",
    )
    g.add_argument("--jobs", type=int, default=1, help="runs in parallel worker processes")
    g.add_argument("--out", default="runs/compare", help="grid folder (reused to resume)")

    rep = sub.add_parser(
        "report",
        help="re-render a report folder's figures and report.html from its saved files",
        description="Rebuild OUT/report.html and the figures that come from metrics.json and "
        "history.csv (figures that need the model, such as traversals, are kept).",
    )
    rep.add_argument("folder", help="a report folder written by 'pyrocollapse run'")
    rep.add_argument(
        "--no-figures", action="store_true", help="only re-render report.html, not the figures"
    )
    rep.add_argument(
        "--self-contained",
        action="store_true",
        help="embed the figures in report.html (one file that needs nothing beside it)",
    )
    rep.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    return parser


def _version() -> str:
    from pyrocollapse import __version__

    return f"pyrocollapse {__version__}"
