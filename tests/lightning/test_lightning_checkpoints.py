"""Lightning checkpoints (load_from_checkpoint, resume, the launcher's --resume) and the
collapse callbacks under Lightning. Tiny models, one CPU process."""

from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import pyro
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from test_lightning import GlobalMean  # x_i ~ N(mu, sigma): a global latent for an autoguide

from pyrocollapse.callbacks import PosteriorCollapseWarning
from pyrocollapse.elbo import AnnealedELBO
from pyrocollapse.experiment import RunConfig, build
from pyrocollapse.lightning import (
    LightningAggressiveOnCollapse,
    LightningCollapseWarning,
    LightningRollbackOnCollapse,
    VAELightningModule,
    _staging_folder,
    main,
    make_dataloader,
)
from pyrocollapse.models import MLPVAE
from pyrocollapse.schedules import Linear

pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The '.*' does not have many workers"
        ":lightning.fabric.utilities.warnings.PossibleUserWarning"
    ),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no"),
]


def make_trainer(**options) -> pl.Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=any(
            isinstance(c, ModelCheckpoint) for c in options.get("callbacks", ())
        ),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    settings.update(options)
    return pl.Trainer(**settings)


def tiny_config(**options) -> RunConfig:
    settings = dict(
        dataset="digits",
        latent_dim=2,
        model_options={"hidden": (16,)},
        elbo="annealed",
        epochs=2,
        batch_size=64,
    )
    settings.update(options)
    return RunConfig(**settings)


def val_loader(x: torch.Tensor):
    return make_dataloader(x, batch_size=len(x), shuffle=False)


def loss_on(module: VAELightningModule, x: torch.Tensor) -> float:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return float(module(x))


# --------------------------------------------------------------------------------------
# load_from_checkpoint
# --------------------------------------------------------------------------------------
def test_checkpoints_are_written_and_rebuild_the_module_without_the_model(tmp_path):
    built = build(tiny_config())
    module = VAELightningModule.from_built(built)
    last = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, monitor="val/elbo", mode="max"
    )
    trainer = make_trainer(callbacks=[last], logger=CSVLogger(tmp_path, name="logs", version=""))
    x = built.valid.data[:128]
    trainer.fit(module, make_dataloader(built.train, batch_size=64), val_loader(x))
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert Path(last.best_model_path).is_file() and last.best_model_score is not None
    assert (tmp_path / "logs" / "hparams.yaml").is_file()

    pyro.clear_param_store()
    loaded = VAELightningModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert type(loaded.vae) is type(module.vae) and loaded.lr == module.lr
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert type(loaded.objective) is type(module.objective)
    assert loaded.objective.schedule == module.objective.schedule
    assert loaded.objective.step_count == module.objective.step_count == trainer.global_step
    assert loss_on(loaded, x) == loss_on(module, x)
    # a module loaded without its model records the recipe again
    assert loaded.hparams.spec["build"] == module.hparams.spec["build"]


@pytest.mark.parametrize(
    ("model", "dataset", "options", "prior"),
    [
        ("mlp", "digits", {"hidden": (8,)}, "vamp"),
        ("linear", "digits", {}, "standard"),
        ("ladder", "digits", {"hidden": (8,), "top_hidden": (8,)}, "standard"),
        ("conv", "digits", {"channels": (4, 8)}, "standard"),
        ("sequence", "sequences", {"hidden": 8, "embed": 4}, "standard"),
    ],
)
def test_every_ready_model_is_rebuilt_from_its_recipe_without_the_data(
    model, dataset, options, prior
):
    built = build(tiny_config(model=model, dataset=dataset, model_options=options, prior=prior))
    module = VAELightningModule.from_built(built)
    rebuilt = VAELightningModule(spec=module.hparams.spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }
    assert rebuilt.objective.schedule == module.objective.schedule


def test_a_recipe_holds_plain_values_only():
    built = build(tiny_config(elbo="freebits", elbo_options={"kl_weight": Linear(3)}))
    with pytest.raises(TypeError, match=r"elbo_options\['kl_weight'\] is a Linear"):
        VAELightningModule.from_built(built)


def test_a_user_supplied_pair_is_passed_again_to_load_its_checkpoint(tmp_path):
    x = 3.0 + torch.randn(64, 1)
    model = GlobalMean()
    guide = AutoNormal(model)
    module = VAELightningModule(model, guide, elbo=Trace_ELBO(), lr=0.05, example_batch=x)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(callbacks=[checkpoints]).fit(module, make_dataloader(x, batch_size=32))
    path = tmp_path / "last.ckpt"
    pyro.clear_param_store()  # a new autoguide would adopt the old one's PyroParams

    with pytest.raises(TypeError, match=r"GlobalMean with guide AutoNormal.*model=model, guide="):
        VAELightningModule.load_from_checkpoint(path)
    m2 = GlobalMean()
    with pytest.raises(ValueError, match=r"Trace_ELBO.*elbo="):
        VAELightningModule.load_from_checkpoint(path, model=m2, guide=AutoNormal(m2))
    m2 = GlobalMean()
    with pytest.raises(RuntimeError, match="example_batch"):
        VAELightningModule.load_from_checkpoint(
            path, model=m2, guide=AutoNormal(m2), elbo=Trace_ELBO()
        )
    pyro.clear_param_store()
    m2 = GlobalMean()
    g2 = AutoNormal(m2)
    loaded = VAELightningModule.load_from_checkpoint(
        path, model=m2, guide=g2, elbo=Trace_ELBO(), example_batch=x
    )
    assert loaded.lr == 0.05
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --------------------------------------------------------------------------------------
# Resuming with Trainer.fit(ckpt_path=...)
# --------------------------------------------------------------------------------------
class RecordStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.epoch, self.step = trainer.current_epoch, trainer.global_step
        self.optimizer = {
            k: {n: v.clone() for n, v in s.items()}
            for k, s in trainer.optimizers[0].state_dict()["state"].items()
        }
        self.step_count = pl_module.objective.step_count


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_continues_at_the_saved_epoch_step_and_optimiser_state(tmp_path):
    config = tiny_config()
    built = build(config)
    train = make_dataloader(built.train, batch_size=64)
    first = VAELightningModule.from_built(built)
    # always "collapsed" (2 latent dimensions < 3 active units): warns at epoch 1 only
    watch = LightningCollapseWarning(min_active_units=3, monitor_size=64)
    trainer = make_trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True), watch])
    with pytest.warns(PosteriorCollapseWarning, match="epoch 1"):
        trainer.fit(first, train)
    assert trainer.global_step == 4
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 4

    second = VAELightningModule.from_built(build(config))
    start, watch2 = RecordStart(), LightningCollapseWarning(min_active_units=3, monitor_size=64)
    resumed = make_trainer(
        max_epochs=3, callbacks=[start, watch2, ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)  # the episode goes on
        resumed.fit(second, train, ckpt_path=tmp_path / "last.ckpt")
    assert (start.epoch, start.step, start.step_count) == (2, 4, 4)
    live = trainer.optimizers[0].state_dict()["state"]
    assert start.optimizer.keys() == live.keys() == saved["optimizer_states"][0]["state"].keys()
    for k, state in start.optimizer.items():
        for name, value in state.items():
            assert torch.equal(value, live[k][name]), (k, name)
            assert torch.equal(value, saved["optimizer_states"][0]["state"][k][name])
    assert resumed.global_step == second.objective.step_count == 6
    assert watch2.callback.streak == 3 and [e for e, _ in watch2.events] == [1]


# --------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------
LAUNCH = [
    *("--accelerator", "cpu", "--devices", "1", "--dataset", "digits", "--latent-dim", "2"),
    *("--model-option", "hidden=8", "--batch-size", "512", "--no-progress"),
]


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval")
def test_launcher_checkpoints_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*LAUNCH, "--epochs", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt",
        "last.ckpt",
    ]
    record = json.loads((out / "config.json").read_text())
    assert record["checkpoints"]["best"] == "checkpoints/best-epoch000.ckpt"
    steps = record["trainer"]["global_step"]  # 1617 training rows: 4 steps an epoch
    assert steps == 4

    # a finished run trains on to a larger --epochs
    assert main([*LAUNCH, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["trainer"]["global_step"] == 2 * steps
    assert record["resumed_from"] == {"checkpoint": "checkpoints/last.ckpt", "global_step": 4}
    assert [r["epoch"] for r in rows(out) if r["val/elbo"]] == ["0", "1"]
    loaded = VAELightningModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert loaded.objective.step_count == 2 * steps
    model = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(v, loaded.vae.state_dict()[k]) for k, v in model.items())

    # an interrupted run leaves its staging folder, which --resume continues
    staging = _staging_folder(out)
    out.rename(staging)
    capsys.readouterr()
    assert main([*LAUNCH, "--epochs", "3", "--out", str(out)]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main([*LAUNCH, "--epochs", "3", "--latent-dim", "3", "--out", str(out), "--resume"]) == 2
    assert "latent_dim: 2 then, 3 now" in capsys.readouterr().err
    assert staging.is_dir() and not out.exists()  # refused: nothing touched
    assert main([*LAUNCH, "--epochs", "3", "--out", str(out), "--resume"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["trainer"]["global_step"] == 3 * steps and not staging.exists()
    assert [r["epoch"] for r in rows(out) if r["val/elbo"]] == ["0", "1", "2"]

    # a checkpoint file to continue from; --logger none writes no logs
    ckpt = tmp_path / "saved.ckpt"
    (out / "checkpoints" / "last.ckpt").rename(ckpt)
    other = tmp_path / "other"
    args = [
        *LAUNCH,
        "--epochs",
        "4",
        "--out",
        str(other),
        "--resume",
        str(ckpt),
        "--logger",
        "none",
    ]
    assert main(args) == 0
    assert json.loads((other / "config.json").read_text())["trainer"]["global_step"] == 4 * steps
    assert not (other / "logs").exists()


def test_launcher_tensorboard_logger_names_the_package_to_install(tmp_path, capsys, monkeypatch):
    import pyrocollapse.lightning.launcher as launcher

    monkeypatch.setattr(launcher, "_tensorboard_installed", lambda: False)
    assert main([*LAUNCH, "--logger", "tensorboard", "--out", str(tmp_path / "tb")]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="TensorBoard is not installed"
)
@pytest.mark.filterwarnings("ignore:.*is smaller than the logging interval")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TensorBoard's own imports
def test_launcher_tensorboard_logger_writes_event_files(tmp_path):
    out = tmp_path / "tb"
    assert main([*LAUNCH, "--epochs", "1", "--logger", "tensorboard", "--out", str(out)]) == 0
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.ckpt").is_file()


# --------------------------------------------------------------------------------------
# Collapse callbacks
# --------------------------------------------------------------------------------------
def encoder_head(vae: MLPVAE) -> torch.nn.Linear:
    return [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]


def collapsed_vae() -> MLPVAE:
    """q(z|x) = N(0, I) = p(z) for every x: no active unit, no information."""
    vae = MLPVAE(64, 2, hidden=(16,))
    with torch.no_grad():
        head = encoder_head(vae)
        head.weight.zero_()
        head.bias.zero_()
        head.bias[2:] = 0.5413  # softplus(0.5413) = 1
    return vae


def healthy_vae() -> MLPVAE:
    """Posterior means that spread with x, and narrow posteriors."""
    vae = MLPVAE(64, 2, hidden=(16,))
    with torch.no_grad():
        head = encoder_head(vae)
        head.weight[:2] *= 20.0
        head.bias[2:] = -3.0
    return vae


def fit_watched(vae: MLPVAE, callback: pl.Callback, x: torch.Tensor, **options) -> pl.Trainer:
    trainer = make_trainer(callbacks=[callback], **options)
    module = VAELightningModule(vae, lr=1e-6)  # the weights stay (almost) as built
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        trainer.fit(module, make_dataloader(x, batch_size=64), val_loader(x))
    trainer.collapse_warnings = [w for w in caught if w.category is PosteriorCollapseWarning]
    return trainer


@pytest.mark.parametrize(
    "make",
    [LightningCollapseWarning, LightningAggressiveOnCollapse, LightningRollbackOnCollapse],
)
def test_collapse_callbacks_fire_on_a_collapsed_model_and_not_on_a_healthy_one(digits, make):
    x = digits[:256]
    healthy = make()
    trainer = fit_watched(healthy_vae(), healthy, x)
    assert healthy.events == [] and not trainer.collapse_warnings
    assert trainer.current_epoch == 2 and float(trainer.callback_metrics["collapse/mi/z"]) > 1.0
    assert float(trainer.callback_metrics["collapse/active_units/z"]) == 2.0

    collapsed = make()
    trainer = fit_watched(collapsed_vae(), collapsed, x)
    assert [epoch for epoch, _ in collapsed.events] == [1]
    assert float(trainer.callback_metrics["collapse/active_units/z"]) == 0.0
    if make is LightningAggressiveOnCollapse:
        # epoch 2 ran encoder-only steps before each of its batches
        assert "aggressive encoder training from epoch 2" in collapsed.events[0][1]
        assert float(trainer.callback_metrics["collapse/inner_steps"]) >= 10
        assert collapsed.state.inner_steps >= 20
    elif make is LightningRollbackOnCollapse:  # nothing healthy to return to: stops
        assert "nothing to roll back to" in collapsed.events[0][1]
        assert trainer.should_stop and trainer.current_epoch == 1
    if make is not LightningAggressiveOnCollapse:
        assert len(trainer.collapse_warnings) == 1


class CollapseAtEpoch2(pl.Callback):
    """Keeps the state after epoch 1, then collapses the encoder."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.params = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.optimizer = {
                k: {n: v.clone() for n, v in s.items()}
                for k, s in trainer.optimizers[0].state_dict()["state"].items()
            }
            self.step_count = pl_module.objective.step_count
            with torch.no_grad():
                encoder_head(pl_module.vae).weight.zero_()


def test_rollback_restores_the_last_healthy_epoch_and_stops(digits):
    collapse, rollback = CollapseAtEpoch2(), LightningRollbackOnCollapse()
    trainer = make_trainer(max_epochs=3, callbacks=[collapse, rollback])
    module = VAELightningModule(healthy_vae(), elbo=AnnealedELBO(Linear(4)), lr=1e-3)
    x = digits[:256]
    trainer.fit(module, make_dataloader(x, batch_size=64), val_loader(x))
    assert [e for e, _ in rollback.events] == [2] and "restored epoch 1" in rollback.events[0][1]
    assert trainer.should_stop and trainer.current_epoch == 2
    assert float(trainer.callback_metrics["collapse/rollback_to_epoch"]) == 1.0
    for key, value in module.state_dict().items():
        assert torch.equal(value, collapse.params[key]), key
    state = trainer.optimizers[0].state_dict()["state"]
    for k, saved in collapse.optimizer.items():
        assert all(torch.equal(state[k][n], v) for n, v in saved.items()), k
    assert module.objective.step_count == collapse.step_count == 2


def test_aggressive_mode_needs_one_process_without_accumulation(digits):
    x = digits[:64]
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        make_trainer(accumulate_grad_batches=2, callbacks=[LightningAggressiveOnCollapse()]).fit(
            VAELightningModule(MLPVAE(64, 2, hidden=(8,))), make_dataloader(x, batch_size=32)
        )
    with pytest.raises(TypeError, match="CollapseCallback"):
        from pyrocollapse.lightning import LightningCollapseCallback

        LightningCollapseCallback(object())


def test_launcher_reads_a_config_file(tmp_path):
    yaml = pytest.importorskip("yaml")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"latent_dim": 3, "epochs": 5, "lr": 0.005}))
    out = tmp_path / "run"
    # the file sets lr; the flags --latent-dim 2 (in LAUNCH) and --epochs 1 override it
    assert main([*LAUNCH, "--config", str(cfg), "--epochs", "1", "--out", str(out)]) == 0
    record = json.dumps(json.loads((out / "config.json").read_text()))
    assert '"lr": 0.005' in record and '"latent_dim": 2' in record and '"epochs": 1' in record
