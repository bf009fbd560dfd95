"""On-disk cache of a run unit's unpatched forwards, so that adding a method (or rerunning a
unit) does not recompute them.

What is stored, per key (model identity, init, dtype, device type, prompts and their tokens),
for the clean and the corrupted prompts separately:

- `<input>.metrics.safetensors`: per-prompt metric values [n], one tensor per metric id. These
  are what `evaluation.evaluate` produces; a few bytes per prompt, where END logits would be
  n × vocab (13 MB for 64 GPT-2 prompts) and full logits n × pos × vocab, and would still not
  serve the sequence metrics. A metric not yet cached recomputes the evaluation forwards.
- `<input>.base_runs.safetensors`: what the patching methods start from, the block inputs
  (`resid_pre.L`) and head outputs (`z.L`) of every layer, named as models/hooks.py names sites, plus the
  per-prompt values of the metric they were scored with (`metric.<id>`), in the model's dtype.

Tensors are stored per prompt at the width of the longest prompt ([n, width, ...], pad
positions included), so any batch size reads them back: a batch is rows [start:stop] trimmed to
its own width, and with causal attention those are exactly the values it would compute.

Each entry is a directory `<root>/v1/<key digest>/` with a JSON manifest (key, task, sizes,
sha256 of every file, created/last used, hits). Files are written to a temp name and renamed; a
file whose size or sha256 does not match its manifest record (truncated, half-written, edited)
is deleted and recomputed, never trusted and never a crash. A failed write only warns.
Processes sharing an entry read and change it under its lock (`.lock`, flock), merging their
records into the manifest on disk (see CacheEntry). Files and folders get the modes the umask
gives (0666 / 0777 less it). `<root>/fingerprints/` remembers the sha256 of local weight files.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitbench.environment import package_versions
from circuitbench.errors import CircuitbenchError
from circuitbench.files import CACHE_ENV, current_umask, default_cache_dir, sha256_of_file, write_atomic
from circuitbench.models import hooks, loaded, loading, resume, toy
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.memory import available_memory_bytes
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores import interventions, metrics
from circuitbench.scores.interventions import Input
from circuitbench.specs.options import RunOptions
from circuitbench.specs.registries import METRICS

FORMAT_VERSION = 1  # bump when what a file holds changes: old entries then simply miss
MANIFEST = "manifest.json"
LOCK = ".lock"  # flock'ed by whoever reads or changes the entry's manifest and files
FINGERPRINTS = "fingerprints"  # under the root: remembered sha256 of local weight files (models/fingerprint.py)
# Libraries whose versions can change the numbers (a bridge fix, a new kernel).
SOFTWARE = ("circuitbench", "torch", "transformers", "transformer-lens")
# Our modules that compute what is cached (metrics, model loading, the forward and its hooks, the
# base runs): an edit to one of them changes the key, so a development checkout never reads
# numbers its code would not give.
CODE_MODULES: tuple[ModuleType, ...] = (metrics, interventions, hooks, loaded, loading, resume, toy)
log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CacheKey(BaseModel):
    """Everything that changes the cached numbers, and nothing else (batch size does not)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int = FORMAT_VERSION
    model: str
    source: str
    revision: str | None
    weights: str  # models/fingerprint.py: weight bytes, file stats, commit, config, init seed
    init: Literal["pretrained", "random"]
    init_seed: int | None
    dtype: str
    device: str  # device type: cpu and cuda kernels differ in the last bits
    prompt_hash: str  # the generated prompts
    tokens_hash: str  # and how this model's tokenizer encoded them
    software: dict[str, str]
    code: str  # sha256 of CODE_MODULES
    plugins: dict[str, str] = Field(default_factory=dict)  # plugin metric -> "version|code sha256"

    def digest(self) -> str:
        # without plugins, the digest of the keys made before plugins were keyed (their entries stay valid)
        dump = self.model_dump_json(exclude={"plugins"} if not self.plugins else None)
        return hashlib.sha256(dump.encode()).hexdigest()[:24]


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int
    sha256: str


class CacheManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: CacheKey
    task: str  # for display: the key already pins the prompts
    n_prompts: int
    created_at: str
    last_used_at: str
    hits: int = 0
    files: dict[str, FileRecord] = Field(default_factory=dict)


def tokens_hash(data: EncodedPrompts) -> str:
    """sha256 of every tensor a metric or method reads (tokens, answers, positions, masks)."""
    h = hashlib.sha256()
    named = {"tokens": data.tokens, "corrupted": data.corrupted, "lengths": data.lengths, "answer": data.answer,
             "distractor": data.distractor, "score_mask": data.score_mask,
             **{f"position.{k}": v for k, v in sorted(data.positions.items())}}
    if data.corrupted_lengths is not None:  # only then: the keys of aligned prompt sets stay as they were
        named["corrupted_lengths"] = data.corrupted_lengths
    for name, tensor in named.items():
        h.update(f"{name}:{None if tensor is None else (tuple(tensor.shape), str(tensor.dtype))};".encode())
        if tensor is not None:
            h.update(tensor.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _code_hash() -> str:
    h = hashlib.sha256()
    for module in CODE_MODULES:
        assert module.__file__ is not None
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def _plugin_metrics() -> dict[str, str]:
    """Every plugin metric's version and code hash (registry.Registry.plugin_code): an edited
    plugin metric gives other values under the same name."""
    codes = {}
    for name in METRICS.plugin_names():
        code = METRICS.plugin_code(name) or {}
        codes[f"metric:{name}"] = f"{code.get('version')}|{code.get('code_sha256')}"
    return codes


def cache_key(model: LoadedModel, data: EncodedPrompts) -> CacheKey:
    return CacheKey(
        model=model.name, source=model.source, revision=model.revision, weights=model.fingerprint,
        init=model.init, init_seed=model.init_seed, dtype=model.dtype, device=model.device.type,
        prompt_hash=data.prompt_hash, tokens_hash=tokens_hash(data), software=package_versions(SOFTWARE),
        code=_code_hash(), plugins=_plugin_metrics(),
    )


class CacheEntry:
    """One key's directory, used by one run unit; counts its hits and misses.

    A hit is a lookup served from disk (the metric values of one input, or its base runs); a
    miss is one that had to be computed.

    Several processes may share an entry (two runs of one unit, at other batch sizes). Every read
    of the manifest and of the files it records, and every change of them, happens under the
    entry's lock (flock on `.lock`): a change reads the manifest from disk, merges into it and
    writes it back, and a file is replaced together with its record. So a process never trusts a
    record it has not just read, and never drops another's."""

    def __init__(self, path: Path, key: CacheKey, task: str, n_prompts: int) -> None:
        self.path = path
        self.key = key
        self.hits = 0
        self.misses = 0
        self._writable = True
        self._lock_depth = 0
        self._verified: dict[str, FileRecord] = {}  # files checked against the manifest this run
        self._task, self._n_prompts = task, n_prompts
        self.manifest = self._fresh_manifest()
        try:
            with self._locked(create=False):
                self.manifest = self._read_manifest() or self.manifest
        except OSError as e:
            self._warn_unwritable(e)

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def _fresh_manifest(self) -> CacheManifest:
        now = _now()
        return CacheManifest(key=self.key, task=self._task, n_prompts=self._n_prompts, created_at=now,
                             last_used_at=now)

    @contextmanager
    def _locked(self, create: bool = True) -> Iterator[None]:
        """Hold the entry's lock (re-entrant within this object). `create`: make the entry's
        directory if need be; else an entry that does not exist yet is read without a lock (it
        holds nothing to read)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        if not create and not self.path.is_dir():
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)  # 0666 less the umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)  # releases the lock

    def _read_manifest(self) -> CacheManifest | None:
        """The manifest on disk (under the lock): None when there is none yet. An unreadable one, or
        another key's, vouches for nothing: its files are deleted (never the lock)."""
        try:
            manifest = CacheManifest.model_validate_json((self.path / MANIFEST).read_text())
            if manifest.key == self.key:
                return manifest
        except FileNotFoundError:
            return None  # a new entry (files without a record are never read, only overwritten)
        except (OSError, ValueError, ValidationError):
            pass
        for stale in self.path.iterdir():
            if stale.name != LOCK and stale.is_file():
                stale.unlink(missing_ok=True)
        self._verified.clear()
        return None

    def _warn_unwritable(self, err: Exception) -> None:
        if self._writable:
            log.warning("activation cache %s not written (%s); continuing without it.", self.path, err)
        self._writable = False

    def _update(self, change: Callable[[CacheManifest], None]) -> None:
        """Read the manifest from disk, apply `change`, write it back: under the lock, so that
        what other processes recorded meanwhile is kept."""
        if not self._writable:
            return
        try:
            with self._locked():
                manifest = self._read_manifest() or self._fresh_manifest()
                change(manifest)
                write_atomic(self.path / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
                self.manifest = manifest
        except OSError as e:
            self._warn_unwritable(e)

    def _file(self, which: Input, group: str) -> Path:
        return self.path / f"{which}.{group}.safetensors"

    def _load(self, which: Input, group: str) -> dict[str, torch.Tensor] | None:
        """The file's tensors if it matches its manifest record (size, sha256), else None (and
        a bad file is deleted so it is recomputed)."""
        path = self._file(which, group)
        try:
            with self._locked(create=False):
                manifest = self._read_manifest()
                if manifest is not None:
                    self.manifest = manifest
                record = manifest.files.get(path.name) if manifest is not None else None
                if record is None:
                    return None
                try:
                    if self._verified.get(path.name) != record:
                        if path.stat().st_size != record.bytes or sha256_of_file(path) != record.sha256:
                            raise ValueError("size or checksum differs from the manifest")
                        self._verified[path.name] = record
                    return load_file(str(path))
                except (OSError, ValueError, SafetensorError) as e:
                    # Writers replace a file and its record together under this lock: a mismatch
                    # here is real damage (a truncated or edited file), not another run's write.
                    log.warning("cache file %s is damaged (%s); recomputing it.", path, e)
                    path.unlink(missing_ok=True)
                    self._verified.pop(path.name, None)
                    self._update(lambda m: m.files.pop(path.name, None))
                    return None
        except OSError as e:  # the lock itself: an entry this process cannot use
            self._warn_unwritable(e)
            return None

    def _save(self, which: Input, group: str, tensors: dict[str, torch.Tensor], merge: bool) -> None:
        if not self._writable:
            return
        path = self._file(which, group)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with self._locked():
                if merge:  # what is stored now, another process's names included
                    tensors = {**(self._load(which, group) or {}), **tensors}
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
                with tmp.open("rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o666 & ~current_umask())  # safetensors writes 0600
                record = FileRecord(bytes=tmp.stat().st_size, sha256=sha256_of_file(tmp))
                os.replace(tmp, path)
                self._verified[path.name] = record
                self._update(lambda m: m.files.__setitem__(path.name, record))
        except (OSError, SafetensorError) as e:
            tmp.unlink(missing_ok=True)
            self._warn_unwritable(e)

    def _record(self, hit: bool) -> None:
        if hit:
            self.hits += 1

            def count(manifest: CacheManifest) -> None:
                manifest.hits += 1
                manifest.last_used_at = _now()

            self._update(count)
        else:
            self.misses += 1

    def read(self, which: Input, group: str, required: list[str]) -> dict[str, torch.Tensor] | None:
        """The stored tensors of `which`/`group` if all `required` names are there (a hit)."""
        tensors = self._load(which, group)
        hit = tensors is not None and all(name in tensors for name in required)
        self._record(hit)
        return tensors if hit else None

    def save(self, which: Input, group: str, tensors: dict[str, torch.Tensor], merge: bool = False) -> None:
        """Store tensors [n, ...] (all prompts); `merge` keeps names already stored."""
        self._save(which, group, tensors, merge)

    def room_for(self, nbytes: int) -> bool:
        """Whether an entry of `nbytes` may be built: it is held in memory while it is filled."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            disk = shutil.disk_usage(self.path).free
        except OSError:
            return False
        return nbytes < disk // 2 and nbytes < available_memory_bytes(torch.device("cpu")) // 4


def metrics_through_cache(
    entry: CacheEntry | None,
    names: list[str],
    has_corrupted: bool,
    compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-prompt metric values (clean, corrupted) as `compute` (evaluation.evaluate) returns them:
    read from the entry when every metric is stored for both inputs, else computed and stored."""
    if entry is None:
        return compute()
    clean = entry.read("clean", "metrics", names)
    corrupted = entry.read("corrupted", "metrics", names) if has_corrupted else {}
    if clean is not None and corrupted is not None:
        return {n: clean[n] for n in names}, {n: corrupted[n] for n in names if n in corrupted}
    clean, corrupted = compute()
    entry.save("clean", "metrics", clean, merge=True)
    if corrupted:
        entry.save("corrupted", "metrics", corrupted, merge=True)
    return clean, corrupted


@dataclass
class EntryInfo:
    """One entry as `cache ls` shows it; manifest None when it is unreadable (then only `clear`
    applies to it)."""

    path: Path
    manifest: CacheManifest | None
    size_bytes: int

    @property
    def last_used(self) -> datetime:
        if self.manifest is not None:
            return datetime.fromisoformat(self.manifest.last_used_at)
        return datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc)


class ActivationCache:
    """A cache directory: `<root>/v1/<key digest>/` per entry."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.entries_dir = self.root / f"v{FORMAT_VERSION}"

    def check_writable(self) -> None:
        """Fail early, with what to do, when entries cannot be written here."""
        probe = self.entries_dir / f".probe-{os.getpid()}"
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CircuitbenchError(
                f"Cache directory {self.root}: cannot write there ({e.strerror or e}). Pass a writable "
                f"--cache-dir, set ${CACHE_ENV}, or run with --no-cache."
            ) from None

    def entry(self, key: CacheKey, task: str, n_prompts: int) -> CacheEntry:
        return CacheEntry(self.entries_dir / key.digest(), key, task, n_prompts)

    def entries(self) -> list[EntryInfo]:
        if not self.entries_dir.is_dir():
            return []
        out = []
        for path in sorted(p for p in self.entries_dir.iterdir() if is_entry_folder(p)):
            try:
                manifest: CacheManifest | None = CacheManifest.model_validate_json((path / MANIFEST).read_text())
            except (OSError, ValueError, ValidationError):
                manifest = None
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            out.append(EntryInfo(path, manifest, size))
        return out

    def clear(self, model: str | None = None, older_than_days: float | None = None) -> list[EntryInfo]:
        """Delete entries (of `model`; not used for more than `older_than_days`); unreadable
        entries go whenever no model is named. Returns what was deleted."""
        cutoff = None if older_than_days is None else datetime.now(timezone.utc) - timedelta(days=older_than_days)
        removed = []
        for info in self.entries():
            if model is not None and (info.manifest is None or info.manifest.key.model != model):
                continue
            if cutoff is not None and info.last_used > cutoff:
                continue
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info)
        return removed


ENTRY_NAME = re.compile(r"[0-9a-f]{24}")  # CacheKey.digest()


def is_entry_folder(path: Path) -> bool:
    """A folder the cache made: named by a key digest, holding only the files an entry holds (its
    manifest, lock, tensor files, temp files). `cache clear` deletes nothing else: a --cache-dir
    pointed at a folder of other files leaves them alone."""
    if path.is_symlink() or not path.is_dir() or not ENTRY_NAME.fullmatch(path.name):
        return False
    own = (MANIFEST, LOCK)
    return all(f.is_file() and not f.is_symlink() and (f.name in own or f.suffix in (".safetensors", ".tmp"))
               for f in path.iterdir())


def fingerprint_memo_dir(options: RunOptions) -> Path | None:
    """Where the sha256 of local weight files is remembered across runs: inside the cache root,
    and only with the cache on (None: remembered in this process only; nothing written)."""
    return ActivationCache(options.cache_dir).root / FINGERPRINTS if options.cache else None


def check_cache_dir(options: RunOptions) -> None:
    """Before any model loads: a run with the cache on needs a writable cache directory."""
    if options.cache:
        ActivationCache(options.cache_dir).check_writable()


def open_run_cache(cache_dir: str | None, model: LoadedModel, data: EncodedPrompts, task: str) -> CacheEntry | None:
    """The cache entry of one run unit in `cache_dir`, or None without a cache (nothing written)."""
    if cache_dir is None:
        return None
    return ActivationCache(cache_dir).entry(cache_key(model, data), task, len(data))
