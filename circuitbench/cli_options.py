"""How the CLI declares what it parses, so that a verb decides nothing the library does not know:

- `option(Model, "field", "--flag")`: a typer option whose default and help are the pydantic
  field's (its default and description), so a default lives in one place, the library's model;
- `App`: a typer app whose --help shows no value type beside flags (they take none), by its own
  command and group classes (nothing of typer is patched);
- `int_or_auto`: the parser of options that take a positive integer or 'auto' (--batch-size);
- `byte_size`: the parser of memory sizes such as 4GB, 512MB, 1.5GiB (--max-memory).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from typer.core import TyperCommand, TyperGroup

from circuitbench.errors import CircuitbenchError
from circuitbench.specs.byte_size import parse_byte_size

_FIELD_DEFAULT: Any = object()


def field_help(model: type[BaseModel], field: str) -> str:
    """A field's description as --help text: a sentence (a full stop last; a capital first unless it
    starts with a value, as in "auto | cpu" or "all: ...")."""
    text = (model.model_fields[field].description or "").strip()
    if not text:
        raise ValueError(f"{model.__name__}.{field} has no description: give the field one (it is the option's help)")
    first, _, rest = text.partition(" ")
    if not (first.endswith(":") or rest.startswith("| ")):
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def field_default(model: type[BaseModel], field: str) -> Any:
    """A field's default; `...` (required) when it has none."""
    info = model.model_fields[field]
    if info.default is PydanticUndefined and info.default_factory is None:
        return ...
    return info.get_default(call_default_factory=True)


def option(model: type[BaseModel], field: str, *flags: str, default: Any = _FIELD_DEFAULT, **kwargs: Any) -> Any:
    """A typer option for `model.field` under `flags`: its help the field's description, its
    default the field's unless `default` is given (e.g. None where None means "the preset's")."""
    return typer.Option(field_default(model, field) if default is _FIELD_DEFAULT else default, *flags,
                        help=field_help(model, field), **kwargs)


def int_or_auto(flag: str) -> Callable[[str], int | str]:
    """A parser for `flag`: 'auto' or an integer (its range is the model's to check)."""

    def parse(value: str) -> int | str:
        if value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            raise CircuitbenchError(f"{flag} {value!r}: expected a positive integer or 'auto'.") from None

    return parse


def byte_size(flag: str) -> Callable[[str], int]:
    """A parser for `flag`: a memory size ("4GB", "512MB", "1.5GiB") in bytes; one clear error otherwise."""

    def parse(value: str) -> int:
        return parse_byte_size(value, flag)

    return parse


def _without_flag_types(params: list[Any]) -> None:
    """A flag takes no value: show no type (<bool>) beside it in --help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _FlagsWithoutTypes:
    """Mixed into typer's command classes: --help shows flags (--help among them) without a value type."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _without_flag_types(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        help_option = super().get_help_option(ctx)  # type: ignore[misc]
        _without_flag_types([help_option] if help_option is not None else [])
        return help_option


class Command(_FlagsWithoutTypes, TyperCommand):
    """A command whose --help shows flags without a value type."""


class Group(_FlagsWithoutTypes, TyperGroup):
    """A command group whose --help shows flags (--help, --version) without a value type."""


class App(typer.Typer):
    """A typer app of `Command`s in a `Group`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return super().command(*args, cls=kwargs.pop("cls", Command), **kwargs)
