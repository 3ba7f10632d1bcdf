"""The report page of one run (``report.html``): its sections and :func:`render_html`."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

from pyrocollapse._validation import check_bool
from pyrocollapse.report_folder.config_table import _config_table, _value_text
from pyrocollapse.report_folder.figures import _SPECS, FIGURES
from pyrocollapse.report_folder.reading import read_folder
from pyrocollapse.report_folder.rendering import (
    _Cell,
    _cell,
    _Column,
    _finite,
    _image_src,
    _num,
    _render,
    _shade,
    _Table,
    _table,
    _verdict_class,
)

__all__ = ["render_html"]


def _measurements_text(measurements: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(one(x) for x in v) + "]"
        if v is None:
            return "n/a"
        return _num(v, ".3g") if isinstance(v, numbers.Real) else str(v)

    return "; ".join(f"{k} = {one(v)}" for k, v in measurements.items())


def _causes_view(analysis: Any) -> dict[str, Any] | None:
    """Why it collapsed (causes ranked, with their measurements) and what to try next."""
    if analysis is None or not analysis.sites:
        return None
    from pyrocollapse.diagnostics.causes import EVIDENCE_FLOOR, UNCLEAR

    rows = [
        [
            c.name,
            _Cell(f"{c.score:.2f}" if math.isfinite(c.score) else "n/a"),
            c.evidence,
            _measurements_text(c.measurements),
        ]
        for c in analysis.causes
    ]
    table = _table(
        [
            _Column("cause", text=True),
            _Column("evidence"),
            _Column("what was measured", text=True),
            _Column("measurements", text=True),
        ],
        rows,
    )
    grid = analysis.grid()
    return {
        "sites": list(analysis.sites),
        "table": table,
        "remedies": [
            {"cause": r.cause, "action": r.action, "cli": r.cli, "python": r.python}
            for r in analysis.remedies
        ],
        "unclear": bool(analysis.remedies) and analysis.remedies[0].cause == UNCLEAR,
        "floor": EVIDENCE_FLOOR,
        "priors": ", ".join(grid["priors"]),
        "elbos": ", ".join(grid["elbos"]),
        "unavailable": list(analysis.unavailable.items()),
    }


def _causes_section(analysis: Any) -> str:
    """The page's "why it collapsed" and "what to try next" as HTML ("" without causes)."""
    view = _causes_view(analysis)
    return "" if view is None else _render("_causes.html", causes=view)


def _elbo_table(report: Any) -> _Table:
    labels = {
        "elbo": "ELBO",
        "reconstruction": "reconstruction E_q[log p(x|z)]",
        "kl": "KL (all sites)",
        "log_likelihood": "IW log-likelihood log p(x)",
        "log_likelihood_stderr": "standard error of the IW log-likelihood",
        "inference_gap": "inference gap (log p(x) - ELBO)",
    }
    rows: list[list[Any]] = [[labels.get(k, k), v] for k, v in report.elbo.items()]
    for s in report.sites.values():
        if math.isfinite(s.mi):
            rows.append([f"I_q(x; {s.site}) (mutual information)", s.mi])
            rows.append([f"KL(q({s.site}) || p({s.site})) (marginal KL)", s.aggregate_kl])
            rows.append([f"KL identity gap for {s.site}", s.kl_identity_gap])
    return _table(["term", "value"], rows)


def _site_view(s: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Heading, facts and the per-dimension table (with a caption per column) of a site."""
    from pyrocollapse.report import NOISE_Z, SENSITIVITY_FLOOR, ci_text

    facts = [f"{s.active_units}/{s.latent_dim} active units"]
    if s.au_count_ci is not None:
        facts.append(f"bootstrap interval {ci_text(s.au_count_ci, '.0f')}")
    facts.append(f"KL {s.kl:.4g} nats ({s.kl_estimator})")
    if math.isfinite(s.mi):
        facts.append(f"MI {s.mi:.4g} {ci_text(s.mi_ci)}".strip())
    if s.conditional_prior:
        facts.append("conditional prior")
    discrete = s.kind == "discrete"
    level = settings.get("ci_level", 0.95)
    level = f"{float(level):.0%}" if _finite(level) else "the"

    def values(a: Any) -> list[Any] | None:
        return None if a is None else [float(a[d]) for d in range(s.latent_dim)]

    floor = s.on_free_bits_floor
    status = [
        f"{s.status[d]} (on free-bits floor)" if floor[d] else s.status[d]
        for d in range(s.latent_dim)
    ]
    if s.status_basis == "mi":
        rule = (
            f"active when I_q(x; z_d) is at or above the floor {s.info_floor:g} nats; near "
            f"collapse when measurably above zero (above max({s.mi_threshold:g}, "
            f"{NOISE_Z:g} standard errors)) but below the floor; collapsed otherwise"
        )
    else:
        rule = (
            f"MI was not computed, so the KL stands in: collapsed at or below "
            f"{s.mi_threshold:g} nats, active when the AU variance also exceeds "
            f"{s.au_threshold:g}, else near collapse"
        )
    if s.free_bits is not None:
        rule += (
            f"; 'on free-bits floor': its KL sits on the objective's floor of {s.free_bits:g} nats"
        )
    au_ci = None
    if s.au_variance_ci is not None:
        ci = s.au_variance_ci
        au_ci = [
            _Cell(f"[{_num(float(ci[0][d]))}, {_num(float(ci[1][d]))}]")
            for d in range(s.latent_dim)
        ]
    sens_method = f" (by {s.sensitivity_method})" if s.sensitivity_method else ""
    spec = [
        ("status", f"status per the stated rule: {rule}.", status, True),
        (
            "dim",
            "the outcome (one row)" if discrete else "latent dimension d of the site",
            list(range(s.latent_dim)),
            False,
        ),
        (
            "KL",
            "E_x KL(q(z_d|x) || p(z_d)): what the objective pays for the dimension, nats per "
            f"point (estimator: {s.kl_estimator})",
            values(s.kl_per_dim),
            False,
        ),
        (
            "frac. KL<0.01",
            "fraction of held-out points whose KL in the dimension is below 0.01 nats",
            values(s.kl_fraction_below),
            False,
        ),
        (
            "AU variance",
            "spread of q(y|x) over observations, sum_k Var_x q(y = k | x)"
            if discrete
            else "Cov_x(E_q[z_d]): how much the posterior mean moves from observation to "
            f"observation, squared units of z; above {s.au_threshold:g} the dimension is an "
            "active unit (Burda et al. 2016)",
            values(s.au_variance),
            False,
        ),
        (
            "AU interval",
            f"bootstrap {level} interval of the AU variance (resampling the observations)",
            au_ci,
            False,
        ),
        (
            "P(active)",
            "fraction of bootstrap replicates in which the dimension is an active unit",
            values(s.au_probability_active),
            False,
        ),
        (
            "MI",
            "I_q(x; z_d): mutual information between the observation and the dimension under "
            "the aggregate posterior, nats per point; 0 when q(z_d|x) ignores x",
            values(s.mi_per_dim),
            False,
        ),
        (
            "MI s.e.",
            "Monte Carlo standard error of the MI",
            values(s.mi_per_dim_stderr),
            False,
        ),
        (
            "R-hat",
            "datapoints-as-chains R-hat: the posterior draws of each observation taken as one "
            "chain; ~1 when q(z_d|x) ignores x (every observation's posterior alike), above 1 "
            "when the posteriors differ",
            values(s.rhat),
            False,
        ),
        (
            "sens",
            "decoder sensitivity: the Fisher information of the likelihood in z_d, nats per "
            f"squared unit of z{sens_method}; below {SENSITIVITY_FLOOR:g} the decoder ignores "
            "the dimension",
            values(s.sensitivity),
            False,
        ),
    ]
    shown = [c for c in spec if c[2] is not None]
    columns = [_Column(name, caption, text=text) for name, caption, _, text in shown]
    rows = [[_cell(col[2][d]) for col in shown] for d in range(s.latent_dim)]
    return {
        "site": s.site,
        "verdict": s.verdict,
        "verdict_class": _verdict_class(s.verdict),
        "facts": "; ".join(facts),
        "table": _Table(columns, rows, list(s.status)),
        "not_computed": [name for name, _, vals, _ in spec if vals is None],
    }


#: The headline disentanglement scores: (``scores`` key, column header, what it measures).
_DISENTANGLEMENT_SCORES: tuple[tuple[str, str, str], ...] = (
    (
        "mig",
        "MIG",
        "mutual information gap: per factor, the gap between the two code dimensions that "
        "carry most information about it, over the factor's entropy, averaged over factors; "
        "in [0, 1], 1 when each factor lives in one dimension",
    ),
    (
        "sap",
        "SAP",
        "separated attribute predictability: per factor, the gap between the two dimensions "
        "that predict it best on their own, averaged over factors; in [0, 1]",
    ),
    (
        "dci_disentanglement",
        "DCI D",
        "DCI disentanglement: how much each code dimension predicts a single factor, weighted "
        "by its importance; in [0, 1]",
    ),
    (
        "dci_completeness",
        "DCI C",
        "DCI completeness: how much each factor is predicted by a single code dimension; in [0, 1]",
    ),
    (
        "dci_informativeness",
        "DCI I",
        "DCI informativeness: held-out prediction score of the factors from the whole code "
        "(R^2, or chance-adjusted balanced accuracy for a discrete factor); at most 1",
    ),
    (
        "factorvae_score",
        "FactorVAE",
        "FactorVAE score: accuracy of a majority-vote classifier telling which factor was "
        "held fixed from the dimension of least variance; chance is 1/F. Lenient: read it "
        "with MIG and DCI",
    ),
)
#: Scores that are 1 by construction with a single factor, so left out then.
_ONE_FACTOR_SCORES = ("dci_disentanglement", "factorvae_score")
#: Said where those scores are left out.
_ONE_FACTOR_TEXT = "1 by construction with a single factor"


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _matrix_table(matrix: Any, site: str, names: list[str], caption: str) -> _Table | None:
    """A ``(K, F)`` matrix as a heat-map table: a row per code dimension ``site[k]``, a
    column per factor, each cell shaded by its share of the largest entry (``None`` when
    the matrix is missing or not ``K x F``)."""
    if not isinstance(matrix, list) or not matrix or not names:
        return None
    if not all(isinstance(row, list) and len(row) == len(names) for row in matrix):
        return None
    values = [[float(v) if _finite(v) else math.nan for v in row] for row in matrix]
    top = max((v for row in values for v in row if math.isfinite(v)), default=math.nan)
    scale = top if _finite(top) and top > 0 else math.nan
    columns = [_Column("dimension", caption, text=True)]
    columns += [_Column(str(f)) for f in names]
    rows = [
        [_Cell(f"{site}[{k}]", text=True)]
        + [
            _Cell(_num(v, ".3g"), background=_shade(v / scale) if math.isfinite(v) else "")
            for v in row
        ]
        for k, row in enumerate(values)
    ]
    return _Table(columns, rows)


def _disentanglement_site(site: str, record: dict[str, Any]) -> dict[str, Any]:
    """The scores, per-factor table and heat maps of one site's disentanglement record
    (:meth:`~pyrocollapse.diagnostics.disentanglement.DisentanglementResult.to_dict`)."""
    scores = _as_dict(record.get("scores"))
    names = [str(f) for f in record.get("factor_names") or []]
    discrete = list(record.get("discrete") or [])
    one_factor = len(names) == 1
    mig, sap = _as_dict(record.get("mig")), _as_dict(record.get("sap"))
    dci = _as_dict(record.get("dci"))
    shown = [
        (key, name, what)
        for key, name, what in _DISENTANGLEMENT_SCORES
        if not (one_factor and key in _ONE_FACTOR_SCORES)
        and not (key == "factorvae_score" and scores.get(key) is None)
    ]
    score_table = _Table(
        [_Column(name, what) for _, name, what in shown] + [_Column("points", "points scored")],
        [
            [_cell(scores.get(key), ".3f") for key, _, _ in shown]
            + [_cell(record.get("num_points"))]
        ],
    )
    best = _as_dict(mig.get("best_dims"))

    def best_dim(factor: str) -> _Cell:
        k = best.get(factor)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            return _Cell(_num(k), text=True)
        return _Cell(f"{site}[{int(k)}]" if k >= 0 else "none (constant factor)", text=True)

    parts = [
        (
            "MIG",
            "this factor's mutual information gap (normalised by its entropy)",
            _as_dict(mig.get("per_factor")),
        ),
        ("SAP", "this factor's predictability gap", _as_dict(sap.get("per_factor"))),
        (
            "DCI C",
            "completeness of this factor: 1 when one code dimension predicts it",
            _as_dict(dci.get("per_factor_completeness")),
        ),
        (
            "DCI I",
            "held-out score of this factor's predictor from the whole code",
            _as_dict(dci.get("per_factor_informativeness")),
        ),
    ]
    factor_rows = []
    for i, factor in enumerate(names):
        kind = ""
        if i < len(discrete) and isinstance(discrete[i], bool):
            kind = "discrete" if discrete[i] else "continuous"
        factor_rows.append(
            [_Cell(factor, text=True), _Cell(kind, text=True), best_dim(factor)]
            + [_cell(values.get(factor), ".3f") for _, _, values in parts]
        )
    factor_table = (
        _Table(
            [
                _Column("factor", "a known generative factor of the data", text=True),
                _Column("kind", "how the factor was treated", text=True),
                _Column(
                    "best dimension",
                    "the code dimension with most information about the factor (MIG)",
                    text=True,
                ),
                *(_Column(name, what) for name, what, _ in parts),
            ],
            factor_rows,
        )
        if factor_rows
        else None
    )
    regressor = dci.get("regressor")
    facts = [f"factors {', '.join(names)}" if names else "no factor names"]
    if record.get("num_points") is not None:
        facts.append(f"{_num(record.get('num_points'))} points scored")
    if record.get("code_dim") is not None:
        facts.append(f"{_num(record.get('code_dim'))} code dimensions")
    if isinstance(regressor, str):
        facts.append(f"DCI predictor {regressor}")
    return {
        "site": site,
        "facts": "; ".join(facts),
        "scores": score_table,
        "one_factor": _ONE_FACTOR_TEXT if one_factor else "",
        "factors": factor_table,
        "importance": _matrix_table(
            dci.get("importance"),
            site,
            names,
            "DCI importance of code dimension k for predicting each factor (shaded by its "
            "share of the largest)",
        ),
        "mig_matrix": _matrix_table(
            mig.get("matrix"),
            site,
            names,
            "mutual information I(code_k; factor), nats (shaded by its share of the largest)",
        ),
    }


def _disentanglement_view(metrics: dict[str, Any], report: Any) -> dict[str, Any] | None:
    """The page's disentanglement section from ``metrics["report"]["disentanglement"]``.

    ``{"sites": [...], "unavailable": reason, "skipped": [(what, reason), ...]}``: the
    scored sites, why nothing was scored (``""`` when something was) and the sites left
    out (``report.unavailable["disentanglement of 'site'"]``); ``None`` when it was not
    asked for (an older folder, or the estimator left out).
    """
    raw = _as_dict(metrics.get("report")).get("disentanglement")
    unavailable = getattr(report, "unavailable", None) or {}
    records = getattr(report, "disentanglement", None) or {}
    reason = ""
    if isinstance(raw, dict) and set(raw) == {"unavailable"}:
        reason = str(raw["unavailable"])
    elif not records and "disentanglement" in unavailable:
        reason = str(unavailable["disentanglement"])
    skipped = [
        (str(what), str(why))
        for what, why in unavailable.items()
        if isinstance(what, str) and what.startswith("disentanglement of ")
    ]
    if not records and not reason and not skipped:
        return None
    return {
        "sites": [
            _disentanglement_site(str(site), _as_dict(record)) for site, record in records.items()
        ],
        "unavailable": reason,
        "skipped": skipped,
    }


def _summary_table(folder: Path) -> _Table | None:
    path = folder / "posterior.nc"
    if not path.is_file():
        return None
    from pyrocollapse.summaries import load_inference_data, summarize

    try:
        table = summarize(load_inference_data(path))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{str(path)!r} could not be summarised ({e})") from None
    cols = [c for c in table.columns if c not in ("site", "dim")]
    rows = [[str(idx), *(float(row[c]) for c in cols)] for idx, row in table.iterrows()]
    return _table(["variable", *map(str, cols)], rows)


def _figures(folder: Path, self_contained: bool) -> list[dict[str, str]]:
    fig_dir = folder / "figures"
    if not fig_dir.is_dir():
        return []
    stems = sorted(p.stem for p in fig_dir.glob("*.png") if not p.name.startswith("."))
    order = {spec.kind: i for i, spec in enumerate(FIGURES)}

    def kind_of(stem: str) -> str:
        return next(
            (
                k
                for k in sorted(_SPECS, key=len, reverse=True)
                if stem == k or stem.startswith(k + "_")
            ),
            stem,
        )

    stems.sort(key=lambda s: (order.get(kind_of(s), len(order)), s))
    out = []
    for stem in stems:
        spec = _SPECS.get(kind_of(stem))
        caption = spec.caption if spec else stem
        site = stem[len(spec.kind) + 1 :] if spec and stem != spec.kind else ""
        if site:
            caption = f"[{site}] {caption}"
        src = _image_src(fig_dir / f"{stem}.png", f"figures/{stem}.png", self_contained)
        out.append({"src": src, "alt": stem, "caption": caption})
    return out


def render_html(folder: str | os.PathLike[str], *, self_contained: bool = False) -> str:
    """The report page of a folder (from the template ``templates/report.html``).

    The run configuration (``metrics.json``'s ``config``), the verdict, the notes, the
    causes and what to try next, the ELBO decomposition, per-site tables with a caption
    for every column, disentanglement scores (where ``metrics.json`` has them: per site,
    the headline scores, a table per factor and heat maps of DCI importance and of MIG's
    mutual information; or the reason they were not computed), guide quality, ArviZ posterior summaries and every figure in
    ``figures/``.

    Parameters
    ----------
    folder : path
        A report folder (see :func:`read_folder`).
    self_contained : bool
        Embed the figures as base64 ``data:`` URIs, so that the page is one file that
        needs nothing beside it; otherwise they are linked by relative path.

    Every value is HTML-escaped (Jinja2 autoescaping).
    """
    from pyrocollapse.report import STATUS_RULE

    check_bool("self_contained", self_contained)
    rf = read_folder(folder)
    report, metrics = rf.report, rf.metrics
    ds = metrics.get("dataset") if isinstance(metrics.get("dataset"), dict) else {}
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    facts = [
        f"{report.num_points} held-out points diagnosed",
        f"{report.active_units} active units",
    ]
    if ds.get("name"):
        facts.insert(0, f"dataset {ds['name']}")
    if config.get("model"):
        facts.insert(
            1,
            f"model {config['model']} (latent_dim {config.get('latent_dim')}, prior "
            f"{config.get('prior')}, objective {config.get('elbo')})",
        )
    if _finite(metrics.get("train_seconds")):
        facts.append(f"trained in {float(metrics['train_seconds']):.1f} s")
    g = report.guide_quality
    settings = report.settings or {}
    return _render(
        "report.html",
        verdict=report.verdict,
        verdict_class=_verdict_class(report.verdict),
        facts="; ".join(facts),
        config=_config_table(config, metrics.get("objective"), ds),
        notes=report.notes(),
        causes=_causes_view(report.causes),
        elbo=_elbo_table(report),
        guide=None
        if g is None
        else _table(["statistic", "value"], [[k, v] for k, v in g.items() if k != "khat"]),
        sites=[_site_view(s, settings) for s in report.sites.values()],
        rule=STATUS_RULE,
        disentanglement=_disentanglement_view(metrics, report),
        summary=_summary_table(rf.path),
        figures=_figures(rf.path, self_contained),
        settings=_table(
            ["setting", "value"],
            [
                [
                    k,
                    v
                    if isinstance(v, numbers.Real) and not isinstance(v, bool)
                    else _value_text(v),
                ]
                for k, v in settings.items()
            ],
        )
        if settings
        else None,
    )
