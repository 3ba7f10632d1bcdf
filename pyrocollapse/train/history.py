"""The per-epoch record of :func:`~pyrocollapse.train.fit`: :class:`EpochRecord` and
:class:`History`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyrocollapse._validation import (
    check_int,
)


@dataclass
class EpochRecord:
    """One epoch of training.

    Attributes
    ----------
    epoch : int
        1-based epoch number.
    values : dict[str, float]
        Per-data-point averages over the epoch of every ELBO component (``elbo``,
        ``reconstruction``, ``kl``, ``kl/<site>``, variant extras such as ``mi_batch`` or
        ``iwae``), plus the objective's weights at the end of the epoch (``kl_weight``
        and variant weights such as ``mi_weight``), ``time`` (seconds since training
        began), ``epoch_time``, ``aggressive`` (1.0 when the epoch trained the encoder
        aggressively, else 0.0) and ``inner_steps`` (encoder-only steps per decoder
        step, averaged over the epoch), ``lr`` (the learning rate of the optimiser's
        first parameter group in the epoch's last step); monitoring metrics (``active_units/<site>``,
        ``mi/<site>``) when on. Callbacks may add notes (e.g. ``rollback_to_epoch``).
    kl_per_dim : dict[str, numpy.ndarray]
        Per latent site, the epoch-average KL per dimension (nats per data point), shape
        ``(latent_dim,)``.
    """

    epoch: int
    values: dict[str, float]
    kl_per_dim: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.epoch = check_int("epoch", self.epoch, minimum=1)
        for name in ("values", "kl_per_dim"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise TypeError(
                    f"{name} must be a dict keyed by column or site name, got "
                    f"{type(value).__name__}"
                )


class History:
    """Per-epoch training record returned by :func:`fit`."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def append(self, record: EpochRecord) -> None:
        """Add one epoch's record."""
        if not isinstance(record, EpochRecord):
            raise TypeError(f"record must be an EpochRecord, got {type(record).__name__}")
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> EpochRecord:
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    def column(self, name: str) -> np.ndarray:
        """Values of one column over epochs, shape ``(epochs,)`` (NaN where missing)."""
        return np.array([r.values.get(name, math.nan) for r in self.records], dtype=float)

    def kl_matrix(self, site: str = "z") -> np.ndarray:
        """KL per dimension over training, shape ``(latent_dim, epochs)`` (nats per point)."""
        cols = [r.kl_per_dim[site] for r in self.records if site in r.kl_per_dim]
        if not cols:
            recorded = sorted({s for r in self.records for s in r.kl_per_dim})
            raise ValueError(
                f"no per-dimension KL recorded for site {site!r} (recorded: "
                f"{', '.join(map(repr, recorded)) or 'none'}); fit records it for sites whose "
                "q(z|x) and p(z) factorise over dimensions (not, e.g., under a mixture, VampPrior or "
                "flow prior)"
            )
        return np.stack(cols, axis=1)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per epoch; per-dimension KL as ``kl/<site>/<d>``."""
        import pandas as pd

        rows = []
        for r in self.records:
            row: dict[str, Any] = {"epoch": r.epoch, **r.values}
            for site, arr in r.kl_per_dim.items():
                for d, v in enumerate(arr):
                    row[f"kl/{site}/{d}"] = float(v)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_csv(self, path: str) -> None:
        """Write :meth:`to_dataframe` as CSV (atomically)."""
        from pyrocollapse._io import atomic_write_text

        atomic_write_text(path, self.to_dataframe().to_csv(index=False))

    @classmethod
    def from_dataframe(cls, df: Any) -> History:
        """Rebuild a History from :meth:`to_dataframe` output (e.g. a saved CSV)."""
        if "epoch" not in getattr(df, "columns", ()):
            raise ValueError(
                "df needs an 'epoch' column, as History.to_dataframe writes; got columns "
                f"{', '.join(map(str, getattr(df, 'columns', []))) or 'none'}"
            )
        hist = cls()
        for _, row in df.iterrows():
            values: dict[str, float] = {}
            per_dim: dict[str, dict[int, float]] = {}
            for k, v in row.items():
                if k == "epoch":
                    continue
                parts = str(k).split("/")
                if len(parts) == 3 and parts[0] == "kl" and parts[2].isdigit():
                    per_dim.setdefault(parts[1], {})[int(parts[2])] = float(v)
                elif not (isinstance(v, float) and math.isnan(v)):
                    values[str(k)] = float(v)
            kl = {s: np.array([d[i] for i in sorted(d)]) for s, d in per_dim.items()}
            hist.append(EpochRecord(int(row["epoch"]), values, kl))
        return hist
