"""Saving and loading models and priors, and loading the run folders of ``pyrocollapse run``.

Every ready model (:class:`pyrocollapse.models.VAE`) and every prior
(:class:`pyrocollapse.priors.Prior`) is :class:`Saveable`: its constructor records the
arguments it was called with, so ``obj.save(path)`` can store them next to the weights
and ``Class.load(path)`` rebuilds the exact class without the caller passing anything::

    vae.save("vae.pt")
    vae = VAE.load("vae.pt")          # the saved class (MLPVAE, ConvVAE, ...), eval mode
    prior = Prior.load("prior.pt")

A subclass gets this for free (its ``__init__`` is recorded too); it overrides
:meth:`Saveable.constructor_arguments` only to store live values instead of the recorded
ones (the VAE stores its current prior; a VampPrior stores no encoder, since the model
that owns it re-attaches its own).

File format
-----------
One file, written atomically (a temporary beside it, then renamed), readable with
``torch.load(path, weights_only=True)``::

    {"format": "pyrocollapse.saved", "format_version": 1,
     "config": "<JSON text>", "state_dict": {name: tensor, ...}}

The JSON ``config`` holds ``kind`` (``"model"`` or ``"prior"``), ``class``
(``"module:QualName"``), ``registry_name`` (the :data:`~pyrocollapse.models.MODELS` /
:data:`~pyrocollapse.priors.PRIORS` name, or null), ``arguments`` (the constructor
arguments by name, defaults filled in), ``training`` and the versions that wrote it.
Argument values are JSON values; tuples are ``{"__tuple__": [...]}``, a submodule such as
a VAE's prior is ``{"__module__": {"kind", "class", "registry_name", "arguments"}}`` (its
weights are in the owner's state dict), and a value JSON cannot hold (a FlowPrior's own
list of transforms, a VampPrior's encoder function) is ``{"__unsaved__": "<type>"}`` and
must be passed again to ``load``. The state dict is moved to the CPU; ``load(device=...)``
moves it back.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import numbers
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedRun", "Saveable", "load_run"]

#: The ``format`` entry of every file written by :meth:`Saveable.save`.
FORMAT = "pyrocollapse.saved"
#: The version of the file format written; files of a larger version are refused.
FORMAT_VERSION = 1

#: Where the recorded constructor arguments live in an instance's ``__dict__``.
_RECORD = "_pyrocollapse_init_arguments"


# --------------------------------------------------------------------------------------
# Recording constructor arguments
# --------------------------------------------------------------------------------------
def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``init`` so that the outermost ``__init__`` call records its arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _RECORD not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                init(self, *args, **kwargs)  # raises the constructor's own TypeError
                return
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))  # self
            # straight into __dict__: nn.Module.__init__ has not run yet
            self.__dict__[_RECORD] = arguments
        init(self, *args, **kwargs)

    __init__._records_arguments = True  # type: ignore[attr-defined]
    return __init__


class Saveable:
    """Mixin of :class:`~pyrocollapse.models.VAE` and :class:`~pyrocollapse.priors.Prior`:
    record the constructor arguments, :meth:`save` and :meth:`load`.

    Every subclass's ``__init__`` is wrapped (in ``__init_subclass__``) so that the
    outermost call records its arguments by name, defaults filled in; the ``super()``
    calls inside record nothing. :meth:`constructor_arguments` returns them.
    """

    #: ``"model"`` or ``"prior"``: what a saved file of this class holds.
    persistence_kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_arguments", False):
            cls.__init__ = _recording(init)  # type: ignore[method-assign]

    def constructor_arguments(self) -> dict[str, Any]:
        """The arguments this object was built with, by parameter name, defaults filled in.

        This is what :meth:`save` stores to rebuild the object. Subclasses override it to
        store live values instead of the recorded ones (the VAE its current ``prior``).

        Raises
        ------
        ValueError
            The object was not built by calling its class (no arguments were recorded).
        """
        recorded = self.__dict__.get(_RECORD)
        if recorded is None:
            raise ValueError(
                f"{type(self).__name__} was not built by calling its class, so its constructor "
                "arguments are unknown and it cannot be saved"
            )
        return dict(recorded)

    # -- saving --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the class, constructor arguments and weights to the file ``path``.

        The file is written atomically (a temporary beside it, then renamed), so ``path``
        never holds half a file; missing parent folders are created. Load it with
        ``type(self).load(path)`` (or the base class's ``load``). See
        :mod:`pyrocollapse.persistence` for the format.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (``.pt`` by convention).
        overwrite : bool
            Replace an existing file; without it an existing ``path`` is an error.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        FileExistsError
            ``path`` exists and ``overwrite`` is False.
        ValueError
            ``path`` is a folder, or the object cannot be described (see
            :meth:`constructor_arguments`).
        """
        from pyrocollapse._io import atomic_write
        from pyrocollapse._validation import check_bool

        target = _check_path("path", path)
        check_bool("overwrite", overwrite)
        if target.is_dir():
            raise ValueError(
                f"path {str(target)!r} is a folder; save() writes one file, e.g. "
                f"{str(target / 'model.pt')!r}"
            )
        if os.path.lexists(target) and not overwrite:
            raise FileExistsError(f"path {str(target)!r} exists; pass overwrite=True to replace it")
        assert isinstance(self, torch.nn.Module)
        config = _describe(self)
        config["training"] = bool(self.training)
        config["pyrocollapse_version"] = _package_version()
        config["torch_version"] = torch.__version__
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": json.dumps(config, indent=1, allow_nan=True),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        atomic_write(target, lambda tmp: torch.save(payload, tmp))
        return target

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        **arguments: Any,
    ) -> Any:
        """Rebuild the object saved in ``path`` by :meth:`save`, in evaluation mode.

        The saved class is looked up by its qualified name (or, if that has moved, its
        registry name) and called with the saved constructor arguments; then every
        parameter and buffer is restored, with its dtype. Loading leaves the global
        random state as it was.

        Parameters
        ----------
        path : str or os.PathLike
            A file written by :meth:`save`.
        device : str, torch.device or None
            Where to put the tensors (default: the CPU).
        **arguments
            Constructor arguments that replace the saved ones: needed for the arguments
            that JSON cannot hold and were not saved (a FlowPrior's own list of
            transforms, ``transforms=...``; a VAE with such a prior, ``prior=...``), and
            useful for ``name=`` (by default a loaded model gets a fresh, unique name in
            Pyro's parameter store) or ``encoder=`` (to bind a saved VampPrior to your
            encoder function).

        Returns
        -------
        The saved class (``cls`` or a subclass of it), in evaluation mode (call
        ``.train()`` to train on).

        Raises
        ------
        ValueError
            ``path`` does not exist or does not hold an object saved by :meth:`save`
            (the message names the path and what is missing), was written by a newer
            version of the format, holds another kind of object or a class that is not
            ``cls`` or a subclass of it, or its weights do not fit the rebuilt object.
        """
        from pyrocollapse._validation import check_device

        if cls.persistence_kind not in ("model", "prior"):
            raise TypeError(
                f"{cls.__name__}.load: call load on a model or prior class (VAE.load, "
                "Prior.load, MLPVAE.load, ...)"
            )
        target = _check_path("path", path)
        where = torch.device("cpu") if device is None else check_device("device", device)
        payload = _read_payload(target)
        return _rebuild(cls, payload, target, arguments, where)


# --------------------------------------------------------------------------------------
# Describing an object as JSON
# --------------------------------------------------------------------------------------
class _NotJSON(Exception):
    """A constructor argument that JSON cannot hold."""


def _package_version() -> str:
    import pyrocollapse

    return str(pyrocollapse.__version__)


def _registries(kind: str) -> Any:
    if kind == "model":
        from pyrocollapse.models import MODELS

        return MODELS
    if kind == "prior":
        from pyrocollapse.priors import PRIORS

        return PRIORS
    return None


def _base_class(kind: str) -> type:
    if kind == "model":
        from pyrocollapse.models import VAE

        return VAE
    if kind == "prior":
        from pyrocollapse.priors import Prior

        return Prior
    raise ValueError(f"unknown kind {kind!r}")


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _describe(obj: Saveable) -> dict[str, Any]:
    """``{"kind", "class", "registry_name", "arguments"}`` of ``obj`` (JSON-ready)."""
    cls = type(obj)
    if "<locals>" in cls.__qualname__:
        raise ValueError(
            f"{cls.__qualname__} is defined inside a function, so load() could not find it "
            "again; define the class at the top level of a module to save it"
        )
    kind = cls.persistence_kind
    registry = _registries(kind)
    registry_name = None
    if registry is not None:
        registry_name = next((n for n in registry.names() if registry.get(n) is cls), None)
    arguments = {}
    for name, value in obj.constructor_arguments().items():
        try:
            arguments[name] = _encode(value, obj)
        except _NotJSON:
            arguments[name] = {"__unsaved__": type(value).__name__}
    return {
        "kind": kind,
        "class": _qualified_name(cls),
        "registry_name": registry_name,
        "arguments": arguments,
    }


def _encode(value: Any, owner: Any) -> Any:
    """A JSON value for a constructor argument (raises :class:`_NotJSON`)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, torch.Size)):
        return {"__tuple__": [_encode(v, owner) for v in value]}
    if isinstance(value, list):
        return [_encode(v, owner) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) and not k.startswith("__") for k in value):
            raise _NotJSON
        return {k: _encode(v, owner) for k, v in value.items()}
    if (
        isinstance(value, Saveable)
        and isinstance(owner, torch.nn.Module)
        and any(m is value for m in owner.modules())
    ):
        return {"__module__": _describe(value)}
    raise _NotJSON


def _decode(value: Any, context: str) -> Any:
    """The Python value of an encoded constructor argument (submodules rebuilt)."""
    if isinstance(value, list):
        return [_decode(v, context) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
            return tuple(_decode(v, context) for v in value["__tuple__"])
        if set(value) == {"__module__"} and isinstance(value["__module__"], dict):
            spec = value["__module__"]
            kind = spec.get("kind")
            if kind not in ("model", "prior"):
                raise ValueError(f"{context}: a saved submodule has an unknown kind {kind!r}")
            cls = _resolve(spec, _base_class(kind), context)
            return _instantiate(cls, spec.get("arguments"), {}, context)
        if set(value) == {"__unsaved__"}:
            raise _Unsaved(str(value["__unsaved__"]))
        return {k: _decode(v, context) for k, v in value.items()}
    return value


class _Unsaved(Exception):
    """An argument that was not saved (JSON cannot hold it) and was not passed again."""


# --------------------------------------------------------------------------------------
# Reading and rebuilding
# --------------------------------------------------------------------------------------
def _check_path(name: str, path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _read_payload(path: Path) -> dict[str, Any]:
    """The checked payload of a saved file; ``ValueError`` naming ``path`` otherwise."""
    what = "no object saved by VAE.save or Prior.save"
    if not path.exists():
        raise ValueError(f"cannot load {str(path)!r}: the file does not exist ({what} there)")
    if path.is_dir():
        raise ValueError(
            f"cannot load {str(path)!r}: it is a folder, not a file written by save() (for a "
            "run folder written by 'pyrocollapse run' use pyrocollapse.load_run)"
        )
    payload = _torch_load(path)
    return _check_payload(payload, path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not its archive
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot load {str(path)!r}: it is not a file written by save() or torch.save "
            f"with plain tensors (torch.load(weights_only=True) failed: {first})"
        ) from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _check_payload(payload: Any, path: Path) -> dict[str, Any]:
    if _is_state_dict(payload):
        raise ValueError(
            f"cannot load {str(path)!r}: it holds a bare state dict (weights only), without "
            "the 'format' and 'config' entries that name the class and its constructor "
            "arguments; build the model yourself and call load_state_dict, or, for the "
            "model.pt of a run folder, use pyrocollapse.load_run(folder)"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"cannot load {str(path)!r}: it has no 'format': {FORMAT!r} entry, so it was not "
            "written by VAE.save or Prior.save"
        )
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"cannot load {str(path)!r}: its 'format_version' is missing or not a positive "
            f"int (got {version!r}); the file is damaged"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"cannot load {str(path)!r}: it was written by a newer pyrocollapse (save format "
            f"version {version}; this one, {_package_version()}, reads versions up to "
            f"{FORMAT_VERSION}); upgrade pyrocollapse to load it"
        )
    missing = [k for k in ("config", "state_dict") if k not in payload]
    if missing:
        raise ValueError(
            f"cannot load {str(path)!r}: the file is damaged, it lacks {' and '.join(map(repr, missing))}"
        )
    if not isinstance(payload["config"], str):
        raise ValueError(f"cannot load {str(path)!r}: its 'config' is not JSON text")
    try:
        config = json.loads(payload["config"])
    except json.JSONDecodeError as e:
        raise ValueError(
            f"cannot load {str(path)!r}: its 'config' is not valid JSON ({e})"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"cannot load {str(path)!r}: its 'config' is not a JSON object")
    lacking = [k for k in ("kind", "class", "arguments") if k not in config]
    if lacking:
        raise ValueError(
            f"cannot load {str(path)!r}: its config lacks {', '.join(map(repr, lacking))}"
        )
    if not _is_state_dict(payload["state_dict"]):
        raise ValueError(
            f"cannot load {str(path)!r}: its 'state_dict' is not a dict of name -> tensor"
        )
    return {"config": config, "state_dict": payload["state_dict"], "format_version": version}


def _resolve(spec: dict[str, Any], base: type, context: str) -> type:
    """The class a saved ``spec`` names, a subclass of ``base``; ``ValueError`` otherwise.

    The qualified name is tried first; only modules already imported or inside the
    ``pyrocollapse`` package are imported (a file never makes ``load`` import arbitrary
    code). If the name is not found, the registry name is tried.
    """
    name = spec.get("class")
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"{context}: the saved class name {name!r} is not 'module:QualName'")
    module_name, _, qualname = name.partition(":")
    found: Any = None
    problem = ""
    if module_name in sys.modules or module_name.split(".")[0] == "pyrocollapse":
        try:
            found = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as e:
            found, problem = None, f" ({e})"
    else:
        problem = f" (module {module_name!r} is not imported: import it first, then load)"
    if found is None:
        registry = _registries(spec.get("kind", ""))
        registry_name = spec.get("registry_name")
        if registry is not None and isinstance(registry_name, str) and registry_name in registry:
            found = registry.get(registry_name)
        else:
            raise ValueError(f"{context}: the saved class {name!r} was not found{problem}")
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(
            f"{context}: the saved class {name!r} is not a {base.__name__}; refusing to call it"
        )
    return found


def _instantiate(cls: type, saved: Any, overrides: dict[str, Any], context: str) -> Any:
    """``cls(**saved arguments, **overrides)`` by its signature."""
    if not isinstance(saved, dict):
        raise ValueError(f"{context}: the saved arguments of {cls.__name__} are not a JSON object")
    signature = inspect.signature(cls.__init__)
    params = list(signature.parameters.values())[1:]
    names = {p.name for p in params}
    unknown = sorted((set(saved) | set(overrides)) - names)
    if unknown:
        raise ValueError(
            f"{context}: {cls.__name__} takes no argument(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(sorted(names)) or 'none'}"
        )
    values: dict[str, Any] = {}
    for p in params:
        if p.name in overrides:
            values[p.name] = overrides[p.name]
        elif p.name in saved:
            try:
                values[p.name] = _decode(saved[p.name], context)
            except _Unsaved as e:
                raise ValueError(
                    f"{context}: {cls.__name__}'s argument {p.name!r} (a {e}) cannot be stored "
                    f"as JSON, so it was not saved; pass it again: load(path, {p.name}=...)"
                ) from None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    var_positional = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    positional = var_positional is not None and bool(values.get(var_positional.name))
    for p in params:
        if p.name not in values:
            continue
        v = values[p.name]
        if p.kind is p.VAR_POSITIONAL:
            args.extend(v)
            positional = False
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(v)
        elif p.kind is p.POSITIONAL_ONLY or (positional and p.kind is p.POSITIONAL_OR_KEYWORD):
            args.append(v)
        else:
            kwargs[p.name] = v
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{context}: could not rebuild {cls.__name__} from its saved arguments: {e}"
        ) from None


def _rebuild(
    cls: type,
    payload: dict[str, Any],
    path: Path,
    overrides: dict[str, Any],
    device: torch.device,
) -> Any:
    config, state = payload["config"], payload["state_dict"]
    context = f"cannot load {str(path)!r}"
    kind = cls.persistence_kind  # type: ignore[attr-defined]
    saved_kind = config.get("kind")
    if saved_kind != kind:
        other = {"model": "VAE.load", "prior": "Prior.load"}.get(saved_kind)
        raise ValueError(
            f"{context}: it holds a saved {saved_kind}, not a {kind}"
            + (f"; load it with {other}" if other else "")
        )
    found = _resolve(config, _base_class(kind), context)
    if not issubclass(found, cls):
        raise ValueError(
            f"{context}: it holds a {found.__name__}, not a {cls.__name__}; load it with "
            f"{found.__name__}.load or {_base_class(kind).__name__}.load"
        )
    with _rng_preserved():
        obj = _instantiate(found, config["arguments"], overrides, context)
    try:
        obj.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(
            f"{context}: its weights do not fit the rebuilt {found.__name__} ({_first_line(e)})"
        ) from None
    obj.to(device)
    obj.eval()
    return obj


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 400 else text[:400] + " ..."


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore the global random states (Python, NumPy, torch CPU and CUDA) afterwards."""
    import random

    import numpy as np

    py, cpu = random.getstate(), torch.random.get_rng_state()
    npy = np.random.get_state()  # noqa: NPY002 (the global state Pyro's seed sets)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)  # noqa: NPY002
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------
class LoadedRun:
    """A run folder of ``pyrocollapse run`` read back by :func:`load_run`.

    Attributes
    ----------
    path : Path
        The folder.
    model : pyrocollapse.models.VAE
        The trained model, in evaluation mode; ``model.model`` and ``model.guide`` are its
        Pyro programs.
    prior : pyrocollapse.priors.Prior
        ``model.prior``.
    config : pyrocollapse.RunConfig
        The run's configuration (from ``metrics.json``).
    metrics : dict
        ``metrics.json`` as read.
    report : pyrocollapse.CollapseReport
        The collapse report of the held-out data.
    history : pyrocollapse.History or None
        The training history (``history.csv``), ``None`` if the folder has none.
    objective : pyrocollapse.elbo.BaseELBO
        The training objective rebuilt from ``config`` (a fresh one: its KL schedule
        starts at step 0). Built on first use, with :attr:`train` and :attr:`held_out`:
        this loads the run's dataset.
    train, held_out : pyrocollapse.data.Dataset
        The training and held-out splits of the run's dataset (built on first use).
    """

    def __init__(
        self,
        *,
        path: Path,
        model: Any,
        config: Any,
        metrics: dict[str, Any],
        report: Any,
        history: Any,
        built: Any = None,
    ) -> None:
        self.path = path
        self.model = model
        self.config = config
        self.metrics = metrics
        self.report = report
        self.history = history
        self._built = built

    @property
    def prior(self) -> Any:
        return self.model.prior

    def _build(self) -> Any:
        if self._built is None:
            from pyrocollapse.experiment import build

            with _rng_preserved():
                self._built = build(self.config)
        return self._built

    @property
    def objective(self) -> Any:
        return self._build().elbo

    @property
    def train(self) -> Any:
        return self._build().train

    @property
    def held_out(self) -> Any:
        return self._build().valid

    def __repr__(self) -> str:
        return (
            f"LoadedRun({str(self.path)!r}: {type(self.model).__name__}, prior "
            f"{type(self.prior).__name__}, objective {self.config.elbo!r}, verdict "
            f"{self.report.verdict!r})"
        )


def load_run(path: str | os.PathLike[str]) -> LoadedRun:
    """Read a run folder written by ``pyrocollapse run`` (or :func:`run_experiment`).

    Reads ``metrics.json`` (the report and the :class:`~pyrocollapse.RunConfig`),
    ``history.csv`` (if present) and ``model.pt``. A ``model.pt`` written by
    :meth:`VAE.save <pyrocollapse.persistence.Saveable.save>` is loaded as it is; one that
    holds only the weights (a state dict) is loaded into the model that
    :func:`pyrocollapse.experiment.build` makes from the configuration (which loads the
    dataset). The global random state is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The run folder.

    Returns
    -------
    LoadedRun
        ``model`` (in evaluation mode), ``prior``, ``objective``, ``history``, ``report``,
        ``config``, ``metrics``, and the data splits ``train`` and ``held_out``.

    Raises
    ------
    ValueError
        The folder, ``metrics.json`` or ``model.pt`` is missing or damaged; the message
        names the file.

    Example
    -------
    >>> run = load_run("runs/latest")                                # doctest: +SKIP
    >>> run.report.verdict, run.model.reconstruct(run.held_out.data[:4]).shape  # doctest: +SKIP
    """
    from pyrocollapse.experiment import RunConfig
    from pyrocollapse.models import MODELS, VAE
    from pyrocollapse.report_folder import read_folder

    folder = _check_path("path", path)
    if not folder.exists():
        raise ValueError(f"run folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(
            f"{str(folder)!r} is not a folder; pass a run folder written by 'pyrocollapse run'"
        )
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(
            f"{str(metrics_path)!r} not found: {str(folder)!r} is not a run folder written by "
            "'pyrocollapse run'"
        )
    try:
        rf = read_folder(folder)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(str(e)) from None
    record = rf.metrics.get("config")
    if not isinstance(record, dict):
        raise ValueError(
            f"{str(metrics_path)!r} has no run configuration ('config' object); it was not "
            "written by 'pyrocollapse run'"
        )
    try:
        config = RunConfig.from_dict(dict(record)).validate()
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{str(metrics_path)!r}: its 'config' is not a valid run configuration ({e})"
        ) from None
    model_path = folder / "model.pt"
    if not model_path.is_file():
        raise ValueError(f"{str(model_path)!r} not found: the run folder holds no trained model")
    payload = _torch_load(model_path)
    built = None
    if _is_state_dict(payload):
        from pyrocollapse.experiment import build

        try:
            with _rng_preserved():
                built = build(config)
        except (OSError, TypeError, ValueError) as e:
            raise ValueError(
                f"{str(model_path)!r} holds only weights, and the model could not be rebuilt "
                f"from the configuration in {str(metrics_path)!r}: {e}"
            ) from None
        model = built.vae
        try:
            model.load_state_dict(payload, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{str(model_path)!r}: its weights do not fit the {type(model).__name__} that "
                f"{str(metrics_path)!r} describes ({_first_line(e)})"
            ) from None
        model.eval()
    else:
        model = _rebuild(
            VAE, _check_payload(payload, model_path), model_path, {}, torch.device("cpu")
        )
        expected = MODELS.get(config.model)
        if type(model) is not expected:
            raise ValueError(
                f"{str(model_path)!r} holds a {type(model).__name__}, but {str(metrics_path)!r} "
                f"describes a {expected.__name__} (model {config.model!r}); the folder is damaged"
            )
    return LoadedRun(
        path=folder,
        model=model,
        config=config,
        metrics=rf.metrics,
        report=rf.report,
        history=rf.history,
        built=built,
    )
