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
# # 1. What posterior collapse looks like
#
# A variational autoencoder fits a decoder $p_\theta(x \mid z)$ and an encoder
# $q_\phi(z \mid x)$ by maximising the evidence lower bound
#
# $$
# \mathrm{ELBO}(x) = \mathbb{E}_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]
#   - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big) \le \log p_\theta(x).
# $$
#
# *Posterior collapse* is the solution in which $q_\phi(z \mid x) = p(z)$ for every
# $x$: the KL term is zero, and $z$ carries no information about $x$. It is the
# rule rather than the exception when the decoder is strong enough to model the data
# without $z$, the classic case being an autoregressive language model
# (Bowman et al. 2016): putting information into $z$ costs KL nats that the decoder
# can save no other way (Chen et al. 2017).
#
# This notebook trains such a model, a sequence VAE with an LSTM decoder, watches it
# collapse, and reads every symptom with pyrocollapse:
#
# 1. the training history (the KL falls to zero while the ELBO keeps improving);
# 2. the collapse report of `diagnose`: KL per dimension, active units, mutual
#    information $I_q(x; z) \approx 0$;
# 3. the posterior densities $q(z_d \mid x)$ lying on top of the prior;
# 4. the ArviZ summary, where the aggregate posterior equals the prior;
# 5. and, for contrast, the same model with a *blinded* decoder that must use $z$.

# %%
import os

import numpy as np
import pandas as pd
import pyro
import torch
from matplotlib.figure import Figure

from pyrocollapse import diagnose, fit, load_dataset, plots, summarize, to_inference_data
from pyrocollapse.data import decode_tokens
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import SequenceVAE

# %matplotlib inline

SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
N_SEQUENCES = 300 if SMOKE else 1500
EPOCHS = 2 if SMOKE else 25
POSTERIOR_DRAWS = 20 if SMOKE else 200

pyro.set_rng_seed(0)
torch.set_num_threads(2)
print(f"smoke mode: {SMOKE}: {N_SEQUENCES} sequences, {EPOCHS} epochs")

# %% [markdown]
# ## Text-like data with a known latent factor
#
# `load_dataset("sequences")` draws token sequences from a topic-conditioned Markov
# chain: each sequence picks one of four topics, and every word falls in the topic's
# block of the vocabulary with probability at least 0.9. The topic is a genuine
# latent variable worth $\log 4 \approx 1.39$ nats, and the data set records it in
# `factors`, so we can check later what $z$ learned. But an autoregressive decoder can
# also read the topic off the words it has already generated, so it does not *need*
# $z$.

# %%
data = load_dataset("sequences", n=N_SEQUENCES, vocab_size=24, max_len=12, n_topics=4, seed=0)
train, valid = data.split(0.2, seed=0)
print(data, "->", len(train), "train /", len(valid), "held out")
for ids, topic in zip(data.data[:6], data.factors[:6, 0]):
    print(f"topic {int(topic)}:", " ".join(decode_tokens(ids, data.vocab)))

# %% [markdown]
# ## A strong decoder, trained with the plain ELBO
#
# `SequenceVAE` encodes a sequence with an LSTM into a diagonal Normal
# $q(z \mid x)$ and decodes it with an LSTM language model that receives $z$ in its
# initial state and at every step, and sees the previous *true* word (teacher
# forcing):
# $p(x \mid z) = \prod_t p(x_t \mid x_{<t}, z)$. `fit` trains any Pyro model/guide
# pair with any Pyro ELBO and records, per epoch, the ELBO terms, the KL per latent
# dimension and two collapse indicators on a fixed monitoring subset: the number of
# active units and the mutual information.

# %%
pyro.clear_param_store()
strong = SequenceVAE(len(data.vocab), latent_dim=4, embed=32, hidden=64)
history = fit(
    strong.model,
    strong.guide,
    train.data,
    loss=PlainELBO(),
    optim=pyro.optim.Adam({"lr": 3e-3}),
    epochs=EPOCHS,
    batch_size=50,
    seed=0,
    progress=False,  # True shows a progress bar
)
history.to_dataframe()[["epoch", "elbo", "reconstruction", "kl", "active_units/z", "mi/z"]].round(3)

# %% [markdown]
# All columns are nats per sequence. In the full run the KL term drops to a few
# thousandths of a nat within the first epochs, the active units and the mutual
# information follow it to zero, and the ELBO nevertheless keeps improving: the
# decoder is learning the language model on its own, and the encoder has given up.
# (In smoke mode, two epochs, you only see the start of this.)

# %%
plots.plot_training(history)

# %% [markdown]
# ## The collapse report
#
# `diagnose` works on any Pyro model/guide pair: it runs the guide over the held-out
# data, replays the model on the guide's draws, and computes per latent dimension $d$
#
# * the KL $\mathbb{E}_x \mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))$ (analytic here);
# * the *active-unit* statistic $A_d = \mathrm{Cov}_x(\mathbb{E}_q[z_d \mid x])$
#   (Burda et al. 2016 call a dimension active when $A_d > 0.01$);
# * the mutual information $I_q(x; z_d)$ under the aggregate posterior
#   $q(z) = \frac{1}{N}\sum_n q(z \mid x_n)$ (He et al. 2019), with its Monte
#   Carlo standard error;
# * the R-hat of the posterior draws with each observation as one chain ($\approx 1$
#   when $q(z_d \mid x)$ does not depend on $x$), and the decoder's sensitivity to
#   $z_d$.
#
# The status of a dimension comes from the information it carries: `collapsed` when
# $I_q(x; z_d)$ is not measurably above zero (within two standard errors, or below
# 0.01 nats), `near-collapse` when it is measurably above zero but below a practical
# floor of 0.1 nats, `active` above the floor. The rule is printed with the report.
#
# With the `"causes"` estimator (and the training `history`), the report also says
# *why* the model collapsed and *what to try next*: it measures the evidence for each
# cause the literature names (a decoder that models $x$ without $z$, a prior that
# does not fit, an encoder that lags the decoder) and turns the best-supported ones
# into command-line flags and Python calls.

# %%
strong.eval()  # evaluation mode (matters for models with word dropout)
report = diagnose(
    strong.model,
    strong.guide,
    valid.data,
    strong.latent_sites,
    estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "causes"),
    history=history,  # when the KL fell, for the training-dynamics evidence
    setting={"model": "sequence", "prior": "standard", "elbo": "elbo"},
)
print(report)

# %% [markdown]
# In the full run every dimension is `collapsed` and the verdict is **full
# collapse**: the KL, the active-unit variance and the mutual information are all a
# few thousandths at most (within two standard errors of zero), and every R-hat is
# $1.00$.
#
# **Why.** The report ranks *decoder capacity* first, with evidence 1.00: with $z$
# held fixed, the decoder gains about 2.5 nats per sequence from reading the
# sequence's own previous words instead of another sequence's (teacher forcing), and
# nothing from the sequence's own $z$. The other causes have no support: the model's
# posterior $p(z \mid x)$ is as flat as the encoder's (no lagging encoder), and a
# prior fitted to the aggregate posterior would gain nothing (no prior mismatch).
# **What next** lists word dropout, free bits and an MI-regularised objective, each
# with its `pyrocollapse run` flags and Python call; `pyrocollapse compare
# --from-run RUN_FOLDER` would train them all against this run. The last section of
# this notebook tries the first one.
#
# The KL bars make the per-dimension picture visible at a glance (a red x marks a
# collapsed dimension):

# %%
report.plot("kl")

# %% [markdown]
# ## $I_q(x; z) \approx 0$: ELBO surgery
#
# Averaged over the data, the KL term splits into the information $z$ carries about
# $x$ and the distance of the aggregate posterior from the prior
# (Hoffman & Johnson 2016):
#
# $$
# \mathbb{E}_x\, \mathrm{KL}\big(q(z \mid x) \,\|\, p(z)\big)
#   = I_q(x; z) + \mathrm{KL}\big(q(z) \,\|\, p(z)\big).
# $$
#
# Collapse sets *both* terms to zero. A KL near zero alone would also be compatible
# with an informative $z$ whose aggregate posterior matches the prior perfectly; it is
# the mutual information that says $z$ is useless. Its estimator is bounded by
# $\log N$ for $N$ held-out points, far above the values we see.

# %%
site = report["z"]
print(f"E_x KL(q(z|x) || p(z)) = {site.kl:8.4f} nats")
print(f"I_q(x; z)              = {site.mi:8.4f} nats   (estimator bound log N = {np.log(report.num_points):.2f})")
print(f"KL(q(z) || p(z))       = {site.aggregate_kl:8.4f} nats")
print(f"identity gap           = {site.kl_identity_gap:+8.4f} nats   (Monte Carlo s.e. {site.kl_identity_stderr:.4f})")

# %% [markdown]
# ## Every posterior is the prior
#
# The report keeps, for a few held-out sequences, the densities
# $q(z_d \mid x_n)$ on a grid. For a collapsed dimension they all lie on top of the
# prior $p(z_d)$ (grey).

# %%
report.plot("densities")

# %% [markdown]
# ## The ArviZ view: the aggregate posterior equals the prior
#
# `to_inference_data` turns the guide's draws into an `arviz.InferenceData`:
# the `posterior` group holds draws of $z$ for every held-out sequence (dims
# `chain, draw, data, z_dim_0`: named after the plates), the `prior` group ancestral draws of $z$, plus the
# observed data and the log-likelihood of every draw. `summarize` then puts, per
# latent dimension, the aggregate posterior (all draws of all sequences pooled) next
# to the prior, with two collapse columns:
#
# * `sd_ratio`: the average width of $q(z_d \mid x_n)$ over the prior's width;
#   $\approx 1$ when every posterior is as wide as the prior;
# * `rhat_obs`: ArviZ's R-hat with each sequence as one chain; $\approx 1$ when the
#   posteriors of different sequences are indistinguishable.

# %%
idata = to_inference_data(strong.model, strong.guide, valid.data, num_samples=POSTERIOR_DRAWS)
print(idata)

# %%
columns = ["mean", "sd", "prior_mean", "prior_sd", "obs_sd", "sd_ratio", "rhat_obs"]
summarize(idata)[columns].round(3)

# %% [markdown]
# For the collapsed model the pooled mean and standard deviation match the prior's
# (0 and 1) to Monte Carlo precision, `sd_ratio` is 1 and `rhat_obs` is 1: the
# ArviZ summary of the "posterior" is the summary of the prior.
#
# ## Weaken the decoder, and $z$ comes alive
#
# Nothing is wrong with the optimiser: the ELBO *prefers* to ignore $z$ here. Take
# the decoder's shortcut away and the same objective makes $z$ useful. With
# `word_dropout=1.0` every input word of the decoder is replaced by `<unk>` during
# training (Bowman et al. 2016), so the decoder no longer sees the prefix and can
# learn the topic only from $z$.

# %%
pyro.clear_param_store()
blind = SequenceVAE(len(data.vocab), latent_dim=4, embed=32, hidden=64, word_dropout=1.0)
blind_history = fit(
    blind.model,
    blind.guide,
    train.data,
    loss=PlainELBO(),
    optim=pyro.optim.Adam({"lr": 3e-3}),
    epochs=EPOCHS,
    batch_size=50,
    seed=0,
    progress=False,
)
blind.eval()  # no word dropout when evaluating
blind_report = diagnose(blind.model, blind.guide, valid.data, blind.latent_sites)
print(blind_report)

# %% [markdown]
# `CollapseReport.compare` lines the two reports up dimension by dimension:

# %%
table = report.compare(blind_report)
table[["dim", "kl_before", "kl_after", "mi_before", "mi_after", "status_before", "status_after"]].round(3)

# %%
fig = Figure(figsize=(11, 3.5), layout="constrained")
left, right = fig.subplots(1, 2, sharey=True)
plots.plot_kl_per_dim(report, ax=left)
plots.plot_kl_per_dim(blind_report, ax=right)
left.set_title(f"strong decoder: {report.verdict}")
right.set_title(f"blinded decoder: {blind_report.verdict}")
fig


# %% [markdown]
# In the full run the blinded model keeps one dimension (sometimes two) active with a
# mutual information of about one nat, most of the $\log 4 \approx 1.39$ nats of the
# topic, and leaves the others collapsed: it uses only as many dimensions as it
# needs. Does the active dimension encode the topic? Average the posterior means
# $\mathbb{E}_q[z \mid x]$ per true topic:

# %%
def mean_code_per_topic(vae):
    with torch.no_grad():
        means = vae.encode(valid.data).mean.numpy()
    frame = pd.DataFrame(means, columns=[f"z{d}" for d in range(means.shape[1])])
    return frame.assign(topic=valid.factors[:, 0].int().numpy()).groupby("topic").mean()


pd.concat({"strong decoder": mean_code_per_topic(strong), "blinded decoder": mean_code_per_topic(blind)}, axis=1).round(2)

# %% [markdown]
# The strong decoder's codes are zero whatever the topic; the blinded decoder's
# active dimension separates the topics. In our full run it separates them into three
# groups, two topics sharing one code, which is why $I_q$ is close to
# $\log 3 \approx 1.1$ rather than $\log 4$ nats: one dimension can order four topics
# along a line, but the model has not (yet) pulled the last two apart. The ArviZ
# summary shows the same thing from the other side: the active dimension's
# posteriors are narrower than the prior (`sd_ratio` well below 1) and differ from
# sequence to sequence (`rhat_obs` well above 1).

# %%
blind_idata = to_inference_data(blind.model, blind.guide, valid.data, num_samples=POSTERIOR_DRAWS)
summarize(blind_idata)[columns].round(3)

# %%
blind_report.plot("dimensions")

# %% [markdown]
# Finally, the price: the blinded model has a *worse* ELBO, because a decoder that
# cannot see the prefix is a worse language model. Collapse was the ELBO's optimum
# for the strong decoder, not a training accident; the other notebooks are about
# changing that trade-off.

# %%
pd.DataFrame(
    {"strong decoder": report.elbo, "blinded decoder": blind_report.elbo}
).loc[["elbo", "reconstruction", "kl"]].round(3)

# %% [markdown]
# ## Summary
#
# | symptom | where to read it | collapsed value |
# | --- | --- | --- |
# | KL per dimension | `report.plot("kl")`, `history.kl_matrix()` | $\approx 0$ |
# | active units | `report["z"].active_units` | 0 |
# | mutual information | `report["z"].mi` | $\approx 0$ |
# | posterior densities | `report.plot("densities")` | every $q(z_d \mid x)$ on the prior |
# | ArviZ summary | `summarize(to_inference_data(...))` | `sd_ratio` $\approx 1$, `rhat_obs` $\approx 1$ |
#
# Next: notebook 2 predicts collapse in closed form for the linear VAE; notebooks 3
# to 6 try the remedies (annealing, free bits, aggressive encoder training, priors,
# information-preserving objectives, word dropout); notebook 7 runs the diagnostics
# on a model written from scratch.
#
# **References.** Bowman et al. (2016), Generating Sentences from a Continuous
# Space, CoNLL. Chen et al. (2017), Variational Lossy Autoencoder, ICLR. Burda,
# Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR. He et al.
# (2019), Lagging Inference Networks and Posterior Collapse in VAEs, ICLR. Hoffman &
# Johnson (2016), ELBO surgery, NIPS AABI workshop.
