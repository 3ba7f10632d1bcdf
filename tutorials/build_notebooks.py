"""Write the tutorial notebooks from readable Python.

Every notebook in ``tutorials/`` is defined here as a list of markdown and code cells, and
this script (re)writes the ``.ipynb`` files with their outputs stripped::

    python tutorials/build_notebooks.py            # rewrite every notebook
    python tutorials/build_notebooks.py --check    # exit 1 if a notebook is out of date

Edit the cells here, never the ``.ipynb`` files: ``tests/test_notebooks.py`` fails when a
committed notebook differs from what this script builds, or carries outputs.

Each notebook starts with one set-up cell that reads ``PYROCOLLAPSE_SMOKE``: with
``PYROCOLLAPSE_SMOKE=1`` the budgets (data sizes, epochs, samples) shrink so that CI can
execute every notebook in seconds; without it the notebooks tell their story with real
numbers in a few minutes each on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


def md(text: str) -> nbformat.NotebookNode:
    """A markdown cell (the text is dedented and stripped)."""
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    """A code cell without outputs (the text is dedented and stripped)."""
    return new_code_cell(textwrap.dedent(text).strip())


# ======================================================================================
# 01: what posterior collapse looks like
# ======================================================================================
def what_collapse_looks_like() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 1. What posterior collapse looks like

            A variational autoencoder fits a decoder $p_\theta(x \mid z)$ and an encoder
            $q_\phi(z \mid x)$ by maximising the evidence lower bound

            $$
            \mathrm{ELBO}(x) = \mathbb{E}_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]
              - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big) \le \log p_\theta(x).
            $$

            *Posterior collapse* is the solution in which $q_\phi(z \mid x) = p(z)$ for every
            $x$: the KL term is zero, and $z$ carries no information about $x$. It is the
            rule rather than the exception when the decoder is strong enough to model the data
            without $z$, the classic case being an autoregressive language model
            (Bowman et al. 2016): putting information into $z$ costs KL nats that the decoder
            can save no other way (Chen et al. 2017).

            This notebook trains such a model, a sequence VAE with an LSTM decoder, watches it
            collapse, and reads every symptom with pyrocollapse:

            1. the training history (the KL falls to zero while the ELBO keeps improving);
            2. the collapse report of `diagnose`: KL per dimension, active units, mutual
               information $I_q(x; z) \approx 0$;
            3. the posterior densities $q(z_d \mid x)$ lying on top of the prior;
            4. the ArviZ summary, where the aggregate posterior equals the prior;
            5. and, for contrast, the same model with a *blinded* decoder that must use $z$.
            """
        ),
        code(
            """
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

            %matplotlib inline

            SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
            N_SEQUENCES = 300 if SMOKE else 1500
            EPOCHS = 2 if SMOKE else 25
            POSTERIOR_DRAWS = 20 if SMOKE else 200

            pyro.set_rng_seed(0)
            torch.set_num_threads(2)
            print(f"smoke mode: {SMOKE}: {N_SEQUENCES} sequences, {EPOCHS} epochs")
            """
        ),
        md(
            r"""
            ## Text-like data with a known latent factor

            `load_dataset("sequences")` draws token sequences from a topic-conditioned Markov
            chain: each sequence picks one of four topics, and every word falls in the topic's
            block of the vocabulary with probability at least 0.9. The topic is a genuine
            latent variable worth $\log 4 \approx 1.39$ nats, and the data set records it in
            `factors`, so we can check later what $z$ learned. But an autoregressive decoder can
            also read the topic off the words it has already generated, so it does not *need*
            $z$.
            """
        ),
        code(
            """
            data = load_dataset("sequences", n=N_SEQUENCES, vocab_size=24, max_len=12, n_topics=4, seed=0)
            train, valid = data.split(0.2, seed=0)
            print(data, "->", len(train), "train /", len(valid), "held out")
            for ids, topic in zip(data.data[:6], data.factors[:6, 0]):
                print(f"topic {int(topic)}:", " ".join(decode_tokens(ids, data.vocab)))
            """
        ),
        md(
            r"""
            ## A strong decoder, trained with the plain ELBO

            `SequenceVAE` encodes a sequence with an LSTM into a diagonal Normal
            $q(z \mid x)$ and decodes it with an LSTM language model that receives $z$ in its
            initial state and at every step, and sees the previous *true* word (teacher
            forcing):
            $p(x \mid z) = \prod_t p(x_t \mid x_{<t}, z)$. `fit` trains any Pyro model/guide
            pair with any Pyro ELBO and records, per epoch, the ELBO terms, the KL per latent
            dimension and two collapse indicators on a fixed monitoring subset: the number of
            active units and the mutual information.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            All columns are nats per sequence. In the full run the KL term drops to a few
            thousandths of a nat within the first epochs, the active units and the mutual
            information follow it to zero, and the ELBO nevertheless keeps improving: the
            decoder is learning the language model on its own, and the encoder has given up.
            (In smoke mode, two epochs, you only see the start of this.)
            """
        ),
        code(
            """
            plots.plot_training(history)
            """
        ),
        md(
            r"""
            ## The collapse report

            `diagnose` works on any Pyro model/guide pair: it runs the guide over the held-out
            data, replays the model on the guide's draws, and computes per latent dimension $d$

            * the KL $\mathbb{E}_x \mathrm{KL}(q(z_d \mid x) \,\|\, p(z_d))$ (analytic here);
            * the *active-unit* statistic $A_d = \mathrm{Cov}_x(\mathbb{E}_q[z_d \mid x])$
              (Burda et al. 2016 call a dimension active when $A_d > 0.01$);
            * the mutual information $I_q(x; z_d)$ under the aggregate posterior
              $q(z) = \frac{1}{N}\sum_n q(z \mid x_n)$ (He et al. 2019), with its Monte
              Carlo standard error;
            * the R-hat of the posterior draws with each observation as one chain ($\approx 1$
              when $q(z_d \mid x)$ does not depend on $x$), and the decoder's sensitivity to
              $z_d$.

            The status of a dimension comes from the information it carries: `collapsed` when
            $I_q(x; z_d)$ is not measurably above zero (within two standard errors, or below
            0.01 nats), `near-collapse` when it is measurably above zero but below a practical
            floor of 0.1 nats, `active` above the floor. The rule is printed with the report.

            With the `"causes"` estimator (and the training `history`), the report also says
            *why* the model collapsed and *what to try next*: it measures the evidence for each
            cause the literature names (a decoder that models $x$ without $z$, a prior that
            does not fit, an encoder that lags the decoder) and turns the best-supported ones
            into command-line flags and Python calls.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            In the full run every dimension is `collapsed` and the verdict is **full
            collapse**: the KL, the active-unit variance and the mutual information are all a
            few thousandths at most (within two standard errors of zero), and every R-hat is
            $1.00$.

            **Why.** The report ranks *decoder capacity* first, with evidence 1.00: with $z$
            held fixed, the decoder gains about 2.5 nats per sequence from reading the
            sequence's own previous words instead of another sequence's (teacher forcing), and
            nothing from the sequence's own $z$. The other causes have no support: the model's
            posterior $p(z \mid x)$ is as flat as the encoder's (no lagging encoder), and a
            prior fitted to the aggregate posterior would gain nothing (no prior mismatch).
            **What next** lists word dropout, free bits and an MI-regularised objective, each
            with its `pyrocollapse run` flags and Python call; `pyrocollapse compare
            --from-run RUN_FOLDER` would train them all against this run. The last section of
            this notebook tries the first one.

            The KL bars make the per-dimension picture visible at a glance (a red x marks a
            collapsed dimension):
            """
        ),
        code(
            """
            report.plot("kl")
            """
        ),
        md(
            r"""
            ## $I_q(x; z) \approx 0$: ELBO surgery

            Averaged over the data, the KL term splits into the information $z$ carries about
            $x$ and the distance of the aggregate posterior from the prior
            (Hoffman & Johnson 2016):

            $$
            \mathbb{E}_x\, \mathrm{KL}\big(q(z \mid x) \,\|\, p(z)\big)
              = I_q(x; z) + \mathrm{KL}\big(q(z) \,\|\, p(z)\big).
            $$

            Collapse sets *both* terms to zero. A KL near zero alone would also be compatible
            with an informative $z$ whose aggregate posterior matches the prior perfectly; it is
            the mutual information that says $z$ is useless. Its estimator is bounded by
            $\log N$ for $N$ held-out points, far above the values we see.
            """
        ),
        code(
            """
            site = report["z"]
            print(f"E_x KL(q(z|x) || p(z)) = {site.kl:8.4f} nats")
            print(f"I_q(x; z)              = {site.mi:8.4f} nats   (estimator bound log N = {np.log(report.num_points):.2f})")
            print(f"KL(q(z) || p(z))       = {site.aggregate_kl:8.4f} nats")
            print(f"identity gap           = {site.kl_identity_gap:+8.4f} nats   (Monte Carlo s.e. {site.kl_identity_stderr:.4f})")
            """
        ),
        md(
            r"""
            ## Every posterior is the prior

            The report keeps, for a few held-out sequences, the densities
            $q(z_d \mid x_n)$ on a grid. For a collapsed dimension they all lie on top of the
            prior $p(z_d)$ (grey).
            """
        ),
        code(
            """
            report.plot("densities")
            """
        ),
        md(
            r"""
            ## The ArviZ view: the aggregate posterior equals the prior

            `to_inference_data` turns the guide's draws into an `arviz.InferenceData`:
            the `posterior` group holds draws of $z$ for every held-out sequence (dims
            `chain, draw, data, z_dim_0`: named after the plates), the `prior` group ancestral draws of $z$, plus the
            observed data and the log-likelihood of every draw. `summarize` then puts, per
            latent dimension, the aggregate posterior (all draws of all sequences pooled) next
            to the prior, with two collapse columns:

            * `sd_ratio`: the average width of $q(z_d \mid x_n)$ over the prior's width;
              $\approx 1$ when every posterior is as wide as the prior;
            * `rhat_obs`: ArviZ's R-hat with each sequence as one chain; $\approx 1$ when the
              posteriors of different sequences are indistinguishable.
            """
        ),
        code(
            """
            idata = to_inference_data(strong.model, strong.guide, valid.data, num_samples=POSTERIOR_DRAWS)
            print(idata)
            """
        ),
        code(
            """
            columns = ["mean", "sd", "prior_mean", "prior_sd", "obs_sd", "sd_ratio", "rhat_obs"]
            summarize(idata)[columns].round(3)
            """
        ),
        md(
            r"""
            For the collapsed model the pooled mean and standard deviation match the prior's
            (0 and 1) to Monte Carlo precision, `sd_ratio` is 1 and `rhat_obs` is 1: the
            ArviZ summary of the "posterior" is the summary of the prior.

            ## Weaken the decoder, and $z$ comes alive

            Nothing is wrong with the optimiser: the ELBO *prefers* to ignore $z$ here. Take
            the decoder's shortcut away and the same objective makes $z$ useful. With
            `word_dropout=1.0` every input word of the decoder is replaced by `<unk>` during
            training (Bowman et al. 2016), so the decoder no longer sees the prefix and can
            learn the topic only from $z$.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            `CollapseReport.compare` lines the two reports up dimension by dimension:
            """
        ),
        code(
            """
            table = report.compare(blind_report)
            table[["dim", "kl_before", "kl_after", "mi_before", "mi_after", "status_before", "status_after"]].round(3)
            """
        ),
        code(
            """
            fig = Figure(figsize=(11, 3.5), layout="constrained")
            left, right = fig.subplots(1, 2, sharey=True)
            plots.plot_kl_per_dim(report, ax=left)
            plots.plot_kl_per_dim(blind_report, ax=right)
            left.set_title(f"strong decoder: {report.verdict}")
            right.set_title(f"blinded decoder: {blind_report.verdict}")
            fig
            """
        ),
        md(
            r"""
            In the full run the blinded model keeps one dimension (sometimes two) active with a
            mutual information of about one nat, most of the $\log 4 \approx 1.39$ nats of the
            topic, and leaves the others collapsed: it uses only as many dimensions as it
            needs. Does the active dimension encode the topic? Average the posterior means
            $\mathbb{E}_q[z \mid x]$ per true topic:
            """
        ),
        code(
            """
            def mean_code_per_topic(vae):
                with torch.no_grad():
                    means = vae.encode(valid.data).mean.numpy()
                frame = pd.DataFrame(means, columns=[f"z{d}" for d in range(means.shape[1])])
                return frame.assign(topic=valid.factors[:, 0].int().numpy()).groupby("topic").mean()


            pd.concat({"strong decoder": mean_code_per_topic(strong), "blinded decoder": mean_code_per_topic(blind)}, axis=1).round(2)
            """
        ),
        md(
            r"""
            The strong decoder's codes are zero whatever the topic; the blinded decoder's
            active dimension separates the topics. In our full run it separates them into three
            groups, two topics sharing one code, which is why $I_q$ is close to
            $\log 3 \approx 1.1$ rather than $\log 4$ nats: one dimension can order four topics
            along a line, but the model has not (yet) pulled the last two apart. The ArviZ
            summary shows the same thing from the other side: the active dimension's
            posteriors are narrower than the prior (`sd_ratio` well below 1) and differ from
            sequence to sequence (`rhat_obs` well above 1).
            """
        ),
        code(
            """
            blind_idata = to_inference_data(blind.model, blind.guide, valid.data, num_samples=POSTERIOR_DRAWS)
            summarize(blind_idata)[columns].round(3)
            """
        ),
        code(
            """
            blind_report.plot("dimensions")
            """
        ),
        md(
            r"""
            Finally, the price: the blinded model has a *worse* ELBO, because a decoder that
            cannot see the prefix is a worse language model. Collapse was the ELBO's optimum
            for the strong decoder, not a training accident; the other notebooks are about
            changing that trade-off.
            """
        ),
        code(
            """
            pd.DataFrame(
                {"strong decoder": report.elbo, "blinded decoder": blind_report.elbo}
            ).loc[["elbo", "reconstruction", "kl"]].round(3)
            """
        ),
        md(
            r"""
            ## Summary

            | symptom | where to read it | collapsed value |
            | --- | --- | --- |
            | KL per dimension | `report.plot("kl")`, `history.kl_matrix()` | $\approx 0$ |
            | active units | `report["z"].active_units` | 0 |
            | mutual information | `report["z"].mi` | $\approx 0$ |
            | posterior densities | `report.plot("densities")` | every $q(z_d \mid x)$ on the prior |
            | ArviZ summary | `summarize(to_inference_data(...))` | `sd_ratio` $\approx 1$, `rhat_obs` $\approx 1$ |

            Next: notebook 2 predicts collapse in closed form for the linear VAE; notebooks 3
            to 6 try the remedies (annealing, free bits, aggressive encoder training, priors,
            information-preserving objectives, word dropout); notebook 7 runs the diagnostics
            on a model written from scratch.

            **References.** Bowman et al. (2016), Generating Sentences from a Continuous
            Space, CoNLL. Chen et al. (2017), Variational Lossy Autoencoder, ICLR. Burda,
            Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR. He et al.
            (2019), Lagging Inference Networks and Posterior Collapse in VAEs, ICLR. Hoffman &
            Johnson (2016), ELBO surgery, NIPS AABI workshop.
            """
        ),
    ]


# ======================================================================================
# 02: the linear VAE, collapse in closed form
# ======================================================================================
def linear_vae() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 2. The linear VAE: collapse predicted in closed form

            Is posterior collapse a failure of the optimiser, of the ELBO, or of the model?
            Lucas, Tucker, Grosse & Norouzi (2019) answer it for the one VAE that can be solved
            exactly, the *linear VAE*:

            $$
            p(z) = \mathcal{N}(0, I_k), \qquad
            p(x \mid z) = \mathcal{N}(W z + \mu, \sigma^2 I_D), \qquad
            q(z \mid x) = \mathcal{N}\big(V (x - \mu), \operatorname{diag}(s^2)\big).
            $$

            Its marginal likelihood is probabilistic PCA (Tipping & Bishop 1999). Write
            $\lambda_1 \ge \dots \ge \lambda_D$ for the eigenvalues of the data covariance and
            $u_i$ for its eigenvectors. Lucas et al. show that the ELBO has no spurious local
            optima, that its global optimum is the pPCA maximum-likelihood solution, and that
            at the optimum

            $$
            \|W_i\|^2 = \max(0,\ \lambda_i - \beta\sigma^2), \qquad
            \text{direction } i \text{ collapses} \iff \lambda_i \le \beta \sigma^2, \qquad
            \mathbb{E}_x \mathrm{KL}\big(q(z_i \mid x) \,\|\, p(z_i)\big)
              = \tfrac12 \max\!\Big(0,\ \log \frac{\lambda_i}{\beta\sigma^2}\Big),
            $$

            where $\beta$ is the weight of the KL term (a $\beta$-VAE, Higgins et al. 2017;
            $\beta = 1$ is the ELBO). Collapse is decided by the data's spectrum and the
            decoder's noise level, not by the training dynamics.

            This notebook makes the prediction with `LinearVAE.ppca_optimum` and
            `LinearVAE.collapsed_dimensions`, trains linear $\beta$-VAEs with Pyro, and checks
            that `diagnose`, which knows nothing about linear models, flags exactly the
            predicted dimensions with the predicted KL.
            """
        ),
        code(
            """
            import os

            import numpy as np
            import pandas as pd
            import pyro
            import torch
            from matplotlib.figure import Figure

            from pyrocollapse import diagnose, fit, load_dataset, plots
            from pyrocollapse.data import ppca_population_covariance
            from pyrocollapse.elbo import BetaELBO, PlainELBO
            from pyrocollapse.models import LinearVAE

            %matplotlib inline

            SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
            EPOCHS = 4 if SMOKE else 150
            BETAS = (0.5, 1.0, 2.0, 4.0)
            SIGMA = 1.0  # the decoder's fixed noise standard deviation
            # Adam with a decaying learning rate (lr * 0.998 ** step): minibatch noise would
            # otherwise keep the parameters jittering around the optimum we compare with
            OPTIM = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.998})

            pyro.set_rng_seed(0)
            torch.set_num_threads(2)
            print(f"smoke mode: {SMOKE}: {EPOCHS} epochs per model")
            """
        ),
        md(
            r"""
            ## Data with a known spectrum

            `load_dataset("ppca")` draws $x = W z + \mu + 0.5\,\varepsilon$ in $D = 8$
            dimensions with a 4-dimensional $z$, built so that the population covariance has
            the eigenvalues we ask for, $(6, 3, 1.5, 0.75)$, plus the noise floor
            $0.5^2 = 0.25$ four times. The sample covariance of 2000 points is close to that.
            """
        ),
        code(
            """
            data = load_dataset("ppca", n=2000, spectrum=(6.0, 3.0, 1.5, 0.75), noise=0.5, input_dim=8, seed=0)
            x = data.data
            population = torch.linalg.eigvalsh(ppca_population_covariance(data)).flip(0)
            sample = LinearVAE.ppca_optimum(x, 4, noise=SIGMA).eigenvalues
            pd.DataFrame({"population": population.numpy(), "sample": sample.numpy()}).round(3).T
            """
        ),
        md(
            r"""
            ## The prediction

            We fix the decoder's noise at $\sigma = 1$ and give the model $k = 4$ latent
            dimensions, one per signal direction. The collapse threshold $\beta\sigma^2$ then
            moves through the spectrum as $\beta$ goes from 0.5 to 4, and each doubling of
            $\beta$ should switch off one more direction:
            `collapsed_dimensions` applies the rule, and `ppca_optimum(..., beta=...)` gives
            the whole optimum (loading, encoder, KL per dimension).
            """
        ),
        code(
            """
            optima = {beta: LinearVAE.ppca_optimum(x, 4, noise=SIGMA, beta=beta) for beta in BETAS}
            prediction = pd.DataFrame(
                {
                    f"beta={beta:g}": [
                        "collapsed" if c else f"KL {kl:.3f}"
                        for c, kl in zip(
                            LinearVAE.collapsed_dimensions(opt.leading_eigenvalues, SIGMA, beta=beta),
                            opt.kl_per_dim,
                        )
                    ]
                    for beta, opt in optima.items()
                },
                index=[f"lambda_{i + 1} = {lam:.2f}" for i, lam in enumerate(optima[1.0].leading_eigenvalues)],
            )
            prediction
            """
        ),
        md(
            r"""
            ## Training linear $\beta$-VAEs

            `LinearVAE(8, 4, noise=1.0)` is an ordinary Pyro model/guide pair, and
            `BetaELBO(beta)` an ordinary Pyro ELBO with the KL term weighted by $\beta$. Each
            model starts from small random weights; `fit` records the KL of every latent
            dimension at every epoch.
            """
        ),
        code(
            """
            models, histories, reports = {}, {}, {}
            for beta in BETAS:
                pyro.clear_param_store()
                vae = LinearVAE(8, 4, noise=SIGMA)
                histories[beta] = fit(
                    vae.model,
                    vae.guide,
                    x,
                    loss=BetaELBO(beta),
                    optim=OPTIM,
                    epochs=EPOCHS,
                    batch_size=200,
                    seed=0,
                    progress=False,
                )
                models[beta] = vae
                reports[beta] = diagnose(vae.model, vae.guide, x, vae.latent_sites, max_points=None)
                print(f"beta={beta:g}: {reports[beta]['z'].active_units}/4 active units, "
                      f"{histories[beta][-1].values['time']:.1f} s")
            """
        ),
        md(
            r"""
            ## The diagnostics agree with the prediction

            The trained model's latent dimensions come out in arbitrary order (and sign), so we
            sort both the diagnosed and the predicted KL from largest to smallest before
            comparing them. The prediction is for the *optimum*; the diagnosis is of a trained
            model, estimated from its guide.
            """
        ),
        code(
            """
            rows = []
            for beta in BETAS:
                site, opt = reports[beta]["z"], optima[beta]
                order = np.argsort(-site.kl_per_dim)
                for rank, d in enumerate(order):
                    rows.append(
                        {
                            "beta": beta,
                            "direction": rank + 1,
                            "lambda": float(opt.leading_eigenvalues[rank]),
                            "predicted KL": float(opt.kl_per_dim[rank]),
                            "diagnosed KL": float(site.kl_per_dim[d]),
                            "predicted": "collapsed" if bool(opt.collapsed[rank]) else "active",
                            "diagnosed": site.status[d],
                        }
                    )
            agreement = pd.DataFrame(rows)
            agreement["agree"] = agreement["predicted"] == agreement["diagnosed"]
            agreement.round(3)
            """
        ),
        code(
            """
            print(f"statuses agreeing with the rule: {agreement['agree'].sum()}/{len(agreement)}")
            error = (agreement["diagnosed KL"] - agreement["predicted KL"]).abs()
            print(f"largest |diagnosed - predicted| KL: {error.max():.3f} nats")
            """
        ),
        md(
            r"""
            In the full run all 16 statuses agree with the rule and every diagnosed KL is
            within about a hundredth of a nat of its closed form. (In smoke mode the models are
            trained for a few epochs only and are far from the optimum, so expect
            disagreement.) The bars show the same: one more direction switched off per doubling
            of $\beta$, with the predicted KL (black ticks) on top of the diagnosed bars.
            """
        ),
        code(
            """
            fig = Figure(figsize=(13, 3.2), layout="constrained")
            for ax, beta in zip(fig.subplots(1, len(BETAS), sharey=True), BETAS):
                report = reports[beta]
                plots.plot_kl_per_dim(report, ax=ax)
                order = np.argsort(-report["z"].kl_per_dim)
                ax.scatter(order, optima[beta].kl_per_dim.numpy(), marker="_", s=600, color="black", zorder=3, label="predicted")
                ax.set_title(f"beta = {beta:g}: {report['z'].active_units}/4 active")
                ax.get_legend().remove()
            ax.legend(loc="upper right", fontsize="small")
            fig
            """
        ),
        md(
            r"""
            ## At the optimum, the KL is all information

            At the optimum the aggregate posterior is exactly the prior: the encoder means
            $V(x - \mu)$ have variance $1 - \beta\sigma^2/\lambda_i$ and the posterior variance
            is $s_i^2 = \beta\sigma^2 / \lambda_i$, which add up to 1. So the marginal KL of
            ELBO surgery vanishes and the whole KL is mutual information,
            $\mathrm{KL}_i = I_q(x; z_i)$ (Hoffman & Johnson 2016). For a linear-Gaussian encoder
            the R-hat that `diagnose` computes with each data point as one chain carries the
            same number: $\ln \hat R_i = \tfrac12 \ln(1 + \mathrm{Var}_x \mathbb{E}_q[z_i] /
            s_i^2) = I_q(x; z_i)$. Three estimators, one closed form:
            """
        ),
        code(
            """
            site = reports[1.0]["z"]
            order = np.argsort(-site.kl_per_dim)
            pd.DataFrame(
                {
                    "predicted KL": optima[1.0].kl_per_dim.numpy(),
                    "KL": site.kl_per_dim[order],
                    "MI": site.mi_per_dim[order],
                    "marginal KL": site.aggregate_kl_per_dim[order],
                    "ln R-hat": np.log(site.rhat[order]),
                    "status": np.array(site.status)[order],
                },
                index=[f"direction {i + 1}" for i in range(4)],
            ).round(3)
            """
        ),
        md(
            r"""
            ## Watching a direction die

            The KL heatmap of the $\beta = 2$ run shows the dynamics: every dimension starts
            near zero KL (small random weights), the directions above the threshold grow to
            their closed-form KL, and the two below it never take off.
            """
        ),
        code(
            """
            plots.plot_kl_heatmap(histories[2.0])
            """
        ),
        md(
            r"""
            ## "Don't blame the ELBO": learned noise and a tight bound

            With a fixed, too large $\sigma^2$ (or $\beta > 1$) collapse removes real signal.
            With the noise *learned*, the optimum of the ELBO is the maximum-likelihood pPCA
            solution (Tipping & Bishop 1999), with $\sigma^2$ the mean of the discarded
            eigenvalues: every signal direction stays active, and the ELBO is *tight*: the
            diagonal $q(z \mid x)$ equals the exact posterior $p(z \mid x)$, so the ELBO equals
            $\log p(x)$, which `LinearVAE` evaluates in closed form
            (`marginal_log_likelihood`, `analytic_elbo`, `posterior`).
            """
        ),
        code(
            """
            pyro.clear_param_store()
            learned = LinearVAE(8, 4)  # noise="learned"
            # twice the budget, with a slower decay: see below for why this one converges slowly
            fit(learned.model, learned.guide, x, loss=PlainELBO(), optim=pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.999}),
                epochs=2 * EPOCHS, batch_size=200, seed=0, progress=False)
            mle = LinearVAE.ppca_optimum(x, 4)
            with torch.no_grad():
                noise_variance = float(learned.noise_std) ** 2
                log_lik = float(learned.marginal_log_likelihood(x).mean())
                elbo = float(learned.analytic_elbo(x).mean())
            print(f"sigma^2: learned {noise_variance:.4f}, maximum likelihood {mle.noise_variance:.4f}")
            print(f"log p(x): trained {log_lik:.4f}, maximum {mle.log_likelihood:.4f} nats per point")
            print(f"ELBO {elbo:.4f}: gap to log p(x) = E_x KL(q(z|x) || p(z|x)) = {log_lik - elbo:.4f} nats")
            """
        ),
        md(
            r"""
            In the full run the learned $\sigma^2$ matches the maximum-likelihood value, the
            log-likelihood comes within about a hundredth of a nat of the maximum, and the ELBO
            is another hundredth or two below it. The exact posterior shows where that last gap
            comes from: its standard deviations are the guide's, but its latent dimensions are
            still slightly correlated, which a diagonal guide cannot represent. The likelihood
            does not care how $W$ is rotated; only the diagonal guide prefers orthogonal
            columns (for which $p(z \mid x)$ is diagonal and the bound tight), and that weak
            preference is the slowest thing to converge (Lucas et al. 2019), hence the longer
            run. Train longer and the correlation and the gap shrink towards zero.
            """
        ),
        code(
            """
            with torch.no_grad():
                exact = learned.posterior(x[:1]).covariance_matrix[0]
                exact_sd = exact.diagonal().sqrt()
                correlation = exact / torch.outer(exact_sd, exact_sd) - torch.eye(4)
                print(f"largest correlation between latent dimensions in p(z|x): {float(correlation.abs().max()):.3f}")
                print(pd.DataFrame({"exact posterior sd": exact_sd.numpy(), "guide sd": learned.posterior_scale.numpy()}).round(3).T)
            """
        ),
        md(
            r"""
            What about more latent dimensions than signal directions? On the *population*
            covariance the surplus eigenvalues equal the noise level, $\lambda_5 = \dots =
            \sigma^2 = 0.25$, and the maximum-likelihood solution collapses them exactly:
            collapse of a surplus dimension is what maximum likelihood does, not a defect of the
            ELBO. On a finite *sample* the surplus eigenvalues scatter around $\sigma^2$ and the
            top ones sit slightly above the estimate $\hat\sigma^2$ (the mean of those
            discarded), so the optimum fits some sampling noise with them: a KL of a few
            hundredths of a nat, nearly but not exactly collapsed. Both in closed form, for
            $k = 6$:
            """
        ),
        code(
            """
            on_population = LinearVAE.ppca_optimum(ppca_population_covariance(data), 6, covariance=True)
            on_sample = LinearVAE.ppca_optimum(x, 6)
            pd.DataFrame(
                {
                    "population: lambda": on_population.leading_eigenvalues.numpy(),
                    "population: KL": on_population.kl_per_dim.numpy(),
                    "sample: lambda": on_sample.leading_eigenvalues.numpy(),
                    "sample: KL": on_sample.kl_per_dim.numpy(),
                },
                index=[f"direction {i + 1}" for i in range(6)],
            ).round(3)
            """
        ),
        md(
            r"""
            ## Summary

            * In the linear VAE, collapse is a property of the optimum: direction $i$ collapses
              iff $\lambda_i \le \beta\sigma^2$, with KL $\tfrac12 \log(\lambda_i / \beta\sigma^2)$
              otherwise. `LinearVAE.ppca_optimum` and `LinearVAE.collapsed_dimensions` compute
              it.
            * `diagnose`, a model-agnostic estimator, recovers the prediction: statuses, KL per
              dimension, $\mathrm{KL} = I_q$ at the optimum, and $\ln \hat R = I_q$.
            * With the noise learned, the ELBO is tight at its optimum and collapse removes only
              surplus dimensions, exactly as maximum likelihood does: the ELBO is not to blame. Nonlinear decoders add spurious
              optima and training dynamics on top of this picture; notebook 3 is about those.

            **References.** Lucas, Tucker, Grosse & Norouzi (2019), Don't Blame the ELBO! A
            Linear VAE Perspective on Posterior Collapse, NeurIPS. Tipping & Bishop (1999),
            Probabilistic Principal Component Analysis, JRSS B. Higgins et al. (2017),
            beta-VAE, ICLR. Hoffman & Johnson (2016), ELBO surgery, NIPS AABI workshop.
            """
        ),
    ]


# ======================================================================================
# 03: training dynamics
# ======================================================================================
def training_dynamics() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 3. Training dynamics: annealing, free bits, aggressive encoder training

            Notebook 1 showed a sequence VAE whose KL term died in the first epochs. Part of
            the reason is the optimum (the ELBO prefers a strong decoder that ignores $z$), but
            part is the *path* to it: at initialisation the encoder's $q(z \mid x)$ carries
            nothing useful, the KL term pushes it onto the prior at once, the decoder learns to
            do without $z$, and then there is no gradient signal left that would make $z$
            useful ("KL vanishing", Bowman et al. 2016; the "lagging inference network",
            He et al. 2019). Four remedies change the path:

            | remedy | objective (maximised) | reference |
            | --- | --- | --- |
            | linear KL annealing | $\mathbb{E}_q \log p(x \mid z) - \beta_t\, \mathrm{KL}$, $\beta_t$ from 0 to 1 | Bowman et al. 2016 |
            | cyclical annealing | the same, $\beta_t$ ramping up repeatedly | Fu et al. 2019 |
            | free bits | $\mathbb{E}_q \log p(x \mid z) - \sum_d \max\big(\lambda, \mathbb{E}_x \mathrm{KL}_d\big)$ | Kingma et al. 2016 |
            | aggressive encoder training | the ELBO, but the encoder is optimised to convergence before each decoder step | He et al. 2019 |

            We train the same sequence VAE with each, and read the dynamics off the KL
            heatmap: `fit` records the KL of every latent dimension at every epoch
            (`History.kl_matrix`), and `plots.plot_kl_heatmap` draws it.
            """
        ),
        code(
            """
            import os
            import time

            import pandas as pd
            import pyro
            import torch
            from matplotlib.figure import Figure

            from pyrocollapse import diagnose, fit, load_dataset, plots
            from pyrocollapse.callbacks import CollapseWarning
            from pyrocollapse.elbo import AnnealedELBO, FreeBitsELBO, PlainELBO
            from pyrocollapse.models import SequenceVAE
            from pyrocollapse.schedules import Cyclical, Linear

            %matplotlib inline

            SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
            N_SEQUENCES = 300 if SMOKE else 1500
            EPOCHS = 2 if SMOKE else 30
            MAX_INNER = 5 if SMOKE else 100  # cap on encoder steps per decoder step (aggressive mode)
            BATCH_SIZE = 50

            pyro.set_rng_seed(0)
            torch.set_num_threads(2)
            print(f"smoke mode: {SMOKE}: {N_SEQUENCES} sequences, {EPOCHS} epochs")
            """
        ),
        code(
            """
            data = load_dataset("sequences", n=N_SEQUENCES, vocab_size=24, max_len=12, n_topics=4, seed=0)
            train, valid = data.split(0.2, seed=0)
            STEPS = EPOCHS * -(-len(train) // BATCH_SIZE)  # optimisation steps in a run
            print(data, f"-> {len(train)} train / {len(valid)} held out; {STEPS} steps per run")
            """
        ),
        md(
            r"""
            ## Schedules

            A schedule maps the optimisation step to the KL weight $\beta_t$. `Linear` warms up
            from `start` to 1 over `warmup_steps`; `Cyclical` repeats a ramp from 0 to 1 over the
            first `ratio` of each `period` and holds 1 for the rest. Schedules are plain objects,
            so we can plot them before training. `AnnealedELBO(schedule)` advances the
            schedule once per optimisation step.
            """
        ),
        code(
            """
            schedules = {
                "linear": Linear(warmup_steps=STEPS // 2),
                "cyclical": Cyclical(period=max(1, STEPS // 4), n_cycles=4, ratio=0.5),
                "linear from 0.1 (for aggressive)": Linear(warmup_steps=STEPS // 2, start=0.1),
            }
            fig = Figure(figsize=(12, 2.6), layout="constrained")
            for ax, (name, schedule) in zip(fig.subplots(1, 3, sharey=True), schedules.items()):
                schedule.plot(STEPS, ax=ax)
                ax.set_title(name)
            fig
            """
        ),
        md(
            r"""
            ## One training function for every run

            Every run uses the same model (an LSTM sequence VAE with 8 latent dimensions),
            optimiser, data and seed; only the objective and the training mode change. After
            training, `diagnose` measures each model on the held-out sequences, including the
            importance-weighted estimate of $\log p(x)$ (`"iw"`, Burda et al. 2016): the ELBOs
            of different objectives are not comparable, but the IW log-likelihood of the
            resulting models is.
            """
        ),
        code(
            """
            runs = {}


            def run(name, loss, **fit_options):
                pyro.clear_param_store()
                vae = SequenceVAE(len(data.vocab), latent_dim=8, embed=32, hidden=64)
                start = time.perf_counter()
                history = fit(vae.model, vae.guide, train.data, loss=loss, optim=pyro.optim.Adam({"lr": 3e-3}),
                              epochs=EPOCHS, batch_size=BATCH_SIZE, seed=0, progress=False, **fit_options)
                seconds = time.perf_counter() - start
                vae.eval()
                report = diagnose(vae.model, vae.guide, valid.data, vae.latent_sites,
                                  estimators=("kl", "au", "mi", "iw"), importance_samples=50)
                runs[name] = (history, report, seconds)
                site = report["z"]
                print(f"{name}: {site.active_units}/8 active units, I_q(x; z) = {site.mi:.3f} nats, "
                      f"IW log p(x) = {report.elbo['log_likelihood']:.3f}, {seconds:.0f} s")
                return history, report
            """
        ),
        md(
            r"""
            ## The baseline: plain ELBO, with a collapse alarm

            Callbacks watch the collapse indicators that `fit` records each epoch.
            `CollapseWarning` issues a `PosteriorCollapseWarning` when the number of active
            units drops below a threshold (`AggressiveOnCollapse` and `RollbackOnCollapse`
            react instead of warning; see the end of this notebook).
            """
        ),
        code(
            """
            history, report = run("plain ELBO", PlainELBO(), callbacks=[CollapseWarning(min_active_units=1)])
            plots.plot_kl_heatmap(history)
            """
        ),
        md(
            r"""
            The heatmap is dark from the first epoch on: every dimension's KL is zero
            throughout, and the warning fired at epoch 1 (in the full run as in smoke mode, the
            model never recovers).

            ## Linear KL annealing

            With $\beta_t$ small, information in $z$ is nearly free, so the encoder starts to
            use it; as $\beta_t$ approaches 1 the model must decide whether that information is
            worth its KL.
            """
        ),
        code(
            """
            history, report = run("linear annealing", AnnealedELBO(schedules["linear"]))
            plots.plot_kl_heatmap(history)
            """
        ),
        code(
            """
            plots.plot_training(history)
            """
        ),
        md(
            r"""
            In the full run all eight dimensions light up while $\beta_t$ is small, then, as
            the weight reaches 1 half-way through, the KL fades dimension by dimension and the
            active units and the mutual information fall (right panel): the model is sliding
            back towards collapse, annealing has only delayed it. A few dimensions are
            typically still active at the end, with a small total mutual information.

            ## Cyclical annealing

            Fu et al. (2019) restart the warm-up: every cycle the decoder is offered cheap
            information in $z$ again, and an encoder that has learned something useful in one
            cycle starts the next from there.
            """
        ),
        code(
            """
            history, report = run("cyclical annealing", AnnealedELBO(schedules["cyclical"]))
            plots.plot_kl_heatmap(history)
            """
        ),
        md(
            r"""
            The heatmap shows the cycles as vertical bands: the KL rises while $\beta_t$ ramps
            up and fades while it holds at 1. In the full run the model ends with more mutual
            information than after one linear warm-up, but still only a fraction of the topic's
            $\log 4 \approx 1.39$ nats, in a couple of active dimensions.

            ## Free bits

            Free bits change the objective instead of the path: the KL of dimension $d$ is not
            penalised below $\lambda$ nats (averaged over the minibatch), so up to $\lambda$ nats
            per dimension are free, and the encoder has no reason to give them up.
            """
        ),
        code(
            """
            history, report = run("free bits 0.25", FreeBitsELBO(free_bits=0.25))
            plots.plot_kl_heatmap(history)
            """
        ),
        md(
            r"""
            In the full run every dimension's KL sits at or above the floor of 0.25 nats from
            the first epochs on, and the mutual information approaches the topic's $\log 4$
            nats. The price is visible in the objective: free bits maximise a bound that is not
            the ELBO, and the model pays for up to $8 \times 0.25 = 2$ nats of KL that the
            plain ELBO would have saved; the held-out IW log-likelihood in the comparison
            below says whether the model itself got better or worse.

            ## Aggressive inference-network training

            He et al. (2019) argue that collapse starts because the encoder *lags* behind the
            true posterior early in training. Their fix: before every decoder update, update
            the encoder alone until its loss stops improving; leave this aggressive mode as soon
            as the mutual information $I_q(x; z)$ stops rising. `fit(aggressive=True)`
            implements it (with the KL warm-up from 0.1 that the authors also use); the history
            records which epochs were aggressive and how many encoder steps each decoder step
            took.
            """
        ),
        code(
            """
            history, report = run(
                "aggressive + annealing",
                AnnealedELBO(schedules["linear from 0.1 (for aggressive)"]),
                aggressive=True,
                aggressive_max_inner=MAX_INNER,
            )
            history.to_dataframe()[["epoch", "aggressive", "inner_steps", "kl_weight", "active_units/z", "mi/z", "epoch_time"]].round(3).head(8)
            """
        ),
        code(
            """
            plots.plot_kl_heatmap(history)
            """
        ),
        md(
            r"""
            In the full run the first few epochs are aggressive, with tens of encoder steps per
            decoder step (those epochs are much slower), until $I_q$ stops rising; afterwards
            training is ordinary. The encoder has learned to read the topic before the decoder
            could learn to do without it, and the model keeps most of its units active with
            about one nat of mutual information.

            ## Side by side
            """
        ),
        code(
            """
            rows = []
            for name, (history, report, seconds) in runs.items():
                site = report["z"]
                rows.append({"run": name, "active units": site.active_units, "MI": site.mi, "KL": site.kl,
                             "marginal KL": site.aggregate_kl, "ELBO": report.elbo["elbo"],
                             "IW log p(x)": report.elbo["log_likelihood"], "seconds": seconds})
            pd.DataFrame(rows).set_index("run").round(3)
            """
        ),
        code(
            """
            fig = Figure(figsize=(11, 2.3 * len(runs)), layout="constrained")
            for ax, (name, (history, report, seconds)) in zip(fig.subplots(len(runs), 1, sharex=True), runs.items()):
                plots.plot_kl_heatmap(history, ax=ax)
                ax.set_title(name)
            fig
            """
        ),
        md(
            r"""
            What to take from the table (full run; smoke mode trains for two epochs and shows
            none of it):

            * The plain ELBO collapses; annealing delays collapse but one warm-up does not
              prevent it; cyclical annealing keeps a little more information.
            * Free bits and aggressive encoder training both end with substantial mutual
              information, by different routes: free bits change the objective (its ELBO is
              lower), aggressive training changes only the path (the ELBO it reaches is
              competitive with the plain one).
            * Active units and mutual information are different things: a model can keep many
              units "active" (their posterior means vary a little) while carrying little
              information, so read both.
            * The IW log-likelihoods are within a few tenths of a nat of each other (aggressive
              training usually ends on top): on this data, using $z$ for the topic buys little
              likelihood, because the decoder can infer the topic from the prefix. That is why
              the ELBO is happy to collapse here.

            ## Reacting to collapse automatically

            Instead of choosing a remedy in advance you can let training react:
            `AggressiveOnCollapse(min_active_units=1)` switches on aggressive training when
            the active units drop below the threshold, and
            `RollbackOnCollapse(then="aggressive")` restores the parameters of the last
            healthy epoch first. Both watch the indicators `fit` monitors, like
            `CollapseWarning` above:

            ```python
            from pyrocollapse.callbacks import RollbackOnCollapse
            fit(vae.model, vae.guide, train.data, loss=AnnealedELBO(Linear(STEPS // 2)), epochs=EPOCHS,
                callbacks=[RollbackOnCollapse(min_mi=0.1, then="aggressive")])
            ```

            **References.** Bowman et al. (2016), Generating Sentences from a Continuous
            Space, CoNLL. Fu et al. (2019), Cyclical Annealing Schedule: A Simple Approach to
            Mitigating KL Vanishing, NAACL. Kingma et al. (2016), Improved Variational
            Inference with Inverse Autoregressive Flow, NeurIPS (free bits). He, Spokoyny,
            Neubig & Berg-Kirkpatrick (2019), Lagging Inference Networks and Posterior Collapse
            in Variational Autoencoders, ICLR. Burda, Grosse & Salakhutdinov (2016), Importance
            Weighted Autoencoders, ICLR.
            """
        ),
    ]


# ======================================================================================
# 04: priors
# ======================================================================================
def priors() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 4. Priors: what each does to the latent space

            The KL term of the ELBO, averaged over the data, is
            $I_q(x; z) + \mathrm{KL}\big(q(z) \,\|\, p(z)\big)$ (Hoffman & Johnson 2016): part
            of what a VAE pays for its latent code is the mismatch between the *aggregate
            posterior* $q(z) = \frac1N \sum_n q(z \mid x_n)$ and the prior. A standard Normal
            prior charges for every departure of $q(z)$ from a round Gaussian blob, so a
            model with clustered data either distorts its code into a blob or switches
            dimensions off. A richer prior can follow the shape of $q(z)$ and make information
            cheaper.

            pyrocollapse's priors are Pyro programs that a model calls inside its own plates
            (`z = prior("z")`), so any prior fits any model:

            | prior | $p(z)$ | reference |
            | --- | --- | --- |
            | `StandardNormalPrior` | $\mathcal N(0, I)$ | Kingma & Welling 2014 |
            | `MixturePrior` | $\sum_k \pi_k \mathcal N(\mu_k, \operatorname{diag}\sigma_k^2)$, learned | Dilokthanakul et al. 2016 |
            | `VampPrior` | $\frac1K \sum_k q(z \mid u_k)$, learned pseudo-inputs $u_k$ | Tomczak & Welling 2018 |
            | `HierarchicalPrior` | $\int \mathcal N(z; \mu(t), \operatorname{diag}\sigma(t)^2)\, \mathcal N(t; 0, I)\, dt$ | Sønderby et al. 2016; Klushyn et al. 2019 |
            | `ARDPrior` | $\mathcal N(0, \operatorname{diag} s^2)$, relevances $s_d$ learned | MacKay 1994; Bishop 1999 |
            | `FlowPrior` | $\mathcal N(0, I)$ pushed through learned spline couplings | Rezende & Mohamed 2015; Durkan et al. 2019 |

            We fit the same MLP VAE with each prior to data whose true latent variable is a
            two-dimensional mixture of four Gaussians, and look at the latent space each one
            produces.
            """
        ),
        code(
            """
            import os
            import time

            import numpy as np
            import pandas as pd
            import pyro
            import torch
            from matplotlib.figure import Figure

            from pyrocollapse import diagnose, fit, load_dataset, plots
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

            %matplotlib inline

            SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
            N_POINTS = 500 if SMOKE else 2000
            EPOCHS = 2 if SMOKE else 60
            LATENT_DIM = 4  # twice the true latent dimension

            pyro.set_rng_seed(0)
            torch.set_num_threads(2)
            print(f"smoke mode: {SMOKE}: {N_POINTS} points, {EPOCHS} epochs")
            """
        ),
        md(
            r"""
            ## Data from a clustered latent space

            `load_dataset("mixture")` draws a 2-dimensional latent $z^\ast$ from a mixture of
            four unit Gaussians on a circle, pushes it through a fixed random tanh network into
            20 dimensions and adds a little noise. The true latent and its mixture component
            are kept in `factors`.
            """
        ),
        code(
            """
            data = load_dataset("mixture", n=N_POINTS, n_components=4, latent_dim=2, input_dim=20, seed=0)
            train, valid = data.split(0.2, seed=0)
            component = valid.factors[:, 2].int().numpy()
            print(data, "factors:", data.factor_names)

            fig = Figure(figsize=(3.5, 3.3), layout="constrained")
            ax = fig.add_subplot()
            ax.scatter(valid.factors[:, 0], valid.factors[:, 1], c=component, cmap="tab10", vmin=0, vmax=9, s=6)
            ax.set(title="true latent z* (held out)", xlabel="z*_0", ylabel="z*_1")
            fig
            """
        ),
        md(
            r"""
            ## One model, six priors

            Each prior is built with `latent_dim=4` and handed to an `MLPVAE` with a Gaussian
            likelihood. Two of them need a word:

            * the `VampPrior`'s components are the model's own encoder evaluated at
              learnable pseudo-inputs; built with `encoder=None`, it binds to the encoder of
              the model it is given to. Seeding the pseudo-inputs with data points speeds up
              training (Tomczak & Welling 2018). `support="real"` because the data are
              real-valued.
            * the `HierarchicalPrior` adds a second latent site, `z_top` ($t$ above), and the
              matching guide piece $q(t \mid z)$, which the VAE's guide calls automatically.

            The plain ELBO trains all of them. Where the KL has no closed form (mixtures,
            flows, hierarchies) the pyrocollapse ELBO uses the Monte Carlo estimate
            $\log q(z \mid x) - \log p(z)$.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            How to read the table (full run):

            * **standard** and **ard**: two of the four dimensions are active and two
              collapsed: the model uses as many dimensions as the data have and switches the
              surplus ones off. This is the benign, *partial* collapse of a factorised decoder
              (Dai et al. 2020).
            * **vamp** and **flow** reach the smallest marginal KL
              $\mathrm{KL}(q(z) \,\|\, p(z))$: their priors have taken the shape of the aggregate
              posterior, so the code pays less for its shape (the figure below shows what shape).
            * "active units" counts *coordinates* whose posterior mean varies. Under a prior
              that does not factorise (mixture, VampPrior) the code need not align with the
              coordinate axes, so two dimensions' worth of information can show up as four
              active units; the mutual information is the rotation-free measure, and it is
              similar for all six priors.
            * The IW log-likelihoods differ by about as much as their standard error (about 0.15
              nats; `print(reports[name])` shows it): on this data the prior changes the
              geometry of the code much more than the fit.
            * The KL estimator column says how the per-dimension KL was computed: analytic for
              Gaussian priors, Monte Carlo against the univariate prior marginals for mixtures,
              and against a kernel density estimate of the marginals for the flow.
            * For the hierarchical prior the site `z` has a *conditional* prior $p(z \mid t)$,
              so its "KL" and "marginal KL" are measured against that conditional at the guide's
              draw of $t$ (the report says so in a note). They are not KLs to the marginal
              $p(z)$, and the marginal KL can even come out negative.
            """
        ),
        md(
            r"""
            ## The latent spaces

            For each model we plot the posterior means $\mathbb{E}_q[z \mid x]$ of the held-out
            points on the two dimensions with the largest KL, coloured by the true mixture
            component, over draws from the learned prior (grey). A good prior covers the codes
            and nothing else: prior draws far from any code are samples that decode to
            nothing like the data.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            The true latent is four clusters on a circle. With the standard (and ARD) prior the
            clusters are packed into one round blob, as the prior demands, and prior draws fill
            the gaps between clusters. The VampPrior and the flow prior recover the ring, and
            their prior draws follow it: a sample from those priors decodes to something that
            looks like data. The mixture prior can in principle put one component on each
            cluster, but trained from a random start it may strand a component (look for a
            small weight below). (In smoke mode the models have barely trained and the codes
            sit near the origin.)

            ## What each prior learned

            **Mixture.** The learned weights and component means; a mixture can also be
            initialised from codes by k-means (`MixturePrior.init_components`, as in VaDE),
            which avoids components stranded away from the data.
            """
        ),
        code(
            """
            mixture = models["mixture"].prior
            pd.DataFrame(mixture.means.detach().numpy(), columns=[f"mean z{d}" for d in range(LATENT_DIM)]).assign(
                weight=mixture.weights.numpy()).round(2)
            """
        ),
        md(
            r"""
            **ARD.** Each dimension has its own prior scale $s_d$; `relevance()` normalises them
            by the largest, and `switched_off(threshold)` lists the dimensions whose scale fell
            below a threshold. In the full run the scales of the two collapsed dimensions have
            shrunk to well below those of the active ones. They shrink slowly, though: once
            $q(z_d \mid x) = p(z_d)$ the KL no longer depends on $s_d$, so only the decoder's
            dependence on $z_d$ drives it, and after this short run they are far from the
            `switched_off` threshold of 0.05. Read the relevances together with the KL column.
            """
        ),
        code(
            """
            ard = models["ard"].prior
            pd.DataFrame({"prior scale s_d": ard.scales.numpy(), "relevance": ard.relevance().numpy(),
                          "KL": reports["ard"]["z"].kl_per_dim, "status": reports["ard"]["z"].status}).round(3)
            """
        ),
        md(
            r"""
            **Hierarchical.** Both layers are diagnosed, because the model has two latent
            sites. The report states the status of `z` (against its conditional prior) and of
            `z_top`.
            """
        ),
        code(
            """
            print(reports["hierarchical"])
            """
        ),
        md(
            r"""
            **VampPrior.** Its components are the encoder's posteriors at the pseudo-inputs
            $u_k$, so the prior moves with the encoder. Against the prior's marginals $p(z_d)$
            (grey; a mixture of 50 encoder posteriors, hence its bumps), the posteriors of a few
            held-out points are narrow and each sits in its own part of the prior: the opposite
            of the picture of a collapsed dimension in notebook 1.
            """
        ),
        code(
            """
            reports["vamp"].plot("densities")
            """
        ),
        md(
            r"""
            ## Summary

            * The prior sets the price of the aggregate posterior's shape: with
              $\mathcal N(0, I)$ the code is squeezed into a round blob and surplus dimensions
              are switched off; flexible priors (VampPrior, flow) follow the shape of the codes,
              which lowers the marginal KL and makes prior samples look like data.
            * Count information with the mutual information, not only with active units: under
              a non-factorised prior the code can be rotated against the coordinate axes.
            * Every prior is a swappable Pyro program; `diagnose` handles priors without a closed
              form (Monte Carlo KL against univariate marginals) and extra latent sites
              (hierarchical) and says which estimator it used.
            * A richer prior does not by itself prevent collapse caused by a strong decoder
              (notebook 1): there the decoder, not the prior's shape, is the reason $z$ is
              unused. Notebook 6 compares priors and objectives on sequences in one grid.

            **References.** Tomczak & Welling (2018), VAE with a VampPrior, AISTATS.
            Dilokthanakul et al. (2016), Deep Unsupervised Clustering with Gaussian Mixture
            VAEs. Jiang et al. (2017), Variational Deep Embedding, IJCAI. Sønderby et al.
            (2016), Ladder VAEs, NeurIPS. Klushyn et al. (2019), Learning Hierarchical Priors in
            VAEs, NeurIPS. MacKay (1994); Bishop (1999), Bayesian PCA, NeurIPS (ARD). Rezende &
            Mohamed (2015), Variational Inference with Normalizing Flows, ICML. Durkan et al.
            (2019), Neural Spline Flows, NeurIPS. Dai, Wang & Wipf (2020), The Usual Suspects?
            Reassessing Blame for VAE Posterior Collapse, ICML. Hoffman & Johnson (2016), ELBO
            surgery.
            """
        ),
    ]


# ======================================================================================
# 05: mutual information, InfoVAE and the ELBO decomposition
# ======================================================================================
def information_objectives() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 5. Mutual-information regularisation, InfoVAE and the ELBO decomposition

            Averaged over the data distribution, the ELBO splits into three terms
            (Hoffman & Johnson 2016), and for a factorised prior the last one splits again
            (Chen et al. 2018):

            $$
            \mathbb{E}_x \mathrm{ELBO}(x)
              = \underbrace{\mathbb{E}_x \mathbb{E}_{q(z \mid x)} \log p(x \mid z)}_{\text{reconstruction}}
              - \underbrace{I_q(x; z)}_{\text{information}}
              - \underbrace{\mathrm{KL}\big(q(z) \,\|\, p(z)\big)}_{\text{marginal KL}},
            \qquad
            \mathrm{KL}\big(q(z) \,\|\, p(z)\big) = \underbrace{\mathrm{TC}(z)}_{\text{total correlation}}
              + \sum_d \mathrm{KL}\big(q(z_d) \,\|\, p(z_d)\big).
            $$

            The plain ELBO charges one nat of objective for every nat of information in $z$.
            When the decoder can do without $z$ (notebook 1), that charge is why $z$ collapses.
            Objectives that charge less for information:

            | objective | maximised | reference |
            | --- | --- | --- |
            | `MIRegularizedELBO(alpha)` | $\mathrm{ELBO} + \alpha\, I_q(x; z)$ (minibatch estimate of $I_q$) | Zhao et al. 2019; He et al. 2019 |
            | `InfoVAEELBO(alpha, lambda_)` | $\mathbb{E}\log p(x \mid z) - (1-\alpha)\,\mathrm{KL}(q(z \mid x) \,\|\, p(z)) - (\alpha + \lambda - 1)\, \mathrm{MMD}^2(q(z), p(z))$ | Zhao et al. 2019 |
            | `BetaTCELBO(alpha, beta, gamma)` | $\mathbb{E}\log p(x \mid z) - \alpha I_q - \beta\, \mathrm{TC} - \gamma \sum_d \mathrm{KL}_d$ | Chen et al. 2018 |

            With $\alpha = 0$ (and $\lambda = 1$; $\beta = \gamma = 1$) each is the ELBO. We train
            the collapsing sequence VAE of notebooks 1 and 3 with each, and use the
            decomposition to see where the nats go.
            """
        ),
        code(
            """
            import os
            import time

            import numpy as np
            import pandas as pd
            import pyro
            import torch
            from matplotlib.figure import Figure

            from pyrocollapse import diagnose, fit, load_dataset, plots
            from pyrocollapse.elbo import BetaTCELBO, InfoVAEELBO, MIRegularizedELBO, PlainELBO
            from pyrocollapse.models import SequenceVAE

            %matplotlib inline

            SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
            N_SEQUENCES = 300 if SMOKE else 1500
            EPOCHS = 2 if SMOKE else 25

            pyro.set_rng_seed(0)
            torch.set_num_threads(2)
            print(f"smoke mode: {SMOKE}: {N_SEQUENCES} sequences, {EPOCHS} epochs")
            """
        ),
        code(
            """
            data = load_dataset("sequences", n=N_SEQUENCES, vocab_size=24, max_len=12, n_topics=4, seed=0)
            train, valid = data.split(0.2, seed=0)
            runs = {}


            def run(name, loss):
                pyro.clear_param_store()
                vae = SequenceVAE(len(data.vocab), latent_dim=4, embed=32, hidden=64)
                start = time.perf_counter()
                history = fit(vae.model, vae.guide, train.data, loss=loss, optim=pyro.optim.Adam({"lr": 3e-3}),
                              epochs=EPOCHS, batch_size=50, seed=0, progress=False)
                seconds = time.perf_counter() - start
                vae.eval()
                report = diagnose(vae.model, vae.guide, valid.data, vae.latent_sites,
                                  estimators=("kl", "au", "mi", "iw"), importance_samples=50)
                runs[name] = (history, report, seconds)
                site = report["z"]
                print(f"{name}: I_q(x; z) = {site.mi:.3f}, marginal KL = {site.aggregate_kl:.3f}, "
                      f"ELBO = {report.elbo['elbo']:.3f}, IW log p(x) = {report.elbo['log_likelihood']:.3f} "
                      f"nats ({seconds:.0f} s)")
                return history, report
            """
        ),
        md(
            r"""
            ## The plain ELBO, decomposed

            `plots.plot_elbo_decomposition` stacks the negative ELBO's terms over training: the
            negative reconstruction term and the KL of each latent site. For the collapsing
            model the KL band is invisible: the whole loss is reconstruction.
            """
        ),
        code(
            """
            history, report = run("ELBO", PlainELBO())
            plots.plot_elbo_decomposition(history)
            """
        ),
        md(
            r"""
            ## Paying less for information: the MI-regularised ELBO

            `MIRegularizedELBO(alpha)` adds $\alpha I_q(x; z)$, estimated on each minibatch from
            $q(z \mid x)$ and the minibatch's aggregate posterior. Because
            $\mathrm{KL} = I_q + \mathrm{KL}(q(z) \,\|\, p(z))$, the objective charges only
            $1 - \alpha$ for information and keeps the full charge on the marginal KL.
            """
        ),
        code(
            """
            half, half_report = run("ELBO + 0.5 I_q", MIRegularizedELBO(alpha=0.5))
            full, full_report = run("ELBO + 1.0 I_q", MIRegularizedELBO(alpha=1.0))
            """
        ),
        md(
            r"""
            `fit` records the objective's own minibatch estimate (`mi_batch`) next to the
            estimate against the aggregate posterior of a fixed monitoring subset of 512
            sequences (`mi/z`). The minibatch estimate is bounded by $\log B$ for batches of $B$
            sequences ($\log 50 \approx 3.9$ nats), so it runs below the other once $z$ carries a
            lot of information.
            """
        ),
        code(
            """
            pd.concat(
                {name: h.to_dataframe().set_index("epoch")[["mi_batch", "mi/z", "kl"]] for name, h in [("alpha=0.5", half), ("alpha=1", full)]},
                axis=1,
            ).iloc[:: max(1, EPOCHS // 5)].round(3)
            """
        ),
        md(
            r"""
            ## The same objective in the $\beta$-TCVAE parametrisation

            `BetaTCELBO(alpha=0.5, beta=1, gamma=1)` weighs the three parts of the KL
            separately: index-code MI by $\alpha$, total correlation by $\beta$, dimension-wise KL
            by $\gamma$. With these weights it is the MI-regularised objective above, computed
            with a different (stratified) estimator of the aggregate posterior, and `fit`
            records all three parts each epoch.
            """
        ),
        code(
            """
            tc_history, tc_report = run("beta-TC, alpha=0.5", BetaTCELBO(alpha=0.5, beta=1.0, gamma=1.0))
            frame = tc_history.to_dataframe().set_index("epoch")
            parts = ["index_code_mi", "total_correlation", "dimwise_kl"]
            fig = Figure(figsize=(7, 3.2), layout="constrained")
            ax = fig.add_subplot()
            ax.stackplot(frame.index, *(frame[p] for p in parts), labels=parts, alpha=0.8)
            ax.plot(frame.index, frame["kl"], "k--", lw=1, label="KL (sum)")
            ax.set(xlabel="epoch", ylabel="nats per sequence", title="the KL term, decomposed (Chen et al. 2018)")
            ax.legend(fontsize="small", loc="lower right")
            fig
            """
        ),
        md(
            r"""
            Most of the KL is index-code mutual information; the total correlation and the
            dimension-wise KL, the two parts of the marginal KL, stay small: the aggregate
            posterior is close to the prior. Compare the amount of information with the
            MI-regularised run in the table below: on paper the two objectives are the same, but
            they estimate the aggregate posterior differently on each minibatch (the
            MI-regularised ELBO treats the minibatch as the data set, $\beta$-TC stratifies over
            the whole training set), and in our full run $\beta$-TC ends with much less
            information. The first epochs decide whether the encoder wakes up, and there the
            estimators' different biases matter.

            ## InfoVAE: matching the aggregate posterior with an MMD

            `InfoVAEELBO(alpha, lambda_)` multiplies the per-sequence KL by $1 - \alpha$ and adds
            a maximum-mean-discrepancy penalty between the aggregate posterior and the prior,
            weighted by $\alpha + \lambda - 1$. With $\alpha = 1$ information is free, and only
            the MMD keeps $q(z)$ near $p(z)$.
            """
        ),
        code(
            """
            info_half, info_half_report = run("InfoVAE alpha=0.5, lambda=10", InfoVAEELBO(alpha=0.5, lambda_=10.0))
            info_full, info_full_report = run("InfoVAE alpha=1, lambda=10", InfoVAEELBO(alpha=1.0, lambda_=10.0))
            """
        ),
        md(
            r"""
            ## Where the nats go

            For every run, the held-out decomposition of the negative ELBO that `diagnose`
            measures: negative reconstruction, mutual information and marginal KL (which add
            up to the negative ELBO, up to Monte Carlo error), next to the importance-weighted
            log-likelihood, which compares the *models* whatever objective trained them.
            """
        ),
        code(
            """
            rows = []
            for name, (history, report, seconds) in runs.items():
                site = report["z"]
                rows.append({"run": name, "-reconstruction": -report.elbo["reconstruction"], "MI": site.mi,
                             "marginal KL": site.aggregate_kl, "-ELBO": -report.elbo["elbo"],
                             "-IW log p(x)": -report.elbo["log_likelihood"], "active units": site.active_units})
            table = pd.DataFrame(rows).set_index("run")
            table.round(3)
            """
        ),
        code(
            """
            fig = Figure(figsize=(10, 3.8), layout="constrained")
            ax = fig.add_subplot()
            y = np.arange(len(table))
            left = np.zeros(len(table))
            for column, color in [("-reconstruction", "#bdbdbd"), ("MI", "#2b8cbe"), ("marginal KL", "#fdae61")]:
                width = table[column].clip(lower=0).to_numpy()
                ax.barh(y, width, left=left, color=color, edgecolor="black", lw=0.4, label=column)
                left += width
            ax.scatter(table["-IW log p(x)"], y, marker="|", s=400, color="#d7301f", zorder=3, label="-IW log p(x)")
            ax.set_yticks(y, table.index)
            ax.invert_yaxis()
            ax.set_xlabel("nats per held-out sequence (lower is better)")
            ax.set_title("negative ELBO = -reconstruction + MI + marginal KL")
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fig
            """
        ),
        md(
            r"""
            Reading the full run:

            * **ELBO**: no information, no marginal KL; everything is reconstruction.
            * **ELBO + 0.5 $I_q$**: the model buys about the topic's $\log 4 \approx 1.39$ nats
              of information, and the marginal KL stays small. Its
              reconstruction improves by about as much as the information costs, so its ELBO is
              a little lower than the plain one, yet its IW log-likelihood is as good or
              better: the ELBO under-rates this model.
            * **ELBO + 1.0 $I_q$**: information is no longer charged at all, and the model puts
              several nats into $z$, more than the topic: the reconstruction gets much better, the
              ELBO worse, and the IW log-likelihood no better than the collapsed model's. The discount $\alpha$ is a knob between
              collapse and over-encoding.
            * **$\beta$-TC, $\alpha = 0.5$**, the MI-regularised objective with other
              estimators, keeps much less information than its twin in our run (see above).
            * **InfoVAE $\alpha = 0.5$** behaves like the MI discount: some information,
              small marginal KL.
            * **InfoVAE $\alpha = 1$, $\lambda = 10$** is the cautionary tale: without the
              per-sequence KL the encoder spreads its codes freely, the MMD penalty is too weak
              to hold the aggregate posterior at the prior, and the marginal KL explodes. The
              reconstruction is the best of all, but the ELBO and the IW log-likelihood are far
              worse, and sampling from the prior would produce codes the decoder never saw.
              Zhao et al. use a much larger $\lambda$; try it, and check the marginal KL.

            The decomposition is what makes these trade-offs visible: the same total KL can be
            information (useful) or marginal mismatch (harmful).

            ## Summary

            * `diagnose` reports $\mathrm{KL} = I_q + \mathrm{KL}(q(z) \,\|\, p(z))$ per site
              (`report["z"].mi`, `.aggregate_kl`, with the Monte Carlo check
              `.kl_identity_gap`); `BetaTCELBO` records index-code MI, total correlation and
              dimension-wise KL during training.
            * `MIRegularizedELBO` and `InfoVAEELBO` keep information in $z$ that the plain ELBO
              throws away; how much is set by $\alpha$ (and $\lambda$).
            * Compare models trained with different objectives by a common yardstick (the IW
              log-likelihood, `estimators=("iw", ...)`), not by their objectives.

            **References.** Hoffman & Johnson (2016), ELBO surgery: yet another way to carve up
            the variational evidence lower bound, NIPS AABI workshop. Chen, Li, Grosse &
            Duvenaud (2018), Isolating Sources of Disentanglement in VAEs, NeurIPS. Zhao, Song &
            Ermon (2019), InfoVAE: Balancing Learning and Inference in Variational
            Autoencoders, AAAI. He et al. (2019), Lagging Inference Networks and Posterior
            Collapse in VAEs, ICLR. Burda, Grosse & Salakhutdinov (2016), Importance Weighted
            Autoencoders, ICLR.
            """
        ),
    ]


# ======================================================================================
# 06: the sequence VAE
# ======================================================================================
def sequence_vae() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 6. The sequence VAE: text-like data, word dropout and the comparison grid

            Bowman et al. (2016) trained the first VAE for sentences, an LSTM encoder and an
            LSTM language-model decoder, and met posterior collapse head-on. Their two fixes
            were KL annealing (notebook 3) and *word dropout*: during training, each word the
            decoder receives as input is replaced by `<unk>` with probability $p$, so the
            decoder cannot rely on the prefix alone and must get the rest from $z$.

            This notebook

            1. shows the token-data conventions and how to load your own text;
            2. sweeps the word-dropout rate and measures what $z$ carries;
            3. decodes: reconstructions, samples from the prior, and interpolations between
               sentences (`SequenceVAE.generate`);
            4. runs the comparison grid, `pyrocollapse.compare`, over priors, objectives and
               seeds, the way you would choose a remedy for your own data.
            """
        ),
        code(
            """
            import os
            import tempfile
            from collections import Counter
            from pathlib import Path

            import numpy as np
            import pandas as pd
            import pyro
            import torch

            from pyrocollapse import RunConfig, compare, diagnose, fit, load_dataset, plots
            from pyrocollapse.comparison import format_summary
            from pyrocollapse.data import decode_tokens
            from pyrocollapse.elbo import PlainELBO
            from pyrocollapse.models import SequenceVAE

            %matplotlib inline

            SMOKE = os.environ.get("PYROCOLLAPSE_SMOKE") == "1"  # CI: tiny budgets
            N_SEQUENCES = 300 if SMOKE else 1500
            EPOCHS = 2 if SMOKE else 25
            DROPOUT_RATES = (0.0, 0.5) if SMOKE else (0.0, 0.25, 0.5, 0.75)
            GRID_EPOCHS = 1 if SMOKE else 25
            GRID_JOBS = 1 if SMOKE else 2  # worker processes for the grid (each starts in ~3 s)

            pyro.set_rng_seed(0)
            torch.set_num_threads(2)
            print(f"smoke mode: {SMOKE}: {N_SEQUENCES} sequences, {EPOCHS} epochs")
            """
        ),
        md(
            r"""
            ## Token data

            Token data sets are `Dataset`s of kind `"tokens"`: int64 ids of shape
            `(N, max_len)`, each row `<bos> w_1 ... w_k <eos>` followed by `<pad>`, with ids 0-3
            reserved for `<pad>`, `<bos>`, `<eos>` and `<unk>`. Your own corpus, one sentence per
            line, loads with `load_dataset("text", path=...)`, which builds the vocabulary
            (most frequent first); `SequenceVAE.from_dataset` sizes a model for it:
            """
        ),
        code(
            """
            corpus = [
                "the cat sat on the mat",
                "the dog sat on the rug",
                "a cat chased a mouse",
                "the dog chased the cat",
                "stocks fell sharply on monday",
                "stocks rose on friday",
            ]
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "corpus.txt"
                path.write_text("\\n".join(corpus) + "\\n", encoding="utf-8")
                text = load_dataset("text", path=str(path))
            print(text, "vocabulary:", text.vocab[:12], "...")
            print(text.data[:2])
            print(decode_tokens(text.data[0], text.vocab))
            SequenceVAE.from_dataset(text, latent_dim=4, embed=16, hidden=32)
            """
        ),
        md(
            r"""
            Six sentences do not train a VAE; we use the synthetic topic sequences of the
            earlier notebooks instead, because their latent factor (the topic) is known. Each
            word falls in its topic's block of the vocabulary with probability at least 0.9, so
            we can tell the topic of any sequence, including generated ones, by a majority vote
            of its words.
            """
        ),
        code(
            """
            data = load_dataset("sequences", n=N_SEQUENCES, vocab_size=24, max_len=12, n_topics=4, seed=0)
            train, valid = data.split(0.2, seed=0)
            topic_of_word = {w: t for t, words in enumerate(data.metadata["topic_words"]) for w in words}


            def topic(ids):
                votes = Counter(topic_of_word[i] for i in ids.tolist() if i in topic_of_word)
                return votes.most_common(1)[0][0] if votes else -1


            true_topic = valid.factors[:, 0].int().numpy()
            print("majority vote recovers the true topic of", np.mean([topic(r) == t for r, t in zip(valid.data, true_topic)]), "of held-out sequences")
            """
        ),
        md(
            r"""
            ## Sweeping the word-dropout rate

            `SequenceVAE(word_dropout=p)` applies word dropout only in training mode; call
            `vae.eval()` before evaluating. For each rate we train with the plain ELBO and
            measure on held-out sequences the active units, $I_q(x; z)$, the IW log-likelihood
            and the *reconstruction topic accuracy*: decode $\mathbb{E}_q[z \mid x]$ greedily
            (`vae.reconstruct`) and check whether the reconstruction has the input's topic
            (chance: 25%).
            """
        ),
        code(
            """
            models, reports = {}, {}
            rows = []
            for rate in DROPOUT_RATES:
                pyro.clear_param_store()
                # from_dataset: vocabulary size and generation length (max_len) from the data
                vae = SequenceVAE.from_dataset(data, latent_dim=4, embed=32, hidden=64, word_dropout=rate)
                fit(vae.model, vae.guide, train.data, loss=PlainELBO(), optim=pyro.optim.Adam({"lr": 3e-3}),
                    epochs=EPOCHS, batch_size=50, seed=0, progress=False)
                vae.eval()
                report = diagnose(vae.model, vae.guide, valid.data, vae.latent_sites,
                                  estimators=("kl", "au", "mi", "iw"), importance_samples=50)
                reconstructions = vae.reconstruct(valid.data)
                accuracy = np.mean([topic(r) == t for r, t in zip(reconstructions, true_topic)])
                models[rate], reports[rate] = vae, report
                rows.append({"word dropout": rate, "active units": report["z"].active_units, "MI": report["z"].mi,
                             "ELBO": report.elbo["elbo"], "IW log p(x)": report.elbo["log_likelihood"],
                             "reconstruction topic accuracy": accuracy})
            sweep = pd.DataFrame(rows).set_index("word dropout")
            sweep.round(3)
            """
        ),
        md(
            r"""
            In the full run, without dropout the model collapses and reconstructs every
            sequence as the same sentence, so its topic accuracy is at chance level. A light
            dropout (0.25) is not enough to change that; from 0.5 on the mutual information
            approaches the topic's $\log 4 \approx 1.39$ nats and the reconstructions keep the
            input's topic almost always: $z$ now carries it. The likelihood hardly suffers at
            moderate rates (in our run the IW log-likelihood with dropout 0.25 or 0.5 is even a
            little better than without: word dropout also regularises the decoder); at high
            rates the ELBO and the IW log-likelihood fall, because the model is evaluated
            without dropout but was trained to predict words it could not see. The KL bars of
            the highest rate:
            """
        ),
        code(
            """
            plots.plot_kl_per_dim(reports[max(DROPOUT_RATES)])
            """
        ),
        md(
            r"""
            ## Decoding: reconstructions, samples, interpolations

            `vae.generate(z, greedy=...)` decodes latents one token at a time (sampling, or the
            most probable token with `greedy=True`); `vae.reconstruct(x)` is the greedy decoding
            of the posterior mean and `vae.sample(n)` decodes prior draws. First, reconstructions
            from the collapsed model and from the one trained with dropout 0.5:
            """
        ),
        code(
            """
            def words(ids):
                return " ".join(decode_tokens(ids, data.vocab))


            collapsed, informative = models[0.0], models[0.5]
            frame = pd.DataFrame({
                "input": [words(r) for r in valid.data[:6]],
                "no dropout": [words(r) for r in collapsed.reconstruct(valid.data[:6])],
                "dropout 0.5": [words(r) for r in informative.reconstruct(valid.data[:6])],
            })
            frame
            """
        ),
        md(
            r"""
            Samples from the prior: a VAE whose aggregate posterior matches the prior produces
            plausible, topic-consistent sequences from any $z \sim p(z)$. (The collapsed model
            also produces plausible sequences: it is a good language model; it just cannot be
            steered through $z$.)
            """
        ),
        code(
            """
            pyro.set_rng_seed(1)
            for ids in informative.sample(6):
                print(f"topic {topic(ids):>2}:", words(ids))
            """
        ),
        md(
            r"""
            Interpolation (Bowman et al. 2016, Table 8): decode points on the line between the
            posterior means of two held-out sequences of different topics. With an informative
            $z$ the decoded topic switches somewhere along the path; with a collapsed $z$ every
            point decodes to the same sentence.
            """
        ),
        code(
            """
            first = int(np.flatnonzero(true_topic == 0)[0])
            second = int(np.flatnonzero(true_topic == 3)[0])
            steps = torch.linspace(0, 1, 7)[:, None]
            for name, vae in [("no dropout", collapsed), ("dropout 0.5", informative)]:
                with torch.no_grad():
                    ends = vae.encode(valid.data[[first, second]]).mean
                path = (1 - steps) * ends[0] + steps * ends[1]
                print(f"--- {name}")
                for t, ids in zip(steps[:, 0], vae.generate(path, greedy=True)):
                    print(f"  t={float(t):.2f} topic {topic(ids):>2}: {words(ids)}")
            """
        ),
        md(
            r"""
            ## The comparison grid

            Which prior and objective fix collapse on *your* data, and at what cost in
            likelihood? `compare` trains every prior $\times$ objective $\times$ seed combination
            with the same engine as `pyrocollapse run`, writes a full report folder per run,
            and returns a table ranked by the held-out IW log-likelihood (then by active units),
            with the mean and spread over seeds. A `RunConfig` names everything else by its
            registry name and plain options. Finished runs are skipped when a grid is started
            again, a failing run is recorded without stopping the others, and `jobs=2` runs two
            cells at a time in worker processes (in smoke mode one, as starting a worker costs
            more than a one-epoch run).

            The grid below trains the collapse-prone model (no word dropout) with two priors
            and three objectives; `annealed` warms the KL weight up linearly over the first third
            of training, and `freebits` gets a floor of 1 nat on the KL of the whole site
            (`per="site"`: a mixture prior does not factorise over dimensions, so there is no
            per-dimension KL to floor; the default `per="dimension"` refuses such a prior with an
            error saying so).
            """
        ),
        code(
            """
            base = RunConfig(
                dataset="sequences",
                dataset_options={"n": N_SEQUENCES, "vocab_size": 24, "max_len": 12, "n_topics": 4},
                valid_fraction=0.2,
                model="sequence",
                latent_dim=4,
                model_options={"embed": 32, "hidden": 64},
                epochs=GRID_EPOCHS,
                batch_size=50,
                lr=3e-3,
                estimators=("kl", "au", "mi"),  # compare adds "iw"
                bootstrap=0,
                posterior_samples=20,
                posterior_points=100,
            )
            workdir = tempfile.TemporaryDirectory(prefix="pyrocollapse-")  # removed at the end
            grid_folder = Path(workdir.name) / "grid"
            summary = compare(
                priors=["standard"] if SMOKE else ["standard", "mixture"],
                elbos=["elbo", "freebits"] if SMOKE else ["elbo", "annealed", "freebits"],
                seeds=1 if SMOKE else 2,
                out=grid_folder,
                base=base,
                prior_options={"mixture": {"n_components": 4}},
                elbo_options={"freebits": {"free_bits": 1.0, "per": "site"}},
                iw_samples=50,
                jobs=GRID_JOBS,  # cells run in parallel worker processes
                progress=False,
            )
            print(format_summary(summary))
            """
        ),
        code(
            """
            plots.plot_comparison(summary)
            """
        ),
        md(
            r"""
            Reading the full grid: the plain ELBO collapses with either prior (zero active
            units, no information); a mixture prior alone does not change that, because the
            decoder, not the prior's shape, is why $z$ is unused (notebook 4). Free bits keep
            $z$ informative with either prior. Annealing alone keeps only a little information
            with the standard prior, but together with the mixture prior it keeps about as much
            as free bits: once annealing opens the door, a prior that fits the codes makes the
            information cheaper to keep. The ranking is by the IW
            log-likelihood, and the spreads over seeds say which differences to believe: on this
            data all cells are within a few tenths of a nat, so the choice among the
            non-collapsing remedies is about the code you need, not about the fit.

            Every run left a report folder behind: the metrics, the training history, the
            guide's draws as netCDF, the figures and one HTML page that shows them all.
            """
        ),
        code(
            """
            run_folder = sorted((grid_folder / "runs").iterdir())[0]
            print(run_folder.name, "->", sorted(p.name for p in run_folder.iterdir()))
            print("figures:", sorted(p.name for p in (run_folder / "figures").iterdir()))
            print(pd.read_csv(grid_folder / "runs.csv")[["run", "status", "active_units", "mi", "iw_log_likelihood"]].round(3))
            """
        ),
        code(
            """
            workdir.cleanup()  # skip this cell to keep the grid folder and open its report.html pages
            """
        ),
        md(
            r"""
            The same grid runs from the command line, in parallel and resumable:

            ```bash
            pyrocollapse compare --dataset sequences --dataset-option n=1500 --valid-fraction 0.2 \
                --model sequence --latent-dim 4 --model-option embed=32 --model-option hidden=64 \
                --epochs 25 --batch-size 50 --lr 3e-3 \
                --priors standard,mixture --elbos elbo,annealed,freebits \
                --prior-option mixture.n_components=4 \
                --elbo-option freebits.free_bits=1.0 --elbo-option freebits.per=site \
                --seeds 2 --jobs 2 --out runs/grid
            ```

            (`pyrocollapse compare --help` lists the options.)

            ## Summary

            * Word dropout weakens the decoder and makes $z$ informative, at a price in
              likelihood; `vae.eval()` switches it off for evaluation.
            * `generate`, `reconstruct` and `sample` decode with the autoregressive decoder;
              interpolations show whether $z$ steers the output.
            * `compare` answers "which remedy, at what cost" for your data with a ranked,
              seed-averaged table and a report folder per run.

            **References.** Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio (2016),
            Generating Sentences from a Continuous Space, CoNLL. Kingma et al. (2016), Improved
            Variational Inference with Inverse Autoregressive Flow, NeurIPS (free bits). Fu et
            al. (2019), Cyclical Annealing Schedule, NAACL. Burda, Grosse & Salakhutdinov (2016),
            Importance Weighted Autoencoders, ICLR.
            """
        ),
    ]


# ======================================================================================
# 07: bring your own Pyro model
# ======================================================================================
def bring_your_own_model() -> list[nbformat.NotebookNode]:
    return [
        md(
            r"""
            # 7. Bring your own Pyro model

            Nothing in pyrocollapse's training loop, objectives or diagnostics needs the ready
            models of `pyrocollapse.models`: they work on any Pyro model/guide pair, written the
            way Pyro's own examples write them, with no wrapper. This notebook writes three
            programs from scratch in plain Pyro, trains each with `fit` and diagnoses it with
            `diagnose`:

            1. a small nonlinear factor model `model(x)` with an amortised guide, trained with a
               stock Pyro ELBO and run through the whole diagnostic kit: `diagnose`, the PSIS
               check of the guide, `to_inference_data`, `summarize`, netCDF;
            2. a **deep Markov model** in the style of Pyro's `examples/dmm.py`,
               `model(sequences, mask, lengths)`, with `pyro.markov`, masks for the padded time
               steps and a GRU-based combiner guide: one site `z_t` per time step, each with the
               conditional prior $p(z_t \mid z_{t-1})$;
            3. an **M2 semi-supervised VAE** in the style of Pyro's
               `examples/vae/ss_vae_M2.py`, `model(xs, ys=None)`, with the class `y` enumerated
               in the guide: a discrete latent next to a continuous one.

            **What your programs must look like** (the same rules as Pyro's own SVI):

            * `model` and `guide` take the same arguments, as `SVI.step` passes them. Give `fit`
              and `diagnose` the data in the same form: one tensor (`model(x)`), a tuple of
              arguments (`model(sequences, mask, lengths)`) or a dict of keyword arguments
              (`model(xs=..., ys=None)`). Every tensor is cut into minibatches along its first
              dimension, together with the others; `None` and numbers go to every minibatch
              unchanged.
            * The data plate is the outermost plate around the observed sites (the plate over
              sequences of a DMM, not its time steps); local latent sites lie inside it.
            * `diagnose(..., latent_sites=None)` (the default) finds every latent site:
              continuous local sites get every estimator, discrete ones (enumerated or sampled)
              their exact KL and mutual information, global ones (outside the data plate) their
              KL and posterior contraction (`report.global_sites`), and sites it cannot read are
              listed with the reason in `report.skipped`.
            * The importance-sampling estimators (IW log-likelihood, PSIS $\hat k$), the decoder
              sensitivity and the ArviZ export need every model site inside the data plate
              (global parameters as `pyro.param`s or modules, not latent variables).
            """
        ),
        code(
            """
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

            %matplotlib inline

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
            """
        ),
        md(
            r"""
            ## Data from two hidden factors

            Twelve observed variables driven nonlinearly by two independent factors $f$:
            $x = \mathrm{softplus}(f W_1 + b_1)\, W_2 + 0.1\,\varepsilon$. We keep $f$ to check
            later what the latent code learned.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            ## The model and the guide, in plain Pyro

            A nonlinear factor model with four latent factors (twice as many as the data have),
            a Gaussian decoder with a learned noise scale per variable, and an amortised guide
            $q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)$. The networks are
            ordinary `nn.Module`s registered with `pyro.module`; nothing here comes from
            pyrocollapse.
            """
        ),
        code(
            """
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
            """
        ),
        md(
            r"""
            ## Training with a stock Pyro ELBO

            `fit` takes any Pyro ELBO. A stock one reports only its loss, so `fit` cannot tell
            which latent sites to monitor: `monitor=["z"]` asks for the active units and the
            mutual information of `z` at the end of every epoch anyway.
            """
        ),
        code(
            """
            pyro.clear_param_store()
            history = fit(model, guide, x_train, loss=pyro.infer.TraceMeanField_ELBO(), optim=pyro.optim.Adam({"lr": 3e-3}),
                          epochs=EPOCHS, batch_size=100, seed=0, progress=False, monitor=["z"])
            history.to_dataframe()[["epoch", "elbo", "active_units/z", "mi/z"]].iloc[:: max(1, EPOCHS // 8)].round(3)
            """
        ),
        md(
            r"""
            pyrocollapse's own objectives are Pyro ELBOs too, and their `breakdown` splits the
            ELBO of your model per site: the log-likelihood of each observed site and the KL of
            each latent site *per dimension*. Already here you can see that two of the four
            latent dimensions cost almost nothing (in the full run):
            """
        ),
        code(
            """
            terms = PlainELBO().breakdown(model, guide, x_valid)
            print("log-likelihood of x per point:", float(terms["x"]) / len(x_valid))
            print("KL of z per dimension and point:", (terms["z"] / len(x_valid)).numpy().round(3))
            """
        ),
        md(
            r"""
            ## Diagnosing the hand-written model

            `diagnose(model, guide, data, latent_sites=("z",))` works as for the ready models.
            Adding the `"iw"` and `"psis"` estimators also measures the importance-weighted
            log-likelihood (and with it the inference gap, $\log p(x) - \mathrm{ELBO}$) and the
            Pareto $\hat k$ of the importance weights of each point, which says whether the guide
            is a usable approximation of the true posterior (Yao et al. 2018: $\hat k > 0.7$ is
            bad). A collapsed dimension can reflect a poor guide rather than the model; the
            report adds a note when many points have a large $\hat k$.
            """
        ),
        code(
            """
            report = diagnose(model, guide, x_valid, latent_sites=("z",),
                              estimators=("kl", "au", "mi", "rhat", "sensitivity", "iw", "psis"), importance_samples=100)
            print(report)
            """
        ),
        md(
            r"""
            Read the full run carefully. By the active-unit rule all four dimensions are
            `active` and the verdict is *healthy*, yet two of them carry only a few hundredths
            of a nat, and the first note says why to distrust their status: $q(z_d \mid x)$
            moves a little with $x$, but the decoder ignores $z_d$ (its sensitivity is over a
            thousand times smaller than that of the other two). The threshold of the rule, a
            variance of the posterior means above 0.01 (Burda et al. 2016), is a convention;
            `diagnose` takes `au_threshold` and `mi_threshold` if your problem calls for stricter
            ones:
            """
        ),
        code(
            """
            strict = diagnose(model, guide, x_valid, latent_sites=("z",), au_threshold=0.1, mi_threshold=0.1)
            print(f"verdict {strict.verdict!r}, statuses {strict['z'].status}")
            """
        ),
        md(
            r"""
            With the stricter thresholds the model has two active dimensions, one per true
            factor, and two collapsed ones: the same benign partial collapse as the linear VAE
            with surplus dimensions (notebook 2) and the MLP VAE with a standard prior
            (notebook 4).

            The second note concerns the guide: $\hat k > 0.7$ for about a tenth of the points.
            There the diagonal Gaussian $q(z \mid x)$ is a poor importance proposal for the true
            posterior of this nonlinear model, which also shows as an inference gap (IW
            log-likelihood minus ELBO) of a good fraction of a nat. The unused dimensions are
            not an artefact of the guide, though: the decoder itself ignores them.
            """
        ),
        code(
            """
            report.plot("kl")
            """
        ),
        code(
            """
            report.plot("khat")
            """
        ),
        md(
            r"""
            Do the active dimensions carry the true factors? Regress each true factor on the
            posterior means $\mathbb{E}_q[z \mid x]$ of the dimensions active under the strict
            thresholds; $R^2$ close to 1 means the code recovers the factor (up to a smooth
            transformation, which a linear regression captures only approximately).
            """
        ),
        code(
            """
            active = np.flatnonzero(np.array(strict["z"].status) == "active")
            with torch.no_grad():
                codes = encoder(x_valid)[0].numpy()[:, active]
            design = np.column_stack([codes, np.ones(len(codes))])
            for k in range(TRUE_FACTORS):
                target = f_valid[:, k].numpy()
                fitted = design @ np.linalg.lstsq(design, target, rcond=None)[0]
                print(f"factor {k}: R^2 = {1 - np.var(target - fitted) / np.var(target):.3f} from active dims {active.tolist()}")
            """
        ),
        md(
            r"""
            A report holds numbers only, so it saves to JSON and loads back unchanged (the
            command line writes the same file into its report folders), and `compare` lines up
            two reports dimension by dimension: here the default and the strict thresholds.
            """
        ),
        code(
            """
            workdir = tempfile.TemporaryDirectory(prefix="pyrocollapse-")  # removed at the end
            folder = Path(workdir.name)
            report.to_json(folder / "report.json")
            reloaded = CollapseReport.from_json(folder / "report.json")
            print(reloaded.verdict, reloaded["z"].status)
            reloaded.compare(strict)[["dim", "kl_before", "mi_before", "au_variance_before", "sensitivity_before", "status_before", "status_after"]].round(3)
            """
        ),
        md(
            r"""
            ## The ArviZ view

            `to_inference_data` runs the guide and the model over the held-out data and returns
            an `arviz.InferenceData` with the guide's draws of every latent site (`posterior`,
            dims `chain, draw, data, z_dim_0`, named after the plates), ancestral draws from the model (`prior`), the
            observations, and the log-likelihood of every observation under every draw.
            `summarize` compares, per latent dimension, the aggregate posterior with the prior;
            a collapsed dimension has `sd_ratio` and `rhat_obs` near 1 (notebook 1), as the two
            dimensions the decoder ignores do in the full run.
            """
        ),
        code(
            """
            idata = to_inference_data(model, guide, x_valid, num_samples=POSTERIOR_DRAWS)
            print(idata)
            summarize(idata)[["mean", "sd", "prior_sd", "obs_sd", "sd_ratio", "rhat_obs"]].round(3)
            """
        ),
        md(
            r"""
            The InferenceData saves to netCDF and loads back with its values, dimensions and
            attributes (which record that the draws come from a variational guide, not MCMC),
            and every ArviZ function accepts it, for example `arviz.summary` of the draws of one
            observation:
            """
        ),
        code(
            """
            save_inference_data(idata, folder / "posterior.nc")
            loaded = load_inference_data(folder / "posterior.nc")
            same = np.array_equal(loaded.posterior["z"].values, idata.posterior["z"].values)
            print(f"{(folder / 'posterior.nc').stat().st_size / 1e6:.1f} MB on disk, identical after loading: {same}")
            print(loaded.posterior.attrs["posterior_kind"])
            az.summary(loaded.posterior["z"].sel(data=0), kind="stats")
            """
        ),
        code(
            """
            workdir.cleanup()
            """
        ),
        md(
            r"""
            ## A deep Markov model, written as in Pyro's examples

            A deep Markov model (Krishnan, Shalit & Sontag 2017) is a nonlinear state-space
            model: a latent chain $z_1, \dots, z_T$ with transitions
            $p(z_t \mid z_{t-1}) = \mathcal N(\mu(z_{t-1}), \operatorname{diag}\sigma(z_{t-1})^2)$
            and emissions $p(x_t \mid z_t)$, fitted with a guide
            $q(z_t \mid z_{t-1}, x_{t:T})$ that combines the previous draw with a GRU run backwards
            over the sequence. Pyro's `examples/dmm.py` trains one on polyphonic music; here the
            "music" is synthetic: a hidden 2-D state turns by 45° per step, shrinks by 0.9 and
            receives fresh Gaussian noise (sd 0.5), and ten binary "notes" are played with
            probabilities that depend on the state. The sequences have lengths 4 to 8, zero-padded
            to 8 steps, with a mask that marks the real steps. Every step brings new information
            (the noise), so a good model needs every $z_t$.
            """
        ),
        code(
            """
            generator = torch.Generator().manual_seed(1)
            T_MAX, NOTES = 8, 10
            lengths = torch.randint(4, T_MAX + 1, (N_SEQUENCES,), generator=generator)
            turn = torch.tensor(np.pi / 4)
            rotation = 0.9 * torch.tensor([[turn.cos(), -turn.sin()], [turn.sin(), turn.cos()]])
            readout = 3 * torch.randn(2, NOTES, generator=generator)
            state = torch.randn(N_SEQUENCES, 2, generator=generator)
            frames = []
            for t in range(T_MAX):
                state = state @ rotation.T + 0.5 * torch.randn(N_SEQUENCES, 2, generator=generator)
                frames.append(torch.bernoulli(torch.sigmoid(state @ readout), generator=generator))
            mask = torch.arange(T_MAX) < lengths.unsqueeze(-1)  # (N, T_MAX): True on the real steps
            sequences = torch.stack(frames, dim=1) * mask.unsqueeze(-1)  # (N, T_MAX, NOTES), zero padding
            print(tuple(sequences.shape), "sequences reaching each step:", mask.sum(0).tolist())
            """
        ),
        md(
            r"""
            The networks and the two programs, as Pyro's example writes them: a gated
            transition, an emitter, a combiner and a GRU in one `nn.Module` whose `model` and
            `guide` methods take `(sequences, mask, lengths)`. The time loop runs under
            `pyro.markov`, each step is one site `z_t` inside the plate over sequences, and the
            padded steps are masked out, in the model with the distribution's `.mask(...)` and
            in the guide with `poutine.mask` (either works). Unlike Pyro's example there is no
            `annealing_factor` argument and no `poutine.scale`: the KL annealing lives in the
            objective, `AnnealedELBO`.
            """
        ),
        code(
            """
            Z_DIM, HIDDEN = 2, 32


            def reverse_padded(x, lengths):
                \"\"\"Reverse each sequence x[b, :lengths[b]] in time; the padding stays at the end.\"\"\"
                steps = torch.arange(x.shape[1])
                last = lengths.unsqueeze(-1) - 1
                index = torch.where(steps <= last, last - steps, steps)
                return x.gather(1, index.unsqueeze(-1).expand_as(x))


            class GatedTransition(nn.Module):
                \"\"\"p(z_t | z_{t-1}): a gated mix of a linear and a nonlinear proposed mean.\"\"\"

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
                \"\"\"q(z_t | z_{t-1}, x_{t:T}) from the previous draw and the backward GRU's state.\"\"\"

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
            """
        ),
        md(
            r"""
            ### Training: the data as a tuple of arguments

            `fit` takes the programs' arguments as a tuple, `(sequences, mask, lengths)`, and
            cuts all three into minibatches of sequences together; the ELBO per data point is
            per *sequence* (the plate around the observed sites), not per time step.
            `AnnealedELBO(Linear(warmup_steps=200))` raises the KL weight from 0 to 1 over the
            first 200 steps, as `annealing_factor` does in Pyro's example, and records the KL of
            every site `z_t`. `monitor=None` skips the per-epoch mutual information of the eight
            sites, which would cost more than the training here; `diagnose` measures it at the end.
            """
        ),
        code(
            """
            pyro.clear_param_store()
            dmm_history = fit(dmm.model, dmm.guide, (sequences, mask, lengths), loss=AnnealedELBO(Linear(warmup_steps=200)),
                              optim=pyro.optim.Adam({"lr": 3e-3}), epochs=DMM_EPOCHS, batch_size=50, seed=0, progress=False,
                              monitor=None)
            columns = ["epoch", "elbo", "kl", "kl_weight", "kl/z_1", "kl/z_2", f"kl/z_{T_MAX}"]
            dmm_history.to_dataframe()[columns].iloc[:: max(1, DMM_EPOCHS // 8)].round(3)
            """
        ),
        md(
            r"""
            ### Diagnosis with no wrapper

            `diagnose(model, guide, (sequences, mask, lengths))`, with the default
            `latent_sites=None`, finds the sites `z_1` to `z_8` by tracing the programs over
            every chunk of data, and measures each on the real steps only: `z_8` on the sequences
            of length 8, and so on (the padded steps are masked, so they are left out).
            """
        ),
        code(
            """
            dmm_report = diagnose(dmm.model, dmm.guide, (sequences, mask, lengths))
            print(dmm_report)
            print("\\nskipped:", dmm_report.skipped or "none", "| global sites:", list(dmm_report.global_sites) or "none")
            """
        ),
        md(
            r"""
            In the full run every dimension of every step is active and the verdict is
            *healthy*: each $z_t$ carries about one nat beyond what $z_{t-1}$ already says (the
            fresh noise of the hidden state), $z_1$ about two (it starts the chain, with nothing
            before it). The decoder sensitivity falls along the sequence: $z_t$ shapes
            $x_t$ and, through the transitions, every later step, so $z_1$ weighs on eight frames
            and $z_8$ on one (of the longest sequences only). (In smoke mode, two epochs inside the KL
            warm-up, the numbers mean nothing.)

            **The rule for a Markov chain.** The report states it at the bottom: a site with a
            conditional diagonal-Normal prior, here $p(z_t \mid z_{t-1}) =
            \mathcal N(\mu(z_{t-1}), \operatorname{diag}\sigma(z_{t-1})^2)$, is measured in that
            prior's standardised coordinates
            $$
            u_t = \frac{z_t - \mu(z_{t-1})}{\sigma(z_{t-1})}
            $$
            at the guide's own draw of $z_{t-1}$. Under the prior $u_t \sim \mathcal N(0, I)$
            whatever $z_{t-1}$, so the active-unit variance $\operatorname{Cov}_x(\mathbb{E}_q[u_t])$
            and the mutual information $I_q(x; u_t)$ count only what the sequence tells about
            $z_t$ *beyond* its parent. The KL is the term the ELBO subtracts,
            $\mathbb{E}_q\,\mathrm{KL}(q(z_t \mid z_{t-1}, x) \,\|\, p(z_t \mid z_{t-1}))$ (an
            affine change of coordinates leaves a KL unchanged), and
            KL = MI + marginal KL still holds per site. `z_1` has no latent parent (its prior
            mean comes from the parameter `z_0`), so it is measured as it is.

            Here is the KL of the first step; `plot("kl", site=...)` draws any step.
            """
        ),
        code(
            """
            dmm_report.plot("kl", site="z_1")
            """
        ),
        md(
            r"""
            ### The control: a guide equal to the prior

            Is a *healthy* reading earned? The control is the same model with a guide that
            ignores the data: the model itself with its observed sites hidden,
            `poutine.block(model, hide_fn=lambda msg: msg["is_observed"])`, draws every $z_t$ from
            $p(z_t \mid z_{t-1})$. Then $q = p$ exactly, every KL is zero, and nothing about $x$
            reaches $z$: the report must read *full collapse*. (Training a DMM whose emitter
            ignores $z$ leads to the same reading, after the guide has been pulled onto the prior.)
            """
        ),
        code(
            """
            prior_guide = poutine.block(dmm.model, hide_fn=lambda msg: msg["is_observed"])  # q(z_t | z_{t-1}, x) = p(z_t | z_{t-1})
            control_report = diagnose(dmm.model, prior_guide, (sequences, mask, lengths))
            print(f"verdict: {control_report.verdict}")
            control = control_report.to_dataframe()[["site", "dim", "kl", "au_variance", "mi", "status"]]
            control.round(4)
            """
        ),
        md(
            r"""
            **Why the old rule called this chain active.** The active-unit rule of Burda et al.
            (2016) asks whether the posterior mean moves with the data:
            $\operatorname{Cov}_x(\mathbb{E}_q[z_d \mid x]) > 0.01$. Applied to $z_t$ directly, as
            earlier versions of pyrocollapse did, it takes the mean of
            $q(z_t \mid z_{t-1}, x)$ at the guide's draw of $z_{t-1}$, and for the prior guide
            that mean is $\mu(z_{t-1})$. It moves from sequence to sequence, not because of $x$
            but because every sequence carries its own random draw of $z_{t-1}$ down the chain.
            The same spread makes the aggregate posterior $q(z_t)$ wider than any single
            $q(z_t \mid z_{t-1}, x)$, which a mutual-information estimate in raw coordinates reads
            as information. Computing the old number by hand, from one trace of the guide:
            """
        ),
        code(
            """
            with torch.no_grad():
                trace = poutine.trace(prior_guide).get_trace(sequences, mask, lengths)
            old_rule = []
            for t in range(1, T_MAX + 1):
                means = trace.nodes[f"z_{t}"]["fn"].mean[mask[:, t - 1]]  # E_q[z_t | z_{t-1}, x], real steps
                for d, variance in enumerate(means.var(0).tolist()):
                    old_rule.append({"site": f"z_{t}", "dim": d, "old: Var_x E_q[z_t]": variance,
                                     "old status": "active" if variance > 0.01 else "collapsed"})
            pd.DataFrame(old_rule).merge(control[["site", "dim", "au_variance", "status"]], on=["site", "dim"]).round(4)
            """
        ),
        md(
            r"""
            By the old rule every step after the first is "active" (a variance of order one,
            the spread of the chain itself), although the guide has never looked at the data;
            only `z_1`, whose prior mean is a constant, reads collapsed. Measured given its
            parent, every step has variance and MI zero: *full collapse*, as it should be. A
            DMM trained for real is healthy under both rules here, but only the conditional
            rule would notice if the later steps stopped using the data.
            """
        ),
        md(
            r"""
            ## An M2 semi-supervised VAE with an enumerated class

            Kingma et al.'s (2014) M2 model has two latents per point: a class
            $y \sim \mathrm{Categorical}(\text{uniform})$ and a continuous style
            $z \sim \mathcal N(0, I)$, with $p(x \mid y, z)$ a decoder of both. Its guide is a
            classifier $q(y \mid x)$ and an encoder $q(z \mid x, y)$. When a point has a label,
            $y$ is observed in the model and the guide skips $q(y \mid x)$; when it has none, the
            guide's $y$ is enumerated (`config_enumerate`): the ELBO sums over the classes exactly
            instead of sampling one, as Pyro's `TraceEnum_ELBO` does.

            The data: 32-pixel binary "images" of four classes, each a class prototype shifted by
            a continuous 2-D style, so both latents have something to carry. Labels are kept for
            the evaluation and for 40 points.
            """
        ),
        code(
            """
            generator = torch.Generator().manual_seed(2)
            CLASSES, PIXELS, M2_Z_DIM = 4, 32, 2
            prototypes = 2.5 * torch.randn(CLASSES, PIXELS, generator=generator)
            style_directions = 1.5 * torch.randn(M2_Z_DIM, PIXELS, generator=generator)


            def draw_images(n):
                \"\"\"n binary images and their classes: a class prototype plus a random style.\"\"\"
                labels = torch.randint(CLASSES, (n,), generator=generator)
                style = torch.randn(n, M2_Z_DIM, generator=generator)
                logits = prototypes[labels] + style @ style_directions
                return torch.bernoulli(torch.sigmoid(logits), generator=generator), labels


            x_unlabelled, y_unlabelled = draw_images(N_UNLABELLED)  # y_unlabelled: for evaluation only
            x_labelled, y_labelled = draw_images(40)
            x_test, y_test = draw_images(500)
            print(tuple(x_unlabelled.shape), tuple(x_labelled.shape), tuple(x_test.shape))
            """
        ),
        md(
            r"""
            The model and the guide as methods of one `nn.Module`, the way `ss_vae_M2.py` writes
            them. Under enumeration the guide's `y` has shape `(4, 1)` (one value per class, on a
            dimension left of the plate) instead of `(batch,)`, so the one-hot code of `y` is
            concatenated with `x` or `z` after broadcasting.
            """
        ),
        code(
            """
            def cat_broadcast(*tensors):
                \"\"\"Concatenate along the last dimension after broadcasting the others.\"\"\"
                shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
                return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], dim=-1)


            class SSVAE(nn.Module):
                \"\"\"M2: p(y) p(z) p(x | y, z); guide q(y | x) q(z | x, y).\"\"\"

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
                    \"\"\"The most probable class under q(y | x).\"\"\"
                    with torch.no_grad():
                        return self.encoder_y(xs).argmax(-1)


            pyro.set_rng_seed(0)
            m2 = SSVAE()
            """
        ),
        md(
            r"""
            ### Training on unlabelled data: a dict of keyword arguments

            `fit` takes keyword arguments as a dict: `{"xs": x_unlabelled, "ys": None}` calls
            `model(xs=<minibatch>, ys=None)`, the tensor cut into minibatches and `None` passed
            to every one. `AnnealedELBO` sums the enumerated `y` exactly (no score-function
            gradient, no sampling noise) and weighs both KL terms, of `y` and of `z`, by the
            annealed weight.
            """
        ),
        code(
            """
            pyro.clear_param_store()
            m2_history = fit(m2.model, m2.guide, {"xs": x_unlabelled, "ys": None}, loss=AnnealedELBO(Linear(warmup_steps=300)),
                             optim=pyro.optim.Adam({"lr": 3e-3}), epochs=M2_EPOCHS, batch_size=100, seed=0, progress=False)
            m2_history.to_dataframe()[["epoch", "elbo", "kl/y", "kl/z", "kl_weight", "mi/z"]].iloc[:: max(1, M2_EPOCHS // 6)].round(3)
            """
        ),
        md(
            r"""
            `diagnose` takes the same dict. The report holds a **discrete** site `y` next to the
            continuous `z`: for `y` the KL and the mutual information are exact, sums over the
            four classes rather than Monte Carlo estimates, with
            $I_q(x; y) = H(\bar q(y)) - \mathbb{E}_x H(q(y \mid x))$ for the aggregate posterior
            $\bar q(y) = \mathbb{E}_x q(y \mid x)$, at most $\log 4 \approx 1.386$ nats. It is one
            row in `to_dataframe`, *active* when $I_q(x; y)$ exceeds the MI threshold. The `z`
            rows are per dimension, as before.
            """
        ),
        code(
            """
            m2_report = diagnose(m2.model, m2.guide, {"xs": x_test, "ys": None})
            print(m2_report)
            m2_report.to_dataframe()[["site", "dim", "kl", "au_variance", "mi", "aggregate_kl", "status"]].round(3)
            """
        ),
        md(
            r"""
            In the full run the verdict is *healthy*: $I_q(x; y)$ is about 1.33 of the 1.386
            nats possible, so $q(y \mid x)$ sorts the test images into four confident,
            equally used groups, and both style dimensions are active. Does it sort them by
            class? Without labels the model cannot know which group to call "class 0": the raw
            accuracy of $q(y \mid x)$ depends on an arbitrary numbering of the groups (near chance
            in the full run). Naming each group after the most common true class of the labelled
            points in it shows what it learned:
            """
        ),
        code(
            """
            predicted = m2.classify(x_test)
            in_group = m2.classify(x_labelled)
            names = torch.arange(CLASSES)
            for g in range(CLASSES):  # group g -> the most common class of the labelled points in it
                if (in_group == g).any():
                    names[g] = y_labelled[in_group == g].mode().values
            print(f"accuracy of q(y | x) as it stands: {(predicted == y_test).float().mean():.3f} (chance 0.25)")
            print(f"after naming each group by the labelled points: {(names[predicted] == y_test).float().mean():.3f}")
            pd.crosstab(pd.Series(y_test.numpy(), name="true class"), pd.Series(predicted.numpy(), name="group of q(y | x)"))
            """
        ),
        md(
            r"""
            In the full run the groups are the classes: once named, $q(y \mid x)$ is right on
            about 98% of the test images, and the table has one large count per row.

            ### With labelled batches

            M2 is meant to be trained semi-supervised, as `ss_vae_M2.py` does: labelled batches
            `{"xs": x_labelled, "ys": y_labelled}`, in which the model observes `y` and the guide
            samples only `z`, alternate with unlabelled ones `{"xs": ..., "ys": None}`. `fit`
            takes any re-iterable of such dict batches (a `DataLoader` works too), one pass per
            epoch, and the same `AnnealedELBO` serves both kinds. A fresh model trained this way
            names its classes right:
            """
        ),
        code(
            """
            class SemiSupervisedBatches:
                \"\"\"One epoch: every unlabelled minibatch, each followed by the labelled batch.\"\"\"

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
            """
        ),
        md(
            r"""
            In the full run the classifier is right on about 99% of the test images, from 40
            labels. `diagnose` on labelled data, `{"xs": x, "ys": y}`, would report `z` only:
            there `y` is observed, not latent.
            """
        ),
        md(
            r"""
            ## Summary

            * Any Pyro model/guide pair trains with `fit` (any Pyro ELBO; `monitor=[...]` for
              the collapse indicators) and is diagnosed with `diagnose`; pyrocollapse's ELBOs
              add per-site, per-dimension breakdowns.
            * With `"iw"` and `"psis"`, the report also says how good the guide is, so you can
              tell a collapsed latent from a poor guide.
            * `to_inference_data`, `summarize`, `save_inference_data` and `load_inference_data`
              move the guide's draws into the ArviZ ecosystem.
            * Programs with several arguments need no wrapper: pass a tuple
              (`(sequences, mask, lengths)` for a deep Markov model) or a dict
              (`{"xs": x, "ys": None}` for M2) to `fit` and `diagnose`, or a re-iterable of such
              batches to `fit`.
            * `diagnose` finds every latent site by itself: the steps `z_1 ... z_T` of a Markov
              chain (padded steps left out, each step measured given the previous one, so a
              guide equal to the prior reads *full collapse*), and discrete sites such as M2's
              enumerated `y`, with their exact KL and $I_q(x; y)$.

            **References.** Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?:
            Evaluating Variational Inference, ICML. Burda, Grosse & Salakhutdinov (2016),
            Importance Weighted Autoencoders, ICLR. He et al. (2019), Lagging Inference Networks
            and Posterior Collapse in VAEs, ICLR. Kumar et al. (2019), ArviZ, JOSS. Krishnan,
            Shalit & Sontag (2017), Structured Inference Networks for Nonlinear State Space
            Models, AAAI. Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning
            with Deep Generative Models, NeurIPS.
            """
        ),
    ]


# ======================================================================================
# Registry and writer
# ======================================================================================
#: File name -> function returning the notebook's cells, in reading order.
NOTEBOOKS: dict[str, Callable[[], list[nbformat.NotebookNode]]] = {
    "01_what_collapse_looks_like.ipynb": what_collapse_looks_like,
    "02_linear_vae.ipynb": linear_vae,
    "03_training_dynamics.ipynb": training_dynamics,
    "04_priors.ipynb": priors,
    "05_information_objectives.ipynb": information_objectives,
    "06_sequence_vae.ipynb": sequence_vae,
    "07_bring_your_own_model.ipynb": bring_your_own_model,
}


def build(filename: str) -> nbformat.NotebookNode:
    """The notebook ``filename`` (a key of :data:`NOTEBOOKS`), outputs stripped."""
    if filename not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {filename!r}; known: {', '.join(NOTEBOOKS)}")
    nb = new_notebook(cells=NOTEBOOKS[filename]())
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{filename[:2]}-{i:02d}"  # stable ids: rebuilding changes nothing
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The notebook as the text written to disk."""
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the notebooks are up to date"
    )
    args = parser.parse_args(argv)
    stale = []
    for filename in NOTEBOOKS:
        path = HERE / filename
        text = render(build(filename))
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(filename)
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python tutorials/build_notebooks.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
