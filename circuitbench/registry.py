"""One generic registry for generators, metrics and methods: a dict with did-you-mean errors."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from circuitbench.errors import CircuitbenchError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps snake_case ids to objects; `kind` names what is registered in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise CircuitbenchError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, self._items)} "
                f"Known {self.kind}s: {', '.join(sorted(self._items))}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
