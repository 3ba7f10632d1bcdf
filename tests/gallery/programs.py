"""Amortised gallery programs: VAE, M2, DMM, ProdLDA, CVAE and the zoo's MLP VAE.

Each builder makes synthetic data with a ``torch.Generator`` seeded by the caller's seed
and tiny networks, and returns a :class:`GalleryProgram`. ``control=True`` feeds zeros to
the likelihood network instead of the local latents.
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_autoregressive
from pyro.infer import config_enumerate
from torch import nn
from torch.nn import functional as F

from ._core import GalleryProgram, register

__all__ = [
    "CVAE",
    "DMM",
    "M2VAE",
    "VAE",
    "ProdLDA",
    "m2_accuracy",
    "m2_data",
    "reverse_sequences",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _mlp(*sizes: int, activation: type[nn.Module] = nn.Softplus) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def _broadcast_cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting all other dims."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], dim=-1)


def _normal_head(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loc, raw = h.chunk(2, dim=-1)
    return loc, F.softplus(raw) + 1e-3


def _binary_prototypes(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """Fixed, well separated 0/1 class prototypes of shape ``(num_classes, dim)``."""
    return (torch.rand(num_classes, dim, generator=_generator(seed)) < 0.5).float()


def _noisy_copies(
    prototypes: torch.Tensor, labels: torch.Tensor, flip: float, gen: torch.Generator
) -> torch.Tensor:
    x = prototypes[labels]
    flips = (torch.rand(x.shape, generator=gen) < flip).float()
    return (x - flips).abs()


# ---------------------------------------------------------------------------------------
# 1. vae: a plain MLP VAE
# ---------------------------------------------------------------------------------------
class VAE(nn.Module):
    """Kingma & Welling's VAE with MLP encoder/decoder and a Bernoulli likelihood."""

    def __init__(
        self,
        input_dim: int = 20,
        z_dim: int = 4,
        hidden: int = 16,
        control: bool = False,
        subsample_size: int | None = None,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.control = control
        self.subsample_size = subsample_size
        self.encoder = _mlp(input_dim, hidden, 2 * z_dim)
        self.decoder = _mlp(z_dim, hidden, input_dim)

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x|z) with x ~ Bernoulli(decoder(z)), observed as ``obs``."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size, dim=-1) as idx:
            batch = x[idx]
            z_loc = batch.new_zeros(batch.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))
            if self.control:
                z = torch.zeros_like(z)
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=batch)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) = Normal(encoder(x))."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size, dim=-1) as idx:
            loc, scale = _normal_head(self.encoder(x[idx]))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _latent_binary_data(n: int, dim: int, z_dim: int, gen: torch.Generator) -> torch.Tensor:
    """Binary vectors from a random linear-logistic latent model."""
    w = 3.0 * torch.randn(z_dim, dim, generator=gen)
    z = torch.randn(n, z_dim, generator=gen)
    return torch.bernoulli(torch.sigmoid(z @ w), generator=gen)


@register("vae")
def build_vae(*, control: bool, seed: int = 0, subsample_size: int | None = None) -> GalleryProgram:
    """Plain VAE on 32 binary 20-vectors; ``subsample_size`` subsamples the data plate."""
    x = _latent_binary_data(32, 20, 2, _generator(seed))
    vae = VAE(20, 4, 16, control=control, subsample_size=subsample_size)
    features = {"obs_named_obs"}
    if subsample_size is not None:
        features.add("subsample")
    return GalleryProgram(
        name="vae",
        model=vae.model,
        guide=vae.guide,
        args=(x,),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset(features),
        local_latents=("z",),
        global_latents=(),
        enumerated=(),
        data_plate="data",
        num_data=x.shape[0],
        train_data=x,
        modules=(vae,),
    )


# ---------------------------------------------------------------------------------------
# 2. m2: semi-supervised VAE (Kingma et al. 2014)
# ---------------------------------------------------------------------------------------
M2_CLASSES = 3
M2_DIM = 20
_M2_PROTOTYPE_SEED = 2014  # the classes are the same whatever the data seed


def m2_data(
    seed: int, n_labelled: int, n_unlabelled: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3-class problem: x = class prototype (20 bits) with 20% of the bits flipped.

    Returns ``(xs_labelled, ys_labelled, xs_unlabelled, ys_unlabelled)`` with integer
    labels; the last are the true classes of the unlabelled points (for evaluation).
    """
    protos = _binary_prototypes(M2_CLASSES, M2_DIM, _M2_PROTOTYPE_SEED)
    gen = _generator(seed)
    n = n_labelled + n_unlabelled
    ys = torch.randint(M2_CLASSES, (n,), generator=gen)
    xs = _noisy_copies(protos, ys, 0.2, gen)
    return xs[:n_labelled], ys[:n_labelled], xs[n_labelled:], ys[n_labelled:]


class M2VAE(nn.Module):
    """The M2 model: p(y) p(z) p(x|y,z) with q(y|x) q(z|x,y); y enumerated in the guide."""

    def __init__(
        self,
        input_dim: int = M2_DIM,
        num_classes: int = M2_CLASSES,
        z_dim: int = 2,
        hidden: int = 16,
        control: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.control = control
        self.encoder_y = _mlp(input_dim, hidden, num_classes)
        self.encoder_z = _mlp(input_dim + num_classes, hidden, 2 * z_dim)
        self.decoder = _mlp(z_dim + num_classes, hidden, input_dim)

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.num_classes).to(torch.get_default_dtype())

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """y ~ Categorical(uniform) (observed when labelled), z ~ N(0, I), x ~ Bernoulli."""
        pyro.module("m2", self)
        n = xs.shape[0]
        with pyro.plate("data", n, dim=-1):
            prior = xs.new_ones(n, self.num_classes) / self.num_classes
            ys = pyro.sample("y", dist.Categorical(probs=prior), obs=ys)
            z = pyro.sample("z", dist.Normal(xs.new_zeros(n, self.z_dim), 1.0).to_event(1))
            y_code = self._one_hot(ys)
            if self.control:
                z, y_code = torch.zeros_like(z), torch.zeros_like(y_code)
            logits = self.decoder(_broadcast_cat(z, y_code))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    @config_enumerate
    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """q(y|x) (only when unlabelled; enumerated in parallel) and q(z|x,y)."""
        pyro.module("m2", self)
        with pyro.plate("data", xs.shape[0], dim=-1):
            if ys is None:
                ys = pyro.sample("y", dist.Categorical(logits=self.encoder_y(xs)))
            loc, scale = _normal_head(self.encoder_z(_broadcast_cat(xs, self._one_hot(ys))))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classify(self, xs: torch.Tensor) -> torch.Tensor:
        """Most probable class under q(y|x), shape ``(N,)``."""
        return self.encoder_y(xs).argmax(-1)

    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """Auxiliary classification loss (as in ss_vae_M2): score labels under q(y|x)."""
        pyro.module("m2", self)
        with pyro.plate("data", xs.shape[0], dim=-1):
            pyro.sample("y_aux", dist.Categorical(logits=self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """Empty guide matching :meth:`model_classify`."""


def m2_accuracy(program: GalleryProgram, xs: torch.Tensor, ys: torch.Tensor) -> float:
    """Accuracy of the M2 guide's classifier q(y|x) on ``xs`` against labels ``ys``.

    ``ys`` may hold class indices ``(N,)`` or one-hot rows ``(N, C)``.
    """
    m2 = next(m for m in program.modules if isinstance(m, M2VAE))
    if ys.dim() == 2:
        ys = ys.argmax(-1)
    was_training = m2.training
    m2.eval()
    with torch.no_grad():
        acc = (m2.classify(xs) == ys.long()).float().mean().item()
    m2.train(was_training)
    return acc


@register("m2")
def build_m2(*, control: bool, seed: int = 0, labelled: bool = False) -> GalleryProgram:
    """M2 on 32 points of :func:`m2_data`; ``labelled=True`` passes ``ys``.

    Semi-supervised training alternates labelled and unlabelled batches through one
    ``TraceEnum_ELBO(strict_enumeration_warning=False)`` (see ``tests/test_gallery.py``;
    about 0.9 test accuracy after 150 epochs of 300 unlabelled + 30 labelled points, 7 s
    on one CPU thread), optionally plus the auxiliary classification loss of
    :meth:`M2VAE.model_classify` (as ss_vae_M2 does; 0.95+).
    """
    _, _, xs, ys = m2_data(seed, 0, 32)
    m2 = M2VAE(control=control)
    y_arg = ys if labelled else None
    return GalleryProgram(
        name="m2",
        model=m2.model,
        guide=m2.guide,
        args=(xs,),
        kwargs={"ys": y_arg},
        # a labelled batch enumerates nothing (TraceEnum_ELBO would warn so)
        reference="Trace_ELBO" if labelled else "TraceEnum_ELBO",
        max_plate_nesting=1,
        features=frozenset({"multi_arg"} if labelled else {"multi_arg", "enumerate_guide"}),
        local_latents=("z",) if labelled else ("y", "z"),
        global_latents=(),
        enumerated=() if labelled else ("y",),
        data_plate="data",
        num_data=xs.shape[0],
        train_data={"xs": xs, "ys": y_arg},
        modules=(m2,),
    )


# ---------------------------------------------------------------------------------------
# 3. dmm: deep Markov model (Krishnan et al. 2017)
# ---------------------------------------------------------------------------------------
def reverse_sequences(seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each padded sequence ``seqs[b, :lengths[b]]`` in time; padding stays last."""
    t_max = seqs.shape[1]
    t = torch.arange(t_max, device=seqs.device)
    idx = lengths.unsqueeze(-1) - 1 - t  # (B, T)
    idx = torch.where(idx >= 0, idx, t.expand_as(idx))
    return seqs.gather(1, idx.unsqueeze(-1).expand_as(seqs))


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}): a gated mix of a linear and a non-linear proposed mean."""

    def __init__(self, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = _mlp(z_dim, hidden, z_dim, activation=nn.ReLU)
        self.proposal = _mlp(z_dim, hidden, z_dim, activation=nn.ReLU)
        self.linear = nn.Linear(z_dim, z_dim)
        self.scale = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(z_dim))
            self.linear.bias.zero_()

    def forward(self, z_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.gate(z_prev))
        proposed = self.proposal(z_prev)
        loc = (1 - gate) * self.linear(z_prev) + gate * proposed
        return loc, F.softplus(self.scale(F.relu(proposed))) + 1e-3


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, h_t) combining the previous latent with the RNN state."""

    def __init__(self, z_dim: int, rnn_dim: int) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.hidden_to_scale = nn.Linear(rnn_dim, z_dim)

    def forward(
        self, z_prev: torch.Tensor, h_rnn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h_rnn)
        return self.hidden_to_loc(h), F.softplus(self.hidden_to_scale(h)) + 1e-3


class DMM(nn.Module):
    """A deep Markov model for padded binary sequences ``(B, T_max, D)``."""

    def __init__(
        self,
        input_dim: int = 5,
        z_dim: int = 3,
        hidden: int = 16,
        rnn_dim: int = 16,
        iaf: bool = False,
        control: bool = False,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.control = control
        self.emitter = _mlp(z_dim, hidden, input_dim, activation=nn.ReLU)
        self.trans = GatedTransition(z_dim, hidden)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.GRU(input_dim, rnn_dim, batch_first=True)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))
        self.iafs = nn.ModuleList(
            [affine_autoregressive(z_dim, hidden_dims=[hidden]) for _ in range(int(iaf))]
        )

    def model(
        self,
        sequences: torch.Tensor,
        sequences_reversed: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """z_t ~ p(z_t|z_{t-1}), x_t ~ Bernoulli(emitter(z_t)), masked past each length."""
        pyro.module("dmm", self)
        batch, t_max = sequences.shape[:2]
        z_prev = self.z_0.expand(batch, self.z_dim)
        with pyro.plate("sequences", batch, dim=-1):
            for t in pyro.markov(range(1, t_max + 1)):
                step = mask[:, t - 1]
                z_loc, z_scale = self.trans(z_prev)
                z_t = pyro.sample(f"z_{t}", dist.Normal(z_loc, z_scale).to_event(1).mask(step))
                logits = self.emitter(torch.zeros_like(z_t) if self.control else z_t)
                pyro.sample(
                    f"obs_x_{t}",
                    dist.Bernoulli(logits=logits).to_event(1).mask(step),
                    obs=sequences[:, t - 1],
                )
                z_prev = z_t

    def guide(
        self,
        sequences: torch.Tensor,
        sequences_reversed: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """q(z_t | z_{t-1}, x_{t:T}) from a GRU run backwards in time (optionally an IAF)."""
        pyro.module("dmm", self)
        batch, t_max = sequences.shape[:2]
        h_0 = self.h_0.expand(1, batch, self.h_0.shape[-1]).contiguous()
        h_reversed, _ = self.rnn(sequences_reversed, h_0)
        h = reverse_sequences(h_reversed, lengths)
        z_prev = self.z_q_0.expand(batch, self.z_dim)
        with pyro.plate("sequences", batch, dim=-1):
            for t in pyro.markov(range(1, t_max + 1)):
                z_loc, z_scale = self.combiner(z_prev, h[:, t - 1])
                if len(self.iafs):
                    q = dist.TransformedDistribution(dist.Normal(z_loc, z_scale), list(self.iafs))
                else:
                    q = dist.Normal(z_loc, z_scale).to_event(1)
                z_prev = pyro.sample(f"z_{t}", q.mask(mask[:, t - 1]))


def _dmm_data(
    batch: int, t_max: int, dim: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary sequences from a sticky 2-state chain, lengths 2..t_max, zero padded."""
    lengths = torch.randint(2, t_max + 1, (batch,), generator=gen)
    lengths[0] = t_max
    protos = (torch.rand(2, dim, generator=gen) < 0.5).float() * 0.8 + 0.1
    state = torch.randint(2, (batch,), generator=gen)
    seqs = torch.zeros(batch, t_max, dim)
    for t in range(t_max):
        switch = torch.rand(batch, generator=gen) < 0.2
        state = torch.where(switch, 1 - state, state)
        seqs[:, t] = torch.bernoulli(protos[state], generator=gen)
    mask = torch.arange(t_max) < lengths.unsqueeze(-1)
    seqs = seqs * mask.unsqueeze(-1)
    return seqs, reverse_sequences(seqs, lengths), mask, lengths


@register("dmm")
def build_dmm(*, control: bool, seed: int = 0, iaf: bool = False) -> GalleryProgram:
    """DMM on 8 sequences (T_max 6, 5 bits); ``iaf=True`` adds an IAF to q(z_t|...)."""
    t_max = 6
    data = _dmm_data(8, t_max, 5, _generator(seed))
    dmm = DMM(5, 3, 16, 16, iaf=iaf, control=control)
    features = {"mask", "markov", "multi_arg"}
    if iaf:
        features.add("flow_guide")
    return GalleryProgram(
        name="dmm",
        model=dmm.model,
        guide=dmm.guide,
        args=data,
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset(features),
        local_latents=tuple(f"z_{t}" for t in range(1, t_max + 1)),
        global_latents=(),
        enumerated=(),
        data_plate="sequences",
        num_data=data[0].shape[0],
        train_data=data,
        modules=(dmm,),
    )


# ---------------------------------------------------------------------------------------
# 4. prodlda: ProdLDA (Srivastava & Sutton 2017)
# ---------------------------------------------------------------------------------------
class ProdLDAEncoder(nn.Module):
    """Bag of words -> logistic-normal q(logtheta | doc), batch normalised."""

    def __init__(self, vocab_size: int, num_topics: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, docs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(F.softplus(self.fc2(F.softplus(self.fc1(docs)))))
        loc = self.bnmu(self.fcmu(h))
        logvar = self.bnlv(self.fclv(h))
        return loc, (0.5 * logvar).exp()


class ProdLDADecoder(nn.Module):
    """Topic proportions -> word probabilities (a product of experts), batch normalised."""

    def __init__(self, vocab_size: int, num_topics: int, dropout: float) -> None:
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        flat = self.drop(theta.reshape(-1, theta.shape[-1]))  # BatchNorm1d wants (N, C)
        probs = F.softmax(self.bn(self.beta(flat)), dim=-1)
        return probs.reshape(*theta.shape[:-1], -1)


class ProdLDA(nn.Module):
    """ProdLDA: logtheta ~ N(0, I), theta = softmax(logtheta), doc ~ Multinomial."""

    def __init__(
        self,
        vocab_size: int = 30,
        num_topics: int = 3,
        hidden: int = 16,
        dropout: float = 0.2,
        control: bool = False,
    ) -> None:
        super().__init__()
        self.num_topics = num_topics
        self.control = control
        self.encoder = ProdLDAEncoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = ProdLDADecoder(vocab_size, num_topics, dropout)

    def model(self, docs: torch.Tensor) -> None:
        """Documents as word counts ``(N, V)``, scored as in Pyro's ProdLDA tutorial."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0], dim=-1):
            loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta = pyro.sample("logtheta", dist.Normal(loc, 1.0).to_event(1))
            theta = F.softmax(logtheta, -1)
            probs = self.decoder(torch.zeros_like(theta) if self.control else theta)
            total_count = int(docs.sum(-1).max())
            # As the tutorial: documents have different lengths, so the Multinomial with the
            # largest total count is a (common) surrogate that fails support validation.
            pyro.sample("obs", dist.Multinomial(total_count, probs, validate_args=False), obs=docs)

    def guide(self, docs: torch.Tensor) -> None:
        """q(logtheta | doc) = Normal(encoder(doc))."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0], dim=-1):
            loc, scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(loc, scale).to_event(1))


def _topic_documents(
    num_docs: int, vocab: int, num_topics: int, gen: torch.Generator, min_len: int, max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse topics over the vocabulary and documents mixing them.

    Returns ``(counts (N, V), words (N, max_len) as word ids, lengths (N,))``.
    """
    topics = torch.full((num_topics, vocab), 0.1)
    for k in range(num_topics):
        topics[k, torch.randperm(vocab, generator=gen)[: vocab // num_topics]] += 5.0
    topics = topics / topics.sum(-1, keepdim=True)
    doc_topics = torch.distributions.Dirichlet(torch.full((num_topics,), 0.3)).sample((num_docs,))
    word_probs = doc_topics @ topics
    lengths = torch.randint(min_len, max_len + 1, (num_docs,), generator=gen)
    words = torch.multinomial(word_probs, max_len, replacement=True, generator=gen)
    keep = torch.arange(max_len) < lengths.unsqueeze(-1)
    counts = torch.zeros(num_docs, vocab).scatter_add_(1, words, keep.float())
    return counts, words, lengths


@register("prodlda")
def build_prodlda(*, control: bool, seed: int = 0) -> GalleryProgram:
    """ProdLDA on 32 documents of 10-30 words over a 30-word vocabulary."""
    docs, _, _ = _topic_documents(32, 30, 3, _generator(seed), 10, 30)
    prodlda = ProdLDA(30, 3, 16, 0.2, control=control)
    return GalleryProgram(
        name="prodlda",
        model=prodlda.model,
        guide=prodlda.guide,
        args=(docs,),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset({"batchnorm", "obs_named_obs"}),
        local_latents=("logtheta",),
        global_latents=(),
        enumerated=(),
        data_plate="documents",
        num_data=docs.shape[0],
        train_data=docs,
        modules=(prodlda,),
    )


# ---------------------------------------------------------------------------------------
# 5. cvae: conditional VAE for image completion (Sohn et al. 2015)
# ---------------------------------------------------------------------------------------
class CVAE(nn.Module):
    """Complete the hidden pixels ``ys`` of a 4x4 binary image from the visible ``xs``.

    Hidden pixels of ``xs`` and visible pixels of ``ys`` are set to -1, as in Pyro's CVAE
    example; the likelihood selects the hidden pixels with the boolean mask ``xs == -1``.
    """

    def __init__(
        self, num_pixels: int = 16, z_dim: int = 2, hidden: int = 16, control: bool = False
    ) -> None:
        super().__init__()
        self.control = control
        self.prior_net = _mlp(num_pixels, hidden, 2 * z_dim, activation=nn.ReLU)
        self.recognition_net = _mlp(2 * num_pixels, hidden, 2 * z_dim, activation=nn.ReLU)
        self.generation_net = _mlp(z_dim, hidden, num_pixels, activation=nn.ReLU)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z|xs) (a prior network), ys ~ Bernoulli(generation_net(z)) on hidden pixels."""
        pyro.module("generation_net", self.generation_net)
        pyro.module("prior_net", self.prior_net)
        n = xs.shape[0]
        with pyro.plate("data", n, dim=-1):
            prior_loc, prior_scale = _normal_head(self.prior_net(xs))
            z = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            probs = torch.sigmoid(self.generation_net(torch.zeros_like(z) if self.control else z))
            if ys is None:  # test time: no observed site, return the predicted pixels
                return probs
            hidden = xs == -1
            hidden_probs = probs[..., hidden].reshape(*probs.shape[:-2], n, -1)
            target = ys[hidden].reshape(n, -1)
            return pyro.sample("y", dist.Bernoulli(probs=hidden_probs).to_event(1), obs=target)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """q(z|xs, ys) from a recognition network; at test time (no ys) the prior network."""
        pyro.module("recognition_net", self.recognition_net)
        pyro.module("prior_net", self.prior_net)
        with pyro.plate("data", xs.shape[0], dim=-1):
            if ys is None:
                loc, scale = _normal_head(self.prior_net(xs))
            else:
                loc, scale = _normal_head(self.recognition_net(torch.cat([xs, ys], -1)))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def cvae_data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xs, ys)``: 4x4 binary images from 3 prototypes; top half visible, bottom hidden."""
    gen = _generator(seed)
    protos = _binary_prototypes(3, 16, 1505)
    images = _noisy_copies(protos, torch.randint(3, (n,), generator=gen), 0.05, gen)
    visible = torch.arange(16) < 8
    xs = torch.where(visible, images, -torch.ones(()))
    ys = torch.where(visible, -torch.ones(()), images)
    return xs, ys


@register("cvae")
def build_cvae(*, control: bool, seed: int = 0) -> GalleryProgram:
    """CVAE on 32 image pairs ``(xs, ys)``."""
    xs, ys = cvae_data(seed, 32)
    cvae = CVAE(16, 2, 16, control=control)
    return GalleryProgram(
        name="cvae",
        model=cvae.model,
        guide=cvae.guide,
        args=(xs, ys),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset({"multi_arg"}),
        local_latents=("z",),
        global_latents=(),
        enumerated=(),
        data_plate="data",
        num_data=xs.shape[0],
        train_data=(xs, ys),
        modules=(cvae,),
    )


# ---------------------------------------------------------------------------------------
# 12. zoo_mlp: the project's own MLPVAE
# ---------------------------------------------------------------------------------------
@register("zoo_mlp")
def build_zoo_mlp(*, control: bool, seed: int = 0) -> GalleryProgram:
    """``pyrocollapse.models.MLPVAE(20, 4, hidden=(16,))`` on 32 binary vectors."""
    from pyrocollapse.models import MLPVAE

    class ControlMLPVAE(MLPVAE):
        """MLPVAE whose decoder is fed zeros instead of z."""

        def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
            return super().decode(torch.zeros_like(z))

    x = _latent_binary_data(32, 20, 2, _generator(seed))
    vae = (ControlMLPVAE if control else MLPVAE)(input_dim=20, latent_dim=4, hidden=(16,))
    return GalleryProgram(
        name="zoo_mlp",
        model=vae.model,
        guide=vae.guide,
        args=(x,),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset(),
        local_latents=tuple(vae.latent_sites),
        global_latents=(),
        enumerated=(),
        data_plate="data",
        num_data=x.shape[0],
        train_data=x,
        modules=(vae,),
    )
