"""What identifies a model's weights beyond its name, computed from its files and config without
loading it: the part of a result's identity (resume) and a cache key (activation cache) that must
change whenever the numbers could."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import AutoConfig

from circuitbench.models.resolve import Init, ModelRef
from circuitbench.models.tl_format import config_file, weights_file
from circuitbench.models.toy import MARKER

# Files of a local HF directory that hold or shape the weights; stat'ed, not read (they can be GBs).
LOCAL_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "config.json", "generation_config.json")


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _hub_config(ref: ModelRef, revision: str | None) -> str:
    """The cached hub config and the commit it resolved to (without network: what was cached)."""
    try:
        config = AutoConfig.from_pretrained(ref.location, revision=revision, local_files_only=True)
    except (OSError, ValueError):
        return f"uncached:{ref.location}@{revision}"
    return config.to_json_string(use_diff=False) + f"commit={getattr(config, '_commit_hash', None)}"


def weights_fingerprint(ref: ModelRef, init: Init, seed: int | None) -> str:
    """16 hex digits: toy and TL-format checkpoints hash their weight bytes (small) and config;
    local HF directories their weight files' names, sizes and mtimes and their config; hub models
    their cached config and commit; a random init the architecture it builds and its seed."""
    h = hashlib.sha256()
    path = Path(ref.location)
    if ref.kind == "toy":
        for name in ("model.safetensors", MARKER):
            if (path / name).is_file():
                _hash_file(h, path / name)
    elif ref.kind == "tl":
        for file in (weights_file(path), config_file(path)):
            if file is not None:
                _hash_file(h, file)
    elif ref.kind == "local_hf":
        for pattern in LOCAL_WEIGHT_PATTERNS:
            for file in sorted(path.glob(pattern)):
                stat = file.stat()
                h.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        h.update((path / "config.json").read_bytes())
    elif init == "random" and ref.spec is not None and ref.spec.hf_config is not None:
        h.update(json.dumps(ref.spec.hf_config, sort_keys=True).encode())  # the architecture --init random builds
    else:
        h.update(_hub_config(ref, ref.spec.revision if ref.spec else None).encode())
    h.update(f"init={init};seed={seed if init == 'random' else None}".encode())
    return h.hexdigest()[:16]
