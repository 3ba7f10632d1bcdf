"""Data sets bundled with a dependency, so nothing is downloaded: ``"digits"``."""

from __future__ import annotations

import numpy as np

from pyrocollapse.data._checks import _check_bool
from pyrocollapse.data.dataset import Dataset, _image_dataset
from pyrocollapse.data.registry import DATASETS

__all__ = ["load_digits"]

#: Names of the labels of ``"digits"``, by label.
_DIGIT_LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))


@DATASETS.register("digits")
def load_digits(*, binarize: bool = False) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (no download).

    Parameters
    ----------
    binarize : bool
        Threshold the pixels at 0.5 (``x >= 0.5`` -> 1) and return ``kind="binary"``.

    Returns
    -------
    Dataset
        ``data`` of shape ``(1797, 64)``, float32 in [0, 1] (pixel counts 0..16 divided
        by 16), ``image_shape=(1, 8, 8)``, ``kind="unit_interval"`` (or ``"binary"``),
        ``factors`` of shape ``(1797, 1)``: the digit label as a float.
    """
    binarize = _check_bool("binarize", binarize)
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return _image_dataset(
        np.asarray(bunch.images, dtype=np.float64) / 16.0,
        name="digits",
        binarize=binarize,
        factors=np.asarray(bunch.target)[:, None],
        factor_names=("label",),
        metadata={
            "source": "sklearn.datasets.load_digits",
            "binarize": binarize,
            "label_names": list(_DIGIT_LABELS),
        },
    )
