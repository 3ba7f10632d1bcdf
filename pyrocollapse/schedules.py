"""KL-weight schedules: plain, serialisable objects with ``__call__(step) -> float``.

A schedule maps the optimisation step (0, 1, 2, ...) to a KL weight. Schedules hold no
state: the ELBO owns the step counter, so one schedule can be shared and plotted.
Adding a schedule means subclassing :class:`Schedule`, implementing ``__call__`` and
listing the constructor arguments in ``_fields`` (used by ``to_dict``/``from_dict``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.registry import Registry

__all__ = ["SCHEDULES", "Constant", "Cyclical", "Linear", "Schedule", "Sigmoid"]

#: Short name -> schedule class, used by ``pyrocollapse run --schedule NAME``.
SCHEDULES: Registry[Any] = Registry("schedule")


class Schedule:
    """Base class: a deterministic map from step (int >= 0) to a weight (float >= 0)."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def values(self, steps: int | Sequence[int]) -> np.ndarray:
        """Weights at ``range(steps)`` (or at the given steps), shape ``(len(steps),)``."""
        if isinstance(steps, int):
            steps = range(check_int("steps", steps, minimum=1))
        return np.array([self(int(s)) for s in steps], dtype=float)

    def plot(self, steps: int, ax: Any = None) -> Any:
        """Plot the schedule over ``range(steps)``; returns the matplotlib Figure."""
        # One-way edge to the drawing code, taken only here: plots reads schedules as data
        # and never imports this module, so ``import pyrocollapse.schedules`` loads no
        # matplotlib.
        from pyrocollapse.plots import plot_schedule

        return plot_schedule(self, steps, ax=ax)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: ``{"name": ..., **arguments}``."""
        return {"name": self._name, **{f: getattr(self, f) for f in self._fields}}

    @staticmethod
    def from_dict(spec: dict[str, Any]) -> Schedule:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(spec, dict):
            raise TypeError(
                f"a schedule spec must be a dict such as {{'name': 'linear', 'warmup_steps': 100}}, "
                f"got {type(spec).__name__}"
            )
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(
                f"schedule spec {spec!r} needs a 'name', one of: {', '.join(SCHEDULES.names())}"
            )
        name = spec.pop("name")
        cls = SCHEDULES.get(name)
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = [k for k in spec if k not in accepted]
        if unknown:
            raise TypeError(
                f"unknown argument(s) {', '.join(map(repr, unknown))} for schedule {name!r}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )
        return cls(**spec)

    @property
    def _name(self) -> str:
        for name in SCHEDULES:
            if SCHEDULES.get(name) is type(self):
                return name
        return type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    @staticmethod
    def _check_step(step: int) -> int:
        return check_int("step", step, minimum=0)


@SCHEDULES.register("constant")
class Constant(Schedule):
    """A fixed weight ``value`` (default 1: the plain ELBO)."""

    _fields = ("value",)

    def __init__(self, value: float = 1.0) -> None:
        self.value = check_float("value", value, minimum=0.0)

    def __call__(self, step: int) -> float:
        self._check_step(step)
        return self.value


@SCHEDULES.register("linear")
class Linear(Schedule):
    """Linear warm-up from ``start`` to ``end`` over ``warmup_steps`` steps, then ``end``.

    ``weight(t) = start + (end - start) * min(1, t / warmup_steps)`` (Bowman et al. 2016).
    """

    _fields = ("warmup_steps", "start", "end")

    def __init__(self, warmup_steps: int, start: float = 0.0, end: float = 1.0) -> None:
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=1)
        self.start = check_float("start", start, minimum=0.0)
        self.end = check_float("end", end, minimum=0.0)

    def __call__(self, step: int) -> float:
        t = min(1.0, self._check_step(step) / self.warmup_steps)
        return self.start + (self.end - self.start) * t


@SCHEDULES.register("sigmoid")
class Sigmoid(Schedule):
    """Logistic warm-up ``end / (1 + exp(-steepness * (t - midpoint)))``.

    Parameters
    ----------
    midpoint : int
        Step at which the weight reaches ``end / 2``.
    steepness : float
        Slope (per step) of the logistic; > 0.
    end : float
        Final weight.
    """

    _fields = ("midpoint", "steepness", "end")

    def __init__(self, midpoint: int, steepness: float = 0.01, end: float = 1.0) -> None:
        self.midpoint = check_int("midpoint", midpoint, minimum=0)
        self.steepness = check_float("steepness", steepness, minimum=0.0, strict_minimum=True)
        self.end = check_float("end", end, minimum=0.0)

    def __call__(self, step: int) -> float:
        u = -self.steepness * (self._check_step(step) - self.midpoint)
        return self.end / (1.0 + math.exp(u)) if u < 700 else 0.0


@SCHEDULES.register("cyclical")
class Cyclical(Schedule):
    """Cyclical annealing (Fu et al. 2019).

    Within each cycle of ``period`` steps the weight rises linearly from 0 to ``end``
    over the first ``ratio * period`` steps and stays at ``end`` for the rest; after
    ``n_cycles`` cycles it stays at ``end``::

        tau = (t mod period) / period
        weight(t) = end * min(1, tau / ratio)   for t < n_cycles * period
        weight(t) = end                          otherwise

    References
    ----------
    Fu, Li, Liu, Gao, Celikyilmaz, Carin (2019). Cyclical Annealing Schedule: A Simple
    Approach to Mitigating KL Vanishing. NAACL.
    """

    _fields = ("period", "n_cycles", "ratio", "end")

    def __init__(self, period: int, n_cycles: int = 4, ratio: float = 0.5, end: float = 1.0):
        self.period = check_int("period", period, minimum=1)
        self.n_cycles = check_int("n_cycles", n_cycles, minimum=1)
        self.ratio = check_float("ratio", ratio, minimum=0.0, maximum=1.0, strict_minimum=True)
        self.end = check_float("end", end, minimum=0.0)

    def __call__(self, step: int) -> float:
        t = self._check_step(step)
        if t >= self.n_cycles * self.period:
            return self.end
        tau = (t % self.period) / self.period
        return self.end * min(1.0, tau / self.ratio)


def make_schedule(spec: Schedule | float | dict[str, Any]) -> Schedule:
    """Coerce a schedule, a constant weight, or a ``to_dict`` spec into a :class:`Schedule`."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        return Schedule.from_dict(spec)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(float(spec))
    raise TypeError(
        f"schedule must be a Schedule, a non-negative number or a dict spec, got {type(spec).__name__}"
    )
