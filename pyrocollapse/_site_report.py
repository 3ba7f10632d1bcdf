"""The per-site part of a :class:`~pyrocollapse.report.CollapseReport`: the statuses, the
rule that assigns them (:func:`classify`, :data:`STATUS_RULE`), the floors and thresholds
the notes use, and :class:`SiteReport`.

Numbers only (NumPy), no estimator: :mod:`pyrocollapse.report` builds on it and
re-exports every name; import them from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STATUS_RULE", "SiteReport", "classify"]

ACTIVE, NEAR, COLLAPSED = "active", "near-collapse", "collapsed"
#: Written by reports before 0.2 (an activity-based rule); still read and drawn.
INFORMATIVE = "inactive-but-informative"
STATUSES = (ACTIVE, NEAR, COLLAPSED)

#: Default practical floor (nats per point) of information a dimension must carry to
#: count as active: 0.1 nats is what a Gaussian channel with signal-to-noise ratio 0.22
#: carries (I = log(1 + SNR) / 2). Below it, information measurably above zero is
#: "spread thin" and the dimension is near collapse.
INFO_FLOOR = 0.1
#: Standard errors by which an information estimate must exceed zero to count at all.
NOISE_Z = 2.0

#: The per-dimension rule, stated in every report.
STATUS_RULE = (
    "status from the information each dimension carries, I_q(x; z_d) (nats per point, "
    "under the aggregate posterior): collapsed when I_q(x; z_d) <= max(mi_threshold, "
    f"{NOISE_Z:g} Monte Carlo standard errors), i.e. not measurably above zero; near collapse "
    "when measurably above zero but below the practical floor info_floor; active at or above "
    "info_floor. Where I_q(x; z_d) was not computed, the KL E_x KL(q(z_d|x) || p(z_d)), an "
    "upper bound on it, stands in: at or below mi_threshold collapsed, else active only when "
    "also Cov_x(E_q[z_d]) > au_threshold (Burda et al. 2016), else near collapse. "
    "A site with a conditional diagonal-Normal prior p(z | parents) (a Markov chain "
    "z_t | z_{t-1}, a hierarchical prior) is measured in the prior's standardised "
    "coordinates (z - E_p[z | parents]) / sd_p[z | parents] at the guide's draws of the "
    "parents, i.e. on what x tells beyond the parents. A discrete site uses its exact "
    "I_q(x; y). Verdict: healthy (every dimension active), partial collapse (some active, "
    "some not), near collapse (none active, some near), full collapse (all collapsed)"
)

#: PSIS k-hat above which a guide is a poor importance proposal (Yao et al. 2018).
KHAT_BAD = 0.7
#: Fraction of points with k-hat above :data:`KHAT_BAD` that triggers a guide warning.
KHAT_WARN_FRACTION = 0.1
#: Decoder sensitivity (Fisher information, nats per squared unit of z) below which the
#: decoder is taken to ignore a latent altogether: moving z_d by one unit then changes a
#: point's expected log-likelihood by about half of it, 0.05 nats or less. The "lagging
#: inference network" note needs both the site's largest sensitivity and that of each
#: dimension it names to reach it (a fully collapsed digits VAE has 0.02-0.06 in every
#: dimension, the dimensions it uses 2-4), and the "unused information" note the largest.
SENSITIVITY_FLOOR = 0.1


def _floats(a: Any) -> list[Any] | None:
    """JSON-safe nested lists of floats (NaN and infinities as None)."""
    if a is None:
        return None
    arr = np.asarray(a, dtype=float)
    return [_num(v) if arr.ndim == 1 else _floats(v) for v in arr]  # type: ignore[misc]


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _array(v: Any) -> np.ndarray | None:
    if v is None:
        return None
    return np.array(v, dtype=float)  # None entries become nan


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _pair(v: Any) -> tuple[float, float] | None:
    """An interval read back from JSON: a ``None`` end (written for a non-finite one)
    is -inf below and +inf above (an MI interval the data cannot bound above)."""
    if v is None:
        return None
    lo = -math.inf if v[0] is None else float(v[0])
    hi = math.inf if v[1] is None else float(v[1])
    return lo, hi


def _arrays_to_dict(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {k: _floats(v) for k, v in d.items()}


def _arrays_from_dict(d: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    return None if d is None else {k: _array(v) for k, v in d.items()}  # type: ignore[misc]


@dataclass
class SiteReport:
    """Collapse diagnostics of one latent site (one layer).

    Per-dimension arrays have shape ``(latent_dim,)``; values in nats per data point
    unless stated. Fields that an estimator not run would fill are ``None`` (or NaN).

    Attributes
    ----------
    site : str
        Site name.
    kl_per_dim : numpy.ndarray
        E_x KL(q(z_d|x) || p(z_d)).
    kl_estimator : str
        How the KL was computed (see :class:`pyrocollapse.diagnostics.KLPerDimension`).
    kl_fraction_below : numpy.ndarray
        Fraction of points whose KL in the dimension is below 0.01 nats.
    au_variance : numpy.ndarray
        Cov_x(E_q[z_d]) (squared units of z).
    au_threshold : float
        Activity threshold.
    mi, mi_per_dim : float, numpy.ndarray or None
        I_q(x; z) and I_q(x; z_d).
    aggregate_kl, aggregate_kl_per_dim : float, numpy.ndarray or None
        KL(q(z) || p(z)) and KL(q(z_d) || p(z_d)).
    status : list[str]
        Per dimension: ``active``, ``inactive-but-informative`` or ``collapsed``.
    kl_total : float or None
        The joint E_x KL(q(z|x) || p(z)) (equals the sum of ``kl_per_dim`` when q and p
        factorise).
    conditional_prior : bool
        Whether p(z) depends on another latent (or on x): then KL, MI and marginal KL use
        the conditional prior at the guide's draws of the parents.
    mi_ci, aggregate_kl_ci : tuple or None
        Bootstrap intervals.
    mi_per_dim_stderr : numpy.ndarray or None
        Monte Carlo standard error of ``mi_per_dim``.
    au_count_ci : tuple or None
        Bootstrap interval of the active-unit count.
    au_probability_active : numpy.ndarray or None
        Fraction of bootstrap replicates in which each dimension is active.
    au_variance_ci : numpy.ndarray or None
        Shape ``(2, latent_dim)``: bootstrap interval of ``au_variance``.
    rhat : numpy.ndarray or None
        Datapoints-as-chains R-hat (~1: q(z_d|x) does not depend on x).
    sensitivity : numpy.ndarray or None
        Decoder sensitivity (Fisher information, nats per squared unit of z).
    sensitivity_method : str or None
        ``"score"`` or ``"finite_difference"``.
    densities : dict or None
        ``grid`` ``(D, G)``, ``prior`` ``(D, G)`` and ``posterior`` ``(E, D, G)``
        densities for the overlay plot.
    mean_space : dict or None
        ``approximate`` and ``model`` posterior means, each ``(P, D)``.
    kl_identity_stderr : float or None
        Monte Carlo standard error of MI + marginal KL, against which
        :attr:`kl_identity_gap` is judged.
    aggregate_kl_stderr : float or None
        Monte Carlo standard error of ``aggregate_kl`` (nats). A KL is >= 0, but its
        estimate is not clipped (clipping would break KL = MI + marginal KL): a slightly
        negative value within a few standard errors of 0 is noise.
    kind : str
        ``"continuous"`` (one entry per latent dimension) or ``"discrete"`` (one entry for
        the site: exact KL, exact I_q(x; y), and as ``au_variance`` the spread
        sum_k Var_x q(y = k | x)).
    innovation : bool
        The site was measured in its conditional prior's standardised coordinates (see
        :data:`STATUS_RULE`).
    info_floor, mi_threshold : float
        The status rule's practical floor and zero threshold (nats per point).
    status_basis : str
        ``"mi"`` (per-dimension I_q(x; z_d) with its Monte Carlo standard error) or
        ``"kl"`` (per-dimension MI not computed: the KL, an upper bound, with the
        activity variance).
    free_bits : float or None
        The free-bits floor lambda (nats) of the objective the model was trained with,
        when known; then :attr:`on_free_bits_floor` marks dimensions whose KL sits on it.
    mi_upper : float or None
        Leave-one-out estimate of I_q(x; z), biased upward: I_q lies between ``mi`` and
        it in expectation (``inf`` when the data cannot bound it).
    mi_log_n : float or None
        log N, the most the ``mi`` estimator can read (it is a contrastive lower bound).
    mi_saturated : bool
        ``mi`` is within 1 nat of log N: only a lower bound.
    mi_points_needed : float or None
        When saturated, about how many points would resolve I_q(x; z).
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
    kl_total: float | None = None
    conditional_prior: bool = False
    mi_ci: tuple[float, float] | None = None
    aggregate_kl_ci: tuple[float, float] | None = None
    mi_per_dim_stderr: np.ndarray | None = None
    au_count_ci: tuple[float, float] | None = None
    au_probability_active: np.ndarray | None = None
    au_variance_ci: np.ndarray | None = None
    rhat: np.ndarray | None = None
    sensitivity: np.ndarray | None = None
    sensitivity_method: str | None = None
    densities: dict[str, np.ndarray] | None = None
    mean_space: dict[str, np.ndarray] | None = None
    kl_identity_stderr: float | None = None
    aggregate_kl_stderr: float | None = None
    kind: str = "continuous"
    innovation: bool = False
    info_floor: float = INFO_FLOOR
    mi_threshold: float = 0.01
    status_basis: str = "mi"
    free_bits: float | None = None
    mi_upper: float | None = None
    mi_log_n: float | None = None
    mi_saturated: bool = False
    mi_points_needed: float | None = None

    @classmethod
    def build(
        cls,
        site: str,
        kl: Any,
        au: Any,
        mi: Any,
        *,
        mi_threshold: float,
        info_floor: float = INFO_FLOOR,
        free_bits: float | None = None,
        rhat: Any = None,
        sensitivity: Any = None,
        densities: Any = None,
        mean_space: Any = None,
        conditional_prior: bool = False,
        innovation: bool = False,
    ) -> SiteReport:
        """Assemble from the results of :mod:`pyrocollapse.diagnostics` estimators
        (``mi`` and the keyword results may be ``None``), applying :data:`STATUS_RULE`."""
        mi_per_dim = None if mi is None else mi.per_dim
        if mi_per_dim is not None:
            se = mi.per_dim_stderr
            status = classify(
                mi_per_dim,
                np.zeros_like(mi_per_dim) if se is None else se,
                mi_threshold=mi_threshold,
                info_floor=info_floor,
            )
            basis = "mi"
        else:
            status = classify(
                kl.per_dim,
                np.zeros_like(kl.per_dim),
                mi_threshold=mi_threshold,
                info_floor=info_floor,
                active=au.active,
            )
            basis = "kl"
        return cls(
            site=site,
            kl_per_dim=kl.per_dim,
            kl_estimator=kl.estimator,
            kl_fraction_below=kl.fraction_below(0.01),
            au_variance=au.variance,
            au_threshold=au.threshold,
            mi=math.nan if mi is None else mi.total,
            mi_per_dim=mi_per_dim,
            aggregate_kl=math.nan if mi is None else mi.aggregate_kl,
            aggregate_kl_per_dim=None if mi is None else mi.aggregate_kl_per_dim,
            status=status,
            kl_total=kl.total,
            conditional_prior=bool(conditional_prior),
            mi_ci=None if mi is None else mi.ci,
            aggregate_kl_ci=None if mi is None else mi.aggregate_kl_ci,
            aggregate_kl_stderr=None if mi is None else mi.aggregate_kl_stderr,
            mi_per_dim_stderr=None if mi is None else mi.per_dim_stderr,
            au_count_ci=au.count_ci,
            au_probability_active=au.probability_active,
            au_variance_ci=au.variance_ci,
            rhat=None if rhat is None else np.atleast_1d(rhat.per_dim),
            sensitivity=None if sensitivity is None else np.atleast_1d(sensitivity.per_dim),
            sensitivity_method=None if sensitivity is None else sensitivity.method,
            densities=None
            if densities is None
            else {
                "grid": densities.grid,
                "prior": densities.prior,
                "posterior": densities.posterior,
            },
            mean_space=None
            if mean_space is None
            else {"approximate": mean_space.approximate, "model": mean_space.model},
            kl_identity_stderr=None if mi is None else mi.stderr,
            innovation=bool(innovation),
            info_floor=float(info_floor),
            mi_threshold=float(mi_threshold),
            status_basis=basis,
            free_bits=None if free_bits is None else float(free_bits),
            mi_upper=None if mi is None else _optional_float(getattr(mi, "upper", None)),
            mi_log_n=None if mi is None else _optional_float(getattr(mi, "log_n", None)),
            mi_saturated=bool(mi is not None and getattr(mi, "saturated", False)),
            mi_points_needed=None
            if mi is None
            else _optional_float(getattr(mi, "points_needed", None)),
        )

    @classmethod
    def build_discrete(
        cls,
        site: str,
        summary: Any,
        *,
        au_threshold: float,
        mi_threshold: float,
        info_floor: float = INFO_FLOOR,
    ) -> SiteReport:
        """Assemble a discrete site's report from a
        :class:`pyrocollapse.diagnostics.sites.DiscreteSite`: one entry, whose status
        follows :data:`STATUS_RULE` with the exact I_q(x; y) (no Monte Carlo error)."""
        one = np.ones(1)
        status = classify(
            summary.mi * one, 0 * one, mi_threshold=mi_threshold, info_floor=info_floor
        )
        return cls(
            site=site,
            kl_per_dim=summary.kl * one,
            kl_estimator="exact (sum over the support)",
            kl_fraction_below=np.array([float((summary.kl_per_point < 0.01).mean())]),
            au_variance=summary.spread * one,
            au_threshold=au_threshold,
            mi=summary.mi,
            mi_per_dim=summary.mi * one,
            aggregate_kl=summary.aggregate_kl,
            aggregate_kl_per_dim=summary.aggregate_kl * one,
            status=status,
            kl_total=summary.kl,
            kind="discrete",
            info_floor=float(info_floor),
            mi_threshold=float(mi_threshold),
        )

    @property
    def latent_dim(self) -> int:
        return len(self.kl_per_dim)

    @property
    def kl(self) -> float:
        """Total E_x KL(q(z|x) || p(z)) (the joint KL where known, else the sum over
        dimensions)."""
        if self.kl_total is not None and math.isfinite(self.kl_total):
            return float(self.kl_total)
        return float(np.sum(self.kl_per_dim))

    @property
    def kl_identity_gap(self) -> float:
        """KL - (MI + marginal KL): zero up to Monte Carlo error (Hoffman & Johnson 2016)."""
        return self.kl - self.mi - self.aggregate_kl

    @property
    def active_units(self) -> int:
        """Dimensions whose status is ``"active"`` (information at or above the floor)."""
        return sum(s == ACTIVE for s in self.status)

    @property
    def burda_active_units(self) -> int:
        """Dimensions with Cov_x(E_q[z_d]) > ``au_threshold`` (Burda et al. 2016's count,
        which calls a dimension active on a variance of its posterior mean alone)."""
        return int(np.sum(np.asarray(self.au_variance, dtype=float) > self.au_threshold))

    @property
    def collapsed(self) -> np.ndarray:
        """Boolean mask of collapsed dimensions, shape ``(latent_dim,)``."""
        return np.array([s == COLLAPSED for s in self.status])

    @property
    def near_collapse(self) -> np.ndarray:
        """Boolean mask of dimensions near collapse (informative but below the floor)."""
        return np.array([s == NEAR for s in self.status])

    @property
    def on_free_bits_floor(self) -> np.ndarray:
        """Dimensions whose KL sits on the free-bits floor (within 10 % of lambda plus
        0.02 nats), shape ``(latent_dim,)``; all False when no floor is known."""
        if not self.free_bits:
            return np.zeros(self.latent_dim, dtype=bool)
        kl = np.asarray(self.kl_per_dim, dtype=float)
        return np.abs(kl - self.free_bits) <= 0.1 * self.free_bits + 0.02

    @property
    def verdict(self) -> str:
        """``"healthy"``, ``"partial collapse"``, ``"near collapse"`` or ``"full
        collapse"`` (:data:`STATUS_RULE`)."""
        return _verdict(self.status)

    def notes(self, *, conditional: bool = True) -> list[str]:
        """Warnings a reader should see next to this site's numbers (``conditional=False``
        leaves out the note on a conditional prior, which a report gives once for all
        such sites)."""
        out = []
        if conditional and self.innovation:
            out.append(
                f"site {self.site!r} has a conditional prior p({self.site} | parents): it is "
                "measured in that prior's standardised coordinates at the guide's draws of the "
                "parents, so activity and MI count only what x tells beyond the parents"
            )
        elif conditional and self.conditional_prior:
            out.append(
                f"site {self.site!r} has a conditional prior p({self.site} | parents): its KL, MI "
                "and marginal KL use that conditional at the guide's draws of the parents"
            )
        if math.isfinite(self.mi):
            gap = self.kl_identity_gap
            se = self.kl_identity_stderr
            se = se if se is not None and math.isfinite(se) else 0.0
            if abs(gap) > max(0.05, 4 * se):
                out.append(
                    f"site {self.site!r}: KL = MI + marginal KL misses by {gap:+.3f} nats, more than "
                    f"Monte Carlo error ({se:.3f}) explains: the guide or prior may not be evaluated "
                    "consistently (check the KL estimator and conditional priors)"
                )
        if (
            math.isfinite(self.aggregate_kl)
            and self.aggregate_kl < 0
            and not self.conditional_prior
        ):
            se = self.aggregate_kl_stderr
            se_text = f" ± {se:.3f}" if se is not None and math.isfinite(se) else ""
            out.append(
                f"site {self.site!r}: the marginal KL estimate {self.aggregate_kl:+.3f}{se_text} "
                "nats is below 0, which a KL cannot be: Monte Carlo noise around 0 (left "
                "unclipped so that KL = MI + marginal KL holds)"
            )
        if self.mi_saturated and self.mi_log_n is not None:
            need = self.mi_points_needed
            need_text = (
                f"; resolving it takes at least {need:.3g} points"
                if need is not None and math.isfinite(need)
                else "; no practical number of points resolves it"
            )
            out.append(
                f"site {self.site!r}: I_q(x; z) = {self.mi:.3f} nats is within 1 nat of log N = "
                f"{self.mi_log_n:.3f}, where the estimator (a contrastive lower bound) saturates: "
                f"I_q(x; z) >= {self.mi:.3f} only{need_text}"
            )
        near = np.flatnonzero(self.near_collapse)
        if len(near):
            info = np.asarray(
                self.mi_per_dim if self.mi_per_dim is not None else self.kl_per_dim, dtype=float
            )
            out.append(
                f"site {self.site!r} dims {near.tolist()}: near collapse, information measurably "
                f"above zero but below {self.info_floor:g} nats each ({float(info[near].sum()):.3f} "
                "nats in all): spread thin"
            )
        floor = np.flatnonzero(self.on_free_bits_floor)
        if len(floor):
            out.append(
                f"site {self.site!r} dims {floor.tolist()}: KL sits on the free-bits floor "
                f"lambda = {self.free_bits:g} nats, which the objective does not penalise: that "
                "KL is bought by the floor, not demanded by the data; judge these dims by their "
                "MI instead"
            )
        if self.aggregate_kl_per_dim is not None and self.mi_per_dim is not None:
            kl = np.asarray(self.kl_per_dim, dtype=float)
            paid = [int(d) for d in np.flatnonzero(self.collapsed) if kl[d] >= self.info_floor]
            if paid:
                out.append(
                    f"site {self.site!r} dims {paid}: KL of "
                    + ", ".join(f"{kl[d]:.2f}" for d in paid)
                    + " nats but no information: q(z_d|x) is the same for every x yet differs "
                    "from p(z_d) (marginal KL): KL spent on a prior that does not fit"
                )
        if self.sensitivity is not None and len(self.sensitivity):
            sens = np.asarray(self.sensitivity, dtype=float)
            top = float(np.nanmax(sens)) if np.isfinite(sens).any() else 0.0
            # below this the decoder ignores every dimension: nothing is "lagging"
            top = top if top >= SENSITIVITY_FLOOR else 0.0
            lagging = [
                d
                for d, st in enumerate(self.status)
                if st == COLLAPSED and sens[d] > 0.25 * top and sens[d] >= SENSITIVITY_FLOOR
            ]
            unused = [
                d for d, st in enumerate(self.status) if st == ACTIVE and sens[d] < 1e-3 * top
            ]
            if top > 0 and lagging:
                out.append(
                    f"site {self.site!r} dims {lagging}: q(z_d|x) ignores x although the decoder is "
                    "sensitive to z_d (over a quarter of the largest sensitivity): a lagging "
                    "inference network rather than an unused latent (He et al. 2019)"
                )
            if top > 0 and unused:
                out.append(
                    f"site {self.site!r} dims {unused}: q(z_d|x) varies with x but the decoder "
                    "ignores z_d (sensitivity ~0): the model does not use that information"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (non-finite numbers become ``None``)."""
        return {
            "site": self.site,
            "latent_dim": self.latent_dim,
            "verdict": self.verdict,
            "kl": _num(self.kl),
            "kl_estimator": self.kl_estimator,
            "kl_per_dim": _floats(self.kl_per_dim),
            "kl_fraction_below_0.01": _floats(self.kl_fraction_below),
            "active_units": self.active_units,
            "au_variance": _floats(self.au_variance),
            "au_threshold": self.au_threshold,
            "mi": _num(self.mi),
            "mi_per_dim": _floats(self.mi_per_dim),
            "aggregate_kl": _num(self.aggregate_kl),
            "aggregate_kl_per_dim": _floats(self.aggregate_kl_per_dim),
            "kl_identity_gap": _num(self.kl_identity_gap),
            "status": list(self.status),
            "kl_total": None if self.kl_total is None else _num(self.kl_total),
            "conditional_prior": self.conditional_prior,
            "mi_ci": _floats(self.mi_ci),
            "aggregate_kl_ci": _floats(self.aggregate_kl_ci),
            "aggregate_kl_stderr": None
            if self.aggregate_kl_stderr is None
            else _num(self.aggregate_kl_stderr),
            "mi_per_dim_stderr": _floats(self.mi_per_dim_stderr),
            "au_count_ci": _floats(self.au_count_ci),
            "au_probability_active": _floats(self.au_probability_active),
            "au_variance_ci": _floats(self.au_variance_ci),
            "rhat": _floats(self.rhat),
            "sensitivity": _floats(self.sensitivity),
            "sensitivity_method": self.sensitivity_method,
            "densities": _arrays_to_dict(self.densities),
            "mean_space": _arrays_to_dict(self.mean_space),
            "kl_identity_stderr": None
            if self.kl_identity_stderr is None
            else _num(self.kl_identity_stderr),
            "kind": self.kind,
            "innovation": self.innovation,
            "info_floor": self.info_floor,
            "mi_threshold": self.mi_threshold,
            "status_basis": self.status_basis,
            "burda_active_units": self.burda_active_units,
            "free_bits": self.free_bits,
            "on_free_bits_floor": [bool(v) for v in self.on_free_bits_floor],
            # +inf (the data cannot bound I_q above) is kept as the string "inf"
            "mi_upper": None
            if self.mi_upper is None
            else ("inf" if self.mi_upper == math.inf else _num(self.mi_upper)),
            "mi_log_n": None if self.mi_log_n is None else _num(self.mi_log_n),
            "mi_saturated": self.mi_saturated,
            "mi_points_needed": None
            if self.mi_points_needed is None
            else _num(self.mi_points_needed),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteReport:
        """Inverse of :meth:`to_dict` (also reads reports written by earlier versions).

        Raises ``ValueError`` naming the first missing or malformed entry.
        """
        if not isinstance(d, dict):
            raise TypeError(f"a site report must be a dict, got {type(d).__name__}")
        try:
            return cls._from_dict(d)
        except KeyError as e:
            raise ValueError(f"malformed report: missing entry {e}") from None
        except (TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"malformed report: {e}") from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> SiteReport:
        return cls(
            site=d["site"],
            kl_per_dim=_array(d["kl_per_dim"]),  # type: ignore[arg-type]
            kl_estimator=d["kl_estimator"],
            kl_fraction_below=_array(d["kl_fraction_below_0.01"]),  # type: ignore[arg-type]
            au_variance=_array(d["au_variance"]),  # type: ignore[arg-type]
            au_threshold=float(d["au_threshold"]),
            mi=_float(d["mi"]),
            mi_per_dim=_array(d.get("mi_per_dim")),
            aggregate_kl=_float(d["aggregate_kl"]),
            aggregate_kl_per_dim=_array(d.get("aggregate_kl_per_dim")),
            status=list(d["status"]),
            kl_total=None if d.get("kl_total") is None else float(d["kl_total"]),
            conditional_prior=bool(d.get("conditional_prior", False)),
            mi_ci=_pair(d.get("mi_ci")),
            aggregate_kl_ci=_pair(d.get("aggregate_kl_ci")),
            aggregate_kl_stderr=_optional_float(d.get("aggregate_kl_stderr")),
            mi_per_dim_stderr=_array(d.get("mi_per_dim_stderr")),
            au_count_ci=_pair(d.get("au_count_ci")),
            au_probability_active=_array(d.get("au_probability_active")),
            au_variance_ci=_array(d.get("au_variance_ci")),
            rhat=_array(d.get("rhat")),
            sensitivity=_array(d.get("sensitivity")),
            sensitivity_method=d.get("sensitivity_method"),
            densities=_arrays_from_dict(d.get("densities")),
            mean_space=_arrays_from_dict(d.get("mean_space")),
            kl_identity_stderr=None
            if d.get("kl_identity_stderr") is None
            else float(d["kl_identity_stderr"]),
            kind=str(d.get("kind", "continuous")),
            innovation=bool(d.get("innovation", False)),
            info_floor=float(d.get("info_floor", INFO_FLOOR)),
            mi_threshold=float(d.get("mi_threshold", 0.01)),
            status_basis=str(d.get("status_basis", "mi")),
            free_bits=_optional_float(d.get("free_bits")),
            mi_upper=_optional_float(d.get("mi_upper")),
            mi_log_n=_optional_float(d.get("mi_log_n")),
            mi_saturated=bool(d.get("mi_saturated", False)),
            mi_points_needed=_optional_float(d.get("mi_points_needed")),
        )


#: Verdict of a report without local latent sites.
NO_LOCAL = "no local latent sites"


def classify(
    info: Any,
    stderr: Any,
    *,
    mi_threshold: float,
    info_floor: float = INFO_FLOOR,
    active: Any = None,
) -> list[str]:
    """Per-dimension status from information carried (:data:`STATUS_RULE`).

    Parameters
    ----------
    info : array_like
        Shape ``(D,)``: I_q(x; z_d) in nats per point (or an upper bound on it, the KL,
        with ``active`` given).
    stderr : array_like
        Shape ``(D,)``: Monte Carlo standard error of ``info`` (0 for exact values).
    mi_threshold : float
        Nats at or below which a dimension carries no information.
    info_floor : float
        Practical floor (nats): measurably informative dimensions below it are
        ``"near-collapse"``.
    active : array_like of bool or None
        With ``info`` an upper bound (the KL): the activity test each dimension must
        also pass to count as active.

    Returns
    -------
    list of str
        ``"active"``, ``"near-collapse"`` or ``"collapsed"`` per dimension.
    """
    info = np.asarray(info, dtype=float)
    se = np.nan_to_num(np.asarray(stderr, dtype=float), nan=0.0)
    out = []
    for d, v in enumerate(info):
        if not math.isfinite(v) or v <= max(mi_threshold, NOISE_Z * se[d]):
            out.append(COLLAPSED)
        elif v < info_floor or (active is not None and not bool(active[d])):
            out.append(NEAR)
        else:
            out.append(ACTIVE)
    return out


def _verdict(status: Any) -> str:
    status = list(status)
    if all(s == ACTIVE for s in status):
        return "healthy"
    if all(s == COLLAPSED for s in status):
        return "full collapse"
    if not any(s in (ACTIVE, INFORMATIVE) for s in status):
        return "near collapse"
    return "partial collapse"
