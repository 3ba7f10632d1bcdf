"""Three synthetic VAE trainings, each collapsing for one known cause.

A helper module for tests (not collected): ground-truth cases for a cause-attribution
diagnostic. Each case collapses, fully or partly, *because of* its named cause, which is
checked by showing that the cause's standard remedy, applied in the same setting with
the same budget, removes the collapse (``tests/diagnostics/test_cause_cases.py``):

``"decoder_capacity"``
    An LSTM sequence VAE (teacher forcing) on the bundled topic sequences, plain ELBO. The
    autoregressive decoder reads the topic off the prefix, so it models x without z and
    the plain ELBO leaves z unused: I_q(x; z) ~ 0 in every dimension, and the decoder
    ignores z (sensitivity ~0). Remedy: weaken the decoder with word dropout 0.5 (Bowman
    et al. 2016); z then carries the topic at the same held-out ELBO.
``"prior_mismatch"``
    Eight well-separated clusters (the vertices of a regular simplex, a 7-dimensional
    structure in 10 dimensions) whose covariance is isotropic except along one direction,
    fitted by a linear VAE (pPCA-type decoder, the weakest decoder) under N(0, I). With a
    Gaussian prior and a linear decoder the model is Gaussian, so it can only use the
    covariance: the one stretched direction is used (its aggregate posterior is
    multimodal, far from N(0, 1)) and the other six directions, whose eigenvalue equals
    the noise level, collapse exactly as the linear-VAE rule lambda <= sigma^2 says (Lucas
    et al. 2019). Remedy: a mixture prior with 8 components; the same linear decoder then
    is a mixture of Gaussians, which sees the clusters and uses every dimension.
``"training_dynamics"``
    A lagging inference network (He et al. 2019). An MLP VAE (factorised Bernoulli
    decoder, which cannot model x without z) is trained on the bundled digits until
    healthy; its inference network is then replaced by a fresh one initialised at the
    prior (q(z|x) = N(0, I) for every x) and training continues with the encoder's
    learning rate 10 times below the decoder's. Three epochs later the encoder has not
    followed: I_q(x; z) ~ 0, while the decoder still uses z (sensitivity > 0) and the
    model's posterior means E_p[z|x] still vary with x. Remedy: aggressive inference-network
    training (``fit(..., aggressive=True)``) with the same learning rates and epochs.

``make_case(name, seed)`` and ``make_remedied(name, seed)`` are cached; ``seed`` fixes the
data (sequences, clusters, split) and the training, which run on one torch thread.
``measure(case)`` computes the held-out numbers the tests and the report use. Besides the
fields of the brief, a :class:`CauseCase` has ``remedied`` and ``extra`` (settings, build
time, true factors of the held-out rows).

Things a cause-attribution diagnostic should expect (seeds 0, 1, 2):

* The cases are distinct: aggressive training does *not* rescue ``"decoder_capacity"``
  (I_q = 0.01 after the same 15 epochs, seed 0), while it does rescue
  ``"training_dynamics"``; the decoder's sensitivity separates them (about 0.005 per
  dimension in ``"decoder_capacity"``, 0.11-0.46 in ``"training_dynamics"``).
* The model-posterior means of ``diagnose(..., "iw")`` carry importance-sampling noise:
  with 100 draws their standard deviation over points is about 0.12-0.15 per dimension
  even where the decoder ignores z (``"decoder_capacity"``); in ``"training_dynamics"``
  it is 0.26-0.75 against <= 0.011 for the approximate means.
* In ``"prior_mismatch"`` the six collapsed dimensions have I_q(x; z_d) < 0.055 and KL
  < 0.045, yet Cov_x(E_q[z_d]) = 0.02-0.07, above the usual 0.01 active-unit threshold:
  at the boundary lambda = sigma^2 the loading decays only slowly, and the linear
  encoder's posterior scale (~0.97-1.0) does not depend on x. The used dimension's
  aggregate posterior is multimodal: KL(q(z_d) || N(0, 1)) = 0.21-0.27 nats there, ~0
  elsewhere.
* ``"prior_mismatch"`` needs the linear decoder's *shared* noise scale: with per-feature
  noise scales (``MLPVAE(..., likelihood="gaussian", decoder_hidden=())``) a latent
  dimension can encode a single coordinate at no cost, and with an MLP decoder the
  standard prior keeps about 2.3 nats; a stronger decoder is therefore a second remedy.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro.util import get_rng_state, set_rng_state
from torch import nn

from pyrocollapse import diagnose, fit, load_dataset
from pyrocollapse.diagnostics import kl_per_dimension, mutual_information
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE, LinearVAE, SequenceVAE
from pyrocollapse.priors import MixturePrior, StandardNormalPrior

__all__ = ["CAUSES", "CauseCase", "make_case", "make_remedied", "measure"]

CAUSES = ("decoder_capacity", "prior_mismatch", "training_dynamics")

_CAUSE_TEXT = {
    "decoder_capacity": "decoder capacity",
    "prior_mismatch": "prior mismatch",
    "training_dynamics": "training dynamics",
}

_REMEDY = {
    "decoder_capacity": {"word_dropout": 0.5},
    "prior_mismatch": {"prior": "mixture", "n_components": 8},
    "training_dynamics": {"aggressive": True},
}


@dataclass
class CauseCase:
    """One trained VAE and everything needed to diagnose it.

    ``train`` and ``test`` are what ``model`` and ``guide`` take (tensors); ``test`` is
    held out. ``extra`` holds the settings (sizes, learning rates, epochs), the build
    time in seconds, the true factors of the held-out rows where known
    (``test_factors``) and, for ``"training_dynamics"``, the History of the healthy
    pre-training (``pretrain_history``).
    """

    name: str
    cause: str
    vae: Any
    model: Callable
    guide: Callable
    train: Any
    test: Any
    history: Any
    objective: Any
    remedy: dict
    remedied: bool = False
    extra: dict = field(default_factory=dict)


def _case(
    name: str, vae: Any, train: Any, test: Any, history: Any, objective: Any, *, extra: dict
) -> CauseCase:
    """A :class:`CauseCase` of ``name``: its cause, programs and remedy follow from it."""
    return CauseCase(
        name=name,
        cause=_CAUSE_TEXT[name],
        vae=vae,
        model=vae.model,
        guide=vae.guide,
        train=train,
        test=test,
        history=history,
        objective=objective,
        remedy=dict(_REMEDY[name]),
        extra=extra,
    )


def _check_name(name: str) -> str:
    if name not in CAUSES:
        raise ValueError(f"name must be one of {CAUSES}, got {name!r}")
    return name


def _reset(seed: int) -> None:
    """Seed and clear Pyro's state: called before building each model."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()


class _one_thread:
    """Build on one torch thread (results then do not depend on the caller's setting)."""

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


# ======================================================================================
# decoder capacity: LSTM sequence VAE, plain ELBO
# ======================================================================================
SEQ = dict(
    n=1000,
    vocab_size=24,
    max_len=12,
    n_topics=4,
    valid_fraction=0.2,
    latent_dim=4,
    embed=32,
    hidden=64,
    cell="lstm",
    lr=3e-3,
    batch_size=50,
    epochs=15,
)


def _decoder_capacity(seed: int, word_dropout: float) -> CauseCase:
    s = SEQ
    data = load_dataset(
        "sequences",
        n=s["n"],
        vocab_size=s["vocab_size"],
        max_len=s["max_len"],
        n_topics=s["n_topics"],
        seed=seed,
    )
    train, test = data.split(s["valid_fraction"], seed=seed)
    _reset(seed)
    vae = SequenceVAE.from_dataset(
        data,
        latent_dim=s["latent_dim"],
        embed=s["embed"],
        hidden=s["hidden"],
        cell=s["cell"],
        word_dropout=word_dropout,
    )
    loss = PlainELBO()
    history = fit(
        vae.model,
        vae.guide,
        train.data,
        loss=loss,
        optim=pyro.optim.Adam({"lr": s["lr"]}),
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        seed=seed,
        progress=False,
    )
    vae.eval()  # word dropout only while training
    return _case(
        "decoder_capacity",
        vae,
        train.data,
        test.data,
        history,
        loss,
        extra={
            "settings": {**s, "word_dropout": word_dropout, "seed": seed},
            "test_factors": test.factors,
            "factor_names": test.factor_names,
        },
    )


# ======================================================================================
# prior mismatch: simplex clusters, linear VAE
# ======================================================================================
CLUSTERS = dict(
    n=2000,
    n_clusters=8,
    input_dim=10,
    within_sd=0.25,
    stretch=3.0,
    test_rows=400,
    latent_dim=7,
    lr=1e-2,
    batch_size=200,
    epochs=60,
)


def _msqrt(a: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * w**power) @ v.T


def simplex_clusters(
    n: int,
    *,
    n_clusters: int,
    input_dim: int,
    within_sd: float,
    stretch: float,
    test_rows: int,
    seed: int,
) -> dict[str, Any]:
    """K = ``n_clusters`` equiprobable clusters at the vertices of a regular simplex.

    The vertices span d = K - 1 dimensions; each cluster is N(vertex, within_sd^2 I_d),
    scaled so that every direction of the d-dimensional span has variance 1. The span is
    then stretched by ``stretch`` along the direction that splits the vertices into two
    halves (there the data are bimodal, variance ``stretch^2``), padded with
    ``input_dim - d`` unit-variance noise coordinates and rotated at random. Population
    covariance: Sigma = I + (stretch^2 - 1) u u^T. Finally one linear map gives the
    training rows (all but the first ``test_rows``) exactly the mean 0 and covariance
    Sigma, so that the second moments, all that a Gaussian model sees, are those of the
    population: one direction above the noise level, every other direction at it.

    Returns a dict with ``train``, ``test`` (float32 tensors), ``labels`` (cluster of
    each row, train rows after the test rows as in the data) and ``covariance``.
    """
    rng = np.random.default_rng(seed)
    k, d = n_clusters, n_clusters - 1
    centred = np.eye(k) - 1.0 / k
    basis = np.linalg.svd(centred)[2][:d].T
    vertices = centred @ basis  # (K, d), centred; covariance proportional to I_d
    vertices *= math.sqrt((1.0 - within_sd**2) * d / (vertices**2).sum(1).mean())
    labels = rng.integers(k, size=n)
    y = vertices[labels] + within_sd * rng.standard_normal((n, d))
    u = vertices[: k // 2].sum(0)
    u /= np.linalg.norm(u)
    y = y + (stretch - 1.0) * (y @ u)[:, None] * u[None, :]
    x = np.concatenate([y, rng.standard_normal((n, input_dim - d))], 1)
    rotation = np.linalg.qr(rng.standard_normal((input_dim, input_dim)))[0]
    x = x @ rotation.T
    cov = np.eye(input_dim)
    cov[:d, :d] += (stretch**2 - 1.0) * np.outer(u, u)
    cov = rotation @ cov @ rotation.T
    rows = x[test_rows:]
    fix = _msqrt(cov, 0.5) @ _msqrt(np.cov(rows.T, bias=True), -0.5)
    x = (x - rows.mean(0)) @ fix.T
    x = torch.tensor(x, dtype=torch.float32)
    return {
        "train": x[test_rows:],
        "test": x[:test_rows],
        "labels": labels,
        "covariance": cov,
    }


def _prior_mismatch(seed: int, mixture: bool) -> CauseCase:
    s = CLUSTERS
    data = simplex_clusters(
        s["n"],
        n_clusters=s["n_clusters"],
        input_dim=s["input_dim"],
        within_sd=s["within_sd"],
        stretch=s["stretch"],
        test_rows=s["test_rows"],
        seed=seed,
    )
    _reset(seed)
    dim = s["latent_dim"]
    prior = (
        MixturePrior(dim, n_components=_REMEDY["prior_mismatch"]["n_components"])
        if mixture
        else StandardNormalPrior(dim)
    )
    vae = LinearVAE(s["input_dim"], dim, prior)
    loss = PlainELBO()
    history = fit(
        vae.model,
        vae.guide,
        data["train"],
        loss=loss,
        optim=pyro.optim.Adam({"lr": s["lr"]}),
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        seed=seed,
        progress=False,
    )
    vae.eval()
    return _case(
        "prior_mismatch",
        vae,
        data["train"],
        data["test"],
        history,
        loss,
        extra={
            "settings": {**s, "prior": "mixture" if mixture else "standard", "seed": seed},
            "test_factors": torch.as_tensor(data["labels"][: s["test_rows"]]),
            "factor_names": ("cluster",),
            "covariance": data["covariance"],
        },
    )


# ======================================================================================
# training dynamics: lagging inference network on digits
# ======================================================================================
LAG = dict(
    valid_fraction=0.2,
    latent_dim=8,
    hidden=(128,),
    batch_size=128,
    pretrain_epochs=20,
    pretrain_lr=1e-3,
    epochs=3,
    decoder_lr=1e-3,
    encoder_lr=1e-4,
)


def reset_encoder_to_prior(vae: MLPVAE) -> None:
    """A fresh inference network whose q(z|x) is exactly N(0, I) for every x: hidden
    layers re-initialised, last layer weights 0, location bias 0, scale bias 1."""
    with torch.no_grad():
        for layer in vae.encoder:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        last = vae.encoder[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[vae.latent_dim :] = math.log(math.expm1(1.0 - vae.min_scale))


def _training_dynamics(seed: int, aggressive: bool) -> CauseCase:
    s = LAG
    train, test = load_dataset("digits").split(s["valid_fraction"], seed=seed)
    _reset(seed)
    vae = MLPVAE(train.event_shape[0], s["latent_dim"], hidden=s["hidden"])
    loss = PlainELBO()
    pretrain = fit(
        vae.model,
        vae.guide,
        train.data,
        loss=loss,
        optim=pyro.optim.Adam({"lr": s["pretrain_lr"]}),
        epochs=s["pretrain_epochs"],
        batch_size=s["batch_size"],
        seed=seed,
        progress=False,
    )
    torch.manual_seed(seed)
    reset_encoder_to_prior(vae)
    prefix = f"{vae._pyro_name}.encoder."

    def lr(name: str) -> dict[str, float]:
        return {"lr": s["encoder_lr"] if name.startswith(prefix) else s["decoder_lr"]}

    loss = PlainELBO()
    history = fit(
        vae.model,
        vae.guide,
        train.data,
        loss=loss,
        optim=pyro.optim.Adam(lr),
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        seed=seed,
        progress=False,
        aggressive=aggressive,
    )
    vae.eval()
    return _case(
        "training_dynamics",
        vae,
        train.data,
        test.data,
        history,
        loss,
        extra={
            "settings": {**s, "aggressive": aggressive, "seed": seed},
            "pretrain_history": pretrain,
            "test_factors": test.factors,
            "factor_names": test.factor_names,
        },
    )


# ======================================================================================
# entry points
# ======================================================================================
def _build(name: str, seed: int, remedied: bool) -> CauseCase:
    _check_name(name)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    start = time.perf_counter()
    with _one_thread():
        if name == "decoder_capacity":
            word_dropout = _REMEDY[name]["word_dropout"] if remedied else 0.0
            case = _decoder_capacity(seed, word_dropout)
        elif name == "prior_mismatch":
            case = _prior_mismatch(seed, mixture=remedied)
        else:
            case = _training_dynamics(seed, aggressive=remedied)
    case.remedied = remedied
    case.extra["build_seconds"] = time.perf_counter() - start
    return case


@functools.lru_cache(maxsize=16)
def _cached(name: str, seed: int, remedied: bool) -> CauseCase:
    return _build(name, seed, remedied)


def make_case(name: str, seed: int = 0) -> CauseCase:
    """The collapsed case ``name`` (one of :data:`CAUSES`), trained with ``seed``.

    Cached (``functools.lru_cache`` on the normalised arguments): the same object for the
    same ``(name, seed)``, however the arguments are passed.
    """
    return _cached(_check_name(name), seed, False)


def make_remedied(name: str, seed: int = 0) -> CauseCase:
    """The same setting as :func:`make_case` with the cause's remedy (``case.remedy``)
    applied; cached like :func:`make_case`."""
    return _cached(_check_name(name), seed, True)


def measure(case: CauseCase, *, full: bool = False, seed: int = 0) -> dict[str, Any]:
    """Held-out numbers of a case (nats per data point).

    Always: ``mi`` (I_q(x; z)), ``mi_per_dim``, ``aggregate_kl`` (KL(q(z) || p(z))),
    ``aggregate_kl_per_dim``, ``kl_per_dim`` and ``kl`` (E_x KL(q(z|x) || p(z))), ``elbo``.
    With ``full``: also ``log_likelihood`` (importance-weighted), ``sensitivity`` (decoder
    Fisher information per dimension), and the standard deviation over the held-out points
    of the approximate and the model posterior means, ``approx_mean_sd`` and
    ``model_mean_sd`` (per dimension).
    """
    estimators = ("kl", "au", "mi", "sensitivity", "iw") if full else ("kl", "au", "mi")
    saved = get_rng_state()
    try:
        with _one_thread():
            pyro.set_rng_seed(seed)
            mi = mutual_information(case.model, case.guide, case.test, num_samples=10)
            kl = kl_per_dimension(case.model, case.guide, case.test, num_samples=64)
            report = diagnose(
                case.model,
                case.guide,
                case.test,
                estimators=estimators,
                importance_samples=100,
                seed=seed,
            )
    finally:
        set_rng_state(saved)
    site = report.sites["z"]
    out: dict[str, Any] = {
        "mi": float(mi.total),
        "mi_per_dim": np.asarray(mi.per_dim, dtype=float),
        "aggregate_kl": float(mi.aggregate_kl),
        "aggregate_kl_per_dim": np.asarray(mi.aggregate_kl_per_dim, dtype=float),
        "kl_per_dim": np.asarray(kl.per_dim, dtype=float),
        "kl": float(kl.total),
        "elbo": float(report.elbo["elbo"]),
        "report_mi_per_dim": np.asarray(site.mi_per_dim, dtype=float),
        "report_kl_per_dim": np.asarray(site.kl_per_dim, dtype=float),
    }
    if full:
        out["log_likelihood"] = float(report.elbo["log_likelihood"])
        out["sensitivity"] = np.asarray(site.sensitivity, dtype=float)
        space = site.mean_space
        out["approx_mean_sd"] = np.asarray(space["approximate"]).std(0)
        out["model_mean_sd"] = np.asarray(space["model"]).std(0)
    return out
