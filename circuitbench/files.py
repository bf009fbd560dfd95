"""Writing files so that nothing is ever half-written: a temp file in the same directory,
fsync, then rename over the target. Files get the mode any new file gets (0666 less the
umask), not the private 0600 of a temp file."""
from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from pathlib import Path

from circuitbench.errors import CircuitbenchError

CACHE_ENV = "CIRCUITBENCH_CACHE"


def default_cache_dir() -> Path:
    """Where the activation cache lives unless told: $CIRCUITBENCH_CACHE, else ~/.cache/circuitbench."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "circuitbench"


def expand_glob(pattern: str) -> list[str]:
    """A file argument: the path itself when it exists as given (`run[1].json` is a file, not a
    glob) or holds no glob character, else the files its glob matches, sorted (none: [])."""
    if Path(pattern).exists() or not any(ch in pattern for ch in "*?["):
        return [pattern]
    return sorted(glob.glob(pattern))


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` atomically (readers see the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name is bounded (a long final name must not make it too long for the file system)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
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


def hash_file_into(h: "hashlib._Hash", path: Path) -> None:
    """Feed a file's bytes to `h` in 1 MB chunks (weights can be GBs)."""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


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
