"""What identifies a model's weights beyond its name, computed from its files and config without
loading it: the part of a result's identity (resume) and a cache key (activation cache) that must
change whenever the numbers could.

Local weights are identified by their content. Hashing a 10 GB checkpoint takes a while, so the
sha256 of each file is remembered by (resolved path, size, mtime, inode, ctime, device): in
process always, and across runs in small records under a folder the caller names (the
activation cache root, when the cache is on). Any change of those recomputes it; a file changed
within the last seconds is not remembered (a write in the same clock tick would keep its stamp)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import AutoConfig

from circuitbench.files import hash_file_into, sha256_of_file, write_atomic
from circuitbench.models.resolve import Init, ModelRef
from circuitbench.models.tl_format import config_file, weights_file
from circuitbench.models.toy import MARKER

# Files of a local HF directory that hold or shape the weights, and its tokenizer: hashed by content.
LOCAL_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json", "config.json",
                         "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                         "merges.txt", "special_tokens_map.json", "added_tokens.json", "tokenizer.model")
# A file whose mtime or ctime is this recent is hashed but its digest not remembered.
RACY_SECONDS = 2.0
_memo: dict[str, tuple[tuple[int, ...], str]] = {}  # resolved path -> (stamp, sha256), this process


class DigestRecord(BaseModel):
    """One remembered file digest (a JSON file in the memo folder)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the resolved path of the file")
    stamp: tuple[int, ...] = Field(description="size, mtime_ns, inode, ctime_ns, device when it was hashed")
    sha256: str = Field(description="sha256 of the file's bytes")


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev


def file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of the file's bytes, remembered by its stamp (size, mtime, inode, ctime, device): in
    this process, and as one small record per file in `memo_dir` when one is given (nothing is
    written anywhere otherwise)."""
    resolved = path.resolve()
    key = str(resolved)
    stamp = _stamp(resolved.stat())
    known = _memo.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    record_path = memo_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json" if memo_dir else None
    if record_path is not None:
        try:
            record = DigestRecord.model_validate_json(record_path.read_bytes())
            if record.path == key and record.stamp == stamp:
                _memo[key] = (stamp, record.sha256)
                return record.sha256
        except (OSError, ValueError, ValidationError):
            pass  # none yet, or unreadable: hashed again and rewritten
    digest = sha256_of_file(resolved)
    after = _stamp(resolved.stat())
    recent = time.time_ns() - max(stamp[1], stamp[3]) < RACY_SECONDS * 1e9
    if after != stamp or recent:  # changed while being read, or could still change within its stamp
        return digest
    _memo[key] = (stamp, digest)
    if record_path is not None:
        try:
            write_atomic(record_path, DigestRecord(path=key, stamp=stamp, sha256=digest).model_dump_json() + "\n")
        except OSError:
            pass  # remembering is an optimisation: the next run hashes again
    return digest


def _hub_config(ref: ModelRef, revision: str | None) -> str:
    """The cached hub config and the commit it resolved to (without network: what was cached)."""
    try:
        config = AutoConfig.from_pretrained(ref.location, revision=revision, local_files_only=True)
    except (OSError, ValueError):
        return f"uncached:{ref.location}@{revision}"
    return config.to_json_string(use_diff=False) + f"commit={getattr(config, '_commit_hash', None)}"


def weights_fingerprint(ref: ModelRef, init: Init, seed: int | None, memo_dir: Path | None = None) -> str:
    """16 hex digits: toy and TL-format checkpoints hash their weight bytes (small) and config;
    local HF directories the sha256 of each weight, config and tokenizer file (remembered per file,
    see file_digest; `memo_dir` keeps them across runs); hub models their cached config and commit;
    a random init the architecture it builds and its seed."""
    h = hashlib.sha256()
    path = Path(ref.location)
    if ref.kind == "toy":
        for name in ("model.safetensors", MARKER):
            if (path / name).is_file():
                hash_file_into(h, path / name)
    elif ref.kind == "tl":
        for file in (weights_file(path), config_file(path)):
            if file is not None:
                hash_file_into(h, file)
    elif ref.kind == "local_hf":
        files = sorted({file for pattern in LOCAL_WEIGHT_PATTERNS for file in path.glob(pattern) if file.is_file()})
        for file in files:
            h.update(f"{file.name}:{file_digest(file, memo_dir)};".encode())
    elif init == "random" and ref.spec is not None and ref.spec.hf_config is not None:
        h.update(json.dumps(ref.spec.hf_config, sort_keys=True).encode())  # the architecture --init random builds
    else:
        h.update(_hub_config(ref, ref.spec.revision if ref.spec else None).encode())
    h.update(f"init={init};seed={seed if init == 'random' else None}".encode())
    return h.hexdigest()[:16]
