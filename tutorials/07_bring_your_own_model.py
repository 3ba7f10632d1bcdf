# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Bring your own Pyro model
#
# Nothing in pyrocollapse's training loop, objectives or diagnostics needs the ready
# models of `pyrocollapse.models`: they work on any Pyro model/guide pair, written the
# way Pyro's own examples write them, with no wrapper. This notebook writes three
# programs from scratch in plain Pyro, trains each with `fit` and diagnoses it with
# `diagnose`:
#
# 1. a small nonlinear factor model `model(x)` with an amortised guide, trained with a
#    stock Pyro ELBO and run through the whole diagnostic kit: `diagnose`, the PSIS
#    check of the guide, `to_inference_data`, `summarize`, netCDF;
# 2. a **deep Markov model** in the style of Pyro's `examples/dmm.py`,
#    `model(sequences, mask, lengths)`, with `pyro.markov`, masks for the padded time
#    steps and a GRU-based combiner guide: one site `z_t` per time step, each with the
#    conditional prior $p(z_t \mid z_{t-1})$;
# 3. an **M2 semi-supervised VAE** in the style of Pyro's
#    `examples/vae/ss_vae_M2.py`, `model(xs, ys=None)`, with the class `y` enumerated
#    in the guide: a discrete latent next to a continuous one.
#
# **What your programs must look like** (the same rules as Pyro's own SVI):
#
# * `model` and `guide` take the same arguments, as `SVI.step` passes them. Give `fit`
#   and `diagnose` the data in the same form: one tensor (`model(x)`), a tuple of
#   arguments (`model(sequences, mask, lengths)`) or a dict of keyword arguments
#   (`model(xs=..., ys=None)`). Every tensor is cut into minibatches along its first
#   dimension, together with the others; `None` and numbers go to every minibatch
#   unchanged.
# * The data plate is the outermost plate around the observed sites (the plate over
#   sequences of a DMM, not its time steps); local latent sites lie inside it.
# * `diagnose(..., latent_sites=None)` (the default) finds every latent site:
#   continuous local sites get every estimator, discrete ones (enumerated or sampled)
#   their exact KL and mutual information, global ones (outside the data plate) their
#   KL and posterior contraction (`report.global_sites`), and sites it cannot read are
#   listed with the reason in `report.skipped`.
# * The importance-sampling estimators (IW log-likelihood, PSIS $\hat k$), the decoder
#   sensitivity and the ArviZ export need every model site inside the data plate
#   (global parameters as `pyro.param`s or modules, not latent variables).

# %%
import os
import tempfile
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch import nn
from torch.nn.functional import one_hot, softplus

from pyrocollapse import CollapseReport, diagnose, fit, summarize, to_inference_data
from pyrocollapse.elbo import AnnealedELBO, PlainELBO
from pyrocollapse.schedules import Linear
from pyrocollapse.summaries import load_inference_data, save_inference_data

# %matplotlib inline

SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
N_POINTS = 400 if SMOKE else 3000
EPOCHS = 3 if SMOKE else 80
POSTERIOR_DRAWS = 20 if SMOKE else 100
N_SEQUENCES = 120 if SMOKE else 600  # deep Markov model
DMM_EPOCHS = 2 if SMOKE else 40
N_UNLABELLED = 300 if SMOKE else 2000  # M2
M2_EPOCHS = 2 if SMOKE else 20

pyro.set_rng_seed(0)
torch.set_num_threads(2)
print(f"smoke mode: {SMOKE}: {N_POINTS} points, {EPOCHS} epochs; DMM {N_SEQUENCES} sequences, "
      f"{DMM_EPOCHS} epochs; M2 {N_UNLABELLED} unlabelled points, {M2_EPOCHS} epochs")

# %% [markdown]
# ## Data from two hidden factors
#
# Twelve observed variables driven nonlinearly by two independent factors $f$:
# $x = \mathrm{softplus}(f W_1 + b_1)\, W_2 + 0.1\,\varepsilon$. We keep $f$ to check
# later what the latent code learned.

# %%
generator = torch.Generator().manual_seed(0)
D, TRUE_FACTORS = 12, 2
factors = torch.randn(N_POINTS, TRUE_FACTORS, generator=generator)
w1 = torch.randn(TRUE_FACTORS, 16, generator=generator)
b1 = torch.randn(16, generator=generator)
w2 = torch.randn(16, D, generator=generator) / 4
x = softplus(factors @ w1 + b1) @ w2 + 0.1 * torch.randn(N_POINTS, D, generator=generator)
x = (x - x.mean(0)) / x.std(0)
split = int(0.8 * N_POINTS)
x_train, x_valid, f_valid = x[:split], x[split:], factors[split:]
print(x_train.shape, x_valid.shape)

# %% [markdown]
# ## The model and the guide, in plain Pyro
#
# A nonlinear factor model with four latent factors (twice as many as the data have),
# a Gaussian decoder with a learned noise scale per variable, and an amortised guide
# $q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)$. The networks are
# ordinary `nn.Module`s registered with `pyro.module`; nothing here comes from
# pyrocollapse.

# %%
LATENT_DIM = 4


class Encoder(nn.Module):
    def __init__(self, input_dim, latent_dim, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x):
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, softplus(raw_scale) + 1e-4


decoder = nn.Sequential(nn.Linear(LATENT_DIM, 64), nn.Tanh(), nn.Linear(64, D))
encoder = Encoder(D, LATENT_DIM)


def model(x):
    pyro.module("decoder", decoder)
    noise = pyro.param("noise", torch.ones(D), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(decoder(z), noise).to_event(1), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, scale = encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


# %% [markdown]
# ## Training with a stock Pyro ELBO
#
# `fit` takes any Pyro ELBO. A stock one reports only its loss, so `fit` cannot tell
# which latent sites to monitor: `monitor=["z"]` asks for the active units and the
# mutual information of `z` at the end of every epoch anyway.

# %%
pyro.clear_param_store()
history = fit(model, guide, x_train, loss=pyro.infer.TraceMeanField_ELBO(), optim=pyro.optim.Adam({"lr": 3e-3}),
              epochs=EPOCHS, batch_size=100, seed=0, progress=False, monitor=["z"])
history.to_dataframe()[["epoch", "elbo", "active_units/z", "mi/z"]].iloc[:: max(1, EPOCHS // 8)].round(3)

# %% [markdown]
# pyrocollapse's own objectives are Pyro ELBOs too, and their `breakdown` splits the
# ELBO of your model per site: the log-likelihood of each observed site and the KL of
# each latent site *per dimension*. Already here you can see that two of the four
# latent dimensions cost almost nothing (in the full run):

# %%
terms = PlainELBO().breakdown(model, guide, x_valid)
print("log-likelihood of x per point:", float(terms["x"]) / len(x_valid))
print("KL of z per dimension and point:", (terms["z"] / len(x_valid)).numpy().round(3))

# %% [markdown]
# ## Diagnosing the hand-written model
#
# `diagnose(model, guide, data, latent_sites=("z",))` works as for the ready models.
# Adding the `"iw"` and `"psis"` estimators also measures the importance-weighted
# log-likelihood (and with it the inference gap, $\log p(x) - \mathrm{ELBO}$) and the
# Pareto $\hat k$ of the importance weights of each point, which says whether the guide
# is a usable approximation of the true posterior (Yao et al. 2018). A large $\hat k$
# means that $S$ importance samples cannot give a reliable estimate; the report's
# threshold is $\min(1 - 1/\log_{10} S, 0.7)$ (Vehtari et al. 2024), 0.5 for the
# $S = 100$ samples used here. A collapsed dimension can reflect a poor guide rather
# than the model; the report adds a note when more than a tenth of the points have a
# $\hat k$ above the threshold.

# %%
report = diagnose(model, guide, x_valid, latent_sites=("z",),
                  estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "psis"), importance_samples=100)
print(report)

# %% [markdown]
# Read the full run carefully. The verdict is *partial collapse*: dimensions 0 and 3
# carry about 3.0 and 2.6 nats of information and are `active`; dimensions 1 and 2
# carry only a few hundredths of a nat, measurably above zero but below the practical
# floor of 0.1 nats, so they are `near-collapse`. Their posterior means do move a
# little with $x$ (variances of a few hundredths), enough for the older active-unit
# rule of Burda et al. (2016), a variance above 0.01, to count all four dimensions as
# active (the report's "Burda AU" count), but the decoder ignores them: its
# sensitivity to dimensions 1 and 2 is over a thousand times smaller than to the other
# two.
#
# The report's two notes come in this order:
#
# 1. the guide: $\hat k$ is above the threshold of 0.5 for about a third of the
#    points. There the diagonal Gaussian $q(z \mid x)$ is a poor importance proposal
#    for the true posterior of this nonlinear model, which also shows as an inference
#    gap (IW log-likelihood minus ELBO) of about 0.44 nats. The near-collapsed
#    dimensions are not an artefact of the guide, though: the decoder itself ignores
#    them.
# 2. the near-collapsed dimensions 1 and 2: information measurably above zero but
#    spread thin, a few hundredths of a nat in all.
#
# Both thresholds of the status rule are conventions: `mi_threshold` (0.01 nats), at or
# below which a dimension carries nothing, and `info_floor` (0.1 nats), from which it is
# active. `diagnose` takes both if your problem calls for other ones; raising the zero
# threshold to the floor leaves no room for near collapse:

# %%
strict = diagnose(model, guide, x_valid, latent_sites=("z",), mi_threshold=0.1)
print(f"verdict {strict.verdict!r}, statuses {strict['z'].status}")

# %% [markdown]
# With the stricter threshold the two dimensions that carried a few hundredths of a
# nat read `collapsed`, and the model has two active dimensions for its two true
# factors: the same benign partial collapse as the linear VAE with surplus dimensions
# (notebook 2) and the MLP VAE with a standard prior (notebook 4).

# %%
report.plot("kl")

# %%
report.plot("khat")

# %% [markdown]
# Do the active dimensions carry the true factors? Regress each true factor on the
# posterior means $\mathbb{E}_q[z \mid x]$ of the dimensions active under the strict
# threshold; $R^2$ close to 1 means the code recovers the factor (up to a smooth
# transformation, which a linear regression captures only approximately).

# %%
active = np.flatnonzero(np.array(strict["z"].status) == "active")
with torch.no_grad():
    codes = encoder(x_valid)[0].numpy()[:, active]
design = np.column_stack([codes, np.ones(len(codes))])
for k in range(TRUE_FACTORS):
    target = f_valid[:, k].numpy()
    fitted = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    print(f"factor {k}: R^2 = {1 - np.var(target - fitted) / np.var(target):.3f} from active dims {active.tolist()}")

# %% [markdown]
# A report holds numbers only, so it saves to JSON and loads back unchanged (the
# command line writes the same file into its report folders), and `compare` lines up
# two reports dimension by dimension: here the default and the strict threshold.

# %%
workdir = tempfile.TemporaryDirectory(prefix="pyrocollapse-")  # removed at the end
folder = Path(workdir.name)
report.to_json(folder / "report.json")
reloaded = CollapseReport.from_json(folder / "report.json")
print(reloaded.verdict, reloaded["z"].status)
reloaded.compare(strict)[["dim", "kl_before", "mi_before", "au_variance_before", "sensitivity_before", "status_before", "status_after"]].round(3)

# %% [markdown]
# ## The ArviZ view
#
# `to_inference_data` runs the guide and the model over the held-out data and returns
# an `arviz.InferenceData` with the guide's draws of every latent site (`posterior`,
# dims `chain, draw, data, z_dim_0`, named after the plates), ancestral draws from the model (`prior`), the
# observations, and the log-likelihood of every observation under every draw.
# `summarize` compares, per latent dimension, the aggregate posterior with the prior;
# a collapsed dimension has `sd_ratio` and `rhat_obs` near 1 (notebook 1), as the two
# dimensions the decoder ignores do in the full run.

# %%
idata = to_inference_data(model, guide, x_valid, num_samples=POSTERIOR_DRAWS)
print(idata)
summarize(idata)[["mean", "sd", "prior_sd", "obs_sd", "sd_ratio", "rhat_obs"]].round(3)

# %% [markdown]
# The InferenceData saves to netCDF and loads back with its values, dimensions and
# attributes (which record that the draws come from a variational guide, not MCMC),
# and every ArviZ function accepts it, for example `arviz.summary` of the draws of one
# observation:

# %%
save_inference_data(idata, folder / "posterior.nc")
loaded = load_inference_data(folder / "posterior.nc")
same = np.array_equal(loaded.posterior["z"].values, idata.posterior["z"].values)
print(f"{(folder / 'posterior.nc').stat().st_size / 1e6:.1f} MB on disk, identical after loading: {same}")
print(loaded.posterior.attrs["posterior_kind"])
az.summary(loaded.posterior["z"].sel(data=0), kind="stats")

# %%
workdir.cleanup()

# %% [markdown]
# ## A deep Markov model, written as in Pyro's examples
#
# A deep Markov model (Krishnan, Shalit & Sontag 2017) is a nonlinear state-space
# model: a latent chain $z_1, \dots, z_T$ with transitions
# $p(z_t \mid z_{t-1}) = \mathcal N(\mu(z_{t-1}), \operatorname{diag}\sigma(z_{t-1})^2)$
# and emissions $p(x_t \mid z_t)$, fitted with a guide
# $q(z_t \mid z_{t-1}, x_{t:T})$ that combines the previous draw with a GRU run backwards
# over the sequence. Pyro's `examples/dmm.py` trains one on polyphonic music; here the
# "music" is synthetic: a hidden 2-D state turns by 45° per step, shrinks by 0.9 and
# receives fresh Gaussian noise (sd 0.5), and ten binary "notes" are played with
# probabilities that depend on the state. The sequences have lengths 4 to 8, zero-padded
# to 8 steps, with a mask that marks the real steps. Every step brings new information
# (the noise), so a good model needs every $z_t$.

# %%
generator = torch.Generator().manual_seed(1)
T_MAX, NOTES = 8, 10
lengths = torch.randint(4, T_MAX + 1, (N_SEQUENCES,), generator=generator)
turn = torch.tensor(np.pi / 4)
rotation = 0.9 * torch.tensor([[turn.cos(), -turn.sin()], [turn.sin(), turn.cos()]])
readout = 3 * torch.randn(2, NOTES, generator=generator)
state = torch.randn(N_SEQUENCES, 2, generator=generator)
frames = []
for _ in range(T_MAX):
    state = state @ rotation.T + 0.5 * torch.randn(N_SEQUENCES, 2, generator=generator)
    frames.append(torch.bernoulli(torch.sigmoid(state @ readout), generator=generator))
mask = torch.arange(T_MAX) < lengths.unsqueeze(-1)  # (N, T_MAX): True on the real steps
sequences = torch.stack(frames, dim=1) * mask.unsqueeze(-1)  # (N, T_MAX, NOTES), zero padding
print(tuple(sequences.shape), "sequences reaching each step:", mask.sum(0).tolist())

# %% [markdown]
# The networks and the two programs, as Pyro's example writes them: a gated
# transition, an emitter, a combiner and a GRU in one `nn.Module` whose `model` and
# `guide` methods take `(sequences, mask, lengths)`. The time loop runs under
# `pyro.markov`, each step is one site `z_t` inside the plate over sequences, and the
# padded steps are masked out, in the model with the distribution's `.mask(...)` and
# in the guide with `poutine.mask` (either works). Unlike Pyro's example there is no
# `annealing_factor` argument and no `poutine.scale`: the KL annealing lives in the
# objective, `AnnealedELBO`.

# %%
Z_DIM, HIDDEN = 2, 32


def reverse_padded(x, lengths):
    """Reverse each sequence x[b, :lengths[b]] in time; the padding stays at the end."""
    steps = torch.arange(x.shape[1])
    last = lengths.unsqueeze(-1) - 1
    index = torch.where(steps <= last, last - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}): a gated mix of a linear and a nonlinear proposed mean."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, Z_DIM), nn.Sigmoid())
        self.proposal = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, Z_DIM))
        self.linear = nn.Linear(Z_DIM, Z_DIM)
        self.scale = nn.Linear(Z_DIM, Z_DIM)

    def forward(self, z_prev):
        gate, proposed = self.gate(z_prev), self.proposal(z_prev)
        loc = (1 - gate) * self.linear(z_prev) + gate * proposed
        return loc, softplus(self.scale(torch.relu(proposed))) + 1e-3


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, x_{t:T}) from the previous draw and the backward GRU's state."""

    def __init__(self):
        super().__init__()
        self.from_z = nn.Linear(Z_DIM, HIDDEN)
        self.loc = nn.Linear(HIDDEN, Z_DIM)
        self.scale = nn.Linear(HIDDEN, Z_DIM)

    def forward(self, z_prev, h_rnn):
        h = 0.5 * (torch.tanh(self.from_z(z_prev)) + h_rnn)
        return self.loc(h), softplus(self.scale(h)) + 1e-3


class DMM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emitter = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, NOTES))
        self.transition = GatedTransition()
        self.combiner = Combiner()
        self.rnn = nn.GRU(NOTES, HIDDEN, batch_first=True)
        self.z_0 = nn.Parameter(torch.zeros(Z_DIM))  # p(z_1) = transition(z_0)
        self.z_q_0 = nn.Parameter(torch.zeros(Z_DIM))  # q(z_1 | x) = combiner(z_q_0, h_1)

    def model(self, sequences, mask, lengths):
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(sequences.shape[0], Z_DIM)
        with pyro.plate("sequences", sequences.shape[0]):
            for t in pyro.markov(range(1, sequences.shape[1] + 1)):
                real = mask[:, t - 1]  # padded steps take no part
                loc, scale = self.transition(z_prev)
                z_t = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(real))
                emission = dist.Bernoulli(logits=self.emitter(z_t)).to_event(1)
                pyro.sample(f"x_{t}", emission.mask(real), obs=sequences[:, t - 1])
                z_prev = z_t

    def guide(self, sequences, mask, lengths):
        pyro.module("dmm", self)
        # h_t summarises x_{t:T}: the GRU reads each sequence backwards in time
        h = reverse_padded(self.rnn(reverse_padded(sequences, lengths))[0], lengths)
        z_prev = self.z_q_0.expand(sequences.shape[0], Z_DIM)
        with pyro.plate("sequences", sequences.shape[0]):
            for t in pyro.markov(range(1, sequences.shape[1] + 1)):
                loc, scale = self.combiner(z_prev, h[:, t - 1])
                with poutine.mask(mask=mask[:, t - 1]):
                    z_prev = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1))


pyro.set_rng_seed(0)
dmm = DMM()

# %% [markdown]
# ### Training: the data as a tuple of arguments
#
# `fit` takes the programs' arguments as a tuple, `(sequences, mask, lengths)`, and
# cuts all three into minibatches of sequences together; the ELBO per data point is
# per *sequence* (the plate around the observed sites), not per time step.
# `AnnealedELBO(Linear(warmup_steps=200))` raises the KL weight from 0 to 1 over the
# first 200 steps, as `annealing_factor` does in Pyro's example, and records the KL of
# every site `z_t`. `monitor=None` skips the per-epoch mutual information of the eight
# sites, which would cost more than the training here; `diagnose` measures it at the end.

# %%
pyro.clear_param_store()
dmm_history = fit(dmm.model, dmm.guide, (sequences, mask, lengths), loss=AnnealedELBO(Linear(warmup_steps=200)),
                  optim=pyro.optim.Adam({"lr": 3e-3}), epochs=DMM_EPOCHS, batch_size=50, seed=0, progress=False,
                  monitor=None)
columns = ["epoch", "elbo", "kl", "kl_weight", "kl/z_1", "kl/z_2", f"kl/z_{T_MAX}"]
dmm_history.to_dataframe()[columns].iloc[:: max(1, DMM_EPOCHS // 8)].round(3)

# %% [markdown]
# ### Diagnosis with no wrapper
#
# `diagnose(model, guide, (sequences, mask, lengths))`, with the default
# `latent_sites=None`, finds the sites `z_1` to `z_8` by tracing the programs over
# every chunk of data, and measures each on the real steps only: `z_8` on the sequences
# of length 8, and so on (the padded steps are masked, so they are left out).

# %%
dmm_report = diagnose(dmm.model, dmm.guide, (sequences, mask, lengths))
print(dmm_report)
print("\nskipped:", dmm_report.skipped or "none", "| global sites:", list(dmm_report.global_sites) or "none")

# %% [markdown]
# In the full run every dimension of every step is active and the verdict is
# *healthy*: each $z_t$ carries about one nat beyond what $z_{t-1}$ already says (the
# fresh noise of the hidden state), $z_1$ about 1.7 (it starts the chain, with nothing
# before it). The decoder sensitivity falls along the sequence: $z_t$ shapes
# $x_t$ and, through the transitions, every later step, so $z_1$ weighs on eight frames
# and $z_8$ on one (of the longest sequences only). (In smoke mode, two epochs inside the KL
# warm-up, the numbers mean nothing.)
#
# **The rule for a Markov chain.** The report states it at the bottom: a site with a
# conditional diagonal-Normal prior, here $p(z_t \mid z_{t-1}) =
# \mathcal N(\mu(z_{t-1}), \operatorname{diag}\sigma(z_{t-1})^2)$, is measured in that
# prior's standardised coordinates
# $$
# u_t = \frac{z_t - \mu(z_{t-1})}{\sigma(z_{t-1})}
# $$
# at the guide's own draw of $z_{t-1}$. Under the prior $u_t \sim \mathcal N(0, I)$
# whatever $z_{t-1}$, so the active-unit variance $\operatorname{Cov}_x(\mathbb{E}_q[u_t])$
# and the mutual information $I_q(x; u_t)$ count only what the sequence tells about
# $z_t$ *beyond* its parent. The KL is the term the ELBO subtracts,
# $\mathbb{E}_q\,\mathrm{KL}(q(z_t \mid z_{t-1}, x) \,\|\, p(z_t \mid z_{t-1}))$ (an
# affine change of coordinates leaves a KL unchanged), and
# KL = MI + marginal KL still holds per site. `z_1` has no latent parent (its prior
# mean comes from the parameter `z_0`), so it is measured as it is.
#
# Here is the KL of the first step; `plot("kl", site=...)` draws any step.

# %%
dmm_report.plot("kl", site="z_1")

# %% [markdown]
# ### The control: a guide equal to the prior
#
# Is a *healthy* reading earned? The control is the same model with a guide that
# ignores the data: the model itself with its observed sites hidden,
# `poutine.block(model, hide_fn=lambda msg: msg["is_observed"])`, draws every $z_t$ from
# $p(z_t \mid z_{t-1})$. Then $q = p$ exactly, every KL is zero, and nothing about $x$
# reaches $z$: the report must read *full collapse*. (Training a DMM whose emitter
# ignores $z$ leads to the same reading, after the guide has been pulled onto the prior.)

# %%
prior_guide = poutine.block(dmm.model, hide_fn=lambda msg: msg["is_observed"])  # q(z_t | z_{t-1}, x) = p(z_t | z_{t-1})
control_report = diagnose(dmm.model, prior_guide, (sequences, mask, lengths))
print(f"verdict: {control_report.verdict}")
control = control_report.to_dataframe()[["site", "dim", "kl", "au_variance", "mi", "status"]]
control.round(4)

# %% [markdown]
# **Why the old rule called this chain active.** The active-unit rule of Burda et al.
# (2016) asks whether the posterior mean moves with the data:
# $\operatorname{Cov}_x(\mathbb{E}_q[z_d \mid x]) > 0.01$. Applied to $z_t$ directly, as
# earlier versions of pyrocollapse did, it takes the mean of
# $q(z_t \mid z_{t-1}, x)$ at the guide's draw of $z_{t-1}$, and for the prior guide
# that mean is $\mu(z_{t-1})$. It moves from sequence to sequence, not because of $x$
# but because every sequence carries its own random draw of $z_{t-1}$ down the chain.
# The same spread makes the aggregate posterior $q(z_t)$ wider than any single
# $q(z_t \mid z_{t-1}, x)$, which a mutual-information estimate in raw coordinates reads
# as information. Computing the old number by hand, from one trace of the guide:

# %%
with torch.no_grad():
    trace = poutine.trace(prior_guide).get_trace(sequences, mask, lengths)
old_rule = []
for t in range(1, T_MAX + 1):
    means = trace.nodes[f"z_{t}"]["fn"].mean[mask[:, t - 1]]  # E_q[z_t | z_{t-1}, x], real steps
    for d, variance in enumerate(means.var(0).tolist()):
        old_rule.append({"site": f"z_{t}", "dim": d, "old: Var_x E_q[z_t]": variance,
                         "old status": "active" if variance > 0.01 else "collapsed"})
pd.DataFrame(old_rule).merge(control[["site", "dim", "au_variance", "status"]], on=["site", "dim"]).round(4)

# %% [markdown]
# By the old rule every step after the first is "active" (a variance of order one,
# the spread of the chain itself), although the guide has never looked at the data;
# only `z_1`, whose prior mean is a constant, reads collapsed. Measured given its
# parent, every step has variance and MI zero: *full collapse*, as it should be. A
# DMM trained for real is healthy under both rules here, but only the conditional
# rule would notice if the later steps stopped using the data.

# %% [markdown]
# ## An M2 semi-supervised VAE with an enumerated class
#
# Kingma et al.'s (2014) M2 model has two latents per point: a class
# $y \sim \mathrm{Categorical}(\text{uniform})$ and a continuous style
# $z \sim \mathcal N(0, I)$, with $p(x \mid y, z)$ a decoder of both. Its guide is a
# classifier $q(y \mid x)$ and an encoder $q(z \mid x, y)$. When a point has a label,
# $y$ is observed in the model and the guide skips $q(y \mid x)$; when it has none, the
# guide's $y$ is enumerated (`config_enumerate`): the ELBO sums over the classes exactly
# instead of sampling one, as Pyro's `TraceEnum_ELBO` does.
#
# The data: 32-pixel binary "images" of four classes, each a class prototype shifted by
# a continuous 2-D style, so both latents have something to carry. Labels are kept for
# the evaluation and for 40 points.

# %%
generator = torch.Generator().manual_seed(2)
CLASSES, PIXELS, M2_Z_DIM = 4, 32, 2
prototypes = 2.5 * torch.randn(CLASSES, PIXELS, generator=generator)
style_directions = 1.5 * torch.randn(M2_Z_DIM, PIXELS, generator=generator)


def draw_images(n):
    """n binary images and their classes: a class prototype plus a random style."""
    labels = torch.randint(CLASSES, (n,), generator=generator)
    style = torch.randn(n, M2_Z_DIM, generator=generator)
    logits = prototypes[labels] + style @ style_directions
    return torch.bernoulli(torch.sigmoid(logits), generator=generator), labels


x_unlabelled, y_unlabelled = draw_images(N_UNLABELLED)  # y_unlabelled: for evaluation only
x_labelled, y_labelled = draw_images(40)
x_test, y_test = draw_images(500)
print(tuple(x_unlabelled.shape), tuple(x_labelled.shape), tuple(x_test.shape))


# %% [markdown]
# The model and the guide as methods of one `nn.Module`, the way `ss_vae_M2.py` writes
# them. Under enumeration the guide's `y` has shape `(4, 1)` (one value per class, on a
# dimension left of the plate) instead of `(batch,)`, so the one-hot code of `y` is
# concatenated with `x` or `z` after broadcasting.

# %%
def cat_broadcast(*tensors):
    """Concatenate along the last dimension after broadcasting the others."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], dim=-1)


class SSVAE(nn.Module):
    """M2: p(y) p(z) p(x | y, z); guide q(y | x) q(z | x, y)."""

    def __init__(self, hidden=64):
        super().__init__()
        self.encoder_y = nn.Sequential(nn.Linear(PIXELS, hidden), nn.Softplus(), nn.Linear(hidden, CLASSES))
        self.encoder_z = nn.Sequential(
            nn.Linear(PIXELS + CLASSES, hidden), nn.Softplus(), nn.Linear(hidden, 2 * M2_Z_DIM)
        )
        self.decoder = nn.Sequential(nn.Linear(M2_Z_DIM + CLASSES, hidden), nn.Softplus(), nn.Linear(hidden, PIXELS))

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            ys = pyro.sample("y", dist.Categorical(logits=xs.new_zeros(CLASSES)), obs=ys)
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(M2_Z_DIM), 1.0).to_event(1))
            logits = self.decoder(cat_broadcast(zs, one_hot(ys, CLASSES).to(xs.dtype)))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    @config_enumerate
    def guide(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:  # unlabelled: q(y | x), summed over the classes by the ELBO
                ys = pyro.sample("y", dist.Categorical(logits=self.encoder_y(xs)))
            h = self.encoder_z(cat_broadcast(xs, one_hot(ys, CLASSES).to(xs.dtype)))
            loc, raw_scale = h.chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, softplus(raw_scale) + 1e-3).to_event(1))

    def classify(self, xs):
        """The most probable class under q(y | x)."""
        with torch.no_grad():
            return self.encoder_y(xs).argmax(-1)


pyro.set_rng_seed(0)
m2 = SSVAE()

# %% [markdown]
# ### Training on unlabelled data: a dict of keyword arguments
#
# `fit` takes keyword arguments as a dict: `{"xs": x_unlabelled, "ys": None}` calls
# `model(xs=<minibatch>, ys=None)`, the tensor cut into minibatches and `None` passed
# to every one. `AnnealedELBO` sums the enumerated `y` exactly (no score-function
# gradient, no sampling noise) and weighs both KL terms, of `y` and of `z`, by the
# annealed weight.

# %%
pyro.clear_param_store()
m2_history = fit(m2.model, m2.guide, {"xs": x_unlabelled, "ys": None}, loss=AnnealedELBO(Linear(warmup_steps=300)),
                 optim=pyro.optim.Adam({"lr": 3e-3}), epochs=M2_EPOCHS, batch_size=100, seed=0, progress=False)
m2_history.to_dataframe()[["epoch", "elbo", "kl/y", "kl/z", "kl_weight", "mi/z"]].iloc[:: max(1, M2_EPOCHS // 6)].round(3)

# %% [markdown]
# `diagnose` takes the same dict. The report holds a **discrete** site `y` next to the
# continuous `z`: for `y` the KL and the mutual information are exact, sums over the
# four classes rather than Monte Carlo estimates, with
# $I_q(x; y) = H(\bar q(y)) - \mathbb{E}_x H(q(y \mid x))$ for the aggregate posterior
# $\bar q(y) = \mathbb{E}_x q(y \mid x)$, at most $\log 4 \approx 1.386$ nats. It is one
# row in `to_dataframe`, with its status from the same rule as a continuous dimension
# (*active* from the floor of 0.1 nats on), applied to the exact $I_q(x; y)$. The `z`
# rows are per dimension, as before.

# %%
m2_report = diagnose(m2.model, m2.guide, {"xs": x_test, "ys": None})
print(m2_report)
m2_report.to_dataframe()[["site", "dim", "kl", "au_variance", "mi", "aggregate_kl", "status"]].round(3)

# %% [markdown]
# In the full run the verdict is *healthy*: $I_q(x; y)$ is about 1.33 of the 1.386
# nats possible, so $q(y \mid x)$ sorts the test images into four confident,
# equally used groups, and both style dimensions are active. Does it sort them by
# class? Without labels the model cannot know which group to call "class 0": the raw
# accuracy of $q(y \mid x)$ depends on an arbitrary numbering of the groups (near chance
# in the full run). Naming each group after the most common true class of the labelled
# points in it shows what it learned:

# %%
predicted = m2.classify(x_test)
in_group = m2.classify(x_labelled)
names = torch.arange(CLASSES)
for g in range(CLASSES):  # group g -> the most common class of the labelled points in it
    if (in_group == g).any():
        names[g] = y_labelled[in_group == g].mode().values
print(f"accuracy of q(y | x) as it stands: {(predicted == y_test).float().mean():.3f} (chance 0.25)")
print(f"after naming each group by the labelled points: {(names[predicted] == y_test).float().mean():.3f}")
pd.crosstab(pd.Series(y_test.numpy(), name="true class"), pd.Series(predicted.numpy(), name="group of q(y | x)"))


# %% [markdown]
# In the full run the groups are the classes: once named, $q(y \mid x)$ is right on
# about 98% of the test images, and the table has one large count per row.
#
# ### With labelled batches
#
# M2 is meant to be trained semi-supervised, as `ss_vae_M2.py` does: labelled batches
# `{"xs": x_labelled, "ys": y_labelled}`, in which the model observes `y` and the guide
# samples only `z`, alternate with unlabelled ones `{"xs": ..., "ys": None}`. `fit`
# takes any re-iterable of such dict batches (a `DataLoader` works too), one pass per
# epoch, and the same `AnnealedELBO` serves both kinds. A fresh model trained this way
# names its classes right:

# %%
class SemiSupervisedBatches:
    """One epoch: every unlabelled minibatch, each followed by the labelled batch."""

    def __iter__(self):
        for rows in torch.randperm(len(x_unlabelled)).split(100):
            yield {"xs": x_unlabelled[rows], "ys": None}
            yield {"xs": x_labelled, "ys": y_labelled}


pyro.clear_param_store()  # the new module's parameters, not the old ones, under the name "ss_vae"
pyro.set_rng_seed(0)
m2_semi = SSVAE()
fit(m2_semi.model, m2_semi.guide, SemiSupervisedBatches(), loss=AnnealedELBO(Linear(warmup_steps=300)),
    optim=pyro.optim.Adam({"lr": 3e-3}), epochs=M2_EPOCHS, seed=0, progress=False)
semi_report = diagnose(m2_semi.model, m2_semi.guide, {"xs": x_test, "ys": None})
print(f"verdict {semi_report.verdict!r}; I_q(x; y) = {semi_report['y'].mi:.3f} nats; "
      f"active dimensions of z: {semi_report['z'].active_units}/{M2_Z_DIM}")
print(f"accuracy of q(y | x) on the test images: {(m2_semi.classify(x_test) == y_test).float().mean():.3f}")

# %% [markdown]
# In the full run the classifier is right on about 99% of the test images, from 40
# labels. `diagnose` on labelled data, `{"xs": x, "ys": y}`, would report `z` only:
# there `y` is observed, not latent.

# %% [markdown]
# ## Summary
#
# * Any Pyro model/guide pair trains with `fit` (any Pyro ELBO; `monitor=[...]` for
#   the collapse indicators) and is diagnosed with `diagnose`; pyrocollapse's ELBOs
#   add per-site, per-dimension breakdowns.
# * With `"iw"` and `"psis"`, the report also says how good the guide is, so you can
#   tell a collapsed latent from a poor guide.
# * `to_inference_data`, `summarize`, `save_inference_data` and `load_inference_data`
#   move the guide's draws into the ArviZ ecosystem.
# * Programs with several arguments need no wrapper: pass a tuple
#   (`(sequences, mask, lengths)` for a deep Markov model) or a dict
#   (`{"xs": x, "ys": None}` for M2) to `fit` and `diagnose`, or a re-iterable of such
#   batches to `fit`.
# * `diagnose` finds every latent site by itself: the steps `z_1 ... z_T` of a Markov
#   chain (padded steps left out, each step measured given the previous one, so a
#   guide equal to the prior reads *full collapse*), and discrete sites such as M2's
#   enumerated `y`, with their exact KL and $I_q(x; y)$.
#
# **References.** Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?:
# Evaluating Variational Inference, ICML. Vehtari, Simpson, Gelman, Yao & Gabry (2024),
# Pareto Smoothed Importance Sampling, JMLR. Burda, Grosse & Salakhutdinov (2016),
# Importance Weighted Autoencoders, ICLR. He et al. (2019), Lagging Inference Networks
# and Posterior Collapse in VAEs, ICLR. Kumar et al. (2019), ArviZ, JOSS. Krishnan,
# Shalit & Sontag (2017), Structured Inference Networks for Nonlinear State Space
# Models, AAAI. Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning
# with Deep Generative Models, NeurIPS.
