"""Time per SVI step: pyrocollapse objectives against a hand-written PyTorch VAE step.

Measures, in one run and on the same network, batch and data, the median wall time of
one optimisation step of

* a hand-written PyTorch VAE (the floor): the same MLP, BCE reconstruction, analytic KL,
  one fused Adam;
* Pyro's stock ``Trace_ELBO`` and ``TraceMeanField_ELBO`` through ``pyro.infer.SVI``;
* every pyrocollapse objective (the ``ELBOS`` registry) through the step ``fit`` runs
  (``differentiable_loss`` + one torch optimiser), with a Normal prior, and the
  default objective with the mixture and VampPrior priors when they are registered;

and prints each as a ratio to the hand-written step, plus (for the large problem) the
fraction of a physical floor estimated from the matmul FLOPs at the machine's measured
matmul throughput.

Usage::

    python benchmarks/training.py            # digits and 10,000 x 784 binary data
    python benchmarks/training.py --quick    # fewer steps, digits only (a smoke run)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from torch import nn

from pyrocollapse.elbo import ELBOS
from pyrocollapse.models import MLPVAE
from pyrocollapse.priors import PRIORS, StandardNormalPrior
from pyrocollapse.train import collect_params

#: Constructor arguments for objectives that need some (others take none).
ELBO_ARGS: dict[str, dict[str, Any]] = {
    "annealed": {"schedule": 0.5},
    "beta": {"beta": 4.0},
    "freebits": {"free_bits": 0.1},
    "mi": {"alpha": 1.0},
    "infovae": {"alpha": 0.0, "lambda_": 10.0},
    "iwae": {"num_particles": 1},
    "betatc": {"alpha": 1.0, "beta": 6.0, "gamma": 1.0},
}


def median_time(step: Callable[[], Any], steps: int, warmup: int = 5) -> float:
    """Median seconds per call of ``step`` over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class TorchVAE(nn.Module):
    """The hand-written reference: same layers as ``MLPVAE``, analytic KL, BCE."""

    def __init__(self, vae: MLPVAE) -> None:
        super().__init__()
        import copy

        self.encoder = copy.deepcopy(vae.encoder)
        self.decoder = copy.deepcopy(vae.decoder)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, raw = self.encoder(x).chunk(2, -1)
        scale = nn.functional.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(z)
        rec = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (scale**2 + loc**2 - 1).sum() - scale.log().sum()
        return rec + kl


def torch_step(vae: MLPVAE, x: torch.Tensor) -> Callable[[], None]:
    ref = TorchVAE(vae)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ref.loss(x).backward()
        opt.step()

    return step


def pyro_svi_step(vae: MLPVAE, x: torch.Tensor, elbo: Any) -> Callable[[], None]:
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
    return lambda: svi.step(x)


def fit_step(vae: MLPVAE, x: torch.Tensor, elbo: Any) -> Callable[[], None]:
    """The step ``pyrocollapse.train.fit`` runs."""
    guide_params, model_params = collect_params(vae.model, vae.guide, x)
    opt = torch.optim.Adam(guide_params + model_params, lr=1e-3, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        opt.step()
        elbo.step()

    return step


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = median_time(lambda: a @ b, 10, 2)
    return 2 * 2048**3 / t / 1e9


def step_flops(sizes: tuple[int, ...], batch: int) -> float:
    """Forward + backward matmul FLOPs of an MLP with layer widths ``sizes`` (x3 forward)."""
    return 3 * sum(2 * batch * a * b for a, b in itertools.pairwise(sizes))


def bench(name: str, x: torch.Tensor, hidden: tuple[int, ...], latent: int, steps: int) -> None:
    d = x.shape[1]
    print(f"\n== {name}: batch {tuple(x.shape)}, MLP {d}-{'-'.join(map(str, hidden))}-{latent} ==")
    pyro.enable_validation(False)
    rows: list[tuple[str, float]] = []

    def vae_with(prior_name: str = "standard") -> MLPVAE:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        prior = (
            StandardNormalPrior(latent)
            if prior_name == "standard"
            else PRIORS.get(prior_name).from_options(latent, input_shape=(d,))
        )
        return MLPVAE(d, latent, prior=prior, hidden=hidden)

    vae = vae_with()
    floor = median_time(torch_step(vae, x), steps)
    rows.append(("hand-written PyTorch step", floor))
    rows.append(
        (
            "pyro Trace_ELBO (SVI)",
            median_time(pyro_svi_step(vae_with(), x, pyro.infer.Trace_ELBO()), steps),
        )
    )
    rows.append(
        (
            "pyro TraceMeanField_ELBO (SVI)",
            median_time(pyro_svi_step(vae_with(), x, pyro.infer.TraceMeanField_ELBO()), steps),
        )
    )
    for elbo_name in ELBOS.names():
        elbo = ELBOS.get(elbo_name)(**ELBO_ARGS.get(elbo_name, {}))
        rows.append(
            (f"pyrocollapse {elbo_name}", median_time(fit_step(vae_with(), x, elbo), steps))
        )
    for prior_name in ("mixture", "vamp"):
        if prior_name in PRIORS:
            elbo = ELBOS.get("elbo")()
            rows.append(
                (
                    f"pyrocollapse elbo + {prior_name} prior",
                    median_time(fit_step(vae_with(prior_name), x, elbo), steps),
                )
            )
    sizes = (d, *hidden, 2 * latent)
    flops = step_flops(sizes, x.shape[0]) + step_flops((latent, *reversed(hidden), d), x.shape[0])
    phys = flops / (matmul_gflops() * 1e9)
    print(f"{'step':44s} {'ms':>8s} {'x floor':>8s} {'phys. floor/step':>17s}")
    for label, t in rows:
        print(f"{label:44s} {1e3 * t:8.2f} {t / floor:8.2f} {phys / t:17.2f}")
    print(f"(physical floor: {1e3 * phys:.2f} ms of matmul at the measured throughput)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, digits only")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per entry")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from sklearn.datasets import load_digits

    steps = args.steps or (10 if args.quick else 50)
    digits = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)[:128]
    bench("digits", digits, (256, 128), 16, steps)
    if not args.quick:
        g = torch.Generator().manual_seed(0)
        data = (torch.rand(10_000, 784, generator=g) < 0.3).float()
        bench("synthetic binary 10,000 x 784", data[:128], (512, 512), 32, steps)


if __name__ == "__main__":
    main()
