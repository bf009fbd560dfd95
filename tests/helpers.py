"""Test helpers shared by several test folders (tests/ is on sys.path through its conftest)."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def library_log(level: int = logging.INFO) -> Iterator[list[str]]:
    """The messages the library logs (circuitbench.*) inside the block, at `level` and above. Read on
    the "circuitbench" logger itself: after an in-process CLI call it no longer propagates to the root
    logger that pytest's caplog listens on."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("circuitbench"), Keep(level)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def with_undefined_faithfulness(result):  # RunResult -> RunResult (annotations would import the schema here)
    """The result as a model with no measurable effect would give it: faithfulness undefined, with the reason."""
    f = result.circuit.faithfulness.model_copy(update={
        "value": None, "cpr": None, "cmd": None, "curve": [], "by_ablation": {"mean_counterfactual": None},
        "undefined": "|m(M) − m(∅)| = 0.0003 is within noise", "gap_stderr": 0.002})
    candidates = [k.model_copy(update={"faithfulness": None}) for k in result.circuit.candidates]
    c = result.circuit.model_copy(update={"faithfulness": f, "candidates": candidates})
    return result.model_copy(update={"circuit": c})
