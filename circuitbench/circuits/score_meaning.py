"""What the numbers in a circuit file mean, carried by every file circuitbench writes for another
tool: signed or absolute, which way is more important, the ablation, the metric, the method.

Where it goes depends on the room the format leaves:
- EAP-IG / MIB graph JSON: under the file's `circuitbench` key (`scores`), which EAP-IG's and MIB's
  loaders never read (they read cfg, nodes and edges);
- auto-circuit's prune scores (a dict of tensors: any other value would break its code, which
  concatenates every value) and Edge Pruning's edges file (a JSON list of [writer, reader] pairs):
  a sidecar `<file>.circuitbench.json` beside the file, holding the meaning, the graph's cfg and
  which file it describes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from circuitbench.circuits.graph_files import GraphConfig, check_graph_bounds
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.graph import ComponentGraph

SIDECAR_SUFFIX = ".circuitbench.json"


class ScoreMeaning(BaseModel):
    """How to read a file's numbers."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="the method whose scores (or circuit) the file holds")
    kind: Literal["scores", "membership"] = Field(
        description="scores: a number per edge; membership: the file lists the circuit's edges (no scores)")
    signed: bool = Field(description="true: scores keep the sign of the effect (negative: the edge works against the "
                         "behaviour); false: magnitudes only")
    higher_is_more_important: bool = Field(
        True, description="true: rank by the signed score, highest first (MIB's CPR); |score| is the effect's size "
        "either way (MIB's CMD, auto-circuit)")
    ablation: str = Field(description="what replaces an edge's input when it is removed: counterfactual (the "
                          "corrupted prompt's activation; MIB's 'patching'), mean, zero, resample")
    metric: str = Field(description="the task metric the scores are effects on (oriented so that higher is better)")
    units: str | None = Field(None, description="the normalisation of the scores")
    combined: str | None = Field(None, description="how several counterfactuals' scores were combined (None: one)")
    task: str | None = Field(None, description="the task the scores were measured on")
    model: str | None = Field(None, description="the model the scores were measured on")
    rule: dict[str, Any] | None = Field(None, description="membership: how the circuit was chosen from the scores")


class Sidecar(BaseModel):
    """The sidecar next to a file whose format has no room for the meaning."""

    model_config = ConfigDict(extra="forbid")
    written_by: str = Field(description="the circuitbench command or function that wrote the file")
    format: str = Field(description="the file's format, e.g. 'auto-circuit prune scores'")
    file: str = Field(description="the name of the file this sidecar describes (in the same folder)")
    cfg: dict[str, Any] = Field(description="the component graph's shape (ComponentGraph.config())")
    scores: ScoreMeaning = Field(description="what the file's numbers mean")

    def graph(self, where: str) -> ComponentGraph:
        """The component graph of `cfg` (validated and bounded like a graph file's cfg)."""
        try:
            cfg = GraphConfig.model_validate(self.cfg)
        except ValidationError as e:
            first = e.errors()[0]
            raise CircuitbenchError(f"{where}: cfg.{'.'.join(map(str, first['loc']))}: {first['msg']}. Remove the "
                                    "sidecar, or write the file again with circuitbench.") from None
        check_graph_bounds(cfg.n_layers, cfg.n_heads, where, not cfg.attn_only, cfg.parallel_attn_mlp)
        return ComponentGraph.from_config(cfg)


def sidecar_path(path: Path) -> Path:
    """Where the sidecar of `path` is: the same folder, `<name>.circuitbench.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: Path, sidecar: Sidecar) -> None:
    write_atomic(sidecar_path(path), json.dumps(sidecar.model_dump(mode="json"), indent=1) + "\n")


def read_sidecar(path: Path) -> Sidecar | None:
    """The sidecar of `path`, validated (None when there is none); one that is unreadable, malformed
    or describes another file is an error naming it."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        sidecar = Sidecar.model_validate(json.loads(side.read_text()))
    except (OSError, ValueError) as e:
        detail = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:3]) \
            if isinstance(e, ValidationError) else str(e)
        raise CircuitbenchError(f"{side}: not a circuitbench sidecar ({detail}). Remove it, or write the file again "
                                "with circuitbench.") from None
    if sidecar.file != path.name:
        raise CircuitbenchError(f"{side}: file: describes {sidecar.file!r}, not {path.name!r} (a renamed file?). "
                                "Rename the sidecar with its file, or remove it.")
    return sidecar
