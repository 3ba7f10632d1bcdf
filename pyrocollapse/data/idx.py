"""MNIST and Fashion-MNIST from local IDX files (never downloaded).

:func:`read_idx` reads one IDX file, gzipped or plain; :func:`load_idx` reads an
images/labels pair into a :class:`~pyrocollapse.data.Dataset`, and the registry entries
``"mnist"`` and ``"fashion-mnist"`` call it with a ``path`` option.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from typing import BinaryIO

import numpy as np

from pyrocollapse._validation import check_choice, check_int
from pyrocollapse.data._checks import _check_bool, _existing_path, _find_file, _require_path
from pyrocollapse.data.dataset import Dataset, StrPath, _image_dataset
from pyrocollapse.data.registry import DATASETS

__all__ = ["load_idx", "read_idx"]

#: Label names of the IDX datasets, by label.
_IDX_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
_IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(file: StrPath | BinaryIO) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or plain.

    The header is two zero bytes, a dtype code (``0x08`` unsigned byte, ``0x09`` signed
    byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number
    of dimensions ``d``, then ``d`` big-endian uint32 sizes; the data follow in C order.

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        Gzip compression is detected from the content, not the name.

    Returns
    -------
    numpy.ndarray
        Shape given by the header, native byte order, writable.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the magic number is wrong, or the file is truncated, has trailing bytes or is
        corrupt gzip; the message names the file.
    """
    if hasattr(file, "read"):
        raw = file.read()  # type: ignore[union-attr]
        label = str(getattr(file, "name", "<file object>"))
    else:
        path = _existing_path("file", file, directory=False)
        raw, label = path.read_bytes(), str(path)
    if not isinstance(raw, bytes):
        raise TypeError(f"file must be opened in binary mode, got {type(raw).__name__} from read()")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{label}: corrupt or truncated gzip data ({err})") from None
    if len(raw) < 4:
        raise ValueError(
            f"{label} is truncated: {len(raw)} bytes, less than the 4-byte IDX magic number"
        )
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{label} has a bad IDX magic number 0x{raw[:4].hex()}: expected two zero bytes, "
            "a dtype code (0x08 unsigned byte, 0x09, 0x0b, 0x0c, 0x0d or 0x0e) and the "
            "number of dimensions (>= 1); is this an IDX file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{label} is truncated: the header needs {header} bytes but the file has {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected, found = count * dtype.itemsize, len(raw) - header
    if found < expected:
        raise ValueError(
            f"{label} is truncated: the header promises shape {dims} ({expected} data bytes) "
            f"but only {found} bytes follow"
        )
    if found > expected:
        raise ValueError(
            f"{label} has {found - expected} unexpected trailing bytes after the {expected} "
            f"data bytes of shape {dims}"
        )
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def load_idx(
    path: StrPath,
    *,
    kind_name: str = "mnist",
    split: str = "train",
    binarize: bool = False,
    limit: int | None = None,
) -> Dataset:
    """MNIST or Fashion-MNIST from local IDX files (never downloaded).

    Parameters
    ----------
    path : str or os.PathLike
        Directory holding ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``
        (``split="train"``) or ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
        (``split="test"``), each optionally with a ``.gz`` suffix.
    kind_name : {"mnist", "fashion-mnist"}
        Dataset name; selects the label names in ``metadata["label_names"]``.
    split : {"train", "test"}
        Which pair of files to read.
    binarize : bool
        Threshold the pixels at 0.5 (``x >= 0.5`` -> 1) and return ``kind="binary"``.
    limit : int, optional
        Keep only the first ``limit`` images (>= 1).

    Returns
    -------
    Dataset
        ``data`` of shape ``(N, rows * cols)`` (``(N, 784)`` for MNIST), float32 pixels
        divided by 255, ``image_shape=(1, rows, cols)``, ``kind="unit_interval"`` (or
        ``"binary"``); ``factors`` of shape ``(N, 1)`` named ``label``.

    Raises
    ------
    FileNotFoundError
        If the directory or a file is missing; the message lists the expected names.
    ValueError
        If a file is not valid IDX (see :func:`read_idx`), images are not a 3-D
        unsigned-byte array, labels are not 1-D integers, or the counts differ.
    """
    kind_name = check_choice("kind_name", kind_name, tuple(_IDX_LABEL_NAMES))
    split = check_choice("split", split, tuple(_IDX_FILES))
    binarize = _check_bool("binarize", binarize)
    if limit is not None:
        limit = check_int("limit", limit, minimum=1)
    names = _IDX_FILES[split]
    expected = " and ".join(f"{name}[.gz]" for name in names)
    directory = _existing_path(
        "path", path, directory=True, expected=f"a directory containing {expected}"
    )
    image_file, label_file = (
        _find_file(directory, name, expected=f"{kind_name} split={split!r} needs {expected}")
        for name in names
    )
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_file}: expected unsigned-byte images of shape (N, rows, cols), got "
            f"dtype {images.dtype} and shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{label_file}: expected integer labels of shape (N,), got dtype {labels.dtype} "
            f"and shape {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"{label_file} has {len(labels)} labels but {image_file} has {len(images)} images"
        )
    if len(images) == 0:
        raise ValueError(f"{image_file} holds no images")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return _image_dataset(
        images / 255.0,
        name=kind_name,
        binarize=binarize,
        factors=labels[:, None],
        factor_names=("label",),
        metadata={
            "source": "idx",
            "path": str(directory),
            "split": split,
            "files": [image_file.name, label_file.name],
            "binarize": binarize,
            "limit": limit,
            "label_names": list(_IDX_LABEL_NAMES[kind_name]),
        },
    )


def _register_idx(dataset_name: str) -> None:
    def load(
        path: StrPath | None = None,
        *,
        split: str = "train",
        binarize: bool = False,
        limit: int | None = None,
    ) -> Dataset:
        return load_idx(
            _require_path(dataset_name, path),
            kind_name=dataset_name,
            split=split,
            binarize=binarize,
            limit=limit,
        )

    load.__name__ = load.__qualname__ = f"load_{dataset_name.replace('-', '_')}"
    load.__doc__ = (
        f"Registry entry {dataset_name!r}: :func:`load_idx` with ``kind_name={dataset_name!r}``."
    )
    DATASETS.register(dataset_name)(load)


for _name in _IDX_LABEL_NAMES:
    _register_idx(_name)
