"""Writing files so that nothing is ever half-written: a temp file in the same directory,
fsync, then rename over the target. Files get the mode any new file gets (0666 less the
umask), not the private 0600 of a temp file."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from circuitbench.errors import CircuitbenchError


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` atomically (readers see the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make results private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_dir(path: Path, flag: str) -> None:
    """Before any compute: `path` is a directory files can be written in, or one that can be
    made. Probed by really writing (permissions, read-only file systems, /proc alike); folders
    made for the probe are removed again, so a refused run leaves nothing behind."""
    if path.exists() and not path.is_dir():
        raise CircuitbenchError(f"{flag} {path}: is a file, not a directory. Give a directory.")
    made = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".circuitbench-probe-"):
            pass
    except OSError as e:
        raise CircuitbenchError(
            f"{flag} {path}: cannot write there ({e.strerror or e}). Give a writable directory.") from None
    finally:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def check_writable_file(path: Path, flag: str) -> None:
    """Before any compute: a file can be written at `path` (its folder exists or can be made)."""
    if path.is_dir():
        raise CircuitbenchError(f"{flag} {path}: is a directory; give a file path.")
    check_writable_dir(path.parent if str(path.parent) else Path("."), flag)


SHIPPED_ZOO = Path(__file__).resolve().parent / "zoo"  # checkpoints shipped with the package


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
    resolved = folder.resolve()
    if resolved == SHIPPED_ZOO or SHIPPED_ZOO in resolved.parents:
        raise CircuitbenchError(f"{flag} {folder}: holds the checkpoints shipped with circuitbench; writing there "
                                "would replace them. Give another directory, or pass --force to replace them.")
    committed = tracked_files(folder)
    if committed:
        shown = ", ".join(sorted(committed)[:4]) + (", …" if len(committed) > 4 else "")
        raise CircuitbenchError(f"{flag} {folder}: holds {len(committed)} committed files ({shown}); writing there "
                                "would overwrite them. Give another directory, or pass --force to regenerate them.")
