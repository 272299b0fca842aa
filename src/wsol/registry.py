"""One generic registry for every pluggable kind (methods, extractors, datasets, backbones,
embedded sets, selection criteria).

A registry is filled two ways, both checked:

- **lazily**, from an explicit ``name -> "module:attr"`` table given at construction: the
  module is imported only when the name is first asked for, so importing a light module
  (``wsol.data.sample``, ``wsol --help``) stays light; a test resolves every entry so a
  wrong line fails CI, not a user's run;
- **eagerly**, by ``@REGISTRY.register("name")`` (or ``REGISTRY.add(name, obj)``) — used by
  the module the table points at, and by user code adding its own entries.

A duplicate name is rejected (a second object under a taken name would silently shadow the
first); an unknown name raises :class:`~wsol.errors.ConfigError` listing the valid
names. Adding a method, extractor or dataset means one file plus one table line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from wsol.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> T``. ``kind`` names the registry in messages (e.g. ``"method"``),
    ``field`` the config field that selects an entry (e.g. ``"model.method.name"``)."""

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None, field: str | None = None):
        self.kind = kind
        self.field = field or kind
        self._lazy: dict[str, str] = dict(lazy or {})
        self._items: dict[str, T] = {}

    # --- filling ----------------------------------------------------------------------
    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a second, different object under a taken name
        is an error (it would silently shadow the first)."""
        if not name:
            raise ValueError(f"{self.kind} registry: empty name for {obj!r}")
        have = self._items.get(name)
        if have is not None and have is not obj:
            raise ValueError(f"{self.kind} {name!r} registered twice ({_qualname(have)} and {_qualname(obj)})")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def remove(self, name: str) -> None:
        """Forget an eagerly added entry (user code and tests undoing a registration)."""
        if name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is a built-in table entry and cannot be removed")
        self._items.pop(name, None)

    # --- reading ----------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._lazy) | set(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str) -> T:
        """The entry ``name``, importing its module on first use."""
        if name not in self._items:
            target = self._lazy.get(name)
            if target is None:
                raise ConfigError(f"{self.field}: unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
            self._load(name, target)
        return self._items[name]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]

    def describe(self, name: str) -> str:
        """The entry's first docstring paragraph (its one-line description)."""
        obj = self.get(name)
        doc = getattr(obj, "description", None) or getattr(obj, "__doc__", None) or ""
        if not isinstance(doc, str):
            doc = ""
        return " ".join(doc.strip().split("\n\n")[0].split())

    def _load(self, name: str, target: str) -> None:
        module, _, attr = target.partition(":")
        mod = importlib.import_module(module)  # registration by decorator happens here
        if name not in self._items:
            obj = getattr(mod, attr, None)
            if obj is None:
                raise ConfigError(f"{self.kind} {name!r}: {target} does not exist (a wrong registry line)")
            self._items[name] = obj


def _qualname(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    return f"{mod}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"
