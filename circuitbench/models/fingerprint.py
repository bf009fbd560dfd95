"""What identifies a loaded model's weights beyond its name: the part of a cache key that must
change whenever the numbers could (see activation_cache.py)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from circuitbench.models.toy import MARKER, is_toy_checkpoint

if TYPE_CHECKING:
    from circuitbench.models.loading import LoadedModel

# Files of a local HF directory that hold or shape the weights; stat'ed, not read (they can be GBs).
LOCAL_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "config.json", "generation_config.json")


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def weights_fingerprint(model: "LoadedModel") -> str:
    """16 hex digits: toy checkpoints hash their weight bytes (small); local HF directories
    their weight files' names, sizes and mtimes; hub models the resolved commit; HF models also
    their full config (architecture of a random init); random init its seed."""
    h = hashlib.sha256()
    path = Path(model.source)
    if path.is_absolute() and path.is_dir():  # local sources are resolved paths; hub ids are relative
        if is_toy_checkpoint(path):
            for name in ("model.safetensors", MARKER):
                if (path / name).is_file():
                    _hash_file(h, path / name)
        else:
            for pattern in LOCAL_WEIGHT_PATTERNS:
                for file in sorted(path.glob(pattern)):
                    stat = file.stat()
                    h.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    config = getattr(getattr(model.bridge, "original_model", None), "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
        h.update(f"commit={getattr(config, '_commit_hash', None)}".encode())
    h.update(f"init={model.init};seed={model.init_seed}".encode())
    return h.hexdigest()[:16]
