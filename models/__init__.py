"""Ready VAEs as Pyro model/guide programs (installed as ``pyrocollapse.models``).

Every model is a :class:`VAE`: a ``PyroModule`` with ``model(x)`` and ``guide(x)`` Pyro
programs, ``encode``, ``decode``, ``sample`` and ``reconstruct``, taking any
:class:`pyrocollapse.priors.Prior`.
"""

from pyrocollapse.models.base import MODELS, VAE, make_model
from pyrocollapse.models.mlp import MLPVAE

__all__ = ["MLPVAE", "MODELS", "VAE", "make_model"]
