"""Training through PyTorch Lightning: one process in-process, two DDP processes on CPU."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from torch import nn

from pyrocollapse.elbo import AnnealedELBO, PlainELBO
from pyrocollapse.lightning import VAELightningModule, main, make_dataloader
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear

# Lightning 2.6 builds torch pytree LeafSpecs, deprecated in recent torch (a FutureWarning
# from inside Lightning); and it advises DataLoader workers, which in-memory tensors do
# not need.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The '.*' does not have many workers"
        ":lightning.fabric.utilities.warnings.PossibleUserWarning"
    ),
]


def make_trainer(**options) -> pl.Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    settings.update(options)
    return pl.Trainer(**settings)


def val_loader(x: torch.Tensor):
    return make_dataloader(x, batch_size=len(x), shuffle=False)


def mean_loss_per_point(module: VAELightningModule, x: torch.Tensor, draws: int = 8) -> float:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return sum(float(module(x)) for _ in range(draws)) / (draws * len(x))


def test_fit_in_one_process_trains_the_vae_parameters_and_lowers_the_loss(digits):
    pyro.set_rng_seed(0)
    vae = MLPVAE(64, 4, hidden=(32,))
    module = VAELightningModule(vae, elbo=PlainELBO(), lr=1e-2)
    assert {id(p) for p in module.parameters()} == {id(p) for p in vae.parameters()}
    assert all(k.startswith("vae.") for k in module.state_dict())
    x = digits[:512]
    before = mean_loss_per_point(module, x)
    initial = {k: v.clone() for k, v in vae.state_dict().items()}

    trainer = make_trainer(max_epochs=3)
    trainer.fit(module, make_dataloader(x, batch_size=64), val_loader(x[:128]))

    after = mean_loss_per_point(module, x)
    assert after < before - 2.0, (before, after)  # nats per data point
    assert any(not torch.equal(initial[k], v) for k, v in vae.state_dict().items())
    assert trainer.global_step == module.objective.step_count == 3 * 8
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/elbo", "train/kl", "train/kl/z", "val/elbo", "val/kl"):
        assert name in metrics, name
    # per data point: the ELBO is reconstruction minus KL, and about -after
    torch.testing.assert_close(
        metrics["val/elbo"], metrics["val/reconstruction"] - metrics["val/kl"]
    )
    assert 10.0 < -float(metrics["val/elbo"]) < 60.0


def test_schedule_advances_once_per_optimisation_step(digits):
    pyro.set_rng_seed(0)
    objective = AnnealedELBO(Linear(warmup_steps=8))
    module = VAELightningModule(MLPVAE(64, 4, hidden=(16,)), elbo=objective, lr=1e-3)
    # 8 batches per epoch, 2 per optimisation step: 4 steps per epoch
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(module, make_dataloader(digits[:256], batch_size=32), val_loader(digits[:32]))
    assert trainer.global_step == objective.step_count == 8
    assert float(trainer.callback_metrics["train/kl_weight"]) == pytest.approx(
        sum(objective.schedule(s) for s in range(4, 8)) / 4  # mean over epoch 2's batches
    )

    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    restored = VAELightningModule(MLPVAE(64, 4, hidden=(16,)), elbo=AnnealedELBO(Linear(8)))
    restored.on_load_checkpoint(checkpoint)
    assert restored.objective.step_count == 8


def test_ddp_two_cpu_processes_end_with_identical_parameters(tmp_path):
    out = tmp_path / "run"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK"}
        and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))
    }
    env.update(MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "pyrocollapse.lightning",
        *("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"),
        *("--dataset", "digits", "--epochs", "2", "--batch-size", "64"),
        *("--latent-dim", "4", "--model-option", "hidden=32", "--elbo", "annealed"),
        *("--out", str(out), "--save-rank-states", "--no-progress"),
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained on 2 process(es)" in proc.stderr

    ranks = [torch.load(out / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    first, second = ranks
    # the ranks trained on different shards of the data ...
    assert first["rows_seen"] == second["rows_seen"]
    assert first["data_sum"] != second["data_sum"]
    # ... yet started and ended with the same parameters, which did change
    assert first["start"].keys() == second["final"].keys()
    for key in first["final"]:
        assert torch.equal(first["start"][key], second["start"][key]), key
        assert torch.equal(first["final"][key], second["final"][key]), key
    changed = [k for k in first["final"] if not torch.equal(first["start"][k], first["final"][k])]
    assert any(k.startswith("vae.encoder") for k in changed)
    assert any(k.startswith("vae.decoder") for k in changed)

    # 1797 digits, 10 % held out; each rank gets half the rest, in batches of 64
    n_train = 1797 - round(0.1 * 1797)
    steps = 2 * math.ceil(math.ceil(n_train / 2) / 64)
    for r in ranks:
        assert r["global_step"] == r["objective_step_count"] == steps

    saved = torch.load(out / "model.pt", weights_only=True)
    for key, value in saved.items():
        assert torch.equal(value, first["final"][f"vae.{key}"]), key
    # the last checkpoint rebuilds the trained module without the model being passed
    loaded = VAELightningModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert loaded.objective.step_count == steps
    for key, value in saved.items():
        assert torch.equal(value, loaded.vae.state_dict()[key]), key
    metrics = (out / "logs" / "metrics.csv").read_text()
    assert "val/elbo" in metrics.splitlines()[0] and "train/kl_weight" in metrics
    assert (out / "config.json").exists()
    # every process wrote into the staging folder, renamed to --out at the end
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))]
    print(f"two-process DDP run: {elapsed:.1f} s")


class GlobalMean(PyroModule):
    """x_i ~ N(mu, sigma), mu ~ N(0, 10): a global latent for an autoguide."""

    def __init__(self) -> None:
        super().__init__()
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, self.log_sigma.exp()), obs=x[:, 0])


def test_a_model_and_autoguide_pair_needs_and_uses_example_batch():
    x = 3.0 + torch.randn(64, 1)
    model = GlobalMean()
    guide = AutoNormal(model)
    module = VAELightningModule(model, guide, elbo=Trace_ELBO(), lr=0.05, example_batch=x)
    loc = guide.locs.mu.detach().clone()
    trainer = make_trainer(max_epochs=30)
    trainer.fit(module, make_dataloader(x, batch_size=64), val_loader(x))
    assert abs(float(guide.locs.mu.detach()) - 3.0) < abs(float(loc) - 3.0) - 0.5
    assert module.objective.num_particles == 1  # a plain Pyro ELBO has no schedule to step


def test_lazily_created_parameters_are_refused_on_the_first_step():
    pyro.set_rng_seed(0)
    model = GlobalMean()
    module = VAELightningModule(model, AutoNormal(model), elbo=Trace_ELBO())
    x = torch.randn(8, 1)
    with pytest.raises(RuntimeError, match="example_batch"):
        make_trainer(max_epochs=1).fit(module, make_dataloader(x, batch_size=8), val_loader(x))


class WithGlobalParam(GlobalMean):
    def forward(self, x: torch.Tensor) -> None:
        shift = pyro.param("shift", torch.zeros(()))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(shift, self.log_sigma.exp()), obs=x[:, 0])


class NoLatents(PyroModule):
    def forward(self, x: torch.Tensor) -> None:
        pass


def test_plain_pyro_param_statements_are_refused():
    model = WithGlobalParam()
    module = VAELightningModule(model, NoLatents(), elbo=Trace_ELBO())
    x = torch.randn(8, 1)
    with pytest.raises(ValueError, match=r"'shift'.*pyro\.param statements"):
        make_trainer(max_epochs=1).fit(module, make_dataloader(x, batch_size=8), val_loader(x))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: VAELightningModule(object()), TypeError, "model must be a torch.nn.Module"),
        (lambda: VAELightningModule(nn.Linear(2, 2)), TypeError, "without model"),
        (lambda: VAELightningModule(GlobalMean(), "guide"), TypeError, "guide must be"),
        (lambda: VAELightningModule(MLPVAE(4, 2), elbo=1.0), TypeError, "elbo must be"),
        (lambda: VAELightningModule(MLPVAE(4, 2), elbo="nope"), ValueError, "valid names"),
        (lambda: VAELightningModule(MLPVAE(4, 2), lr=0.0), ValueError, "lr must be > 0"),
        (lambda: make_dataloader([1, 2]), TypeError, "data must be a torch.Tensor"),
        (lambda: make_dataloader(torch.zeros(0, 3)), ValueError, "at least one row"),
        (lambda: make_dataloader(torch.zeros(4, 3), batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_launcher_user_errors_exit_2_before_training(tmp_path, capsys):
    assert main(["--elbo", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "valid names" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.pt").write_bytes(b"")
    assert main(["--out", str(tmp_path / "b")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--accelerator", "nonsense", "--out", str(tmp_path / "c")]) == 2
    assert "invalid accelerator name" in capsys.readouterr().err
    assert main(["--data-path", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "--data-path is for datasets read from disk" in capsys.readouterr().err
    assert main(["--model-option", "hiden=3", "--out", str(tmp_path / "e")]) == 2
    assert "hiden" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "no.ckpt"), "--out", str(tmp_path / "f")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "acdef")


def test_launcher_refuses_an_out_that_another_run_is_writing(tmp_path, capsys):
    out = tmp_path / "busy"
    code = (
        "import sys; from pyrocollapse._io import lock_directory\n"
        f"with lock_directory({str(out)!r}):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        assert main(["--out", str(out), "--no-progress"]) == 2
    finally:
        child.communicate()
    err = capsys.readouterr().err
    assert f"is being written by another process (pid {child.pid})" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert main(["--out", ".", "--no-progress"]) == 2  # the current folder: never replaced
    assert "is the current folder or a folder above it" in capsys.readouterr().err


def test_missing_lightning_names_the_extra_to_install(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import fails
    monkeypatch.delitem(sys.modules, "pyrocollapse.lightning")
    with pytest.raises(ImportError, match=r'pip install "pyrocollapse\[lightning\]"'):
        importlib.import_module("pyrocollapse.lightning")


def test_importing_pyrocollapse_does_not_import_lightning():
    code = (
        "import sys, pyrocollapse, pyrocollapse.train, pyrocollapse.models; "
        "pyrocollapse.fit; assert 'lightning' not in sys.modules, 'lightning imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_batches_of_several_arguments_reach_the_program():
    """A CVAE ``model(xs, ys)`` trains from a loader of tuples and from one of dicts;
    per-data-point logs divide by the data plate (32 pairs a batch)."""
    from gallery import build

    from pyrocollapse.program_data import as_program_args

    program = build("cvae")
    xs, ys = program.train_data
    cvae = program.modules[0]
    module = VAELightningModule(cvae, elbo=PlainELBO(), lr=1e-2)
    tuples = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=16)
    dicts = torch.utils.data.DataLoader(
        [{"xs": a, "ys": b} for a, b in zip(xs, ys, strict=True)], batch_size=16
    )
    for loader in (tuples, dicts):
        before = {k: v.clone() for k, v in cvae.state_dict().items()}
        make_trainer(max_epochs=2).fit(module, loader, loader)
        after = cvae.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        batch = next(iter(loader))
        call = as_program_args(batch)
        pyro.set_rng_seed(0)
        loss = module(*call.args, **call.kwargs)
        assert module.objective.last.num_data == 16.0
        assert torch.isfinite(loss)
