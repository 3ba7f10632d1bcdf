"""Per-dimension marginals of priors without closed forms (:class:`_PriorMarginals`:
importance sampling with the coordinate's draws held out), built once per site by
:func:`prior_marginals_of`, and the joint KL per point (:func:`_joint_kl`).

Re-exported by :mod:`pyrocollapse.diagnostics.densities`; import the names from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence

from pyrocollapse.diagnostics._constants import _LOG_2PI
from pyrocollapse.diagnostics._marginals import _exact_marginal_log_prob
from pyrocollapse.diagnostics._site_draws import SiteDraw, _varies_over_points


class _PriorMarginals:
    """log p(z_d) of one site's prior, for every chunk of a sweep.

    Exact where it can be:

    - the families of :func:`marginal_log_prob`;
    - a ``TransformedDistribution`` whose transforms all act on each coordinate alone
      (``AffineTransform``, ``ExpTransform``, ``SigmoidTransform``, ``TanhTransform``,
      Pyro's elementwise ``Spline``, ...; also inside ``ComposeTransform`` or
      ``IndependentTransform``, inverted, or reordered by ``Permute``) over a base with
      exact marginals: with x = T^{-1}(z), p(z_d) = p_base(x_j) |dx_j / dz_d|;
    - a one-dimensional prior, whose marginal is its density.

    Otherwise (a flow that mixes coordinates: autoregressive, coupling, Planar, ...),
    provided the prior is the same at every point, two Monte Carlo estimates from the
    joint density p(z) = p(t, u), t = z_d, u = z_{-d}, on a grid of ``_GRID`` values of t
    per dimension over the prior draws' range widened to mean +- 10 sd:

    1. Importance sampling, p(t) = E_{u ~ r(. | t)} [p(t, u) / r(u | t)], unbiased for
       any proposal r. r is a deterministic defensive mixture (Hesterberg 1995; Owen
       2013, ch. 9) of a Gaussian that starts as the conditional of the moment-matched
       Gaussian of the prior draws (mean mu_u + S_ud / S_dd (t - mu_d), covariance
       S_uu - S_ud S_du / S_dd), and a share ``_WIDE_SHARE`` of draws from that
       conditional widened ``_WIDE`` times, which bounds the weights where p(u | t) is
       wider. Two chains per dimension walk out from the centre of the grid, each point's
       Gaussian taking the weighted mean and scale of the previous point's draws (shrunk
       towards the previous proposal by their effective sample size against
       ``_SHRINK * (D - 1)``, the mean moved along the local slope of the conditional
       mean), so that the proposal follows p(u | t) into the tails, where the
       moment-matched conditional misses it. The Gaussian-to-mixture ratio is a control
       variate of known mean (Owen & Zhou 2000), fitted by regression: for a Gaussian
       prior (any affine flow) the estimate is exact up to the draws' moment error.
    2. Lines through prior draws z^(m): p(t) = E_u[p(t | u)] with p(t | u^(m)) = p(t,
       u^(m)) / p(u^(m)), p(u^(m)) by the trapezoidal rule along the grid (a
       Rao-Blackwellised, kernel-free estimate; Gelfand & Smith 1990). Unlike 1 it does
       not feel how rough p is in u (as for a spline flow, whose density wiggles in every
       coordinate), but it needs prior draws near t given u, so it fails in the tails of
       strongly dependent coordinates; it is used for a dimension only where the grid
       resolves every line (quadrature on every other point within 10%, density at the
       grid's ends below e^-12 of the peak).

    At each value of t the two are averaged with weights inverse to their relative
    variances where both have a share ``_MIN_ESS`` of effective draws, else the one with
    the larger share is taken. Where the result's relative standard error exceeds
    ``_TARGET_RSE``, 1 is repeated with fresh draws (up to ``_EXTRA_BLOCKS`` times, within
    another ``_BUDGET`` evaluations). Logs of mean weights are taken with logsumexp
    (biased by about -Var(w) / (2 K E[w]^2)).

    Measured errors: dense linear flows, below 0.001 nats for D = 3 and 0.06 for D = 16
    (0.01 on average) at up to 6 sd; a nonlinear D = 2 flow, 0.02 nats to 6 sd against
    quadrature; a default ``FlowPrior(16)`` (spline coupling, whose log density wiggles
    by about a nat), 0.004 nats on average and 0.08 at worst against 1024 lines.

    Values between grid points: Catmull-Rom cubics; in cells where the table's second
    differences exceed ``_COARSE_GRID`` (sharp features of a spline flow; a support's
    edge), ``_REFINE`` sub-cells estimated on first use and interpolated linearly.
    Beyond the grid the table goes on with estimates at grid points out there (kept for
    later calls); values next to a point of zero density are estimated one by one.

    Cost: about ``_BUDGET`` evaluations of the prior's log density to tabulate
    (``D * _GRID * 2.25 K``, K = 32 to 256 draws and lines per grid point: more than the
    budget from D = 16), up to ``_BUDGET`` more where imprecise,
    ``max(num_draws, 64 D^2)`` prior draws (at most ``_MAX_FIT_DRAWS``), and 2.25 K
    evaluations per estimate at refined or outlying values (each once). For a default
    ``FlowPrior(16)`` (spline coupling, about 28 us per log density on one CPU core)
    tabulating takes about 5 s of CPU time, 147k evaluations.

    Limits: a mode of p(u | t) much narrower than the proposal and away from it (a needle
    of another branch of the flow) can be missed where the lines do not reach it, which
    underestimates p(z_d) there; the estimate is consistent as the draws grow but not
    guaranteed to 0.1 nats for every flow.

    References
    ----------
    Gelfand & Smith (1990). Sampling-based approaches to calculating marginal densities.
    JASA 85(410), 398-409.
    Hesterberg (1995). Weighted average importance sampling and defensive mixture
    distributions. Technometrics 37(2), 185-194.
    Owen & Zhou (2000). Safe and effective importance sampling. JASA 95(449), 135-143.
    Owen (2013). Monte Carlo theory, methods and examples. Ch. 9 (importance sampling:
    defensive mixtures, multiple importance sampling, control variates).
    """

    _GRID = 128  # even: two chains per dimension start at the centre
    _BUDGET = 5 * 2**15  # joint evaluations to tabulate (more for many dimensions)
    _MIN_DRAWS, _MAX_DRAWS = 32, 256  # adapted-component draws (and lines) per grid point
    _LINE_RESOLUTION = 0.7  # grid steps per conditional sd for the lines' quadrature
    _MIN_ESS = 0.25  # share of effective draws for an estimate to enter the combination
    _WIDE_SHARE, _WIDE = 0.2, 2.0  # defensive draws' share and scale
    _SHRINK = 4.0  # effective draws per dimension of u to trust the moments halfway
    _LOCAL_SLOPE = 0.5  # weight of the latest finite difference in the slope's average
    _MAX_FIT_DRAWS = 2**16  # prior draws for the moments (at least 64 D^2, num_draws)
    _TARGET_RSE, _EXTRA_BLOCKS = 0.03, 7  # more importance draws where less precise
    _REFINE = 4  # sub-cells of a cell where the table's cubic is not trusted
    _ROWS = 2**15  # joint evaluations per block

    def __init__(self, draws: Sequence[SiteDraw], site: str, num_draws: int = 4096) -> None:
        first = draws[0]
        self.prior = first.p
        self.mode = "exact"
        try:
            _exact_marginal_log_prob(first.p, first.z[:1])
            return
        except NotImplementedError:
            pass
        dim = first.z.shape[-1]
        if dim == 1:
            self.mode = "joint"  # the marginal is the joint density
            return
        if any(_varies_over_points(d.p, d.z) for d in draws):
            raise NotImplementedError(
                f"site {site!r}: its prior {type(first.p).__name__} has no closed-form "
                "per-dimension marginals and depends on other latents, so p(z_d) cannot be "
                "estimated once for all points"
            )
        self.mode = "estimate"
        with torch.no_grad():
            self._tabulate(first.p, dim, num_draws)

    @property
    def estimated(self) -> bool:
        """Whether the marginals are a Monte Carlo estimate (else exact)."""
        return self.mode == "estimate"

    # ----------------------------------------------------------------------------------
    def _tabulate(self, p: dist.Distribution, dim: int, num_draws: int) -> None:
        """The estimate of log p(z_d) on the grid, ``self.table`` ``(D, _GRID)``."""
        grid = self._fit(p, dim, num_draws)
        g = self._GRID
        # two chains per dimension walk out from the centre, up and down the grid
        chain = torch.arange(dim, device="cpu").repeat(2)  # (C,) the dimension of each chain
        sign = torch.cat([torch.ones(dim, device="cpu"), -torch.ones(dim, device="cpu")]).double()
        start = torch.where(sign > 0, g // 2, g // 2 - 1)
        move = (sign * self.step[chain])[:, None]  # t from one grid point to the next
        mean = self._default_mean(chain, grid[chain, start])
        scale = torch.ones(
            2 * dim, dtype=torch.float64, device="cpu"
        )  # times the Gaussian's factor
        slope = self.beta[chain]  # of the conditional mean in t
        self.means = torch.empty(dim, g, dim - 1, dtype=torch.float64, device="cpu")
        self.scales = torch.empty(dim, g, dtype=torch.float64, device="cpu")
        walk = [torch.empty(dim, g, dtype=torch.float64, device="cpu") for _ in range(3)]
        last = None
        for s in range(g // 2):
            j = start + sign.long() * s
            t = grid[chain, j]
            self.means[chain, j], self.scales[chain, j] = mean, scale
            factor = scale[:, None, None] * self.chol[chain]
            u, log_r, control = self._propose(chain, t, mean, factor, (self.v1[s], self.v2[s]))
            lw = self._log_joint(chain, t, u) - log_r
            stats = _log_mean(lw, control)
            for a, b in zip(walk, stats):
                a[chain, j] = b
            # the next proposal: these draws' weighted mean and scale, trusted as far as
            # their effective sample size allows against the dimension of u (else the
            # previous proposal's), the mean moved along the local slope
            seen = lw.isfinite().any(1)
            wn = torch.softmax(torch.where(seen[:, None], lw, torch.zeros_like(lw)), 1)
            m_hat = (wn[..., None] * u).sum(1)
            white = torch.linalg.solve_triangular(
                self.chol[chain], (u - m_hat[:, None, :]).transpose(1, 2), upper=False
            )  # (C, D-1, K)
            s2_hat = (wn * white.square().sum(1)).sum(1) / (dim - 1)
            ess = 1 / wn.square().sum(1)
            rho = torch.where(seen, ess / (ess + self._SHRINK * (dim - 1)), 0.0)
            mean = mean + rho[:, None] * (m_hat - mean)
            scale = (scale.square() + rho * (s2_hat - scale.square())).clamp(1e-12, 1e12).sqrt()
            if last is not None:
                slope = slope + self._LOCAL_SLOPE * ((mean - last) / move - slope)
            last = mean
            mean = mean + slope * move
        lines = self._line_stats(grid)
        self._boost(grid, walk, lines)
        self.table = self._combine(walk, lines)[0]
        t = self.table
        self.padded = torch.cat([2 * t[:, :1] - t[:, 1:2], t, 2 * t[:, -1:] - t[:, -2:-1]], 1)
        self.extra: list[dict[int, float]] = [{} for _ in range(dim)]  # grid beyond the table
        self.fine: list[dict[int, torch.Tensor]] = [{} for _ in range(dim)]  # refined cells

    def _fit(self, p: dist.Distribution, dim: int, num_draws: int) -> torch.Tensor:
        """Moments of prior draws; the grid ``(D, G)``; the Gaussian's conditionals; the
        standardised draws of every step of the walk."""
        self.batch = p.batch_shape
        per_call = max(1, math.prod(self.batch))
        # the proposal's conditional mean, extrapolated, errs by O(1 / sqrt(M)) per unit
        # of t, which the weights feel in all D - 1 dimensions of u
        num_draws = max(num_draws, min(self._MAX_FIT_DRAWS, 64 * dim * dim))
        samples = p.sample((-(-num_draws // per_call),)).reshape(-1, dim)[:num_draws]
        self.device, self.dtype = samples.device, samples.dtype
        samples = samples.detach().double().cpu()  # the estimate lives on the host
        samples = samples[samples.isfinite().all(1)]
        mu = samples.mean(0)
        cov = torch.cov(samples.T).reshape(dim, dim)
        var = cov.diagonal().clamp_min(1e-24)
        half = torch.maximum(mu - samples.min(0).values, samples.max(0).values - mu)
        half = torch.maximum(half, 10 * var.sqrt()).clamp_min(1e-12)
        g = self._GRID
        self.centre, self.lo, self.step = mu, mu - half, 2 * half / (g - 1)
        # the moment-matched Gaussian's conditional of u = z_{-d} given z_d = t, per d:
        # mean mu_u + beta (t - mu_d), Cholesky factor chol
        others = torch.stack(
            [
                torch.cat([torch.arange(d, device="cpu"), torch.arange(d + 1, dim, device="cpu")])
                for d in range(dim)
            ]
        )  # (D, D-1)
        s_ud = cov[others, torch.arange(dim, device="cpu")[:, None]]  # (D, D-1)
        beta = s_ud / var[:, None]
        cond = cov[others[:, :, None], others[:, None, :]] - s_ud[:, :, None] * beta[:, None, :]
        self.others, self.beta, self.chol = others, beta, _cholesky(cond)
        # per grid point: K1 draws (a power of two: a balanced Sobol block), K2 defensive
        # ones, and K1 lines, within the budget
        share = self._WIDE_SHARE / (1 - self._WIDE_SHARE)
        k = self._BUDGET / (dim * g * (2 + share))
        k1 = 2 ** int(math.log2(min(self._MAX_DRAWS, max(self._MIN_DRAWS, k))))
        k2 = max(1, round(k1 * share))
        # the lines: prior draws, z_d moved along the grid; their conditionals p(t | u)
        # need the grid to resolve the Gaussian's conditional sd of z_d given the rest
        self.lines = samples[:k1]
        cond_sd = torch.linalg.inv(cov).diagonal().clamp_min(1e-300).rsqrt()
        self.use_lines = cond_sd >= self._LINE_RESOLUTION * self.step
        steps = g // 2
        self.v1 = _normal_points(steps * k1, dim - 1, 0).reshape(steps, k1, dim - 1)
        self.v2 = _normal_points(steps * k2, dim - 1, 1).reshape(steps, k2, dim - 1)
        return self.lo[:, None] + self.step[:, None] * torch.arange(
            g, dtype=torch.float64, device="cpu"
        )

    def _boost(
        self, grid: torch.Tensor, walk: list[torch.Tensor], lines: list[torch.Tensor] | None
    ) -> None:
        """More blocks of importance draws (fresh Sobol points, each grid point's own
        proposal) where the estimate's relative standard error exceeds ``_TARGET_RSE``,
        up to ``_EXTRA_BLOCKS`` blocks and ``_BUDGET`` more evaluations in all: the
        walk's statistics ``walk`` are updated in place."""
        dim = grid.shape[0]
        budget, k1, k2 = self._BUDGET, self.v1.shape[1], self.v2.shape[1]
        for r in range(1, self._EXTRA_BLOCKS + 1):
            log_rv = self._combine(walk, lines)[1]
            flag = (log_rv > 2 * math.log(self._TARGET_RSE)).nonzero()  # (n, 2)
            if len(flag) * (k1 + k2) > budget:  # the worst that the budget allows
                worst = log_rv[flag[:, 0], flag[:, 1]].argsort(descending=True)
                flag = flag[worst[: budget // (k1 + k2)]]
            if len(flag) == 0:
                return
            budget -= len(flag) * (k1 + k2)
            v = (
                _normal_points(k1, dim - 1, 2 * r + 2)[None].expand(len(flag), -1, -1),
                _normal_points(k2, dim - 1, 2 * r + 3)[None].expand(len(flag), -1, -1),
            )
            new = [[] for _ in range(3)]
            for part in flag.split(max(1, self._ROWS // (k1 + k2))):
                d, j = part[:, 0], part[:, 1]
                t = grid[d, j]
                factor = self.scales[d, j][:, None, None] * self.chol[d]
                vv = (v[0][: len(part)], v[1][: len(part)])
                u, log_r, control = self._propose(d, t, self.means[d, j], factor, vv)
                for a, b in zip(new, _log_mean(self._log_joint(d, t, u) - log_r, control)):
                    a.append(b)
            e, lv, n = (torch.cat(a) for a in new)
            d, j = flag[:, 0], flag[:, 1]
            # the mean of the blocks so far (each point has had r of them)
            e0, lv0, n0 = walk[0][d, j], walk[1][d, j], walk[2][d, j]
            walk[0][d, j] = torch.logaddexp(e0 + math.log(r), e) - math.log(r + 1)
            walk[1][d, j] = torch.logaddexp(lv0 + 2 * math.log(r), lv) - 2 * math.log(r + 1)
            walk[2][d, j] = (n0 * r + n.nan_to_num(0.0)) / (r + 1)

    def _default_mean(self, dims: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of the moment-matched Gaussian's conditional of z_{-d} at z_d = t."""
        mu = self.centre
        return mu[self.others[dims]] + self.beta[dims] * (t - mu[dims])[:, None]

    def _propose(
        self,
        dims: torch.Tensor,
        t: torch.Tensor,
        mean: torch.Tensor,
        factor: torch.Tensor,
        v: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draws ``u`` ``(C, K, D-1)`` of the proposal of chains of dimensions ``dims`` at
        ``t``, a deterministic mixture of: K1 draws from the adapted Gaussian (``mean``,
        ``factor``) and K2 from the defensive one, the moment-matched Gaussian's conditional
        widened ``_WIDE`` times; with the mixture's log density ``(C, K)`` and the control
        variate g_1 / r - 1, of known mean 0. ``v``: the standardised draws of each
        component, ``(K1, D-1)`` and ``(K2, D-1)``."""
        (v1, v2), k1, k2 = v, v[0].shape[0], v[1].shape[0]
        wide_mean = self._default_mean(dims, t)
        wide_factor = self._WIDE * self.chol[dims]
        u = torch.cat(
            [
                mean[:, None, :] + v1 @ factor.transpose(1, 2),
                wide_mean[:, None, :] + v2 @ wide_factor.transpose(1, 2),
            ],
            1,
        )
        log_g1 = _log_normal(u, mean, factor)
        log_g2 = _log_normal(u, wide_mean, wide_factor)
        share = k2 / (k1 + k2)
        log_r = torch.logaddexp(math.log1p(-share) + log_g1, math.log(share) + log_g2)
        return u, log_r, (log_g1 - log_r).exp() - 1

    def _log_joint(self, dims: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log p(z) at z_d = t, z_{-d} = u, for ``u`` ``(C, K, D-1)`` (float64)."""
        c, k, _ = u.shape
        z = torch.empty(c, k, u.shape[-1] + 1, dtype=torch.float64, device="cpu")
        z.scatter_(2, self.others[dims][:, None, :].expand_as(u), u)
        z[torch.arange(c, device="cpu"), :, dims] = t[:, None]
        return self._joint_log_prob(z.reshape(c * k, -1)).reshape(c, k)

    def _joint_log_prob(self, rows: torch.Tensor) -> torch.Tensor:
        """log p(z) of the prior at rows ``(N, D)`` (float64 on the host); -inf off its
        support. The prior has batch shape ``self.batch`` and is the same at every point,
        so the rows are laid out as ``(-1, *batch, D)``."""
        p, dim = self.prior, rows.shape[1]
        b = max(1, math.prod(self.batch))
        block = max(b, self._ROWS // b * b)
        out = []
        for part in rows.split(block):
            n = part.shape[0]
            if n % b:
                part = torch.cat([part, part[-1:].expand(b - n % b, dim)])
            x = part.to(device=self.device, dtype=self.dtype).reshape(-1, *self.batch, dim)
            try:
                ok = p.support.check(x)
            except NotImplementedError:
                ok = None
            if ok is not None and not bool(ok.all()):
                x = torch.where(ok.unsqueeze(-1), x, self.centre.to(x))
            lp = p.log_prob(x)
            if ok is not None:
                lp = lp.masked_fill(~ok, -math.inf)
            out.append(lp.reshape(-1)[:n].double().cpu())
        return torch.cat(out).nan_to_num(nan=-math.inf, posinf=-math.inf, neginf=-math.inf)

    def _estimate(self, d: int, t: torch.Tensor) -> torch.Tensor:
        """The importance-sampling estimate of log p(z_d = t) at values ``t`` ``(n,)`` off
        the grid: the proposal of the nearest grid point, its mean moved along the
        Gaussian's regression line, with the first step's standardised draws."""
        pos = ((t - self.lo[d]) / self.step[d]).round().clamp(0, self._GRID - 1).long()
        per = max(1, self._ROWS // (self.v1.shape[1] + self.v2.shape[1]))
        out = []
        for idx in torch.arange(len(t), device="cpu").split(per):
            j, ti = pos[idx], t[idx]
            dims = torch.full((len(idx),), d, device="cpu")
            mean = self.means[d, j] + self.beta[d] * (ti - self.lo[d] - j * self.step[d])[:, None]
            factor = self.scales[d, j][:, None, None] * self.chol[d]
            u, log_r, control = self._propose(dims, ti, mean, factor, (self.v1[0], self.v2[0]))
            out.append(_log_mean(self._log_joint(dims, ti, u) - log_r, control))
        if not out:
            return t.new_empty(0)
        walk = [torch.cat(parts)[None] for parts in zip(*out)]
        lines = None
        if bool(self.use_lines[d]):
            m = self.lines.shape[0]
            z = self.lines.expand(len(t), m, -1).clone()
            z[:, :, d] = t[:, None]
            lp = self._joint_log_prob(z.reshape(-1, z.shape[-1])).reshape(len(t), m)
            lines = [x[None] for x in _log_mean(lp - self.log_norm[d])]
        return self._combine(walk, lines, torch.tensor([d], device="cpu"))[0][0]

    def _line_stats(self, grid: torch.Tensor) -> list[torch.Tensor] | None:
        """The lines' estimate of log p(z_d = t) on the grid, with its log variance and
        effective sample size, each ``(D, G)``: for each prior draw z^(m), p(t, z^(m)_{-d})
        on the grid gives p(t | z^(m)_{-d}) = p(t, u) / p(u) with p(u) by the trapezoidal
        rule, and p(t) = E_u[p(t | u)] (a Rao-Blackwellised, kernel-free estimate)."""
        dim, g = grid.shape
        m = self.lines.shape[0]
        self.log_norm = torch.zeros(dim, m, dtype=torch.float64, device="cpu")
        if not bool(self.use_lines.any()):
            return None
        stats = [torch.zeros(dim, g, dtype=torch.float64, device="cpu") for _ in range(3)]
        ends = torch.zeros(g, dtype=torch.float64, device="cpu")
        ends[[0, -1]] = math.log(2)
        for d in self.use_lines.nonzero().flatten().tolist():
            z = self.lines.expand(g, m, dim).clone()
            z[:, :, d] = grid[d][:, None]
            lp = self._joint_log_prob(z.reshape(-1, dim)).reshape(g, m)
            self.log_norm[d] = torch.logsumexp(lp - ends[:, None], 0) + self.step[d].log()
            # p(u) by quadrature must hold on every line: the density at both ends of the
            # grid e^-12 or less of its peak (the mass beyond is negligible), and the
            # trapezoidal rule on every other point within 10% (for a Gaussian its error
            # on the full grid is then below 1e-5)
            coarse = torch.logsumexp(lp[::2] - ends[::2, None], 0) + (2 * self.step[d]).log()
            peak = lp.max(0).values
            held = ((coarse - self.log_norm[d]).abs() <= 0.1) & (lp[[0, -1]] <= peak - 12).all(0)
            if not bool(held.all()):
                self.use_lines[d] = False
                continue
            for a, b in zip(stats, _log_mean(lp - self.log_norm[d])):
                a[d] = b
        return stats

    def _combine(
        self,
        walk: list[torch.Tensor],
        lines: list[torch.Tensor] | None,
        dims: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(z_d) and its log relative variance from the walk's and the lines'
        (estimate, log variance, effective sample size per block of draws), each
        ``(D', n)`` for dimensions ``dims``: weighted by their inverse relative variances
        where both have a share ``_MIN_ESS`` of effective draws, else the one with the
        larger share."""
        if lines is None:
            return walk[0], walk[1] - 2 * walk[0]
        use = self.use_lines if dims is None else self.use_lines[dims]
        (e1, v1, n1), (e2, v2, n2) = walk, lines
        # effective sample sizes as fractions of the draws
        f1 = n1.nan_to_num(0.0) / (self.v1.shape[1] + self.v2.shape[1])
        f2 = torch.where(use[:, None], n2.nan_to_num(0.0), 0.0) / self.lines.shape[0]
        ok1, ok2 = f1 >= self._MIN_ESS, f2 >= self._MIN_ESS
        # weights: inverse relative variances (so that an estimate far too small, with a
        # small variance in absolute terms, cannot take over), floored at 1e-12
        a1 = -torch.maximum(v1 - 2 * e1, torch.tensor(-27.6, device="cpu")).nan_to_num(
            math.inf, math.inf
        )
        a2 = -torch.maximum(v2 - 2 * e2, torch.tensor(-27.6, device="cpu")).nan_to_num(
            math.inf, math.inf
        )
        both = torch.logaddexp(e1 + a1, e2 + a2) - torch.logaddexp(a1, a2)
        first = ok1 | (~ok2 & (f1 >= f2))
        one, one_rv = torch.where(first, e1, e2), -torch.where(first, a1, a2)
        pair = ok1 & ok2
        return torch.where(pair, both, one), torch.where(pair, -torch.logaddexp(a1, a2), one_rv)

    def __call__(self, p: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
        """log p(z_d) for ``z`` of shape ``(..., D)`` (nats): shape of ``z`` for an
        estimate, broadcast with the prior's batch shape where the marginals are exact."""
        if self.mode == "exact":
            return _exact_marginal_log_prob(p, z)
        if self.mode == "joint":
            return p.log_prob(z).unsqueeze(-1)
        with torch.no_grad():
            flat = z.reshape(-1, z.shape[-1]).double().cpu()
            pos = (flat - self.lo) / self.step  # (K, D)
            g = self._GRID
            i0 = pos.floor().clamp(0, g - 2).long()
            at = i0 + torch.arange(flat.shape[1], device="cpu") * (g + 2)  # the padded table's rows
            table = self.padded.reshape(-1)
            out, ok = _catmull_rom(table[at], table[at + 1], table[at + 2], table[at + 3], pos - i0)
            inside = (pos >= 0) & (pos <= g - 1)
            for d in (~inside).any(0).nonzero().flatten().tolist():
                out[~inside[:, d], d], ok[~inside[:, d], d] = self._beyond(d, pos[~inside[:, d], d])
            for d in (~ok & inside).any(0).nonzero().flatten().tolist():
                # where the grid is too coarse for the curvature: a finer grid in the cell
                rows = ~ok[:, d] & inside[:, d]
                out[rows, d], ok[rows, d] = self._refined(d, pos[rows, d])
            for d in (~ok).any(0).nonzero().flatten().tolist():
                # next to a point of zero density
                out[~ok[:, d], d] = self._estimate(d, flat[~ok[:, d], d])
        return out.reshape(z.shape).to(device=z.device, dtype=z.dtype)

    def _refined(self, d: int, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(z_d) at grid positions ``pos`` ``(n,)`` inside the table where its cubic
        is not trusted: each cell they fall in gets ``_REFINE`` sub-cells (estimates at
        their ends, kept for later calls), interpolated linearly; and whether that holds
        (both ends finite)."""
        g, r, fine = self._GRID, self._REFINE, self.fine[d]
        cell = pos.floor().clamp(0, g - 2).long()
        new = [i for i in cell.unique().tolist() if i not in fine]
        if new:
            at = (
                torch.tensor(new, dtype=torch.float64, device="cpu")[:, None]
                + torch.arange(1, r, device="cpu") / r
            )
            inner = self._estimate(d, (self.lo[d] + at * self.step[d]).reshape(-1))
            for i, row in zip(new, inner.reshape(len(new), r - 1)):
                fine[i] = torch.cat([self.table[d, i : i + 1], row, self.table[d, i + 1 : i + 2]])
        values = torch.stack([fine[i] for i in cell.tolist()])  # (n, r + 1)
        sub = ((pos - cell) * r).clamp(0, r)
        j = sub.floor().clamp(max=r - 1).long()
        left, right = values.gather(1, j[:, None])[:, 0], values.gather(1, j[:, None] + 1)[:, 0]
        return torch.lerp(left, right, sub - j), left.isfinite() & right.isfinite()

    def _beyond(self, d: int, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(z_d) at grid positions ``pos`` ``(n,)`` beyond the table, and where that
        interpolation holds (as :func:`_catmull_rom`): the table goes on with estimates at
        grid points out there, kept for later calls; far-apart values are estimated one
        by one."""
        i0 = pos.floor().long()
        need = torch.cat([i0 - 1, i0, i0 + 1, i0 + 2]).unique().tolist()
        g, extra = self._GRID, self.extra[d]
        new = [i for i in need if (i < 0 or i >= g) and i not in extra]
        if len(new) > 2 * len(pos) + 8:
            direct = self._estimate(d, self.lo[d] + pos * self.step[d])
            return direct, torch.ones_like(pos, dtype=torch.bool)
        if new:
            at = torch.tensor(new, dtype=torch.float64, device="cpu")
            extra.update(zip(new, self._estimate(d, self.lo[d] + at * self.step[d]).tolist()))
        row = self.table[d].tolist()

        def value(idx: torch.Tensor) -> torch.Tensor:
            return torch.tensor(
                [row[i] if 0 <= i < g else extra[i] for i in idx.tolist()],
                dtype=torch.float64,
                device="cpu",
            )

        return _catmull_rom(value(i0 - 1), value(i0), value(i0 + 1), value(i0 + 2), pos - i0)


def _catmull_rom(
    p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Catmull-Rom cubic through equally spaced values p0..p3, at ``w`` in [0, 1]
    between p1 and p2 (third-order accurate; linear data stays linear); and whether it
    holds: all four values finite, and their second differences at most
    ``_COARSE_GRID`` nats (else the grid is too coarse for the curvature there)."""
    out = p1 + 0.5 * w * (
        p2 - p0 + w * (2 * p0 - 5 * p1 + 4 * p2 - p3 + w * (3 * (p1 - p2) + p3 - p0))
    )
    curve = torch.maximum((p0 - 2 * p1 + p2).abs(), (p1 - 2 * p2 + p3).abs())
    return out, curve <= _COARSE_GRID  # False where any value is not finite


#: Largest second difference (nats) of the tabulated log density that its cubic
#: interpolation is trusted with (a Gaussian's is 0.025 on a grid of 128 over +- 10 sd).
_COARSE_GRID = 0.25


def _log_normal(u: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """log N(u; mean, factor factor^T) for ``u`` ``(C, K, n)``, ``mean`` ``(C, n)`` and
    lower-triangular ``factor`` ``(C, n, n)``: shape ``(C, K)``."""
    v = torch.linalg.solve_triangular(factor, (u - mean[:, None, :]).transpose(1, 2), upper=False)
    log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * v.square().sum(1) - log_det[:, None] - 0.5 * u.shape[-1] * _LOG_2PI


def _log_mean(
    lw: torch.Tensor, control: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log of the mean weight, the log variance of that mean and the weights'
    effective sample size, each ``(C,)``, from log weights ``(C, K)``. With a control
    variate ``(C, K)`` of known mean 0 (the proposal's Gaussian component over the
    mixture, minus 1), fitted by regression (Owen & Zhou 2000): exact where p(u | t) is
    that Gaussian; the plain mean where the fit would fall below half of it."""
    k = lw.shape[1]
    top = lw.max(1, keepdim=True).values
    top = torch.where(top.isfinite(), top, torch.zeros_like(top))
    w = (lw - top).exp()  # (C, K), largest 1
    mean = w.mean(1)
    resid = w - mean[:, None]
    fit = mean
    if control is not None:
        hc = control - control.mean(1, keepdim=True)
        slope = (resid * hc).sum(1) / hc.square().sum(1).clamp_min(1e-300)
        fit = mean - slope * control.mean(1)
        good = fit > 0.5 * mean
        fit = torch.where(good, fit, mean)
        resid = torch.where(good[:, None], resid - slope[:, None] * hc, resid)
    top = top.squeeze(1)
    var = resid.square().sum(1) / (k * max(1, k - 1))
    ess = w.sum(1).square() / w.square().sum(1)
    return fit.log() + top, var.log() + 2 * top, ess


def _normal_points(n: int, dim: int, seed: int) -> torch.Tensor:
    """``n`` fixed standard-normal points in ``dim`` dimensions (float64): a scrambled
    Sobol sequence pushed through the normal quantile function (randomised quasi-Monte
    Carlo: each point is N(0, I), and every block of 2^m consecutive points covers the
    space more evenly than independent draws)."""
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    u = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return math.sqrt(2) * torch.erfinv(2 * u - 1)


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of a batch of covariances ``(..., n, n)``, with jitter relative
    to their mean variance where needed."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device="cpu")
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-24)[..., None, None]
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if not bool(info.any()):
            return chol
    return torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1).clamp_min(1e-24).sqrt())


def prior_marginals_of(draws: Sequence[SiteDraw], site: str) -> _PriorMarginals:
    """:class:`_PriorMarginals` of one site's draws, built once per sweep: the KL, the
    mutual information and the density overlay of :func:`pyrocollapse.diagnose` share
    it (an estimated flow marginal costs seconds). Raises as the class does."""
    first = draws[0]
    cached = first.__dict__.get("_prior_marginals")
    if cached is not None and cached[0] == len(draws):
        return cached[1]
    pm = _PriorMarginals(draws, site)
    first.__dict__["_prior_marginals"] = (len(draws), pm)
    return pm


def _joint_kl(
    q: dist.Distribution, p: dist.Distribution, z: torch.Tensor, num_samples: int
) -> torch.Tensor:
    """KL(q || p) per point, shape ``(B,)``: closed form where available, else the Monte
    Carlo mean of log q - log p over the draw ``z`` (``num_samples == 1``) or fresh draws."""
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        zs = z.unsqueeze(0) if num_samples == 1 else q.sample((num_samples,))
        kl = (q.log_prob(zs) - p.log_prob(zs)).mean(0)
    return kl.expand(q.batch_shape)
