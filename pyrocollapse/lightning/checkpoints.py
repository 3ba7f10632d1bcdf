"""What a :class:`~pyrocollapse.lightning.VAELightningModule` records to be rebuilt.

A module built by :meth:`~pyrocollapse.lightning.VAELightningModule.from_built` keeps, in
its ``spec`` hyperparameter, the registry names and options of its model, prior and
objective and the facts of its data set; ``load_from_checkpoint(path)`` rebuilds the
model and the objective from them, without the data.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pyro.infer import ELBO
from torch import nn

from pyrocollapse.elbo import BaseELBO, PlainELBO

#: Key of pyrocollapse's entry in Lightning checkpoints.
_CHECKPOINT_KEY = "pyrocollapse"


#: The :class:`~pyrocollapse.experiment.RunConfig` fields the launcher uses (and records).
_RECORDED = (
    *("dataset", "dataset_options", "valid_fraction", "model", "latent_dim", "model_options"),
    *("prior", "prior_options", "elbo", "elbo_options", "schedule", "schedule_options"),
    *("epochs", "batch_size", "lr", "seed"),
)


def _describe(objective: ELBO) -> dict[str, Any]:
    if isinstance(objective, BaseELBO):
        return objective.hyperparameters()
    return {"class": type(objective).__name__, "num_particles": objective.num_particles}


def _check_spec(spec: object) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise TypeError(
            "spec must be None or the dict a checkpoint holds (hparams['spec']), got "
            f"{type(spec).__name__}"
        )
    return spec


def _missing_model_message(spec: dict[str, Any]) -> str:
    if not spec:
        return (
            "VAELightningModule needs a model: a pyrocollapse VAE (e.g. MLPVAE(64, 8)), or a "
            "Pyro model module together with guide="
        )
    pair = str(spec.get("model_class"))
    if spec.get("guide_class") is not None:
        pair += f" with guide {spec['guide_class']}"
    return (
        f"this checkpoint holds a user-supplied model ({pair}), which it cannot rebuild: only "
        "modules made by VAELightningModule.from_built (as the launcher does) record how to "
        "rebuild theirs. Pass the model and guide again: "
        "VAELightningModule.load_from_checkpoint(path, model=model, guide=guide)"
    )


def _saved_objective(spec: dict[str, Any], recipe: dict[str, Any] | None) -> ELBO | str | None:
    """The objective a checkpoint's ``spec`` records, for a module loaded without
    ``elbo``: rebuilt from its recipe or its registry name; the default when it was the
    default; else ``ValueError`` (a different objective must not be trained silently)."""
    if recipe is not None:
        return _rebuild_objective(recipe)
    if isinstance(spec.get("elbo"), str):
        return spec["elbo"]
    recorded = spec.get("objective")
    if recorded is None or recorded == _describe(PlainELBO()):
        return None
    raise ValueError(
        f"the checkpoint was trained with the objective {recorded!r}, which it cannot rebuild; "
        "pass it again: VAELightningModule.load_from_checkpoint(path, model=..., elbo=...)"
    )


def _plain_option(value: Any, where: str) -> Any:
    """A configuration value as a checkpoint holds it (loaded with ``weights_only=True``:
    plain values only): paths become strings; other objects are refused."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_option(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain_option(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"config.{where} is a {type(value).__name__}, which a checkpoint cannot record; give "
        "options as plain values (numbers, strings, lists, dicts), e.g. a KL schedule by name "
        "(schedule='linear', schedule_options={'warmup_steps': 1000})"
    )


def _data_facts(dataset: Any) -> dict[str, Any]:
    """What a model's ``from_dataset`` reads off a :class:`~pyrocollapse.data.Dataset`."""
    return {
        "name": dataset.name,
        "kind": dataset.kind,
        "event_shape": list(dataset.event_shape),
        "image_shape": None if dataset.image_shape is None else list(dataset.image_shape),
        "vocab_size": None if dataset.vocab is None else len(dataset.vocab),
    }


def _dataset_stub(facts: dict[str, Any]) -> Any:
    """A one-row dataset with the recorded name, kind and shapes: enough for a model's
    ``from_dataset``, which reads no data values (the trained weights are loaded after)."""
    from pyrocollapse.data import BOS_ID, EOS_ID, SPECIAL_TOKENS, Dataset

    shape = tuple(int(n) for n in facts["event_shape"])
    if facts["kind"] == "tokens":
        row = torch.zeros((1, *shape), dtype=torch.int64)
        row[0, 0], row[0, 1] = BOS_ID, EOS_ID
        extra = int(facts["vocab_size"]) - len(SPECIAL_TOKENS)
        return Dataset(
            data=row,
            name=facts["name"],
            kind="tokens",
            event_shape=shape,
            vocab=SPECIAL_TOKENS + tuple(f"<token {i}>" for i in range(extra)),
            lengths=torch.tensor([2]),
        )
    image = facts.get("image_shape")
    return Dataset(
        data=torch.zeros((1, *shape)),
        name=facts["name"],
        kind=facts["kind"],
        event_shape=shape,
        image_shape=None if image is None else tuple(int(n) for n in image),
    )


def _rebuild(recipe: dict[str, Any]) -> tuple[nn.Module, ELBO]:
    """The model and objective a :meth:`VAELightningModule.from_built` recipe describes,
    as :func:`pyrocollapse.experiment.build` made them but without the data (fresh
    weights, drawn with torch's RNG left where it was)."""
    from pyrocollapse.experiment import RunConfig
    from pyrocollapse.models import MODELS
    from pyrocollapse.priors import PRIORS

    config = RunConfig.from_dict(dict(recipe["config"]))
    dataset = _dataset_stub(recipe["data"])
    with torch.random.fork_rng(devices=[]):
        prior = PRIORS.get(config.prior).from_options(
            config.latent_dim, input_shape=dataset.event_shape, **config.prior_options
        )
        vae = MODELS.get(config.model).from_dataset(
            dataset, latent_dim=config.latent_dim, prior=prior, **config.model_options
        )
    return vae, _rebuild_objective(recipe)


def _rebuild_objective(recipe: dict[str, Any]) -> ELBO:
    from pyrocollapse.elbo import ELBOS
    from pyrocollapse.experiment.config import _schedule_argument
    from pyrocollapse.schedules import Schedule

    config = recipe["config"]
    elbo_cls = ELBOS.get(config["elbo"])
    options = dict(config["elbo_options"])
    if recipe.get("schedule") is not None:
        options[_schedule_argument(elbo_cls)] = Schedule.from_dict(recipe["schedule"])
    return elbo_cls(**options)
