"""What a run can check in about a second, before torch or any model library is imported: its
tasks load (unknown names and broken YAML said first, as the grid would) and each model resolves and
can be loaded from here (a hub model neither cached nor reachable fails with one message, before
anything is written). The grid checks the same again, and more, before any unit starts."""
from __future__ import annotations

from circuitbench.models.resolve import Init, check_models_available
from circuitbench.specs.catalog import expand_task_names, load_task


def preflight(tasks: list[str], models: list[str], init: Init, include_paths: tuple[str, ...] = ()) -> None:
    """Raise the first user mistake among `tasks` (names, 'suite', YAML paths) and `models`."""
    for name in expand_task_names(tasks, include_paths):
        load_task(name, include_paths)
    check_models_available(models, init)
