"""How a command ends: `run_app(app)` runs a typer app the way the `circuitbench` console script
does. A user mistake prints one message and exits 2, without a traceback; a usage error (bad option
value, unknown option) exits 2 with click's message; Ctrl-C exits 130 and SIGTERM 143, each saying
what finished (see DESIGN.md, Errors); a grid whose units failed exits 2 or 1 (`exit_for_failures`)."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape

from circuitbench.errors import CircuitbenchError, Interrupted
from circuitbench.models.library_noise import quiet_model_libraries
from circuitbench.tables.console import err_console, plain, show_logs

if TYPE_CHECKING:
    from circuitbench.pipeline.grid import UnitOutcome


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the work like Ctrl-C does (finished units kept), with exit code 143."""
    raise Interrupted("SIGTERM", 128 + signal.SIGTERM)


def run_app(app: typer.Typer) -> NoReturn:
    """Run `app` on sys.argv and exit with its code (see the module docstring)."""
    quiet_model_libraries()  # third-party log lines and warnings are not for a CLI user
    show_logs()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except CircuitbenchError as e:
        # Data-parallel processes meet the same mistakes together (see parallel.py): one says it.
        if int(os.environ.get("RANK", "0")) == 0:  # the launcher's main process
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Interrupted as stop:
        plain(f"interrupted ({stop.signal_name})" + (f": {stop.detail}" if stop.detail else "."), stderr=True)
        sys.exit(stop.exit_code)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except (KeyboardInterrupt, typer.Abort, *abort_types()):
        plain("interrupted (SIGINT).", stderr=True)
        sys.exit(130)
    except Exception as e:  # usage errors (bad option value, unknown option) land here in standalone_mode=False
        if isinstance(e, usage_error_types()):
            e.show()  # type: ignore[attr-defined]
            sys.exit(2)
        raise
    if code == 130:  # typer turns Ctrl-C outside the grid into a returned 130
        plain("interrupted (SIGINT).", stderr=True)
    sys.exit(code if isinstance(code, int) else 0)


def exit_for_failures(outcomes: Sequence[UnitOutcome]) -> None:
    """Exit non-zero when units of a grid failed: 2 when every failure was a user mistake, else 1."""
    errors = [o.result.error for o in outcomes if o.failed]
    if errors:
        raise typer.Exit(2 if all(e.user_error for e in errors) else 1)  # type: ignore[union-attr]


def usage_error_types() -> tuple[type[Exception], ...]:
    """click's ClickException and, for typer versions that vendor click (0.2x), typer's copy of it:
    `--steps abc` raises the latter, which is no click.ClickException."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        kinds.append(VendoredClickException)
    except ImportError:
        pass
    return tuple(kinds)


def abort_types() -> tuple[type[BaseException], ...]:
    """click's Abort (Ctrl-C inside a command) and typer's vendored copy of it."""
    import click

    kinds: list[type[BaseException]] = [click.exceptions.Abort]
    try:
        from typer._click.exceptions import Abort as VendoredAbort

        kinds.append(VendoredAbort)
    except ImportError:
        pass
    return tuple(kinds)
