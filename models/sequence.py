"""Recurrent sequence VAE over token ids (Bowman et al. 2016)."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pyrocollapse._validation import check_choice, check_float, check_int
from pyrocollapse.data import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, Dataset
from pyrocollapse.models.base import MODELS, VAE, check_dataset, reject_dataset_options
from pyrocollapse.models.posteriors import PosteriorFamily
from pyrocollapse.priors import Prior

__all__ = ["SequenceVAE"]

N_SPECIAL = len(SPECIAL_TOKENS)
#: Tokens that never follow another: the decoder gives them probability 0.
_NEVER_NEXT = (PAD_ID, BOS_ID)

_RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
_NEVER_INDEX: dict[torch.device, torch.Tensor] = {}


def _never_next(device: torch.device) -> torch.Tensor:
    """The ids of :data:`_NEVER_NEXT` as an index tensor on ``device`` (made once)."""
    if device not in _NEVER_INDEX:
        _NEVER_INDEX[device] = torch.tensor(_NEVER_NEXT, device=device)
    return _NEVER_INDEX[device]


@MODELS.register("sequence")
class SequenceVAE(VAE):
    """A sequence VAE: RNN encoder, autoregressive RNN decoder conditioned on z.

    Data are int64 token ids ``(N, T)``, each row ``<bos> w_1 ... w_k <eos>`` followed by
    any padding (ids 0, 1, 2, 3 = ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``, as in
    :mod:`pyrocollapse.data`). A row's length runs to its first ``<eos>`` inclusive (or
    to ``T`` if it has none); positions after it are ignored by both programs::

        q(z|x):   LSTM/GRU over the embedded tokens (packed to each row's length),
                  final hidden state -> N(mu, diag(sigma^2))
        p(x|z):   h_0 = tanh(L z); LSTM/GRU over the embedded previous token (with z
                  appended to every input when ``latent_every_step``), then
                  p(x_t | x_<t, z) = Categorical(softmax(O h_t)),  t = 1 .. length - 1

    In :meth:`model` the observed site ``"x"`` is the masked Categorical over the next
    tokens ``x[:, 1:]`` (teacher forcing), ``.to_event(1)``, so it has batch shape
    ``(N,)``; positions after ``<eos>`` contribute exactly 0. ``<pad>`` and ``<bos>``
    never follow a token: the decoder gives them probability 0.

    Parameters
    ----------
    vocab_size : int
        V, including the 4 special tokens (>= 5).
    latent_dim : int
        Dimension of z.
    prior : Prior or None
        p(z); default ``StandardNormalPrior(latent_dim)``.
    embed : int
        Token embedding size (separate embeddings for encoder and decoder).
    hidden : int
        RNN hidden size (encoder and decoder).
    cell : {"lstm", "gru"}
        RNN cell (LSTM, as in Bowman et al. 2016, by default). For an LSTM the initial
        cell state is 0 and only the hidden state comes from z.
    word_dropout : float
        Probability, in [0, 1], of replacing each decoder input token after ``<bos>`` by
        ``<unk>`` while the module is in training mode (``vae.train()``, the default;
        call ``vae.eval()`` to evaluate without it). 1 gives an input-less decoder that
        must rely on z. Draws use torch's global RNG, so ``pyro.set_rng_seed`` fixes them.
    latent_every_step : bool
        Also feed z to the decoder at every step (not only through h_0).
    skip : bool
        Also feed z to the output layer at every step, ``p(x_t | ...) =
        softmax(O [h_t, z])`` (skip-VAE, Dieng et al. 2019): with ``latent_every_step``
        z reaches every layer of the decoder, so the RNN cannot wash it out.
    posterior, posterior_options, refine_steps, refine_lr, refine_max_grad_norm :
        The posterior family (``"batchnorm"``: BN-VAE; ``"delta"``: δ-VAE) and
        semi-amortised refinement (SA-VAE), as for :class:`~pyrocollapse.models.MLPVAE`.
    max_len : int
        Default length of :meth:`generate` / :meth:`sample` output, ``<bos>`` included.
    min_scale : float
        Floor of the posterior scale.
    name : str or None
        Prefix of the parameters in Pyro's parameter store (see :class:`VAE`).

    Notes
    -----
    This is the classic setting of posterior collapse. The decoder is an RNN language
    model that can fit p(x) without z (the topic of a :func:`make_sequences` row can be
    read off its prefix). For such a decoder, putting I nats about x into z costs at
    least I nats of KL and saves at most I nats of reconstruction (Chen et al. 2017), so
    the plain ELBO has no incentive to use z; and early in training the KL term pulls
    q(z|x) to the prior before the encoder is informative, after which the decoder
    learns to ignore z ("KL vanishing"). With the plain ELBO it collapses (zero active
    units, I_q(x; z) ~ 0). Remedies: KL annealing (``AnnealedELBO`` with ``Linear`` or
    ``Cyclical``), word dropout (hides the prefix from the decoder, so z must carry
    it), free bits, and aggressive encoder training. The LSTM decoder collapses
    crisply; with a GRU a plain ELBO often leaves a unit or two with a tiny
    (~0.01-0.03 nats) residual signal.

    References
    ----------
    Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio (2016). Generating Sentences from a
    Continuous Space. CoNLL.
    Chen et al. (2017). Variational Lossy Autoencoder. ICLR.
    Kingma et al. (2016). Improved Variational Inference with Inverse Autoregressive
    Flow. NeurIPS (free bits).
    Fu et al. (2019). Cyclical Annealing Schedule: A Simple Approach to Mitigating KL
    Vanishing. NAACL.
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.

    Examples
    --------
    >>> vae = SequenceVAE(20, 4, embed=8, hidden=16, max_len=10)
    >>> x = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    >>> vae.encode(x).batch_shape, vae.sample(3).shape
    (torch.Size([2]), torch.Size([3, 10]))
    """

    autoregressive = True

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int,
        prior: Prior | None = None,
        *,
        embed: int = 64,
        hidden: int = 128,
        cell: str = "lstm",
        word_dropout: float = 0.0,
        latent_every_step: bool = True,
        skip: bool = False,
        posterior: str | PosteriorFamily = "gaussian",
        posterior_options: dict[str, Any] | None = None,
        refine_steps: int = 0,
        refine_lr: float = 1.0,
        refine_max_grad_norm: float = 5.0,
        max_len: int = 32,
        min_scale: float = 1e-4,
        name: str | None = None,
    ) -> None:
        super().__init__(latent_dim, prior, name=name)
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=N_SPECIAL + 1)
        self.embed = check_int("embed", embed, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.cell = check_choice("cell", cell, tuple(_RNN_CELLS))
        self.word_dropout = check_float("word_dropout", word_dropout, minimum=0.0, maximum=1.0)
        if not isinstance(latent_every_step, bool):
            raise TypeError(
                f"latent_every_step must be a bool, got {type(latent_every_step).__name__}"
            )
        self.latent_every_step = latent_every_step
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be True or False, got {type(skip).__name__}")
        self.skip = skip
        self.max_len = check_int("max_len", max_len, minimum=2)
        self.event_shape = (self.max_len,)
        self.min_scale = check_float("min_scale", min_scale, minimum=0.0)
        rnn = _RNN_CELLS[self.cell]
        self.encoder_embedding = nn.Embedding(self.vocab_size, self.embed, padding_idx=PAD_ID)
        self.encoder_rnn = rnn(self.embed, self.hidden, batch_first=True)
        self.encoder_head = nn.Linear(self.hidden, 2 * self.latent_dim)
        self.decoder_embedding = nn.Embedding(self.vocab_size, self.embed, padding_idx=PAD_ID)
        step_input = self.embed + (self.latent_dim if latent_every_step else 0)
        self.decoder_rnn = rnn(step_input, self.hidden, batch_first=True)
        self.latent_to_hidden = nn.Linear(self.latent_dim, self.hidden)
        self.output = nn.Linear(self.hidden + (self.latent_dim if skip else 0), self.vocab_size)
        self._setup_inference(
            posterior=posterior,
            posterior_options=posterior_options,
            min_scale=self.min_scale,
            refine_steps=refine_steps,
            refine_lr=refine_lr,
            refine_max_grad_norm=refine_max_grad_norm,
        )
        self._attach_prior()

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, *, latent_dim: int, prior: Prior | None = None, **options: Any
    ) -> SequenceVAE:
        """A sequence VAE for a token dataset: ``vocab_size`` from its vocabulary and the
        default generation length ``max_len`` from its padded length."""
        ds = check_dataset(dataset, "sequence")
        if ds.kind != "tokens":
            fits = "conv or mlp" if ds.image_shape is not None else "mlp or linear"
            raise ValueError(
                f"model 'sequence' needs token sequences (kind 'tokens', e.g. --dataset "
                f"sequences or text); dataset {ds.name!r} is {ds.kind!r}: use --model {fits}"
            )
        reject_dataset_options(options, "sequence", ("vocab_size",))
        options.setdefault("max_len", ds.event_shape[0])
        return cls(len(ds.vocab), latent_dim, prior, **options)

    # -- validation and masks --------------------------------------------------------------
    @staticmethod
    def valid_positions(x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(N, T)``: True up to and including each row's first ``<eos>``."""
        is_eos = (x == EOS_ID).long()
        return (is_eos.cumsum(1) - is_eos) == 0

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate padded token ids ``(N, T)``: int64, ids in ``[0, vocab_size)``, every
        row starting with ``<bos>``, no ``<pad>`` or second ``<bos>`` before its ``<eos>``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
        if x.dtype != torch.long:
            raise TypeError(
                f"{name} must hold int64 token ids (torch.long), got {x.dtype}; convert with "
                f"{name}.long()"
            )
        if x.dim() != 2 or x.shape[1] < 2:
            raise ValueError(
                f"{name} must have shape (N, T) with T >= 2 (<bos> plus at least one token), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one row")
        self.check_on_device(name, x)
        # one pass and one synchronisation for the common case of valid ids; the checks
        # below, one at a time, find the first problem and say what it is
        inside = self.valid_positions(x)
        misplaced = inside & ((x == PAD_ID) | (x == BOS_ID))
        misplaced[:, 0] = x[:, 0] != BOS_ID
        if not bool(((x < 0) | (x >= self.vocab_size) | misplaced).any()):
            return x
        self._raise_input_error(x, name)
        return x

    def _raise_input_error(self, x: torch.Tensor, name: str) -> None:
        """Raise the error for the first problem with the token ids of ``x`` that
        :meth:`check_input` found."""
        outside = (x < 0) | (x >= self.vocab_size)
        if bool(outside.any()):
            r, t = (int(i) for i in torch.nonzero(outside)[0])
            raise ValueError(
                f"{name} holds token ids outside the vocabulary [0, {self.vocab_size}): "
                f"{name}[{r}, {t}] = {int(x[r, t])}"
            )
        not_bos = x[:, 0] != BOS_ID
        if bool(not_bos.any()):
            r = int(torch.nonzero(not_bos)[0])
            raise ValueError(
                f"every row of {name} must start with <bos> (id {BOS_ID}); row {r} starts "
                f"with id {int(x[r, 0])}"
            )
        inside = self.valid_positions(x)
        for token, what in ((PAD_ID, "<pad>"), (BOS_ID, "a second <bos>")):
            bad = inside & (x == token)
            if token == BOS_ID:
                bad[:, 0] = False
            if bool(bad.any()):
                r, t = (int(i) for i in torch.nonzero(bad)[0])
                raise ValueError(
                    f"{name}[{r}, {t}] is {what} (id {token}) before the row's <eos>; a row is "
                    "<bos> w_1 ... w_k <eos> followed by padding"
                )

    # -- encoder ----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for a padded batch ``(N, T)``: batch ``(N,)``, event ``(latent_dim,)``.

        The encoder reads each row up to its length (``pack_padded_sequence``), so
        padding never changes q(z|x).
        """
        return super().encode(x)

    def encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output ``[loc, raw]`` ``(N, 2 * latent_dim)`` for a padded
        batch ``(N, T)``."""
        x = self.check_input(x)
        lengths = self.valid_positions(x).sum(1)
        packed = pack_padded_sequence(
            self.encoder_embedding(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, state = self.encoder_rnn(packed)
        h = state[0] if self.cell == "lstm" else state
        return self.encoder_head(h[-1])

    # -- decoder ----------------------------------------------------------------------------
    def _initial_state(self, z: torch.Tensor) -> Any:
        h0 = torch.tanh(self.latent_to_hidden(z)).unsqueeze(0)
        return (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0

    def _run(self, z: torch.Tensor, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Decoder logits ``(N, L, V)`` for input tokens ``(N, L)`` from ``state``."""
        emb = self.decoder_embedding(inputs)
        if self.latent_every_step:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        out, state = self.decoder_rnn(emb, state)
        if self.skip:
            out = torch.cat([out, z.unsqueeze(1).expand(-1, out.shape[1], -1)], dim=-1)
        logits = self.output(out)
        return logits.index_fill(-1, _never_next(logits.device), float("-inf")), state

    def _teacher_forced(
        self, z: torch.Tensor, x: torch.Tensor, word_dropout: float
    ) -> tuple[dist.TorchDistribution, torch.Tensor]:
        """The masked next-token distribution (batch ``z.shape[:-1]``, event ``(T-1,)``)
        and its targets ``x[:, 1:]`` (``<pad>`` after ``<eos>``)."""
        scored = self.valid_positions(x)[:, 1:]
        z_flat, x_flat, batch = self.pair_with_context(z, x)
        inputs = x_flat[:, :-1]
        if word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < word_dropout
            drop[:, 0] = False  # <bos> is always seen
            inputs = inputs.masked_fill(drop, UNK_ID)
        logits, _ = self._run(z_flat, inputs, self._initial_state(z_flat))
        logits = logits.reshape(*batch, *logits.shape[1:])
        targets = x[:, 1:].masked_fill(~scored, PAD_ID)
        return dist.Categorical(logits=logits).mask(scored).to_event(1), targets

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> dist.TorchDistribution:
        """p(x|z) by teacher forcing: the distribution of the next tokens ``x[:, 1:]``.

        An autoregressive p(x|z) is a product of conditionals, so it needs the context
        ``x``: the result has batch shape ``z.shape[:-1]`` and event shape ``(T - 1,)``, and
        ``decode(z, x).log_prob(x[:, 1:])`` is log p(x|z) (positions after ``<eos>`` masked
        out). No word dropout is applied. Use :meth:`generate` to decode from z alone.

        Parameters
        ----------
        z : torch.Tensor
            Shape ``(..., N, latent_dim)``.
        x : torch.Tensor
            Token ids ``(N, T)`` (validated as in :meth:`check_input`).
        """
        z = self.check_latent(z)
        if x is None:
            raise ValueError(
                "decode(z) of a SequenceVAE needs the context tokens x (decode(z, x) scores "
                "x[:, 1:] by teacher forcing); use generate(z) for greedy or sampled decoding"
            )
        return self._teacher_forced(z, self.check_input(x), 0.0)[0]

    def observe(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Observe the next tokens ``x[:, 1:]`` with teacher forcing (and word dropout in
        training mode)."""
        rate = self.word_dropout if self.training else 0.0
        d, targets = self._teacher_forced(z, x, rate)
        return pyro.sample(self.observed_site, d, obs=targets)

    @torch.no_grad()
    def generate(
        self, z: torch.Tensor, *, greedy: bool = False, max_len: int | None = None
    ) -> torch.Tensor:
        """Decode token sequences from ``z`` ``(n, latent_dim)``, one token at a time.

        Parameters
        ----------
        z : torch.Tensor
            Shape ``(n, latent_dim)``.
        greedy : bool
            Take the most probable token at each step (greedy decoding) instead of
            sampling from p(x_t | x_<t, z).
        max_len : int or None
            Output length including ``<bos>`` (default :attr:`max_len`); rows that reach
            it without ``<eos>`` are truncated.

        Returns
        -------
        torch.Tensor
            int64 ``(n, max_len)``: ``<bos> w_1 ... w_k <eos> <pad> ...``.
        """
        z = self.check_latent(z, matrix=True)
        length = self.max_len if max_len is None else check_int("max_len", max_len, minimum=2)
        n = z.shape[0]
        out = torch.full((n, length), PAD_ID, dtype=torch.long, device=z.device)
        out[:, 0] = BOS_ID
        state = self._initial_state(z)
        done = torch.zeros(n, dtype=torch.bool, device=z.device)
        for t in range(1, length):
            logits, state = self._run(z, out[:, t - 1 : t], state)
            logits = logits[:, 0]
            token = logits.argmax(-1) if greedy else dist.Categorical(logits=logits).sample()
            token = token.masked_fill(done, PAD_ID)
            out[:, t] = token
            done = done | (token == EOS_ID)
            if bool(done.all()):
                break
        return out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Greedy decoding of E_q[z|x], with the length of ``x``: int64 ``(N, T)``."""
        x = self.check_input(x)
        return self.generate(self.encode(x).mean, greedy=True, max_len=x.shape[1])

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, latent_dim={self.latent_dim}, cell={self.cell!r}, "
            f"word_dropout={self.word_dropout}"
        )
