"""The path policy of every command that writes (DESIGN.md, Errors): nothing a user types may
replace what circuitbench did not write, or write outside the output it was given.

- One output file (`circuit export --out`, `recovery --markdown`, `schema --out`, `overlap --plot`,
  `dynamics --plot`): an existing file is replaced only when it is recognisably that command's own
  earlier output (`ours`), and never the command's own input; a committed file or anything inside
  the installed package (shipped checkpoints, task specs) only with --force.
- One output folder that receives several files (`leaderboard --out`, `report --out`, `train --out`):
  a folder that already holds files is written into only when it is recognisably that command's
  output (its marker), a folder of committed files or shipped checkpoints only with --force.
  Several files are first written into a staging folder inside the target and moved into place
  only when every one of them was written (`staged_output`): a full disk leaves no half board.
- Names that come from data (task names, model folder names) are one path component each, bounded
  in length, and the joined path must resolve inside the output root (`inside`).
"""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from circuitbench.errors import CircuitbenchError
from circuitbench.files import check_writable_dir, check_writable_file, write_atomic

PACKAGE_DIR = Path(__file__).resolve().parent  # the installed package: shipped zoo, task specs
NAME_MAX = 255  # bytes in one path component on every common file system
FIGURE_MARKER = "circuitbench-figure"  # written into the metadata of every figure circuitbench saves
HTML_GENERATOR = '<meta name="generator" content="circuitbench {what}">'


def resolved(path: Path, flag: str) -> Path:
    """`path` with `~` expanded and symlinks resolved; a symlink loop is a user error, not a traceback."""
    try:
        return path.expanduser().resolve()
    except (RuntimeError, OSError) as e:
        raise CircuitbenchError(f"{flag} {path}: cannot be resolved ({getattr(e, 'strerror', None) or e}; a symlink "
                                "loop?). Give another path.") from None


def path_component(name: str, what: str, reserve: int = 40) -> str:
    """`name` used as one file or folder name: not empty, not `.` or `..`, no separator, and short
    enough that the longest name derived from it (`reserve` more bytes: suffixes, temp names) fits."""
    if not name or name in (".", "..") or any(ch in name for ch in "/\\\0"):
        raise CircuitbenchError(f"{what} {name!r}: cannot name a file (empty, '.', '..' or a path separator). "
                                "Rename it.")
    if len(name.encode()) + reserve > NAME_MAX:
        raise CircuitbenchError(f"{what} {name[:40]!r}…: {len(name.encode())} bytes long; file names hold at most "
                                f"{NAME_MAX - reserve} here (with room for suffixes). Give it a shorter name.")
    return name


def inside(root: Path, *parts: str, what: str, reserve: int = 40) -> Path:
    """root/parts…, each part a checked name, refused when it would resolve outside root (a
    symlinked folder inside root that points elsewhere counts as outside)."""
    path = root.joinpath(*(path_component(p, what, reserve) for p in parts))
    top, target = resolved(root, what), resolved(path, what)
    if target != top and top not in target.parents:
        raise CircuitbenchError(f"{what} {'/'.join(parts)!r}: would be written to {target}, outside {root}. "
                                "Rename it, or remove the symlink that leads there.")
    return path


def is_shipped(path: Path) -> bool:
    """Inside the installed package (shipped checkpoints, task specs, the code itself)."""
    return path == PACKAGE_DIR or PACKAGE_DIR in path.parents


def is_committed_file(path: Path) -> bool:
    """A file a git checkout tracks (false outside a checkout or without git)."""
    if not path.is_file():
        return False
    try:
        listed = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", "--", path.name],
                                capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0


def check_output_file(path: Path, flag: str, *, force: bool, ours: Callable[[Path], bool], what: str,
                      inputs: Sequence[Path] = (), suffixes: Sequence[str] = ()) -> None:
    """Before any compute: `path` may be written. `what` names the output ("a graph file written by
    `circuitbench circuit export`"); `ours(existing)` says whether an existing file is one; `inputs`
    are the files the command reads (never replaced, whatever the flags)."""
    target = resolved(path, flag)
    for given in inputs:
        if resolved(given, flag) == target:
            raise CircuitbenchError(f"{flag} {path}: is this command's input; writing there would replace it. Give "
                                    "another path.")
    if suffixes and path.suffix.lower() not in suffixes:
        raise CircuitbenchError(f"{flag} {path}: the file type is taken from its suffix; give one of "
                                f"{', '.join(suffixes)}.")
    if target.is_dir():
        raise CircuitbenchError(f"{flag} {path}: is a directory; give a file path.")
    if target.exists() and not force:
        if is_shipped(target):
            raise CircuitbenchError(f"{flag} {path}: is a file shipped with circuitbench; writing there would replace "
                                    "it. Give another path, or pass --force to replace it.")
        if is_committed_file(target):
            raise CircuitbenchError(f"{flag} {path}: is a committed file; writing there would replace it. Give "
                                    "another path, or pass --force to regenerate it.")
        if not ours(target):
            raise CircuitbenchError(f"{flag} {path}: exists and is not {what}; writing there would replace it. Give "
                                    "another path, or pass --force to replace it.")
    check_writable_file(path, flag)


def check_output_dir(path: Path, flag: str, *, force: bool, ours: Callable[[Path], bool], what: str) -> None:
    """Before any compute: files may be written into folder `path` (it is missing, empty, or
    recognisably `what` by `ours(folder)`; committed or shipped folders only with --force)."""
    target = resolved(path, flag)
    if target.exists() and not target.is_dir():
        raise CircuitbenchError(f"{flag} {path}: is a file, not a directory. Give a directory.")
    if not force:
        if is_shipped(target):
            raise CircuitbenchError(f"{flag} {path}: is inside the installed circuitbench package (shipped "
                                    "checkpoints and specs); writing there would replace them. Give another "
                                    "directory, or pass --force to replace them.")
        refuse_overwriting(target, flag, force)
        if target.is_dir() and any(target.iterdir()) and not ours(target):
            raise CircuitbenchError(f"{flag} {path}: holds files and is not {what}; writing there could replace "
                                    "them. Give a new or empty directory, or pass --force to write into it.")
    check_writable_dir(path, flag)


def html_written_by(page: Path, what: str) -> bool:
    """Whether an HTML page carries circuitbench's generator tag for `what` (leaderboard, report)."""
    try:
        with page.open("r", encoding="utf-8", errors="replace") as f:
            return HTML_GENERATOR.format(what=what) in f.read(4096)
    except OSError:
        return False


def figure_written_by_us(path: Path) -> bool:
    """A PNG/SVG/PDF figure circuitbench saved (its metadata holds FIGURE_MARKER)."""
    try:
        if path.stat().st_size > 64 << 20:
            return False
        return FIGURE_MARKER.encode() in path.read_bytes()
    except OSError:
        return False


FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def check_figure_file(path: Path, flag: str, *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Before any compute: a figure (PNG, SVG or PDF by its suffix) may be drawn at `path` (see
    `check_output_file`; an existing file only if circuitbench drew it, else `force`)."""
    check_output_file(path, flag, force=force, ours=figure_written_by_us, inputs=inputs,
                      what="a figure circuitbench drew", suffixes=FIGURE_SUFFIXES)


def save_figure(fig: object, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically, marked as circuitbench's (so a later run may replace it)."""
    kind = path.suffix.lower().lstrip(".") or "png"
    key = "Software" if kind == "png" else "Creator"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=dpi, metadata={key: FIGURE_MARKER})  # type: ignore[attr-defined]
    write_atomic(path, buffer.getvalue())


@contextmanager
def staged_output(target: Path) -> Iterator[Path]:
    """A staging folder inside `target` to write every file into; when the block ends without an
    error each file is moved to the same place in `target` (a rename: nothing is half-written),
    and otherwise the staging folder is removed and `target` is left as it was."""
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".staging-"))
    try:
        yield staging
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            dest = target / file.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def published(files: Sequence[Path], staging: Path, target: Path) -> list[Path]:
    """Where files written under `staging` are once `staged_output` has moved them to `target`."""
    return [target / f.relative_to(staging) for f in files]


# What each command recognises as its own earlier output (an existing file or folder it may replace).
EXPORTED_BY = "circuitbench circuit export"
RECOVERY_HEADER = "<!-- written by circuitbench recovery -->"


def _json_object(path: Path) -> dict | None:
    import json

    try:
        if path.stat().st_size > 256 << 20:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_exported_graph(path: Path) -> bool:
    """A graph file `circuit export` wrote (not a result's edge-score sidecar, not a foreign graph)."""
    raw = _json_object(path)
    meta = raw.get("circuitbench") if raw else None
    return isinstance(meta, dict) and meta.get("written_by") == EXPORTED_BY


def is_recovery_markdown(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == RECOVERY_HEADER
    except OSError:
        return False


def is_result_schema(path: Path) -> bool:
    """The RunResult JSON schema `circuitbench schema` prints."""
    raw = _json_object(path)
    return bool(raw) and raw.get("title") == "RunResult" and "properties" in raw  # type: ignore[union-attr]


def is_dynamics_record(path: Path) -> bool:
    raw = _json_object(path)
    return bool(raw) and {"steps", "phase_change"} <= set(raw)  # type: ignore[arg-type]


def is_leaderboard_dir(folder: Path) -> bool:
    """A folder `leaderboard` wrote: the task board (index.html) or the method board (methods.html)."""
    return html_written_by(folder / "index.html", "leaderboard") or html_written_by(folder / "methods.html",
                                                                                     "leaderboard")


def is_report_dir(folder: Path) -> bool:
    return html_written_by(folder / "report.html", "report")


def is_checkpoint_dir(folder: Path) -> bool:
    """A folder `train` or `train-zoo` wrote: a toy checkpoint (its marker file) or a training log."""
    return (folder / "circuitbench_toy.json").is_file() or (folder / "training_log.json").is_file()


def check_checkpoint_dir(path: Path, flag: str, *, force: bool) -> None:
    """Before training: a checkpoint may be written into folder `path` (see `check_output_dir`: missing,
    empty or an earlier checkpoint folder, else `force`)."""
    check_output_dir(path, flag, force=force, ours=is_checkpoint_dir,
                     what="a checkpoint folder `circuitbench train` wrote")


# --- folders of committed files, shipped checkpoints --------------------------------------------

SHIPPED_ZOO = PACKAGE_DIR / "zoo"  # checkpoints shipped with the package


def tracked_files(folder: Path) -> list[str]:
    """Files under `folder` that a git checkout tracks (committed files), relative to it; none
    outside a checkout or without git."""
    if not folder.is_dir():
        return []
    try:
        listed = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--", "."], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [name for name in listed.stdout.split("\0") if name] if listed.returncode == 0 else []


def refuse_overwriting(folder: Path, flag: str, force: bool) -> None:
    """Before any compute: refuse to write into a folder of shipped checkpoints or one holding
    committed files, unless --force (regenerating them on purpose)."""
    if force:
        return
    try:
        resolved = folder.expanduser().resolve()
    except (RuntimeError, OSError):  # a symlink loop: check_writable_dir names it
        return
    if resolved == SHIPPED_ZOO or SHIPPED_ZOO in resolved.parents:
        raise CircuitbenchError(f"{flag} {folder}: holds the checkpoints shipped with circuitbench; writing there "
                                "would replace them. Give another directory, or pass --force to replace them.")
    committed = tracked_files(folder)
    if committed:
        shown = ", ".join(sorted(committed)[:4]) + (", …" if len(committed) > 4 else "")
        raise CircuitbenchError(f"{flag} {folder}: holds {len(committed)} committed files ({shown}); writing there "
                                "would overwrite them. Give another directory, or pass --force to regenerate them.")


# --- replacing a whole output folder (import-tracr --force) ----------------------------------

T = TypeVar("T")


def never_replaced(path: Path) -> str | None:
    """Why the resolved folder `path` may never be replaced or removed, whatever the flags (the file
    system root, the working directory or an ancestor of it, the home folder or an ancestor of it);
    None when it may be."""
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:  # the working directory was removed
        cwd = None
    try:
        home: Path | None = Path.home().resolve()  # Path.home reads $HOME first
    except (RuntimeError, KeyError, OSError):  # no HOME and no password entry
        home = None
    if path == Path(path.anchor):
        return "the file system root"
    if cwd is not None and path == cwd:
        return "the working directory"
    if cwd is not None and path in cwd.parents:
        return "an ancestor of the working directory"
    if home is not None and path == home:
        return "your home folder"
    if home is not None and path in home.parents:
        return "an ancestor of your home folder"
    return None


def check_replaceable_dir(target: Path, flag: str, *, force: bool, not_own_output: Callable[[Path], str | None],
                          what: str) -> Path:
    """Before any compute: the folder `target` (`~` expanded, symlinks resolved) may be replaced
    as a whole. It is missing or empty; or, with `force`, it is `what` (`not_own_output(folder)`
    gives the reason it is not, None when it is). Never the root, the working directory, the home
    folder or an ancestor of either, whatever `force`. Returns the resolved target."""
    try:
        resolved = target.expanduser().resolve()
    except (RuntimeError, OSError) as e:
        raise CircuitbenchError(f"{flag} {target}: cannot be resolved ({getattr(e, 'strerror', None) or e}; a symlink "
                                "loop?). Give another folder.") from None
    shown = f"{target}" + (f" ({resolved})" if str(resolved) != str(target) else "")
    reason = never_replaced(resolved)
    if reason:
        raise CircuitbenchError(f"{flag} {shown}: is {reason}; it is never replaced, with or without --force. Name a "
                                f"new folder for the output, e.g. {flag} {resolved.name or 'out'}-new.")
    if resolved.exists() and not resolved.is_dir():
        raise CircuitbenchError(f"{flag} {shown}: is a file, not a directory. Give a folder path.")
    try:
        occupied = resolved.is_dir() and any(resolved.iterdir())
    except OSError as e:
        raise CircuitbenchError(f"{flag} {shown}: cannot be read ({e.strerror or e}). Give another folder.") from None
    if occupied and not force:
        held = ""
        if resolved == SHIPPED_ZOO or SHIPPED_ZOO in resolved.parents:
            held = " (it holds checkpoints shipped with circuitbench)"
        elif committed := tracked_files(resolved):
            held = f" (it holds {len(committed)} committed files)"
        raise CircuitbenchError(f"{flag} {shown}: exists and is not empty{held}. Give a new or empty folder, or pass "
                                f"--force to replace it if it is {what}.")
    if occupied:
        why = not_own_output(resolved)
        if why:
            raise CircuitbenchError(f"{flag} {shown}: not replaced, even with --force: it is not {what} ({why}), and "
                                    "--force only replaces such a folder. Give a new or empty folder, or move its "
                                    "files elsewhere first.")
    return resolved


def replace_dir_staged(target: Path, build: Callable[[Path], T], not_own_output: Callable[[Path], str | None],
                       flag: str, *, force: bool, what: str) -> T:
    """Build a folder with `build(staging)` and put it at `target` only once it is complete.

    `target` is checked first (`check_replaceable_dir`: missing, empty, or with `force` recognisably
    `what`; never the root, the working directory, home or their ancestors). The staging folder
    sits next to the target under a short hidden name (`.<hash8>.<random>.staging`) and gets the
    mode any new folder gets (0777 less the umask). When `build` returns, the target is checked
    again, moved aside (`.<hash8>.<random>.trash`), the staging folder renamed to the target, then
    the old folder removed; if the rename fails the old folder is put back. If `build` fails, the
    staging folder (and any parent folder made for it) is removed and the target is untouched."""
    resolved = check_replaceable_dir(target, flag, force=force, not_own_output=not_own_output, what=what)
    parent = resolved.parent
    made = [p for p in [parent, *parent.parents] if not p.exists()]  # deepest first
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    token = secrets.token_hex(3)
    staging, trash = parent / f".{tag}.{token}.staging", parent / f".{tag}.{token}.trash"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as e:
        _remove_made(made)
        raise CircuitbenchError(f"{flag} {target}: cannot make a folder in {parent} ({e.strerror or e}). Give a "
                                "writable location.") from None
    try:
        result = build(staging)
        # the target may have changed during the build: check it again just before replacing it
        check_replaceable_dir(resolved, flag, force=force, not_own_output=not_own_output, what=what)
        replacing = resolved.exists()
        _swap_in(staging, resolved, trash if replacing else None, f"{flag} {target}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_made(made)
        raise
    if replacing:
        shutil.rmtree(trash, ignore_errors=True)
    return result


def _swap_in(staging: Path, target: Path, trash: Path | None, what: str) -> None:
    """Rename `staging` to `target`, first moving an existing target to `trash`; on failure the
    old target is put back (or, if even that fails, the message says where it is)."""
    try:
        if trash is not None:
            os.rename(target, trash)
    except OSError as e:
        raise CircuitbenchError(f"{what}: could not move the old folder aside ({e.strerror or e}); it is as it "
                                "was.") from None
    try:
        os.rename(staging, target)
    except BaseException as e:
        if trash is not None:
            try:
                os.rename(trash, target)
            except OSError:
                raise CircuitbenchError(f"{what}: could not move the new folder into place, nor the old one back; "
                                        f"the old folder is at {trash}.") from None
        if isinstance(e, OSError):
            raise CircuitbenchError(f"{what}: could not move the new folder into place ({e.strerror or e}); the "
                                    "old one is as it was.") from None
        raise


def _remove_made(folders: list[Path]) -> None:
    """Remove folders made for an output that was not written (deepest first, only if empty)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break
