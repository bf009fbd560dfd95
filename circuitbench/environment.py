"""What software and machine a run used: package versions, the git commit of a source checkout,
peak memory, and torch's thread count (set per piece of work)."""
from __future__ import annotations

import importlib.metadata
import platform
import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
RUN_PACKAGES = ("circuitbench", "torch", "transformer-lens", "transformers", "accelerate")


def package_versions(packages: tuple[str, ...] = RUN_PACKAGES) -> dict[str, str]:
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_versions() -> dict[str, str]:
    """Python and the packages that shape a run's numbers."""
    return {"python": platform.python_version(), **package_versions()}


def git_commit() -> str | None:
    """The source checkout's commit (with '-dirty' for uncommitted changes); None when installed."""
    root = PACKAGE_DIR.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def peak_memory_mb(device: torch.device) -> float:
    """Process peak RSS (and the CUDA peak on a GPU), in MB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak = rss_kb / 1024
    if device.type == "cuda":
        peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
    return round(peak, 1)


# Below this many parameters a model is toy-sized: one thread is fastest. Its forwards are too
# small to split, and on a shared CPU extra threads wait on each other (measured: the suite on
# toy-tasks 176 s with torch's default threads, 16 s with one, identical numbers).
TOY_SIZED_PARAMS = 20_000_000
# Larger models get one thread per this many parameters, up to torch's default (every core): on 2
# busy cores GPT-2 small (124M) ran an IOI unit in 34 s with 1 thread and 81 s with 2.
PARAMS_PER_THREAD = 150_000_000


def threads_for(n_params: int | None, requested: int | None = None) -> int:
    """torch threads for a model of `n_params` parameters: `requested` (--threads) when given, 1
    for toy-sized models, else one per PARAMS_PER_THREAD parameters up to every core torch would
    use by default (unknown size: that default)."""
    if requested is not None:
        return requested
    if n_params is None:
        return DEFAULT_THREADS
    if n_params < TOY_SIZED_PARAMS:
        return 1
    return max(1, min(DEFAULT_THREADS, -(-n_params // PARAMS_PER_THREAD)))


def set_threads(n: int) -> None:
    """Set torch's intra-op thread count (inside a torch_threads block, which restores it)."""
    torch.set_num_threads(n)


def current_threads() -> int:
    """torch's intra-op thread count in effect (recorded in every result as run.threads)."""
    return torch.get_num_threads()


DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before any torch_threads block


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's (process-wide) intra-op thread count set to n within the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
