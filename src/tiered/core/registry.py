"""Registries of pluggable kinds: model kinds (``tiered.models``) and rule kinds (``tiered.rules``).

A kind is found, in this order, among:

1. kinds registered in code (``register_model``, or defining a rule class with a ``kind``);
2. kinds declared lazily as ``"module:object"`` (:mod:`tiered.plugins` declares tiered's
   own kinds this way): the module is imported on first use;
3. Python entry points of the registry's group, which is how another package adds a kind
   without editing tiered::

       # the plugin's pyproject.toml
       [project.entry-points."tiered.models"]
       my_model = "my_package.models:build_my_model"    # a factory (spec, ctx) -> Model
       [project.entry-points."tiered.rules"]
       my_rule = "my_package.rules:MyRule"              # a DeferralRule subclass

An entry point names the object itself (or a module that registers the kind when it is
imported); a kind declared by two installed packages is refused, naming both. Entry points
are read when a kind is not found otherwise (and when listing kinds), so a package installed
while the process runs is seen on the next lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Generic, TypeVar

from tiered.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Kinds of one sort (``what``: "model" or "rule"), with entry-point group ``group``."""

    def __init__(self, what: str, group: str, check: Callable[[str, object], T]) -> None:
        self.what = what
        self.group = group
        self._check = check  # validates a loaded object (raises TypeError) and returns it
        self._loaded: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # kind -> "module:object", imported on first use

    def register(self, kind: str, obj: T) -> None:
        """Register ``obj`` as ``kind`` (replacing an earlier registration)."""
        self._loaded[kind] = obj

    def register_lazy(self, kind: str, target: str) -> None:
        """Declare ``kind`` as ``target`` ("module:object"), imported on first lookup; a
        bare module name means importing the module registers the kind."""
        self._lazy[kind] = target

    def kinds(self) -> list[str]:
        """Every kind known, without importing any of them."""
        return sorted({*self._loaded, *self._lazy, *self._entry_points()})

    def get(self, kind: str) -> T | None:
        """The object registered as ``kind`` (importing its module first), else None."""
        found = self._loaded.get(kind)
        if found is not None:
            return found
        if kind in self._lazy:
            return self._load(kind, self._lazy[kind], source=self._lazy[kind])
        declared = self._entry_points().get(kind)
        if not declared:
            return None
        if len(declared) > 1:
            raise ConfigError(
                f"{self.what} kind '{kind}' is declared by several installed packages "
                f"({', '.join(sorted(dist for dist, _ in declared))}); uninstall all but one",
                field=f"{self.what}.kind",
            )
        dist, target = declared[0]
        return self._load(kind, target, source=f"package {dist} ({target})")

    def _entry_points(self) -> dict[str, list[tuple[str, str]]]:
        """Kinds declared through the entry-point group: kind -> [(distribution, target)]."""
        found: dict[str, list[tuple[str, str]]] = {}
        for ep in entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "?"
            targets = found.setdefault(ep.name, [])
            if (dist, ep.value) not in targets:  # a distribution seen twice on sys.path
                targets.append((dist, ep.value))
        return found

    def _load(self, kind: str, target: str, source: str) -> T:
        module, _, attr = target.partition(":")
        try:
            obj: object = importlib.import_module(module.strip())
            for name in attr.strip().split(".") if attr.strip() else ():
                obj = getattr(obj, name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{self.what} kind '{kind}' comes from {source}, which failed to load: {exc}",
                field=f"{self.what}.kind",
            ) from exc
        registered = self._loaded.get(kind)
        if isinstance(obj, ModuleType):
            if registered is None:
                raise ConfigError(
                    f"{self.what} kind '{kind}' should be registered by {source}, but "
                    "importing it did not register it",
                    field=f"{self.what}.kind",
                )
            return registered
        try:
            checked = self._check(kind, obj)
        except TypeError as exc:
            raise ConfigError(
                f"{self.what} kind '{kind}' from {source}: {exc}", field=f"{self.what}.kind"
            ) from exc
        self._loaded[kind] = checked
        return checked


__all__ = ["Registry"]
