"""Saving and loading models and priors: the :class:`Saveable` mixin and the file format.

A leaf module: it imports neither :mod:`pyrocollapse.models` nor :mod:`pyrocollapse.priors`
(whose base classes inherit from :class:`Saveable`). The base class of each kind (the
class that declares ``persistence_kind``: ``VAE`` for ``"model"``, ``Prior`` for
``"prior"``) registers itself when it is defined, together with its registry of
command-line names (``persistence_registry``), so that loading finds them without
importing upwards. The public names, the format and its documentation live in
:mod:`pyrocollapse.persistence`, which re-exports them.
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

__all__ = ["FORMAT", "FORMAT_VERSION", "Saveable"]

#: The ``format`` entry of every file written by :meth:`Saveable.save`.
FORMAT = "pyrocollapse.saved"
#: The version of the file format written; files of a larger version are refused.
FORMAT_VERSION = 1

#: Where the recorded constructor arguments live in an instance's ``__dict__``.
_RECORD = "_pyrocollapse_init_arguments"

#: ``persistence_kind`` -> the base class that declares it (``VAE``, ``Prior``), filled
#: by :meth:`Saveable.__init_subclass__` when that class is defined.
_BASES: dict[str, type] = {}


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
    #: The registry of command-line names of this kind (``MODELS``, ``PRIORS``), set by
    #: the base class of the kind; a saved file records the name, and ``load`` falls back
    #: on it when the class has moved.
    persistence_registry: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("persistence_kind")
        if kind and kind not in _BASES:  # the class declaring a kind is its base class
            _BASES[kind] = cls
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
    """The registry of names of ``kind`` (``None`` for an unknown kind or none set)."""
    base = _BASES.get(kind)
    return None if base is None else base.persistence_registry


def _base_class(kind: str) -> type:
    """The base class of ``kind`` (``VAE`` for ``"model"``, ``Prior`` for ``"prior"``)."""
    if kind not in ("model", "prior"):
        raise ValueError(f"unknown kind {kind!r}")
    if kind not in _BASES:  # pragma: no cover (VAE imports the priors; load needs its class)
        raise ValueError(
            f"no {kind} class has been imported yet; import pyrocollapse.models (models) or "
            "pyrocollapse.priors (priors) first"
        )
    return _BASES[kind]


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
