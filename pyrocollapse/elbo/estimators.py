"""Minibatch estimators shared by the variants.

Plain functions of a :class:`LocalSite` (q(z|x), p(z) and the draw z of one latent site
over the batch), vectorised over the batch: the matrix of log q(z_i | x_j), the aggregate
posterior, the mutual information, the total-correlation decomposition, MMD with its
kernels, and the per-data-point importance weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions import Delta, Distribution
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from torch.distributions import Normal

from pyrocollapse._distributions import as_vector, particle_slice, strip_mask, unwrap
from pyrocollapse._validation import check_choice, check_float
from pyrocollapse.elbo.terms import _PARTICLE_PLATE, ELBOTerms, LatentTerm, _factor


@dataclass
class LocalSite:
    """One latent site local to the data plate, as the minibatch estimators see it.

    Attributes
    ----------
    name : str
        Site name.
    q : Distribution
        q(z|x_j) for every row j: batch shape ``(B,)``, event shape ``(D,)``.
    p : Distribution
        p(z) at the site: batch shape broadcastable to ``(B,)``, event shape ``(D,)``.
    z : torch.Tensor
        The guide's draw, shape ``(B, D)``; row i is a draw from q(z|x_i).
    mask : torch.Tensor
        Boolean, shape ``(B,)``: rows that take part (the site's mask).
    scale : torch.Tensor
        Shape ``(B,)``: the data points each row stands for (plate subsampling x
        ``poutine.scale``).
    particles : int
        Number of vectorised particles the objective averages over (each particle is
        one ``LocalSite``); :meth:`total` divides by it.
    factor : torch.Tensor or None
        Scalar of value 1 carrying the score-function gradient of the program's
        non-reparameterised sites (``ELBOTerms.score_factor``); :meth:`total`
        multiplies by it.
    """

    name: str
    q: Distribution
    p: Distribution
    z: torch.Tensor
    mask: torch.Tensor
    scale: torch.Tensor
    particles: int = 1
    factor: torch.Tensor | None = field(default=None, repr=False)
    prior_sampler: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def dataset_size(self) -> float:
        """Number of data points the batch stands for, N (sum of the rows' scales)."""
        return float((self.scale * self.mask).sum())

    def total(self, rows: torch.Tensor) -> torch.Tensor:
        """Scale-weighted sum over the rows that take part of a per-row quantity ``(B,)``,
        divided by the number of particles."""
        out = torch.where(self.mask, rows * self.scale, torch.zeros_like(rows)).sum()
        if self.factor is not None:
            out = out * self.factor
        return out / self.particles if self.particles != 1 else out

    def sample_prior(self) -> torch.Tensor:
        """One draw from p(z) per row, shape ``(B, D)``, reparameterised where p allows."""
        if self.prior_sampler is not None:
            return self.prior_sampler()
        p = self.p.expand(self.mask.shape)
        return p.rsample() if p.has_rsample else p.sample()


def _enumeration_note(term: LatentTerm, objective: str) -> str | None:
    structure = getattr(term, "_structure", None)
    if structure is None or not structure.enumerated:
        return None
    return (
        f"{objective}: latent site {term.name!r} lies under the enumerated guide site(s) "
        f"{structure.enumerated}, so its draw is one z per enumerated value and data point; "
        "the minibatch estimate of the aggregate posterior q(z) needs one draw per data "
        "point. Sample those sites instead (infer={'enumerate': None}), or use an objective "
        "that sums enumerated sites exactly (elbo, annealed, beta, freebits)"
    )


def local_sites(term: LatentTerm, objective: str) -> list[LocalSite]:
    """View ``term`` as :class:`LocalSite` s, one per vectorised particle; ``[]`` for a
    global site.

    A local site lives in one data plate: batch shape ``(B,)`` (``(K, B)`` under K
    vectorised particles), event shape ``(D,)``; a scalar latent per data point (event
    shape ``()``) is viewed as ``D = 1``. A global site (batch shape ``()``) has no batch
    to estimate an aggregate posterior from, and the variants treat it with its plain
    KL, as they do discrete and other non-reparameterised sites. Rows masked out by the
    site's mask or by a masked distribution (``.mask(m)``) take no part.

    Raises
    ------
    ValueError
        For a site under an enumerated guide site, or any other shape, naming
        ``objective``, the site and the fix.
    """
    if not isinstance(term, LatentTerm):
        raise TypeError(f"term must be a LatentTerm, got {type(term).__name__}")
    q, z, p_full = term.q, term.value, term.p
    k = term.particles
    batch = q.batch_shape
    if batch == torch.Size() or (k != 1 and batch == torch.Size([k])):
        return []
    if not q.has_rsample or isinstance(unwrap(q), Delta):
        # a discrete (or otherwise non-reparameterised) site, or a point estimate: it has
        # no spread to estimate an aggregate posterior from, and keeps its plain KL
        return []
    want = 1 if k == 1 else 2
    note = _enumeration_note(term, objective)
    if note is not None and (len(batch) > want or z.dim() - len(q.event_shape) > want):
        raise ValueError(note)
    if len(q.event_shape) == 0 and len(batch) == want and z.dim() == want:
        # a scalar latent per data point: one latent dimension
        q, p_full, z = as_vector(q), as_vector(p_full), z.unsqueeze(-1)
    if len(batch) != want or len(q.event_shape) != 1 or z.dim() != want + 1:
        raise ValueError(
            f"{objective}: latent site {term.name!r} has batch shape {tuple(batch)} and "
            f"event shape {tuple(q.event_shape)}; its minibatch estimators need a latent local "
            "to one data plate, with batch shape (B,) and event shape (latent_dim,). Try one "
            "of the following fixes: declare the latent dimensions with .to_event(1); put the "
            "site in a single pyro.plate over the data"
        )
    b = batch[-1]
    mask = term.guide_site["mask"]
    mask = (
        torch.ones(batch, dtype=torch.bool, device=z.device)
        if mask is None
        else torch.as_tensor(mask, device=z.device).expand(batch).bool()
    )
    # masks carried by the distributions (``.mask(m)``) leave rows out too
    q, q_mask = strip_mask(q)
    p_full, p_mask = strip_mask(p_full)
    for m in (q_mask, p_mask):
        if m is not None:
            mask = mask & torch.as_tensor(m, device=z.device).expand(batch).bool()
    scale = torch.as_tensor(term.scale, dtype=z.dtype, device=z.device).expand(batch)
    factor = getattr(term, "_score_factor", None)
    if k == 1:
        return [LocalSite(term.name, q, p_full, z, mask, scale, 1, factor)]
    draws: list[torch.Tensor] = []

    def sampler(i: int) -> Callable[[], torch.Tensor]:
        def draw() -> torch.Tensor:
            if not draws:  # one prior draw for every particle, sliced
                p = p_full.expand(batch)
                draws.append(p.rsample() if p.has_rsample else p.sample())
            return draws[0][i]

        return draw

    return [
        LocalSite(
            term.name,
            particle_slice(q, i, b),
            particle_slice(p_full, i, b),
            z[i],
            mask[i],
            scale[i],
            k,
            factor,
            sampler(i),
        )
        for i in range(k)
    ]


def local_site(term: LatentTerm, objective: str) -> LocalSite | None:
    """View ``term`` as a :class:`LocalSite`, or ``None`` for a global or discrete site.

    The single-particle form of :func:`local_sites`; raises ``ValueError`` under
    vectorised particles (use :func:`local_sites`).
    """
    if isinstance(term, LatentTerm) and term.particles != 1:
        raise ValueError(
            f"{objective}: latent site {term.name!r} has {term.particles} vectorised "
            "particles; use local_sites(term, objective), which gives one LocalSite per particle"
        )
    sites = local_sites(term, objective)
    return sites[0] if sites else None


def log_density_matrix(site: LocalSite, per_dim: bool = False) -> torch.Tensor:
    """Pairwise log-densities ``L[i, j] = log q(z_i | x_j)``.

    Parameters
    ----------
    site : LocalSite
    per_dim : bool
        Return the univariate log-densities ``log q(z_id | x_j)`` per dimension; needs a
        factorised q (``Independent`` of univariates).

    Returns
    -------
    torch.Tensor
        Shape ``(B, B)``, or ``(B, B, D)`` with ``per_dim=True``. Differentiable in z and
        in q's parameters.

    Notes
    -----
    For a diagonal Normal q, the joint densities come from three ``(B, D) x (D, B)``
    matrix products in float64 (no ``(B, B, D)`` tensor; on CPU and CUDA), and the
    per-dimension ones from three passes over the ``(B, B, D)`` tensor,
    ``-0.5 ((z - mu) / sigma)^2 - log sigma - log(2 pi) / 2``, instead of the six of
    ``Normal.log_prob``; the values agree with ``Normal.log_prob`` up to float32
    rounding. Pyro's validation adds ``q``'s argument checks of ``z`` but never changes
    the numeric path, so that a run is the same with validation on or off (``fit``
    validates the first step of every call, and a resumed run must repeat the
    uninterrupted one bit for bit).
    """
    if not isinstance(site, LocalSite):
        raise TypeError(f"site must be a LocalSite, got {type(site).__name__}")
    z = site.z.unsqueeze(-2)  # (B, 1, D) against q's batch (B,)
    q1 = _factor(site.q)
    if (
        is_validation_enabled()
        and getattr(site.q, "_validate_args", False)
        and not torch._C._get_tracing_state()
    ):
        site.q._validate_sample(z)  # checks only: the numbers below are the same either way
    if _is_plain_normal(q1):
        if not per_dim and site.z.device.type in ("cpu", "cuda"):
            return _normal_pairwise_joint(q1, site.z)
        # the (B, B, D) tensor dominates: 3 passes over it instead of Normal.log_prob's 6
        inv_scale = q1.scale.reciprocal()
        u = (z - q1.loc) * inv_scale
        return torch.addcmul(inv_scale.log() - _HALF_LOG_2PI, u, u, value=-0.5)
    if not per_dim:
        return site.q.log_prob(z)
    if q1 is None:
        raise ValueError(
            f"latent site {site.name!r}: per-dimension densities need a factorised guide "
            f"distribution (Independent of univariates, e.g. Normal(loc, scale).to_event(1)), "
            f"got {type(site.q).__name__}"
        )
    return q1.log_prob(z)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_pairwise_joint(q1: Normal, z: torch.Tensor) -> torch.Tensor:
    """``log q(z_i | x_j)`` summed over dimensions for a diagonal Normal, ``(B, B)``.

    Expands ``sum_d ((z_id - mu_jd) / sigma_jd)^2`` into three ``(B, D) x (D, B)``
    products, so no ``(B, B, D)`` tensor is formed. The products run in float64: their
    terms, of order ``(z / sigma)^2``, cancel, and float64 keeps the result accurate to
    ~1e-8 nats even at sigma = 1e-4.
    """
    b, d = z.shape[-2], z.shape[-1]
    loc, scale = (t.expand(b, d) for t in torch.broadcast_tensors(q1.loc, q1.scale))
    zd, locd = z.double(), loc.double()
    w = scale.double().reciprocal().square()  # (B, D): 1 / sigma_j^2
    m = locd * w
    quad = zd.square() @ w.T - 2.0 * (zd @ m.T) + (locd * m).sum(-1)
    bias = -scale.log().sum(-1).double() - d * _HALF_LOG_2PI  # (B,) over j
    return (bias - 0.5 * quad).to(z.dtype)


def _is_plain_normal(d: Any) -> bool:
    """A ``Normal`` whose ``log_prob`` is torch's (not overridden by a subclass)."""
    return isinstance(d, Normal) and type(d).log_prob is Normal.log_prob


#: Estimators of log q(z_i) from the minibatch, for :func:`log_aggregate_posterior`.
AGGREGATE_ESTIMATORS = ("batch", "stratified", "mws")


def log_aggregate_posterior(
    log_q: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    dataset_size: float | None = None,
    estimator: str = "batch",
) -> torch.Tensor:
    """Minibatch estimate of the aggregate posterior's log-density at each row's draw.

    The aggregate posterior is q(z) = (1/N) sum_n q(z|x_n) over the N data points; row i
    holds z_i ~ q(z|x_i) and ``log_q[i, j] = log q(z_i|x_j)`` for the M rows of the
    batch (see :func:`log_density_matrix`).

    ``"batch"``
        log (1/M) sum_j q(z_i|x_j): the batch taken as the data distribution (He et al.
        2019). With it, log q(z_i|x_i) - log q(z_i) <= log M.
    ``"stratified"``
        log [(1/N) q(z_i|x_i) + (N-1)/(N(M-1)) sum_{j != i} q(z_i|x_j)]: unbiased for
        q(z_i) of the whole data set when the other M-1 rows are a uniform sample of
        the other points (the minibatch stratified sampling idea of Chen et al. 2018);
        equals ``"batch"`` when N = M.
    ``"mws"``
        log sum_j q(z_i|x_j) - log(N M): minibatch weighted sampling (Chen et al. 2018),
        biased low; its constant offset does not change gradients.

    Parameters
    ----------
    log_q : torch.Tensor
        Shape ``(B, B)`` or ``(B, B, D)`` (per dimension); j along dim 1.
    mask : torch.Tensor or None
        Boolean, shape ``(B,)``: rows that take part (columns of other rows are ignored).
    dataset_size : float or None
        N, the number of data points the batch stands for; needed by ``"stratified"``
        and ``"mws"``, and at least M.
    estimator : {"batch", "stratified", "mws"}

    Returns
    -------
    torch.Tensor
        Shape ``(B,)`` or ``(B, D)``: the estimate of log q(z_i) (or of the marginal
        log q(z_id)). Rows outside ``mask`` hold finite but meaningless values.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    """
    estimator = check_choice("estimator", estimator, AGGREGATE_ESTIMATORS)
    if not isinstance(log_q, torch.Tensor):
        raise TypeError(f"log_q must be a torch.Tensor, got {type(log_q).__name__}")
    if log_q.dim() not in (2, 3) or log_q.shape[0] != log_q.shape[1]:
        raise ValueError(
            f"log_q must have shape (B, B) or (B, B, D), got {tuple(log_q.shape)}; build it "
            "with log_density_matrix"
        )
    if dataset_size is not None:
        dataset_size = check_float("dataset_size", dataset_size, minimum=0.0, strict_minimum=True)
    b = log_q.shape[0]
    extra = (1,) * (log_q.dim() - 2)
    if mask is not None:
        log_q = log_q.masked_fill(~mask.view(1, b, *extra), -math.inf)
        m = int(mask.sum())
    else:
        m = b
    if m < 1:
        raise ValueError("log_aggregate_posterior needs at least one row in mask, got none")
    if estimator == "batch":
        return torch.logsumexp(log_q, dim=1) - math.log(m)
    n = check_float("dataset_size", dataset_size, minimum=0.0, strict_minimum=True)
    if n < m - 1e-6 * m:
        raise ValueError(
            f"dataset_size must be >= the {m} rows of the batch for estimator {estimator!r}, "
            f"got {n:g}; the data-set size is read from the site's scale (plate subsampling), "
            "so a poutine.scale below 1 cannot be told apart from a smaller data set. Use "
            "estimator='batch' in that case"
        )
    if estimator == "mws":
        return torch.logsumexp(log_q, dim=1) - math.log(n * m)
    # stratified: own posterior weighs 1/N, each of the other M-1 rows (N-1)/(N(M-1))
    off = math.log(n - 1) - math.log(n) - math.log(m - 1) if m > 1 and n > 1 else -math.inf
    eye = torch.eye(b, dtype=torch.bool, device=log_q.device).view(b, b, *extra)
    log_w = torch.full_like(eye, off, dtype=log_q.dtype).masked_fill(eye, -math.log(n))
    return torch.logsumexp(log_q + log_w, dim=1)


def minibatch_mutual_information(site: LocalSite, estimator: str = "batch") -> torch.Tensor:
    """Per-row terms of the minibatch estimate of I_q(x; z).

    ``I_q(x; z) = E_x E_{q(z|x)}[log q(z|x) - log q(z)]`` with q(z) the aggregate
    posterior, estimated from the rows' own draws z_i ~ q(z|x_i) and
    :func:`log_aggregate_posterior`. The estimate is the mean of the returned rows over
    the rows in ``site.mask``; with ``estimator="batch"`` it is at most log M (M rows).
    Differentiable (reparameterised z).

    Returns
    -------
    torch.Tensor
        Shape ``(B,)``: log q(z_i|x_i) - log q̂(z_i), nats.

    References
    ----------
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    Hoffman & Johnson (2016). ELBO surgery: yet another way to carve up the variational
    evidence lower bound. NeurIPS Workshop on Advances in Approximate Bayesian Inference.
    """
    log_q = log_density_matrix(site)
    log_qz = log_aggregate_posterior(
        log_q, mask=site.mask, dataset_size=site.dataset_size, estimator=estimator
    )
    return torch.diagonal(log_q) - log_qz


def total_correlation_decomposition(
    site: LocalSite, estimator: str = "stratified"
) -> dict[str, torch.Tensor]:
    """Per-row terms of the decomposition KL = index-code MI + TC + dimension-wise KL.

    With q(z) the aggregate posterior and q(z_d) its marginals (Chen et al. 2018, eq. 2)::

        index_code_mi     = log q(z|x) - log q(z)
        total_correlation = log q(z) - sum_d log q(z_d)
        dimwise_kl        = sum_d log q(z_d) - log p(z)

    at each row's draw; the three add up to the Monte Carlo KL log q(z|x) - log p(z)
    exactly, whatever the estimator of q(z).

    Returns
    -------
    dict[str, torch.Tensor]
        ``"index_code_mi"``, ``"total_correlation"``, ``"dimwise_kl"``, each ``(B,)``.

    References
    ----------
    Chen, Li, Grosse, Duvenaud (2018). Isolating Sources of Disentanglement in Variational
    Autoencoders. NeurIPS.
    """
    log_q_dims = log_density_matrix(site, per_dim=True)  # (B, B, D)
    log_q = log_q_dims.sum(-1)
    kw = {"mask": site.mask, "dataset_size": site.dataset_size, "estimator": estimator}
    log_qz = log_aggregate_posterior(log_q, **kw)
    log_prod = log_aggregate_posterior(log_q_dims, **kw).sum(-1)
    log_pz = site.p.log_prob(site.z).expand_as(log_qz)
    return {
        "index_code_mi": torch.diagonal(log_q) - log_qz,
        "total_correlation": log_qz - log_prod,
        "dimwise_kl": log_prod - log_pz,
    }


def _check_samples(x: object, y: object) -> None:
    """``x`` and ``y`` are tensors of shapes ``(n, D)`` and ``(m, D)``; finite where
    Pyro's validation is on (the scan costs a pass over the data)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"{name} must have shape (N, D) (one sample per row), got {tuple(t.shape)}"
            )
    if x.shape[-1] != y.shape[-1]:  # type: ignore[union-attr]
        raise ValueError(
            "x and y must have the same number of columns D, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"  # type: ignore[union-attr]
        )
    if is_validation_enabled() and not torch._C._get_tracing_state():
        for name, t in (("x", x), ("y", y)):
            bad = (~torch.isfinite(t)).sum()  # type: ignore[arg-type]
            if bad:
                nan = int(torch.isnan(t).sum())  # type: ignore[arg-type]
                raise ValueError(
                    f"{name} contains {nan} NaN and {int(bad) - nan} infinite values; "
                    "the samples must be finite"
                )


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distances ``||x_i - y_j||^2``, ``(n, m)``, from ``(n, D)`` and ``(m, D)``.

    As ``|x|^2 + |y|^2 - 2 x.y`` with one matrix product in float64 (no ``(n, m, D)``
    tensor; float64 because the terms cancel), clamped at 0; the broadcast difference
    on devices without fast float64.
    """
    if x.dim() != 2 or y.dim() != 2 or x.device.type not in ("cpu", "cuda"):
        return (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)
    xd, yd = x.double(), y.double()
    sq = xd.square().sum(-1, keepdim=True) + yd.square().sum(-1) - 2.0 * (xd @ yd.T)
    return sq.clamp_min(0.0).to(torch.promote_types(x.dtype, y.dtype))


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel ``k(x, y) = exp(-||x - y||^2 / C)``, ``C = bandwidth``.

    ``x`` has shape ``(n, D)``, ``y`` shape ``(m, D)``; returns ``(n, m)``.
    """
    _check_samples(x, y)
    bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
    return torch.exp(-_sq_dist(x, y) / bandwidth)


def imq_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Inverse multiquadratic kernel ``k(x, y) = C / (C + ||x - y||^2)``, ``C = bandwidth``.

    Heavier-tailed than the Gaussian kernel, so its gradients do not vanish for distant
    samples (Tolstikhin et al. 2018). Shapes as :func:`rbf_kernel`.

    References
    ----------
    Tolstikhin, Bousquet, Gelly, Schoelkopf (2018). Wasserstein Auto-Encoders. ICLR.
    """
    _check_samples(x, y)
    bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
    return bandwidth / (bandwidth + _sq_dist(x, y))


#: Kernel name -> kernel function, for :func:`mmd` and :class:`InfoVAEELBO`.
KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "imq": imq_kernel,
    "rbf": rbf_kernel,
}


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: str = "imq",
    bandwidth: float | None = None,
    unbiased: bool = True,
) -> torch.Tensor:
    """Squared maximum mean discrepancy between the samples ``x`` and ``y``.

    ``MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)``. The unbiased U-statistic leaves
    out the diagonal pairs (it can be slightly negative); it falls back to the biased
    V-statistic when either sample has fewer than two points.

    Parameters
    ----------
    x, y : torch.Tensor
        Shapes ``(n, D)`` and ``(m, D)``.
    kernel : {"imq", "rbf"}
    bandwidth : float or None
        The kernel's scale C; default ``2 * D`` (Tolstikhin et al. 2018's choice for a
        standard-normal prior).
    unbiased : bool
        U-statistic (default) or V-statistic.

    Returns
    -------
    torch.Tensor
        Scalar, differentiable in ``x`` and ``y``.

    References
    ----------
    Gretton, Borgwardt, Rasch, Schoelkopf, Smola (2012). A Kernel Two-Sample Test. JMLR.
    Zhao, Song, Ermon (2019). InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders. AAAI.
    """
    k = KERNELS[check_choice("kernel", kernel, KERNELS)]
    _check_samples(x, y)
    c = (
        2.0 * x.shape[-1]
        if bandwidth is None
        else check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
    )
    n, m = x.shape[0], y.shape[0]

    def mean_within(s: torch.Tensor, size: int) -> torch.Tensor:
        kk = k(s, s, c)
        if unbiased and size > 1:
            return (kk.sum() - kk.diagonal().sum()) / (size * (size - 1))
        return kk.mean()

    return mean_within(x, n) + mean_within(y, m) - 2.0 * k(x, y, c).mean()


def importance_log_weights(
    terms: ELBOTerms, *, kl_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-data-point log importance weights of a (vectorised-particle) trace.

    ``log w[k, b] = log p(x_b | z_kb) + kl_weight * (log p(z_kb) - log q(z_kb | x_b))``,
    summed over every sample site of data point b (unscaled, masked), where k indexes
    the vectorised particle plate and b the data plate (the plate at dim -1).

    Returns
    -------
    (log_w, scale) : tuple[torch.Tensor, torch.Tensor]
        ``log_w`` of shape ``(K, B)``; ``scale`` of shape ``(B,)`` or ``()``: the data
        points each column stands for (plate subsampling x ``poutine.scale``).

    Raises
    ------
    ValueError
        For a site outside the data plate (a global latent or observation: the bound
        does not factorise over data points), sites with different scales, or a
        non-reparameterised guide site.
    """
    if not isinstance(terms, ELBOTerms):
        raise TypeError(f"terms must be an ELBOTerms, got {type(terms).__name__}")
    kl_weight = check_float("kl_weight", kl_weight, minimum=0.0)
    model_trace, guide_trace = terms.model_trace, terms.guide_trace
    structure = terms.structure
    if structure is not None and (structure.enumerated or structure.model_enum):
        names = structure.enumerated + structure.model_enum
        raise ValueError(
            f"IWAEELBO: the sites {names} are enumerated; the per-data-point importance "
            "weights p(x, z) / q(z | x) need every latent site drawn, and Pyro's enumeration "
            "sums some out instead. Draw them (infer={'enumerate': None}), or use an "
            "objective that sums enumerated sites exactly (elbo, annealed, beta, freebits)"
        )
    model_trace.compute_log_prob()  # memoised; the lean trace path leaves latent sites out
    guide_trace.compute_log_prob()
    particle_dim: int | None = None
    for tr in (model_trace, guide_trace):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    if f.name == _PARTICLE_PLATE:
                        particle_dim = f.dim
    data_plate: str | None = None
    scale0: Any = None
    log_w: torch.Tensor | None = None

    def sites() -> Iterator[tuple[str, dict[str, Any], float]]:
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample":
                yield name, site, 1.0 if site["is_observed"] else kl_weight
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                if not site["fn"].has_rsample:
                    raise ValueError(
                        f"IWAEELBO needs reparameterised guide sites; {name!r} "
                        f"({type(site['fn']).__name__}) has no rsample"
                    )
                yield name, site, -kl_weight

    for name, site, coef in sites():
        frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLE_PLATE]
        frame = next((f for f in frames if f.dim == -1), None)
        if frame is None or (data_plate is not None and frame.name != data_plate):
            raise ValueError(
                f"IWAEELBO: site {name!r} is not inside the data plate "
                f"{data_plate or '(the plate at dim -1)'}; the per-data-point importance-weighted "
                "bound needs every latent and observed site to belong to one data point. Make "
                "global latents parameters (pyro.param) or use another objective"
            )
        data_plate = frame.name
        scale = site["scale"]
        if scale0 is None:
            scale0 = scale
        elif not _same_scale(scale, scale0):
            raise ValueError(
                f"IWAEELBO: site {name!r} has scale {scale!r}, other sites {scale0!r}; the "
                "importance weights of one data point need one common scale (use plate "
                "subsampling or one poutine.scale around the whole model and guide)"
            )
        lp = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
        lp = _to_particle_data(lp, particle_dim)
        log_w = coef * lp if log_w is None else log_w + coef * lp
    if log_w is None:
        raise ValueError("IWAEELBO: the model has no sample sites")
    scale_t = torch.as_tensor(scale0, dtype=log_w.dtype, device=log_w.device)
    if scale_t.dim() > 0:
        scale_t = _to_particle_data(scale_t, particle_dim)[0]
    return log_w, scale_t


def _same_scale(a: Any, b: Any) -> bool:
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    return ta.shape == tb.shape and bool(torch.equal(ta, tb))


def _to_particle_data(t: torch.Tensor, particle_dim: int | None) -> torch.Tensor:
    """Reduce a batch-shaped tensor to ``(K or 1, B)``: particles first, data plate last,
    summing any plates in between."""
    if particle_dim is None:
        return t.reshape(-1, t.shape[-1]).sum(0).unsqueeze(0) if t.dim() > 1 else t.reshape(1, -1)
    nd = -particle_dim
    t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
    if nd > 2:
        t = t.sum(dim=tuple(range(1, nd - 1)))
    return t
