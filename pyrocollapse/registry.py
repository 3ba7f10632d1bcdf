"""Name -> factory registries with helpful errors.

Every family that the command line selects by name (priors, ELBO variants, datasets,
models) keeps one :class:`Registry`. Entries are added by decorating the class or
factory, so adding a family member never means editing an ``elif`` chain::

    PRIORS = Registry("prior")

    @PRIORS.register("standard")
    class StandardNormalPrior(Prior): ...

    PRIORS.get("vampp")  # ValueError: unknown prior 'vampp'; valid names: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A mapping from short names to classes or factories.

    Parameters
    ----------
    kind : str
        What the entries are ("prior", "elbo", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a duplicate name is an error."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} name {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry for ``name``.

        Raises
        ------
        ValueError
            If ``name`` is unknown; the message lists every valid name.
        """
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


_NAME_COUNTS: dict[str, int] = {}


def unique_name(base: str) -> str:
    """``base`` for the first instance in this process, then ``base_2``, ``base_3``, ...

    Models and priors use it as their prefix in Pyro's global parameter store, which is
    keyed by name: two modules with one name would share (or silently train stale
    copies of) their parameters.
    """
    count = _NAME_COUNTS.get(base, 0) + 1
    _NAME_COUNTS[base] = count
    return base if count == 1 else f"{base}_{count}"
