"""The ``run`` sub-command: train one VAE, print its collapse report, write its report
folder (through :func:`pyrocollapse.experiment.run_experiment`, looked up when called).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from pyrocollapse.cli.config import _defaults_of, _merge_config, _read_config
from pyrocollapse.cli.fields import _base_config, _estimators, objective_fields


def run(args: argparse.Namespace) -> int:
    """The ``run`` sub-command: one run through :func:`pyrocollapse.experiment.run_experiment`."""
    _estimators(args.estimators)  # before torch is imported: a typo answers at once
    from dataclasses import replace

    from pyrocollapse.experiment import run_experiment

    config = replace(_base_config(args), **objective_fields(args), seed=args.seed)
    if args.config is not None:
        defaults = _defaults_of(args)
        default = replace(_base_config(defaults), **objective_fields(defaults), seed=defaults.seed)
        config = _merge_config(_read_config(args.config), config, default)
    config = config.validate()
    if args.threads is not None:
        import torch

        from pyrocollapse._validation import check_int

        torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
    # on a terminal fit draws bars; elsewhere it logs periodic progress lines (stderr)
    progress = not args.no_progress
    try:
        run_experiment(
            config,
            args.out,
            overwrite=args.overwrite,
            progress=progress,
            echo=True,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            device=args.device,
        )
    except KeyboardInterrupt:
        from pyrocollapse.experiment import work_folder

        checkpoint = work_folder(args.out) / ".checkpoint"
        if (args.checkpoint_every is not None or args.resume) and any(checkpoint.glob("*.pt")):
            if args.verbose:
                traceback.print_exc()
            print(
                "pyrocollapse: interrupted; nothing half-written was kept, and the same command "
                f"with --resume continues from the checkpoint in {checkpoint}/",
                file=sys.stderr,
            )
            return 130
        raise
    return 0
