"""Tests of pyrocollapse.data: every loader's contract, determinism and error messages."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrocollapse.data import (
    BOS_ID,
    DATASETS,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Dataset,
    decode_tokens,
    encode_text,
    load_dataset,
    load_digits,
    load_idx,
    load_text,
    make_latent_mixture,
    make_ppca,
    make_sequences,
    make_shapes,
    ppca_population_covariance,
    read_idx,
)

GENERATORS = {
    "ppca": make_ppca,
    "mixture": make_latent_mixture,
    "shapes": make_shapes,
    "sequences": make_sequences,
}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def _row_ids(n: int) -> Dataset:
    """A tiny real dataset whose single column is the row number."""
    return Dataset(
        data=torch.arange(n, dtype=torch.float32)[:, None],
        name="ids",
        kind="real",
        event_shape=(1,),
    )


def _check_token_layout(ds: Dataset) -> None:
    x, lengths = ds.data, ds.lengths
    assert ds.kind == "tokens" and x.dtype == torch.int64 and lengths.dtype == torch.int64
    assert (x[:, 0] == BOS_ID).all()
    assert ((x == EOS_ID).sum(1) == 1).all()
    assert (x.gather(1, (lengths - 1)[:, None]).squeeze(1) == EOS_ID).all()
    inside = torch.arange(x.shape[1]) < lengths[:, None]
    assert (x[~inside] == PAD_ID).all() and (x[inside] != PAD_ID).all()
    assert int(x.max()) < len(ds.vocab) and int(x.min()) >= 0


# --------------------------------------------------------------------------------------
# Dataset record
# --------------------------------------------------------------------------------------
def test_dataset_validates_consistency() -> None:
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        Dataset(x, "d", "gaussian", (3,))
    with pytest.raises(ValueError, match=r"event_shape \(4,\) does not match"):
        Dataset(x, "d", "real", (4,))
    with pytest.raises(TypeError, match="must be float32"):
        Dataset(x.double(), "d", "real", (3,))
    with pytest.raises(ValueError, match="only 0 and 1"):
        Dataset(x + 0.5, "d", "binary", (3,))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        Dataset(x + 2, "d", "unit_interval", (3,))
    with pytest.raises(ValueError, match=r"factors must have shape \(N=4, F\)"):
        Dataset(x, "d", "real", (3,), factors=torch.zeros(5, 1))
    with pytest.raises(ValueError, match="2 names but factors has 1 columns"):
        Dataset(x, "d", "real", (3,), factors=torch.zeros(4, 1), factor_names=("a", "b"))
    with pytest.raises(ValueError, match="image_shape"):
        Dataset(x, "d", "real", (3,), image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="only allowed for kind='tokens'"):
        Dataset(x, "d", "real", (3,), lengths=torch.ones(4, dtype=torch.long))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        Dataset(x, "d", "real", (3,), metadata={"tensor": torch.zeros(1)})
    with pytest.raises(ValueError, match="N >= 1"):
        Dataset(torch.zeros(0, 3), "d", "real", (3,))
    auto = Dataset(x, "d", "real", [3], factors=torch.zeros(4, 2))
    assert auto.event_shape == (3,) and auto.factor_names == ("factor_0", "factor_1")


def test_dataset_validates_token_layout() -> None:
    vocab = (*SPECIAL_TOKENS, "a")
    good = torch.tensor([[BOS_ID, 4, EOS_ID, PAD_ID]])
    Dataset(good, "t", "tokens", (4,), vocab=vocab, lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="needs both vocab and lengths"):
        Dataset(good, "t", "tokens", (4,), vocab=vocab)
    with pytest.raises(ValueError, match=r"padding must fill exactly the positions >= lengths"):
        Dataset(good, "t", "tokens", (4,), vocab=vocab, lengths=torch.tensor([4]))
    no_eos = torch.tensor([[BOS_ID, 4, 4, PAD_ID]])
    with pytest.raises(ValueError, match=r"only <eos> at position lengths - 1.*first row 0"):
        Dataset(no_eos, "t", "tokens", (4,), vocab=vocab, lengths=torch.tensor([3]))
    no_bos = torch.tensor([[4, 4, EOS_ID, PAD_ID]])
    with pytest.raises(ValueError, match="must start with the only <bos>"):
        Dataset(no_bos, "t", "tokens", (4,), vocab=vocab, lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):
        Dataset(good + 4 * (good == 4), "t", "tokens", (4,), vocab=vocab, lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="must start with the special tokens"):
        Dataset(good, "t", "tokens", (4,), vocab=("a", *SPECIAL_TOKENS), lengths=torch.tensor([3]))
    with pytest.raises(TypeError, match="int64 token ids"):
        Dataset(good.int(), "t", "tokens", (4,), vocab=vocab, lengths=torch.tensor([3]))


def test_subset_slices_every_row_field() -> None:
    ds = make_sequences(50, seed=1)
    for index in (slice(10, 20), torch.arange(10, 20), np.arange(10, 20), list(range(10, 20))):
        sub = ds.subset(index)
        assert len(sub) == 10
        assert torch.equal(sub.data, ds.data[10:20])
        assert torch.equal(sub.factors, ds.factors[10:20])
        assert torch.equal(sub.lengths, ds.lengths[10:20])
        assert sub.vocab == ds.vocab and sub.metadata == ds.metadata
    mask = torch.zeros(50, dtype=torch.bool)
    mask[[3, 7]] = True
    assert torch.equal(ds.subset(mask).data, ds.data[[3, 7]])
    assert torch.equal(ds.subset([-1]).data, ds.data[-1:])
    assert torch.equal(ds.subset(slice(None, None, -1)).data, ds.data.flip(0))
    with pytest.raises(TypeError, match="not a single int"):
        ds.subset(3)
    with pytest.raises(IndexError, match="outside"):
        ds.subset([0, 50])
    with pytest.raises(ValueError, match="length N=50"):
        ds.subset(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no rows"):
        ds.subset(slice(0, 0))
    with pytest.raises(TypeError, match="ints or bools"):
        ds.subset(np.array([0.5, 1.5]))


def test_split_sizes_disjoint_and_deterministic() -> None:
    ds = _row_ids(100)
    train, valid = ds.split(0.2, seed=3)
    assert (len(train), len(valid)) == (80, 20)
    ids_train, ids_valid = set(train.data[:, 0].tolist()), set(valid.data[:, 0].tolist())
    assert not ids_train & ids_valid and len(ids_train | ids_valid) == 100
    assert train.metadata["split"] == "train" and valid.metadata["split"] == "valid"
    assert torch.equal(ds.split(0.2, seed=3)[1].data, valid.data)
    assert not torch.equal(ds.split(0.2, seed=4)[1].data, valid.data)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="valid_fraction"):
            ds.split(bad)
    with pytest.raises(ValueError, match="both parts must be non-empty"):
        _row_ids(3).split(0.1)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_are_deterministic_and_describable(name: str) -> None:
    make = GENERATORS[name]
    a, b, c = make(200, seed=0), make(200, seed=0), make(200, seed=1)
    assert torch.equal(a.data, b.data) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.data, c.data)
    assert len(a) == 200 and a.factors.shape[0] == 200
    summary = json.loads(json.dumps(a.describe()))
    assert summary["name"] == name and summary["n"] == 200
    assert summary["event_shape"] == list(a.event_shape)
    assert summary["factor_names"] == list(a.factor_names)
    assert summary["metadata"]["seed"] == 0
    assert torch.equal(load_dataset(name, n=200, seed=0).data, a.data)


def test_generators_leave_global_rng_alone() -> None:
    # the legacy global NumPy state is exactly what must stay untouched
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    for make in GENERATORS.values():
        make(20, seed=5).split(0.5, seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
def test_registry_lists_valid_names_and_options() -> None:
    expected = [
        "digits",
        "ppca",
        "mixture",
        "shapes",
        "sequences",
        "mnist",
        "fashion-mnist",
        "text",
    ]
    assert DATASETS.names() == expected
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; valid names: digits, ppca"):
        load_dataset("cifar")
    with pytest.raises(TypeError, match=r"unknown option.*sigma.*accepted options: n, spectrum"):
        load_dataset("ppca", sigma=1.0)
    for name in ("mnist", "fashion-mnist", "text"):
        with pytest.raises(ValueError, match=r"a `path` is required.*never downloaded"):
            load_dataset(name)


# --------------------------------------------------------------------------------------
# Bundled digits
# --------------------------------------------------------------------------------------
def test_digits(digits: Dataset) -> None:
    assert digits.data.shape == (1797, 64) and digits.data.dtype == torch.float32
    assert digits.kind == "unit_interval" and digits.image_shape == (1, 8, 8)
    assert float(digits.data.min()) == 0.0 and float(digits.data.max()) == 1.0
    assert digits.factor_names == ("label",)
    assert sorted(digits.factors[:, 0].unique().tolist()) == list(range(10))
    binary = load_digits(binarize=True)
    assert binary.kind == "binary"
    assert torch.equal(binary.data, (digits.data >= 0.5).float())
    with pytest.raises(TypeError, match="binarize must be a bool"):
        load_digits(binarize="yes")


# --------------------------------------------------------------------------------------
# pPCA
# --------------------------------------------------------------------------------------
def test_ppca_covariance_spectrum() -> None:
    spectrum, noise, dim = (4.0, 2.0, 1.0, 0.5, 0.25), 0.5, 10
    ds = make_ppca(20000, spectrum=spectrum, noise=noise, input_dim=dim, seed=0)
    assert ds.data.shape == (20000, dim) and ds.kind == "real"
    assert ds.factors.shape == (20000, len(spectrum))
    population = ppca_population_covariance(ds)
    assert population.shape == (dim, dim) and population.dtype == torch.float64
    expected = torch.tensor(sorted(spectrum + (noise**2,) * (dim - len(spectrum))))
    torch.testing.assert_close(
        torch.linalg.eigvalsh(population), expected.double(), rtol=1e-9, atol=1e-9
    )
    sample_cov = torch.cov(ds.data.double().T)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(sample_cov), expected.double(), rtol=0.05, atol=0
    )
    assert float((sample_cov - population).abs().max()) < 0.1
    mean = torch.tensor(ds.metadata["mean"], dtype=torch.float64)
    assert float((ds.data.double().mean(0) - mean).abs().max()) < 0.05
    # the covariance helper still works on a split
    train, _ = ds.split(0.5)
    torch.testing.assert_close(ppca_population_covariance(train), population)


def test_ppca_validation() -> None:
    with pytest.raises(ValueError, match=r"spectrum\[1\] = 0.1 is below noise\*\*2 = 0.25"):
        make_ppca(10, spectrum=(1.0, 0.1), noise=0.5)
    with pytest.raises(ValueError, match=r"spectrum\[0\] must be > 0"):
        make_ppca(10, spectrum=(-1.0,), noise=0.0)
    with pytest.raises(ValueError, match=r"input_dim must be >= len\(spectrum\) = 5"):
        make_ppca(10, input_dim=3)
    with pytest.raises(ValueError, match="at least one eigenvalue"):
        make_ppca(10, spectrum=())
    with pytest.raises(TypeError, match="n must be an int"):
        make_ppca(10.0)
    with pytest.raises(ValueError, match="no pPCA parameters"):
        ppca_population_covariance(make_latent_mixture(10))
    # spectrum equal to the noise floor (up to rounding) is accepted: a zero loading column
    ds = make_ppca(10, spectrum=(1.0, 0.01), noise=0.1, input_dim=3)
    assert np.allclose(np.asarray(ds.metadata["loading"])[:, 1], 0.0)


# --------------------------------------------------------------------------------------
# Latent mixture
# --------------------------------------------------------------------------------------
def test_latent_mixture() -> None:
    ds = make_latent_mixture(4000, n_components=4, latent_dim=2, input_dim=20, separation=4.0)
    assert ds.data.shape == (4000, 20) and ds.kind == "real"
    assert ds.factor_names == ("z0", "z1", "component")
    labels = ds.factors[:, 2].long()
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]
    means = torch.stack([ds.factors[labels == c, :2].mean(0) for c in range(4)])
    torch.testing.assert_close(
        means, torch.tensor(ds.metadata["component_means"]), atol=0.1, rtol=0
    )
    distances = torch.cdist(means, means) + 1e9 * torch.eye(4)
    assert abs(float(distances.min(1).values.mean()) - 4.0) < 0.15
    assert 0.05 < float(ds.data.std()) < 5.0
    one_d = make_latent_mixture(50, n_components=3, latent_dim=1, input_dim=2)
    assert one_d.factors.shape == (50, 2)
    with pytest.raises(ValueError, match="input_dim must be >= latent_dim = 3"):
        make_latent_mixture(10, latent_dim=3, input_dim=2)


# --------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------
def test_shapes_images_match_their_factors() -> None:
    size = 16
    ds = make_shapes(3000, size=size, seed=0)
    assert ds.data.shape == (3000, size * size) and ds.data.dtype == torch.float32
    assert ds.kind == "binary" and ds.image_shape == (1, size, size)
    assert set(ds.data.unique().tolist()) == {0.0, 1.0}
    assert ds.factor_names == ("shape", "scale", "pos_x", "pos_y")
    shape, scale, pos = ds.factors[:, 0], ds.factors[:, 1], ds.factors[:, 2:]
    assert set(shape.unique().tolist()) == {0.0, 1.0, 2.0}
    assert ((pos >= 0) & (pos <= 1)).all()
    area = ds.data.sum(1)
    assert (area > 0).all()
    largest = scale == 1.0
    mean_area = [float(area[largest & (shape == s)].mean()) for s in range(3)]
    square, circle, triangle = mean_area
    h = size / 4
    assert triangle < circle < square
    assert abs(square - 4 * h**2) / (4 * h**2) < 0.3
    assert abs(circle - np.pi * h**2) / (np.pi * h**2) < 0.3
    # bigger scale, bigger area; the lit pixels' centroid follows pos_x / pos_y
    assert float(area[(shape == 0) & (scale == 0.5)].mean()) < square
    images = ds.data.view(-1, size, size)
    grid = torch.arange(size, dtype=torch.float32)
    centroid_x = (images.sum(1) * grid).sum(1) / area
    centroid_y = (images.sum(2) * grid).sum(1) / area
    assert np.corrcoef(centroid_x, pos[:, 0])[0, 1] > 0.9
    assert np.corrcoef(centroid_y, pos[:, 1])[0, 1] > 0.9
    # the smallest canvas still lights a pixel for every shape
    assert (make_shapes(2000, size=8, seed=1).data.sum(1) > 0).all()
    with pytest.raises(ValueError, match="size must be >= 8"):
        make_shapes(10, size=4)


# --------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------
def test_sequences_layout_and_vocab() -> None:
    ds = make_sequences(2000, vocab_size=30, max_len=12, n_topics=4, seed=0)
    assert ds.data.shape == (2000, 12) and ds.event_shape == (12,)
    assert len(ds.vocab) == 30 and ds.vocab[:4] == SPECIAL_TOKENS and ds.vocab[4] == "w00"
    _check_token_layout(ds)
    assert torch.equal(ds.lengths.float(), ds.factors[:, 1] + 2)
    assert int(ds.lengths.min()) == 5 and int(ds.lengths.max()) == 12
    words = decode_tokens(ds.data[0], ds.vocab)
    assert len(words) == int(ds.lengths[0]) - 2 and all(w.startswith("w") for w in words)
    with pytest.raises(ValueError, match=r"vocab_size must be >= 12 \(the 4 special tokens"):
        make_sequences(10, vocab_size=11, n_topics=4)
    short = make_sequences(20, max_len=3)
    assert (short.lengths == 3).all()


def test_sequences_topic_recoverable_and_sequential() -> None:
    ds = make_sequences(2000, seed=0)
    counts = torch.zeros(len(ds), len(ds.vocab))
    counts.scatter_add_(1, ds.data, torch.ones_like(ds.data, dtype=torch.float32))
    counts[:, : len(SPECIAL_TOKENS)] = 0
    bag = counts / counts.sum(1, keepdim=True)
    topic = ds.factors[:, 0].long()
    train, test = slice(0, 1000), slice(1000, None)
    centroids = torch.stack([bag[train][topic[train] == t].mean(0) for t in range(4)])
    predicted = torch.cdist(bag[test], centroids).argmin(1)
    assert float((predicted == topic[test]).float().mean()) > 0.9
    # a topic-free bigram model predicts held-out words better than a unigram model,
    # so an autoregressive decoder can model the data without the latent topic
    v = len(ds.vocab)
    prev, nxt = ds.data[:, :-1], ds.data[:, 1:]
    real = nxt != PAD_ID

    def fit(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = torch.ones(v, v)
        pairs.index_put_(
            (prev[rows][real[rows]], nxt[rows][real[rows]]), torch.tensor(1.0), accumulate=True
        )
        return pairs / pairs.sum(1, keepdim=True), pairs.sum(0) / pairs.sum()

    bigram, unigram = fit(train)
    p, n_ = prev[test][real[test]], nxt[test][real[test]]
    assert float(-bigram[p, n_].log().mean()) < float(-unigram[n_].log().mean()) - 0.3


# --------------------------------------------------------------------------------------
# IDX (MNIST format)
# --------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    return header + array.astype(dtype).tobytes()


def _write_idx_pair(
    directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
        raw = _idx_bytes(array)
        name = f"{prefix}-{kind}-idx{dims}-ubyte"
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)


@pytest.fixture
def idx_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 4, 3), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 10


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(
    tmp_path: Path, idx_arrays: tuple[np.ndarray, np.ndarray], gz: bool
) -> None:
    images, labels = idx_arrays
    _write_idx_pair(tmp_path, "train", images, labels, gz)
    _write_idx_pair(tmp_path, "t10k", images[:2], labels[:2], gz)
    suffix = ".gz" if gz else ""
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    ds = load_idx(tmp_path)
    assert ds.name == "mnist" and ds.kind == "unit_interval" and ds.image_shape == (1, 4, 3)
    assert ds.data.shape == (6, 12) and ds.data.dtype == torch.float32
    torch.testing.assert_close(
        ds.data, torch.tensor(images.reshape(6, 12) / 255.0, dtype=torch.float32)
    )
    assert ds.factors[:, 0].tolist() == labels.tolist()
    assert len(load_idx(tmp_path, split="test")) == 2
    assert len(load_idx(tmp_path, limit=4)) == 4
    binary = load_idx(tmp_path, binarize=True)
    assert binary.kind == "binary" and torch.equal(binary.data, (ds.data >= 0.5).float())
    fashion = load_dataset("fashion-mnist", path=str(tmp_path), split="test")
    assert fashion.name == "fashion-mnist" and fashion.metadata["label_names"][0] == "T-shirt/top"
    json.dumps(fashion.describe())


def test_read_idx_other_dtypes_and_file_objects(tmp_path: Path) -> None:
    for code, array in (
        (0x0C, np.arange(-3, 3).reshape(2, 3)),
        (0x0D, np.linspace(0, 1, 4, dtype=np.float32)),
    ):
        (tmp_path / "x.idx").write_bytes(_idx_bytes(array, code))
        with open(tmp_path / "x.idx", "rb") as handle:
            assert np.array_equal(read_idx(handle), array)


def test_idx_errors(tmp_path: Path, idx_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = idx_arrays
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=r"nowhere.*does not exist.*train-images-idx3-ubyte\[\.gz\]"
    ):
        load_idx(missing)
    _write_idx_pair(tmp_path / "train_only", "train", images, labels, gz=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"neither t10k-images-idx3-ubyte nor t10k-images-idx3-ubyte\.gz is in .*train_only",
    ):
        load_idx(tmp_path / "train_only", split="test")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        load_idx(tmp_path / "train_only" / "train-labels-idx1-ubyte")

    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + _idx_bytes(labels)[4:])
    with pytest.raises(ValueError, match=re.escape(f"{bad} has a bad IDX magic number 0x12340801")):
        read_idx(bad)
    truncated = tmp_path / "short.idx"
    truncated.write_bytes(_idx_bytes(images)[:-5])
    with pytest.raises(
        ValueError, match=r"short\.idx is truncated: the header promises shape \(6, 4, 3\)"
    ):
        read_idx(truncated)
    truncated_gz = tmp_path / "short.idx.gz"
    truncated_gz.write_bytes(gzip.compress(_idx_bytes(images))[:-10])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(truncated_gz)
    with pytest.raises(FileNotFoundError, match=r"missing\.idx"):
        read_idx(tmp_path / "missing.idx")

    mismatch = tmp_path / "mismatch"
    _write_idx_pair(mismatch, "train", images, labels[:5], gz=True)
    with pytest.raises(
        ValueError, match=r"train-labels-idx1-ubyte.gz has 5 labels but .* has 6 images"
    ):
        load_idx(mismatch)
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        load_idx(mismatch, split="valid")


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------
TEXT = "the cat sat\nthe dog sat on the mat\n\nA cat ran\n"


def test_text_vocabulary_and_round_trip(tmp_path: Path) -> None:
    file = tmp_path / "corpus.txt"
    file.write_text(TEXT, encoding="utf-8")
    ds = load_text(file)
    assert ds.vocab == (*SPECIAL_TOKENS, "the", "cat", "sat", "a", "dog", "mat", "on", "ran")
    assert len(ds) == 3 and ds.data.shape == (3, 8)  # longest line (6 tokens) + bos + eos
    _check_token_layout(ds)
    lines = [line.lower() for line in TEXT.splitlines() if line]
    assert [decode_tokens(row, ds.vocab) for row in ds.data] == [line.split() for line in lines]
    ids, lengths = encode_text(lines, ds.vocab)
    assert torch.equal(ids, ds.data) and torch.equal(lengths, ds.lengths)
    assert ds.metadata["n_truncated"] == 0 and ds.metadata["n_unk"] == 0
    assert torch.equal(load_dataset("text", path=file).data, ds.data)


def test_text_min_count_truncation_and_options(tmp_path: Path) -> None:
    file = tmp_path / "corpus.txt"
    file.write_text(TEXT, encoding="utf-8")
    rare = load_text(file, min_count=2)
    assert rare.vocab == (*SPECIAL_TOKENS, "the", "cat", "sat")
    assert decode_tokens(rare.data[1], rare.vocab) == [
        "the",
        "<unk>",
        "sat",
        "<unk>",
        "the",
        "<unk>",
    ]
    assert rare.metadata["n_unk"] == 5
    short = load_text(file, max_len=4)
    _check_token_layout(short)
    assert short.data.shape == (3, 4) and short.metadata["n_truncated"] == 3
    assert decode_tokens(short.data[1], short.vocab) == ["the", "dog"]
    assert short.data[1].tolist()[-1] == EOS_ID
    cased = load_text(file, lowercase=False, limit=2)
    assert len(cased) == 2 and "A" not in cased.vocab
    assert "A" in load_text(file, lowercase=False).vocab
    # literal specials in the text cannot break the <bos> ... <eos> layout
    odd = tmp_path / "odd.txt"
    odd.write_text("x <eos> y <unk>\n", encoding="utf-8")
    ds = load_text(odd)
    _check_token_layout(ds)
    assert ds.data[0, 1:6].tolist() == [4, UNK_ID, 5, UNK_ID, EOS_ID]


def test_text_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.txt' does not exist"):
        load_text(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        load_text(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text: byte 0xe9 at offset 3"):
        load_text(latin)
    with pytest.raises(ValueError, match="max_len must be >= 3"):
        load_text(latin, max_len=2)
    vocab = (*SPECIAL_TOKENS, "a")
    with pytest.raises(TypeError, match="wrap a single line in a list"):
        encode_text("a a", vocab)
    with pytest.raises(ValueError, match="must start with the special tokens"):
        encode_text(["a"], ("a",))
    with pytest.raises(ValueError, match=r"token id 9 is outside the vocabulary \[0, 5\)"):
        decode_tokens([BOS_ID, 9], vocab)
    assert decode_tokens(torch.tensor([BOS_ID, 4, EOS_ID, 4, PAD_ID]), vocab) == ["a"]
