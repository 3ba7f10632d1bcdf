"""The :class:`VAE` base class shared by every ready model."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, pyro_method

from pyrocollapse._saveable import Saveable
from pyrocollapse._validation import check_data, check_float, check_int
from pyrocollapse.priors import Prior, StandardNormalPrior
from pyrocollapse.registry import Registry, unique_name

if TYPE_CHECKING:
    from pyrocollapse.data import Dataset
    from pyrocollapse.models.posteriors import PosteriorFamily

__all__ = ["MODELS", "VAE", "make_model"]

#: Short name -> model class, used by ``pyrocollapse run --model NAME``.
MODELS: Registry[Any] = Registry("model")


class VAE(PyroModule, Saveable):
    """Base of the ready VAEs: a Pyro model/guide pair with one latent site per layer.

    Subclasses implement :meth:`encode` (x -> q(z|x)) and :meth:`decode` (z -> p(x|z)),
    and may override :meth:`check_input`. The base supplies the Pyro programs::

        model(x):  with plate("data", N): z = prior("z"); observe(z, x)
        guide(x):  with plate("data", N): z = sample("z", encode(x)); prior.guide("z", z)

    where :meth:`observe` is ``sample("x", decode(z), obs=x)``. Autoregressive decoders
    (whose p(x|z) is a product of conditionals p(x_i | x_<i, z)) override :meth:`observe`
    to score ``x`` with teacher forcing and :meth:`generate` to draw step by step; models
    with several latent layers override :meth:`model` and :meth:`guide`.

    Adding a model: subclass, build the networks, call :meth:`_attach_prior` last in
    ``__init__`` (VampPrior binds the encoder there), implement :meth:`encode`,
    :meth:`decode` (accepting leading batch dimensions of z, as vectorised particles of
    ``IWAEELBO`` add one), :meth:`check_input` and :meth:`from_dataset`, register the
    class in :data:`MODELS`, write in the docstring when it tends to collapse and why,
    and add one entry to ``CASES`` in ``tests/model_cases.py`` (the contract suite). Saving comes
    for free: the base records the constructor arguments of every subclass, so
    :meth:`save` and :meth:`load` work unchanged (constructor arguments should be JSON
    values: numbers, strings, tuples, lists, dicts, or the prior).

    Parameters
    ----------
    latent_dim : int
        Dimension of z.
    prior : Prior or None
        p(z); ``None`` means :class:`~pyrocollapse.priors.StandardNormalPrior`. Its
        ``latent_dim`` must equal ``latent_dim``.
    name : str or None
        Prefix of this model's parameters in Pyro's parameter store; by default the class
        name, made unique per instance (``mlpvae``, ``mlpvae_2``, ...), so that two models
        in one session never share weights through the store.

    Attributes
    ----------
    latent_sites : tuple[str, ...]
        Names of the latent sample sites, for :func:`pyrocollapse.diagnose`.
    observed_site : str
        Name of the observed site.
    event_shape : tuple[int, ...]
        Trailing shape of one observation ``x[i]``.
    autoregressive : bool
        Whether p(x|z) is autoregressive: then ``decode(z)`` alone is not a distribution
        over x (it needs the context ``x``), and :meth:`sample` / :meth:`reconstruct`
        decode step by step.
    device : torch.device
        Where the parameters are (see Notes).

    Notes
    -----
    Saving: ``vae.save(path)`` writes the class, the constructor arguments (as JSON) and
    every parameter and buffer, the prior's included, to one file; ``VAE.load(path)``
    rebuilds the saved class (MLPVAE, ConvVAE, ...) with them, in evaluation mode. A
    VampPrior is re-attached to the loaded model's encoder. The loaded model gets a fresh
    name in Pyro's parameter store (pass ``name=`` to ``load`` to choose it). See
    :mod:`pyrocollapse.persistence`.

    Devices and dtypes follow PyTorch: build the model, then ``vae.to("cuda")`` (or
    ``vae.to(torch.float64)``) moves every parameter and buffer, the prior's included;
    the programs create every other tensor on the device and dtype of the parameters or
    the data, so ``model``, ``guide``, :meth:`sample`, :meth:`generate` and
    :meth:`reconstruct` then run there and return tensors there. Observations and
    latents passed in must be on :attr:`device` (``x.to(vae.device)``); one on another
    device raises ``ValueError`` naming the argument.
    """

    latent_sites: tuple[str, ...] = ("z",)
    observed_site: str = "x"
    #: Trailing shape of one observation, set by subclasses.
    event_shape: tuple[int, ...] = ()
    autoregressive: bool = False
    persistence_kind = "model"
    persistence_registry = MODELS
    #: Semi-amortised refinement steps per batch (0: plain amortised inference).
    refine_steps: int = 0

    def __init__(
        self, latent_dim: int, prior: Prior | None = None, *, name: str | None = None
    ) -> None:
        super().__init__(name=unique_name(type(self).__name__.lower()) if name is None else name)
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        if prior is None:
            prior = StandardNormalPrior(self.latent_dim)
        if not isinstance(prior, Prior):
            raise TypeError(
                f"prior must be a pyrocollapse.priors.Prior (e.g. StandardNormalPrior({latent_dim})), "
                f"got {type(prior).__name__}"
            )
        if prior.latent_dim != self.latent_dim:
            raise ValueError(
                f"prior.latent_dim ({prior.latent_dim}) must equal latent_dim ({self.latent_dim})"
            )
        self.prior = prior

    def constructor_arguments(self) -> dict[str, Any]:
        """The constructor arguments that :meth:`save` stores, by name.

        The recorded ones, with ``prior`` replaced by the current :attr:`prior` (which
        may have been reassigned since) and without ``name``, so that a loaded model
        gets a fresh, unique name in Pyro's parameter store.

        Raises
        ------
        ValueError
            The prior is bound to an encoder other than this model's ``encode`` (a
            VampPrior built on another model's encoder), which loading could not restore.
        """
        arguments = super().constructor_arguments()
        arguments.pop("name", None)
        if "prior" in arguments:
            arguments["prior"] = self.prior
        encoder = getattr(self.prior, "encoder", None)
        if encoder is not None and encoder != self.encode:
            raise ValueError(
                f"this {type(self).__name__}'s prior ({type(self.prior).__name__}) is bound to an "
                "encoder that is not the model's own encode; loading would re-attach it to the "
                "loaded model's encoder, so it cannot be saved; build the prior with encoder=None "
                "(the model binds its own encoder)"
            )
        return arguments

    def _setup_inference(
        self,
        *,
        posterior: str | PosteriorFamily,
        posterior_options: dict[str, Any] | None,
        min_scale: float,
        refine_steps: int,
        refine_lr: float,
        refine_max_grad_norm: float,
    ) -> None:
        """Build the posterior family and the refinement settings (see :meth:`encoder_output`).

        Sets ``posterior_family`` (a :class:`~pyrocollapse.models.posteriors.PosteriorFamily`
        submodule: how the encoder output becomes q(z|x)). Models whose encoder outputs
        ``[loc, raw]`` call this in ``__init__`` and implement
        :meth:`encoder_output`; they then take the constructor options ``posterior``,
        ``posterior_options``, ``refine_steps``, ``refine_lr`` and
        ``refine_max_grad_norm`` documented on :class:`~pyrocollapse.models.MLPVAE`.
        """
        from pyrocollapse.models.posteriors import make_posterior

        self.posterior_family = make_posterior(
            posterior, self.latent_dim, options=posterior_options, min_scale=min_scale
        )
        self.refine_steps = check_int("refine_steps", refine_steps, minimum=0)
        self.refine_lr = check_float("refine_lr", refine_lr, minimum=0.0, strict_minimum=True)
        self.refine_max_grad_norm = check_float(
            "refine_max_grad_norm", refine_max_grad_norm, minimum=0.0, strict_minimum=True
        )
        floor = self.posterior_family.kl_floor
        if floor > 0 and not isinstance(self.prior, StandardNormalPrior):
            warnings.warn(
                f"the {self.posterior_family.name!r} posterior guarantees a KL of at least "
                f"{floor:.3g} nats per dimension against a standard Normal prior only; with "
                f"{type(self.prior).__name__} it restricts q(z|x) but the floor does not hold",
                UserWarning,
                stacklevel=3,
            )

    def encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output ``[loc, raw]`` of shape ``(N, 2 * latent_dim)``.

        :attr:`posterior_family` turns it into q(z|x). Implemented by the models that
        call :meth:`_setup_inference`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not expose its encoder output, so it takes no "
            "posterior family or refinement options"
        )

    def _attach_prior(self) -> None:
        """Call after the encoder exists: lets the prior bind to the model (VampPrior)."""
        self.prior.attach(self)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (and buffers), e.g. ``device(type='cpu')``.

        Move the model with ``vae.to(device)``; inputs must then be on this device.
        """
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def check_on_device(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Return ``t`` if it is on :attr:`device`, else raise ``ValueError`` naming ``name``."""
        here = self.device
        if t.device.type != here.type or (
            t.device.index != here.index and None not in (t.device.index, here.index)
        ):
            raise ValueError(
                f"{name} is on {t.device} but the model is on {here}; move it with "
                f"{name}.to(vae.device), or move the model with vae.to({str(t.device)!r})"
            )
        return t

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> VAE:
        """Build a model sized for ``dataset`` (a :class:`pyrocollapse.data.Dataset`).

        Used by ``pyrocollapse run --model NAME``; each model picks what it needs from the
        dataset (input size, image shape, vocabulary, a likelihood matching its kind) and
        raises ``ValueError`` naming a model that fits when the dataset's kind does not.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement from_dataset()")

    # -- to implement ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x): batch shape ``(N,)``, event shape ``(latent_dim,)``.

        The default applies :attr:`posterior_family` to :meth:`encoder_output` (the
        amortised q, before any refinement: see :meth:`guide_posterior`).
        """
        if getattr(self, "posterior_family", None) is None:
            raise NotImplementedError(f"{type(self).__name__} must implement encode()")
        return self.posterior_family(self.encoder_output(x))

    def guide_posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """The q(z|x) the guide samples from: :meth:`encode`, refined when
        ``refine_steps > 0`` (semi-amortised inference, :mod:`pyrocollapse.models.refinement`).

        Batch shape ``(N,)``, event shape ``(latent_dim,)``.
        """
        if not self.refine_steps:
            return self.encode(x)
        from pyrocollapse.models.refinement import refine

        out = refine(
            self,
            self.encoder_output(x),
            x,
            steps=self.refine_steps,
            lr=self.refine_lr,
            max_grad_norm=self.refine_max_grad_norm,
        )
        return self.posterior_family(out)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z): batch shape ``z.shape[:-1]``, event shape ``event_shape``."""
        raise NotImplementedError

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate a batch of observations of shape ``(N, *event_shape)`` on :attr:`device`.

        Type, shape and device are always checked; the scan for NaN and infinite values
        (a pass over the batch) only while Pyro's validation is enabled, which ``fit``
        keeps for its first step (it checks tensor data whole before training).
        """
        x = check_data(name, x, event_shape=self.event_shape, finite=is_validation_enabled())
        return self.check_on_device(name, x)

    # -- hooks with defaults -----------------------------------------------------------
    def observe(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Score the observed site in :meth:`model`: ``sample("x", decode(z), obs=x)``.

        Called inside the data plate with z of shape ``(..., N, latent_dim)`` (the bottom
        latent layer; leading dimensions come from vectorised particles) and the
        validated ``x`` ``(N, ...)``. The observed site must have batch shape
        ``z.shape[:-1]``. Autoregressive models override this to condition on ``x``
        (teacher forcing).
        """
        return pyro.sample(self.observed_site, self.decode(z), obs=x)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, *, greedy: bool = False) -> torch.Tensor:
        """Observations decoded from latents ``z`` of shape ``(n, latent_dim)`` (no gradients).

        Parameters
        ----------
        z : torch.Tensor
            Shape ``(n, latent_dim)`` (for multi-layer models: the layer that
            :meth:`decode` takes).
        greedy : bool
            ``False``: a draw x ~ p(x|z). ``True``: the decoder's point prediction: the
            mean of p(x|z) for factorised decoders, the most probable value step by step
            for autoregressive ones.

        Returns
        -------
        torch.Tensor
            Shape ``(n, *event_shape)``.
        """
        z = self.check_latent(z, dim=self.decoder_latent_dim, matrix=True)
        d = self.decode(z)
        return d.mean if greedy else d.sample()

    @property
    def decoder_latent_dim(self) -> int:
        """Width of the latent that :meth:`decode` takes (``latent_dim`` unless the model
        has several layers)."""
        return self.latent_dim

    def check_latent(
        self, z: object, *, dim: int | None = None, name: str = "z", matrix: bool = False
    ) -> torch.Tensor:
        """Validate latents of shape ``(..., n, dim)`` (default ``dim``: ``latent_dim``).

        Leading batch dimensions (e.g. Pyro's vectorised particles) are allowed unless
        ``matrix`` asks for exactly ``(n, dim)``.
        """
        dim = self.latent_dim if dim is None else dim
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {z.dtype}")
        if z.dim() < 2 or z.shape[-1] != dim or (matrix and z.dim() != 2):
            shape = f"(n, {dim})" if matrix else f"(..., n, {dim})"
            raise ValueError(f"{name} must have shape {shape}, got {tuple(z.shape)}")
        return self.check_on_device(name, z)

    @staticmethod
    def pair_with_context(
        z: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """Flatten latents and their context rows for networks that need one batch axis.

        Parameters
        ----------
        z : torch.Tensor
            Shape ``batch_shape + (D,)`` whose last batch dimension indexes the rows of
            ``x`` (extra leading dimensions, e.g. vectorised particles, are shared).
        x : torch.Tensor
            Shape ``(N, ...)`` with ``N == batch_shape[-1]``.

        Returns
        -------
        (z_flat, x_flat, batch_shape)
            ``(prod(batch_shape), D)``, ``(prod(batch_shape), ...)`` and ``batch_shape``.
        """
        batch = z.shape[:-1]
        if batch[-1] != x.shape[0]:
            raise ValueError(
                f"x has {x.shape[0]} rows but z has batch shape {tuple(batch)}; the last batch "
                "dimension of z must index the rows of x"
            )
        rest = x.shape[1:]
        x_flat = x.expand(*batch, *rest).reshape(-1, *rest)
        return z.reshape(-1, z.shape[-1]), x_flat, batch

    # -- Pyro programs -----------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor) -> torch.Tensor:
        """Generative program p(x, z); observes ``x`` of shape ``(N, *event_shape)``."""
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            z = self.prior(self.latent_sites[0])
            return self.observe(z, x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> torch.Tensor:
        """Amortised variational program q(z|x)."""
        x = self.check_input(x)
        with pyro.plate("data", x.shape[0]):
            name = self.latent_sites[0]
            z = pyro.sample(name, self.guide_posterior(x))
            self.prior.guide(name, z)
            return z

    # -- conveniences --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Draw ``n`` observations from the model: z ~ p(z), x ~ p(x|z).

        Shape ``(n, *event_shape)``, on :attr:`device`.
        """
        z = self.prior.sample(check_int("n", n, minimum=1))
        return self.generate(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: ``generate(E_q[z|x], greedy=True)``.

        For factorised decoders this is the mean of p(x | z = E_q[z|x]); for
        autoregressive ones the greedy step-by-step decoding. Shape ``(N, *event_shape)``.
        """
        x = self.check_input(x)
        return self.generate(self.encode(x).mean, greedy=True)


def make_model(name: str, **options: Any) -> VAE:
    """Build a ready model by its short name (see :data:`MODELS`)."""
    return MODELS.get(name)(**options)


# --------------------------------------------------------------------------------------
# Helpers for ``from_dataset``
# --------------------------------------------------------------------------------------
def check_dataset(dataset: object, model: str) -> Dataset:
    """Return ``dataset`` if it is a :class:`pyrocollapse.data.Dataset`."""
    from pyrocollapse.data import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"model {model!r}: dataset must be a pyrocollapse.data.Dataset (e.g. "
            f"load_dataset('digits')), got {type(dataset).__name__}"
        )
    return dataset


def vector_input_dim(dataset: object, model: str) -> int:
    """Feature count of a dataset of flat float vectors, for vector models.

    Raises ``ValueError`` naming a fitting model for token data or non-flat events.
    """
    ds = check_dataset(dataset, model)
    if ds.kind == "tokens":
        raise ValueError(
            f"model {model!r} needs vector data; for token sequences use --model sequence"
        )
    if len(ds.event_shape) != 1:
        raise ValueError(f"model {model!r} needs flat vectors, got event shape {ds.event_shape}")
    return ds.event_shape[0]


def default_likelihood(dataset: Dataset) -> str:
    """``"gaussian"`` for real-valued data, ``"bernoulli"`` for binary or [0, 1] data."""
    return "gaussian" if dataset.kind == "real" else "bernoulli"


def reject_dataset_options(options: dict[str, Any], model: str, names: tuple[str, ...]) -> None:
    """Raise if ``options`` sets an argument that ``from_dataset`` reads off the dataset."""
    clash = [n for n in names if n in options]
    if clash:
        raise ValueError(
            f"model {model!r} takes {', '.join(clash)} from the dataset; do not pass "
            f"{'it' if len(clash) == 1 else 'them'} as a model option"
        )
