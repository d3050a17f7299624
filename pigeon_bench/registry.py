"""One small registry class; each kind (scenarios, generators, backbones, metrics) has its own instance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from pigeon_bench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. Unknown names give a one-line UserError listing what is known.

    ``entry_point_group`` lets third-party packages register objects without touching this repo;
    ``builtin_modules`` are imported lazily so that their ``@register`` decorators run.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_modules = builtin_modules
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import importlib

        for module in self.builtin_modules:
            importlib.import_module(module)
        if self.entry_point_group:
            for ep in entry_points(group=self.entry_point_group):
                if ep.name in self._items:
                    continue
                loaded = ep.load()
                # A module entry point registers itself on import; an object entry point is registered here.
                if ep.name not in self._items and not hasattr(loaded, "__path__") and not _is_module(loaded):
                    self._items[ep.name] = loaded

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise UserError(f"unknown {self.kind} {name!r} (known: {known})")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _is_module(obj: object) -> bool:
    import types

    return isinstance(obj, types.ModuleType)
