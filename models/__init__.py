"""Ready VAEs as Pyro model/guide programs (installed as ``pyrocollapse.models``).

Every model is a :class:`VAE`: a ``PyroModule`` with ``model(x)`` and ``guide(x)`` Pyro
programs, ``encode``, ``decode``, ``generate``, ``sample`` and ``reconstruct``, taking any
:class:`pyrocollapse.priors.Prior`, registered in :data:`MODELS` for
``pyrocollapse run --model NAME``. Ordered by the power of the decoder, from the
analytically solvable to the notoriously collapsing:

========== ==================== =====================================================
name       class                decoder
========== ==================== =====================================================
linear     :class:`LinearVAE`   linear Gaussian (probabilistic PCA; closed forms)
mlp        :class:`MLPVAE`      factorised MLP (Bernoulli / continuous Bernoulli / Gaussian)
ladder     :class:`LadderVAE`   two latent layers, z2 -> z1 -> x, ladder inference
conv       :class:`ConvVAE`     transposed convolutions, optional PixelCNN head
sequence   :class:`SequenceVAE` autoregressive GRU/LSTM language model conditioned on z
========== ==================== =====================================================
"""

from pyrocollapse.models.base import MODELS, VAE, make_model

# isort: off
# Import order is registration order, which ``pyrocollapse run --help`` and the
# "valid names" of errors list: the default model first, then by decoder power.
from pyrocollapse.models.mlp import MLPVAE
from pyrocollapse.models.linear import LinearVAE, PPCASolution
from pyrocollapse.models.ladder import LadderVAE
from pyrocollapse.models.conv import ConvVAE
from pyrocollapse.models.sequence import SequenceVAE

# isort: on

__all__ = [
    "MLPVAE",
    "MODELS",
    "VAE",
    "ConvVAE",
    "LadderVAE",
    "LinearVAE",
    "PPCASolution",
    "SequenceVAE",
    "make_model",
]
