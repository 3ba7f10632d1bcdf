"""Classical gallery programs: hierarchical regression, eight schools, LDA, mixtures, Poisson.

Written as plain Pyro functions (closures over their sizes), the way Pyro's examples
write them, with autoguides or hand-written guides.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.ops.indexing import Vindex
from torch import nn
from torch.nn import functional as F

from ._core import GalleryProgram, no_control, register
from .programs import _generator, _mlp, _topic_documents

__all__ = ["EIGHT_SCHOOLS_SIGMA", "EIGHT_SCHOOLS_Y"]


# ---------------------------------------------------------------------------------------
# 6. hier_autonormal / hier_autodiagnormal: hierarchical linear regression
# ---------------------------------------------------------------------------------------
def make_hier_model(num_groups: int) -> Callable[..., None]:
    """y_i ~ N(alpha[group_i] + beta x_i, sigma), alpha_g ~ N(mu_alpha, sigma_group)."""

    def model(x: torch.Tensor, group: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mu_alpha = pyro.sample("mu_alpha", dist.Normal(0.0, 5.0))
        sigma_group = pyro.sample("sigma_group", dist.HalfNormal(2.0))
        beta = pyro.sample("beta", dist.Normal(0.0, 5.0))
        sigma = pyro.sample("sigma", dist.Exponential(1.0))
        with pyro.plate("groups", num_groups, dim=-1):
            alpha = pyro.sample("alpha", dist.Normal(mu_alpha, sigma_group))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", dist.Normal(alpha[..., group] + beta * x, sigma), obs=y)

    return model


def _hier_program(name: str, guide_class: type, seed: int) -> GalleryProgram:
    gen = _generator(seed)
    num_groups, n = 4, 48
    group = torch.arange(n) % num_groups
    x = torch.randn(n, generator=gen)
    alpha = 2.0 * torch.randn(num_groups, generator=gen)
    y = alpha[group] + 1.5 * x + 0.5 * torch.randn(n, generator=gen)
    model = make_hier_model(num_groups)
    guide = guide_class(model)
    # Both autoguides emit the model's latents as Delta sites with a log_density (AutoNormal
    # next to auxiliary "<name>_unconstrained" sites, AutoDiagonalNormal after its joint latent).
    features = {
        "autoguide",
        "delta_guide",
        "constrained",
        "global_latent",
        "multi_arg",
        "obs_named_obs",
    }
    return GalleryProgram(
        name=name,
        model=model,
        guide=guide,
        args=(x, group, y),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset(features),
        local_latents=(),
        global_latents=("mu_alpha", "sigma_group", "beta", "sigma", "alpha"),
        enumerated=(),
        data_plate="data",
        num_data=n,
        train_data=(x, group, y),
        modules=(guide,),
    )


@register("hier_autonormal")
def build_hier_autonormal(*, control: bool, seed: int = 0) -> GalleryProgram:
    """Hierarchical regression (4 groups, 48 points) with ``AutoNormal``."""
    no_control("hier_autonormal", control)
    return _hier_program("hier_autonormal", AutoNormal, seed)


@register("hier_autodiagnormal")
def build_hier_autodiagnormal(*, control: bool, seed: int = 0) -> GalleryProgram:
    """Hierarchical regression (4 groups, 48 points) with ``AutoDiagonalNormal``."""
    no_control("hier_autodiagnormal", control)
    return _hier_program("hier_autodiagnormal", AutoDiagonalNormal, seed)


# ---------------------------------------------------------------------------------------
# 7. eight_schools: non-centred (Rubin 1981; Gelman et al., BDA)
# ---------------------------------------------------------------------------------------
EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def make_eight_schools(control: bool = False) -> Callable[..., None]:
    """theta = mu + tau * theta_tilde, y_j ~ N(theta_j, sigma_j) (``control``: N(mu, sigma_j))."""

    def model(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8, dim=-1):
            theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
            theta = mu if control else mu + tau * theta_tilde
            pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    return model


def eight_schools_guide(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Mean-field guide: Normal for mu and theta_tilde, LogNormal for tau."""
    mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
    mu_scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    tau_loc = pyro.param("tau_loc", torch.tensor(0.0))
    tau_scale = pyro.param("tau_scale", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
    with pyro.plate("schools", 8, dim=-1):
        loc = pyro.param("theta_tilde_loc", torch.zeros(8))
        scale = pyro.param("theta_tilde_scale", torch.ones(8), constraint=constraints.positive)
        pyro.sample("theta_tilde", dist.Normal(loc, scale))


@register("eight_schools")
def build_eight_schools(
    *, control: bool, seed: int = 0, guide: str = "mean_field"
) -> GalleryProgram:
    """Eight schools; ``guide="auto"`` uses ``AutoNormal`` instead of the hand-written guide."""
    if guide not in ("mean_field", "auto"):
        raise ValueError(f"guide must be 'mean_field' or 'auto', got {guide!r}")
    sigma = torch.tensor(EIGHT_SCHOOLS_SIGMA)
    y = torch.tensor(EIGHT_SCHOOLS_Y)
    model = make_eight_schools(control)
    features = {"fixed_plate", "global_latent", "constrained", "multi_arg", "obs_named_obs"}
    if guide == "auto":
        guide_fn = AutoNormal(model)
        modules: tuple[nn.Module, ...] = (guide_fn,)
        features |= {"autoguide", "delta_guide"}  # AutoNormal emits Delta sites
    else:
        guide_fn, modules = eight_schools_guide, ()
    return GalleryProgram(
        name="eight_schools",
        model=model,
        guide=guide_fn,
        args=(sigma, y),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset(features),
        local_latents=("theta_tilde",),
        global_latents=("mu", "tau"),
        enumerated=(),
        data_plate="schools",
        num_data=8,
        train_data=(sigma, y),
        modules=modules,
    )


# ---------------------------------------------------------------------------------------
# 8. lda: latent Dirichlet allocation, word topics enumerated in the model (Blei et al. 2003)
# ---------------------------------------------------------------------------------------
class LDA(nn.Module):
    """LDA over documents of equal length given as word ids ``(num_docs, num_words)``."""

    def __init__(
        self, vocab_size: int = 20, num_topics: int = 3, hidden: int = 16, control: bool = False
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.num_topics = num_topics
        self.control = control
        self.doc_topic_net = _mlp(vocab_size, hidden, num_topics)

    def model(self, data: torch.Tensor) -> None:
        """Global topics, per-document proportions, per-word topics (enumerated)."""
        k, v = self.num_topics, self.vocab_size
        with pyro.plate("topics", k, dim=-1):
            topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / k, 1.0))
            topic_words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(v) / v))
        words = data.T  # (num_words, num_docs): words along dim -2, documents along -1
        with pyro.plate("documents", data.shape[0], dim=-1):
            # the topics plate dim becomes the event dim: move particle dims (if any) left
            doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights.unsqueeze(-2)))
            with pyro.plate("words", data.shape[1], dim=-2):
                word_topics = pyro.sample(
                    "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
                )
                if self.control:
                    probs = topic_words.mean(-2).unsqueeze(-2)
                else:  # Vindex: also right with enumerated or vectorised-particle dims
                    probs = Vindex(topic_words.unsqueeze(-3))[..., word_topics, :]
                pyro.sample("obs", dist.Categorical(probs), obs=words)

    def guide(self, data: torch.Tensor) -> None:
        """MAP points for the topics, amortised point estimates of the document topics."""
        k, v = self.num_topics, self.vocab_size
        pyro.module("doc_topic_net", self.doc_topic_net)
        weights = pyro.param(
            "topic_weights_posterior", torch.ones(k), constraint=constraints.positive
        )
        words_init = torch.ones(k, v) / v + 0.01 * torch.rand(k, v)
        topic_words = pyro.param(
            "topic_words_posterior",
            words_init / words_init.sum(-1, keepdim=True),
            constraint=constraints.simplex,
        )
        with pyro.plate("topics", k, dim=-1):
            pyro.sample("topic_weights", dist.Delta(weights))
            pyro.sample("topic_words", dist.Delta(topic_words, event_dim=1))
        counts = F.one_hot(data, v).sum(-2).to(torch.get_default_dtype())
        with pyro.plate("documents", data.shape[0], dim=-1):
            doc_topics = F.softmax(self.doc_topic_net(counts), dim=-1)
            pyro.sample("doc_topics", dist.Delta(doc_topics, event_dim=1))


@register("lda")
def build_lda(*, control: bool, seed: int = 0) -> GalleryProgram:
    """LDA on 24 documents of 8 words over a 20-word vocabulary, 3 topics."""
    _, words, _ = _topic_documents(24, 20, 3, _generator(seed), 8, 8)
    lda = LDA(20, 3, 16, control=control)
    return GalleryProgram(
        name="lda",
        model=lda.model,
        guide=lda.guide,
        args=(words,),
        kwargs={},
        reference="TraceEnum_ELBO",
        max_plate_nesting=2,
        features=frozenset(
            {"enumerate_model", "delta_guide", "global_latent", "constrained", "obs_named_obs"}
        ),
        local_latents=("doc_topics",),
        global_latents=("topic_weights", "topic_words"),
        enumerated=("word_topics",),
        data_plate="documents",
        num_data=words.shape[0],
        train_data=words,
        modules=(lda,),
    )


# ---------------------------------------------------------------------------------------
# 9-10. mixture / mixture_enum: a 1-D Gaussian mixture with 3 components
# ---------------------------------------------------------------------------------------
def mixture_data(seed: int, n: int = 60) -> torch.Tensor:
    """``n`` points from three unit-variance clusters at -4, 0 and 4."""
    gen = _generator(seed)
    centres = torch.tensor([-4.0, 0.0, 4.0])
    return centres[torch.arange(n) % 3] + torch.randn(n, generator=gen)


def make_mixture_model(enumerate_assignment: bool, control: bool = False) -> Callable[..., None]:
    """locs_k ~ N(0, 10); assignment_i ~ Cat(1/3); obs_i ~ N(locs[assignment_i], 1)."""
    infer = {"enumerate": "parallel"} if enumerate_assignment else {}

    def model(x: torch.Tensor) -> None:
        with pyro.plate("components", 3, dim=-1):
            locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0], dim=-1):
            assignment = pyro.sample("assignment", dist.Categorical(x.new_ones(3) / 3), infer=infer)
            if control:
                loc = locs.mean(-1, keepdim=True)
            else:  # Vindex: also right with enumerated or vectorised-particle dims
                loc = Vindex(locs.unsqueeze(-2))[..., assignment]
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    return model


def make_mixture_guide(
    local_assignment: bool, delta_locs: bool = False
) -> Callable[[torch.Tensor], None]:
    """q(locs) Normal (or Delta) and, if ``local_assignment``, q(assignment_i) = Cat(logits_i)."""

    def guide(x: torch.Tensor) -> None:
        loc = pyro.param("locs_loc", torch.tensor([-1.0, 0.0, 1.0]))
        with pyro.plate("components", 3, dim=-1):
            if delta_locs:
                pyro.sample("locs", dist.Delta(loc))
            else:
                scale = pyro.param("locs_scale", torch.ones(3), constraint=constraints.positive)
                pyro.sample("locs", dist.Normal(loc, scale))
        if local_assignment:
            logits = pyro.param("assignment_logits", x.new_zeros(x.shape[0], 3))
            with pyro.plate("data", x.shape[0], dim=-1):
                pyro.sample("assignment", dist.Categorical(logits=logits))

    return guide


@register("mixture")
def build_mixture(*, control: bool, seed: int = 0, delta_locs: bool = False) -> GalleryProgram:
    """Mixture with assignments sampled in the guide (score function); ``delta_locs``: MAP locs."""
    x = mixture_data(seed)
    features = {"non_reparam", "global_latent", "obs_named_obs"}
    if delta_locs:
        features.add("delta_guide")
    return GalleryProgram(
        name="mixture",
        model=make_mixture_model(False, control),
        guide=make_mixture_guide(True, delta_locs),
        args=(x,),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset(features),
        local_latents=("assignment",),
        global_latents=("locs",),
        enumerated=(),
        data_plate="data",
        num_data=x.shape[0],
        train_data=x,
        modules=(),
    )


@register("mixture_enum")
def build_mixture_enum(*, control: bool, seed: int = 0) -> GalleryProgram:
    """Mixture with assignments enumerated in the model; the guide covers ``locs`` only."""
    no_control("mixture_enum", control)
    x = mixture_data(seed)
    return GalleryProgram(
        name="mixture_enum",
        model=make_mixture_model(True),
        guide=make_mixture_guide(False),
        args=(x,),
        kwargs={},
        reference="TraceEnum_ELBO",
        max_plate_nesting=1,
        features=frozenset({"enumerate_model", "global_latent", "obs_named_obs"}),
        local_latents=(),
        global_latents=("locs",),
        enumerated=("assignment",),
        data_plate="data",
        num_data=x.shape[0],
        train_data=x,
        modules=(),
    )


# ---------------------------------------------------------------------------------------
# 11. poisson: a Poisson latent count per point, sampled in the guide
# ---------------------------------------------------------------------------------------
class PoissonCounts(nn.Module):
    """k_i ~ Poisson(3), x_i ~ N(k_i, 1); q(k_i | x_i) = Poisson(rate_net(x_i))."""

    def __init__(self, hidden: int = 16, control: bool = False) -> None:
        super().__init__()
        self.control = control
        self.rate_net = _mlp(1, hidden, 1)

    def model(self, x: torch.Tensor) -> None:
        """Latent counts ``k`` and noisy observations ``x`` of them."""
        with pyro.plate("data", x.shape[0], dim=-1):
            k = pyro.sample("k", dist.Poisson(x.new_full(x.shape, 3.0)))
            loc = x.new_full(x.shape, 3.0) if self.control else k
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(k|x) = Poisson(softplus(net(x))): a non-reparameterisable site."""
        pyro.module("rate_net", self.rate_net)
        with pyro.plate("data", x.shape[0], dim=-1):
            rate = F.softplus(self.rate_net(x.unsqueeze(-1)).squeeze(-1)) + 1e-3
            pyro.sample("k", dist.Poisson(rate))


@register("poisson")
def build_poisson(*, control: bool, seed: int = 0) -> GalleryProgram:
    """Poisson latent counts for 32 points."""
    gen = _generator(seed)
    k = torch.poisson(torch.full((32,), 3.0), generator=gen)
    x = k + torch.randn(32, generator=gen)
    pc = PoissonCounts(16, control=control)
    return GalleryProgram(
        name="poisson",
        model=pc.model,
        guide=pc.guide,
        args=(x,),
        kwargs={},
        reference="Trace_ELBO",
        max_plate_nesting=1,
        features=frozenset({"non_reparam"}),
        local_latents=("k",),
        global_latents=(),
        enumerated=(),
        data_plate="data",
        num_data=x.shape[0],
        train_data=x,
        modules=(pc,),
    )
