"""What `--model` names (a registry short name, a toy checkpoint, a TransformerLens-format
directory, a local HuggingFace directory, a hub id), checked before anything is loaded: a broken
model directory is one clear message naming the file, never a traceback from deep inside a loader,
and a hub model that is neither in the local HuggingFace cache nor reachable fails at once.

Importing this module imports neither torch nor TransformerLens: `validate` and a run that fails
on its model name answer in about a second. The toy and TL-format modules (which build bridges)
are imported only where a name turns out to be such a checkpoint."""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.specs.catalog import model_registry
from circuitbench.specs.model import ModelSpec

if TYPE_CHECKING:
    import torch

Init = Literal["pretrained", "random"]


@dataclass(frozen=True)
class ModelRef:
    """What `--model` resolved to."""

    kind: Literal["registry", "toy", "tl", "local_hf", "hub"]
    name: str
    location: str  # HF id, directory
    spec: ModelSpec | None

    def dtype(self, requested: str | None) -> str:
        """The dtype the model loads in: the requested one, else the registry's, else float32."""
        return requested or (self.spec.dtype if self.spec else "float32")

    def folder(self, init: Init) -> str:
        """The results folder of this model: its name, marked when the weights are a random init
        (pretrained and random weights are different models and must never share files)."""
        safe = self.name.replace("/", "__")
        return f"{safe}@random-init" if init == "random" else safe


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitbenchError(f"--device {device}: CUDA is not available on this machine. Use --device cpu.")
    return torch.device(device)


def resolve_model(name: str) -> ModelRef:
    """The model `name` refers to, with its files checked (nothing is loaded)."""
    if not name.strip():
        raise CircuitbenchError("--model: empty model name. Give a registry name (`circuitbench ls models`), "
                                "a HuggingFace id or a directory.")
    registry = model_registry()
    if name in registry:
        spec = registry[name]
        if spec.source in ("toy", "tl"):
            from circuitbench.models.toy import ZOO_DIR

            assert spec.path is not None
            ref = ModelRef(spec.source, name, str(ZOO_DIR / spec.path), spec)
            check_model_files(ref)
            return ref
        assert spec.hf_id is not None
        return ModelRef("registry", name, spec.hf_id, spec)
    path = Path(name).expanduser()
    if path.is_dir():
        path = Path(os.path.abspath(path))  # `--model .` or `..`: named by the folder, never "." or ".."
        from circuitbench.models.tl_format import CONFIG_FILES, is_tl_checkpoint
        from circuitbench.models.toy import is_toy_checkpoint

        if is_toy_checkpoint(path):
            ref = ModelRef("toy", path.name, str(path.resolve()), None)
        elif is_tl_checkpoint(path):
            ref = ModelRef("tl", path.name, str(path.resolve()), None)
        elif (path / "config.json").is_file():
            ref = ModelRef("local_hf", path.name, str(path.resolve()), None)
        else:
            raise CircuitbenchError(
                f"--model {name}: the directory has neither config.json (a HuggingFace model saved "
                f"with save_pretrained), {' nor '.join(CONFIG_FILES)} (a TransformerLens-format checkpoint) nor "
                "circuitbench_toy.json (a toy checkpoint)."
            )
        check_model_files(ref)
        return ref
    if name.startswith((".", "/", "~")):
        raise CircuitbenchError(f"--model {name}: no such directory.")
    return ModelRef("hub", name, name, None)


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise CircuitbenchError(f"{path}: cannot read the {what} ({e.strerror or e}).") from None
    except ValueError as e:
        raise CircuitbenchError(
            f"{path}: the {what} is not valid JSON ({e}). Restore the file or re-save the model.") from None
    if not isinstance(value, dict):
        raise CircuitbenchError(f"{path}: the {what} must be a JSON object, not {type(value).__name__}.")
    return value


def check_safetensors(path: Path) -> None:
    """A safetensors file whose header is readable and whose size holds every tensor it lists
    (a truncated or half-copied file fails here, not inside torch)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(header_len))
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise CircuitbenchError(
            f"{path}: not a readable safetensors file ({e}). Restore it or re-save the model.") from None
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise CircuitbenchError(
            f"{path}: truncated ({size:,} bytes; its header lists tensors up to byte {expected:,}). "
            "Copy the file again or re-save the model.")


def check_model_files(ref: ModelRef) -> None:
    """The files a toy checkpoint, a TL-format or a local HuggingFace directory needs, present and readable."""
    path = Path(ref.location)
    if ref.kind == "tl":
        _check_tl_files(ref, path)
    elif ref.kind == "toy":
        from circuitbench.models.toy import MARKER, is_toy_checkpoint

        if not is_toy_checkpoint(path):
            raise CircuitbenchError(f"Toy model '{ref.name}': checkpoint missing at {path}. Reinstall circuitbench.")
        meta = _read_json(path / MARKER, "toy checkpoint description")
        if not isinstance(meta.get("config"), dict):
            raise CircuitbenchError(
                f"{path / MARKER}: no 'config' mapping (the bridge config the model was built with).")
        for needed in ("model.safetensors", "tokenizer.json"):
            if not (path / needed).is_file():
                raise CircuitbenchError(f"{path}: {needed} is missing from the toy checkpoint. Restore it, or retrain.")
        check_safetensors(path / "model.safetensors")
    elif ref.kind == "local_hf":
        config = _read_json(path / "config.json", "HuggingFace config")
        if "model_type" not in config:
            raise CircuitbenchError(f"{path / 'config.json'}: no 'model_type' (which architecture to build). Save the "
                                    "model with model.save_pretrained(DIR), which writes it.")
        for weights in sorted(path.glob("*.safetensors")):
            check_safetensors(weights)


def _check_tl_files(ref: ModelRef, path: Path) -> None:
    """A TL-format directory: a config the native bridge can compute, weights, a tokenizer, and a
    readable circuit.json when there is one (tensor names and shapes are checked on load)."""
    from circuitbench.models.tl_format import (
        CIRCUIT_FILE,
        CONFIG_FILES,
        TOKENIZER_FILE,
        VOCAB_FILE,
        is_tl_checkpoint,
        read_config_dict,
        tl_config,
        weights_file,
    )

    if not is_tl_checkpoint(path):
        raise CircuitbenchError(f"Model '{ref.name}': no TransformerLens config ({' or '.join(CONFIG_FILES)}) at "
                                f"{path}. Reinstall circuitbench, or re-import the model.")
    source = next(path / n for n in CONFIG_FILES if (path / n).is_file())
    tl_config(read_config_dict(source), source)
    weights = weights_file(path)
    if weights.suffix == ".safetensors":
        check_safetensors(weights)
    if not (path / TOKENIZER_FILE).is_file() and not (path / VOCAB_FILE).is_file():
        raise CircuitbenchError(f"{path}: no tokenizer ({TOKENIZER_FILE}, or {VOCAB_FILE}: a JSON list of tokens "
                                "in id order).")
    if (path / CIRCUIT_FILE).is_file():
        circuit = _read_json(path / CIRCUIT_FILE, "ground-truth circuit")
        if not isinstance(circuit.get("heads"), list):
            raise CircuitbenchError(f"{path / CIRCUIT_FILE}: no \"heads\": [[layer, head], ...] list.")


# What from_pretrained reads as a model's weights, in the order transformers tries them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Waiting longer for the hub only delays the message when it is unreachable: a reachable hub answers
# a TCP connect well within a second.
HUB_TIMEOUT_S = 1.0
_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether the user asked for no network (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_address() -> tuple[str, int]:
    """The hub's host and port (HF_ENDPOINT, for a mirror, else huggingface.co:443)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the hub answers a TCP connect within `timeout` seconds; False at once when offline.
    The probe runs in a daemon thread so a hanging DNS lookup (no network at all) cannot hold
    the caller longer than `timeout` either."""
    if hub_offline():
        return False
    address = hub_address()
    answered: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def cached_file(repo: str, filename: str, revision: str | None) -> str | None:
    """The path of `filename` of `repo` at `revision` in the local HuggingFace cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo, filename, revision=revision)
    except HFValidationError as e:
        hint = did_you_mean(repo, model_registry())
        raise CircuitbenchError(f"--model {repo}: not a registry model, a directory, nor a HuggingFace id ({e}).{hint} "
                                "See `circuitbench ls models`.") from None
    return found if isinstance(found, str) else None


def weights_cached(repo: str, revision: str | None) -> bool:
    """Whether the local HuggingFace cache holds `repo`'s config and weights at `revision` (every
    shard of a sharded checkpoint), read from the cache's folders without loading anything."""
    if cached_file(repo, "config.json", revision) is None:
        return False
    for name in WEIGHT_FILES:
        path = cached_file(repo, name, revision)
        if path is None:
            continue
        if not name.endswith(".index.json"):
            return True
        try:
            shards = set(json.loads(Path(path).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False  # an unreadable index: loading it would fail too
        return all(cached_file(repo, shard, revision) is not None for shard in shards)
    return False


def unreachable_error(ref: ModelRef, what: str) -> CircuitbenchError:
    """The message for a hub model whose `what` ("its weights are", "its config is") is neither
    cached nor downloadable from here: what to download, or which path to pass instead."""
    hint = did_you_mean(ref.name, model_registry()) if ref.kind == "hub" else ""
    lead = (f"'{ref.name}' is not a registry model.{hint} As a HuggingFace id, " if hint
            else f"Model '{ref.name}' ({ref.location}): ")
    why = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
    return CircuitbenchError(
        f"{lead}{what} not in the local HuggingFace cache and the hub ({hub_address()[0]}) cannot be reached from here"
        f"{why}. On a connected machine run "
        f"`huggingface-cli download {ref.location}` and copy ~/.cache/huggingface over, or save the model with "
        "save_pretrained and pass that directory as --model DIR"
        + ("; for a random-weight baseline of a registry model use --init random." if ref.spec is not None else ".")
    )


def check_available(ref: ModelRef, init: Init) -> None:
    """Before any unit starts: the model `ref` names can be loaded from here. Checkpoints and local
    directories were checked by resolve_model; a hub model needs its weights (pretrained) or its
    config (random init without the architecture in models.yaml) in the local cache, or a
    reachable hub (checked with a short timeout, never when offline)."""
    if ref.kind not in ("registry", "hub"):
        return
    revision = ref.spec.revision if ref.spec else None
    if init == "random":
        if ref.kind == "hub":
            raise random_init_needs_architecture(ref.name)
        if ref.spec is not None and ref.spec.hf_config is not None:
            return  # built from models.yaml's architecture numbers; the tokenizer is substituted offline
        if cached_file(ref.location, "config.json", revision) is not None or hub_reachable():
            return
        raise unreachable_error(ref, "its config is")
    if weights_cached(ref.location, revision) or hub_reachable():
        return
    raise unreachable_error(ref, "its weights are")


def random_init_needs_architecture(name: str) -> CircuitbenchError:
    return CircuitbenchError(f"--init random needs the architecture: '{name}' is neither in models.yaml nor a local "
                             "directory with config.json.")


def check_models_available(names: list[str], init: Init) -> list[ModelRef]:
    """Each `--model` name resolved and checked as check_available does (the first that cannot be
    loaded raises), before any unit starts."""
    refs = [resolve_model(name) for name in names]
    for ref in refs:
        check_available(ref, init)
    return refs
