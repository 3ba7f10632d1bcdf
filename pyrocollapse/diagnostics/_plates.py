"""The data plate of a traced program: :func:`data_plate_name`.

A leaf of the diagnostics (it imports only :func:`pyrocollapse.elbo.data_plate_frame`),
shared by the tracing helpers and :mod:`pyrocollapse.diagnostics.sites`, which re-exports
it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["data_plate_name"]


def data_plate_name(model_tr: Any, guide_tr: Any) -> str | None:
    """The data plate: the outermost vectorised plate enclosing every observed site; where
    there is none, the plate at dim -1 of the first latent site; else ``None``."""
    from pyrocollapse.elbo import data_plate_frame

    frame = data_plate_frame(model_tr)
    if frame is not None:
        return frame[0]
    for name, site in guide_tr.nodes.items():
        if site["type"] == "sample" and name in model_tr.nodes:
            for f in site["cond_indep_stack"]:
                if f.vectorized and f.dim == -1:
                    return f.name
    return None
