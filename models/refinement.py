"""Semi-amortised inference (SA-VAE, Kim et al. 2018): refine q(z|x) per batch.

An amortised encoder can lag behind its decoder: early in training it cannot yet read
``x``, the decoder learns to do without ``z``, and the posterior collapses (He et al.
2019 call this inference lag). Semi-amortised inference starts from the encoder's output
and takes a few gradient-ascent steps on each point's own ELBO before the ELBO of the
batch is computed::

    lambda_0 = encoder(x)
    lambda_{k+1} = lambda_k + lr * clip(grad_lambda ELBO(x; lambda_k))     k < K
    q(z|x) = family(lambda_K)

Both are computed with the live decoder and prior, so the refined q is as close to the
model's posterior as ``K`` steps get it; the objective is the ELBO at ``lambda_K``, a
valid lower bound for any ``lambda``. In training, the steps are differentiated through
(``create_graph``), so the encoder learns to give a starting point that refines well, as
in Kim et al.; under ``torch.no_grad`` (diagnostics) the steps still run, on detached
values, and the guide reports the refined q.

:func:`refine` is what :class:`~pyrocollapse.models.VAE` runs in its guide when built
with ``refine_steps > 0``.

References
----------
Kim, Wiseman, Miller, Sontag, Rush (2018). Semi-Amortized Variational Autoencoders. ICML.
He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and Posterior
Collapse in Variational Autoencoders. ICLR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pyro import poutine

if TYPE_CHECKING:
    from pyrocollapse.models.base import VAE

__all__ = ["point_elbo", "refine"]


def point_elbo(vae: VAE, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One-draw reparameterised ELBO of every point for the encoder output ``out``.

    ``log p(x_i | z_i) + log p(z_i) - log q(z_i | x_i)`` with ``z_i ~ q`` built by the
    model's posterior family from ``out``. The observation is scored by the model's own
    :meth:`~pyrocollapse.models.VAE.observe` (teacher forcing, masks and all), traced with
    its ``sample`` statements hidden from any enclosing Pyro handler, so calling this
    inside a guide adds no site to the guide's trace.

    Parameters
    ----------
    vae : VAE
        A ready model whose :meth:`~pyrocollapse.models.VAE.encoder_output` ``out`` came
        from.
    out : torch.Tensor
        Encoder output ``(N, 2 * latent_dim)``.
    x : torch.Tensor
        The validated observations ``(N, *event_shape)``.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)``, nats per point.
    """
    q = vae.posterior_family(out)
    z = q.rsample()
    with poutine.block(hide_types=["sample", "observe"]):
        trace = poutine.trace(vae.observe).get_trace(z, x)
    site = trace.nodes[vae.observed_site]
    log_lik = site["fn"].log_prob(site["value"])
    return log_lik + vae.prior.log_prob(z) - q.log_prob(z)


def refine(
    vae: VAE,
    out: torch.Tensor,
    x: torch.Tensor,
    *,
    steps: int,
    lr: float,
    max_grad_norm: float,
) -> torch.Tensor:
    """Refine the encoder output ``out`` by ``steps`` gradient-ascent steps on each point's ELBO.

    Parameters
    ----------
    vae : VAE
        The model (its decoder, prior and posterior family score each step).
    out : torch.Tensor
        Encoder output ``(N, 2 * latent_dim)``: the starting variational parameters.
    x : torch.Tensor
        Observations ``(N, *event_shape)``.
    steps : int
        Number of refinement steps K (>= 1).
    lr : float
        Step size on the raw variational parameters.
    max_grad_norm : float
        Each point's gradient is rescaled to at most this Euclidean norm (the steps stay
        bounded early in training, when the decoder's gradients are large).

    Returns
    -------
    torch.Tensor
        The refined output, same shape. Differentiable through the steps when gradients
        are enabled (training); detached otherwise.
    """
    differentiable = torch.is_grad_enabled() and out.requires_grad
    with torch.enable_grad():
        current = out if differentiable else out.detach().requires_grad_(True)
        for _ in range(steps):
            elbo = point_elbo(vae, current, x)
            (grad,) = torch.autograd.grad(elbo.sum(), current, create_graph=differentiable)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            factor = (max_grad_norm / norm).clamp(max=1.0)
            grad = grad * factor.reshape(-1, *([1] * (grad.dim() - 1)))
            current = current + lr * grad
    return current if differentiable else current.detach()
