"""One registry type for every pluggable concept (methods, pipelines, sources, strategies, models).

A registry maps a name to a thing; registering a name twice is an error that names both things, so a
plugin can never silently replace a built-in. Lookups of an unknown name list the known ones.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar
from .errors import InvalidInput

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what                 # "compression method", "calibration source", ...
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise InvalidInput(f"{self.what} {name!r} registered twice: {self._items[name]!r} and {item!r}; "
                             "choose another name")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        """Drop a registration (tests register throwaway plugins and clean up after themselves)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise InvalidInput(f"unknown {self.what} {name!r}; known: {', '.join(self._items)}")
        return self._items[name]

    def find(self, name: str) -> T | None:
        """The thing registered under ``name``, or None (for callers that fall back to something else)."""
        return self._items.get(name)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()
