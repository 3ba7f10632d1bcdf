"""The VampPrior: a mixture of the encoder's posteriors at learned pseudo-inputs (``vamp``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrocollapse._validation import check_choice, check_data, check_float, check_int, module_device
from pyrocollapse.priors.base import PRIORS, Prior
from pyrocollapse.priors.distributions import DiagonalNormalMixture

__all__ = ["PSEUDO_SUPPORTS", "VampPrior"]


def _placement(obj: object) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of a module, or of the module a bound method belongs to
    (``(None, None)`` for anything else, e.g. a plain function)."""
    module = getattr(obj, "__self__", obj)
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return module_device(obj), None


def _check_shape(name: str, value: object) -> tuple[int, ...]:
    """A tuple of positive ints (an event shape)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(
            f"{name} must be a non-empty tuple of positive ints such as (64,) or (1, 28, 28), "
            f"got {type(value).__name__} {value!r}"
        )
    if len(value) == 0:
        raise ValueError(
            f"{name} must be a non-empty tuple of positive ints such as (64,) or (1, 28, 28), "
            "got ()"
        )
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


#: Accepted values of ``VampPrior(support=...)``: how raw pseudo-inputs map to inputs.
PSEUDO_SUPPORTS = ("unit", "real")


@PRIORS.register("vamp")
class VampPrior(Prior):
    """VampPrior: the mixture of the encoder's posteriors at K learnable pseudo-inputs.

    ``p(z) = (1/K) sum_k q(z | u_k)``, where ``q`` is the *live* encoder of the model and
    ``u_1..u_K`` are learnable pseudo-inputs of the data's event shape. ``log_prob`` is
    exact (logsumexp over the K components).

    Parameters
    ----------
    encoder : callable or None
        ``x -> q(z|x)``: takes a batch ``(K, *input_shape)`` and returns a distribution
        with batch shape ``(K,)`` and event shape ``(latent_dim,)``, e.g. a VAE's
        ``encode`` method. ``None`` binds it later: a VAE calls :meth:`attach` with
        itself, which binds ``model.encode``. The encoder is referenced, not owned: its
        parameters stay registered (and named) once, by the model, and every change to
        them changes this prior.
    n_pseudo : int
        Number of pseudo-inputs K (>= 1).
    input_shape : tuple[int, ...]
        Event shape of one observation, e.g. ``(64,)``.
    latent_dim : int or None
        Dimension of z. Required when ``encoder`` is None; otherwise inferred by calling
        the encoder once (and checked against ``latent_dim`` when both are given).
    support : {"unit", "real"}
        ``"unit"``: pseudo-inputs are ``sigmoid(raw)``, in (0, 1), valid inputs of models
        with Bernoulli-type likelihoods. ``"real"``: pseudo-inputs are ``raw``.

    Notes
    -----
    The pseudo-inputs start as uniform noise in [0.05, 0.95] (``"unit"``) or standard
    normal noise (``"real"``); :meth:`init_pseudo_inputs` seeds them from data instead,
    which the paper recommends for faster training.

    If ``encoder`` is a plain function or ``nn.Module`` that belongs to no model, register
    its parameters yourself (e.g. ``pyro.module("encoder", net)`` in the model), or they
    will not be trained by SVI through this prior.

    References
    ----------
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS.
    """

    factorized = False

    def __init__(
        self,
        encoder: Callable[[torch.Tensor], dist.Distribution] | None,
        n_pseudo: int,
        input_shape: tuple[int, ...],
        *,
        latent_dim: int | None = None,
        support: str = "unit",
    ) -> None:
        if encoder is not None and not callable(encoder):
            raise TypeError(
                "encoder must be a callable x -> q(z|x) (e.g. vae.encode) or None, "
                f"got {type(encoder).__name__}"
            )
        n_pseudo = check_int("n_pseudo", n_pseudo, minimum=1)
        input_shape = _check_shape("input_shape", input_shape)
        support = check_choice("support", support, PSEUDO_SUPPORTS)
        if latent_dim is None:
            if encoder is None:
                raise ValueError(
                    "latent_dim is required when encoder is None (the encoder is bound later "
                    "by attach(model)); pass latent_dim=<the model's latent_dim>"
                )
            device, dtype = _placement(encoder)
            probe = torch.full((1, *input_shape), 0.5, device=device, dtype=dtype)
            latent_dim = self._probe(encoder, probe).event_shape[-1]
        super().__init__(latent_dim)
        self.n_pseudo = n_pseudo
        self.input_shape = input_shape
        self.support = support
        if support == "unit":
            raw = torch.logit(torch.empty(n_pseudo, *input_shape).uniform_(0.05, 0.95))
        else:
            raw = torch.randn(n_pseudo, *input_shape)
        # drawn on the CPU (the same pseudo-inputs for a seed whatever the device), then
        # given the device and dtype of an already-built encoder
        device, dtype = (None, None) if encoder is None else _placement(encoder)
        self.raw_pseudo = nn.Parameter(raw.to(device=device, dtype=dtype))
        self.register_buffer("_mix_logits", torch.zeros(n_pseudo, device=device, dtype=dtype))
        # A plain list: the encoder is referenced, never registered as a submodule.
        self._encoder_ref: list[Callable[[torch.Tensor], dist.Distribution]] = []
        self._bound_by_attach = False
        if encoder is not None:
            self._bind(encoder)

    @classmethod
    def from_options(
        cls,
        latent_dim: int,
        *,
        input_shape: tuple[int, ...] | None = None,
        n_pseudo: int = 50,
        **options: Any,
    ) -> VampPrior:
        """An unbound VampPrior (``encoder=None``) that the model binds with :meth:`attach`.

        ``n_pseudo`` defaults to 50. For real-valued data pass ``support="real"``
        (``--prior-option support=real``): the default keeps pseudo-inputs in (0, 1).
        """
        if input_shape is None:
            raise ValueError(
                "VampPrior needs input_shape (the event shape of one observation, e.g. (64,)) "
                "to size its pseudo-inputs"
            )
        return cls(None, n_pseudo, input_shape, latent_dim=latent_dim, **options)

    def constructor_arguments(self) -> dict[str, Any]:
        """The recorded constructor arguments with ``encoder=None`` and ``latent_dim`` set.

        The encoder is a live function and is not saved: a VampPrior saved inside a VAE
        is re-attached to the loaded model's encoder; one saved alone loads unbound
        (attach it to a model, or pass ``encoder=`` to :meth:`load`).
        """
        arguments = super().constructor_arguments()
        arguments["encoder"] = None
        arguments["latent_dim"] = self.latent_dim
        return arguments

    # -- encoder binding ---------------------------------------------------------------
    @staticmethod
    def _probe(encoder: Callable[..., Any], x: torch.Tensor) -> dist.Distribution:
        with torch.no_grad():
            try:
                q = encoder(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise ValueError(
                    f"VampPrior could not evaluate the encoder on pseudo-inputs of shape "
                    f"{tuple(x.shape)}: {e}. The encoder must take continuous inputs of shape "
                    "(K, *input_shape)."
                ) from e
        if not isinstance(q, torch.distributions.Distribution) or len(q.event_shape) != 1:
            raise ValueError(
                "encoder must return a distribution with event shape (latent_dim,), got "
                f"{type(q).__name__}"
                + (f" with event shape {tuple(q.event_shape)}" if hasattr(q, "event_shape") else "")
                + "; try .to_event(1) on the encoder's distribution"
            )
        return q

    def _bind(self, encoder: Callable[[torch.Tensor], dist.Distribution]) -> None:
        q = self._probe(encoder, self._pseudo_inputs().detach())
        self._check_components(q)
        self._encoder_ref[:] = [encoder]

    def attach(self, model: torch.nn.Module) -> None:
        """Bind ``model.encode`` as the encoder (called by the VAE base).

        An encoder given to the constructor is kept. A prior bound to one model cannot be
        attached to another: build one VampPrior per model.
        """
        encode = getattr(model, "encode", None)
        if not callable(encode):
            raise TypeError(
                f"VampPrior.attach needs a model with an encode(x) -> q(z|x) method, got "
                f"{type(model).__name__}"
            )
        if not self._encoder_ref:
            self._bind(encode)
            self._bound_by_attach = True
        elif self._bound_by_attach and self._encoder_ref[0] != encode:
            raise ValueError(
                "this VampPrior is already bound to the encoder of another model; a prior "
                "belongs to one model: build a new VampPrior for each model"
            )

    @property
    def encoder(self) -> Callable[[torch.Tensor], dist.Distribution] | None:
        """The bound encoder (``None`` until bound)."""
        return self._encoder_ref[0] if self._encoder_ref else None

    def _check_components(self, q: dist.Distribution) -> None:
        want_batch, want_event = (self.n_pseudo,), (self.latent_dim,)
        if tuple(q.batch_shape) != want_batch or tuple(q.event_shape) != want_event:
            raise ValueError(
                f"encoder output on the pseudo-inputs must have batch shape {want_batch} and "
                f"event shape {want_event} (latent_dim={self.latent_dim}), got batch "
                f"{tuple(q.batch_shape)} and event {tuple(q.event_shape)}"
            )

    # -- pseudo-inputs -------------------------------------------------------------------
    def _pseudo_inputs(self) -> torch.Tensor:
        raw = self.raw_pseudo
        return torch.sigmoid(raw) if self.support == "unit" else raw

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs u_k, shape ``(n_pseudo, *input_shape)``, detached."""
        return self._pseudo_inputs().detach()

    @torch.no_grad()
    def init_pseudo_inputs(self, x: torch.Tensor, *, noise: float = 0.01) -> None:
        """Seed the pseudo-inputs with random rows of ``x`` plus Gaussian noise.

        Parameters
        ----------
        x : torch.Tensor
            Data of shape ``(N, *input_shape)``; rows are drawn without replacement when
            ``N >= n_pseudo``, with replacement otherwise (global torch RNG).
        noise : float
            Standard deviation of the added noise (>= 0), in input units.
        """
        x = check_data("x", x, event_shape=self.input_shape)
        noise = check_float("noise", noise, minimum=0.0)
        if x.shape[0] >= self.n_pseudo:
            idx = torch.randperm(x.shape[0], device="cpu")[: self.n_pseudo]
        else:
            idx = torch.randint(x.shape[0], (self.n_pseudo,), device="cpu")
        u = x[idx.to(x.device)].to(self.raw_pseudo) + noise * torch.randn_like(self.raw_pseudo)
        if self.support == "unit":
            u = torch.logit(u.clamp(1e-3, 1 - 1e-3))
        self.raw_pseudo.copy_(u)

    # -- the prior ------------------------------------------------------------------------
    def distribution(self) -> dist.TorchDistribution:
        if not self._encoder_ref:
            raise RuntimeError(
                "VampPrior has no encoder yet: pass encoder=... or give the prior to a model, "
                "which calls attach(model)"
            )
        q = self._encoder_ref[0](self._pseudo_inputs())
        self._check_components(q)
        return DiagonalNormalMixture(dist.Categorical(logits=self._mix_logits), q)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, n_pseudo={self.n_pseudo}, "
            f"input_shape={self.input_shape}, support={self.support!r}, "
            f"bound={bool(self._encoder_ref)}"
        )
