"""The :class:`GalleryProgram` record, the feature vocabulary and the program registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO

__all__ = ["FEATURES", "GalleryProgram", "build", "program_names", "register"]

#: What a gallery program exercises. Every program's ``features`` is a subset.
#:
#: ``enumerate_guide``  a guide site enumerated in parallel (``config_enumerate``)
#: ``enumerate_model``  a model-only site enumerated in parallel (absent from the guide)
#: ``non_reparam``      a guide site without ``rsample`` that is not enumerated (score function)
#: ``delta_guide``      the guide emits ``Delta`` sites (MAP points; AutoNormal and
#:                      AutoDiagonalNormal emit every model latent as a Delta with log_density)
#: ``flow_guide``       a guide site is a ``TransformedDistribution`` (normalising flow)
#: ``mask``             sites are masked (``.mask(...)`` / ``poutine.mask``)
#: ``markov``           time steps in a ``pyro.markov`` loop
#: ``global_latent``    latent sites outside the data plate
#: ``batchnorm``        networks with ``BatchNorm`` layers (train/eval mode matters)
#: ``multi_arg``        the program takes more than one data argument (positional or keyword)
#: ``fixed_plate``      the data plate has a size fixed in the program, not read off the data
#: ``autoguide``        the guide is a ``pyro.infer.autoguide`` guide
#: ``subsample``        the data plate subsamples (``subsample_size``)
#: ``obs_named_obs``    an observed site is called ``"obs"``
#: ``constrained``      a continuous latent with constrained support (positive, simplex, ...)
FEATURES: frozenset[str] = frozenset(
    {
        "enumerate_guide",
        "enumerate_model",
        "non_reparam",
        "delta_guide",
        "flow_guide",
        "mask",
        "markov",
        "global_latent",
        "batchnorm",
        "multi_arg",
        "fixed_plate",
        "autoguide",
        "subsample",
        "obs_named_obs",
        "constrained",
    }
)

_REFERENCES = {"Trace_ELBO": Trace_ELBO, "TraceEnum_ELBO": TraceEnum_ELBO}


@dataclass
class GalleryProgram:
    """One small Pyro model/guide pair with one batch of data and what it exercises.

    ``local_latents`` are the guide-sampled latents inside ``data_plate`` (one per data
    point), ``global_latents`` the latents outside it, ``enumerated`` the sites enumerated
    in parallel (in the guide when it samples them, else in the model only). ``num_data``
    is the number of data points in ``args``: the full size of ``data_plate`` (with
    ``subsample_size`` the plate scores a random subset of them per step).
    """

    name: str
    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    reference: str
    max_plate_nesting: int
    features: frozenset[str]
    local_latents: tuple[str, ...]
    global_latents: tuple[str, ...]
    enumerated: tuple[str, ...]
    data_plate: str
    num_data: int
    train_data: Any
    modules: tuple[torch.nn.Module, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.reference not in _REFERENCES:
            raise ValueError(
                f"reference must be one of {sorted(_REFERENCES)}, got {self.reference!r}"
            )
        unknown = set(self.features) - FEATURES
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}")
        self.features = frozenset(self.features)

    def reference_elbo(self, **kw: Any) -> ELBO:
        """The stock Pyro ELBO that is exactly right for this program (``kw`` passed on)."""
        kw = {"max_plate_nesting": self.max_plate_nesting, **kw}
        return _REFERENCES[self.reference](**kw)


_BUILDERS: dict[str, Callable[..., GalleryProgram]] = {}


def register(name: str) -> Callable[[Callable[..., GalleryProgram]], Callable[..., GalleryProgram]]:
    """Decorator adding a builder ``fn(*, control: bool, seed: int, **options)`` as ``name``."""

    def decorate(fn: Callable[..., GalleryProgram]) -> Callable[..., GalleryProgram]:
        if name in _BUILDERS:
            raise ValueError(f"program {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return decorate


def program_names() -> tuple[str, ...]:
    """Names of the registered programs, in registration order."""
    return tuple(_BUILDERS)


def build(name: str, *, seed: int = 0, control: bool = False, **options: Any) -> GalleryProgram:
    """Build the gallery program ``name`` afresh.

    Clears Pyro's parameter store and seeds every RNG with ``seed`` before any module,
    datum or guide is created, so equal arguments give equal programs. ``control=True``
    gives the same program with a likelihood that ignores the local latents (programs
    without local latents raise ``ValueError``). ``options`` are program specific (e.g.
    ``build("dmm", iaf=True)``); an unknown option raises ``ValueError``.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown gallery program {name!r}; choose from {list(_BUILDERS)}"
        ) from None
    params = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(params) | set(options) & {"seed", "control"})
    if unknown:
        valid = sorted(p for p in params if p not in ("seed", "control"))
        raise ValueError(f"program {name!r} has no option(s) {unknown}; valid: {valid}")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    program = builder(control=bool(control), seed=seed, **options)
    if control and not program.local_latents:
        raise ValueError(f"program {name!r} has no local latents, so no control variant")
    return program


def no_control(name: str, control: bool) -> None:
    """Raise for ``control=True`` in programs without local latents (before building)."""
    if control:
        raise ValueError(f"program {name!r} has no local latents, so no control variant")
