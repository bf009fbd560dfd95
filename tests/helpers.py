"""Test helpers shared by several test folders (tests/ is on sys.path through its conftest)."""
from __future__ import annotations

import sys

from circuitbench.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    sys_argv = sys.argv
    sys.argv = ["circuitbench", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = sys_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err
