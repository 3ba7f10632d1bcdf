"""Reading a report folder back: ``metrics.json`` and ``history.csv``, validated."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ReportFolder", "read_folder"]


@dataclass
class ReportFolder:
    """The saved parts of a report folder."""

    path: Path
    metrics: dict[str, Any]
    report: Any
    history: Any


def read_folder(path: str | os.PathLike[str]) -> ReportFolder:
    """Read and validate ``metrics.json`` (and ``history.csv`` where present).

    Raises ``FileNotFoundError`` for a missing folder or ``metrics.json`` and
    ``ValueError`` naming the file for anything malformed.
    """
    from pyrocollapse.report import CollapseReport

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"report folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(
            f"{str(folder)!r} is not a folder; pass a report folder written by 'pyrocollapse run'"
        )
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{str(metrics_path)!r} not found: {str(folder)!r} is not a pyrocollapse report folder"
        )
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(metrics_path)!r} is not valid JSON ({e})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("report"), dict):
        raise ValueError(
            f"{str(metrics_path)!r} has no 'report' object; it is not a pyrocollapse metrics file"
        )
    try:
        report = CollapseReport.from_dict(metrics["report"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{str(metrics_path)!r}: {e}") from None
    history = None
    history_path = folder / "history.csv"
    if history_path.is_file():
        import pandas as pd

        from pyrocollapse.train import History

        try:
            history = History.from_dataframe(pd.read_csv(history_path))
        except Exception as e:  # pandas raises many types for a bad CSV
            raise ValueError(
                f"{str(history_path)!r} could not be read as a training history ({e})"
            ) from None
    return ReportFolder(folder, metrics, report, history)
