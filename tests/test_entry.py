"""circuitbench/entry.py: how a command ends. (Exit codes of real commands: tests/test_cli.py and
tests/test_bad_inputs.py.)"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import typer

from circuitbench.entry import exit_for_failures


def _outcome(failed: bool, user_error: bool = True) -> SimpleNamespace:
    error = SimpleNamespace(user_error=user_error) if failed else None
    return SimpleNamespace(failed=failed, result=SimpleNamespace(error=error))


def test_failed_units_exit_2_when_all_were_user_mistakes_else_1():
    exit_for_failures([_outcome(False), _outcome(False)])  # nothing failed: no exit
    with pytest.raises(typer.Exit) as stop:
        exit_for_failures([_outcome(False), _outcome(True)])
    assert stop.value.exit_code == 2
    with pytest.raises(typer.Exit) as stop:
        exit_for_failures([_outcome(True), _outcome(True, user_error=False)])
    assert stop.value.exit_code == 1
