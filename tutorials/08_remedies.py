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
# # 8. Remedies that change the model, and disentanglement measured
#
# Notebooks 3 and 5 fought collapse by changing the *objective* (annealing, free bits,
# MI terms). Four remedies from the literature change the *model* instead, and every
# ready model in pyrocollapse takes them as options:
#
# | variant | model option | idea |
# | --- | --- | --- |
# | `skip` | `skip=True` | Skip-VAE (Dieng et al. 2019): $z$ feeds every layer (every step) of the decoder, so the decoder cannot drift away from it |
# | `bn` | `posterior="batchnorm"` | BN-VAE (Zhu et al. 2020): the posterior means are batch-normalised with a fixed scale, which puts a floor under the batch-averaged KL of every dimension |
# | `delta` | `posterior="delta"` | a δ-VAE in the sense of Razavi et al. (2019): the posterior scale is capped, so every point pays at least δ nats per dimension (δ = 0.1) |
# | `sa` | `refine_steps=5` | semi-amortised VAE (Kim et al. 2018): the encoder's output is refined by 5 gradient steps on the ELBO of each point |
#
# This notebook
#
# 1. runs them side by side on the collapsing LSTM sequence VAE of notebooks 1 and 6,
#    with `pyrocollapse.compare` and its `variants` axis, and reads the paired
#    differences against the plain model: does the remedy raise the information in $z$
#    (MI, active units) at a comparable held-out log-likelihood?
# 2. measures disentanglement on images with known generative factors: the plain ELBO
#    against β-TCVAE and FactorVAE, scored with MIG, SAP, DCI and the FactorVAE score.

# %%
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from matplotlib.figure import Figure

from pyrocollapse import RunConfig, compare, plots
from pyrocollapse.comparison import format_summary, summarize_runs
from pyrocollapse.models.posteriors import committed_rate_scale

# %matplotlib inline

SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
N_SEQUENCES = 150 if SMOKE else 1000
SEQ_EPOCHS = 1 if SMOKE else 10
VARIANTS = ["plain", "bn"] if SMOKE else ["plain", "skip", "bn", "delta", "sa"]
N_SHAPES = 200 if SMOKE else 2000
SHAPE_EPOCHS = 1 if SMOKE else 15
SEEDS = 2 if SMOKE else 3  # paired differences need at least 2 seeds; 3 give an interval

pyro.set_rng_seed(0)
torch.set_num_threads(2)
print(f"smoke mode: {SMOKE}: {N_SEQUENCES} sequences, {SEQ_EPOCHS} epochs, {SEEDS} seeds")

# %% [markdown]
# ## 1. Remedies that change the model, on sequence data
#
# The data are token sequences from four topics (notebook 6) and the model is the
# `SequenceVAE` with an LSTM decoder, which predicts the next token well from the
# prefix alone: under the plain ELBO it leaves $z$ unused. `variants` adds a third axis
# to the grid; `variant_options` gives each variant its model options on top of
# `base.model_options` (a variant without an entry, here `plain`, is the model
# unchanged). Every variant is trained with the same seeds, hence the same
# initial data split, so `compare` reports *paired* differences against the baseline
# variant: the mean over seeds of (variant − plain) with a 95% Student-t interval.
#
# `jit=False` keeps the objective eager: this LSTM model does not compile, and the
# default `jit="auto"` would try after 15 s of training and fall back.

# %%
base = RunConfig(
    dataset="sequences",
    dataset_options={"n": N_SEQUENCES, "vocab_size": 24, "max_len": 12, "n_topics": 4},
    valid_fraction=0.2,
    model="sequence",
    latent_dim=4,
    model_options={"embed": 32, "hidden": 64, "cell": "lstm"},
    elbo_options={"jit": False},
    epochs=SEQ_EPOCHS,
    batch_size=50,
    lr=3e-3,
    estimators=("kl", "au", "mi"),  # compare adds "iw"
    bootstrap=0,
    posterior_samples=20,
    posterior_points=200,
)
variant_options = {
    "skip": {"skip": True},
    "bn": {"posterior": "batchnorm"},
    "delta": {"posterior": "delta", "posterior_options": {"delta": 0.1}},
    "sa": {"refine_steps": 5},
}
workdir = tempfile.TemporaryDirectory(prefix="pyrocollapse-")  # removed at the end
torch.manual_seed(0)
summary = compare(
    base=base,
    priors=["standard"],
    elbos=["elbo"],
    variants=VARIANTS,
    variant_options={v: o for v, o in variant_options.items() if v in VARIANTS},
    baseline="standard:elbo:plain",
    seeds=SEEDS,
    out=Path(workdir.name) / "remedies",
    iw_samples=50,
    jobs=1,
    progress=False,
)
print(format_summary(summary))

# %% [markdown]
# The returned table has one row per variant, with the mean and spread over seeds of
# every metric and, for each, the paired difference against the baseline
# (`<metric>_diff`) and its interval (`_diff_lo`, `_diff_hi`). The columns that
# answer the question:

# %%
columns = ["variant", "n_paired", "active_units_mean", "kl_mean", "mi_mean"]
for metric in ("mi", "active_units", "iw_log_likelihood"):
    columns += [f"{metric}_diff", f"{metric}_diff_lo", f"{metric}_diff_hi"]
summary[columns].set_index("variant").round(2)

# %% [markdown]
# The paired differences as a figure: each point is the mean over seeds of (variant −
# plain), the bar its 95% interval; an interval that does not cross 0 is a difference
# the seeds agree on.


# %%
def plot_paired(summary, metrics, labels):
    """One panel per metric: the paired difference of each cell against the baseline."""
    rows = summary[~summary["baseline"].astype(bool)]
    fig = Figure(figsize=(4.0 * len(metrics), 3.2), layout="constrained")
    for ax, metric, label in zip(fig.subplots(1, len(metrics)), metrics, labels, strict=True):
        diff = rows[f"{metric}_diff"].to_numpy(dtype=float)
        lo = rows[f"{metric}_diff_lo"].to_numpy(dtype=float)
        hi = rows[f"{metric}_diff_hi"].to_numpy(dtype=float)
        y = np.arange(len(rows))
        err = np.nan_to_num(np.stack([diff - lo, hi - diff]))
        ax.errorbar(diff, y, xerr=err, fmt="o", capsize=4)
        ax.axvline(0.0, color="0.5", lw=1, ls="--")
        ax.set_yticks(y, rows["variant" if "variant" in rows else "objective"])
        ax.set_xlabel(label)
    return fig


plot_paired(
    summary,
    ["mi", "active_units", "iw_log_likelihood"],
    ["Δ MI (nats)", "Δ active units", "Δ held-out IW log p(x) (nats)"],
)

# %% [markdown]
# `plots.plot_comparison` puts the same cells on the information / likelihood plane
# (error bars: one standard deviation over seeds):

# %%
plots.plot_comparison(summary)

# %% [markdown]
# Reading the full run (1000 sequences, 10 epochs, 3 seeds; in smoke mode the numbers
# mean nothing). The plain model collapses on every seed: no active units, MI and KL
# 0.00 nats. Against it, per seed:
#
# * **BN-VAE** raises MI by +0.48 nats [+0.46, +0.50], with all 4 units active on two
#   seeds and 3 on the third (3.7 on average), at an unchanged held-out IW
#   log-likelihood (+0.04 [−0.03, +0.10] nats). It is the one remedy here that buys
#   information at no measurable cost.
# * **SA-VAE** makes all 4 units active on every seed and raises MI the most, +0.87
#   nats, but with a wide interval [−0.01, +1.74]: the seeds disagree on how much. Its
#   IW log-likelihood is lower, −0.33 [−0.69, +0.04] nats, not significantly at 95%,
#   and its ELBO is about 1.1 nats worse. Each of its training steps refines the
#   encoder's output with 5 gradient steps differentiated through the LSTM decoder,
#   which makes it by far the slowest variant (the `time s` column).
# * **Skip-VAE** raises MI only slightly, +0.05 nats [+0.01, +0.09], not enough to
#   make any unit active, at an unchanged IW log-likelihood.
# * **δ-VAE** (next cell) is the instructive failure.
#
# Each of these intervals holds at 95% on its own. With four variants against one
# baseline, the chance that at least one of four intervals misses is larger than 5%.
# `adjust="bonferroni"` (`compare --adjust bonferroni`) widens each interval to
# 1 − 0.05/4 = 98.75%, so that the four hold jointly at 95%. `summarize_runs` re-reads
# the grid's `runs.csv`, so the runs are not trained again:

# %%
runs = pd.read_csv(Path(workdir.name) / "remedies" / "runs.csv")
joint = summarize_runs(runs, baseline="standard:elbo:plain", adjust="bonferroni")
joint.set_index("variant")[["mi_diff", "mi_diff_lo", "mi_diff_hi"]].round(2)

# %% [markdown]
# Adjusted (full run), BN-VAE's gain in MI still excludes 0, +0.48 [+0.44, +0.52] nats:
# the seeds agree on it even when the four comparisons must hold together. Skip-VAE's
# small gain does not survive: its interval now starts at −0.03. The SA-VAE and δ-VAE
# intervals crossed 0 already. With three seeds a t-interval has 2 degrees of freedom,
# so going from 95% to 98.75% about doubles its width (t quantiles 4.30 and 8.86).

# %%
delta = 0.1
floor = base.latent_dim * delta
print(
    f"δ = {delta} nats per dimension: posterior scale capped at "
    f"{committed_rate_scale(delta):.3f}, KL floor {floor:.2f} nats per point"
)
print(summary.set_index("variant")[["kl_mean", "mi_mean", "active_units_mean"]].round(3))

# %% [markdown]
# The δ-VAE posterior pays its committed rate: its KL is 0.42 nats per point, just
# above the floor 4 × 0.1 = 0.40 that the capped scale imposes, and its ELBO is about
# 0.4 nats below the plain model's, the price of that floor. But the KL carries almost
# no information: MI 0.03 nats (+0.03 [−0.01, +0.07] against plain) and no active
# unit: the committed nats are spent on posterior noise, not on $x$. The report's
# status rule reads information, $I_q(x; z_d)$, not the KL, so a KL floor does
# not fool it (as with a free-bits floor). Razavi et al. obtain their
# information from a *mismatch* between prior and posterior: an AR(1) prior across
# time steps against a factorised posterior, so that the committed rate can only be
# paid by encoding something about $x$. A plain cap on the posterior scale against a
# standard Normal prior creates no such pressure: the cheapest way to pay δ is noise.
#
# ## 2. Disentanglement measured, on images with known factors
#
# The `"shapes"` data set draws dSprites-like binary images of 16 × 16 pixels from
# four known factors: `shape` (square, circle, triangle), `scale` (discrete),
# `pos_x` and `pos_y` (continuous). With the estimator `"disentanglement"` a run
# encodes the held-out images, takes the posterior means $E_q[z \mid x]$ as the code,
# and scores it against the factors:
#
# * **MIG** (Chen et al. 2018): for each factor, the gap between the two code
#   dimensions most informative about it, normalised by the factor's entropy;
# * **SAP** (Kumar et al. 2018): the same gap in predictability by one dimension;
# * **DCI** (Eastwood & Williams 2018): disentanglement, completeness and
#   informativeness from the importances of gradient-boosted trees predicting each
#   factor from the code;
# * the **FactorVAE score** (Kim & Mnih 2018): how well a majority vote identifies the
#   factor held fixed from the least variable code dimension (lenient: a random
#   rotation of the true factors still scores well, so read it with the others).
#
# All four lie in [0, 1], higher is more disentangled. The objectives: the plain ELBO;
# β-TCVAE (`betatc`, Chen et al. 2018), which weighs the total correlation of the
# aggregate posterior by β = 6; and FactorVAE (`factorvae`, Kim & Mnih 2018), which
# estimates the same total correlation with a discriminator and weighs it by γ = 6.4.
# An MLP VAE with 6 latent dimensions, for the 4 factors.

# %%
shapes_base = RunConfig(
    dataset="shapes",
    dataset_options={"n": N_SHAPES, "size": 16},
    valid_fraction=0.2,
    model="mlp",
    latent_dim=6,
    epochs=SHAPE_EPOCHS,
    batch_size=100,
    lr=2e-3,
    elbo_options={"jit": False},
    estimators=("kl", "au", "mi", "disentanglement"),
    bootstrap=0,
    posterior_samples=20,
    posterior_points=200,
    disentanglement_options={"n_estimators": 10 if SMOKE else 100},
)
torch.manual_seed(0)
shapes = compare(
    base=shapes_base,
    elbos=["elbo", "betatc", "factorvae"],
    seeds=SEEDS,
    out=Path(workdir.name) / "shapes",
    iw_samples=50,
    jobs=1,
    progress=False,
)
print(format_summary(shapes))

# %%
scores = [
    "mig",
    "sap",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "factorvae_score",
]
table = shapes.set_index("objective")[
    ["active_units_mean", "mi_mean", "iw_log_likelihood_mean"]
    + [f"{s}_mean" for s in scores]
    + [f"{s}_std" for s in scores]
]
table.round(3)

# %%
plot_paired(
    shapes,
    ["mig", "sap", "dci_disentanglement", "factorvae_score"],
    ["Δ MIG", "Δ SAP", "Δ DCI disentanglement", "Δ FactorVAE score"],
)

# %% [markdown]
# Reading the full run (2000 images, 15 epochs, 3 seeds). At this budget neither
# objective improves any disentanglement metric: every paired difference of MIG, SAP,
# DCI disentanglement and the FactorVAE score has an interval containing 0. β-TCVAE's
# point estimates are within ±0.04 of the plain ELBO's; the FactorVAE objective's are
# lower on all four (MIG 0.05 against 0.08, DCI disentanglement 0.17 against 0.29,
# FactorVAE score 0.62 against 0.73), not significantly with three seeds. All three
# codes are far from disentangled (MIG at most 0.10, DCI disentanglement at most 0.29),
# while they are about equally informative (DCI informativeness 0.63 to 0.65).
# β-TCVAE pays for its total-correlation penalty: 4 active units on every seed against
# 5 on average, 1.23 nats less MI [−1.43, −1.03] and a 2.11 nats lower IW
# log-likelihood [−3.89, −0.33]. The FactorVAE objective's MI and IW log-likelihood
# differences are not significant. So on this small data set and short training, the
# factorisation penalties did not buy disentanglement, and β-TCVAE cost likelihood;
# with three seeds the spread of the metrics is as large as any effect. Whether longer
# training or larger β, γ help is a question for a longer grid.

# %%
workdir.cleanup()  # skip this cell to keep the grid folders and open their report.html pages

# %% [markdown]
# The same two grids from the command line:
#
# ```bash
# pyrocollapse compare --dataset sequences --dataset-option n=1000 \
#     --dataset-option vocab_size=24 --dataset-option max_len=12 --dataset-option n_topics=4 \
#     --valid-fraction 0.2 --model sequence --latent-dim 4 --model-option embed=32 \
#     --model-option hidden=64 --model-option cell=lstm --epochs 10 --batch-size 50 --lr 3e-3 \
#     --estimators kl,au,mi,iw --bootstrap 0 --posterior-samples 20 --posterior-points 200 \
#     --importance-samples 50 --priors standard --elbos elbo --elbo-option elbo.jit=false \
#     --variants plain,skip,bn,delta,sa --variant-option skip.skip=true \
#     --variant-option bn.posterior=batchnorm --variant-option delta.posterior=delta \
#     --variant-option sa.refine_steps=5 --seeds 3 --out runs/remedies
# pyrocollapse compare --dataset shapes --dataset-option n=2000 --dataset-option size=16 \
#     --valid-fraction 0.2 --model mlp --latent-dim 6 --epochs 15 --batch-size 100 --lr 2e-3 \
#     --estimators kl,au,mi,iw,disentanglement --bootstrap 0 --posterior-samples 20 \
#     --posterior-points 200 --importance-samples 50 --priors standard \
#     --elbos elbo,betatc,factorvae --elbo-option elbo.jit=false \
#     --elbo-option betatc.jit=false --elbo-option factorvae.jit=false --seeds 3 --out runs/shapes
# ```
#
# ## Summary
#
# * `compare(..., variants=[...], variant_options={...})` adds model variants as a
#   third axis of the grid and reports paired differences against a baseline variant
#   with 95% intervals, the way to decide whether a remedy helped.
# * On the collapsing LSTM sequence VAE (full run): BN-VAE raised MI by 0.48 nats and
#   made 3 to 4 units active at an unchanged held-out log-likelihood; SA-VAE made all 4
#   active with more MI but a wide interval, a slightly (not significantly) lower
#   log-likelihood and a much higher cost; skip-VAE added only 0.05 nats; the δ-VAE
#   posterior paid its committed KL without carrying information, which the
#   information-based status rule reports as collapse.
# * On shapes, MIG, SAP, DCI and the FactorVAE score come with every run that has
#   known factors; at this budget β-TCVAE and FactorVAE did not improve them, and
#   β-TCVAE cost 2 nats of log-likelihood.
#
# **References.** Dieng, Kim, Rush & Blei (2019), Avoiding Latent Variable Collapse
# with Generative Skip Models, AISTATS. Zhu, Bi, Liu, Ma, Li & Wu (2020), A Batch
# Normalized Inference Network Keeps the KL Vanishing Away, ACL. Razavi, van den Oord,
# Poole & Vinyals (2019), Preventing Posterior Collapse with delta-VAEs, ICLR. Kim,
# Wiseman, Miller, Sontag & Rush (2018), Semi-Amortized Variational Autoencoders, ICML.
# Chen, Li, Grosse & Duvenaud (2018), Isolating Sources of Disentanglement in VAEs,
# NeurIPS. Kim & Mnih (2018), Disentangling by Factorising, ICML. Kumar, Sattigeri &
# Balakrishnan (2018), Variational Inference of Disentangled Latent Concepts from
# Unlabeled Observations, ICLR. Eastwood & Williams (2018), A Framework for the
# Quantitative Evaluation of Disentangled Representations, ICLR.
