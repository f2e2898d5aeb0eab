"""The one registry style of the package (timm's): name -> implementation.

Each implementation registers itself where it is defined, with the :meth:`Registry.register`
decorator; the module holding a registry imports none of them. A taken name is an error rather than
a silent replacement, and an unknown name is an error that lists the known ones. Used by the
methods, the datasets, the retrieval backends and the anchor selection rules.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind; iteration and :meth:`names` go by name, whatever the import order.

    Args:
        kind: what the entries are ("method", "dataset", ...), for the error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the decorated object as ``name``; returns the object unchanged."""

        def add(obj: T) -> T:
            if name in self._entries:
                taken = getattr(self._entries[name], "__qualname__", repr(self._entries[name]))
                raise ValueError(f"{self.kind} registry: {name!r} is already registered ({taken})")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ``ValueError`` listing the known names otherwise."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}.{hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
