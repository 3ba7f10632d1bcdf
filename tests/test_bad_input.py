"""Bad input across the public API (issue #9): one table, one clear error per row.

Every row calls one public entry point with one kind of bad input (a wrong shape or
dtype, NaN or infinite values, no rows, an out-of-range hyperparameter, an unknown
name, a malformed file) and expects a ``ValueError`` / ``TypeError`` (or
``FileNotFoundError`` for a missing path) whose message names the argument. A bare
traceback from deep inside torch or NumPy is a failure, and so is a file left behind:
after every row the row's scratch folder holds nothing but the inputs the row made.

Row ids read ``<module>.<name>:<what is wrong>``; :func:`test_every_public_name_is_covered`
checks that each function and class in the ``__all__`` of every public module has a row
(or sits in :data:`EXEMPT` with the reason), so new API cannot skip validation silently.

Rows for a check that belongs in a file another engineer owns are marked
``xfail(strict=True, reason="pending: ...")`` until that check lands.

The tests at the end check the writers: a failure halfway through a write leaves no
file or folder at the target path.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import pytest
import torch

# --------------------------------------------------------------------------------------
# Tiny shared objects (built once, on first use)
# --------------------------------------------------------------------------------------
X_DIM, Z_DIM = 4, 2


@functools.cache
def _x() -> torch.Tensor:
    return torch.rand(12, X_DIM, generator=torch.Generator().manual_seed(0))


@functools.cache
def _vae() -> Any:
    from pyrocollapse.models import MLPVAE

    torch.manual_seed(0)
    return MLPVAE(X_DIM, Z_DIM, hidden=(8,), name="bad_input_vae")


@functools.cache
def _report() -> Any:
    from pyrocollapse import diagnose

    vae = _vae()
    return diagnose(vae.model, vae.guide, _x(), estimators=("kl", "au", "mi"), seed=0)


@functools.cache
def _history() -> Any:
    from pyrocollapse.train import EpochRecord, History

    hist = History()
    for epoch in (1, 2):
        values = {"elbo": -3.0, "reconstruction": -2.5, "kl": 0.5, "kl_weight": 1.0}
        hist.append(EpochRecord(epoch, values, {"z": np.array([0.3, 0.2])}))
    return hist


@functools.cache
def _local_site() -> Any:
    """A :class:`pyrocollapse.elbo.LocalSite` of the tiny VAE on the tiny data."""
    from pyrocollapse.elbo import PlainELBO, local_site

    vae = _vae()
    terms = PlainELBO().evaluate(vae.model, vae.guide, _x()).terms[0]
    return local_site(terms.latent["z"], "test")


@functools.cache
def _terms() -> Any:
    from pyrocollapse.elbo import PlainELBO

    vae = _vae()
    return PlainELBO().evaluate(vae.model, vae.guide, _x()).terms[0]


@functools.cache
def _idata() -> Any:
    from pyrocollapse import to_inference_data

    vae = _vae()
    return to_inference_data(vae.model, vae.guide, _x(), 4, seed=0)


def _dataset(image_shape: tuple[int, ...] | None = None) -> Any:
    from pyrocollapse.data import Dataset

    return Dataset(_x(), "tiny", "unit_interval", (X_DIM,), image_shape=image_shape)


def _nan_x() -> torch.Tensor:
    x = _x().clone()
    x[3, 1] = math.nan
    return x


def _inf_x() -> torch.Tensor:
    x = _x().clone()
    x[0, 0] = math.inf
    return x


# --------------------------------------------------------------------------------------
# The scratch folder of the running row
# --------------------------------------------------------------------------------------
class _Scratch:
    path: Path | None = None


def _tmp() -> Path:
    assert _Scratch.path is not None
    return _Scratch.path


def _inputs() -> Path:
    """Where a row puts the (bad) input files it makes; the only thing allowed to remain."""
    p = _tmp() / "inputs"
    p.mkdir(exist_ok=True)
    return p


def _file(name: str, content: bytes | str) -> Path:
    p = _inputs() / name
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    else:
        p.write_bytes(content)
    return p


def _idx_dir(images: bytes, labels: bytes) -> Path:
    d = _inputs() / "idx"
    d.mkdir(exist_ok=True)
    (d / "train-images-idx3-ubyte").write_bytes(images)
    (d / "train-labels-idx1-ubyte").write_bytes(labels)
    return d


def _idx(code: int, dims: tuple[int, ...], data: bytes) -> bytes:
    import struct

    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def _report_folder(metrics: Any = None, *, raw: str | None = None) -> Path:
    """A folder with a metrics.json holding ``metrics`` (or the text ``raw``)."""
    d = _inputs() / "folder"
    d.mkdir(exist_ok=True)
    (d / "metrics.json").write_text(raw if raw is not None else json.dumps(metrics))
    return d


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad call: ``call()`` must raise ``exc`` with a message matching ``match``.

    ``id`` is ``<module>.<name>:<what>``, e.g. ``diagnostics.kl_per_dimension:nan``;
    ``pending`` (a fix owed by another file's owner) marks the row xfail(strict).
    """

    id: str
    call: Callable[[], Any]
    exc: type[BaseException]
    match: str
    pending: str | None = None

    @property
    def api(self) -> str:
        return self.id.split(":", 1)[0]


def _diag(fn: str, data: Any = None, **kw: Any) -> Callable[[], Any]:
    """A call of estimator ``fn`` of :mod:`pyrocollapse.diagnostics` on the tiny VAE."""

    def call() -> Any:
        from pyrocollapse import diagnostics

        vae = _vae()
        x = _x() if data is None else (data() if callable(data) else data)
        return getattr(diagnostics, fn)(vae.model, vae.guide, x, **kw)

    return call


def _estimator_rows(fn: str, **extra: tuple[dict[str, Any], type, str]) -> list[Case]:
    """The rows every estimator shares (data type, NaN, inf, empty, shape, batch_size),
    plus ``extra``: ``what=(kwargs, exc, match)``."""
    rows = [
        Case(
            f"diagnostics.{fn}:str-data",
            _diag(fn, "data.csv"),
            TypeError,
            r"^data must be a torch\.Tensor, a NumPy array, a tuple/list",
        ),
        Case(f"diagnostics.{fn}:nan-data", _diag(fn, _nan_x), ValueError, r"^data contains 1 NaN"),
        Case(
            f"diagnostics.{fn}:inf-data",
            _diag(fn, _inf_x),
            ValueError,
            r"^data contains 1 NaN or infinite",
        ),
        Case(
            f"diagnostics.{fn}:empty-data",
            _diag(fn, torch.zeros(0, X_DIM)),
            ValueError,
            r"^data is empty",
        ),
        Case(
            f"diagnostics.{fn}:wrong-width",
            _diag(fn, torch.rand(5, X_DIM + 1)),
            ValueError,
            r"must have shape \(N, 4\), got \(5, 5\)|data has shape \(5, 5\); the model takes \(N, 4\)",
        ),
        Case(
            f"diagnostics.{fn}:1d-data",
            _diag(fn, torch.rand(X_DIM)),
            ValueError,
            r"must have shape \(N, 4\), got \(4,\)|data has shape \(4,\); the model takes \(N, 4\)",
        ),
    ]
    if (
        "batch_size"
        in inspect.signature(
            getattr(importlib.import_module("pyrocollapse.diagnostics"), fn)
        ).parameters
    ):
        rows.append(
            Case(
                f"diagnostics.{fn}:batch_size-0",
                _diag(fn, batch_size=0),
                ValueError,
                r"^batch_size must be >= 1, got 0",
            )
        )
    for what, (kw, exc, match) in extra.items():
        rows.append(Case(f"diagnostics.{fn}:{what}", _diag(fn, **kw), exc, match))
    return rows


def _unknown_site(fn: str) -> dict[str, tuple[dict[str, Any], type, str]]:
    return {"unknown-site": ({"site": "zz"}, ValueError, r"'zz'")}


def _make(target: str, /, *args: Any, **kw: Any) -> Callable[[], Any]:
    """``lambda: module.name(*args, **kw)`` with the import deferred to the call."""

    def call() -> Any:
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            break
        for part in parts[i:]:
            obj = getattr(obj, part)
        a = [v() if isinstance(v, _Lazy) else v for v in args]
        k = {key: v() if isinstance(v, _Lazy) else v for key, v in kw.items()}
        return obj(*a, **k)

    return call


class _Lazy:
    """An argument built when the row runs (shared objects, files in the scratch folder)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __call__(self) -> Any:
        return self.make()


VAE, X, REPORT, HISTORY, IDATA = (
    _Lazy(_vae),
    _Lazy(_x),
    _Lazy(_report),
    _Lazy(_history),
    _Lazy(_idata),
)
MODEL, GUIDE = _Lazy(lambda: _vae().model), _Lazy(lambda: _vae().guide)
NAN_X = _Lazy(_nan_x)
X1 = _Lazy(lambda: _x()[:1])
TMP_OUT = _Lazy(lambda: _tmp() / "out")
METRICS = _Lazy(lambda: {"report": _report().to_dict()})


def _tiny_config(**kw: Any) -> Any:
    from pyrocollapse import RunConfig

    base = dict(
        dataset="ppca",
        dataset_options={"n": 40, "input_dim": 6},
        valid_fraction=0.25,
        latent_dim=2,
        model_options={"hidden": (8,), "likelihood": "gaussian"},
        epochs=1,
        batch_size=16,
        bootstrap=0,
        importance_samples=50,
        posterior_samples=2,
        posterior_points=5,
        estimators=("kl", "au"),
    )
    return RunConfig(**{**base, **kw})


def _validate(**kw: Any) -> Callable[[], Any]:
    return lambda: _tiny_config(**kw).validate()


def _saved(what: str = "model", *, version: int | None = None) -> Path:
    """A file written by save() (of the tiny VAE or a prior) in the inputs folder;
    ``version`` rewrites its format version."""
    from pyrocollapse.models import MLPVAE
    from pyrocollapse.priors import StandardNormalPrior

    path = _inputs() / f"{what}.pt"
    obj = MLPVAE(X_DIM, Z_DIM, hidden=(8,)) if what == "model" else StandardNormalPrior(Z_DIM)
    obj.save(path, overwrite=True)
    if version is not None:
        payload = torch.load(path, weights_only=True)
        payload["format_version"] = version
        torch.save(payload, path)
    return path


def _run_folder(with_config: bool = True) -> Path:
    """A report folder whose metrics.json has a report (and a run configuration), no model.pt."""
    metrics = {"report": _report().to_dict()}
    if with_config:
        metrics["config"] = json.loads(json.dumps(_tiny_config().to_dict()))
    return _report_folder(metrics)


# fmt: off
TABLE: list[Case] = [
    # ---------------------------------------------------------------- top level: data
    Case("pyrocollapse.load_dataset:unknown-name", _make("pyrocollapse.load_dataset", "cifar"), ValueError, r"unknown dataset 'cifar'; valid names: digits"),
    Case("pyrocollapse.load_dataset:name-not-str", _make("pyrocollapse.load_dataset", 3), TypeError, r"dataset name must be a str, got int"),
    Case("pyrocollapse.load_dataset:unknown-option", _make("pyrocollapse.load_dataset", "ppca", spectra=(1.0,)), TypeError, r"unknown option\(s\) spectra for dataset 'ppca'; accepted options: n, spectrum"),
    Case("pyrocollapse.load_dataset:n-0", _make("pyrocollapse.load_dataset", "ppca", n=0), ValueError, r"^n must be >= 1, got 0"),
    Case("pyrocollapse.load_dataset:n-float", _make("pyrocollapse.load_dataset", "shapes", n=2.5), TypeError, r"^n must be an int, got float 2\.5"),
    Case("pyrocollapse.load_dataset:noise-negative", _make("pyrocollapse.load_dataset", "mixture", noise=-0.1), ValueError, r"^noise must be >= 0\.0, got -0\.1"),
    Case("pyrocollapse.load_dataset:noise-nan", _make("pyrocollapse.load_dataset", "ppca", noise=math.nan), ValueError, r"^noise must be finite, got nan"),
    Case("pyrocollapse.load_dataset:seed-negative", _make("pyrocollapse.load_dataset", "shapes", n=4, seed=-1), ValueError, r"^seed must be >= 0, got -1"),
    Case("pyrocollapse.load_dataset:file-dataset-without-path", _make("pyrocollapse.load_dataset", "mnist"), ValueError, r"dataset 'mnist' reads local files, so a `path` is required"),
    Case("pyrocollapse.load_dataset:missing-path", _make("pyrocollapse.load_dataset", "text", path=_Lazy(lambda: _tmp() / "nope.txt")), FileNotFoundError, r"^path '.*nope\.txt' does not exist"),
    Case("pyrocollapse.load_dataset:binarize-not-bool", _make("pyrocollapse.load_dataset", "digits", binarize="yes"), TypeError, r"^binarize must be a bool, got str 'yes'"),
    # ---------------------------------------------------------------- data module
    Case("data.load_digits:binarize-int", _make("pyrocollapse.data.load_digits", binarize=1), TypeError, r"^binarize must be a bool"),
    Case("data.make_ppca:spectrum-below-noise", _make("pyrocollapse.data.make_ppca", spectrum=(1.0, 0.1), noise=0.5), ValueError, r"^spectrum\[1\] = 0\.1 is below noise\*\*2"),
    Case("data.make_ppca:spectrum-empty", _make("pyrocollapse.data.make_ppca", spectrum=()), ValueError, r"^spectrum must hold at least one eigenvalue"),
    Case("data.make_ppca:spectrum-str", _make("pyrocollapse.data.make_ppca", spectrum="big"), TypeError, r"^spectrum must be a sequence of positive floats, got str"),
    Case("data.make_ppca:spectrum-negative", _make("pyrocollapse.data.make_ppca", spectrum=(1.0, -1.0)), ValueError, r"^spectrum\[1\] must be > 0\.0, got -1\.0"),
    Case("data.make_ppca:input_dim-too-small", _make("pyrocollapse.data.make_ppca", input_dim=2), ValueError, r"^input_dim must be >= len\(spectrum\) = 5, got 2"),
    Case("data.make_latent_mixture:n_components-0", _make("pyrocollapse.data.make_latent_mixture", n_components=0), ValueError, r"^n_components must be >= 1, got 0"),
    Case("data.make_latent_mixture:input_dim-below-latent_dim", _make("pyrocollapse.data.make_latent_mixture", latent_dim=5, input_dim=3), ValueError, r"^input_dim must be >= latent_dim = 5, got 3"),
    Case("data.make_shapes:size-too-small", _make("pyrocollapse.data.make_shapes", size=4), ValueError, r"^size must be >= 8, got 4"),
    Case("data.make_sequences:vocab_size-too-small", _make("pyrocollapse.data.make_sequences", vocab_size=6, n_topics=2), ValueError, r"^vocab_size must be >= 8 \(the 4 special tokens"),
    Case("data.make_sequences:max_len-2", _make("pyrocollapse.data.make_sequences", max_len=2), ValueError, r"^max_len must be >= 3, got 2"),
    Case("data.ppca_population_covariance:not-ppca", _make("pyrocollapse.data.ppca_population_covariance", _Lazy(lambda: __import__("pyrocollapse.data", fromlist=["x"]).make_shapes(n=3))), ValueError, r"dataset 'shapes' has no pPCA parameters"),
    Case("data.ppca_population_covariance:not-a-dataset", _make("pyrocollapse.data.ppca_population_covariance", "ppca"), TypeError, r"^dataset must be a Dataset, got str"),
    Case("data.Dataset:data-numpy", _make("pyrocollapse.data.Dataset", np.zeros((3, 2)), "d", "real", (2,)), TypeError, r"^data must be a torch\.Tensor, got ndarray"),
    Case("data.Dataset:data-float64", _make("pyrocollapse.data.Dataset", torch.zeros(3, 2, dtype=torch.float64), "d", "real", (2,)), TypeError, r"data of a 'real' dataset must be float32, got torch\.float64"),
    Case("data.Dataset:data-nan", _make("pyrocollapse.data.Dataset", torch.tensor([[0.0, math.nan]]), "d", "real", (2,)), ValueError, r"^data contains 1 NaN or infinite values"),
    Case("data.Dataset:data-empty", _make("pyrocollapse.data.Dataset", torch.zeros(0, 2), "d", "real", (2,)), ValueError, r"^data must have shape \(N, \*event_shape\) with N >= 1, got \(0, 2\)"),
    Case("data.Dataset:unknown-kind", _make("pyrocollapse.data.Dataset", torch.zeros(3, 2), "d", "continuous", (2,)), ValueError, r"^kind must be one of 'binary', 'unit_interval', 'real', 'tokens'; got 'continuous'"),
    Case("data.Dataset:event_shape-mismatch", _make("pyrocollapse.data.Dataset", torch.zeros(3, 2), "d", "real", (3,)), ValueError, r"^event_shape \(3,\) does not match data\.shape\[1:\] = \(2,\)"),
    Case("data.Dataset:binary-values", _make("pyrocollapse.data.Dataset", torch.full((3, 2), 0.5), "d", "binary", (2,)), ValueError, r"^data of a 'binary' dataset must contain only 0 and 1"),
    Case("data.Dataset.split:valid_fraction-1", lambda: __import__("pyrocollapse.data", fromlist=["x"]).make_shapes(n=10).split(1.0), ValueError, r"^valid_fraction must be < 1, got 1\.0"),
    Case("data.Dataset.split:valid_fraction-0", lambda: __import__("pyrocollapse.data", fromlist=["x"]).make_shapes(n=10).split(0.0), ValueError, r"^valid_fraction must be > 0\.0, got 0\.0"),
    Case("data.Dataset.subset:float-index", lambda: __import__("pyrocollapse.data", fromlist=["x"]).make_shapes(n=10).subset(np.array([0.5])), TypeError, r"^index must hold ints or bools, got dtype float64"),
    Case("data.encode_text:single-str", _make("pyrocollapse.data.encode_text", "a b", ("<pad>", "<bos>", "<eos>", "<unk>")), TypeError, r"^lines must be an iterable of str"),
    Case("data.encode_text:empty", _make("pyrocollapse.data.encode_text", [], ("<pad>", "<bos>", "<eos>", "<unk>")), ValueError, r"^lines is empty"),
    Case("data.encode_text:bad-vocab", _make("pyrocollapse.data.encode_text", ["a"], ("a", "b")), ValueError, r"^vocab must start with the special tokens"),
    Case("data.decode_tokens:2d-ids", _make("pyrocollapse.data.decode_tokens", torch.zeros(2, 2, dtype=torch.long), ("<pad>", "<bos>", "<eos>", "<unk>")), ValueError, r"^ids must be 1-D \(one sequence\), got shape \(2, 2\)"),
    Case("data.decode_tokens:float-ids", _make("pyrocollapse.data.decode_tokens", np.array([1.0, 2.0]), ("<pad>", "<bos>", "<eos>", "<unk>")), TypeError, r"^ids must be integers, got dtype float64"),
    Case("data.decode_tokens:id-out-of-range", _make("pyrocollapse.data.decode_tokens", [1, 9], ("<pad>", "<bos>", "<eos>", "<unk>")), ValueError, r"^token id 9 is outside the vocabulary \[0, 4\)"),
    Case("data.read_idx:missing-file", _make("pyrocollapse.data.read_idx", _Lazy(lambda: _tmp() / "nope-idx")), FileNotFoundError, r"^file '.*nope-idx' does not exist"),
    Case("data.read_idx:bad-magic", _make("pyrocollapse.data.read_idx", _Lazy(lambda: _file("bad.idx", b"PK\x03\x04rest"))), ValueError, r"bad\.idx has a bad IDX magic number 0x504b0304"),
    Case("data.read_idx:truncated-header", _make("pyrocollapse.data.read_idx", _Lazy(lambda: _file("short.idx", b"\x00\x00\x08"))), ValueError, r"short\.idx is truncated: 3 bytes"),
    Case("data.read_idx:truncated-data", _make("pyrocollapse.data.read_idx", _Lazy(lambda: _file("cut.idx", _idx(0x08, (2, 3), b"\x00" * 5)))), ValueError, r"cut\.idx is truncated: the header promises shape \(2, 3\) \(6 data bytes\) but only 5"),
    Case("data.read_idx:trailing-bytes", _make("pyrocollapse.data.read_idx", _Lazy(lambda: _file("long.idx", _idx(0x08, (2,), b"\x00" * 3)))), ValueError, r"long\.idx has 1 unexpected trailing bytes"),
    Case("data.read_idx:corrupt-gzip", _make("pyrocollapse.data.read_idx", _Lazy(lambda: _file("bad.gz", b"\x1f\x8b\x08\x00garbage"))), ValueError, r"bad\.gz: corrupt or truncated gzip data"),
    Case("data.load_idx:path-is-a-file", _make("pyrocollapse.data.load_idx", _Lazy(lambda: _file("afile", b"x"))), NotADirectoryError, r"^path '.*afile' is not a directory; expected a directory containing train-images-idx3-ubyte\[\.gz\]"),
    Case("data.load_idx:missing-labels", _make("pyrocollapse.data.load_idx", _Lazy(lambda: _inputs())), FileNotFoundError, r"neither train-images-idx3-ubyte nor train-images-idx3-ubyte\.gz is in"),
    Case("data.load_idx:unknown-split", _make("pyrocollapse.data.load_idx", "/nonexistent", split="valid"), ValueError, r"^split must be one of 'train', 'test'; got 'valid'"),
    Case("data.load_idx:unknown-kind_name", _make("pyrocollapse.data.load_idx", "/nonexistent", kind_name="kmnist"), ValueError, r"^kind_name must be one of 'mnist', 'fashion-mnist'; got 'kmnist'"),
    Case("data.load_idx:limit-0", _make("pyrocollapse.data.load_idx", "/nonexistent", limit=0), ValueError, r"^limit must be >= 1, got 0"),
    Case("data.load_idx:count-mismatch", _make("pyrocollapse.data.load_idx", _Lazy(lambda: _idx_dir(_idx(0x08, (2, 2, 2), bytes(8)), _idx(0x08, (3,), bytes(3))))), ValueError, r"has 3 labels but .* has 2 images"),
    Case("data.load_idx:float-images", _make("pyrocollapse.data.load_idx", _Lazy(lambda: _idx_dir(_idx(0x0D, (1, 1, 1), bytes(4)), _idx(0x08, (1,), bytes(1))))), ValueError, r"expected unsigned-byte images of shape \(N, rows, cols\), got dtype float32"),
    Case("data.load_idx:no-images", _make("pyrocollapse.data.load_idx", _Lazy(lambda: _idx_dir(_idx(0x08, (0, 2, 2), b""), _idx(0x08, (0,), b"")))), ValueError, r"holds no images"),
    Case("data.load_text:empty-file", _make("pyrocollapse.data.load_text", _Lazy(lambda: _file("empty.txt", "\n  \n"))), ValueError, r"empty\.txt is empty: it contains no non-blank line"),
    Case("data.load_text:not-utf8", _make("pyrocollapse.data.load_text", _Lazy(lambda: _file("latin1.txt", "caf\xe9\n".encode("latin-1")))), ValueError, r"latin1\.txt is not UTF-8 text: byte 0xe9 at offset 3"),
    Case("data.load_text:directory", _make("pyrocollapse.data.load_text", _Lazy(lambda: _inputs())), IsADirectoryError, r"^path '.*inputs' is a directory, not a file"),
    Case("data.load_text:min_count-0", _make("pyrocollapse.data.load_text", "/nonexistent", min_count=0), ValueError, r"^min_count must be >= 1, got 0"),
    Case("data.load_text:max_len-2", _make("pyrocollapse.data.load_text", "/nonexistent", max_len=2), ValueError, r"^max_len must be >= 3, got 2"),
    Case("data.load_text:path-int", _make("pyrocollapse.data.load_text", 3), TypeError, r"^path must be a str or os\.PathLike, got int"),
    # ---------------------------------------------------------------- schedules
    Case("schedules.Constant:negative", _make("pyrocollapse.schedules.Constant", -1.0), ValueError, r"^value must be >= 0\.0, got -1\.0"),
    Case("schedules.Constant:nan", _make("pyrocollapse.schedules.Constant", math.nan), ValueError, r"^value must be finite, got nan"),
    Case("schedules.Constant:str", _make("pyrocollapse.schedules.Constant", "1"), TypeError, r"^value must be a real number, got str '1'"),
    Case("schedules.Linear:warmup_steps-0", _make("pyrocollapse.schedules.Linear", 0), ValueError, r"^warmup_steps must be >= 1, got 0"),
    Case("schedules.Linear:warmup_steps-float", _make("pyrocollapse.schedules.Linear", 10.5), TypeError, r"^warmup_steps must be an int, got float 10\.5"),
    Case("schedules.Linear:end-negative", _make("pyrocollapse.schedules.Linear", 10, end=-1), ValueError, r"^end must be >= 0\.0, got -1\.0"),
    Case("schedules.Sigmoid:steepness-0", _make("pyrocollapse.schedules.Sigmoid", 10, steepness=0), ValueError, r"^steepness must be > 0\.0, got 0\.0"),
    Case("schedules.Sigmoid:midpoint-negative", _make("pyrocollapse.schedules.Sigmoid", -5), ValueError, r"^midpoint must be >= 0, got -5"),
    Case("schedules.Cyclical:period-0", _make("pyrocollapse.schedules.Cyclical", 0), ValueError, r"^period must be >= 1, got 0"),
    Case("schedules.Cyclical:ratio-above-1", _make("pyrocollapse.schedules.Cyclical", 10, ratio=1.5), ValueError, r"^ratio must be <= 1\.0, got 1\.5"),
    Case("schedules.Cyclical:ratio-0", _make("pyrocollapse.schedules.Cyclical", 10, ratio=0.0), ValueError, r"^ratio must be > 0\.0, got 0\.0"),
    Case("schedules.Cyclical:n_cycles-0", _make("pyrocollapse.schedules.Cyclical", 10, n_cycles=0), ValueError, r"^n_cycles must be >= 1, got 0"),
    Case("schedules.Schedule:negative-step", lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(10)(-1), ValueError, r"^step must be >= 0, got -1"),
    Case("schedules.Schedule:values-steps-0", lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(10).values(0), ValueError, r"^steps must be >= 1, got 0"),
    Case("schedules.Schedule.from_dict:unknown-name", lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Schedule.from_dict({"name": "cosine"}), ValueError, r"unknown schedule 'cosine'; valid names: constant"),
    Case("schedules.Schedule.from_dict:no-name", lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Schedule.from_dict({"warmup_steps": 3}), ValueError, r"schedule spec .*needs a 'name'"),
    Case("schedules.Schedule.from_dict:unknown-argument", lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Schedule.from_dict({"name": "linear", "warmup": 3}), TypeError, r"unknown argument\(s\) 'warmup' for schedule 'linear'; accepted: warmup_steps, start, end"),
    Case("schedules.SCHEDULES:unknown-name", _make("pyrocollapse.schedules.SCHEDULES.get", "cosine"), ValueError, r"unknown schedule 'cosine'; valid names: constant, linear, sigmoid, cyclical"),
    Case("schedules.make_schedule:negative-number", _make("pyrocollapse.schedules.make_schedule", -2.0), ValueError, r"^value must be >= 0\.0, got -2\.0"),
    Case("schedules.make_schedule:str", _make("pyrocollapse.schedules.make_schedule", "linear"), TypeError, r"^schedule must be a Schedule, a non-negative number or a dict spec, got str"),
    # ---------------------------------------------------------------- priors
    Case("priors.Prior:latent_dim-0", _make("pyrocollapse.priors.Prior", 0), ValueError, r"^latent_dim must be >= 1, got 0"),
    Case("priors.StandardNormalPrior:latent_dim-float", _make("pyrocollapse.priors.StandardNormalPrior", 2.5), TypeError, r"^latent_dim must be an int, got float 2\.5"),
    Case("priors.StandardNormalPrior:latent_dim-negative", _make("pyrocollapse.priors.StandardNormalPrior", -1), ValueError, r"^latent_dim must be >= 1, got -1"),
    Case("priors.LearnableGaussianPrior:init_scale-0", _make("pyrocollapse.priors.LearnableGaussianPrior", 2, init_scale=0.0), ValueError, r"^init_scale must be > 0\.0, got 0\.0"),
    Case("priors.LearnableGaussianPrior:min_scale-negative", _make("pyrocollapse.priors.LearnableGaussianPrior", 2, min_scale=-1.0), ValueError, r"^min_scale must be"),
    Case("priors.MixturePrior:n_components-0", _make("pyrocollapse.priors.MixturePrior", 2, n_components=0), ValueError, r"^n_components must be >= 1, got 0"),
    Case("priors.MixturePrior:init_spread-nan", _make("pyrocollapse.priors.MixturePrior", 2, init_spread=math.nan), ValueError, r"^init_spread must be finite, got nan"),
    Case("priors.MixturePrior:learn_weights-str", _make("pyrocollapse.priors.MixturePrior", 2, learn_weights="yes"), TypeError, r"^learn_weights must be a bool"),
    Case("priors.VampPrior:n_pseudo-0", _make("pyrocollapse.priors.VampPrior", None, 0, (4,), latent_dim=2), ValueError, r"^n_pseudo must be >= 1, got 0"),
    Case("priors.VampPrior:unknown-support", _make("pyrocollapse.priors.VampPrior", None, 3, (4,), latent_dim=2, support="positive"), ValueError, r"^support must be one of .*got 'positive'"),
    Case("priors.DiagonalNormalMixture:not-categorical", _make("pyrocollapse.priors.DiagonalNormalMixture", "weights", _Lazy(lambda: dist.Normal(torch.zeros(3, 2), 1.0).to_event(1))), TypeError, r"^mixture_distribution must be a Categorical over the components, got str"),
    Case("priors.DiagonalNormalMixture:not-a-distribution", _make("pyrocollapse.priors.DiagonalNormalMixture", _Lazy(lambda: dist.Categorical(logits=torch.zeros(3))), "normal"), TypeError, r"^component_distribution must be a Distribution"),
    Case("priors.VampPrior:input_shape-empty", _make("pyrocollapse.priors.VampPrior", None, 3, (), latent_dim=2), ValueError, r"input_shape"),
    Case("priors.HierarchicalPrior:top_dim-0", _make("pyrocollapse.priors.HierarchicalPrior", 2, top_dim=0), ValueError, r"^top_dim must be >= 1, got 0"),
    Case("priors.HierarchicalPrior:hidden-0", _make("pyrocollapse.priors.HierarchicalPrior", 2, hidden=(0,)), ValueError, r"^hidden\[0\] must be >= 1, got 0"),
    Case("priors.ARDPrior:init_scale-negative", _make("pyrocollapse.priors.ARDPrior", 2, init_scale=-1.0), ValueError, r"^init_scale must be > 0\.0, got -1\.0"),
    Case("priors.FlowPrior:unknown-transforms", _make("pyrocollapse.priors.FlowPrior", 2, "glow"), ValueError, r"transforms .*'glow'"),
    Case("priors.FlowPrior:num_transforms-0", _make("pyrocollapse.priors.FlowPrior", 2, num_transforms=0), ValueError, r"^num_transforms must be >= 1, got 0"),
    Case("priors.make_prior:unknown-name", _make("pyrocollapse.priors.make_prior", "vampp", 2), ValueError, r"unknown prior 'vampp'; valid names: standard"),
    Case("priors.make_prior:unknown-option", _make("pyrocollapse.priors.make_prior", "mixture", 2, components=3), TypeError, r"components"),
    Case("priors.make_prior:latent_dim-0", _make("pyrocollapse.priors.make_prior", "standard", 0), ValueError, r"^latent_dim must be >= 1, got 0"),
    Case("priors.PRIORS:unknown-name", _make("pyrocollapse.priors.PRIORS.get", "gaussian"), ValueError, r"unknown prior 'gaussian'; valid names: standard, learnable"),
    Case("priors.Prior.load:missing-file", _make("pyrocollapse.priors.Prior.load", _Lazy(lambda: _tmp() / "nope.pt")), ValueError, r"^cannot load '.*nope\.pt': the file does not exist"),
    Case("priors.Prior.load:a-model-file", _make("pyrocollapse.priors.Prior.load", _Lazy(_saved)), ValueError, r"^cannot load '.*model\.pt': it holds a saved model, not a prior; load it with VAE\.load"),
    Case("priors.MixturePrior.load:another-prior", _make("pyrocollapse.priors.MixturePrior.load", _Lazy(lambda: _saved("prior"))), ValueError, r"it holds a StandardNormalPrior, not a MixturePrior"),
    Case("priors.Prior.save:path-int", lambda: __import__("pyrocollapse.priors", fromlist=["x"]).StandardNormalPrior(2).save(3), TypeError, r"^path must be a str or os\.PathLike, got int"),
    # ---------------------------------------------------------------- objectives
    Case("elbo.BaseELBO:kl_weight-negative", _make("pyrocollapse.elbo.BaseELBO", -1.0), ValueError, r"^value must be >= 0\.0, got -1\.0|kl_weight"),
    Case("elbo.BaseELBO:num_particles-0", _make("pyrocollapse.elbo.BaseELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.PlainELBO:num_particles-float", _make("pyrocollapse.elbo.PlainELBO", num_particles=1.5), TypeError, r"^num_particles must be an int, got float 1\.5"),
    Case("elbo.AnnealedELBO:schedule-str", _make("pyrocollapse.elbo.AnnealedELBO", "linear"), TypeError, r"schedule must be a Schedule"),
    Case("elbo.AnnealedELBO:schedule-negative", _make("pyrocollapse.elbo.AnnealedELBO", -0.5), ValueError, r"must be >= 0\.0, got -0\.5"),
    Case("elbo.BetaELBO:beta-negative", _make("pyrocollapse.elbo.BetaELBO", -1.0), ValueError, r"^beta must be >= 0\.0, got -1\.0"),
    Case("elbo.BetaELBO:beta-inf", _make("pyrocollapse.elbo.BetaELBO", math.inf), ValueError, r"^beta must be finite, got inf"),
    Case("elbo.BetaELBO:beta-str", _make("pyrocollapse.elbo.BetaELBO", "4"), TypeError, r"^beta must be a real number, got str '4'"),
    Case("elbo.FreeBitsELBO:free_bits-negative", _make("pyrocollapse.elbo.FreeBitsELBO", -0.5), ValueError, r"^free_bits must be >= 0\.0, got -0\.5"),
    Case("elbo.FreeBitsELBO:unknown-per", _make("pyrocollapse.elbo.FreeBitsELBO", 0.5, "layer"), ValueError, r"^per must be one of 'dimension', 'site'; got 'layer'"),
    Case("elbo.MIRegularizedELBO:unknown-estimator", _make("pyrocollapse.elbo.MIRegularizedELBO", estimator="exact"), ValueError, r"^estimator must be one of .*got 'exact'"),
    Case("elbo.MIRegularizedELBO:alpha-nan", _make("pyrocollapse.elbo.MIRegularizedELBO", alpha=math.nan), ValueError, r"^alpha must be finite, got nan"),
    Case("elbo.InfoVAEELBO:unknown-kernel", _make("pyrocollapse.elbo.InfoVAEELBO", kernel="laplace"), ValueError, r"^kernel must be one of .*got 'laplace'"),
    Case("elbo.InfoVAEELBO:lambda-negative", _make("pyrocollapse.elbo.InfoVAEELBO", lambda_=-1.0), ValueError, r"^lambda_ must be >= 0\.0, got -1\.0"),
    Case("elbo.InfoVAEELBO:bandwidth-0", _make("pyrocollapse.elbo.InfoVAEELBO", bandwidth=0.0), ValueError, r"^bandwidth must be > 0\.0, got 0\.0"),
    Case("elbo.IWAEELBO:num_particles-0", _make("pyrocollapse.elbo.IWAEELBO", 0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.BetaTCELBO:unknown-estimator", _make("pyrocollapse.elbo.BetaTCELBO", estimator="exact"), ValueError, r"^estimator must be one of .*got 'exact'"),
    Case("elbo.BetaTCELBO:beta-negative", _make("pyrocollapse.elbo.BetaTCELBO", beta=-6.0), ValueError, r"^beta must be >= 0\.0, got -6\.0"),
    Case("elbo.PlainELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.PlainELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.PlainELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.PlainELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.PlainELBO:retain_graph-str", _make("pyrocollapse.elbo.PlainELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.PlainELBO:jit-int", _make("pyrocollapse.elbo.PlainELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.PlainELBO:analytic_kl-str", _make("pyrocollapse.elbo.PlainELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.PlainELBO:vectorize_particles-str", _make("pyrocollapse.elbo.PlainELBO", vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.PlainELBO:num_particles-0", _make("pyrocollapse.elbo.PlainELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.AnnealedELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.AnnealedELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.AnnealedELBO:retain_graph-str", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.AnnealedELBO:jit-int", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.AnnealedELBO:analytic_kl-str", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.AnnealedELBO:vectorize_particles-str", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.AnnealedELBO:num_particles-0", _make("pyrocollapse.elbo.AnnealedELBO", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(4)), num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.BetaELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.BetaELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.BetaELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.BetaELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.BetaELBO:retain_graph-str", _make("pyrocollapse.elbo.BetaELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.BetaELBO:jit-int", _make("pyrocollapse.elbo.BetaELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.BetaELBO:analytic_kl-str", _make("pyrocollapse.elbo.BetaELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.BetaELBO:vectorize_particles-str", _make("pyrocollapse.elbo.BetaELBO", vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.BetaELBO:num_particles-0", _make("pyrocollapse.elbo.BetaELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.FreeBitsELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.FreeBitsELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.FreeBitsELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.FreeBitsELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.FreeBitsELBO:retain_graph-str", _make("pyrocollapse.elbo.FreeBitsELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.FreeBitsELBO:jit-int", _make("pyrocollapse.elbo.FreeBitsELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.FreeBitsELBO:analytic_kl-str", _make("pyrocollapse.elbo.FreeBitsELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.FreeBitsELBO:vectorize_particles-str", _make("pyrocollapse.elbo.FreeBitsELBO", vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.FreeBitsELBO:num_particles-0", _make("pyrocollapse.elbo.FreeBitsELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.FreeBitsELBO:kl_weight-str", _make("pyrocollapse.elbo.FreeBitsELBO", kl_weight="1"), TypeError, r"schedule must be a Schedule"),
    Case("elbo.MIRegularizedELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.MIRegularizedELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.MIRegularizedELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.MIRegularizedELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.MIRegularizedELBO:retain_graph-str", _make("pyrocollapse.elbo.MIRegularizedELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.MIRegularizedELBO:jit-int", _make("pyrocollapse.elbo.MIRegularizedELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.MIRegularizedELBO:analytic_kl-str", _make("pyrocollapse.elbo.MIRegularizedELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.MIRegularizedELBO:vectorize_particles-str", _make("pyrocollapse.elbo.MIRegularizedELBO", vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.MIRegularizedELBO:num_particles-0", _make("pyrocollapse.elbo.MIRegularizedELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.MIRegularizedELBO:kl_weight-str", _make("pyrocollapse.elbo.MIRegularizedELBO", kl_weight="1"), TypeError, r"schedule must be a Schedule"),
    Case("elbo.InfoVAEELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.InfoVAEELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.InfoVAEELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.InfoVAEELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.InfoVAEELBO:retain_graph-str", _make("pyrocollapse.elbo.InfoVAEELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.InfoVAEELBO:jit-int", _make("pyrocollapse.elbo.InfoVAEELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.InfoVAEELBO:analytic_kl-str", _make("pyrocollapse.elbo.InfoVAEELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.InfoVAEELBO:vectorize_particles-str", _make("pyrocollapse.elbo.InfoVAEELBO", vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.InfoVAEELBO:num_particles-0", _make("pyrocollapse.elbo.InfoVAEELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.InfoVAEELBO:kl_weight-str", _make("pyrocollapse.elbo.InfoVAEELBO", kl_weight="1"), TypeError, r"schedule must be a Schedule"),
    Case("elbo.IWAEELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.IWAEELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.IWAEELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.IWAEELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.IWAEELBO:retain_graph-str", _make("pyrocollapse.elbo.IWAEELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.IWAEELBO:jit-int", _make("pyrocollapse.elbo.IWAEELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.IWAEELBO:analytic_kl-str", _make("pyrocollapse.elbo.IWAEELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.IWAEELBO:kl_weight-str", _make("pyrocollapse.elbo.IWAEELBO", kl_weight="1"), TypeError, r"schedule must be a Schedule"),
    Case("elbo.BetaTCELBO:max_plate_nesting-negative", _make("pyrocollapse.elbo.BetaTCELBO", max_plate_nesting=-1), ValueError, r"^max_plate_nesting must be >= 0 or float\('inf'\), got -1"),
    Case("elbo.BetaTCELBO:max_plate_nesting-str", _make("pyrocollapse.elbo.BetaTCELBO", max_plate_nesting="2"), TypeError, r"^max_plate_nesting must be an int >= 0 .*got str '2'"),
    Case("elbo.BetaTCELBO:retain_graph-str", _make("pyrocollapse.elbo.BetaTCELBO", retain_graph="yes"), TypeError, r"^retain_graph must be None \(Pyro's default\), True or False, got str 'yes'"),
    Case("elbo.BetaTCELBO:jit-int", _make("pyrocollapse.elbo.BetaTCELBO", jit=1), TypeError, r"^jit must be True or False, got int 1"),
    Case("elbo.BetaTCELBO:analytic_kl-str", _make("pyrocollapse.elbo.BetaTCELBO", analytic_kl="no"), TypeError, r"^analytic_kl must be True or False, got str 'no'"),
    Case("elbo.BetaTCELBO:vectorize_particles-str", _make("pyrocollapse.elbo.BetaTCELBO", vectorize_particles="no"), TypeError, r"^vectorize_particles must be True or False, got str 'no'"),
    Case("elbo.BetaTCELBO:num_particles-0", _make("pyrocollapse.elbo.BetaTCELBO", num_particles=0), ValueError, r"^num_particles must be >= 1, got 0"),
    Case("elbo.BetaTCELBO:kl_weight-str", _make("pyrocollapse.elbo.BetaTCELBO", kl_weight="1"), TypeError, r"schedule must be a Schedule"),
    Case("elbo.IWAEELBO:vectorize_particles-false", _make("pyrocollapse.elbo.IWAEELBO", vectorize_particles=False), ValueError, r"^IWAEELBO needs vectorize_particles=True"),
    Case("elbo.BetaTCELBO:gamma-nan", _make("pyrocollapse.elbo.BetaTCELBO", gamma=math.nan), ValueError, r"^gamma must be finite, got nan"),
    Case("elbo.BetaTCELBO:alpha-str", _make("pyrocollapse.elbo.BetaTCELBO", alpha="1"), TypeError, r"^alpha must be a real number, got str '1'"),
    Case("elbo.InfoVAEELBO:alpha-above-1", _make("pyrocollapse.elbo.InfoVAEELBO", alpha=2.0), ValueError, r"^alpha must be <= 1\.0, got 2\.0"),
    Case("elbo.FreeBitsELBO:free_bits-str", _make("pyrocollapse.elbo.FreeBitsELBO", "0.5"), TypeError, r"^free_bits must be a real number, got str '0\.5'"),
    Case("elbo.MIRegularizedELBO:alpha-negative", _make("pyrocollapse.elbo.MIRegularizedELBO", alpha=-1.0), ValueError, r"^alpha must be >= 0\.0, got -1\.0"),
    Case("elbo.make_elbo:unknown-name", _make("pyrocollapse.elbo.make_elbo", "iwea"), ValueError, r"unknown elbo 'iwea'; valid names: elbo, annealed"),
    Case("elbo.make_elbo:unknown-option", _make("pyrocollapse.elbo.make_elbo", "beta", gamma=2.0), TypeError, r"gamma"),
    Case("elbo.ELBOS:unknown-name", _make("pyrocollapse.elbo.ELBOS.get", "vae"), ValueError, r"unknown elbo 'vae'; valid names:"),
    Case("elbo.mmd:width-mismatch", _make("pyrocollapse.elbo.mmd", torch.zeros(5, 2), torch.zeros(5, 3)), ValueError, r"x .*y .*\(5, 2\).*\(5, 3\)|same number of columns"),
    Case("elbo.mmd:unknown-kernel", _make("pyrocollapse.elbo.mmd", torch.zeros(5, 2), torch.zeros(5, 2), kernel="laplace"), ValueError, r"^kernel must be one of .*got 'laplace'"),
    Case("elbo.mmd:nan", _make("pyrocollapse.elbo.mmd", torch.full((5, 2), math.nan), torch.zeros(5, 2)), ValueError, r"^x contains 10 NaN"),
    Case("elbo.mmd:bandwidth-negative", _make("pyrocollapse.elbo.mmd", torch.zeros(5, 2), torch.zeros(5, 2), bandwidth=-1.0), ValueError, r"^bandwidth must be > 0\.0, got -1\.0"),
    Case("elbo.imq_kernel:bandwidth-0", _make("pyrocollapse.elbo.imq_kernel", torch.zeros(3, 2), torch.zeros(3, 2), 0.0), ValueError, r"^bandwidth must be > 0\.0, got 0\.0"),
    Case("elbo.rbf_kernel:bandwidth-negative", _make("pyrocollapse.elbo.rbf_kernel", torch.zeros(3, 2), torch.zeros(3, 2), -1.0), ValueError, r"^bandwidth must be > 0\.0, got -1\.0"),
    Case("elbo.rbf_kernel:1d-x", _make("pyrocollapse.elbo.rbf_kernel", torch.zeros(3), torch.zeros(3, 2), 1.0), ValueError, r"^x must have shape \(N, D\)"),
    Case("elbo.log_aggregate_posterior:unknown-estimator", _make("pyrocollapse.elbo.log_aggregate_posterior", torch.zeros(3, 3), estimator="exact"), ValueError, r"^estimator must be one of .*got 'exact'"),
    Case("elbo.log_aggregate_posterior:1d-log_q", _make("pyrocollapse.elbo.log_aggregate_posterior", torch.zeros(3)), ValueError, r"^log_q must have shape \(B, B"),
    Case("elbo.log_aggregate_posterior:dataset_size-0", _make("pyrocollapse.elbo.log_aggregate_posterior", torch.zeros(3, 3), dataset_size=0.0), ValueError, r"^dataset_size must be > 0"),
    Case("elbo.importance_log_weights:wrong-type", _make("pyrocollapse.elbo.importance_log_weights", "terms"), TypeError, r"^terms must be an ELBOTerms, got str"),
    Case("elbo.importance_log_weights:kl_weight-negative", _make("pyrocollapse.elbo.importance_log_weights", _Lazy(_terms), kl_weight=-1.0), ValueError, r"^kl_weight must be >= 0\.0, got -1\.0"),
    Case("elbo.local_site:wrong-type", _make("pyrocollapse.elbo.local_site", "z", "mi"), TypeError, r"^term must be a LatentTerm, got str"),
    Case("elbo.local_sites:wrong-type", _make("pyrocollapse.elbo.local_sites", "z", "mi"), TypeError, r"^term must be a LatentTerm, got str"),
    Case("elbo.log_density_matrix:wrong-type", _make("pyrocollapse.elbo.log_density_matrix", "z"), TypeError, r"^site must be a LocalSite, got str"),
    Case("elbo.minibatch_mutual_information:unknown-estimator", _make("pyrocollapse.elbo.minibatch_mutual_information", _Lazy(_local_site), "exact"), ValueError, r"^estimator must be one of .*got 'exact'"),
    Case("elbo.total_correlation_decomposition:unknown-estimator", _make("pyrocollapse.elbo.total_correlation_decomposition", _Lazy(_local_site), "exact"), ValueError, r"^estimator must be one of .*got 'exact'"),
    Case("elbo.importance_traces:nan-data", _make("pyrocollapse.elbo.importance_traces", MODEL, GUIDE, _Lazy(lambda: (_nan_x(),)), {}, math.inf), ValueError, r"^x contains 1 NaN or infinite values"),
    # ---------------------------------------------------------------- models
    Case("models.VAE:latent_dim-0", _make("pyrocollapse.models.VAE", 0), ValueError, r"^latent_dim must be >= 1, got 0"),
    Case("models.MLPVAE:input_dim-0", _make("pyrocollapse.models.MLPVAE", 0, 2), ValueError, r"^input_dim must be >= 1, got 0"),
    Case("models.MLPVAE:latent_dim-str", _make("pyrocollapse.models.MLPVAE", 4, "2"), TypeError, r"^latent_dim must be an int, got str '2'"),
    Case("models.MLPVAE:unknown-likelihood", _make("pyrocollapse.models.MLPVAE", 4, 2, likelihood="poisson"), ValueError, r"^likelihood must be one of .*got 'poisson'"),
    Case("models.MLPVAE:hidden-0", _make("pyrocollapse.models.MLPVAE", 4, 2, hidden=(0,)), ValueError, r"^hidden\[0\] must be >= 1, got 0"),
    Case("models.MLPVAE:hidden-str", _make("pyrocollapse.models.MLPVAE", 4, 2, hidden="big"), TypeError, r"^hidden must be a tuple of positive ints, got str"),
    Case("models.MLPVAE:decoder_dropout-above-1", _make("pyrocollapse.models.MLPVAE", 4, 2, decoder_dropout=1.5), ValueError, r"^decoder_dropout must be"),
    Case("models.MLPVAE:min_scale-negative", _make("pyrocollapse.models.MLPVAE", 4, 2, min_scale=-1.0), ValueError, r"^min_scale must be"),
    Case("models.MLPVAE:prior-wrong-type", _make("pyrocollapse.models.MLPVAE", 4, 2, prior="standard"), TypeError, r"^prior must be a .*Prior.*got str"),
    Case("models.MLPVAE:prior-latent_dim-mismatch", _make("pyrocollapse.models.MLPVAE", 4, 2, prior=_Lazy(lambda: __import__("pyrocollapse.priors", fromlist=["x"]).StandardNormalPrior(3))), ValueError, r"latent_dim"),
    Case("models.ConvVAE:image_shape-2d", _make("pyrocollapse.models.ConvVAE", (8, 8), 2), ValueError, r"^image_shape must"),
    Case("models.ConvVAE:channels-empty", _make("pyrocollapse.models.ConvVAE", (1, 8, 8), 2, channels=()), ValueError, r"channels"),
    Case("models.LadderVAE:z1_dim-0", _make("pyrocollapse.models.LadderVAE", 4, 2, z1_dim=0), ValueError, r"^z1_dim must be >= 1, got 0"),
    Case("models.LadderVAE:decoder_dropout-negative", _make("pyrocollapse.models.LadderVAE", 4, 2, decoder_dropout=-0.1), ValueError, r"^decoder_dropout must be"),
    Case("models.LinearVAE:noise-negative", _make("pyrocollapse.models.LinearVAE", 4, 2, noise=-1.0), ValueError, r"^noise must be"),
    Case("models.LinearVAE:unknown-noise", _make("pyrocollapse.models.LinearVAE", 4, 2, noise="fixed"), ValueError, r"noise.*'fixed'"),
    Case("models.SequenceVAE:vocab_size-too-small", _make("pyrocollapse.models.SequenceVAE", 3, 2), ValueError, r"^vocab_size must be >= "),
    Case("models.SequenceVAE:unknown-cell", _make("pyrocollapse.models.SequenceVAE", 10, 2, cell="transformer"), ValueError, r"^cell must be one of .*got 'transformer'"),
    Case("models.SequenceVAE:word_dropout-above-1", _make("pyrocollapse.models.SequenceVAE", 10, 2, word_dropout=1.5), ValueError, r"^word_dropout must be"),
    Case("models.make_model:unknown-name", _make("pyrocollapse.models.make_model", "cnn"), ValueError, r"unknown model 'cnn'; valid names: mlp"),
    Case("models.MODELS:unknown-name", _make("pyrocollapse.models.MODELS.get", "vae"), ValueError, r"unknown model 'vae'; valid names: mlp"),
    Case("models.VAE.load:missing-file", _make("pyrocollapse.models.VAE.load", _Lazy(lambda: _tmp() / "nope.pt")), ValueError, r"^cannot load '.*nope\.pt': the file does not exist"),
    Case("models.VAE.load:folder", _make("pyrocollapse.models.VAE.load", _Lazy(_inputs)), ValueError, r"^cannot load '.*inputs': it is a folder, not a file written by save\(\)"),
    Case("models.VAE.load:text-file", _make("pyrocollapse.models.VAE.load", _Lazy(lambda: _file("model.pt", "not a model"))), ValueError, r"^cannot load '.*model\.pt': it is not a file written by save\(\)"),
    Case("models.VAE.load:bare-state-dict", _make("pyrocollapse.models.VAE.load", _Lazy(lambda: (torch.save(_vae().state_dict(), _inputs() / "sd.pt"), _inputs() / "sd.pt")[1])), ValueError, r"^cannot load '.*sd\.pt': it holds a bare state dict"),
    Case("models.VAE.load:newer-format", _make("pyrocollapse.models.VAE.load", _Lazy(lambda: _saved(version=99))), ValueError, r"^cannot load '.*model\.pt': it was written by a newer pyrocollapse \(save format version 99"),
    Case("models.VAE.load:a-prior-file", _make("pyrocollapse.models.VAE.load", _Lazy(lambda: _saved("prior"))), ValueError, r"^cannot load '.*prior\.pt': it holds a saved prior, not a model; load it with Prior\.load"),
    Case("models.ConvVAE.load:another-model", _make("pyrocollapse.models.ConvVAE.load", _Lazy(_saved)), ValueError, r"^cannot load '.*model\.pt': it holds a MLPVAE, not a ConvVAE"),
    Case("models.VAE.load:unknown-argument", _make("pyrocollapse.models.VAE.load", _Lazy(_saved), width=3), ValueError, r"MLPVAE takes no argument\(s\) width"),
    Case("models.VAE.load:bad-device", _make("pyrocollapse.models.VAE.load", _Lazy(_saved), device="gpu"), ValueError, r"^device 'gpu' is not a torch device"),
    Case("models.VAE.load:path-int", _make("pyrocollapse.models.VAE.load", 3), TypeError, r"^path must be a str or os\.PathLike, got int"),
    Case("models.VAE.save:exists", lambda: _vae().save(_file("taken.pt", "x")), FileExistsError, r"^path '.*taken\.pt' exists; pass overwrite=True to replace it"),
    Case("models.VAE.save:folder", lambda: _vae().save(_inputs()), ValueError, r"^path '.*inputs' is a folder; save\(\) writes one file"),
    Case("models.VAE.save:overwrite-str", lambda: _vae().save(_tmp() / "m.pt", overwrite="yes"), TypeError, r"^overwrite must be a bool, got str 'yes'"),
    # ---------------------------------------------------------------- training
    Case("pyrocollapse.fit:nan-data", _make("pyrocollapse.fit", MODEL, GUIDE, NAN_X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), ValueError, r"^data contains 1 NaN"),
    Case("pyrocollapse.fit:empty-data", _make("pyrocollapse.fit", MODEL, GUIDE, torch.zeros(0, X_DIM), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), ValueError, r"^data is empty"),
    Case("pyrocollapse.fit:list-data", _make("pyrocollapse.fit", MODEL, GUIDE, [[0.0] * X_DIM], loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), TypeError, r"^data \(list of list\) holds no tensor or NumPy array with a data dimension"),
    Case("pyrocollapse.fit:wrong-width", _make("pyrocollapse.fit", MODEL, GUIDE, torch.rand(6, X_DIM + 1), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), ValueError, r"must have shape \(N, 4\), got \(6, 5\)"),
    Case("pyrocollapse.fit:epochs-0", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=0, progress=False), ValueError, r"^epochs must be >= 1, got 0"),
    Case("pyrocollapse.fit:batch_size-0", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, batch_size=0, progress=False), ValueError, r"^batch_size must be >= 1, got 0"),
    Case("pyrocollapse.fit:loss-wrong-type", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss="elbo", epochs=1, progress=False), TypeError, r"^loss must be a pyro\.infer\.ELBO, got str"),
    Case("pyrocollapse.fit:clip_norm-0", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, clip_norm=0.0, progress=False), ValueError, r"^clip_norm must be > 0\.0, got 0\.0"),
    Case("pyrocollapse.fit:callback-wrong-type", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, callbacks=[print], progress=False), TypeError, r"^callbacks must be Callback instances"),
    Case("pyrocollapse.fit:seed-negative", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, seed=-1, progress=False), ValueError, r"^seed must be >= 0, got -1"),
    Case("train.PrintProgress:every-0", _make("pyrocollapse.train.PrintProgress", 0), ValueError, r"^every must be >= 1, got 0"),
    Case("train.EpochRecord:epoch-0", _make("pyrocollapse.train.EpochRecord", 0, {}), ValueError, r"^epoch must be >= 1, got 0"),
    Case("train.EpochRecord:values-list", _make("pyrocollapse.train.EpochRecord", 1, [1.0]), TypeError, r"^values must be a dict keyed by column or site name, got list"),
    Case("pyrocollapse.History:append-wrong-type", lambda: __import__("pyrocollapse.train", fromlist=["x"]).History().append({"elbo": 1.0}), TypeError, r"^record must be an EpochRecord, got dict"),
    Case("pyrocollapse.History:kl_matrix-unknown-site", lambda: _history().kl_matrix("w"), ValueError, r"^no per-dimension KL recorded for site 'w' \(recorded: 'z'\); fit records it for sites whose q\(z\|x\) and p\(z\) factorise"),
    Case("pyrocollapse.History:from_dataframe-no-epoch", lambda: __import__("pyrocollapse.train", fromlist=["x"]).History.from_dataframe(__import__("pandas").DataFrame({"elbo": [1.0]})), ValueError, r"^df needs an 'epoch' column, as History\.to_dataframe writes; got columns elbo"),
    Case("train.collect_params:not-callable", _make("pyrocollapse.train.collect_params", "model", "guide"), TypeError, r"^model must be a callable Pyro program, got str"),
    Case("pyrocollapse.fit:validate-str", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, validate="no"), TypeError, r"^validate must be a bool, got str 'no'"),
    Case("pyrocollapse.fit:progress-int", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=1), TypeError, r"^progress must be a bool, got int 1"),
    Case("pyrocollapse.fit:monitor-str", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, monitor="z1"), ValueError, r"^monitor must be 'default', None or a list of latent site names; got the str 'z1' \(for that one site pass monitor=\['z1'\]\)"),
    Case("pyrocollapse.fit:monitor-int", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, monitor=3), TypeError, r"^monitor must be 'default', None or a list of latent site names, got int"),
    Case("pyrocollapse.fit:monitor-non-str-site", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, monitor=[1]), TypeError, r"^monitor must list latent site names as str, got int 1"),
    Case("pyrocollapse.fit:callbacks-single", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, callbacks=_Lazy(lambda: __import__("pyrocollapse.train", fromlist=["x"]).PrintProgress())), TypeError, r"^callbacks must be an iterable of Callback instances, got a single PrintProgress"),
    Case("pyrocollapse.fit:callbacks-int", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, callbacks=3), TypeError, r"^callbacks must be an iterable of Callback instances \(e\.g\. a list\) or None, got int"),
    Case("pyrocollapse.fit:loss-class", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO), epochs=1, progress=False), TypeError, r"^loss must be a pyro\.infer\.ELBO instance, got the class PlainELBO; create one, e\.g\. loss=PlainELBO\(\)"),
    Case("pyrocollapse.fit:model-not-callable", _make("pyrocollapse.fit", "model", GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), TypeError, r"^model must be a callable Pyro program \(e\.g\. vae\.model\), got str"),
    Case("pyrocollapse.fit:scheduler-not-callable", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, scheduler="step"), TypeError, r"^scheduler must be None or a callable optimizer"),
    Case("pyrocollapse.fit:scheduler_step-unknown", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, scheduler_step="batch"), ValueError, r"^scheduler_step must be one of 'epoch', 'step'; got 'batch'"),
    Case("pyrocollapse.fit:monitor_size-1", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, monitor_size=1), ValueError, r"^monitor_size must be >= 2, got 1"),
    Case("pyrocollapse.fit:clip_value-negative", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, clip_value=-1.0), ValueError, r"^clip_value must be > 0\.0, got -1\.0"),
    Case("pyrocollapse.fit:aggressive-str", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, aggressive="yes"), TypeError, r"^aggressive must be a bool, got str 'yes'"),
    Case("pyrocollapse.fit:aggressive_max_inner-0", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, aggressive_max_inner=0), ValueError, r"^aggressive_max_inner must be >= 1, got 0"),
    Case("pyrocollapse.fit:aggressive_window-float", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, aggressive_window=2.5), TypeError, r"^aggressive_window must be an int, got float 2\.5"),
    Case("pyrocollapse.fit:device-bogus", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, device="gpu7"), ValueError, r"^device 'gpu7' is not a torch device"),
    Case("pyrocollapse.fit:checkpoint_every-0", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, checkpoint_every=0), ValueError, r"^checkpoint_every must be >= 1, got 0"),
    Case("pyrocollapse.fit:checkpoint_dir-int", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, checkpoint_dir=3), TypeError, r"^checkpoint_dir must be a path"),
    Case("pyrocollapse.fit:resume-without-dir", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, resume=True), ValueError, r"^resume=True needs checkpoint_dir"),
    Case("pyrocollapse.fit:seed-float", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, seed=1.5), TypeError, r"^seed must be an int, got float 1\.5"),
    Case("pyrocollapse.fit:batch_size-bool", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, batch_size=True), TypeError, r"^batch_size must be an int, got bool True"),
    Case("pyrocollapse.fit:optim-str", _make("pyrocollapse.fit", MODEL, GUIDE, X, loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False, optim="adam"), TypeError, r"optim"),
    Case("pyrocollapse.fit:sparse-data", _make("pyrocollapse.fit", MODEL, GUIDE, _Lazy(lambda: _x().to_sparse()), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), TypeError, r"^data is a sparse tensor \(layout sparse_coo\); pass a dense tensor"),
    Case("pyrocollapse.fit:meta-data", _make("pyrocollapse.fit", MODEL, GUIDE, torch.empty(4, X_DIM, device="meta"), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), ValueError, r"^data is on the 'meta' device, which holds shapes but no values"),
    Case("pyrocollapse.fit:0d-data", _make("pyrocollapse.fit", MODEL, GUIDE, torch.tensor(1.0), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), ValueError, r"^data must have shape \(N, \.\.\.\) with a data dimension, got a 0-d tensor"),
    Case("pyrocollapse.fit:complex-data", _make("pyrocollapse.fit", MODEL, GUIDE, torch.zeros(4, X_DIM, dtype=torch.complex64), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), TypeError, r"^data has complex dtype torch\.complex64; pass real data"),
    Case("pyrocollapse.fit:float64-overflows-float32", _make("pyrocollapse.fit", MODEL, GUIDE, _Lazy(lambda: torch.cat([_x().double(), torch.tensor([[1e300] + [0.5] * (X_DIM - 1)], dtype=torch.float64)])), loss=_Lazy(lambda: __import__("pyrocollapse.elbo", fromlist=["x"]).PlainELBO()), epochs=1, progress=False), ValueError, r"^data holds 1 value\(s\) too large for float32"),
    Case("pyrocollapse.diagnose:sparse-data", _make("pyrocollapse.diagnose", MODEL, GUIDE, _Lazy(lambda: _x().to_sparse())), TypeError, r"^data is a sparse tensor"),
    Case("pyrocollapse.diagnose:meta-data", _make("pyrocollapse.diagnose", MODEL, GUIDE, torch.empty(4, X_DIM, device="meta")), ValueError, r"^data is on the 'meta' device"),
    Case("pyrocollapse.diagnose:0d-data", _make("pyrocollapse.diagnose", MODEL, GUIDE, torch.tensor(1.0)), ValueError, r"^data must have shape \(N, \.\.\.\)"),
    Case("pyrocollapse.to_inference_data:sparse-data", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, _Lazy(lambda: _x().to_sparse())), TypeError, r"^data is a sparse tensor"),
    Case("pyrocollapse.to_inference_data:meta-in-tuple", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, (torch.empty(4, X_DIM, device="meta"), None)), ValueError, r"^data\[0\] is on the 'meta' device"),
    # ---------------------------------------------------------------- diagnostics
    *_estimator_rows("kl_per_dimension", **_unknown_site("kl"), **{"num_samples-0": ({"num_samples": 0}, ValueError, r"^num_samples must be >= 1, got 0")}),
    *_estimator_rows(
        "active_units",
        **_unknown_site("au"),
        **{
            "threshold-negative": ({"threshold": -1.0}, ValueError, r"^threshold must be >= 0\.0, got -1\.0"),
            "bootstrap-1": ({"bootstrap": 1}, ValueError, r"^bootstrap must be 0 \(no intervals\) or >= 2 replicates, got 1"),
            "ci_level-above-1": ({"bootstrap": 10, "ci_level": 1.5}, ValueError, r"^ci_level must be"),
        },
    ),
    *_estimator_rows(
        "mutual_information",
        **_unknown_site("mi"),
        **{
            "per_dim_draws-0": ({"per_dim_draws": 0}, ValueError, r"^per_dim_draws must be >= 2, got 0"),
            "ci_level-0": ({"bootstrap": 10, "ci_level": 0.0}, ValueError, r"^ci_level must be > 0\.0, got 0\.0"),
        },
    ),
    *_estimator_rows("aggregate_posterior_kl", **_unknown_site("mi")),
    *_estimator_rows("datapoint_rhat", **_unknown_site("rhat"), **{"num_samples-1": ({"num_samples": 1}, ValueError, r"^num_samples must be >= 2, got 1")}),
    *_estimator_rows(
        "decoder_sensitivity",
        **_unknown_site("s"),
        **{
            "unknown-method": ({"method": "jacobian"}, ValueError, r"^method must be one of .*got 'jacobian'"),
            "step-0": ({"method": "finite_difference", "step": 0.0}, ValueError, r"^step must be > 0\.0, got 0\.0"),
            "unknown-target": ({"targets": ["y"]}, ValueError, r"'y'"),
        },
    ),
    *_estimator_rows("iw_log_likelihood", **{"num_samples-0": ({"num_samples": 0}, ValueError, r"^num_samples must be >= 1, got 0")}),
    *_estimator_rows("psis_khat", **{"num_samples-5": ({"num_samples": 5}, ValueError, r"^num_samples must be >= ")}),
    *_estimator_rows(
        "posterior_densities",
        **_unknown_site("d"),
        **{
            "num_points-0": ({"num_points": 0}, ValueError, r"^num_points must be >= 1, got 0"),
            "grid_size-1": ({"grid_size": 1}, ValueError, r"^grid_size must be >= "),
        },
    ),
    *_estimator_rows("posterior_mean_space", **_unknown_site("m"), **{"num_samples-0": ({"num_samples": 0}, ValueError, r"^num_samples must be >= 1, got 0")}),
    *_estimator_rows("reconstruction_means", **{"unknown-observed": ({"observed": "y"}, ValueError, r"'y'")}),
    *_estimator_rows("latent_site_names"),
    Case("diagnostics.latent_traversal:two-observations", _make("pyrocollapse.diagnostics.latent_traversal", MODEL, GUIDE, X), ValueError, r"^x must hold exactly one observation, shape \(1, \.\.\.\); got \(12, 4\)"),
    Case("diagnostics.latent_traversal:nan-x", _make("pyrocollapse.diagnostics.latent_traversal", MODEL, GUIDE, _Lazy(lambda: _nan_x()[3:4])), ValueError, r"^x contains 1 NaN"),
    Case("diagnostics.latent_traversal:dim-out-of-range", _make("pyrocollapse.diagnostics.latent_traversal", MODEL, GUIDE, X1, dims=[5]), ValueError, r"dims"),
    Case("diagnostics.latent_traversal:values-empty", _make("pyrocollapse.diagnostics.latent_traversal", MODEL, GUIDE, X1, values=[]), ValueError, r"^values must be a non-empty 1-d sequence"),
    Case("diagnostics.latent_traversal:unknown-site", _make("pyrocollapse.diagnostics.latent_traversal", MODEL, GUIDE, X1, site="zz"), ValueError, r"'zz'"),
    Case("diagnostics.site_draws:unknown-site", lambda: list(__import__("pyrocollapse.diagnostics", fromlist=["x"]).site_draws(_vae().model, _vae().guide, _x(), "zz")), ValueError, r"'zz'"),
    Case("diagnostics.site_draws:nan-data", lambda: list(__import__("pyrocollapse.diagnostics", fromlist=["x"]).site_draws(_vae().model, _vae().guide, _nan_x(), "z")), ValueError, r"^data contains 1 NaN"),
    Case("diagnostics.marginal_log_prob:not-a-distribution", _make("pyrocollapse.diagnostics.marginal_log_prob", "normal", torch.zeros(2)), TypeError, r"^d must be a .*Distribution, got str"),
    Case("diagnostics.marginal_log_prob:width-mismatch", _make("pyrocollapse.diagnostics.marginal_log_prob", _Lazy(lambda: __import__("pyro.distributions", fromlist=["x"]).Normal(torch.zeros(2), 1.0).to_event(1)), torch.zeros(3)), ValueError, r"z"),
    Case("pyrocollapse.diagnose:unknown-estimator", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, estimators=("kl", "mutual")), ValueError, r"^unknown estimator\(s\) 'mutual'; valid names: kl, au"),
    Case("pyrocollapse.diagnose:estimators-str", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, estimators="kl"), TypeError, r"^estimators must be a sequence"),
    Case("pyrocollapse.diagnose:unknown-site", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, latent_sites=("w",)), ValueError, r"'w'"),
    Case("pyrocollapse.diagnose:nan-data", _make("pyrocollapse.diagnose", MODEL, GUIDE, NAN_X), ValueError, r"^data contains 1 NaN"),
    Case("pyrocollapse.diagnose:empty-data", _make("pyrocollapse.diagnose", MODEL, GUIDE, torch.zeros(0, X_DIM)), ValueError, r"^data is empty"),
    Case("pyrocollapse.diagnose:wrong-width", _make("pyrocollapse.diagnose", MODEL, GUIDE, torch.rand(5, X_DIM + 1)), ValueError, r"data has shape \(5, 5\); the model takes \(N, 4\)"),
    Case("pyrocollapse.diagnose:au_threshold-negative", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, au_threshold=-0.1), ValueError, r"^au_threshold must be >= 0\.0, got -0\.1"),
    Case("pyrocollapse.diagnose:ci_level-above-1", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, bootstrap=10, ci_level=2.0), ValueError, r"^ci_level must be"),
    Case("pyrocollapse.diagnose:max_points-0", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, max_points=0), ValueError, r"^max_points must be >= 2, got 0"),
    Case("pyrocollapse.diagnose:device-bogus", _make("pyrocollapse.diagnose", MODEL, GUIDE, X, device="gpu7"), ValueError, r"^device 'gpu7' is not a torch device"),
    # ---------------------------------------------------------------- summaries
    Case("pyrocollapse.to_inference_data:nan-data", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, NAN_X), ValueError, r"^data contains 1 NaN"),
    Case("pyrocollapse.to_inference_data:empty-data", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, torch.zeros(0, X_DIM)), ValueError, r"^data is empty"),
    Case("pyrocollapse.to_inference_data:num_samples-0", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, X, 0), ValueError, r"^num_samples must be >= 1, got 0"),
    Case("pyrocollapse.to_inference_data:chains-0", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, X, chains=0), ValueError, r"^chains must be >= 1, got 0"),
    Case("pyrocollapse.to_inference_data:latent_sites-str", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, X, latent_sites="z"), TypeError, r"^latent_sites must be a sequence of site names"),
    Case("pyrocollapse.to_inference_data:unknown-site", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, X, latent_sites=["w"]), ValueError, r"'w'"),
    Case("pyrocollapse.to_inference_data:posterior_predictive-str", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, X, posterior_predictive="yes"), TypeError, r"^posterior_predictive must be a bool, got str 'yes'"),
    Case("pyrocollapse.to_inference_data:log_likelihood-int", _make("pyrocollapse.to_inference_data", MODEL, GUIDE, X, log_likelihood=1), TypeError, r"^log_likelihood must be a bool, got int 1"),
    Case("pyrocollapse.summarize:hdi_prob-above-1", _make("pyrocollapse.summarize", IDATA, hdi_prob=1.5), ValueError, r"^hdi_prob must be <= 1\.0, got 1\.5"),
    Case("pyrocollapse.summarize:hdi_prob-0", _make("pyrocollapse.summarize", IDATA, hdi_prob=0.0), ValueError, r"^hdi_prob must be > 0\.0, got 0\.0"),
    Case("pyrocollapse.summarize:unknown-var", _make("pyrocollapse.summarize", IDATA, var_names=["w"]), ValueError, r"'w'"),
    Case("pyrocollapse.summarize:not-inference-data", _make("pyrocollapse.summarize", {"z": 1}), TypeError, r"^idata must be an (arviz\.)?InferenceData"),
    Case("summaries.load_inference_data:missing-file", _make("pyrocollapse.summaries.load_inference_data", _Lazy(lambda: _tmp() / "nope.nc")), FileNotFoundError, r"^no InferenceData file at '.*nope\.nc'"),
    Case("summaries.load_inference_data:not-netcdf", _make("pyrocollapse.summaries.load_inference_data", _Lazy(lambda: _file("bad.nc", "not netcdf"))), ValueError, r"bad\.nc"),
    Case("summaries.save_inference_data:not-inference-data", _make("pyrocollapse.summaries.save_inference_data", {"z": 1}, TMP_OUT), TypeError, r"^idata must be an (arviz\.)?InferenceData"),
    # ---------------------------------------------------------------- report
    Case("pyrocollapse.CollapseReport:from_dict-not-dict", _make("pyrocollapse.CollapseReport.from_dict", [1, 2]), TypeError, r"^a report must be a dict, got list"),
    Case("pyrocollapse.CollapseReport:from_dict-missing-sites", _make("pyrocollapse.CollapseReport.from_dict", {"elbo": {}, "num_points": 3}), ValueError, r"^malformed report: missing entry 'sites'"),
    Case("pyrocollapse.CollapseReport:from_json-missing-file", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_tmp() / "nope.json"))), FileNotFoundError, r"nope\.json"),
    Case("pyrocollapse.CollapseReport:from_json-not-json", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_file("r.json", "{not json")))), ValueError, r"r\.json' is not valid JSON"),
    Case("pyrocollapse.CollapseReport:from_json-truncated", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_file("r.json", json.dumps(_report().to_dict())[:200])))), ValueError, r"r\.json' is not valid JSON"),
    Case("pyrocollapse.CollapseReport:from_json-json-list", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_file("r.json", "[1, 2]")))), ValueError, r"r\.json' does not hold a collapse report: a report must be a dict, got list"),
    Case("pyrocollapse.CollapseReport:from_json-bad-site", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_file("r.json", json.dumps({**_report().to_dict(), "sites": {"z": {"site": "z"}}}))))), ValueError, r"r\.json' does not hold a collapse report: malformed report: missing entry 'kl_per_dim'"),
    Case("pyrocollapse.CollapseReport:from_json-bad-number", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_file("r.json", json.dumps({**_report().to_dict(), "num_points": "many"}))))), ValueError, r"malformed report: .*'many'"),
    Case("pyrocollapse.CollapseReport:from_json-not-utf8", _make("pyrocollapse.CollapseReport.from_json", _Lazy(lambda: str(_file("r.json", b"\xff\xfe\x00")))), ValueError, r"r\.json' is not valid JSON"),
    Case("pyrocollapse.CollapseReport:plot-unknown-kind", lambda: _report().plot("bars"), ValueError, r"^kind must be one of 'kl', 'dimensions', 'densities', 'mean_space', 'khat'; got 'bars'"),
    Case("pyrocollapse.CollapseReport:getitem-unknown-site", lambda: _report()["w"], KeyError, r"no latent site 'w' in this report"),
    Case("pyrocollapse.CollapseReport:compare-wrong-type", lambda: _report().compare("other"), TypeError, r"^other must be a CollapseReport, got str"),
    Case("pyrocollapse.CollapseReport:to_json-path-is-folder", lambda: _report().to_json(str(_inputs())), IsADirectoryError, r"inputs"),
    Case("report.SiteReport:from_dict-missing-entry", _make("pyrocollapse.report.SiteReport.from_dict", {"site": "z"}), ValueError, r"^malformed report: missing entry 'kl_per_dim'"),
    # ---------------------------------------------------------------- plots
    Case("plots.plot_kl_per_dim:unknown-site", _make("pyrocollapse.plots.plot_kl_per_dim", REPORT, site="w"), ValueError, r"^site must be one of \['z'\]; got 'w'"),
    Case("plots.plot_kl_per_dim:not-a-report", _make("pyrocollapse.plots.plot_kl_per_dim", {"sites": {}}), TypeError, r"^report must be a CollapseReport \(from diagnose\), got dict"),
    Case("plots.plot_dimensions:unknown-site", _make("pyrocollapse.plots.plot_dimensions", REPORT, site="w"), ValueError, r"^site must be one of \['z'\]; got 'w'"),
    Case("plots.plot_dimensions:not-a-report", _make("pyrocollapse.plots.plot_dimensions", None), TypeError, r"^report must be a CollapseReport \(from diagnose\), got NoneType"),
    Case("plots.plot_posterior_densities:dims-out-of-range", _make("pyrocollapse.plots.plot_posterior_densities", REPORT, dims=[7]), ValueError, r"^dims must be non-empty and in \[0, 2\); got \[7\]"),
    Case("plots.plot_posterior_densities:dims-empty", _make("pyrocollapse.plots.plot_posterior_densities", REPORT, dims=[]), ValueError, r"^dims must be non-empty"),
    Case("plots.plot_posterior_densities:max_dims-0", _make("pyrocollapse.plots.plot_posterior_densities", REPORT, max_dims=0), ValueError, r"^max_dims must be >= 1, got 0"),
    Case("plots.plot_posterior_mean_space:no-iw", _make("pyrocollapse.plots.plot_posterior_mean_space", REPORT), ValueError, r"the report has no posterior-mean space for site 'z'; run diagnose with the 'iw' estimator"),
    Case("plots.plot_posterior_densities:dims-float", _make("pyrocollapse.plots.plot_posterior_densities", REPORT, dims=[0.5]), TypeError, r"^dims must be a sequence of ints, got \[0\.5\]"),
    Case("plots.plot_khat:no-psis", _make("pyrocollapse.plots.plot_khat", REPORT), ValueError, r"the report has no PSIS k-hat; run diagnose with the 'psis' estimator"),
    Case("plots.plot_traversals:image_shape-mismatch", _make("pyrocollapse.plots.plot_traversals", _Lazy(lambda: __import__("pyrocollapse.diagnostics", fromlist=["x"]).LatentTraversal("z", np.array([0]), np.array([0.0, 1.0]), np.zeros((1, 2, 4)))), (3, 3)), ValueError, r"^image_shape \(3, 3\) has 9 elements; the data has 4"),
    Case("plots.plot_traversals:not-a-traversal", _make("pyrocollapse.plots.plot_traversals", np.zeros((1, 2, 4)), (2, 2)), TypeError, r"^traversal must be a LatentTraversal \(from latent_traversal\), got ndarray"),
    Case("plots.plot_reconstructions:shape-mismatch", _make("pyrocollapse.plots.plot_reconstructions", np.zeros((3, 4)), np.zeros((3, 5)), (2, 2)), ValueError, r"^data \(3, 4\) and reconstructions \(3, 5\) must have the same shape"),
    Case("plots.plot_reconstructions:empty", _make("pyrocollapse.plots.plot_reconstructions", np.zeros((0, 4)), np.zeros((0, 4)), (2, 2)), ValueError, r"^data is empty"),
    Case("plots.plot_reconstructions:n-0", _make("pyrocollapse.plots.plot_reconstructions", np.zeros((3, 4)), np.zeros((3, 4)), (2, 2), n=0), ValueError, r"^n must be >= 1, got 0"),
    Case("plots.plot_reconstructions:nan", _make("pyrocollapse.plots.plot_reconstructions", np.full((3, 4), np.nan), np.zeros((3, 4)), (2, 2)), ValueError, r"^data contains 12 NaN or infinite values"),
    Case("plots.plot_reconstructions:image_shape-mismatch", _make("pyrocollapse.plots.plot_reconstructions", np.zeros((3, 4)), np.zeros((3, 4)), (3, 3)), ValueError, r"^image_shape \(3, 3\) has 9 elements; the data has 4"),
    Case("plots.plot_reconstructions:image_shape-str", _make("pyrocollapse.plots.plot_reconstructions", np.zeros((3, 4)), np.zeros((3, 4)), "2x2"), TypeError, r"^image_shape must be a tuple of positive ints such as \(1, 8, 8\), got str '2x2'"),
    Case("plots.plot_kl_heatmap:unknown-site", _make("pyrocollapse.plots.plot_kl_heatmap", HISTORY, "w"), ValueError, r"no per-dimension KL recorded for site 'w'"),
    Case("plots.plot_kl_heatmap:not-a-history", _make("pyrocollapse.plots.plot_kl_heatmap", [1, 2]), TypeError, r"^history must be a History \(from fit\), got list"),
    Case("plots.plot_training:empty-history", _make("pyrocollapse.plots.plot_training", _Lazy(lambda: __import__("pyrocollapse.train", fromlist=["x"]).History())), ValueError, r"^history is empty"),
    Case("plots.plot_training:not-a-history", _make("pyrocollapse.plots.plot_training", {"elbo": [1.0]}), TypeError, r"^history must be a History \(from fit\), got dict"),
    Case("plots.plot_elbo_decomposition:empty-history", _make("pyrocollapse.plots.plot_elbo_decomposition", _Lazy(lambda: __import__("pyrocollapse.train", fromlist=["x"]).History())), ValueError, r"^history is empty"),
    Case("plots.plot_schedule:steps-0", _make("pyrocollapse.plots.plot_schedule", _Lazy(lambda: __import__("pyrocollapse.schedules", fromlist=["x"]).Linear(5)), 0), ValueError, r"^steps must be >= 1, got 0"),
    Case("plots.plot_schedule:not-a-schedule", _make("pyrocollapse.plots.plot_schedule", "linear", 10), TypeError, r"^schedule must be a Schedule \(see pyrocollapse\.schedules\), got str"),
    Case("plots.plot_comparison:missing-columns", _make("pyrocollapse.plots.plot_comparison", _Lazy(lambda: __import__("pandas").DataFrame({"prior": ["standard"]}))), ValueError, r"^summary lacks the column\(s\) "),
    Case("plots.plot_comparison:not-a-dataframe", _make("pyrocollapse.plots.plot_comparison", [1, 2]), TypeError, r"^summary must be a pandas DataFrame, got list"),
    Case("plots.save_figure:not-a-figure", _make("pyrocollapse.plots.save_figure", "fig", _Lazy(lambda: str(_tmp() / "out.png"))), TypeError, r"^fig must be a matplotlib Figure, got str"),
    Case("plots.save_figure:unknown-format", lambda: __import__("pyrocollapse.plots", fromlist=["x"]).save_figure(__import__("matplotlib.figure", fromlist=["x"]).Figure(), str(_tmp() / "out.bmpx")), ValueError, r"^path '.*out\.bmpx': format 'bmpx' is not supported; use one of .*png"),
    Case("plots.save_figure:dpi-0", lambda: __import__("pyrocollapse.plots", fromlist=["x"]).save_figure(__import__("matplotlib.figure", fromlist=["x"]).Figure(), str(_tmp() / "out.png"), dpi=0), ValueError, r"^dpi must be >= 1, got 0"),
    # ---------------------------------------------------------------- report folders
    Case("report_folder.render_comparison_html:missing", _make("pyrocollapse.report_folder.render_comparison_html", _Lazy(lambda: _tmp() / "nope")), FileNotFoundError, r"grid folder .* does not exist"),
    Case("report_folder.write_comparison_html:not-a-grid", _make("pyrocollapse.report_folder.write_comparison_html", _Lazy(_inputs)), FileNotFoundError, r"is not a pyrocollapse compare folder"),
    Case("report_folder.write_html:self_contained-not-bool", _make("pyrocollapse.report_folder.write_html", _Lazy(_inputs), self_contained="yes"), TypeError, r"^self_contained must be a bool"),
    Case("report_folder.read_folder:missing", _make("pyrocollapse.report_folder.read_folder", _Lazy(lambda: _tmp() / "nope")), FileNotFoundError, r"report folder '.*nope' does not exist"),
    Case("report_folder.read_folder:a-file", _make("pyrocollapse.report_folder.read_folder", _Lazy(lambda: _file("a.txt", "x"))), ValueError, r"a\.txt' is not a folder; pass a report folder"),
    Case("report_folder.read_folder:no-metrics", _make("pyrocollapse.report_folder.read_folder", _Lazy(_inputs)), FileNotFoundError, r"metrics\.json' not found: '.*inputs' is not a pyrocollapse report folder"),
    Case("report_folder.read_folder:metrics-not-json", _make("pyrocollapse.report_folder.read_folder", _Lazy(lambda: _report_folder(raw="{oops"))), ValueError, r"metrics\.json' is not valid JSON"),
    Case("report_folder.read_folder:metrics-without-report", _make("pyrocollapse.report_folder.read_folder", _Lazy(lambda: _report_folder({"config": {}}))), ValueError, r"metrics\.json' has no 'report' object"),
    Case("report_folder.read_folder:malformed-report", _make("pyrocollapse.report_folder.read_folder", _Lazy(lambda: _report_folder({"report": {"sites": {}}}))), ValueError, r"metrics\.json': malformed report: missing entry"),
    Case("report_folder.read_folder:bad-history", _make("pyrocollapse.report_folder.read_folder", _Lazy(lambda: (_report_folder({"report": _report().to_dict()}) / "history.csv").write_text("a,b\n1,2\n") and _inputs() / "folder")), ValueError, r"history\.csv' could not be read as a training history"),
    Case("report_folder.rerender:missing", _make("pyrocollapse.report_folder.rerender", _Lazy(lambda: _tmp() / "nope")), FileNotFoundError, r"report folder '.*nope' does not exist"),
    Case("report_folder.rerender:figures-not-bool", _make("pyrocollapse.report_folder.rerender", _Lazy(lambda: _report_folder({"report": _report().to_dict()})), figures="no"), TypeError, r"^figures must be a bool, got str 'no'"),
    Case("report_folder.render_html:not-a-report-folder", _make("pyrocollapse.report_folder.render_html", _Lazy(_inputs)), FileNotFoundError, r"is not a pyrocollapse report folder"),
    Case("report_folder.write_html:not-a-report-folder", _make("pyrocollapse.report_folder.write_html", _Lazy(_inputs)), FileNotFoundError, r"is not a pyrocollapse report folder"),
    Case("report_folder.write_report_folder:metrics-without-report", _make("pyrocollapse.report_folder.write_report_folder", TMP_OUT, metrics={}, report=REPORT), ValueError, r"^metrics must be a dict with a 'report' entry"),
    Case("report_folder.write_report_folder:report-wrong-type", _make("pyrocollapse.report_folder.write_report_folder", TMP_OUT, metrics={"report": {}}, report={}), TypeError, r"^report must be a CollapseReport \(from diagnose\), got dict"),
    Case("report_folder.write_report_folder:history-wrong-type", _make("pyrocollapse.report_folder.write_report_folder", TMP_OUT, metrics={"report": {}}, report=REPORT, history=[1]), TypeError, r"^history must be a History \(from fit\) or None, got list"),
    Case("report_folder.write_report_folder:posterior_samples-negative", _make("pyrocollapse.report_folder.write_report_folder", TMP_OUT, metrics={"report": {}}, report=REPORT, posterior_samples=-1), ValueError, r"^posterior_samples must be >= 0, got -1"),
    Case("report_folder.write_report_folder:posterior_points-0", _make("pyrocollapse.report_folder.write_report_folder", TMP_OUT, metrics={"report": {}}, report=REPORT, posterior_points=0), ValueError, r"^posterior_points must be >= 1, got 0"),
    Case("report_folder.write_report_folder:metrics-report-malformed", _make("pyrocollapse.report_folder.write_report_folder", TMP_OUT, metrics={"report": {"sites": {}}}, report=REPORT), ValueError, r"^metrics\['report'\] is not a report\.to_dict\(\): malformed report: missing entry"),
    Case("report_folder.write_report_folder:out-is-a-file", _make("pyrocollapse.report_folder.write_report_folder", _Lazy(lambda: _file("x", "y")), metrics=METRICS, report=REPORT, overwrite=True), ValueError, r"^out '.*x' is a file, not a folder"),
    Case("report_folder.write_report_folder:out-exists", _make("pyrocollapse.report_folder.write_report_folder", _Lazy(lambda: _file("x", "y").parent), metrics=METRICS, report=REPORT), FileExistsError, r"exists and is not empty; pass overwrite"),
    Case("report_folder.write_figures:not-a-dict", _make("pyrocollapse.report_folder.write_figures", TMP_OUT, ["fig"]), TypeError, r"^figures must be a dict of name -> Figure, got list"),
    Case("report_folder.write_figures:bad-stem", _make("pyrocollapse.report_folder.write_figures", TMP_OUT, {"../up": None}), ValueError, r"^figure name '\.\./up' must be a non-empty file stem"),
    Case("report_folder.write_figures:not-a-figure", _make("pyrocollapse.report_folder.write_figures", TMP_OUT, {"kl": "png"}), TypeError, r"^figures\['kl'\] must be a matplotlib Figure, got str"),
    Case("report_folder.report_figures:not-a-report", _make("pyrocollapse.report_folder.report_figures", {"sites": {}}), TypeError, r"^report must be a CollapseReport \(from diagnose\), got dict"),
    Case("report_folder.history_figures:sites-str", _make("pyrocollapse.report_folder.history_figures", HISTORY, "z"), TypeError, r"^sites must be a list of site names, got str"),
    Case("report_folder.model_figures:no-image-shape", _make("pyrocollapse.report_folder.model_figures", VAE, _Lazy(lambda: _dataset()), REPORT), ValueError, r"^held_out 'tiny' has no image_shape"),
    Case("report_folder.model_figures:max_dims-0", _make("pyrocollapse.report_folder.model_figures", VAE, _Lazy(lambda: _dataset((1, 2, 2))), REPORT, max_dims=0), ValueError, r"^max_dims must be >= 1, got 0"),
    Case("report_folder.model_figures:held_out-tensor", _make("pyrocollapse.report_folder.model_figures", VAE, X, REPORT), TypeError, r"^held_out must be a pyrocollapse\.data\.Dataset, got Tensor"),
    Case("report_folder.figure_name:unknown-kind", _make("pyrocollapse.report_folder.figure_name", "pie"), ValueError, r"^kind must be one of 'kl_per_dim', .*got 'pie'"),
    Case("report_folder.figure_name:num_sites-0", _make("pyrocollapse.report_folder.figure_name", "kl_per_dim", "z", 0), ValueError, r"^num_sites must be >= 1, got 0"),
    # ---------------------------------------------------------------- callbacks
    Case("callbacks.CollapseCallback:no-threshold", _make("pyrocollapse.callbacks.CollapseCallback", min_active_units=None), ValueError, r"^CollapseCallback needs a threshold: give min_active_units, min_mi or both"),
    Case("callbacks.CollapseWarning:min_active_units-0", _make("pyrocollapse.callbacks.CollapseWarning", min_active_units=0), ValueError, r"^min_active_units must be >= 1, got 0"),
    Case("callbacks.CollapseWarning:min_mi-negative", _make("pyrocollapse.callbacks.CollapseWarning", min_mi=-0.1), ValueError, r"^min_mi must be >= 0\.0, got -0\.1"),
    Case("callbacks.CollapseWarning:min_mi-nan", _make("pyrocollapse.callbacks.CollapseWarning", min_mi=math.nan), ValueError, r"^min_mi must be finite, got nan"),
    Case("callbacks.CollapseWarning:site-empty", _make("pyrocollapse.callbacks.CollapseWarning", site=""), ValueError, r"^site must be a non-empty latent site name"),
    Case("callbacks.CollapseWarning:site-int", _make("pyrocollapse.callbacks.CollapseWarning", site=1), TypeError, r"^site must be a latent site name \(str\), got int 1"),
    Case("callbacks.CollapseWarning:patience-0", _make("pyrocollapse.callbacks.CollapseWarning", patience=0), ValueError, r"^patience must be >= 1, got 0"),
    Case("callbacks.AggressiveOnCollapse:max_switches-0", _make("pyrocollapse.callbacks.AggressiveOnCollapse", max_switches=0), ValueError, r"^max_switches must be >= 1, got 0"),
    Case("callbacks.AggressiveOnCollapse:patience-float", _make("pyrocollapse.callbacks.AggressiveOnCollapse", patience=1.5), TypeError, r"^patience must be an int, got float 1\.5"),
    Case("callbacks.RollbackOnCollapse:unknown-then", _make("pyrocollapse.callbacks.RollbackOnCollapse", then="restart"), ValueError, r"^then must be one of 'stop', 'continue', 'aggressive'; got 'restart'"),
    Case("callbacks.RollbackOnCollapse:max_rollbacks-0", _make("pyrocollapse.callbacks.RollbackOnCollapse", max_rollbacks=0), ValueError, r"^max_rollbacks must be >= 1, got 0"),
    Case("callbacks.RollbackOnCollapse:restore_schedule-str", _make("pyrocollapse.callbacks.RollbackOnCollapse", restore_schedule="yes"), TypeError, r"^restore_schedule must be a bool, got str 'yes'"),
    Case("callbacks.Checkpoint:take-wrong-type", _make("pyrocollapse.callbacks.Checkpoint.take", "state"), TypeError, r"^state must be a TrainState \(the state fit hands to callbacks\), got str"),
    Case("callbacks.CollapseCallback:reasons-unmonitored-site", lambda: __import__("pyrocollapse.callbacks", fromlist=["x"]).CollapseWarning(site="w").reasons(__import__("pyrocollapse.train", fromlist=["x"]).EpochRecord(1, {"active_units/z": 1.0, "mi/z": 0.1})), ValueError, r"CollapseWarning watches 'active_units/w', but epoch 1 has no such value \(monitored sites: 'z'\)"),
    # ---------------------------------------------------------------- run engine
    Case("pyrocollapse.load_run:missing-folder", _make("pyrocollapse.load_run", _Lazy(lambda: _tmp() / "nope")), ValueError, r"^run folder '.*nope' does not exist"),
    Case("pyrocollapse.load_run:a-file", _make("pyrocollapse.load_run", _Lazy(lambda: _file("run.txt", "x"))), ValueError, r"run\.txt' is not a folder"),
    Case("pyrocollapse.load_run:no-metrics", _make("pyrocollapse.load_run", _Lazy(_inputs)), ValueError, r"metrics\.json' not found"),
    Case("pyrocollapse.load_run:bad-metrics", _make("pyrocollapse.load_run", _Lazy(lambda: _report_folder(raw="{"))), ValueError, r"metrics\.json' is not valid JSON"),
    Case("pyrocollapse.load_run:no-config", _make("pyrocollapse.load_run", _Lazy(lambda: _run_folder(with_config=False))), ValueError, r"metrics\.json' has no run configuration"),
    Case("pyrocollapse.load_run:no-model", _make("pyrocollapse.load_run", _Lazy(_run_folder)), ValueError, r"model\.pt' not found: the run folder holds no trained model"),
    Case("pyrocollapse.load_run:path-int", _make("pyrocollapse.load_run", 3), TypeError, r"^path must be a str or os\.PathLike, got int"),
    Case("pyrocollapse.RunConfig:epochs-0", _validate(epochs=0), ValueError, r"^--epochs must be >= 1, got 0"),
    Case("pyrocollapse.RunConfig:lr-0", _validate(lr=0.0), ValueError, r"^--lr must be > 0\.0, got 0\.0"),
    Case("pyrocollapse.RunConfig:lr-nan", _validate(lr=math.nan), ValueError, r"^--lr must be finite, got nan"),
    Case("pyrocollapse.RunConfig:lr-str", _validate(lr="fast"), TypeError, r"^--lr must be a real number, got str 'fast'"),
    Case("pyrocollapse.RunConfig:valid_fraction-above-0.9", _validate(valid_fraction=0.95), ValueError, r"^--valid-fraction must be <= 0\.9, got 0\.95"),
    Case("pyrocollapse.RunConfig:batch_size-negative", _validate(batch_size=-1), ValueError, r"^--batch-size must be >= 1, got -1"),
    Case("pyrocollapse.RunConfig:latent_dim-float", _validate(latent_dim=2.0), TypeError, r"^--latent-dim must be an int, got float 2\.0"),
    Case("pyrocollapse.RunConfig:unknown-dataset", _validate(dataset="cifar"), ValueError, r"unknown dataset 'cifar'; valid names"),
    Case("pyrocollapse.RunConfig:unknown-model", _validate(model="cnn"), ValueError, r"unknown model 'cnn'; valid names"),
    Case("pyrocollapse.RunConfig:unknown-prior", _validate(prior="vampp"), ValueError, r"unknown prior 'vampp'; valid names"),
    Case("pyrocollapse.RunConfig:unknown-elbo", _validate(elbo="iwea"), ValueError, r"unknown elbo 'iwea'; valid names"),
    Case("pyrocollapse.RunConfig:unknown-schedule", _validate(schedule="cosine"), ValueError, r"unknown schedule 'cosine'; valid names"),
    Case("pyrocollapse.RunConfig:unknown-estimator", _validate(estimators=("kl", "mutual")), ValueError, r"--estimators names unknown estimators \['mutual'\]"),
    Case("pyrocollapse.RunConfig:estimators-str", _validate(estimators="kl"), TypeError, r"^--estimators must be a sequence of names such as \('kl', 'au'\), got str 'kl'"),
    Case("pyrocollapse.RunConfig:unknown-prior-option", _validate(prior="mixture", prior_options={"components": 3}), ValueError, r"unknown prior option 'components'; accepted: n_components"),
    Case("pyrocollapse.RunConfig:prior-options-list", _validate(prior_options=["a=1"]), TypeError, r"^prior options must be a dict, got list"),
    Case("pyrocollapse.RunConfig:unknown-model-option", _validate(model_options={"hiden": 3}), ValueError, r"unknown model option 'hiden'; accepted: input_dim, likelihood, hidden"),
    Case("pyrocollapse.RunConfig:schedule-with-plain-elbo", _validate(elbo="elbo", schedule="linear"), ValueError, r"objective 'elbo' takes no KL schedule; drop --schedule"),
    Case("pyrocollapse.RunConfig:on_collapse-unknown", _validate(on_collapse="panic"), ValueError, r"^--on-collapse must be one of 'warn', 'aggressive', 'rollback'; got 'panic'"),
    Case("pyrocollapse.RunConfig:aggressive-str", _validate(aggressive="yes"), TypeError, r"^aggressive must be a bool, got 'yes'"),
    Case("pyrocollapse.RunConfig:from_dict-unknown-key", _make("pyrocollapse.RunConfig.from_dict", {"epoch": 3}), ValueError, r"unknown run option\(s\) \['epoch'\]; accepted:"),
    Case("pyrocollapse.RunConfig:from_dict-not-dict", _make("pyrocollapse.RunConfig.from_dict", [("epochs", 3)]), TypeError, r"^a run configuration must be a dict, got list"),
    Case("experiment.build:bad-config", _make("pyrocollapse.experiment.build", _Lazy(lambda: _tiny_config(epochs=0))), ValueError, r"^--epochs must be >= 1, got 0"),
    Case("experiment.build:not-a-config", _make("pyrocollapse.experiment.build", {"epochs": 1}), TypeError, r"^config must be a RunConfig, got dict"),
    Case("pyrocollapse.run_experiment:bad-config-writes-nothing", _make("pyrocollapse.run_experiment", _Lazy(lambda: _tiny_config(prior="vampp")), TMP_OUT), ValueError, r"unknown prior 'vampp'"),
    Case("pyrocollapse.run_experiment:not-a-config", _make("pyrocollapse.run_experiment", {"epochs": 1}, TMP_OUT), TypeError, r"^config must be a RunConfig, got dict"),
    Case("pyrocollapse.run_experiment:out-exists", _make("pyrocollapse.run_experiment", _Lazy(_tiny_config), _Lazy(lambda: _file("x", "y").parent)), FileExistsError, r"--out '.*inputs' exists and is not empty; choose another folder or pass --overwrite"),
    Case("pyrocollapse.run_experiment:checkpoint_every-0", _make("pyrocollapse.run_experiment", _Lazy(_tiny_config), TMP_OUT, checkpoint_every=0), ValueError, r"^--checkpoint-every must be >= 1, got 0"),
    Case("pyrocollapse.run_experiment:resume-str", _make("pyrocollapse.run_experiment", _Lazy(_tiny_config), TMP_OUT, resume="yes"), TypeError, r"^resume must be a bool, got str 'yes'"),
    Case("pyrocollapse.run_experiment:resume-without-out", _make("pyrocollapse.run_experiment", _Lazy(_tiny_config), None, resume=True), ValueError, r"^checkpoint_every and resume need out"),
    Case("pyrocollapse.run_experiment:latent_dim-cannot-fit", _make("pyrocollapse.run_experiment", _Lazy(lambda: _tiny_config(latent_dim=10**10)), TMP_OUT), ValueError, r"^the run cannot fit in memory: it needs at least .* for one training batch .*10000000000 dims.* is available; lower --latent-dim or --batch-size"),
    Case("pyrocollapse.run_experiment:importance_samples-cannot-fit", _make("pyrocollapse.run_experiment", _Lazy(lambda: _tiny_config(importance_samples=10**12, estimators=("kl", "iw"))), TMP_OUT), ValueError, r"^the run cannot fit in memory: .*1000000000000 samples.* lower --importance-samples"),
    Case("pyrocollapse.run_experiment:out-is-a-file", _make("pyrocollapse.run_experiment", _Lazy(_tiny_config), _Lazy(lambda: _file("x", "y")), overwrite=True), ValueError, r"--out '.*x' is a file, not a folder"),
    Case("pyrocollapse.compare:unknown-prior", _make("pyrocollapse.compare", priors=["vampp"], seeds=1, out=TMP_OUT, base=_Lazy(_tiny_config)), ValueError, r"unknown prior 'vampp'"),
    Case("pyrocollapse.compare:unknown-elbo", _make("pyrocollapse.compare", elbos=["elbo", "iwea"], seeds=1, out=TMP_OUT, base=_Lazy(_tiny_config)), ValueError, r"unknown elbo 'iwea'"),
    Case("pyrocollapse.compare:priors-str", _make("pyrocollapse.compare", priors="standard", out=TMP_OUT), TypeError, r"priors and elbos must be sequences of names"),
    Case("pyrocollapse.compare:empty-grid", _make("pyrocollapse.compare", priors=[], out=TMP_OUT), ValueError, r"priors and elbos must each name at least one entry"),
    Case("pyrocollapse.compare:seeds-0", _make("pyrocollapse.compare", seeds=0, out=TMP_OUT), ValueError, r"^seeds must be >= 1, got 0"),
    Case("pyrocollapse.compare:seeds-negative-entry", _make("pyrocollapse.compare", seeds=[0, -1], out=TMP_OUT), ValueError, r"^seeds\[1\] must be >= 0, got -1"),
    Case("pyrocollapse.compare:jobs-0", _make("pyrocollapse.compare", jobs=0, out=TMP_OUT), ValueError, r"^jobs must be >= 1, got 0"),
    Case("pyrocollapse.compare:iw_samples-0", _make("pyrocollapse.compare", iw_samples=0, out=TMP_OUT), ValueError, r"^iw_samples must be >= 1, got 0"),
    Case("pyrocollapse.compare:base-wrong-type", _make("pyrocollapse.compare", base={"epochs": 1}, out=TMP_OUT), TypeError, r"^base must be a RunConfig or None, got dict"),
    Case("pyrocollapse.compare:option-for-unknown-name", _make("pyrocollapse.compare", seeds=1, out=TMP_OUT, base=_Lazy(_tiny_config), prior_options={"mixtrue": {"n_components": 3}}), ValueError, r"^prior_options: unknown prior 'mixtrue'; valid names"),
    Case("pyrocollapse.compare:unknown-option", _make("pyrocollapse.compare", seeds=1, out=TMP_OUT, base=_Lazy(_tiny_config), elbos=["beta"], elbo_options={"beta": {"gamma": 2}}), ValueError, r"unknown elbo option 'gamma'"),
    Case("pyrocollapse.compare:out-is-a-file", _make("pyrocollapse.compare", seeds=1, out=_Lazy(lambda: _file("x", "y")), base=_Lazy(_tiny_config)), ValueError, r"^out '.*x' is a file, not a folder"),
    Case("pyrocollapse.compare:option-value-0-before-any-run", _make("pyrocollapse.compare", priors=["standard", "mixture"], seeds=2, out=TMP_OUT, base=_Lazy(_tiny_config), prior_options={"mixture": {"n_components": 0}}), ValueError, r"^run mixture__elbo__seed0 \(prior 'mixture' with n_components=0; objective 'elbo'\): n_components must be >= 1, got 0$"),
    Case("pyrocollapse.compare:option-value-str-before-any-run", _make("pyrocollapse.compare", priors=["mixture"], seeds=1, out=TMP_OUT, base=_Lazy(_tiny_config), prior_options={"mixture": {"n_components": "abc"}}), TypeError, r"^run mixture__elbo__seed0 \(prior 'mixture' with n_components='abc'; objective 'elbo'\): n_components must be an int, got str 'abc'$"),
    Case("pyrocollapse.compare:objective-value-before-any-run", _make("pyrocollapse.compare", elbos=["elbo", "freebits"], seeds=1, out=TMP_OUT, base=_Lazy(_tiny_config), elbo_options={"freebits": {"free_bits": -1.0}}), ValueError, r"^run standard__freebits__seed0 \(prior 'standard'; objective 'freebits' with free_bits=-1\.0\): free_bits must be"),
    Case("comparison.run_id:seed-negative", _make("pyrocollapse.comparison.run_id", "standard", "elbo", -1), ValueError, r"^seed must be >= 0, got -1"),
    Case("comparison.run_id:name-with-separator", _make("pyrocollapse.comparison.run_id", "a/b", "elbo", 0), ValueError, r"^prior must be a registry name"),
    Case("diagnostics.explain_collapse:not-a-report", _make("pyrocollapse.diagnostics.explain_collapse", MODEL, GUIDE, X, {"verdict": "full collapse"}), TypeError, r"^report must be a CollapseReport, got dict"),
    Case("comparison.format_summary:not-a-dataframe", _make("pyrocollapse.comparison.format_summary", [{"prior": "standard"}]), TypeError, r"DataFrame"),
    Case("comparison.summarize_runs:missing-columns", _make("pyrocollapse.comparison.summarize_runs", _Lazy(lambda: __import__("pandas").DataFrame({"prior": ["standard"]}))), ValueError, r"^table lacks the column\(s\) "),
    Case("comparison.summarize_runs:not-a-dataframe", _make("pyrocollapse.comparison.summarize_runs", [{"prior": "standard"}]), TypeError, r"^table must be a pandas DataFrame, got list"),
    # ---------------------------------------------------------------- command line
    Case("cli.parse_options:no-equals", _make("pyrocollapse.cli.parse_options", ["foo"], lambda a=1: None, "prior"), ValueError, r"^prior option 'foo' must look like KEY=VALUE"),
    Case("cli.parse_options:unknown-key", _make("pyrocollapse.cli.parse_options", ["b=1"], lambda a=1: None, "prior"), ValueError, r"^unknown prior option 'b'; accepted: a"),
    Case("cli.parse_options:pairs-str", _make("pyrocollapse.cli.parse_options", "a=1", lambda a=1: None, "prior"), TypeError, r"^pairs must be a list of KEY=VALUE strings, got str"),
    Case("cli.main:argv-str", _make("pyrocollapse.cli.main", "run --epochs 1"), TypeError, r"^argv must be a list of strings such as \['run', '--epochs', '5'\], got str 'run --epochs 1'"),
]

#: Rows for the optional Lightning module (the ``lightning`` extra, installed with ``dev``).
HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None or (
    importlib.util.find_spec("pytorch_lightning") is not None
)
# fmt: off
if HAS_LIGHTNING:
    TABLE += [
        Case("lightning.VAELightningModule:not-a-module", _make("pyrocollapse.lightning.VAELightningModule", object()), TypeError, r"^model must be a torch\.nn\.Module"),
        Case("lightning.VAELightningModule:lr-0", _make("pyrocollapse.lightning.VAELightningModule", _Lazy(lambda: importlib.import_module("pyrocollapse.models").MLPVAE(4, 2)), lr=0.0), ValueError, r"^lr must be > 0"),
        Case("lightning.VAELightningModule:unknown-elbo", _make("pyrocollapse.lightning.VAELightningModule", _Lazy(lambda: importlib.import_module("pyrocollapse.models").MLPVAE(4, 2)), elbo="nope"), ValueError, r"unknown elbo 'nope'; valid names"),
        Case("lightning.LightningCollapseCallback:not-a-callback", _make("pyrocollapse.lightning.LightningCollapseCallback", object()), TypeError, r"^callback must be a pyrocollapse\.callbacks\.CollapseCallback"),
        Case("lightning.LightningCollapseWarning:monitor_size-1", _make("pyrocollapse.lightning.LightningCollapseWarning", monitor_size=1), ValueError, r"^monitor_size must be >= 2"),
        Case("lightning.LightningAggressiveOnCollapse:monitor_size-1", _make("pyrocollapse.lightning.LightningAggressiveOnCollapse", monitor_size=1), ValueError, r"^monitor_size must be >= 2"),
        Case("lightning.LightningRollbackOnCollapse:monitor_size-1", _make("pyrocollapse.lightning.LightningRollbackOnCollapse", monitor_size=1), ValueError, r"^monitor_size must be >= 2"),
        Case("lightning.make_dataloader:empty", _make("pyrocollapse.lightning.make_dataloader", torch.zeros(0, 3)), ValueError, r"at least one row"),
        Case("lightning.make_dataloader:batch_size-0", _make("pyrocollapse.lightning.make_dataloader", torch.zeros(4, 3), batch_size=0), ValueError, r"^batch_size must be >= 1, got 0"),
        Case("lightning.RankStateDump:dirpath-int", _make("pyrocollapse.lightning.RankStateDump", 1), TypeError, r"^dirpath must be a path, got int"),
        Case("lightning.per_data_point_terms:not-an-elbo", _make("pyrocollapse.lightning.per_data_point_terms", "elbo", torch.tensor(1.0), 3), TypeError, r"^objective must be a pyro\.infer\.ELBO, got str"),
        Case("lightning.per_data_point_terms:batch_size-0", _make("pyrocollapse.lightning.per_data_point_terms", _Lazy(lambda: importlib.import_module("pyrocollapse.elbo").PlainELBO()), torch.tensor(1.0), 0), ValueError, r"^batch_size must be >= 1, got 0"),
        Case("lightning.main:argv-str", _make("pyrocollapse.lightning.main", "run"), TypeError, r"^argv must be a list of strings"),
    ]
# fmt: on
# fmt: on


#: Rows whose check belongs in a file another engineer is editing: id -> what to fix.
#: Each is xfail(strict=True), so the row fails loudly once the fix lands; then delete
#: its entry here.
PENDING: dict[str, str] = {}


def _params() -> list[Any]:
    out = []
    for case in TABLE:
        pending = case.pending or PENDING.get(case.id)
        marks = [pytest.mark.xfail(strict=True, reason=f"pending: {pending}")] if pending else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.fixture
def scratch(tmp_path: Path):
    _Scratch.path = tmp_path
    yield tmp_path
    _Scratch.path = None


@pytest.mark.parametrize("case", _params())
def test_bad_input_raises_a_clear_error(case: Case, scratch: Path) -> None:
    try:
        case.call()
    except case.exc as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        assert re.search(case.match, message), f"message {message!r} does not match {case.match!r}"
        assert "\n" not in message.strip() or "Traceback" not in message
    except Exception as e:
        raise AssertionError(
            f"expected {case.exc.__name__} matching {case.match!r}, got {type(e).__name__}: {e}"
        ) from e
    else:
        raise AssertionError(f"expected {case.exc.__name__}, but the call returned")
    # no partial files: nothing but the row's own inputs is left in its scratch folder
    left = sorted(p.name for p in scratch.iterdir() if p.name != "inputs")
    assert left == [], f"files left behind: {left}"
    inputs = scratch / "inputs"
    if inputs.exists():
        stray = sorted(
            str(p.relative_to(inputs)) for p in inputs.rglob("*") if p.name.startswith(".")
        )
        assert stray == [], f"temporary files left behind: {stray}"


# --------------------------------------------------------------------------------------
# Every public name has a row
# --------------------------------------------------------------------------------------
#: Public modules whose ``__all__`` the table must cover (short name -> module).
MODULES = {
    "pyrocollapse": "pyrocollapse",
    "data": "pyrocollapse.data",
    "schedules": "pyrocollapse.schedules",
    "priors": "pyrocollapse.priors",
    "elbo": "pyrocollapse.elbo",
    "models": "pyrocollapse.models",
    "train": "pyrocollapse.train",
    "diagnostics": "pyrocollapse.diagnostics",
    "summaries": "pyrocollapse.summaries",
    "report": "pyrocollapse.report",
    "plots": "pyrocollapse.plots",
    "report_folder": "pyrocollapse.report_folder",
    "callbacks": "pyrocollapse.callbacks",
    "experiment": "pyrocollapse.experiment",
    "comparison": "pyrocollapse.comparison",
    "cli": "pyrocollapse.cli",
    "jit": "pyrocollapse.jit",
    "persistence": "pyrocollapse.persistence",
    **({"lightning": "pyrocollapse.lightning"} if HAS_LIGHTNING else {}),
}

#: Public functions and classes without a row, each with the reason.
EXEMPT = {
    # result records: built by the estimators from validated input, never by users
    **dict.fromkeys(
        [
            f"diagnostics.{n}"
            for n in (
                "ActiveUnits",
                "CauseAnalysis",
                "DatapointRhat",
                "DecoderSensitivity",
                "ImportanceWeightedLogLikelihood",
                "KLPerDimension",
                "LatentTraversal",
                "MutualInformation",
                "PSISDiagnostic",
                "PosteriorDensities",
                "PosteriorMeanSpace",
                "SiteDraw",
                "GlobalSite",
            )
        ],
        "result record built by an estimator",
    ),
    "diagnostics.SiteSkipped": "an exception class the diagnostics raise, takes a message only",
    # intermediate records of one ELBO evaluation, built by BaseELBO.evaluate
    **dict.fromkeys(
        ["elbo.ELBOTerms", "elbo.Evaluation", "elbo.LatentTerm", "elbo.LocalSite"],
        "intermediate record built by BaseELBO.evaluate",
    ),
    "models.PPCASolution": "result record of LinearVAE's closed-form solution",
    "jit.CompiledEvaluation": "cache built by BaseELBO(jit=True); its inputs are checked there",
    "train.Callback": "base class with no-op hooks; its subclasses have rows",
    "train.NonFiniteLossError": "an exception class fit raises, takes a message only",
    "pyrocollapse.NonFiniteLossError": "same object as train.NonFiniteLossError",
    "train.TrainState": "mutable state fit hands to callbacks; never built by users",
    "callbacks.PosteriorCollapseWarning": "a warning category, takes a message only",
    "report_folder.FigureSpec": "constant record of the FIGURES table",
    "report_folder.ReportFolder": "record returned by read_folder",
    "experiment.Built": "record returned by build",
    "experiment.RunResult": "record returned by run_experiment",
    "persistence.LoadedRun": "record returned by load_run",
    "persistence.Saveable": "mixin of VAE and Prior; its save and load have rows under models.VAE and priors.Prior",
    "persistence.load_run": "same object as pyrocollapse.load_run",
    # the same objects as the top-level names that have rows
    "report.CollapseReport": "same object as pyrocollapse.CollapseReport",
    "train.History": "same object as pyrocollapse.History",
    "train.fit": "same object as pyrocollapse.fit",
    "data.load_dataset": "same object as pyrocollapse.load_dataset",
    "diagnostics.diagnose": "same object as pyrocollapse.diagnose",
    "summaries.to_inference_data": "same object as pyrocollapse.to_inference_data",
    "summaries.summarize": "same object as pyrocollapse.summarize",
    "comparison.compare": "same object as pyrocollapse.compare",
    "experiment.RunConfig": "same object as pyrocollapse.RunConfig",
    "experiment.run_experiment": "same object as pyrocollapse.run_experiment",
}


def _public(short: str) -> list[str]:
    module = importlib.import_module(MODULES[short])
    names = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            names.append(f"{short}.{name}")
    return names


def test_every_public_name_is_covered() -> None:
    covered = {case.api.split(".", 2)[0] + "." + case.api.split(".", 2)[1] for case in TABLE}
    missing = [
        name
        for short in MODULES
        for name in _public(short)
        if name not in covered and name not in EXEMPT
    ]
    assert missing == [], f"public names without a bad-input row (add one or exempt it): {missing}"
    stale = [name for name in EXEMPT if name in covered or name.split(".", 1)[1] == ""]
    assert stale == [], f"exempt names that have rows: {stale}"
    ids = [case.id for case in TABLE]
    assert len(ids) == len(set(ids)), "row ids must be unique"


def test_exempt_names_exist() -> None:
    for name in EXEMPT:
        short, attr = name.split(".", 1)
        assert hasattr(importlib.import_module(MODULES[short]), attr), name


def test_pending_rows_exist() -> None:
    ids = {case.id for case in TABLE}
    assert sorted(set(PENDING) - ids) == []


# --------------------------------------------------------------------------------------
# No partial files: a failure halfway through a write leaves nothing at the target
# --------------------------------------------------------------------------------------
class _HalfWriter:
    """A text file whose ``write`` writes half of what it is given, then fails (disk full)."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.f.close()

    def write(self, data: str) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(28, "No space left on device")


def _fail_writes(monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool] = lambda p: True):
    """Make every atomic text write (``pyrocollapse._io``) whose path passes ``when`` fail
    halfway through."""
    import builtins

    import pyrocollapse._io as io_module

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = builtins.open(file, mode, *args, **kwargs)
        return _HalfWriter(f) if "w" in mode and when(str(file)) else f

    monkeypatch.setattr(io_module, "open", fake_open, raising=False)


def _entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_report_to_json_failing_midway_leaves_no_file(tmp_path, monkeypatch):
    report = _report()
    _fail_writes(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        report.to_json(str(tmp_path / "report.json"))
    assert _entries(tmp_path) == []


def test_report_to_json_keeps_the_old_file_when_a_rewrite_fails(tmp_path, monkeypatch):
    from pyrocollapse import CollapseReport

    path = tmp_path / "report.json"
    _report().to_json(str(path))
    before = path.read_text()
    _fail_writes(monkeypatch)
    with pytest.raises(OSError):
        _report().to_json(str(path))
    assert path.read_text() == before and _entries(tmp_path) == ["report.json"]
    assert CollapseReport.from_json(str(path)).to_dict() == _report().to_dict()


def test_history_to_csv_failing_midway_leaves_no_file(tmp_path, monkeypatch):
    _fail_writes(monkeypatch)
    with pytest.raises(OSError):
        _history().to_csv(str(tmp_path / "history.csv"))
    assert _entries(tmp_path) == []


def test_save_inference_data_failing_midway_leaves_no_file(tmp_path, monkeypatch):
    from pyrocollapse.summaries import save_inference_data

    idata = _idata()

    def half_netcdf(self: Any, path: str, **kwargs: Any) -> None:
        Path(path).write_bytes(b"\x89HDF\r\n")  # the start of a file ...
        raise OSError(28, "No space left on device")  # ... and then the disk is full

    monkeypatch.setattr(type(idata), "to_netcdf", half_netcdf)
    with pytest.raises(OSError):
        save_inference_data(idata, tmp_path / "posterior.nc")
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("step", ["metrics.json", "figures", "report.html"])
def test_report_folder_failing_midway_leaves_no_folder(tmp_path, monkeypatch, step):
    import pyrocollapse.report_folder as rf

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    if step == "metrics.json":
        _fail_writes(monkeypatch, lambda p: p.endswith(".tmp") and "metrics.json" in p)
    elif step == "figures":
        monkeypatch.setattr("pyrocollapse.plots.save_figure", boom)
    else:
        monkeypatch.setattr(rf, "render_html", boom)
    with pytest.raises(OSError):
        rf.write_report_folder(
            tmp_path / "out", metrics={"report": _report().to_dict()}, report=_report(),
            history=_history(),
        )  # fmt: skip
    assert _entries(tmp_path) == []


def test_report_folder_failing_midway_keeps_the_folder_it_would_replace(tmp_path, monkeypatch):
    import pyrocollapse.report_folder as rf

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("old")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rf, "render_html", boom)
    with pytest.raises(OSError):
        rf.write_report_folder(
            out, metrics={"report": _report().to_dict()}, report=_report(), overwrite=True
        )
    assert _entries(tmp_path) == ["out", "out/metrics.json"]
    assert (out / "metrics.json").read_text() == "old"


def test_run_folder_failing_midway_leaves_no_folder(tmp_path, monkeypatch):
    import pyrocollapse.report_folder as rf
    from pyrocollapse import run_experiment

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rf, "render_html", boom)
    with pytest.raises(OSError):
        run_experiment(_tiny_config(), tmp_path / "run", progress=False)
    assert _entries(tmp_path) == []


def test_compare_failing_while_writing_its_tables_leaves_no_partial_table(tmp_path, monkeypatch):
    from pyrocollapse import compare

    _fail_writes(monkeypatch, lambda p: "comparison.csv" in p)
    with pytest.raises(OSError):
        compare(seeds=1, out=tmp_path / "grid", base=_tiny_config(), progress=False)
    left = _entries(tmp_path / "grid")
    assert "comparison.csv" not in left and not [p for p in left if Path(p).name.startswith(".")]
    # what was written is whole: runs.csv has its run, and the run's folder is complete
    import pandas as pd

    assert pd.read_csv(tmp_path / "grid" / "runs.csv")["status"].tolist() == ["ok"]
    assert (tmp_path / "grid" / "runs" / "standard__elbo__seed0" / "report.html").exists()
