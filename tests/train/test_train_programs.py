"""fit on Pyro programs with several arguments (issue 14, item 6): tuples, dicts and
loaders of them, as SVI.step(*args, **kwargs) takes them, with per-data-point numbers
from the traced data plate."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyrocollapse.elbo import PlainELBO
from pyrocollapse.train import Callback, fit


# --------------------------------------------------------------------------------------
# small programs in the style of Pyro's examples
# --------------------------------------------------------------------------------------
class CVAE(nn.Module):
    """Conditional VAE: model(xs, ys=None), the label conditions prior and decoder."""

    def __init__(self, x_dim=6, y_dim=3, z_dim=2):
        super().__init__()
        self.y_dim, self.z_dim = y_dim, z_dim
        self.enc = nn.Linear(x_dim + y_dim, 2 * z_dim)
        self.dec = nn.Linear(z_dim + y_dim, x_dim)

    def _y(self, xs, ys):
        if ys is None:
            return xs.new_zeros(xs.shape[0], self.y_dim)
        return F.one_hot(ys, self.y_dim).to(xs.dtype)

    def model(self, xs, ys=None):
        pyro.module("cvae_dec", self.dec)
        y = self._y(xs, ys)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(self.z_dim), 1.0).to_event(1))
            loc = self.dec(torch.cat([z, y], -1))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        pyro.module("cvae_enc", self.enc)
        h = self.enc(torch.cat([xs, self._y(xs, ys)], -1))
        with pyro.plate("data", xs.shape[0]):
            pyro.sample(
                "z",
                dist.Normal(h[:, : self.z_dim], F.softplus(h[:, self.z_dim :]) + 1e-3).to_event(1),
            )


class M2(nn.Module):
    """Semi-supervised M2 VAE: y observed when ys is given, else sampled by the guide."""

    def __init__(self, x_dim=6, y_dim=3, z_dim=2):
        super().__init__()
        self.y_dim, self.z_dim = y_dim, z_dim
        self.enc_y = nn.Linear(x_dim, y_dim)
        self.enc_z = nn.Linear(x_dim + y_dim, 2 * z_dim)
        self.dec = nn.Linear(z_dim + y_dim, x_dim)

    def model(self, xs, ys=None):
        pyro.module("m2", self)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(self.z_dim), 1.0).to_event(1))
            y = pyro.sample("y", dist.Categorical(logits=xs.new_zeros(self.y_dim)), obs=ys)
            loc = self.dec(torch.cat([z, F.one_hot(y, self.y_dim).to(xs.dtype)], -1))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        pyro.module("m2", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.Categorical(logits=self.enc_y(xs)))
            h = self.enc_z(torch.cat([xs, F.one_hot(ys, self.y_dim).to(xs.dtype)], -1))
            pyro.sample(
                "z",
                dist.Normal(h[:, : self.z_dim], F.softplus(h[:, self.z_dim :]) + 1e-3).to_event(1),
            )


class DMM(nn.Module):
    """Deep Markov model on time-major sequences ``(T, B, D)`` with a ``(T, B)`` mask and
    ``(B,)`` lengths: the data plate is over sequences (dim 1 of ``seqs``), not time."""

    def __init__(self, x_dim=3, z_dim=2):
        super().__init__()
        self.z_dim = z_dim
        self.trans = nn.Linear(z_dim, z_dim)
        self.emit = nn.Linear(z_dim, x_dim)
        self.enc = nn.Linear(x_dim, 2 * z_dim)

    def model(self, seqs, mask, lengths):
        pyro.module("dmm", self)
        t_max, b = seqs.shape[0], seqs.shape[1]
        z = seqs.new_zeros(b, self.z_dim)
        with pyro.plate("sequences", b):
            for t in pyro.markov(range(t_max)):
                z = pyro.sample(
                    f"z_{t + 1}",
                    dist.Normal(self.trans(z), 1.0).to_event(1).mask(mask[t]),
                )
                pyro.sample(
                    f"x_{t + 1}",
                    dist.Normal(self.emit(z), 1.0).to_event(1).mask(mask[t]),
                    obs=seqs[t],
                )

    def guide(self, seqs, mask, lengths):
        pyro.module("dmm", self)
        with pyro.plate("sequences", seqs.shape[1]):
            for t in pyro.markov(range(seqs.shape[0])):
                h = self.enc(seqs[t])
                pyro.sample(
                    f"z_{t + 1}",
                    dist.Normal(h[:, : self.z_dim], F.softplus(h[:, self.z_dim :]) + 1e-3)
                    .to_event(1)
                    .mask(mask[t]),
                )


def cvae_data(n=40):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


class TimeMajor:
    """A re-iterable of DMM batches: (seqs (T, B, D), mask (T, B), lengths (B,))."""

    def __init__(self, t=7, b=4, batches=3):
        g = torch.Generator().manual_seed(2)
        self.batches = []
        for _ in range(batches):
            lengths = torch.randint(2, t + 1, (b,), generator=g)
            mask = torch.arange(t)[:, None] < lengths[None, :]
            seqs = torch.randn(t, b, 3, generator=g) * mask[..., None]
            self.batches.append((seqs, mask, lengths))

    def __iter__(self):
        return iter(self.batches)


class Recorder(Callback):
    """Per epoch, the ``num_data`` the objective reported on its last step."""

    def __init__(self):
        self.num_data = []

    def on_epoch_end(self, state, record):
        last = getattr(state.loss, "last", None)
        if last is not None:
            self.num_data.append(last.components["num_data"])


class RecordingTrace_ELBO(Trace_ELBO):
    """Trace_ELBO that keeps every loss it returned."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self.losses.append(float(loss.detach()))
        return loss


def run(model, guide, data, **options):
    defaults = dict(loss=PlainELBO(), epochs=2, seed=0, progress=False)
    defaults.update(options)
    return fit(model, guide, data, **defaults)


# --------------------------------------------------------------------------------------
# CVAE: tuples in memory and loaders of tuples
# --------------------------------------------------------------------------------------
def test_cvae_trains_from_a_tuple_and_passes_both_arguments():
    xs, ys = cvae_data()
    cvae = CVAE()
    seen = []
    model = cvae.model

    def spy_model(xs, ys=None):
        seen.append((xs.shape, None if ys is None else ys.shape))
        return model(xs, ys)

    hist = run(spy_model, cvae.guide, (xs, ys), batch_size=16, monitor=None)
    assert len(hist) == 2 and np.isfinite(hist.column("elbo")).all()
    assert (torch.Size([16, 6]), torch.Size([16])) in seen
    assert (torch.Size([8, 6]), torch.Size([8])) in seen  # the last minibatch: 40 = 16 + 16 + 8


def test_cvae_minibatches_cut_both_arguments_by_the_same_rows():
    xs, ys = cvae_data()
    ys = torch.arange(len(xs)) % 3
    xs = xs.clone()
    xs[:, 0] = ys.to(xs.dtype)  # each row carries its label: the rows must match
    cvae = CVAE()
    model = cvae.model

    def check(xs_b, ys_b=None):
        assert torch.equal(xs_b[:, 0], ys_b.to(xs_b.dtype))
        return model(xs_b, ys_b)

    run(check, cvae.guide, (xs, ys), batch_size=7, monitor=None)


def test_aggressive_training_on_tuple_data():
    xs, ys = cvae_data()
    cvae = CVAE()
    hist = run(
        cvae.model, cvae.guide, (xs, ys), batch_size=8, aggressive=True, aggressive_max_inner=3
    )
    assert hist[0].values["aggressive"] == 1.0 and hist[0].values["inner_steps"] > 0


def test_cvae_from_a_loader_of_tuples_and_numpy_and_dict_forms():
    xs, ys = cvae_data()
    for data in (
        DataLoader(TensorDataset(xs, ys), batch_size=16),
        (xs.numpy(), ys.numpy()),
        {"xs": xs, "ys": ys},
        [xs, ys],
    ):
        pyro.clear_param_store()
        cvae = CVAE()
        hist = run(
            cvae.model, cvae.guide, data, batch_size=None if isinstance(data, DataLoader) else 16
        )
        assert np.isfinite(hist.column("elbo")).all()
        assert "mi/z" in hist[0].values and "active_units/z" in hist[0].values


def test_tuple_data_gives_the_same_history_as_a_single_tensor_wrapper():
    xs, ys = cvae_data()
    cvae = CVAE()
    state = {k: v.clone() for k, v in cvae.state_dict().items()}
    hist_tuple = run(cvae.model, cvae.guide, (xs, ys), batch_size=16, monitor=None)

    pyro.clear_param_store()
    cvae.load_state_dict(state)
    joined = torch.cat([xs, ys[:, None].to(xs.dtype)], 1)

    def model(x):
        return cvae.model(x[:, :6], x[:, 6].long())

    def guide(x):
        return cvae.guide(x[:, :6], x[:, 6].long())

    hist_wrapped = run(model, guide, joined, batch_size=16, monitor=None)
    for col in ("elbo", "kl", "reconstruction"):
        np.testing.assert_array_equal(hist_tuple.column(col), hist_wrapped.column(col))


def test_loader_of_tuples_with_a_one_argument_model_says_how_to_fix_it():
    xs, ys = cvae_data()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([6]).to_event(1), obs=x)

    def guide(x):
        pass

    with pytest.raises(
        TypeError,
        match=r"(?s)positional argument.*fit calls model\(\*args, \*\*kwargs\).*yield dicts",
    ):
        run(
            model,
            guide,
            DataLoader(TensorDataset(xs, ys), batch_size=8),
            loss=Trace_ELBO(),
            monitor=None,
        )


# --------------------------------------------------------------------------------------
# M2: dict batches, ys=None for unlabelled ones
# --------------------------------------------------------------------------------------
class MixedBatches:
    """Labelled and unlabelled dict batches of an M2 VAE."""

    def __init__(self):
        xs, ys = cvae_data(48)
        self.batches = [
            {"xs": xs[:16], "ys": ys[:16]},
            {"xs": xs[16:32], "ys": None},
            {"xs": xs[32:], "ys": None},
        ]

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("loss", [PlainELBO, RecordingTrace_ELBO])
def test_m2_trains_on_dict_batches_with_and_without_labels(loss):
    m2 = M2()
    objective = loss()
    hist = run(m2.model, m2.guide, MixedBatches(), loss=objective, epochs=2)
    assert np.isfinite(hist.column("elbo")).all()
    assert "mi/z" in hist[0].values  # monitored on labelled and unlabelled blocks
    if isinstance(objective, RecordingTrace_ELBO):
        # per data point: the summed losses over the 48 points of the epoch
        per_epoch = np.array(objective.losses).reshape(2, 3).sum(1) / 48
        np.testing.assert_allclose(hist.column("loss"), per_epoch, rtol=1e-12)


def test_m2_dict_in_memory_with_ys_none_goes_to_every_batch():
    xs, _ = cvae_data()
    m2 = M2()
    hist = run(m2.model, m2.guide, {"xs": xs, "ys": None}, batch_size=16)
    assert np.isfinite(hist.column("elbo")).all()


# --------------------------------------------------------------------------------------
# DMM: time-major sequences, the data plate over dim 1
# --------------------------------------------------------------------------------------
def test_dmm_per_data_point_numbers_divide_by_the_plate_not_the_first_argument():
    data = TimeMajor(t=7, b=4, batches=3)  # first argument has 7 rows, the plate 4
    dmm = DMM()
    objective = RecordingTrace_ELBO()
    hist = run(dmm.model, dmm.guide, data, loss=objective, epochs=2, monitor=None)
    per_epoch = np.array(objective.losses).reshape(2, 3).sum(1) / (3 * 4)
    np.testing.assert_allclose(hist.column("loss"), per_epoch, rtol=1e-12)
    np.testing.assert_allclose(hist.column("elbo"), -per_epoch, rtol=1e-12)


def test_dmm_pyrocollapse_objective_reports_the_plate_size():
    dmm = DMM()
    rec = Recorder()
    hist = run(dmm.model, dmm.guide, TimeMajor(), epochs=2, monitor=None, callbacks=[rec])
    assert rec.num_data == [4.0, 4.0]
    assert np.isfinite(hist.column("elbo")).all()


def test_dmm_time_major_loader_with_monitoring_on_is_refused_clearly():
    dmm = DMM()
    with pytest.raises(ValueError, match=r"do not share their leading size.*pass monitor=None"):
        run(dmm.model, dmm.guide, TimeMajor(), epochs=1)


def test_stock_elbo_with_subsampling_counts_the_full_plate():
    x = torch.randn(30, 2)

    def model(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", 300, subsample_size=x.shape[0]):  # 10x scale
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    objective = RecordingTrace_ELBO()
    hist = run(model, guide, x, loss=objective, batch_size=10, epochs=1, monitor=None)
    np.testing.assert_allclose(hist.column("loss"), [sum(objective.losses) / 900], rtol=1e-12)


def test_resume_on_tuple_data_and_a_loader_of_dicts_is_bit_for_bit(tmp_path):
    xs, ys = cvae_data()

    def go(data, epochs, folder, resume=False, seed=0):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        cvae = CVAE()
        batch_size = None if isinstance(data, DataLoader) else 16
        return run(
            cvae.model,
            cvae.guide,
            data,
            epochs=epochs,
            batch_size=batch_size,
            checkpoint_dir=folder,
            resume=resume,
        )

    for i, data in enumerate(
        ((xs, ys), DataLoader([{"xs": a, "ys": b} for a, b in zip(xs, ys)], batch_size=16))
    ):
        full = go(data, 3, tmp_path / f"full{i}")
        go(data, 1, tmp_path / f"part{i}")
        resumed = go(data, 3, tmp_path / f"part{i}", resume=True, seed=5)
        for col in ("elbo", "mi/z", "active_units/z"):
            np.testing.assert_array_equal(full.column(col), resumed.column(col))


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, exc, match",
    [
        (
            (torch.zeros(10, 6), torch.zeros(9, dtype=torch.long)),
            ValueError,
            r"must share their leading size N.*data\[0\] has 10, data\[1\] has 9 rows",
        ),
        (
            {"xs": torch.zeros(10, 6), "ys": torch.zeros(8)},
            ValueError,
            r"data\['xs'\] has 10, data\['ys'\] has 8",
        ),
        ({}, ValueError, "data is an empty dict"),
        ((), ValueError, "data is an empty tuple"),
        ({1: torch.zeros(3, 6)}, TypeError, "must have str keys"),
        ((None, 3), TypeError, "holds no tensor or NumPy array with a data dimension"),
        (
            (torch.zeros(3, 6), torch.full((3,), float("nan"))),
            ValueError,
            r"data\[1\] contains 3 NaN",
        ),
        ((torch.zeros(0, 6), None), ValueError, r"data\[0\] is empty"),
        (iter([torch.zeros(3, 6)]), TypeError, "is an iterator"),
        (DataLoader(["a", "b"], batch_size=None), TypeError, "must yield tensors x, tuples/lists"),
    ],
)
def test_bad_program_data_is_refused_clearly(data, exc, match):
    cvae = CVAE()
    with pytest.raises(exc, match=match):
        run(cvae.model, cvae.guide, data, epochs=1, monitor=None, batch_size=None)
