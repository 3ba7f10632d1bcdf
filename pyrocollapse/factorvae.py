"""FactorVAE, importable by its former path.

The objective lives in :mod:`pyrocollapse.elbo.factor_vae` and is re-exported by
:mod:`pyrocollapse.elbo` (registered there as ``"factorvae"`` in
:data:`pyrocollapse.elbo.ELBOS`); this module keeps ``from pyrocollapse.factorvae import
FactorVAEELBO`` working.
"""

from __future__ import annotations

from pyrocollapse.elbo.factor_vae import FactorVAEELBO, permute_dims

__all__ = ["FactorVAEELBO", "permute_dims"]
