"""Where task specs and the model registry live, and loading them with clear errors.

Tasks come from the shipped `tasks/*.yaml` (repo root in a checkout, `circuitbench/_data/` in a
wheel) plus any `--include-path DIR`; later directories override earlier ones by task name.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from circuitbench.errors import CircuitbenchError, did_you_mean, format_validation_error
from circuitbench.specs.model import ModelSpec
from circuitbench.specs.task import TaskSpec

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # circuitbench/
log = logging.getLogger(__name__)


def data_dir() -> Path:
    """The folder holding `tasks/` and `models.yaml` (wheel first, then the source checkout)."""
    for candidate in (PACKAGE_DIR / "_data", PACKAGE_DIR.parent):
        if (candidate / "models.yaml").is_file() and (candidate / "tasks").is_dir():
            return candidate
    raise CircuitbenchError(
        f"Cannot find tasks/ and models.yaml next to {PACKAGE_DIR}: the installation is incomplete. "
        "Reinstall circuitbench."
    )


class UnreadableFile(ValueError):
    """A path that is no readable regular file; `reason` completes "<path> ..." ("is a directory")."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path, self.reason = path, reason


FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")
    return "is a directory" if kind == "a directory" else f"is not a regular file ({kind})"


def read_regular_file(path: Path) -> bytes:
    """The bytes of `path`, which must be a regular file once symlinks are followed: anything else
    (missing, a symlink loop, a directory, a FIFO, a device) raises UnreadableFile saying what it
    is. The type is checked before the file is opened, and again on the opened file (opened
    non-blocking), so a FIFO can never make a command wait forever."""
    try:
        mode = os.stat(path).st_mode
        if (why := _not_regular(mode)) is not None:
            raise UnreadableFile(path, why)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnreadableFile(path, "is a symlink loop (a link that leads back to itself): point it at a "
                                       "file") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise UnreadableFile(path, "not found") from None
        raise UnreadableFile(path, f"cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if (why := _not_regular(os.fstat(f.fileno()).st_mode)) is not None:  # replaced since the stat
            raise UnreadableFile(path, why)
        try:
            return f.read()
        except OSError as e:
            raise UnreadableFile(path, f"cannot be read ({e.strerror})") from None


def read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(read_regular_file(path))
    except yaml.YAMLError as e:
        raise CircuitbenchError(f"{path}: not valid YAML ({e}).") from None
    except UnreadableFile as e:
        raise CircuitbenchError(f"{e}.") from None


def load_task_file(path: Path) -> TaskSpec:
    """A task spec from its YAML file; its `name` must be the file's name (results are filed by it)."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise CircuitbenchError(f"{path}: a task spec must be a YAML mapping, got {type(raw).__name__}.")
    try:
        # Paths in the spec (a `file` generator's data) are relative to the task file's folder.
        spec = TaskSpec.model_validate(raw, context={"task_dir": path.resolve().parent})
    except ValidationError as e:
        raise CircuitbenchError(format_validation_error(e, str(path))) from None
    if spec.name != path.stem:
        raise CircuitbenchError(f"{path}: name '{spec.name}' must match the file name ('{path.stem}'): rename one "
                                "of them (results are filed under the name).")
    return spec


KNOWN_ANSWERS = "known_answers"  # tasks of the models with known circuits (the tracr zoo): by name, not in the suite


def task_files(include_paths: tuple[str, ...] = (), *, suite: bool = False) -> dict[str, Path]:
    """Task name (file stem) -> YAML path; every YAML is validated when loaded, none skipped.
    `suite`: only the suite's tasks (tasks/*.yaml and the --include-path directories).

    A task of an --include-path directory replaces a shipped task of the same name (said in the
    log); one name twice among the --include-path directories, or as .yaml beside .yml, is refused."""
    shipped = [data_dir() / "tasks"] + ([] if suite else [data_dir() / "tasks" / KNOWN_ANSWERS])
    found: dict[str, Path] = {}
    for d in [*shipped, *(Path(p) for p in include_paths)]:
        if not d.is_dir():
            raise CircuitbenchError(f"--include-path {d}: not a directory.")
        for path in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            earlier = found.get(path.stem)
            if earlier is not None and earlier.parent not in shipped:
                raise CircuitbenchError(f"Task '{path.stem}' is defined twice: {earlier} and {path}. Keep one.")
            if earlier is not None:
                log.info("task '%s' from %s replaces the shipped one", path.stem, path)
            found[path.stem] = path
    return found


def load_task(name_or_path: str, include_paths: tuple[str, ...] = ()) -> TaskSpec:
    """A task by name (from the catalog) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and os.path.lexists(path):  # a loop, a directory, a FIFO: said by read_yaml
        return load_task_file(path)
    files = task_files(include_paths)
    if name_or_path not in files:
        raise CircuitbenchError(
            f"Unknown task '{name_or_path}'.{did_you_mean(name_or_path, files)} "
            f"Known tasks: {', '.join(sorted(files))}. Run `circuitbench ls tasks`, or pass a YAML "
            "file or --include-path DIR."
        )
    return load_task_file(files[name_or_path])


SUITE = "suite"  # stands for every suite task in --task lists


def expand_task_names(names: list[str], include_paths: tuple[str, ...] = ()) -> list[str]:
    """Task names with 'suite' replaced by every suite task (tasks/*.yaml), in name order."""
    suite = sorted(task_files(include_paths, suite=True))
    return [t for name in names for t in (suite if name == SUITE else [name])]


def all_tasks(include_paths: tuple[str, ...] = ()) -> dict[str, TaskSpec]:
    return {name: load_task(name, include_paths) for name in task_files(include_paths)}


@lru_cache(maxsize=1)
def model_registry() -> dict[str, ModelSpec]:
    path = data_dir() / "models.yaml"
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise CircuitbenchError(f"{path}: expected a top-level 'models:' mapping.")
    out: dict[str, ModelSpec] = {}
    for name, entry in raw["models"].items():
        try:
            out[name] = ModelSpec.model_validate({"name": name, **entry})
        except ValidationError as e:
            raise CircuitbenchError(format_validation_error(e, f"{path} (model '{name}')")) from None
    return out
