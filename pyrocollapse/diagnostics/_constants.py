"""Sizes and tolerances shared by the estimators: blocks of the aggregate posterior's
density matrices, rows of a vectorised model run, the extent of a report's figures, and
the float32 tolerance of the Gaussian quadratic-form expansion, log(2 pi)."""

from __future__ import annotations

import math

#: Entries per block of the pairwise (draw x component) log-density matrices: small
#: enough to stay in cache (measured: 2**17-2**18 runs about twice as fast as 2**21).
_BLOCK = 2**18
#: Entries per block of the per-dimension (dimension x draw x component) pass.
_DIM_BLOCK = 2**17
#: (draws x points) rows per vectorised model run.
_PARTICLE_ROWS = 2**14
#: What a report keeps for its figures: the posterior-mean space of this many points, and
#: the densities of this many observations on grids of this many points.
_MEAN_SPACE_POINTS = 500
_DENSITY_POINTS, _DENSITY_GRID = 5, 121
#: Largest error (nats) tolerated from the float32 expansion of the Gaussian quadratic form.
_F32_TOLERANCE = 1e-3
_LOG_2PI = math.log(2 * math.pi)
