"""One small instance of every ready model (and model variant), shared by the model
contract suite (``tests/models/test_models.py``) and the device tests
(``tests/test_device.py``): ``CASES``, their ids, and the (model, prior) pairs that cannot
work. A new model joins both suites by adding one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyrocollapse.data import make_ppca, make_sequences, make_shapes
from pyrocollapse.models import MLPVAE, VAE, ConvVAE, LadderVAE, LinearVAE, SequenceVAE

N = 12  # rows per test batch


@dataclass(frozen=True)
class Case:
    """One small model: ``build(prior)`` makes it, ``data()`` gives a fitting batch."""

    id: str
    registry_name: str
    build: Callable[..., VAE]
    data: Callable[[], torch.Tensor]
    latent_dims: dict[str, int]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data().shape[1:])


def _unit(d: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.rand(N, d, generator=torch.Generator().manual_seed(1))


def _shapes() -> torch.Tensor:
    return make_shapes(N, size=8, seed=1).data


def _tokens() -> torch.Tensor:
    return make_sequences(N, vocab_size=10, max_len=7, n_topics=2, seed=1).data


CASES = [
    Case(
        "linear",
        "linear",
        lambda prior=None: LinearVAE(6, 2, prior),
        lambda: make_ppca(N, spectrum=(2.0, 1.0), input_dim=6, seed=1).data,
        {"z": 2},
    ),
    Case(
        "linear-fixed-noise",
        "linear",
        lambda prior=None: LinearVAE(6, 2, prior, noise=0.5),
        lambda: make_ppca(N, spectrum=(2.0, 1.0), input_dim=6, seed=1).data,
        {"z": 2},
    ),
    Case("mlp", "mlp", lambda prior=None: MLPVAE(16, 2, prior, hidden=(8,)), _unit(16), {"z": 2}),
    Case(
        "ladder",
        "ladder",
        lambda prior=None: LadderVAE(16, 2, prior, z1_dim=3, hidden=(8,), top_hidden=(4,)),
        _unit(16),
        {"z1": 3, "z2": 2},
    ),
    Case(
        "conv",
        "conv",
        lambda prior=None: ConvVAE((1, 8, 8), 2, prior, channels=(4, 8)),
        _shapes,
        {"z": 2},
    ),
    Case(
        "conv-autoregressive",
        "conv",
        lambda prior=None: ConvVAE(
            (1, 8, 8), 2, prior, channels=(4, 8), autoregressive=True, ar_hidden=4, ar_layers=1
        ),
        _shapes,
        {"z": 2},
    ),
    Case(
        "sequence",
        "sequence",
        lambda prior=None: SequenceVAE(
            10, 2, prior, embed=4, hidden=8, max_len=7, word_dropout=0.3
        ),
        _tokens,
        {"z": 2},
    ),
    Case(
        "sequence-gru",
        "sequence",
        lambda prior=None: SequenceVAE(
            10, 2, prior, embed=4, hidden=8, max_len=7, cell="gru", latent_every_step=False
        ),
        _tokens,
        {"z": 2},
    ),
]
CASE_IDS = [c.id for c in CASES]

#: (model, prior) pairs that cannot work, with the reason; the test checks they fail clearly.
INCOMPATIBLE = {
    ("sequence", "vamp"): "VampPrior encodes continuous pseudo-inputs; token ids are discrete",
}
