"""One generic registry (generators, metrics, methods, overlap metrics) and plugin loading.

Built-in entries register exactly as third-party plugins do: a registry names the modules that
register its built-ins and imports them on first lookup, then every plugin of the
`circuitbench.plugins` entry-point group; `load_plugins` adds modules or files given by
`--plugin`. Names are looked up when a spec is validated, never snapshotted at import.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from circuitbench.errors import CircuitbenchError, did_you_mean

T = TypeVar("T")
ENTRY_POINT_GROUP = "circuitbench.plugins"
# An implementation: the object itself, or "package.module:attribute", imported on first use.
Implementation = T | str


def resolve(implementation: Implementation[T]) -> T:
    """The object an implementation names ("module:attribute" is imported once, then cached by Python)."""
    if not isinstance(implementation, str):
        return implementation
    module, _, attribute = implementation.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as e:
        raise CircuitbenchError(f"Cannot import '{implementation}' ({type(e).__name__}: {e}).") from None


class Registry(Generic[T]):
    """Maps snake_case ids to entries; `kind` names what is registered in error messages."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtins = builtins
        self._builtins_loaded = False
        self._items: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._items:
            raise CircuitbenchError(
                f"{self.kind} '{name}' is registered twice: pick another name for your plugin's {self.kind}.")
        self._items[name] = entry
        return entry

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise CircuitbenchError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, self._items)} "
                f"Known {self.kind}s: {', '.join(sorted(self._items))}."
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())


    def _load(self) -> None:
        """This registry's built-ins (first, so a plugin cannot take a built-in's name), then
        the entry-point plugins (once per process)."""
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtins:
                importlib.import_module(module)
        load_entry_point_plugins()


_entry_points_loaded = False
_plugin_modules: set[str] = set()


def load_entry_point_plugins() -> None:
    """Import every plugin of the `circuitbench.plugins` entry-point group, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _import_plugin(entry_point.value, lambda ep=entry_point: ep.load(), f"entry point '{entry_point.name}'")


def _import_plugin(name: str, load, origin: str) -> None:
    if name in _plugin_modules:
        return
    try:
        load()
    except CircuitbenchError:
        raise
    except Exception as e:  # a plugin's own bug: name it, without our traceback
        raise CircuitbenchError(f"Plugin {name} ({origin}) failed to load: {type(e).__name__}: {e}") from None
    _plugin_modules.add(name)


def _import_file(path: Path) -> None:
    module_name = f"circuitbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CircuitbenchError(f"--plugin {path}: not an importable Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def load_plugins(plugins: Iterable[str] = ()) -> None:
    """Load the entry-point plugins, then each of `plugins`: a module name (`my_pkg.circuits`)
    or a path to a .py file. Each is imported once per process."""
    load_entry_point_plugins()
    for plugin in plugins:
        path = Path(plugin)
        if plugin.endswith(".py"):
            if not path.is_file():
                raise CircuitbenchError(f"--plugin {plugin}: no such file.")
            _import_plugin(str(path.resolve()), lambda p=path: _import_file(p), "--plugin file")
        else:
            _import_plugin(plugin, lambda m=plugin: importlib.import_module(m), "--plugin module")


def loaded_plugins() -> list[str]:
    """The plugins imported so far (entry points and --plugin), for a result's provenance."""
    return sorted(_plugin_modules)
