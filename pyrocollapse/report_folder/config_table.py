"""The run-configuration table of the pages: every setting, with what it is."""

from __future__ import annotations

import math
from typing import Any

from pyrocollapse.report_folder.rendering import _Column, _Table, _table

__all__ = ["CONFIG_FIELDS"]


#: Rows of the run-configuration table: (``RunConfig.to_dict()`` key, label, what it is).
CONFIG_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("dataset", "dataset", "registered dataset name"),
    ("dataset_options", "dataset options", "keyword arguments of the dataset"),
    ("valid_fraction", "held-out fraction", "share of the data kept out of training and diagnosed"),
    ("model", "model", "registered model (encoder and decoder)"),
    ("latent_dim", "latent dimensions", "size of z"),
    ("model_options", "model options", "keyword arguments of the model"),
    ("prior", "prior", "registered prior p(z)"),
    ("prior_options", "prior options", "keyword arguments of the prior"),
    ("elbo", "objective", "registered training objective"),
    ("elbo_options", "objective options", "keyword arguments of the objective"),
    ("schedule", "KL schedule", "schedule of the KL weight; none: the objective's own"),
    ("schedule_options", "KL schedule options", "keyword arguments of the KL schedule"),
    ("epochs", "epochs", "passes over the training data"),
    ("batch_size", "batch size", "observations per optimisation step"),
    ("lr", "learning rate", "step size of the Adam optimiser"),
    ("seed", "seed", "fixes the train/held-out split, the initialisation and every draw"),
    (
        "aggressive",
        "aggressive training",
        "inner encoder steps until MI stops rising (He et al. 2019)",
    ),
    (
        "on_collapse",
        "on collapse",
        "reaction when the monitored active units or MI drop below their thresholds",
    ),
    ("min_active_units", "min. active units", "collapse threshold on active units"),
    ("min_mi", "min. MI", "collapse threshold on I_q(x; z), nats"),
    ("estimators", "estimators", "diagnostics run on the held-out data"),
    (
        "disentanglement_options",
        "disentanglement options",
        "options of the disentanglement estimator: points scored, DCI's predictor, histogram bins",
    ),
    (
        "num_samples",
        "z draws per point",
        "for the MI, marginal-KL and sensitivity estimates",
    ),
    (
        "bootstrap",
        "bootstrap replicates",
        "for the intervals on the marginal KL and the active units (0: none)",
    ),
    (
        "importance_samples",
        "importance samples",
        "draws per point for the IW log-likelihood and PSIS k-hat",
    ),
    ("posterior_samples", "posterior samples", "guide draws per point saved in posterior.nc"),
    ("posterior_points", "posterior points", "held-out points whose draws are in posterior.nc"),
)


def _value_text(value: Any, *, top: bool = True) -> str:
    """A configuration value in plain text: options as ``k=v, ...``, lists comma-separated
    (bracketed when nested), ``none`` for None or no options."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        if not value:
            return "none"
        return ", ".join(f"{k}={_value_text(v, top=False)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_value_text(v, top=False) for v in value)
        return inner if top else f"[{inner}]"
    return str(value)


def _schedule_text(spec: Any) -> str:
    """``linear (warmup_steps=2, start=0.0, end=1.0)`` from a schedule's ``to_dict()``."""
    if not isinstance(spec, dict):
        return _value_text(spec)
    rest = {k: v for k, v in spec.items() if k != "name"}
    name = str(spec.get("name", "schedule"))
    return f"{name} ({_value_text(rest)})" if rest else name


def _built_objective(objective: Any) -> str:
    if isinstance(objective, dict):
        rest = {k: v for k, v in objective.items() if k not in ("class", "name")}
        parts = [
            f"{k}={_schedule_text(v) if k == 'kl_weight' else _value_text(v, top=False)}"
            for k, v in rest.items()
        ]
        head = str(objective.get("class") or objective.get("name") or "objective")
        return f"{head}: {', '.join(parts)}" if parts else head
    return _value_text(objective)


def _loaded_dataset(ds: dict[str, Any]) -> str:
    parts = []
    if ds.get("kind") is not None:
        parts.append(f"kind {ds['kind']}")
    if ds.get("n") is not None:
        parts.append(f"{ds['n']} observations")
    for key, label in (
        ("event_shape", "event shape"),
        ("image_shape", "image shape"),
        ("dtype", "dtype"),
        ("vocab_size", "vocabulary"),
    ):
        if ds.get(key) is not None:
            parts.append(f"{label} {_value_text(ds[key], top=False)}")
    meta = ds.get("metadata")
    if isinstance(meta, dict) and meta.get("source") is not None:
        parts.append(f"source {meta['source']}")
    return "; ".join(parts)


def _config_table(
    config: dict[str, Any],
    objective: Any = None,
    dataset: dict[str, Any] | None = None,
    skip: tuple[str, ...] = (),
) -> _Table | None:
    """Every entry of a run's configuration, known ones first with what they are; the
    objective and data set as built follow their configured names."""
    if not isinstance(config, dict) or not config:
        return None
    known = {key for key, _, _ in CONFIG_FIELDS}
    rows: list[list[Any]] = []
    for key, label, what in CONFIG_FIELDS:
        if key in skip or key not in config:
            continue
        value = config[key]
        text = _value_text(value)
        if key == "schedule" and value is None:
            spec = objective.get("kl_weight") if isinstance(objective, dict) else None
            text = "none (the objective's own" + (
                f": {_schedule_text(spec)})" if spec is not None else ")"
            )
        rows.append([label, text, what])
        if key == "dataset_options" and dataset:
            rows.append(["dataset as loaded", _loaded_dataset(dataset), "from metrics.json"])
        if key == "elbo_options" and objective is not None:
            rows.append(["objective as built", _built_objective(objective), "from metrics.json"])
    for key, value in config.items():
        if key not in known and key not in skip:
            rows.append([str(key), _value_text(value), ""])
    return _table(
        [
            _Column("setting", text=True),
            _Column("value", text=True),
            _Column("what it is", text=True),
        ],
        rows,
    )
