"""The :class:`CollapseReport` returned by :func:`pyrocollapse.diagnose`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["STATUS_RULE", "CollapseReport", "SiteReport"]

ACTIVE, INFORMATIVE, COLLAPSED = "active", "inactive-but-informative", "collapsed"

#: The per-dimension rule, stated in every report.
STATUS_RULE = (
    "active: Cov_x(E_q[z_d]) > au_threshold; "
    "inactive-but-informative: not active but I_q(x; z_d) > mi_threshold; "
    "collapsed: otherwise (z_d carries no information about x)"
)


def _floats(a: np.ndarray | None) -> list[float] | None:
    return None if a is None else [float(v) for v in np.asarray(a)]


@dataclass
class SiteReport:
    """Collapse diagnostics of one latent site (one layer).

    All arrays have shape ``(latent_dim,)``; values in nats per data point.
    """

    site: str
    kl_per_dim: np.ndarray
    kl_estimator: str
    kl_fraction_below: np.ndarray
    au_variance: np.ndarray
    au_threshold: float
    mi: float
    mi_per_dim: np.ndarray | None
    aggregate_kl: float
    aggregate_kl_per_dim: np.ndarray | None
    status: list[str]

    @classmethod
    def build(cls, site: str, kl: Any, au: Any, mi: Any, *, mi_threshold: float) -> SiteReport:
        """Assemble from :func:`kl_per_dimension`, :func:`active_units` and
        :func:`mutual_information` results, applying :data:`STATUS_RULE`."""
        status = []
        for d in range(len(kl.per_dim)):
            if au.active[d]:
                status.append(ACTIVE)
            elif mi.per_dim is not None and mi.per_dim[d] > mi_threshold:
                status.append(INFORMATIVE)
            else:
                status.append(COLLAPSED)
        return cls(
            site=site,
            kl_per_dim=kl.per_dim,
            kl_estimator=kl.estimator,
            kl_fraction_below=kl.fraction_below(0.01),
            au_variance=au.variance,
            au_threshold=au.threshold,
            mi=mi.total,
            mi_per_dim=mi.per_dim,
            aggregate_kl=mi.aggregate_kl,
            aggregate_kl_per_dim=mi.aggregate_kl_per_dim,
            status=status,
        )

    @property
    def latent_dim(self) -> int:
        return len(self.kl_per_dim)

    @property
    def kl(self) -> float:
        """Total E_x KL(q(z|x) || p(z)) summed over dimensions."""
        return float(np.sum(self.kl_per_dim))

    @property
    def active_units(self) -> int:
        return sum(s == ACTIVE for s in self.status)

    @property
    def collapsed(self) -> np.ndarray:
        """Boolean mask of collapsed dimensions, shape ``(latent_dim,)``."""
        return np.array([s == COLLAPSED for s in self.status])

    @property
    def verdict(self) -> str:
        return _verdict(self.collapsed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "latent_dim": self.latent_dim,
            "verdict": self.verdict,
            "kl": self.kl,
            "kl_estimator": self.kl_estimator,
            "kl_per_dim": _floats(self.kl_per_dim),
            "kl_fraction_below_0.01": _floats(self.kl_fraction_below),
            "active_units": self.active_units,
            "au_variance": _floats(self.au_variance),
            "au_threshold": self.au_threshold,
            "mi": self.mi,
            "mi_per_dim": _floats(self.mi_per_dim),
            "aggregate_kl": self.aggregate_kl,
            "aggregate_kl_per_dim": _floats(self.aggregate_kl_per_dim),
            "kl_identity_gap": self.kl - self.mi - self.aggregate_kl,
            "status": list(self.status),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteReport:
        def arr(key: str) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype=float)

        return cls(
            site=d["site"],
            kl_per_dim=arr("kl_per_dim"),  # type: ignore[arg-type]
            kl_estimator=d["kl_estimator"],
            kl_fraction_below=arr("kl_fraction_below_0.01"),  # type: ignore[arg-type]
            au_variance=arr("au_variance"),  # type: ignore[arg-type]
            au_threshold=float(d["au_threshold"]),
            mi=float(d["mi"]),
            mi_per_dim=arr("mi_per_dim"),
            aggregate_kl=float(d["aggregate_kl"]),
            aggregate_kl_per_dim=arr("aggregate_kl_per_dim"),
            status=list(d["status"]),
        )


def _verdict(collapsed: np.ndarray) -> str:
    if not collapsed.any():
        return "healthy"
    if collapsed.all():
        return "full collapse"
    return "partial collapse"


@dataclass
class CollapseReport:
    """Result of :func:`pyrocollapse.diagnose`.

    Attributes
    ----------
    sites : dict[str, SiteReport]
        One report per latent site (layer).
    elbo : dict[str, float]
        Per-data-point ``elbo``, ``reconstruction`` and ``kl``.
    num_points : int
        Data points diagnosed.
    settings : dict
        Thresholds and estimator settings used.
    """

    sites: dict[str, SiteReport]
    elbo: dict[str, float]
    num_points: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``"healthy"``, ``"partial collapse"`` or ``"full collapse"`` over all sites."""
        return _verdict(np.concatenate([s.collapsed for s in self.sites.values()]))

    @property
    def active_units(self) -> int:
        return sum(s.active_units for s in self.sites.values())

    def __getitem__(self, site: str) -> SiteReport:
        return self.sites[site]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (``to_json`` writes exactly this)."""
        return {
            "verdict": self.verdict,
            "active_units": self.active_units,
            "rule": STATUS_RULE,
            "num_points": self.num_points,
            "elbo": dict(self.elbo),
            "settings": dict(self.settings),
            "sites": {k: v.to_dict() for k, v in self.sites.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollapseReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            sites={k: SiteReport.from_dict(v) for k, v in d["sites"].items()},
            elbo=dict(d["elbo"]),
            num_points=int(d["num_points"]),
            settings=dict(d.get("settings", {})),
        )

    def to_json(self, path: str) -> None:
        """Write :meth:`to_dict` as JSON, atomically (temp file + rename)."""
        from pyrocollapse._io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=True))

    def to_dataframe(self) -> Any:
        """One row per (site, dimension) with KL, AU variance, MI and status."""
        import pandas as pd

        rows = []
        for s in self.sites.values():
            for d in range(s.latent_dim):
                rows.append(
                    {
                        "site": s.site,
                        "dim": d,
                        "kl": float(s.kl_per_dim[d]),
                        "au_variance": float(s.au_variance[d]),
                        "mi": float(s.mi_per_dim[d]) if s.mi_per_dim is not None else math.nan,
                        "kl_fraction_below": float(s.kl_fraction_below[d]),
                        "status": s.status[d],
                    }
                )
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """Bar chart of KL per dimension, collapsed dimensions marked; returns the Figure."""
        from pyrocollapse.plots import plot_kl_per_dim

        return plot_kl_per_dim(self)

    def __str__(self) -> str:
        lines = [f"Posterior collapse report ({self.num_points} points): {self.verdict.upper()}"]
        e = self.elbo
        lines.append(
            f"ELBO {e['elbo']:.3f} = reconstruction {e['reconstruction']:.3f} - KL {e['kl']:.3f}"
            " (nats per point)"
        )
        for s in self.sites.values():
            lines.append("")
            lines.append(
                f"site {s.site!r}: {s.active_units}/{s.latent_dim} active, verdict {s.verdict}; "
                f"KL {s.kl:.3f} = MI {s.mi:.3f} + marginal KL {s.aggregate_kl:.3f} "
                f"(gap {s.kl - s.mi - s.aggregate_kl:+.3f})"
            )
            lines.append(f"{'dim':>4} {'KL':>8} {'AU var':>9} {'MI':>8}  status")
            for d in range(s.latent_dim):
                mi = f"{s.mi_per_dim[d]:8.3f}" if s.mi_per_dim is not None else f"{'-':>8}"
                lines.append(
                    f"{d:>4} {s.kl_per_dim[d]:8.3f} {s.au_variance[d]:9.4f} {mi}  {s.status[d]}"
                )
        lines.append("")
        lines.append(f"rule: {STATUS_RULE}")
        return "\n".join(lines)

    def compare(self, other: CollapseReport) -> Any:
        """Side-by-side per-dimension table of this report (``before``) and ``other``
        (``after``), e.g. before and after a remedy; a pandas DataFrame."""
        return self.to_dataframe().merge(
            other.to_dataframe(), on=["site", "dim"], how="outer", suffixes=("_before", "_after")
        )
