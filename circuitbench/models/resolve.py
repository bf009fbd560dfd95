"""What `--model` names (a registry short name, a toy checkpoint, a TransformerLens-format
directory, a local HuggingFace directory, a hub id), checked before anything is loaded: a broken
model directory is one clear message naming the file, never a traceback from deep inside a loader."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from circuitbench.errors import CircuitbenchError
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
from circuitbench.models.toy import MARKER, ZOO_DIR, is_toy_checkpoint
from circuitbench.specs.catalog import model_registry
from circuitbench.specs.model import ModelSpec

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
            assert spec.path is not None
            ref = ModelRef(spec.source, name, str(ZOO_DIR / spec.path), spec)
            check_model_files(ref)
            return ref
        assert spec.hf_id is not None
        return ModelRef("registry", name, spec.hf_id, spec)
    path = Path(name).expanduser()
    if path.is_dir():
        path = Path(os.path.abspath(path))  # `--model .` or `..`: named by the folder, never "." or ".."
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
