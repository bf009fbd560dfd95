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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's (process-wide) intra-op thread count set to n within the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
