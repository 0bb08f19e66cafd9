"""A small name -> object registry that refuses duplicates and suggests close matches for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate name in a Registry (a KeyError whose message prints as written)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    """Maps names to objects (usually builder functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            self.add(name or obj.__name__, obj)  # type: ignore[attr-defined]
            return obj

        return deco

    def add(self, name: str, obj: Any) -> None:
        """Register ``obj`` under ``name``; a name may be registered once only."""
        if name in self._objects:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._objects[name] = obj

    def get(self, name: str) -> Any:
        """Return the object registered under ``name``; an unknown name lists the close matches."""
        try:
            return self._objects[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, self._objects, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise RegistryError(
            f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(sorted(self._objects))}"
        ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._objects)

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._objects)
