"""``--config`` files: reading a JSON or YAML file of settings and merging it with the
command line (flags given on the command line override the file).
"""

from __future__ import annotations

import argparse
from typing import Any

from pyrocollapse.cli.parser import _build_parser


def _read_config(path: str) -> dict[str, Any]:
    """A ``--config`` file: JSON (``.json``) or YAML (``.yaml``/``.yml``), a mapping."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # a parse error of either format, with its position
        raise ValueError(
            f"--config {path!r} is not valid {file.suffix[1:] or 'JSON'}: {e}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path!r} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def _defaults_of(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace the same sub-command gets with no flags (its defaults)."""
    return _build_parser().parse_args([args.command])


def _merge_config(file: dict[str, Any], given: Any, default: Any) -> Any:
    """A RunConfig from ``file``'s fields, with every field the command line set (differs
    from ``default``) taken from ``given`` instead."""
    import dataclasses

    from pyrocollapse.experiment import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(file) - fields
    if unknown:
        raise ValueError(
            f"--config: unknown run setting(s) {sorted(unknown)}; accepted: {', '.join(sorted(fields))}"
        )
    merged = {**default.to_dict(), **file}
    for name in fields:
        if getattr(given, name) != getattr(default, name):
            merged[name] = getattr(given, name)
    if isinstance(merged.get("estimators"), list):
        merged["estimators"] = tuple(merged["estimators"])
    return RunConfig.from_dict(merged)
