"""Reusable contract checks for extension points (priors), like Pyro's distribution fixtures.

:func:`check_prior` runs the :class:`~pyrocollapse.priors.Prior` contract on any prior,
ours or yours, and raises ``AssertionError`` with an explanation on the first violation::

    from pyrocollapse.testing import check_prior

    def test_my_prior():
        check_prior(MyPrior(latent_dim=3))

The checks
----------
1. ``latent_dim`` is an int >= 1.
2. Called inside nested plates as ``prior("z")``, the prior samples a site ``"z"`` with
   batch shape = the plate shape and event shape ``(latent_dim,)``, returns its value,
   and every other sample site it adds (extra latent levels) carries the plates too.
   The site name is the one passed in.
3. Plate subsampling and ``poutine.scale`` reach every site it samples.
4. ``log_prob(z)`` returns shape ``batch_shape`` for several batch shapes, finite values,
   and rejects a wrong trailing dimension with ``ValueError``. For single-site priors it
   equals the log-density of the Pyro site (the program and ``log_prob`` agree).
5. Gradients of ``log_prob`` (plus, for priors with a guide piece, the log-density ratio
   of the extra sites) reach every trainable parameter, and each parameter shows up as a
   ``pyro.param`` site when the prior runs, so SVI trains it (and under its own name:
   not shadowed by another tensor in Pyro's global parameter store).
6. ``sample(n)`` works outside a Pyro context: shape ``(n, latent_dim)``, finite, no
   gradient, no sample sites recorded.
7. Statistics (seeded): ``log_prob`` is a normalised density consistent with ``sample``:
   with a Gaussian proposal r fitted to ``n`` prior samples and widened 1.5x, the
   importance estimate of ``int p(z) dz = E_r[p/r]`` is within ``atol`` of 1, and the
   self-normalised estimate of E_p[z] matches the sample mean within ``atol`` standard
   deviations.

The checks run the prior's program, so its parameters get entries in Pyro's global
parameter store under the prior's name (harmless: each prior has its own name). The
global RNG state is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrocollapse._validation import check_float, check_int
from pyrocollapse.priors import Prior

__all__ = ["check_prior", "tiny_config"]


def _fail(prior: Prior, check: str, message: str) -> None:
    raise AssertionError(f"{type(prior).__name__} violates the prior contract ({check}): {message}")


def _sample_sites(trace: Any) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def _check_plates(prior: Prior, name: str) -> None:
    d = prior.latent_dim

    def model() -> torch.Tensor:
        with pyro.plate("outer", 3, dim=-2), pyro.plate("inner", 5, dim=-1):
            return prior(name)

    try:
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(model).get_trace()
    except (ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0]
        _fail(
            prior,
            "plates",
            f"prior({name!r}) failed inside plates of shape (3, 5): {type(e).__name__}: "
            f"{first}. The site's distribution must have batch_shape () and event_shape "
            f"({d},), so that the caller's plates broadcast it.",
        )
    out = trace.nodes["_RETURN"]["value"]
    sites = _sample_sites(trace)
    if name not in sites:
        _fail(
            prior,
            "site name",
            f"prior({name!r}) recorded sample sites {sorted(sites)} but none named {name!r}; "
            "forward(name) must sample pyro.sample(name, ...)",
        )
    site = sites[name]
    fn = site["fn"]
    if tuple(fn.event_shape) != (d,):
        _fail(
            prior,
            "event shape",
            f"site {name!r} has event shape {tuple(fn.event_shape)}, expected ({d},) = "
            "(latent_dim,). Try .to_event(1) on the site's distribution.",
        )
    if tuple(site["value"].shape) != (3, 5, d) or tuple(fn.batch_shape) != (3, 5):
        _fail(
            prior,
            "plates",
            f"inside plates of shape (3, 5) site {name!r} has batch shape "
            f"{tuple(fn.batch_shape)} and value shape {tuple(site['value'].shape)}; expected "
            f"(3, 5) and (3, 5, {d}). The distribution must have batch_shape () so that the "
            "caller's plates broadcast it.",
        )
    if not isinstance(out, torch.Tensor) or out.shape != site["value"].shape:
        _fail(
            prior,
            "return value",
            f"prior({name!r}) must return the sampled z of shape (3, 5, {d}), got "
            f"{getattr(out, 'shape', type(out).__name__)}",
        )
    for other, s in sites.items():
        if tuple(s["fn"].batch_shape) != (3, 5):
            _fail(
                prior,
                "plates",
                f"extra site {other!r} has batch shape {tuple(s['fn'].batch_shape)} inside plates "
                "of shape (3, 5); every site must sit in the caller's plates",
            )


def _check_scaling(prior: Prior, name: str) -> None:
    def model() -> None:
        with poutine.scale(scale=0.5), pyro.plate("data", 100, subsample_size=10):
            prior(name)

    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace()
    for site_name, site in _sample_sites(trace).items():
        scale = float(torch.as_tensor(site["scale"]).mean())
        if not math.isclose(scale, 5.0, rel_tol=1e-6):
            _fail(
                prior,
                "subsampling and poutine.scale",
                f"site {site_name!r} has scale {scale:g} under poutine.scale(0.5) and a plate "
                "subsampling 10 of 100 (expected 0.5 * 100 / 10 = 5); sample inside the "
                "caller's context with pyro.sample",
            )
        if site["value"].shape[0] != 10:
            _fail(
                prior,
                "subsampling",
                f"site {site_name!r} has value shape {tuple(site['value'].shape)} in a plate "
                "subsampling 10 of 100; expected leading size 10",
            )


def _check_log_prob(prior: Prior, batch_shapes: Sequence[tuple[int, ...]]) -> None:
    d = prior.latent_dim
    for shape in batch_shapes:
        n = math.prod(shape)
        z = prior.sample(max(n, 1))[:n].reshape(*shape, d)
        with torch.no_grad():
            lp = prior.log_prob(z)
        if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != tuple(shape):
            _fail(
                prior,
                "log_prob shape",
                f"log_prob(z) for z of shape {(*shape, d)} returned shape "
                f"{tuple(getattr(lp, 'shape', ()))}, expected {tuple(shape)} (summed over the "
                "event dimension)",
            )
        if not bool(torch.isfinite(lp).all()):
            _fail(prior, "log_prob", f"log_prob of prior samples is not finite: {lp}")
    try:
        prior.log_prob(torch.zeros(2, d + 1))
    except ValueError:
        pass
    except Exception as e:
        _fail(
            prior,
            "validation",
            f"log_prob of z with shape (2, {d + 1}) for latent_dim={d} raised "
            f"{type(e).__name__} ({e}); it must raise ValueError naming the expected shape "
            "(Prior._check_z does this)",
        )
    else:
        _fail(
            prior,
            "validation",
            f"log_prob accepted z of shape (2, {d + 1}) for latent_dim={d}; it must raise "
            "ValueError (Prior._check_z does this)",
        )


def _program_log_density(prior: Prior, z: torch.Tensor) -> tuple[torch.Tensor, Any, Any, int]:
    """log p(z, extra) - log q(extra | z) of the prior's program at ``z`` (one draw).

    Returns the summed value, the model and guide traces, and the number of latent sites
    the model samples besides ``"z"``.
    """

    def model() -> None:
        with pyro.plate("check", z.shape[0]):
            prior("z")

    def guide() -> None:
        with pyro.plate("check", z.shape[0]):
            prior.guide("z", z)

    with poutine.block():
        guide_tr = poutine.trace(guide).get_trace()
        model_tr = poutine.trace(
            poutine.replay(poutine.condition(model, data={"z": z}), trace=guide_tr)
        ).get_trace()
    extra = [n for n in _sample_sites(model_tr) if n != "z"]
    missing = [n for n in extra if n not in guide_tr.nodes]
    if missing:
        _fail(
            prior,
            "guide piece",
            f"the prior samples extra latent sites {missing} but prior.guide('z', z) does not "
            "sample them; a model/guide pair using this prior could not be trained by SVI",
        )
    value = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    return value, model_tr, guide_tr, len(extra)


def _check_program_and_gradients(prior: Prior, n: int) -> None:
    z = prior.sample(n)
    value, model_tr, guide_tr, n_extra = _program_log_density(prior, z)
    lp = prior.log_prob(z)
    if n_extra == 0:
        expected = lp.sum()
        if not torch.allclose(value.detach(), expected.detach(), rtol=1e-4, atol=1e-3):
            _fail(
                prior,
                "log_prob vs program",
                f"sum of log_prob(z) = {float(expected):.6g} but the Pyro site 'z' scores "
                f"{float(value):.6g} on the same z; forward and log_prob must use the same "
                "density",
            )
    params = [(k, p) for k, p in prior.named_parameters() if p.requires_grad]
    if not params:
        return
    objective = lp.sum() + value
    grads: Sequence[torch.Tensor | None] = (
        torch.autograd.grad(objective, [p for _, p in params], allow_unused=True)
        if objective.requires_grad
        else [None] * len(params)
    )
    for (k, _), g in zip(params, grads, strict=True):
        if g is None or not bool(torch.isfinite(g).all()) or not bool((g != 0).any()):
            _fail(
                prior,
                "gradients",
                f"parameter {k!r} gets {'no' if g is None else 'a zero or non-finite'} gradient "
                "from log_prob and the prior's program; every learnable parameter must shape "
                "the density (remove unused parameters or register them as buffers)",
            )
    seen: dict[int, str] = {}
    names: dict[str, Any] = {}
    for trace in (guide_tr, model_tr):
        for site_name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            v = site["value"]
            u = v.unconstrained() if hasattr(v, "unconstrained") else v
            seen[id(u)] = site_name
            names[site_name] = u
    for k, p in params:
        if id(p) in seen:
            continue
        leaf = k.rsplit(".", 1)[-1]
        clash = [s for s in names if s.rsplit(".", 1)[-1] == leaf]
        hint = (
            f" Pyro's parameter store returned a different tensor for {clash[0]!r}: another "
            "module used the same name; give the prior a unique name."
            if clash
            else " Make the prior a PyroModule whose parameters are attributes used inside "
            "forward()/guide() (decorate extra Pyro methods with pyro.nn.pyro_method), or "
            "register them with pyro.param / pyro.module."
        )
        _fail(
            prior,
            "parameter registration",
            f"parameter {k!r} does not appear as a pyro.param site when the prior runs, so "
            f"SVI would not train it.{hint}",
        )


def _check_sample(prior: Prior, n: int) -> torch.Tensor:
    with poutine.trace() as tracer:
        z = prior.sample(n)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (n, prior.latent_dim):
        _fail(
            prior,
            "sample",
            f"sample({n}) must return shape ({n}, {prior.latent_dim}), got "
            f"{tuple(getattr(z, 'shape', ())) or type(z).__name__}",
        )
    if z.requires_grad:
        _fail(prior, "sample", "sample(n) must return draws without gradient (use torch.no_grad)")
    if not bool(torch.isfinite(z).all()):
        _fail(prior, "sample", "sample(n) returned non-finite values")
    if _sample_sites(tracer.trace):
        _fail(
            prior,
            "sample",
            f"sample(n) recorded Pyro sample sites {sorted(_sample_sites(tracer.trace))}; it must "
            "draw outside any Pyro context (use distribution.sample, not pyro.sample)",
        )
    return z


def _check_statistics(prior: Prior, n: int, atol: float) -> None:
    draws = _check_sample(prior, n)
    z = draws.double()
    d = prior.latent_dim
    mean = z.mean(0)
    cov = torch.cov(z.T).reshape(d, d) + 1e-6 * torch.eye(d, dtype=z.dtype)
    proposal = dist.MultivariateNormal(mean, covariance_matrix=2.25 * cov)
    y = proposal.sample((n,))
    with torch.no_grad():
        log_w = prior.log_prob(y.to(draws.dtype)).double()
    log_w = log_w - proposal.log_prob(y)
    if not bool(torch.isfinite(log_w).all()):
        _fail(prior, "log_prob", "log_prob is not finite on points near the prior's samples")
    log_z = torch.logsumexp(log_w, 0) - math.log(n)
    total = float(log_z.exp())
    if abs(total - 1.0) > atol:
        _fail(
            prior,
            "normalisation",
            f"importance estimate of int exp(log_prob(z)) dz is {total:.4f}, not 1 +- {atol} "
            f"(proposal fitted to {n} prior samples); log_prob is unnormalised or does not "
            "describe the distribution that sample() draws from",
        )
    w = torch.softmax(log_w, 0)
    mean_is = (w.unsqueeze(-1) * y).sum(0)
    err = ((mean_is - mean).abs() / cov.diagonal().sqrt()).max()
    if float(err) > atol:
        _fail(
            prior,
            "log_prob vs sample",
            f"E_p[z] from log_prob (self-normalised importance sampling) is "
            f"{mean_is.tolist()} but the mean of sample({n}) is {mean.tolist()} (off by "
            f"{float(err):.3f} standard deviations, tolerance {atol})",
        )


def check_prior(
    prior: Prior,
    *,
    n: int = 4000,
    atol: float = 0.15,
    seed: int = 0,
    batch_shapes: Sequence[tuple[int, ...]] = ((), (4,), (2, 3)),
    statistics: bool = True,
) -> None:
    """Check that ``prior`` honours the :class:`~pyrocollapse.priors.Prior` contract.

    See the module docstring for the list of checks.

    Parameters
    ----------
    prior : Prior
        The prior to check (any subclass of :class:`~pyrocollapse.priors.Prior`).
    n : int
        Draws for the gradient check and the statistical checks (>= 100).
    atol : float
        Tolerance of the statistical checks: on the normalisation estimate (absolute) and
        on the mean, in prior standard deviations (> 0). The Monte Carlo error of both
        shrinks like 1 / sqrt(n).
    seed : int
        Seed of the checks' random draws; the global RNG state is restored afterwards.
    batch_shapes : sequence of tuple[int, ...]
        Batch shapes for which ``log_prob`` is checked.
    statistics : bool
        Run the statistical checks (7.); they cost ``2 n`` ``log_prob`` evaluations.

    Raises
    ------
    AssertionError
        On the first violated check, naming the check, what was expected and what arrived.
    TypeError, ValueError
        For bad arguments to ``check_prior`` itself.

    Examples
    --------
    >>> from pyrocollapse.priors import MixturePrior
    >>> check_prior(MixturePrior(2, n_components=3), n=1000, atol=0.2)
    """
    if not isinstance(prior, Prior):
        raise TypeError(
            "prior must be a pyrocollapse.priors.Prior (subclass Prior and implement "
            f"distribution()), got {type(prior).__name__}"
        )
    n = check_int("n", n, minimum=100)
    atol = check_float("atol", atol, minimum=0.0, strict_minimum=True)
    seed = check_int("seed", seed, minimum=0)
    if isinstance(batch_shapes, (str, bytes)) or not all(
        isinstance(s, tuple) and all(isinstance(i, int) and i >= 0 for i in s) for s in batch_shapes
    ):
        raise TypeError(
            "batch_shapes must be a sequence of tuples of ints, e.g. ((), (4,)), "
            f"got {batch_shapes!r}"
        )
    if not isinstance(statistics, bool):
        raise TypeError(f"statistics must be a bool, got {statistics!r}")
    latent_dim = getattr(prior, "latent_dim", None)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        _fail(prior, "latent_dim", f"latent_dim must be an int >= 1, got {latent_dim!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _check_sample(prior, 7)
        _check_plates(prior, "z")
        _check_plates(prior, "w")
        _check_scaling(prior, "z")
        _check_log_prob(prior, batch_shapes)
        _check_program_and_gradients(prior, min(n, 256))
        if statistics:
            _check_statistics(prior, n, atol)


def tiny_config(**changes: Any) -> Any:
    """A :class:`~pyrocollapse.experiment.RunConfig` that trains and diagnoses in seconds
    (one epoch, a 2-d latent, a 16-unit network, the cheap estimators, small samples), for
    tests of code built on ``run``/``compare``; ``changes`` replace any of its fields.

    Raises ``ValueError``/``TypeError`` as :meth:`RunConfig.validate` does.
    """
    from pyrocollapse.experiment import RunConfig

    fields: dict[str, Any] = {
        "epochs": 1,
        "latent_dim": 2,
        "batch_size": 256,
        "model_options": {"hidden": (16,)},
        "bootstrap": 0,
        "importance_samples": 50,
        "posterior_samples": 5,
        "posterior_points": 20,
        "estimators": ("kl", "au", "mi"),
    }
    fields.update(changes)
    return RunConfig(**fields).validate()
