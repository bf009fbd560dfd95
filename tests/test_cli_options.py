"""circuitbench/cli_options.py: options declared from the library's pydantic fields (default and
help are the field's), the --batch-size parser, and an app whose --help shows no type beside flags."""
from __future__ import annotations

import pytest
import typer
from pydantic import BaseModel, Field

from circuitbench.circuits.overlap_settings import OverlapSettings
from circuitbench.cli_options import field_help, int_or_auto, option
from circuitbench.errors import CircuitbenchError
from circuitbench.specs.options import RunOptions
from circuitbench.training.config import NoiseConfig, ToyArch, TrainConfig

from helpers import cli


@pytest.mark.parametrize("model, field", [(RunOptions, "batch_size"), (RunOptions, "init"), (RunOptions, "cache"),
                                          (OverlapSettings, "permutations"), (OverlapSettings, "rbo_p"),
                                          (TrainConfig, "steps"), (TrainConfig, "lr"), (ToyArch, "n_layers")])
def test_an_option_has_the_fields_default_and_description(model, field):
    info = option(model, field, "--flag")
    assert info.default == model.model_fields[field].default
    assert info.help.rstrip(".").lower() == model.model_fields[field].description.rstrip(".").lower()


def test_a_required_field_is_a_required_option_and_a_default_can_be_given():
    assert option(TrainConfig, "tasks", "--task").default is ...
    assert option(NoiseConfig, "scale", "--noise-scale", default=None).default is None
    assert option(ToyArch, "n_heads", "--heads", default=None, min=1).min == 1


def test_help_is_a_sentence_and_keeps_a_leading_value_as_written():
    assert field_help(TrainConfig, "steps") == "Optimiser steps."
    assert field_help(RunOptions, "device") == "auto | cpu | cuda | cuda:N | mps."
    assert field_help(TrainConfig, "loss_positions").startswith("all: next-token loss")
    assert field_help(OverlapSettings, "bins") == OverlapSettings.model_fields["bins"].description


def test_a_field_without_description_is_refused():
    class Bare(BaseModel):
        n: int = Field(3)

    with pytest.raises(ValueError, match="Bare.n has no description"):
        option(Bare, "n", "--n")


def test_int_or_auto():
    parse = int_or_auto("--batch-size")
    assert parse("auto") == "auto" and parse("7") == 7 and parse(32) == 32
    with pytest.raises(CircuitbenchError, match="--batch-size 'lots': expected a positive integer or 'auto'"):
        parse("lots")


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():  # typer 0.2x vendors click: no click.Group
        yield from _commands(sub, (*path, name))


# (command, flag) -> the field whose default the app's option must have
FROM_FIELDS = [("run", "--batch-size", RunOptions, "batch_size"), ("run", "--device", RunOptions, "device"),
               ("run", "--init", RunOptions, "init"), ("run", "--cache", RunOptions, "cache"),
               ("compare", "--out", RunOptions, "out"), ("compare", "--permutations", OverlapSettings, "permutations"),
               ("overlap", "--null", OverlapSettings, "null"), ("overlap", "--top-n", OverlapSettings, "top_n"),
               ("train", "--steps", TrainConfig, "steps"), ("train", "--n-train", TrainConfig, "n_train"),
               ("train", "--induction-share", TrainConfig, "induction_share")]


def test_the_apps_options_carry_the_library_defaults():
    from circuitbench.cli import app

    commands = {" ".join(path): c for path, c in _commands(typer.main.get_command(app))}
    for name, flag, model, field in FROM_FIELDS:
        param = next(p for p in commands[name].params if flag in p.opts)
        assert param.default == model.model_fields[field].default, (name, flag)


def test_every_help_documents_every_option_and_shows_no_type_beside_flags(capsys):
    from circuitbench.cli import app

    commands = list(_commands(typer.main.get_command(app)))
    assert {" ".join(p) for p, _ in commands} >= {"", "run", "cache", "cache ls", "cache clear", "circuit export"}
    for path, command in commands:
        assert all((p.help or "").strip() for p in command.params if p.param_type_name == "option"), path
        code, out, _ = cli(capsys, *path, "--help")
        assert code == 0 and "--help" in out and "<bool>" not in out and "BOOLEAN" not in out, path
