"""One generic registry (generators, metrics, methods, overlap metrics) and plugin loading.

Built-in entries register exactly as third-party plugins do: a registry names the modules that
register its built-ins and imports them on first lookup, then every plugin of the
`circuitbench.plugins` entry-point group; `load_plugins` adds modules or files given by
`--plugin`. Names are looked up when a spec is validated, never snapshotted at import.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    except SystemExit as e:  # a module that exits at import must not end the process (or the grid) silently
        raise CircuitbenchError(f"Importing '{implementation}': module {module} called {exit_call(e)}; a plugin "
                                "must not exit (raise an exception to report a problem).") from None


class Registry(Generic[T]):
    """Maps snake_case ids to entries; `kind` names what is registered in error messages."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtins = builtins
        self._builtins_loaded = False
        self._items: dict[str, T] = {}
        self._origins: dict[str, _Origin] = {}  # plugin entries: the module that registered each
        self._codes: dict[str, dict[str, str | None]] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._items:
            raise CircuitbenchError(
                f"{self.kind} '{name}' is registered twice: pick another name for your plugin's {self.kind}.")
        self._items[name] = entry
        if (origin := _registering_module()) is not None:
            self._origins[name] = origin
        return entry

    def plugin_code(self, name: str) -> dict[str, str | None] | None:
        """What identifies a plugin entry's code (None for a built-in): the module that registered
        it, its file, the version of the distribution providing it, and the sha256 of the source of
        that module and of the modules its implementation lives in (results.schema.PluginCode).
        Computed once per process: the code that runs is the code that was imported."""
        self._load()
        if name not in self._origins:
            return None
        if name not in self._codes:
            self._codes[name] = _plugin_code(self._origins[name], self._items[name])
        return self._codes[name]

    def plugin_names(self) -> list[str]:
        """The entries registered by plugins (not built in)."""
        self._load()
        return sorted(self._origins)

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


def exit_call(e: SystemExit) -> str:
    """How code exited, as it would be written: sys.exit(3), sys.exit('bye'), sys.exit()."""
    return f"sys.exit({'' if e.code is None else repr(e.code)})"


class PluginExit(RuntimeError):
    """Code run inside a unit (a plugin's metric, method or generator) called sys.exit: the unit
    fails with this (a crash, traceback kept) and the grid goes on, instead of the process ending."""


def entry_label(kind: str, name: str, implementation: object) -> str:
    """"plugin method 'x'" for a plugin's entry, "method 'x'" for a built-in one."""
    module = (implementation.partition(":")[0] if isinstance(implementation, str)
              else getattr(implementation, "__module__", None) or "")
    builtin = module == "circuitbench" or module.startswith("circuitbench.")
    return f"{kind} '{name}'" if builtin else f"plugin {kind} '{name}'"


@contextmanager
def exits_as_errors(who: str) -> Iterator[None]:
    """Run code inside a unit: a SystemExit raised there (by `who`, e.g. entry_label(...)) becomes
    PluginExit naming it and the exit call, so the unit records it and the grid goes on.
    KeyboardInterrupt and Interrupted pass through and stop the grid."""
    try:
        yield
    except SystemExit as e:
        raise PluginExit(f"{who} called {exit_call(e)}; plugin code must raise an exception instead of exiting "
                         "(the unit failed, the grid went on)") from e


def _import_plugin(name: str, load, origin: str) -> None:
    if name in _plugin_modules:
        return
    try:
        load()
    except CircuitbenchError:
        raise
    except Exception as e:  # a plugin's own bug: name it, without our traceback
        raise CircuitbenchError(f"Plugin {name} ({origin}) failed to load: {type(e).__name__}: {e}") from None
    except SystemExit as e:  # any code, 0 too: an exiting plugin registered nothing and must not end the command
        raise CircuitbenchError(f"Plugin {name} ({origin}) called {exit_call(e)} while loading; a plugin must not "
                                "exit (raise an exception to report a problem).") from None
    _plugin_modules.add(name)


def _import_file(path: Path) -> None:
    module_name = f"circuitbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CircuitbenchError(f"--plugin {path}: not an importable Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)  # a half-imported plugin is no module
        raise


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


# --- plugin identity: which module registered an entry, and a hash of its code -----------------

# Modules that carry a registration through to a registry; the registrant is the first caller outside them.
_REGISTERING = {__name__, "circuitbench.plugins", "circuitbench.specs.registries"}


@dataclass(frozen=True)
class _Origin:
    module: str
    file: str | None


def _is_builtin(module: str) -> bool:
    return module == "circuitbench" or module.startswith("circuitbench.")


def _registering_module() -> _Origin | None:
    """The module whose code registers an entry (a plugin module, a --plugin file, a script); None
    for circuitbench's own built-ins."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in _REGISTERING:
        frame = frame.f_back
    if frame is None:
        return None
    module = str(frame.f_globals.get("__name__", "?"))
    return None if _is_builtin(module) else _Origin(module, frame.f_globals.get("__file__"))


def _module_file(module: str) -> str | None:
    loaded = sys.modules.get(module)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _version(module: str) -> str | None:
    """The version of the installed distribution providing `module` (None: not installed, e.g. a file)."""
    for dist in _distributions().get(module.split(".")[0], []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _plugin_code(origin: _Origin, entry: object) -> dict[str, str | None]:
    """sha256 (16 hex digits) of the registering module's source and of the modules the entry's
    implementation lives in (callables, "module:attribute" references, option and params models);
    source defined where there is no file (a notebook cell) is hashed from the function itself."""
    parts = [entry, *(getattr(entry, a, None) for a in ("fn", "generate", "params", "answers_of", "options"))]
    files: dict[str, str | None] = {origin.module: origin.file}
    sources: list[str] = []
    for part in parts:
        if part is None:
            continue
        module = part.partition(":")[0] if isinstance(part, str) else getattr(part, "__module__", None)
        if not module or _is_builtin(module):
            continue
        files.setdefault(module, _module_file(module))
        if files[module] is None and callable(part) and not isinstance(part, str):
            try:
                sources.append(inspect.getsource(part))
            except (OSError, TypeError):
                pass
    h = hashlib.sha256()
    found = False
    for module, file in sorted(files.items()):
        try:
            source = Path(file).read_bytes() if file is not None else None
        except OSError:  # gone or unreadable since it was imported: identified by the rest
            source = None
        if source is not None:
            h.update(f"{module}:".encode() + source + b";")
            found = True
    for text in sources:
        h.update(text.encode())
        found = True
    return {"module": origin.module, "file": origin.file, "version": _version(origin.module),
            "code_sha256": h.hexdigest()[:16] if found else None}
