"""Decoder probes: :func:`decoder_sensitivity`, :func:`latent_traversal` and
:func:`reconstruction_means`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyrocollapse._validation import (
    check_choice,
    check_data,
    check_float,
    check_int,
    program_dtype,
)
from pyrocollapse.diagnostics._programs import (
    _as_args,
    _check_inputs,
    _chunks,
    _Layout,
    _layout,
    _numpy,
    _observed_names,
    _probe,
    _run,
    _sample_sites,
    _setup_device,
    _vectorised,
    eval_mode,
)
from pyrocollapse.diagnostics._site_draws import _per_point, _site_log_prob
from pyrocollapse.diagnostics.activity import _posterior_mean
from pyrocollapse.diagnostics.importance import _importance_setup
from pyrocollapse.program_data import ProgramArgs, ProgramData, as_program_data


# --------------------------------------------------------------------------------------
# Decoder probes: sensitivity, traversals, reconstructions
# --------------------------------------------------------------------------------------
@dataclass
class DecoderSensitivity:
    """How much the model's conditionals change when z moves along each dimension.

    Attributes
    ----------
    per_dim : numpy.ndarray
        Shape ``(D,)``: E_x E_{q(z|x)}[F_dd(z)], the diagonal of the Fisher information
        about z of the model's other sites (nats per squared unit of z). Exactly 0 for a
        dimension the model ignores.
    per_site : dict[str, numpy.ndarray]
        Each measured site's contribution, shape ``(D,)`` (they sum to ``per_dim``).
    method : str
        ``"score"`` or ``"finite_difference"``.
    step : float or None
        The finite-difference step in units of z.
    num_samples : int
        Draws of z (and of the sites' values, for ``"score"``) per point.
    """

    per_dim: np.ndarray
    per_site: dict[str, np.ndarray]
    method: str
    step: float | None
    num_samples: int


def _target_sites(model_tr: Any, site: str, targets: Sequence[str] | None) -> list[str]:
    names = [n for n, _ in _sample_sites(model_tr) if n != site]
    if targets is None:
        return names
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(
            f"targets {missing} are not sample sites of the model other than {site!r}; "
            f"available: {', '.join(map(repr, names)) or 'none'}"
        )
    return list(targets)


def _sensitivity_score(
    model: Callable,
    guide: Callable,
    xb: ProgramArgs,
    site: str,
    layout: _Layout,
    num_samples: int,
    targets: Sequence[str] | None,
) -> dict[str, torch.Tensor]:
    with torch.no_grad(), poutine.block(), eval_mode(model, guide):
        guide_tr = poutine.trace(_vectorised(guide, num_samples, layout.nesting)).get_trace(
            *xb.args, **xb.kwargs
        )
    if site not in guide_tr.nodes:
        raise ValueError(f"latent site {site!r} is not a sample site of the guide")
    z = guide_tr.nodes[site]["value"].detach().clone().requires_grad_(True)
    out = {}
    with torch.enable_grad():
        model_tr, _ = _run(
            model,
            guide,
            xb,
            particles=num_samples,
            nesting=layout.nesting,
            guide_trace=guide_tr,
            values={site: z},
        )
        names = _target_sites(model_tr, site, targets)
        for i, name in enumerate(names):
            s = model_tr.nodes[name]
            with torch.no_grad():
                value = s["fn"].sample()
            lp = _site_log_prob(s, value=value)
            if not lp.requires_grad:
                out[name] = torch.zeros(z.shape[1:], dtype=torch.float64, device=z.device)
                continue
            (g,) = torch.autograd.grad(
                lp.sum(), z, retain_graph=i < len(names) - 1, allow_unused=True
            )
            out[name] = (
                torch.zeros(z.shape[1:], dtype=torch.float64, device=z.device)
                if g is None
                else g.double().pow(2).mean(0)
            )
    return out


def _sensitivity_fd(
    model: Callable,
    guide: Callable,
    xb: ProgramArgs,
    site: str,
    layout: _Layout,
    num_samples: int,
    step: float,
    targets: Sequence[str] | None,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for _ in range(num_samples):
        with torch.no_grad(), poutine.block(), eval_mode(model, guide):
            guide_tr = poutine.trace(guide).get_trace(*xb.args, **xb.kwargs)
            z = guide_tr.nodes[site]["value"]
            shift = 0.5 * step * torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)[:, None, :]
            traces = [
                _run(
                    model,
                    guide,
                    xb,
                    particles=z.shape[-1],
                    nesting=layout.nesting,
                    guide_trace=guide_tr,
                    values={site: z + sign * shift},
                )[0]
                for sign in (1.0, -1.0)
            ]
            for name in _target_sites(traces[0], site, targets):
                plus, minus = traces[0].nodes[name], traces[1].nodes[name]
                try:
                    skl = kl_divergence(plus["fn"], minus["fn"]) + kl_divergence(
                        minus["fn"], plus["fn"]
                    )
                except NotImplementedError:
                    if torch.equal(_site_log_prob(plus), _site_log_prob(minus)):
                        continue  # the site does not depend on z
                    raise NotImplementedError(
                        f"site {name!r} ({type(plus['fn']).__name__}) has no closed-form KL for "
                        "method='finite_difference'; use method='score'"
                    ) from None
                if plus["mask"] is not None:
                    skl = scale_and_mask(skl, mask=plus["mask"])
                f = _per_point(skl, plus, layout, particles=True).T.double() / step**2  # (B, D)
                out[name] = out.get(name, 0.0) + f / num_samples  # type: ignore[operator]
    return out


def decoder_sensitivity(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    site: str = "z",
    method: str = "score",
    num_samples: int = 1,
    step: float = 0.1,
    targets: Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> DecoderSensitivity:
    """Per latent dimension, how much the decoder's output distribution moves with z_d.

    Defined as the diagonal of the Fisher information that the model's other sites
    carry about z, averaged over the data and the guide::

        S_d = E_x E_{z ~ q(z|x)} sum_s E_{v ~ p_s(. | z)} [ (d/dz_d log p_s(v | z))^2 ]

    where s runs over ``targets`` (default: every model sample site except ``site``,
    i.e. the observed sites and, in a hierarchy, the latent children of ``site``), each
    evaluated with the other latent sites held at the guide's draws. Units: nats per
    squared unit of z. A decoder that ignores z_d gives exactly 0, whatever q does; a
    collapsed posterior with a large S_d signals a lagging inference network rather than
    an unused latent.

    ``method="score"`` (default) samples v ~ p_s(. | z) and differentiates log p_s(v | z)
    with respect to z only: one forward and one backward pass per point and draw,
    unbiased; needs a model differentiable in z. ``method="finite_difference"`` uses
    ``[KL(p(.|z+) || p(.|z-)) + KL(p(.|z-) || p(.|z+))] / step^2`` with z+- = z +- step/2
    e_d, which equals F_dd up to O(step^2) (exactly, for a Gaussian mean that is linear in
    z): deterministic given z, needs closed-form KLs of the measured sites and 2 D model
    passes per point and draw.

    Parameters
    ----------
    model, guide, data, site, batch_size, device :
        As for :func:`kl_per_dimension`. Keep modules in eval mode (batch-norm in training
        mode couples points).
    method : {"score", "finite_difference"}
    num_samples : int
        Draws of z per point.
    step : float
        Finite-difference step in units of z.
    targets : sequence of str or None
        Model sites whose sensitivity is measured.

    Returns
    -------
    DecoderSensitivity

    References
    ----------
    Kullback (1959). Information Theory and Statistics. Wiley (KL between neighbouring
    members of a family is 0.5 step^2 times the Fisher information).
    Lucas, Tucker, Grosse, Norouzi (2019). Don't Blame the ELBO! A Linear VAE Perspective
    on Posterior Collapse. NeurIPS.
    He, Spokoyny, Neubig, Berg-Kirkpatrick (2019). Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders. ICLR.
    """
    method = check_choice("method", method, ("score", "finite_difference"))
    num_samples = check_int("num_samples", num_samples, minimum=1)
    step = check_float("step", step, minimum=0.0, strict_minimum=True)
    if targets is not None and (
        isinstance(targets, str) or not all(isinstance(t, str) for t in targets)
    ):
        raise TypeError(f"targets must be None or a sequence of site names, got {targets!r}")
    x, batch_size, device, layout = _importance_setup(model, guide, data, batch_size, device)
    return _sensitivity(
        model, guide, x, site, layout, method, num_samples, step, targets, batch_size, device
    )


def _sensitivity(
    model: Callable,
    guide: Callable,
    x: ProgramData,
    site: str,
    layout: _Layout,
    method: str,
    num_samples: int,
    step: float,
    targets: Sequence[str] | None,
    batch_size: int,
    device: torch.device | None,
) -> DecoderSensitivity:
    sums: dict[str, torch.Tensor] = {}
    for xb in _chunks(x, batch_size, device):
        if method == "score":
            parts = _sensitivity_score(model, guide, xb, site, layout, num_samples, targets)
        else:
            parts = _sensitivity_fd(model, guide, xb, site, layout, num_samples, step, targets)
        for name, f in parts.items():
            sums[name] = sums.get(name, 0.0) + f.sum(0)  # type: ignore[operator]
    n = x.n
    per_site = {k: _numpy(v / n) for k, v in sums.items()}
    per_dim = sum(per_site.values()) if per_site else np.zeros(0)
    return DecoderSensitivity(
        np.asarray(per_dim, dtype=float),
        per_site,
        method,
        step if method == "finite_difference" else None,
        num_samples,
    )


def _observed_mean(model_tr: Any, observed: str | None) -> tuple[str, torch.Tensor]:
    names = _observed_names(model_tr)
    if observed is None:
        if not names:
            raise ValueError("the model has no observed site")
        observed = names[0]
    elif observed not in names:
        raise ValueError(
            f"observed must name an observed site of the model {names}; got {observed!r}"
        )
    fn = model_tr.nodes[observed]["fn"]
    try:
        return observed, fn.mean
    except NotImplementedError:
        raise NotImplementedError(
            f"observed site {observed!r} ({type(fn).__name__}) has no mean"
        ) from None


def _guide_at_means(
    guide: Callable, xb: ProgramArgs | torch.Tensor
) -> tuple[Any, dict[str, torch.Tensor]]:
    xa = _as_args(xb)
    with poutine.block(), eval_mode(guide):
        guide_tr = prune_subsample_sites(poutine.trace(guide).get_trace(*xa.args, **xa.kwargs))
    values = {
        name: _posterior_mean(site["fn"], 64)[0].expand_as(site["value"])
        for name, site in _sample_sites(guide_tr)
        if not site["is_observed"]
    }
    return guide_tr, values


@dataclass
class LatentTraversal:
    """Decoder means along latent traversals of one observation.

    Attributes
    ----------
    site : str
        The traversed latent site.
    dims : numpy.ndarray
        Shape ``(K,)``: the traversed dimensions.
    values : numpy.ndarray
        Shape ``(T,)``: the values z_d takes (units of z).
    means : numpy.ndarray
        Shape ``(K, T, *event_shape)``: E[x | z] with z = E_q[z | x] except z_d = value.
    """

    site: str
    dims: np.ndarray
    values: np.ndarray
    means: np.ndarray


def latent_traversal(
    model: Callable,
    guide: Callable,
    x: Any,
    *,
    site: str = "z",
    dims: Sequence[int] | None = None,
    values: Sequence[float] | torch.Tensor | None = None,
    observed: str | None = None,
    device: str | torch.device | None = None,
) -> LatentTraversal:
    """Decode latent traversals: z = E_q[z | x] with one dimension swept over ``values``.

    Every latent site is held at its guide mean; the model is replayed in one vectorised
    run over all (dimension, value) pairs and the observed site's mean E[x | z] recorded.
    A collapsed dimension gives identical rows.

    Parameters
    ----------
    x : torch.Tensor, tuple, list or dict
        One observation, shape ``(1, *event_shape)``, or the programs' arguments for one
        data point (each batched tensor with one row; see
        :mod:`pyrocollapse.program_data`).
    dims : sequence of int or None
        Dimensions to traverse (default all).
    values : sequence of float or None
        Values of z_d (default ``linspace(-3, 3, 7)``, in units of z).
    observed : str or None
        Observed site whose mean is decoded (default the model's first).

    Returns
    -------
    LatentTraversal

    References
    ----------
    Higgins et al. (2017). beta-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework. ICLR (latent traversals).
    """
    if isinstance(x, torch.Tensor):
        x = check_data("x", x, floating=x.is_floating_point())
        if x.shape[0] != 1:
            raise ValueError(
                f"x must hold exactly one observation, shape (1, ...); got {tuple(x.shape)}. "
                "Pass data[:1]"
            )
    data = as_program_data(x, "x", dtype=program_dtype(model, guide))
    if data.n != 1:
        raise ValueError(
            f"x must hold exactly one observation (one row of every batched argument); got "
            f"{data.n} rows in {data.describe()}. Pass the first row of each argument"
        )
    device = _setup_device(model, guide, data, device)
    xa = data.head(1).to(device)
    vals = (
        torch.linspace(-3, 3, 7) if values is None else torch.as_tensor(values, dtype=torch.float32)
    )
    if vals.dim() != 1 or vals.numel() < 1:
        raise ValueError(f"values must be a non-empty 1-d sequence, got shape {tuple(vals.shape)}")
    layout = _layout(model, guide, data, _probe(model, guide, data, device))
    with torch.no_grad():
        guide_tr, means = _guide_at_means(guide, xa)
        if site not in means:
            raise ValueError(
                f"latent site {site!r} is not a latent site of the guide; found {sorted(means)}"
            )
        base = means[site]  # (1, D)
        latent_dim = base.shape[-1]
        dim_list = (
            list(range(latent_dim))
            if dims is None
            else [check_int("dims[i]", d, minimum=0) for d in dims]
        )
        bad = [d for d in dim_list if d >= latent_dim]
        if bad or not dim_list:
            raise ValueError(f"dims must be non-empty and < latent_dim={latent_dim}; got {dims!r}")
        vals = vals.to(base)
        z = base.expand(len(dim_list), len(vals), 1, latent_dim).clone()
        for i, d in enumerate(dim_list):
            z[i, :, 0, d] = vals
        z = z.reshape(-1, 1, latent_dim)
        model_tr, _ = _run(
            model,
            guide,
            xa,
            particles=z.shape[0],
            nesting=layout.nesting,
            guide_trace=guide_tr,
            values={**means, site: z},
        )
        _, mean = _observed_mean(model_tr, observed)
    mean = mean.expand(z.shape[0], *mean.shape[-(mean.dim() - 1) :])
    shaped = mean.reshape(len(dim_list), len(vals), *mean.shape[2:])
    return LatentTraversal(site, np.asarray(dim_list), _numpy(vals), _numpy(shaped))


def reconstruction_means(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    observed: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """E[x | z = E_q[z | x]] for each observation: the decoder mean at the guide means.

    Returns
    -------
    numpy.ndarray
        Shape ``(N, *event_shape)`` of the observed site.
    """
    x, batch_size = _check_inputs(data, batch_size, model, guide)
    device = _setup_device(model, guide, x, device)
    out = []
    with torch.no_grad():
        for xb in _chunks(x, batch_size, device):
            guide_tr, means = _guide_at_means(guide, xb)
            model_tr, _ = _run(model, guide, xb, guide_trace=guide_tr, values=means)
            out.append(_observed_mean(model_tr, observed)[1])
    return _numpy(torch.cat(out))
