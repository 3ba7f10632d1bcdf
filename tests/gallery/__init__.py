"""A gallery of small Pyro programs in the style of Pyro's examples, for the test suite.

>>> program = build("m2")
>>> svi = SVI(program.model, program.guide, Adam({"lr": 1e-2}), loss=program.reference_elbo())
>>> svi.step(*program.args, **program.kwargs)

Every program builds in milliseconds on CPU from synthetic data; see :data:`FEATURES`
for what the ``features`` tags mean and :func:`build` for seeding and ``control``.
"""

from __future__ import annotations

from ._core import FEATURES, GalleryProgram, build, program_names
from .classic import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, mixture_data
from .programs import M2VAE, cvae_data, m2_accuracy, m2_data, reverse_sequences

_ORDER = (
    "vae",
    "m2",
    "dmm",
    "prodlda",
    "cvae",
    "hier_autonormal",
    "hier_autodiagnormal",
    "eight_schools",
    "lda",
    "mixture",
    "mixture_enum",
    "poisson",
    "zoo_mlp",
)
assert set(_ORDER) == set(program_names()), "gallery registry and PROGRAMS disagree"

#: Names of every gallery program, in the order of the gallery's documentation.
PROGRAMS: tuple[str, ...] = _ORDER

#: (program, options): every program, and the options that change its features; the
#: cases the contract suites run over.
CASES: list[tuple[str, dict]] = [(name, {}) for name in PROGRAMS] + [
    ("dmm", {"iaf": True}),
    ("m2", {"labelled": True}),
    ("eight_schools", {"guide": "auto"}),
    ("mixture", {"delta_locs": True}),
    ("vae", {"subsample_size": 8}),
]


def case_id(case: tuple[str, dict]) -> str:
    """A pytest id for a case: ``"dmm-iaf=True"``."""
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())

__all__ = [
    "CASES",
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "FEATURES",
    "M2VAE",
    "PROGRAMS",
    "GalleryProgram",
    "build",
    "case_id",
    "cvae_data",
    "m2_accuracy",
    "m2_data",
    "mixture_data",
    "reverse_sequences",
]
