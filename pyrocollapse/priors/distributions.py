"""Distributions the priors share: :class:`DiagonalNormalMixture` (mixture and VampPrior)."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch

__all__ = ["DiagonalNormalMixture"]


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """A mixture of K diagonal Normals over ``(D,)``, as ``MixtureSameFamily``, whose
    ``log_prob`` never forms the ``(..., K, D)`` tensor.

    ``log N(z; mu_k, sigma_k)`` summed over dimensions expands into
    ``-0.5 (z^2 . w_k - 2 z . (mu_k w_k) + mu_k^2 . w_k) - sum_d log sigma_kd - D/2 log 2 pi``
    with ``w_k = 1 / sigma_k^2``: two ``(N, D) x (D, K)`` matrix products for N points,
    in float64 because the terms cancel (the result is then rounded to ``z``'s dtype).
    On a 784-512-512-32 VAE with a 50-component VampPrior this removes a
    ``(128, 50, 32)`` tensor and its backward from every step. The value equals
    ``MixtureSameFamily.log_prob`` up to rounding; where the fast form does not apply (a
    mixture with batch dimensions, components that are not an ``Independent`` of plain
    Normals, a device without fast float64) it is ``MixtureSameFamily.log_prob`` itself.

    Parameters
    ----------
    mixture_distribution : Categorical
        Weights over the K components, batch shape ``()``.
    component_distribution : Independent(Normal, 1)
        Batch shape ``(K,)``, event shape ``(D,)``.
    """

    def __init__(
        self,
        mixture_distribution: dist.Categorical,
        component_distribution: dist.TorchDistribution,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(mixture_distribution, torch.distributions.Categorical):
            raise TypeError(
                "mixture_distribution must be a Categorical over the components, got "
                f"{type(mixture_distribution).__name__}"
            )
        if not isinstance(component_distribution, torch.distributions.Distribution):
            raise TypeError(
                "component_distribution must be a Distribution with batch shape (K,) and "
                f"event shape (D,), e.g. Normal(loc, scale).to_event(1); got "
                f"{type(component_distribution).__name__}"
            )
        super().__init__(mixture_distribution, component_distribution, validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> DiagonalNormalMixture:
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        comp = self.component_distribution
        base = getattr(comp, "base_dist", None)
        fast = (
            self.batch_shape == torch.Size()
            and isinstance(comp, dist.Independent)
            and comp.reinterpreted_batch_ndims == 1
            and isinstance(base, dist.Normal)
            and type(base).log_prob is dist.Normal.log_prob
            and value.dim() >= 1
            and value.shape[-1] == comp.event_shape[0]
            and value.device.type in ("cpu", "cuda")
        )
        if not fast:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        k, d = comp.batch_shape[0], comp.event_shape[0]
        loc, scale = (t.expand(k, d) for t in torch.broadcast_tensors(base.loc, base.scale))
        lead = value.shape[:-1]
        z = value.reshape(-1, d).double()
        locd = loc.double()
        w = scale.double().reciprocal().square()  # (K, D)
        m = locd * w
        quad = z.square() @ w.T - 2.0 * (z @ m.T) + (locd * m).sum(-1)  # (N, K)
        bias = -scale.double().log().sum(-1) - d * _HALF_LOG_2PI  # (K,)
        log_w = torch.log_softmax(self.mixture_distribution.logits.double(), -1)
        out = torch.logsumexp(bias + log_w - 0.5 * quad, dim=-1)
        return out.to(value.dtype).reshape(lead)
