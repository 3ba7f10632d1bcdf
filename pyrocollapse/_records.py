"""Result records that a :class:`~pyrocollapse.report.CollapseReport` holds and reads back
from JSON: :class:`GlobalSite` (what the data tell about a global latent) and the cause
analysis (:class:`Cause`, :class:`Remedy`, :class:`CauseAnalysis`).

A leaf module (NumPy only), so that :mod:`pyrocollapse.report` rebuilds reports without
importing the estimators in :mod:`pyrocollapse.diagnostics`, which import the report.
Import the names from :mod:`pyrocollapse.diagnostics` (or its ``sites`` and ``causes``
modules), which re-export them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CAUSES",
    "CONTRACTION_THRESHOLD",
    "EVIDENCE_FLOOR",
    "Cause",
    "CauseAnalysis",
    "GlobalSite",
    "Remedy",
]

#: Contraction below which a global parameter counts as not informed by the data.
CONTRACTION_THRESHOLD = 0.1

DECODER, PRIOR, DYNAMICS = "decoder capacity", "prior mismatch", "training dynamics"
#: The causes measured, in the order of the module docstring.
CAUSES = (DECODER, PRIOR, DYNAMICS)
#: The "cause" of the remedies offered when no cause reaches :data:`EVIDENCE_FLOOR`.
UNCLEAR = "no clear cause"
#: Score below which a cause is reported without remedies.
EVIDENCE_FLOOR = 0.1


@dataclass
class GlobalSite:
    """What the data tell about a global latent (one outside the data plate).

    Attributes
    ----------
    site : str
        Site name.
    shape : tuple[int, ...]
        Shape of one draw of the site.
    kl : float
        KL(q || p) in nats for the whole site (Monte Carlo over ``num_draws`` draws;
        for a prior that depends on other latents, at the guide's draws of them).
    kl_stderr : float
        Its Monte Carlo standard error.
    contraction : numpy.ndarray
        Per element (flattened), ``1 - Var_q / Var_p``: 0 when the posterior is as wide as
        the prior (the data do not inform the parameter), 1 when it is a point. Var_p is
        the marginal prior variance (ancestral draws of the model). Both are taken in
        the unconstrained coordinates of the site's support (log of a scale, logit of a
        probability), where heavy-tailed priors have finite variances.
    posterior_sd, prior_sd : numpy.ndarray
        The standard deviations behind it, in those coordinates.
    num_draws : int
        Draws from the guide and from the prior.
    threshold : float
        Contraction below which an element reads "not informed".
    """

    site: str
    shape: tuple[int, ...]
    kl: float
    kl_stderr: float
    contraction: np.ndarray
    posterior_sd: np.ndarray
    prior_sd: np.ndarray
    num_draws: int
    threshold: float = CONTRACTION_THRESHOLD

    @property
    def uninformed(self) -> np.ndarray:
        """Boolean per element: contraction below :attr:`threshold`."""
        return self.contraction < self.threshold

    def to_dict(self) -> dict[str, Any]:
        def floats(a: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in np.asarray(a, float)]

        return {
            "site": self.site,
            "shape": list(self.shape),
            "kl": self.kl if math.isfinite(self.kl) else None,
            "kl_stderr": self.kl_stderr if math.isfinite(self.kl_stderr) else None,
            "contraction": floats(self.contraction),
            "posterior_sd": floats(self.posterior_sd),
            "prior_sd": floats(self.prior_sd),
            "num_draws": self.num_draws,
            "threshold": self.threshold,
            "uninformed": [bool(u) for u in self.uninformed],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GlobalSite:
        def arr(v: Any) -> np.ndarray:
            return np.array([math.nan if x is None else x for x in v], dtype=float)

        return cls(
            site=str(d["site"]),
            shape=tuple(int(v) for v in d["shape"]),
            kl=math.nan if d["kl"] is None else float(d["kl"]),
            kl_stderr=math.nan if d.get("kl_stderr") is None else float(d["kl_stderr"]),
            contraction=arr(d["contraction"]),
            posterior_sd=arr(d["posterior_sd"]),
            prior_sd=arr(d["prior_sd"]),
            num_draws=int(d["num_draws"]),
            threshold=float(d.get("threshold", CONTRACTION_THRESHOLD)),
        )


@dataclass
class Cause:
    """The evidence for one cause.

    Attributes
    ----------
    name : str
        One of :data:`CAUSES`.
    score : float
        Strength of the evidence in [0, 1] (NaN: could not be measured).
    measurements : dict[str, float]
        The numbers behind the score (nats per point unless the name says otherwise).
    evidence : str
        The measurement in plain words.
    """

    name: str
    score: float
    measurements: dict[str, Any]
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": _json_num(self.score),
            "measurements": {k: _json_value(v) for k, v in self.measurements.items()},
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cause:
        return cls(
            str(d["name"]),
            math.nan if d["score"] is None else float(d["score"]),
            dict(d.get("measurements", {})),
            str(d.get("evidence", "")),
        )


@dataclass
class Remedy:
    """One thing to try, for one cause.

    Attributes
    ----------
    cause : str
        The cause it addresses.
    action : str
        What to do, in words, with its reference.
    cli : str
        The ``pyrocollapse run`` flags that do it.
    python : str
        The Python call that does it.
    grid : dict
        Its cell of a :func:`pyrocollapse.comparison.compare` grid: ``prior`` and/or
        ``elbo`` (registry names) with ``prior_options``/``elbo_options``, or
        ``run_options`` (other :class:`~pyrocollapse.experiment.RunConfig` fields).
    """

    cause: str
    action: str
    cli: str
    python: str
    grid: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "action": self.action,
            "cli": self.cli,
            "python": self.python,
            "grid": self.grid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Remedy:
        return cls(
            str(d["cause"]),
            str(d["action"]),
            str(d["cli"]),
            str(d["python"]),
            dict(d.get("grid", {})),
        )


@dataclass
class CauseAnalysis:
    """Ranked causes of collapse with the remedies they suggest.

    Attributes
    ----------
    sites : list[str]
        The collapsed or near-collapsed sites analysed.
    causes : list[Cause]
        Every cause, strongest evidence first.
    remedies : list[Remedy]
        For each cause at or above :data:`EVIDENCE_FLOOR`, in the causes' order; when none
        reaches it, remedies that change the objective's trade-off or the optimisation
        (cause :data:`UNCLEAR`).
    unavailable : dict[str, str]
        Measurements that could not be made on this program, with the reason.
    baseline : tuple[str, str]
        The run's own prior and objective, the baseline cell of :meth:`grid`.
    """

    sites: list[str]
    causes: list[Cause]
    remedies: list[Remedy]
    unavailable: dict[str, str] = field(default_factory=dict)
    baseline: tuple[str, str] = ("standard", "elbo")

    @property
    def ranking(self) -> list[str]:
        """Cause names, strongest evidence first."""
        return [c.name for c in self.causes]

    @property
    def top(self) -> Cause | None:
        """The best-supported cause, or ``None`` when none reaches :data:`EVIDENCE_FLOOR`."""
        if self.causes and self.causes[0].score >= EVIDENCE_FLOOR:
            return self.causes[0]
        return None

    def grid(self) -> dict[str, Any]:
        """The remedies as the arguments of :func:`pyrocollapse.comparison.compare`:
        ``priors`` and ``elbos`` (the run's own first, as the baseline),
        ``prior_options`` and ``elbo_options``."""
        priors, elbos = [self.baseline[0]], [self.baseline[1]]
        prior_options: dict[str, dict[str, Any]] = {}
        elbo_options: dict[str, dict[str, Any]] = {}
        for r in self.remedies:
            if "prior" in r.grid and r.grid["prior"] not in priors:
                priors.append(r.grid["prior"])
                prior_options[r.grid["prior"]] = dict(r.grid.get("prior_options", {}))
            if "elbo" in r.grid and r.grid["elbo"] not in elbos:
                elbos.append(r.grid["elbo"])
                elbo_options[r.grid["elbo"]] = dict(r.grid.get("elbo_options", {}))
        return {
            "priors": priors,
            "elbos": elbos,
            "prior_options": prior_options,
            "elbo_options": elbo_options,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary."""
        return {
            "sites": list(self.sites),
            "ranking": self.ranking,
            "causes": [c.to_dict() for c in self.causes],
            "remedies": [r.to_dict() for r in self.remedies],
            "grid": self.grid(),
            "unavailable": dict(self.unavailable),
            "baseline": list(self.baseline),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CauseAnalysis:
        """Inverse of :meth:`to_dict`."""
        return cls(
            list(d["sites"]),
            [Cause.from_dict(c) for c in d["causes"]],
            [Remedy.from_dict(r) for r in d.get("remedies", [])],
            {str(k): str(v) for k, v in d.get("unavailable", {}).items()},
            tuple(d.get("baseline", ("standard", "elbo"))),  # type: ignore[arg-type]
        )

    def lines(self) -> list[str]:
        """The analysis as text lines (the printed report's "why" and "what next")."""
        out = [f"why: causes of collapse in {', '.join(map(repr, self.sites))}, strongest first"]
        for i, c in enumerate(self.causes, 1):
            score = "n/a" if not math.isfinite(c.score) else f"{c.score:.2f}"
            out.append(f"  {i}. {c.name} (evidence {score}): {c.evidence}")
        if self.remedies:
            if self.remedies[0].cause == UNCLEAR:
                out.append(
                    f"what next: no cause reaches the evidence floor ({EVIDENCE_FLOOR:g}); "
                    "these change the objective's trade-off or the optimisation, and "
                    "compare tells which helps here:"
                )
            else:
                out.append("what next:")
            for r in self.remedies:
                out.append(f"  - [{r.cause}] {r.action}")
                out.append(f"      pyrocollapse run {r.cli}")
                out.append(f"      {r.python}")
            g = self.grid()
            if len(g["priors"]) > 1 or len(g["elbos"]) > 1:
                out.append(
                    "  compare them against this run: pyrocollapse compare --from-run RUN_FOLDER "
                    "(the grid --priors "
                    + ",".join(g["priors"])
                    + " --elbos "
                    + ",".join(g["elbos"])
                    + " with this run's data, model and training settings)"
                )
        for what, why in self.unavailable.items():
            out.append(f"  ({what} not measured: {why})")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _json_num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _json_value(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_value(x) for x in v]
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return _json_num(v)
    return v


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------
