"""Issue 6's headline check: diagnose agrees with Lucas et al. (2019) on a trained linear VAE."""

import numpy as np
import pyro
import pytest
import torch

from pyrocollapse import diagnose, fit
from pyrocollapse.data import make_ppca
from pyrocollapse.elbo import PlainELBO
from pyrocollapse.models import LinearVAE


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flagged_dimensions_and_kl_match_the_closed_form_across_seeds(seed):
    sigma = 1.0
    x = make_ppca(1500, spectrum=(5.0, 2.5, 0.7, 0.3), noise=0.5, input_dim=8, seed=seed).data
    # eigenvalues of the sample covariance: the rule is about the data actually seen
    lam = torch.linalg.eigvalsh(torch.cov(x.double().T)).flip(0)[:4].numpy()
    collapsed = lam <= sigma**2
    assert collapsed.tolist() == [False, False, True, True]
    pyro.set_rng_seed(seed)
    vae = LinearVAE(8, 4, noise=sigma)
    fit(
        vae.model,
        vae.guide,
        x,
        loss=PlainELBO(),
        epochs=600,
        batch_size=len(x),
        seed=seed,
        progress=False,
        monitor=None,
        optim=lambda p: torch.optim.Adam(p, lr=0.05),
    )
    site = diagnose(vae.model, vae.guide, x, vae.latent_sites, seed=seed).sites["z"]
    order = np.argsort(-site.kl_per_dim)  # latent dimensions are identified up to permutation
    status = [site.status[d] for d in order]
    assert status == ["active", "active", "collapsed", "collapsed"]
    expected = np.where(collapsed, 0.0, 0.5 * np.log(np.maximum(lam, sigma**2) / sigma**2))
    np.testing.assert_allclose(site.kl_per_dim[order], expected, atol=0.05)
