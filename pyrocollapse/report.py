"""The :class:`CollapseReport` returned by :func:`pyrocollapse.diagnose`.

A report holds numbers only (no model, no tensors): it serialises to JSON and back
unchanged, renders as a text table, a pandas DataFrame and figures, and compares with
another report (before and after a remedy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyrocollapse import _site_report

# The records a report holds live in leaf modules, so the report never imports the
# estimators (pyrocollapse.diagnostics imports the report, not the other way round).
from pyrocollapse._records import CauseAnalysis, GlobalSite

# SiteReport, the statuses, the floors and the rule live in pyrocollapse._site_report;
# they are imported from this module, as before.
from pyrocollapse._site_report import ACTIVE as ACTIVE
from pyrocollapse._site_report import COLLAPSED as COLLAPSED
from pyrocollapse._site_report import INFO_FLOOR as INFO_FLOOR
from pyrocollapse._site_report import INFORMATIVE as INFORMATIVE
from pyrocollapse._site_report import (
    KHAT_BAD,
    KHAT_WARN_FRACTION,
    NO_LOCAL,
    SiteReport,
    _array,
    _float,
    _floats,
    _num,
    _verdict,
)
from pyrocollapse._site_report import NEAR as NEAR
from pyrocollapse._site_report import NOISE_Z as NOISE_Z
from pyrocollapse._site_report import SENSITIVITY_FLOOR as SENSITIVITY_FLOOR
from pyrocollapse._site_report import STATUSES as STATUSES
from pyrocollapse._site_report import classify as classify

__all__ = ["STATUS_RULE", "CollapseReport", "SiteReport"]

#: The per-dimension rule, stated in every report.
STATUS_RULE = _site_report.STATUS_RULE


@dataclass
class CollapseReport:
    """Result of :func:`pyrocollapse.diagnose`.

    Attributes
    ----------
    sites : dict[str, SiteReport]
        One report per latent site (layer).
    elbo : dict[str, float]
        Per-data-point ELBO decomposition: ``elbo``, ``reconstruction``, ``kl`` and
        ``kl/<site>``; with the IW estimator also ``log_likelihood``,
        ``log_likelihood_stderr`` and ``inference_gap``.
    num_points : int
        Data points diagnosed.
    settings : dict
        Thresholds and estimator settings used.
    guide_quality : dict or None
        PSIS k-hat summary (``mean``, ``median``, ``max``, ``fraction_above_0.5``,
        ``fraction_above_0.7``, ``num_samples``) and per-point values (``khat``).
    global_sites : dict[str, GlobalSite]
        Latent sites outside the data plate, where per-data-point collapse does not
        apply: their KL(q || p) and posterior contraction 1 - Var_q / Var_p per element
        (:class:`pyrocollapse.diagnostics.sites.GlobalSite`).
    skipped : dict[str, str]
        Latent sites not diagnosed, each with the reason (a point-mass guide, a shape the
        estimators cannot read).
    unavailable : dict[str, str]
        Estimators asked for that could not run on this program (``"sensitivity of
        'z'"`` -> why), instead of an exception.
    causes : CauseAnalysis or None
        With the ``"causes"`` estimator: why the collapsed sites collapsed, ranked with
        the measurement behind each, and what to try next
        (:class:`pyrocollapse.diagnostics.causes.CauseAnalysis`).
    disentanglement : dict[str, DisentanglementResult or dict]
        With the ``"disentanglement"`` estimator of ``pyrocollapse run`` on data with
        known generative factors: per continuous local site, MIG, SAP, DCI and the
        FactorVAE score of the posterior means E_q[z | x] of the held-out points
        (:class:`pyrocollapse.diagnostics.disentanglement.DisentanglementResult`, or its
        :meth:`~pyrocollapse.diagnostics.disentanglement.DisentanglementResult.to_dict`
        once read back from JSON). Empty when not computed; the reason is then in
        :attr:`unavailable` under ``"disentanglement"`` if it was asked for.
    """

    sites: dict[str, SiteReport]
    elbo: dict[str, float]
    num_points: int
    settings: dict[str, Any] = field(default_factory=dict)
    guide_quality: dict[str, Any] | None = None
    global_sites: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    causes: Any = None
    disentanglement: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``"healthy"``, ``"partial collapse"``, ``"near collapse"`` or ``"full
        collapse"`` over all local sites (:data:`STATUS_RULE`); ``"no local latent
        sites"`` when none was diagnosed."""
        if not self.sites:
            return NO_LOCAL
        return _verdict([st for s in self.sites.values() for st in s.status])

    @property
    def active_units(self) -> int:
        return sum(s.active_units for s in self.sites.values())

    def __getitem__(self, site: str) -> SiteReport:
        if site not in self.sites:
            raise KeyError(f"no latent site {site!r} in this report; sites: {list(self.sites)}")
        return self.sites[site]

    def _site(self, site: str | None) -> SiteReport:
        return self[site] if site is not None else next(iter(self.sites.values()))

    def notes(self) -> list[str]:
        """Warnings about the guide and each site (shown by ``str`` and the HTML page)."""
        out = []
        g = self.guide_quality
        bad = KHAT_BAD if g is None else g.get("threshold", KHAT_BAD)
        share = (
            None if g is None else g.get("fraction_above_threshold", g.get("fraction_above_0.7"))
        )
        if share is not None and share > KHAT_WARN_FRACTION:
            out.append(
                f"PSIS k-hat > {bad:.2f} for {100 * share:.0f}% of points: the "
                "guide is a poor approximation of the posterior there, so a dimension that looks "
                "collapsed may reflect the guide rather than the model (Yao et al. 2018)"
            )
        chained = [s.site for s in self.sites.values() if s.innovation]
        if chained:
            out.append(
                f"site(s) {', '.join(map(repr, chained))} have a conditional prior p(z | parents): "
                "each is measured in that prior's standardised coordinates at the guide's draws "
                "of the parents, so activity and MI count only what x tells beyond the parents"
            )
        for s in self.sites.values():
            if s.conditional_prior and not s.innovation:
                out.extend(s.notes())
            else:
                out.extend(s.notes(conditional=False))
        for g in self.global_sites.values():
            flat = np.flatnonzero(g.uninformed)
            if len(flat):
                out.append(
                    f"global site {g.site!r}: the data do not inform element(s) "
                    f"{flat.tolist()} (posterior contraction 1 - Var_q/Var_p below "
                    f"{g.threshold}): the posterior there is the prior"
                )
        for name, reason in self.skipped.items():
            out.append(f"site {name!r} not diagnosed: {reason}")
        for what, reason in self.unavailable.items():
            out.append(f"{what} not computed: {reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (``to_json`` writes exactly this)."""
        g = None
        if self.guide_quality is not None:
            g = {k: (_floats(v) if k == "khat" else _num(v)) for k, v in self.guide_quality.items()}
        return {
            "verdict": self.verdict,
            "active_units": self.active_units,
            "rule": STATUS_RULE,
            "num_points": self.num_points,
            "elbo": {k: _num(v) for k, v in self.elbo.items()},
            "settings": dict(self.settings),
            "guide_quality": g,
            "notes": self.notes(),
            "sites": {k: v.to_dict() for k, v in self.sites.items()},
            "global_sites": {k: v.to_dict() for k, v in self.global_sites.items()},
            "skipped": dict(self.skipped),
            "unavailable": dict(self.unavailable),
            "causes": None if self.causes is None else self.causes.to_dict(),
            "disentanglement": self._disentanglement_dict(),
        }

    def _disentanglement_dict(self) -> dict[str, Any] | None:
        """``{site: result dict}``; ``{"unavailable": reason}`` when it was asked for and
        nothing could be scored; ``None`` when it was not asked for."""
        if self.disentanglement:
            return {k: _disentanglement_record(v) for k, v in self.disentanglement.items()}
        reason = self.unavailable.get(DISENTANGLEMENT)
        return None if reason is None else {"unavailable": reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollapseReport:
        """Inverse of :meth:`to_dict`.

        Raises ``ValueError`` naming the first missing or malformed entry.
        """
        if not isinstance(d, dict):
            raise TypeError(f"a report must be a dict, got {type(d).__name__}")
        try:
            g = d.get("guide_quality")
            if g is not None:
                g = {k: (_array(v) if k == "khat" else _float(v)) for k, v in g.items()}
            return cls(
                sites={k: SiteReport.from_dict(v) for k, v in d["sites"].items()},
                elbo={k: _float(v) for k, v in d["elbo"].items()},
                num_points=int(d["num_points"]),
                settings=dict(d.get("settings", {})),
                guide_quality=g,
                global_sites={
                    k: GlobalSite.from_dict(v) for k, v in d.get("global_sites", {}).items()
                },
                skipped={str(k): str(v) for k, v in d.get("skipped", {}).items()},
                unavailable={str(k): str(v) for k, v in d.get("unavailable", {}).items()},
                causes=None if d.get("causes") is None else CauseAnalysis.from_dict(d["causes"]),
                disentanglement=_read_disentanglement(d.get("disentanglement")),
            )
        except KeyError as e:
            raise ValueError(f"malformed report: missing entry {e}") from None
        except (TypeError, AttributeError, ValueError) as e:
            text = str(e)
            raise ValueError(
                text if text.startswith("malformed report") else f"malformed report: {text}"
            ) from None

    def to_json(self, path: str) -> None:
        """Write :meth:`to_dict` as JSON, atomically (temp file + rename)."""
        from pyrocollapse._io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))

    @classmethod
    def from_json(cls, path: str) -> CollapseReport:
        """Read a report written by :meth:`to_json`.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
        for one that is not UTF-8 JSON or does not hold a report.
        """
        import os

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            d = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(path)!r} is not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{str(path)!r} does not hold a collapse report: {e}") from None

    def to_dataframe(self) -> Any:
        """One row per (site, dimension): KL, AU variance, MI, R-hat, sensitivity, status."""
        import pandas as pd

        def at(a: np.ndarray | None, d: int) -> float:
            return math.nan if a is None else float(a[d])

        rows = []
        for s in self.sites.values():
            for d in range(s.latent_dim):
                rows.append(
                    {
                        "site": s.site,
                        "dim": d,
                        "kl": float(s.kl_per_dim[d]),
                        "au_variance": float(s.au_variance[d]),
                        "mi": at(s.mi_per_dim, d),
                        "mi_stderr": at(s.mi_per_dim_stderr, d),
                        "aggregate_kl": at(s.aggregate_kl_per_dim, d),
                        "rhat": at(s.rhat, d),
                        "sensitivity": at(s.sensitivity, d),
                        "p_active": at(s.au_probability_active, d),
                        "kl_fraction_below": float(s.kl_fraction_below[d]),
                        "status": s.status[d],
                    }
                )
        return pd.DataFrame(rows)

    def plot(self, kind: str = "kl", *, site: str | None = None) -> Any:
        """A figure of this report; returns the matplotlib Figure.

        Parameters
        ----------
        kind : {"kl", "dimensions", "densities", "mean_space", "khat"}
            ``"kl"``: KL per dimension, collapsed ones marked; ``"dimensions"``: every
            per-dimension metric; ``"densities"``: q(z_d|x) over p(z_d);
            ``"mean_space"``: approximate vs model posterior means; ``"khat"``: PSIS k-hat.
        site : str or None
            Latent site (default the first).
        """
        # Drawing sits above computing: plots reads reports as data and never imports
        # this module, so this one-way edge, taken only when a figure is asked for, keeps
        # matplotlib out of ``import pyrocollapse.report``.
        from pyrocollapse import plots

        kinds = {
            "kl": plots.plot_kl_per_dim,
            "dimensions": plots.plot_dimensions,
            "densities": plots.plot_posterior_densities,
            "mean_space": plots.plot_posterior_mean_space,
        }
        if kind == "khat":
            return plots.plot_khat(self)
        if kind not in kinds:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, [*kinds, 'khat']))}; got {kind!r}"
            )
        return kinds[kind](self, site=site)

    def __str__(self) -> str:
        lines = [f"Posterior collapse report ({self.num_points} points): {self.verdict.upper()}"]
        e = self.elbo
        lines.append(
            f"ELBO {e['elbo']:.3f} = reconstruction {e['reconstruction']:.3f} - KL {e['kl']:.3f}"
            " (nats per point)"
        )
        if "log_likelihood" in e:
            lines.append(
                f"IW log-likelihood {e['log_likelihood']:.3f} (+- {e.get('log_likelihood_stderr', math.nan):.3f}); "
                f"inference gap {e['inference_gap']:.3f}"
            )
        g = self.guide_quality
        if g is not None:
            lines.append(
                f"guide quality: PSIS k-hat mean {g['mean']:.2f}, max {g['max']:.2f}, "
                f"{100 * g.get('fraction_above_threshold', g['fraction_above_0.7']):.1f}% of "
                f"points > {g.get('threshold', KHAT_BAD):.2f} (min(1 - 1/log10 S, 0.7))"
            )
        for g in self.global_sites.values():
            lines.append("")
            lines.append(
                f"global site {g.site!r} {tuple(g.shape)}: KL(q || p) {g.kl:.3f} nats; "
                "posterior contraction 1 - Var_q/Var_p per element: "
                + ", ".join(f"{c:.2f}" for c in g.contraction[:8])
                + (" ..." if len(g.contraction) > 8 else "")
            )
        for s in self.sites.values():
            lines.append("")
            if s.kind == "discrete":
                lines.append(
                    f"discrete site {s.site!r}: {s.status[0]}; "
                    f"KL {s.kl:.3f} = MI {s.mi:.3f} + marginal KL {s.aggregate_kl:.3f} (exact); "
                    f"spread of q(y|x) {float(s.au_variance[0]):.4f}"
                )
                continue
            head = (
                f"site {s.site!r}: {s.active_units}/{s.latent_dim} active, "
                f"{int(s.near_collapse.sum())} near collapse, verdict {s.verdict}"
            )
            burda = f"Cov_x(E_q[z_d]) > {s.au_threshold:g} in {s.burda_active_units}"
            if s.au_count_ci is not None:
                burda += f" {ci_text(s.au_count_ci, '.0f')}"
            lines.append(f"{head} (Burda AU: {burda})")
            if math.isfinite(s.mi):
                mi = f"MI {s.mi:.3f}" + (f" {ci_text(s.mi_ci)}" if s.mi_ci else "")
                lines.append(
                    f"  KL {s.kl:.3f} = {mi} + marginal KL {s.aggregate_kl:.3f} "
                    f"(gap {s.kl_identity_gap:+.3f}, Monte Carlo s.e. {s.kl_identity_stderr or math.nan:.3f}); "
                    f"KL estimator {s.kl_estimator}"
                )
            else:
                lines.append(f"  KL {s.kl:.3f}; KL estimator {s.kl_estimator}")
            cols = [("KL", s.kl_per_dim, 8, ".3f"), ("AU var", s.au_variance, 9, ".4f")]
            cols += [("MI", s.mi_per_dim, 8, ".3f"), ("MI s.e.", s.mi_per_dim_stderr, 8, ".3f")]
            cols += [("R-hat", s.rhat, 7, ".3f")]
            cols += [("sens", s.sensitivity, 9, ".3g")]
            cols = [c for c in cols if c[1] is not None]
            lines.append(f"{'dim':>4} " + " ".join(f"{n:>{w}}" for n, _, w, _ in cols) + "  status")
            floor = s.on_free_bits_floor
            for d in range(s.latent_dim):
                vals = " ".join(f"{float(a[d]):{w}{f}}" for _, a, w, f in cols)
                tag = " (on free-bits floor)" if floor[d] else ""
                lines.append(f"{d:>4} {vals}  {s.status[d]}{tag}")
        notes = self.notes()
        if notes:
            lines.append("")
            lines.extend(f"note: {n}" for n in notes)
        if self.causes is not None and self.causes.sites:
            lines.append("")
            lines.extend(self.causes.lines())
        if self.disentanglement:
            lines.append("")
            lines.extend(disentanglement_lines(self.disentanglement))
        lines.append("")
        lines.append(f"rule: {STATUS_RULE}")
        return "\n".join(lines)

    def compare(self, other: CollapseReport) -> Any:
        """Side-by-side per-dimension table of this report (``before``) and ``other``
        (``after``), e.g. before and after a remedy; a pandas DataFrame with a
        ``status_changed`` column."""
        if not isinstance(other, CollapseReport):
            raise TypeError(f"other must be a CollapseReport, got {type(other).__name__}")
        table = self.to_dataframe().merge(
            other.to_dataframe(), on=["site", "dim"], how="outer", suffixes=("_before", "_after")
        )
        table["status_changed"] = table["status_before"] != table["status_after"]
        return table


def ci_text(ci: tuple[float, float] | None, fmt: str = ".3f") -> str:
    """``"[lo, hi]"`` for an interval, ``""`` for ``None``."""
    return "" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


#: The key of the disentanglement metrics in :attr:`CollapseReport.unavailable`.
DISENTANGLEMENT = "disentanglement"

#: How the single-factor case is said in the text report.
ONE_FACTOR_NOTE = (
    "with a single factor, DCI disentanglement and the FactorVAE score are 1 by "
    "construction and not shown"
)


def _disentanglement_record(value: Any) -> dict[str, Any]:
    """A site's disentanglement result as its JSON-safe dict."""
    if isinstance(value, dict):
        return value
    to_dict = getattr(value, "to_dict", None)
    if not callable(to_dict):
        raise TypeError(
            "disentanglement values must be DisentanglementResult objects or their dicts, got "
            f"{type(value).__name__}"
        )
    return to_dict()


def _read_disentanglement(value: Any) -> dict[str, Any]:
    """The ``"disentanglement"`` entry of :meth:`CollapseReport.to_dict` read back."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(
            f"malformed report: disentanglement must be a dict, got {type(value).__name__}"
        )
    if set(value) == {"unavailable"} and isinstance(value["unavailable"], str):
        return {}  # the reason is kept in ``unavailable``
    for site, record in value.items():
        if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
            raise ValueError(f"malformed report: disentanglement of site {site!r} has no scores")
    return {str(k): dict(v) for k, v in value.items()}


def disentanglement_scores(value: Any) -> dict[str, float | None]:
    """The flat scores (``mig``, ``sap``, ``dci_disentanglement``, ``dci_completeness``,
    ``dci_informativeness``, ``factorvae_score``) of a result or its dict."""
    return dict(_disentanglement_record(value)["scores"])


def disentanglement_lines(results: dict[str, Any]) -> list[str]:
    """The text report's lines for per-site disentanglement results.

    One line per site, ``disentanglement (site 'z', factors shape, scale, pos_x, pos_y):
    MIG 0.42 · SAP 0.31 · DCI D/C/I 0.55/0.48/0.91 · FactorVAE 0.78``, then the code
    dimension that carries most information about each factor (MIG's best dimension).
    With a single factor, DCI disentanglement and the FactorVAE score (1 by
    construction) are left out and the reason is said.
    """

    def num(x: Any) -> str:
        return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.2f}"

    lines = []
    for site, value in results.items():
        d = _disentanglement_record(value)
        s = d["scores"]
        names = list(d.get("factor_names") or [])
        parts = [f"MIG {num(s.get('mig'))}", f"SAP {num(s.get('sap'))}"]
        if len(names) == 1:
            parts.append(
                f"DCI C/I {num(s.get('dci_completeness'))}/{num(s.get('dci_informativeness'))}"
            )
        else:
            parts.append(
                f"DCI D/C/I {num(s.get('dci_disentanglement'))}/"
                f"{num(s.get('dci_completeness'))}/{num(s.get('dci_informativeness'))}"
            )
            if s.get("factorvae_score") is not None:
                parts.append(f"FactorVAE {num(s['factorvae_score'])}")
        n = d.get("num_points")
        head = f"disentanglement (site {site!r}, factors {', '.join(names)}"
        head += f"; {n} points)" if n is not None else ")"
        lines.append(f"{head}: " + " · ".join(parts))
        best = (d.get("mig") or {}).get("best_dims") or {}
        if best:
            lines.append(
                "  best dimension per factor (MIG): "
                + ", ".join(
                    f"{f} -> {site}[{k}]" if k >= 0 else f"{f} -> none" for f, k in best.items()
                )
            )
        if len(names) == 1:
            lines.append(f"  {ONE_FACTOR_NOTE}")
    return lines
