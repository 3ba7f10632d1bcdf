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
# # 4. Priors: what each does to the latent space
#
# The KL term of the ELBO, averaged over the data, is
# $I_q(x; z) + \mathrm{KL}\big(q(z) \,\|\, p(z)\big)$ (Hoffman & Johnson 2016): part
# of what a VAE pays for its latent code is the mismatch between the *aggregate
# posterior* $q(z) = \frac1N \sum_n q(z \mid x_n)$ and the prior. A standard Normal
# prior charges for every departure of $q(z)$ from a round Gaussian blob, so a
# model with clustered data either distorts its code into a blob or switches
# dimensions off. A richer prior can follow the shape of $q(z)$ and make information
# cheaper.
#
# pyrocollapse's priors are Pyro programs that a model calls inside its own plates
# (`z = prior("z")`), so any prior fits any model:
#
# | prior | $p(z)$ | reference |
# | --- | --- | --- |
# | `StandardNormalPrior` | $\mathcal N(0, I)$ | Kingma & Welling 2014 |
# | `MixturePrior` | $\sum_k \pi_k \mathcal N(\mu_k, \operatorname{diag}\sigma_k^2)$, learned | Dilokthanakul et al. 2016 |
# | `VampPrior` | $\frac1K \sum_k q(z \mid u_k)$, learned pseudo-inputs $u_k$ | Tomczak & Welling 2018 |
# | `HierarchicalPrior` | $\int \mathcal N(z; \mu(t), \operatorname{diag}\sigma(t)^2)\, \mathcal N(t; 0, I)\, dt$ | Sønderby et al. 2016; Klushyn et al. 2019 |
# | `ARDPrior` | $\mathcal N(0, \operatorname{diag} s^2)$, relevances $s_d$ learned | MacKay 1994; Bishop 1999 |
# | `FlowPrior` | $\mathcal N(0, I)$ pushed through learned spline couplings | Rezende & Mohamed 2015; Durkan et al. 2019 |
#
# We fit the same MLP VAE with each prior to data whose true latent variable is a
# two-dimensional mixture of four Gaussians, and look at the latent space each one
# produces.

# %%
import os
import time

import numpy as np
import pandas as pd
import pyro
import torch
from matplotlib.figure import Figure

from pyrocollapse import diagnose, fit, load_dataset
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import MLPVAE
from pyrocollapse.priors import (
    ARDPrior,
    FlowPrior,
    HierarchicalPrior,
    MixturePrior,
    StandardNormalPrior,
    VampPrior,
)

# %matplotlib inline

SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
N_POINTS = 500 if SMOKE else 2000
EPOCHS = 2 if SMOKE else 60
LATENT_DIM = 4  # twice the true latent dimension

pyro.set_rng_seed(0)
torch.set_num_threads(2)
print(f"smoke mode: {SMOKE}: {N_POINTS} points, {EPOCHS} epochs")

# %% [markdown]
# ## Data from a clustered latent space
#
# `load_dataset("mixture")` draws a 2-dimensional latent $z^\ast$ from a mixture of
# four unit Gaussians on a circle, pushes it through a fixed random tanh network into
# 20 dimensions and adds a little noise. The true latent and its mixture component
# are kept in `factors`.

# %%
data = load_dataset("mixture", n=N_POINTS, n_components=4, latent_dim=2, input_dim=20, seed=0)
train, valid = data.split(0.2, seed=0)
component = valid.factors[:, 2].int().numpy()
print(data, "factors:", data.factor_names)

fig = Figure(figsize=(3.5, 3.3), layout="constrained")
ax = fig.add_subplot()
ax.scatter(valid.factors[:, 0], valid.factors[:, 1], c=component, cmap="tab10", vmin=0, vmax=9, s=6)
ax.set(title="true latent z* (held out)", xlabel="z*_0", ylabel="z*_1")
fig


# %% [markdown]
# ## One model, six priors
#
# Each prior is built with `latent_dim=4` and handed to an `MLPVAE` with a Gaussian
# likelihood. Two of them need a word:
#
# * the `VampPrior`'s components are the model's own encoder evaluated at
#   learnable pseudo-inputs; built with `encoder=None`, it binds to the encoder of
#   the model it is given to. Seeding the pseudo-inputs with data points speeds up
#   training (Tomczak & Welling 2018). `support="real"` because the data are
#   real-valued.
# * the `HierarchicalPrior` adds a second latent site, `z_top` ($t$ above), and the
#   matching guide piece $q(t \mid z)$, which the VAE's guide calls automatically.
#
# The plain ELBO trains all of them. Where the KL has no closed form (mixtures,
# flows, hierarchies) the pyrocollapse ELBO uses the Monte Carlo estimate
# $\log q(z \mid x) - \log p(z)$.

# %%
def make_prior(name):
    if name == "standard":
        return StandardNormalPrior(LATENT_DIM)
    if name == "mixture":
        return MixturePrior(LATENT_DIM, n_components=4)
    if name == "vamp":
        return VampPrior(None, n_pseudo=50, input_shape=(20,), latent_dim=LATENT_DIM, support="real")
    if name == "hierarchical":
        return HierarchicalPrior(LATENT_DIM, top_dim=2)
    if name == "ard":
        return ARDPrior(LATENT_DIM)
    if name == "flow":
        return FlowPrior(LATENT_DIM, "spline_coupling", num_transforms=2)
    raise ValueError(name)


models, reports = {}, {}
rows = []
for name in ["standard", "mixture", "vamp", "hierarchical", "ard", "flow"]:
    pyro.clear_param_store()
    prior = make_prior(name)
    vae = MLPVAE(20, LATENT_DIM, prior, likelihood="gaussian", hidden=(64, 64))
    if name == "vamp":
        prior.init_pseudo_inputs(train.data)
    start = time.perf_counter()
    fit(vae.model, vae.guide, train.data, loss=PlainELBO(), optim=pyro.optim.Adam({"lr": 3e-3}),
        epochs=EPOCHS, batch_size=100, seed=0, progress=False)
    seconds = time.perf_counter() - start
    sites = ("z", "z_top") if name == "hierarchical" else ("z",)
    report = diagnose(vae.model, vae.guide, valid.data, sites, estimators=("kl", "au", "mi", "iw"))
    models[name], reports[name] = vae, report
    site = report["z"]
    rows.append({"prior": name, "active units": site.active_units, "MI": site.mi, "KL": site.kl,
                 "marginal KL": site.aggregate_kl, "ELBO": report.elbo["elbo"],
                 "IW log p(x)": report.elbo["log_likelihood"], "KL estimator": site.kl_estimator,
                 "seconds": seconds})
results = pd.DataFrame(rows).set_index("prior")
results.round(3)

# %% [markdown]
# How to read the table (full run):
#
# * **standard** and **ard**: two of the four dimensions are active and two
#   collapsed: the model uses as many dimensions as the data have and switches the
#   surplus ones off. This is the benign, *partial* collapse of a factorised decoder
#   (Dai et al. 2020).
# * **mixture**, **hierarchical** and **flow** reach a smaller marginal KL
#   $\mathrm{KL}(q(z) \,\|\, p(z))$ than the standard normal (about 0.42-0.46 nats
#   against 0.54): their priors have taken some of the shape of the aggregate
#   posterior, so the code pays less for its shape (the figure below shows what
#   shape). The VampPrior, with 50 pseudo-inputs trained for the same 60 epochs, does
#   not get there on this data (about 0.57).
# * "active units" counts *coordinates* that carry at least 0.1 nats of information
#   of their own, $I_q(x; z_d)$. Under a prior that does not factorise (mixture,
#   VampPrior, flow) the code need not align with the coordinate axes, so two
#   dimensions' worth of information can show up as four active units; the total
#   mutual information is the rotation-free measure, and it is similar for all six
#   priors (4.5-4.8 nats).
# * The IW log-likelihoods lie within about 0.45 nats of each other, about three
#   times their standard error (about 0.15 nats; `print(reports[name])` shows it),
#   with the flow highest and the VampPrior lowest: on this data the prior changes
#   the geometry of the code much more than the fit.
# * The KL estimator column says how the per-dimension KL was computed: analytic for
#   Gaussian priors, Monte Carlo against the univariate prior marginals for mixtures
#   and the VampPrior, and for the flow against marginals estimated from its joint
#   density (`_estimated_prior`; exact only for elementwise flows).
# * For the hierarchical prior the site `z` has a *conditional* prior $p(z \mid t)$,
#   so its "KL" and "marginal KL" are measured against that conditional at the guide's
#   draw of $t$ (the report says so in a note). They are not KLs to the marginal
#   $p(z)$, and the marginal KL can even come out negative.

# %% [markdown]
# ## The latent spaces
#
# For each model we plot the posterior means $\mathbb{E}_q[z \mid x]$ of the held-out
# points on the two dimensions with the largest KL, coloured by the true mixture
# component, over draws from the learned prior (grey). A good prior covers the codes
# and nothing else: prior draws far from any code are samples that decode to
# nothing like the data.

# %%
fig = Figure(figsize=(12, 7.5), layout="constrained")
for ax, (name, vae) in zip(fig.subplots(2, 3).ravel(), models.items()):
    site = reports[name]["z"]
    d0, d1 = np.sort(np.argsort(-site.kl_per_dim)[:2])
    with torch.no_grad():
        codes = vae.encode(valid.data).mean.numpy()
    draws = vae.prior.sample(2000).numpy()
    ax.scatter(draws[:, d0], draws[:, d1], s=2, color="0.75", label="prior draws")
    ax.scatter(codes[:, d0], codes[:, d1], c=component, cmap="tab10", vmin=0, vmax=9, s=6, label="codes")
    ax.set(title=f"{name}: {site.active_units}/{LATENT_DIM} active", xlabel=f"z{d0}", ylabel=f"z{d1}")
ax.legend(loc="lower right", fontsize="small", markerscale=3)
fig

# %% [markdown]
# The true latent is four clusters on a circle. With the standard (and ARD) prior the
# clusters are packed into one round blob, as the prior demands, and prior draws fill
# the gaps between clusters. The VampPrior and the flow prior recover the ring, and
# their prior draws follow it: a sample from those priors decodes to something that
# looks like data. The mixture prior can in principle put one component on each
# cluster, but trained from a random start it may strand a component (look for a
# small weight below). (In smoke mode the models have barely trained and the codes
# sit near the origin.)
#
# ## What each prior learned
#
# **Mixture.** The learned weights and component means; a mixture can also be
# initialised from codes by k-means (`MixturePrior.init_components`, as in VaDE),
# which avoids components stranded away from the data.

# %%
mixture = models["mixture"].prior
pd.DataFrame(mixture.means.detach().numpy(), columns=[f"mean z{d}" for d in range(LATENT_DIM)]).assign(
    weight=mixture.weights.numpy()).round(2)

# %% [markdown]
# **ARD.** Each dimension has its own prior scale $s_d$; `relevance()` normalises them
# by the largest, and `switched_off(threshold)` lists the dimensions whose scale fell
# below a threshold. In the full run the scales of the two collapsed dimensions have
# shrunk to well below those of the active ones. They shrink slowly, though: once
# $q(z_d \mid x) = p(z_d)$ the KL no longer depends on $s_d$, so only the decoder's
# dependence on $z_d$ drives it, and after this short run they are far from the
# `switched_off` threshold of 0.05. Read the relevances together with the KL column.

# %%
ard = models["ard"].prior
pd.DataFrame({"prior scale s_d": ard.scales.numpy(), "relevance": ard.relevance().numpy(),
              "KL": reports["ard"]["z"].kl_per_dim, "status": reports["ard"]["z"].status}).round(3)

# %% [markdown]
# **Hierarchical.** Both layers are diagnosed, because the model has two latent
# sites. The report states the status of `z` (against its conditional prior) and of
# `z_top`.

# %%
print(reports["hierarchical"])

# %% [markdown]
# **VampPrior.** Its components are the encoder's posteriors at the pseudo-inputs
# $u_k$, so the prior moves with the encoder. Against the prior's marginals $p(z_d)$
# (grey; a mixture of 50 encoder posteriors, hence its bumps), the posteriors of a few
# held-out points are narrow and each sits in its own part of the prior: the opposite
# of the picture of a collapsed dimension in notebook 1.

# %%
reports["vamp"].plot("densities")

# %% [markdown]
# ## Summary
#
# * The prior sets the price of the aggregate posterior's shape: with
#   $\mathcal N(0, I)$ the code is squeezed into a round blob and surplus dimensions
#   are switched off; flexible priors (VampPrior, flow) follow the shape of the codes,
#   which lowers the marginal KL and makes prior samples look like data.
# * Count information with the mutual information, not only with active units: under
#   a non-factorised prior the code can be rotated against the coordinate axes.
# * Every prior is a swappable Pyro program; `diagnose` handles priors without a closed
#   form (Monte Carlo KL against univariate marginals) and extra latent sites
#   (hierarchical) and says which estimator it used.
# * A richer prior does not by itself prevent collapse caused by a strong decoder
#   (notebook 1): there the decoder, not the prior's shape, is the reason $z$ is
#   unused. Notebook 6 compares priors and objectives on sequences in one grid.
#
# **References.** Tomczak & Welling (2018), VAE with a VampPrior, AISTATS.
# Dilokthanakul et al. (2016), Deep Unsupervised Clustering with Gaussian Mixture
# VAEs. Jiang et al. (2017), Variational Deep Embedding, IJCAI. Sønderby et al.
# (2016), Ladder VAEs, NeurIPS. Klushyn et al. (2019), Learning Hierarchical Priors in
# VAEs, NeurIPS. MacKay (1994); Bishop (1999), Bayesian PCA, NeurIPS (ARD). Rezende &
# Mohamed (2015), Variational Inference with Normalizing Flows, ICML. Durkan et al.
# (2019), Neural Spline Flows, NeurIPS. Dai, Wang & Wipf (2020), The Usual Suspects?
# Reassessing Blame for VAE Posterior Collapse, ICML. Hoffman & Johnson (2016), ELBO
# surgery.
