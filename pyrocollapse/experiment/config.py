"""The configuration of one run: :class:`RunConfig` and the checks of its names and options.

A :class:`RunConfig` names everything by its registry name and plain options, so that it
serialises to JSON and travels to worker processes; :meth:`RunConfig.validate` checks
every value before any work. The registries are imported on first use, not at import.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from pyrocollapse._validation import check_choice, check_float, check_int


@dataclass
class RunConfig:
    """Everything one run needs, by name and plain options.

    Attributes mirror ``pyrocollapse run``'s options (``--dataset``, ``--model``, ...);
    ``*_options`` are keyword arguments for the registered dataset, model, prior, objective
    and schedule.

    ``schedule`` is the KL-weight schedule: ``None`` means the objective's own default
    (a linear warm-up over a third of training for ``annealed``, a constant weight for the
    others); a name (``linear``, ``cyclical``, ``sigmoid``, ``constant``) anneals any
    objective. ``schedule_options`` missing ``warmup_steps``/``period``/``midpoint`` get
    defaults scaled to the total number of steps.

    ``aggressive`` turns on aggressive inference-network training (He et al. 2019);
    ``on_collapse`` (``"warn"``, ``"aggressive"``, ``"rollback"`` or ``None``) adds the
    matching :mod:`pyrocollapse.callbacks` callback with thresholds ``min_active_units``
    and ``min_mi``.

    ``estimators`` are the names of :data:`RUN_ESTIMATORS`: those of
    :func:`pyrocollapse.diagnose` and ``"disentanglement"``, which scores the posterior
    means of each continuous local site on the held-out points against the data set's
    known generative factors (MIG, SAP, DCI, FactorVAE; see
    :func:`pyrocollapse.diagnostics._disentanglement_report.disentanglement_by_site`),
    with ``disentanglement_options`` (``max_points``, ``regressor``, ``bins``,
    ``factorvae``, ``n_estimators``).
    """

    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    valid_fraction: float = 0.1
    model: str = "mlp"
    latent_dim: int = 16
    model_options: dict[str, Any] = field(default_factory=dict)
    prior: str = "standard"
    prior_options: dict[str, Any] = field(default_factory=dict)
    elbo: str = "annealed"
    elbo_options: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    schedule_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    num_samples: int = 8
    estimators: tuple[str, ...] = (
        "kl", "au", "mi", "rhat", "sensitivity", "iw", "psis", "causes", "disentanglement",
    )  # fmt: skip
    bootstrap: int = 200
    importance_samples: int = 100
    posterior_samples: int = 100
    posterior_points: int = 500
    aggressive: bool = False
    on_collapse: str | None = None
    min_active_units: int | None = 1
    min_mi: float | None = None
    disentanglement_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RunConfig:
        """Check every value and name before any work; returns ``self``.

        Raises ``ValueError``/``TypeError`` naming the option (as on the command line).
        """
        from pyrocollapse.data import DATASETS
        from pyrocollapse.models import MODELS
        from pyrocollapse.priors import PRIORS
        from pyrocollapse.schedules import SCHEDULES

        registry = objectives()
        check_int("--epochs", self.epochs, minimum=1)
        check_int("--batch-size", self.batch_size, minimum=1)
        check_int("--latent-dim", self.latent_dim, minimum=1)
        check_int("--seed", self.seed, minimum=0)
        check_int("--num-samples", self.num_samples, minimum=1)
        check_int("--bootstrap", self.bootstrap, minimum=0)
        if self.bootstrap == 1:
            raise ValueError("--bootstrap must be 0 or >= 2, got 1")
        check_int("--importance-samples", self.importance_samples, minimum=1)
        check_int("--posterior-samples", self.posterior_samples, minimum=0)
        check_int("--posterior-points", self.posterior_points, minimum=1)
        valid_estimators = _run_estimators()
        if isinstance(self.estimators, str) or not isinstance(self.estimators, (tuple, list)):
            raise TypeError(
                "--estimators must be a sequence of names such as ('kl', 'au'), got "
                f"{type(self.estimators).__name__} {self.estimators!r}"
            )
        self.estimators = tuple(self.estimators)
        unknown = [e for e in self.estimators if e not in valid_estimators]
        if unknown or not self.estimators:
            raise ValueError(
                f"--estimators names unknown estimators {unknown}; valid names: "
                f"{', '.join(valid_estimators)}"
            )
        from pyrocollapse.diagnostics._disentanglement_report import (
            check_disentanglement_options,
        )

        self.disentanglement_options = check_disentanglement_options(self.disentanglement_options)
        if "psis" in self.estimators and self.importance_samples < 50:
            raise ValueError(
                f"--importance-samples must be >= 50 with the 'psis' estimator, got {self.importance_samples}"
            )
        check_float("--lr", self.lr, minimum=0.0, strict_minimum=True)
        check_float(
            "--valid-fraction", self.valid_fraction, minimum=0.0, maximum=0.9, strict_minimum=True
        )
        _check_options("dataset", DATASETS.get(self.dataset), self.dataset_options)
        _check_options(
            "model",
            MODELS.get(self.model).__init__,
            self.model_options,
            skip=("latent_dim", "prior"),
        )
        _check_options(
            "prior", PRIORS.get(self.prior).__init__, self.prior_options, skip=("latent_dim",)
        )
        elbo_cls = registry.get(self.elbo)
        _check_options("elbo", elbo_cls.__init__, self.elbo_options)
        schedule = self.schedule_name
        if schedule is not None:
            _check_options("schedule", SCHEDULES.get(schedule).__init__, self.schedule_options)
            if _schedule_argument(elbo_cls) is None:
                raise ValueError(f"objective {self.elbo!r} takes no KL schedule; drop --schedule")
        elif self.schedule_options:
            raise ValueError("schedule options need --schedule NAME for this objective")
        if not isinstance(self.aggressive, bool):
            raise TypeError(f"aggressive must be a bool, got {self.aggressive!r}")
        if self.on_collapse is not None:
            check_choice("--on-collapse", self.on_collapse, ON_COLLAPSE)
        if self.min_active_units is not None:
            check_int("--min-active-units", self.min_active_units, minimum=1)
        if self.min_mi is not None:
            check_float("--min-mi", self.min_mi, minimum=0.0)
        if self.on_collapse is not None and self.min_active_units is None and self.min_mi is None:
            raise ValueError("--on-collapse needs --min-active-units or --min-mi")
        return self

    def notes(self) -> list[str]:
        """What this configuration does that a reader might not expect (printed at the
        start of a run): free bits per dimension with a prior that does not factorise
        over dimensions are applied per site instead."""
        from pyrocollapse.priors import PRIORS

        registry = objectives()
        out = []
        elbo_cls, prior_cls = registry.get(self.elbo), PRIORS.get(self.prior)
        per = self.elbo_options.get("per", _default(elbo_cls, "per"))
        if per == "dimension" and not getattr(prior_cls, "factorized", True):
            out.append(
                f"--prior {self.prior} does not factorise over dimensions (no per-dimension "
                f"KL), so --elbo {self.elbo} floors the KL of site 'z' as one group (free bits "
                "per site); --elbo-option per=site says so explicitly, and a factorised prior "
                f"({', '.join(_factorized_priors())}) gives free bits per dimension"
            )
        return out

    @property
    def schedule_name(self) -> str | None:
        """The schedule to build: ``schedule``, or ``"linear"`` for ``annealed`` by default."""
        if (
            self.schedule is None
            and self.elbo == "annealed"
            and "schedule" not in self.elbo_options
        ):
            return "linear"
        return self.schedule

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        if not isinstance(d, dict):
            raise TypeError(f"a run configuration must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown run option(s) {sorted(unknown)}; accepted: {sorted(names)}")
        return cls(**d)


#: Estimators of ``pyrocollapse run`` that :func:`pyrocollapse.diagnose` does not run
#: itself: computed by :func:`run_experiment` after the diagnosis.
RUN_ONLY_ESTIMATORS = ("disentanglement",)


def _run_estimators() -> tuple[str, ...]:
    """Every estimator name ``RunConfig.estimators`` accepts: :data:`pyrocollapse.diagnostics.ESTIMATORS`
    and :data:`RUN_ONLY_ESTIMATORS`."""
    from pyrocollapse.diagnostics import ESTIMATORS

    return (*ESTIMATORS, *(e for e in RUN_ONLY_ESTIMATORS if e not in ESTIMATORS))


def objectives() -> Any:
    """The objective registry :data:`pyrocollapse.elbo.ELBOS` (importing
    :mod:`pyrocollapse.elbo` registers every objective the command line offers,
    ``"factorvae"`` included); imported on first use, not at module import."""
    from pyrocollapse.elbo import ELBOS

    return ELBOS


def _check_options(
    what: str, target: Any, options: dict[str, Any], skip: tuple[str, ...] = ()
) -> None:
    if not isinstance(options, dict):
        raise TypeError(f"{what} options must be a dict, got {type(options).__name__}")
    params = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", *skip)
    ]
    for key in options:
        if key not in params:
            raise ValueError(
                f"unknown {what} option {key!r}; accepted: {', '.join(params) or 'none'}"
            )


def _default(target: Any, name: str) -> Any:
    """The default of ``target.__init__``'s parameter ``name`` (None if it has none)."""
    param = inspect.signature(target.__init__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def _factorized_priors() -> list[str]:
    from pyrocollapse.priors import PRIORS

    return [n for n in PRIORS.names() if getattr(PRIORS.get(n), "factorized", True)]


def _check_config(config: Any) -> RunConfig:
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"config must be a RunConfig, got {type(config).__name__} (use RunConfig(**options) "
            "or RunConfig.from_dict)"
        )
    return config.validate()


def _schedule_argument(elbo_cls: type) -> str | None:
    """The constructor argument that takes a KL schedule (``schedule`` or ``kl_weight``)."""
    params = inspect.signature(elbo_cls.__init__).parameters
    for name in ("schedule", "kl_weight"):
        if name in params:
            return name
    return None


#: ``on_collapse`` choices -> callback class names in :mod:`pyrocollapse.callbacks`.
ON_COLLAPSE = {
    "warn": "CollapseWarning",
    "aggressive": "AggressiveOnCollapse",
    "rollback": "RollbackOnCollapse",
}
