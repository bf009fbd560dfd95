"""auto-circuit's prune scores (UFO-101/auto-circuit, `types.PruneScores`), written and read.

A `PruneScores` is a dict from each destination's module name to a tensor over the sources feeding
it, in auto-circuit's factorized graph with separate q/k/v inputs (`utils/graph_utils.graph_edges`,
`model_utils/transformer_lens_utils.factorized_src_nodes` / `factorized_dest_nodes`):

- sources, in `src_idx` order: "Resid Start" (our `input`), then per block its heads "A{L}.{H}"
  (`a{L}.h{H}`) and its MLP "MLP {L}" (`m{L}`): the same order as ComponentGraph.sources;
- a source feeds a destination when its layer is below the destination's (`s.layer < d.layer`,
  blocks counting as two layers, one when attention and MLP run in parallel), so each destination
  reads a prefix of the sources, of ComponentGraph.n_upstream's length;
- an edge's place in its tensor is `Edge.patch_idx` = [head index] + [src_idx − min_src_idx], with
  min_src_idx 0 in the factorized graph: heads' q/k/v inputs hold [n_heads, n_sources],
  an MLP's input [n_sources], the logits ("Resid End") [n_sources].

Module names are TransformerLens hook points (models/autocircuit_names.py). auto-circuit saves
scores with `torch.save` (`utils/misc.save_cache`), a PruneScores alone or nested by task and
algorithm (`TaskPruneScores`); it ranks edges by |score| (`tensor_ops.desc_prune_scores`).

The file circuitbench writes is a plain PruneScores (float64 tensors, so scores read back exactly),
which `torch.load(path, weights_only=True)` opens without circuitbench; what the scores mean goes
to a sidecar (circuits/score_meaning.py): a dict of tensors has no room for it. Reading is safe:
`weights_only=True`, never arbitrary pickled objects.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitbench.circuits.graph_files import check_graph_bounds
from circuitbench.circuits.score_meaning import ScoreMeaning, Sidecar, read_sidecar, sidecar_path, write_sidecar
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.autocircuit_names import (
    LAYOUT,
    head_input_module,
    logits_module,
    mlp_input_module,
    parse_module,
    resid_post_module,
)
from circuitbench.models.graph import QKV, ComponentGraph
from circuitbench.scores.methods.outputs import EdgeScores

FORMAT = "auto-circuit prune scores"


@dataclass(frozen=True, eq=False)
class PruneScoresFile:
    """A prune-scores file read back: the scores over our graph, and their meaning when a sidecar says it."""

    edges: EdgeScores
    meaning: ScoreMeaning | None


def prune_scores(edges: EdgeScores, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """`edges` in auto-circuit's PruneScores layout (see the module docstring): heads' q/k/v inputs
    [n_heads, n_sources], MLP inputs and the logits [n_sources]."""
    out: dict[str, torch.Tensor] = {}
    for key, cols, n in _columns(edges.graph):
        block = edges.scores[:n, cols].T  # [destinations of the module, n_sources]
        out[key] = torch.tensor(block if _per_head(key) else block[0], dtype=dtype)
    return out


def _graph_of(scores: Mapping[str, torch.Tensor], where: str) -> ComponentGraph:
    """The component graph a PruneScores describes, from its keys and shapes (every key checked)."""
    layers: dict[str, set[int]] = {"q": set(), "k": set(), "v": set(), "mlp": set(), "resid_post": set()}
    for key in scores:
        parsed = parse_module(key)
        if parsed is None:
            raise CircuitbenchError(f"{where}: [{key!r}]: not a destination module of auto-circuit's factorized "
                                    f"transformer graph; expected {LAYOUT}.")
        kind, layer = parsed
        if kind == "attn_in":
            raise CircuitbenchError(f"{where}: [{key!r}]: scores of edges into a head's whole input "
                                    "(auto-circuit's separate_qkv=False), which do not split into its q, k and v "
                                    "inputs. Compute them with separate_qkv=True.")
        if kind == "resid_mid":
            raise CircuitbenchError(f"{where}: [{key!r}]: auto-circuit's unfactorized graph (factorized=False: edges "
                                    "between residual-stream checkpoints), not edges between components. Compute "
                                    "the scores on the factorized graph (factorized=True, separate_qkv=True).")
        layers[kind].add(layer)
    blocks = layers["q"] | layers["k"] | layers["v"] | layers["mlp"]
    if not blocks:
        raise CircuitbenchError(f"{where}: no head or MLP inputs; expected {LAYOUT}.")
    n_layers = max(blocks) + 1
    for kind in ("q", "k", "v", "mlp") if layers["mlp"] else ("q", "k", "v"):
        missing = sorted(set(range(n_layers)) - layers[kind])
        if missing:
            key = mlp_input_module(missing[0]) if kind == "mlp" else head_input_module(kind, missing[0])
            raise CircuitbenchError(f"{where}: [{key!r}]: missing (a model of {n_layers} blocks has one per block, "
                                    "and a PruneScores holds every destination module).")
    extra = sorted(layers["resid_post"] - {n_layers - 1})
    if extra:
        raise CircuitbenchError(f"{where}: [{resid_post_module(extra[0])!r}]: the residual stream after block "
                                f"{extra[0]}, not after the last ({n_layers - 1}): auto-circuit's unfactorized graph, "
                                "not edges between components.")
    if not layers["resid_post"]:
        raise CircuitbenchError(f"{where}: [{logits_module(n_layers)!r}]: missing (the edges into the logits, "
                                "auto-circuit's 'Resid End').")
    q0 = scores[head_input_module("q", 0)]
    if q0.ndim != 2 or q0.shape[0] < 1:
        raise _shape_error(where, head_input_module("q", 0), q0, "[n_heads, n_sources]")
    n_heads = int(q0.shape[0])
    check_graph_bounds(n_layers, n_heads, where, bool(layers["mlp"]))
    # Block 0's MLP reads the input alone when attention runs beside it (GPT-NeoX), else the heads too.
    mlp0 = scores.get(mlp_input_module(0))
    parallel = mlp0 is not None and tuple(mlp0.shape) == (1,)
    return ComponentGraph(n_layers, n_heads, has_mlp=bool(layers["mlp"]), parallel_attn_mlp=parallel)


def _shape_error(where: str, key: str, tensor: torch.Tensor, expected: str) -> CircuitbenchError:
    per_token = " (one score per token position: auto-circuit's seq_len; circuitbench's edges span every position, " \
        "so compute the scores with seq_len=None)" if tensor.ndim == expected.count(",") + 2 else ""
    return CircuitbenchError(f"{where}: [{key!r}]: shape {list(tensor.shape)}, expected {expected}{per_token}.")


def edge_scores_from_prune_scores(scores: object, where: str, graph: ComponentGraph | None = None) -> EdgeScores:
    """auto-circuit's PruneScores as our EdgeScores. The graph is read from the keys and shapes
    (blocks, heads, MLPs or not, parallel attention and MLP); when `graph` is given it must agree.
    A key that is no destination of the factorized graph, a missing key, a wrong shape or a score
    that is not a finite number is an error naming the key. Boolean tensors (a circuit) read as 1/0."""
    if not isinstance(scores, Mapping) or not all(isinstance(k, str) for k in scores):
        raise CircuitbenchError(f"{where}: a {type(scores).__name__}, not a dict of module name -> tensor; expected "
                                f"{LAYOUT}.")
    for key, value in scores.items():
        if not isinstance(value, torch.Tensor):
            raise CircuitbenchError(f"{where}: [{key!r}]: a {type(value).__name__}, not a tensor; expected {LAYOUT}.")
        if value.is_complex() or not (value.is_floating_point() or value.dtype == torch.bool):
            raise CircuitbenchError(f"{where}: [{key!r}]: dtype {value.dtype}; scores are real numbers (or booleans "
                                    "for a circuit).")
    found = _graph_of(scores, where)
    if graph is not None and (found.n_layers, found.n_heads, found.has_mlp, found.parallel_attn_mlp) != (
            graph.n_layers, graph.n_heads, graph.has_mlp, graph.parallel_attn_mlp):
        raise CircuitbenchError(f"{where}: scores of a model of {found.describe()}, but the model given has "
                                f"{graph.describe()}. Read the file with the model it was computed on.")
    g = graph or found
    matrix = np.zeros(g.real_edges.shape)
    for key, cols, n in _columns(g):
        tensor = scores[key]
        expected = (len(cols), n) if _per_head(key) else (n,)
        if tuple(tensor.shape) != expected:
            raise _shape_error(where, key, tensor, f"[{', '.join(map(str, expected))}] "
                               f"({'[n_heads, n_sources]' if len(expected) == 2 else '[n_sources]'})")
        values = tensor.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise CircuitbenchError(
                f"{where}: [{key!r}]: {bad} scores are not finite numbers (auto-circuit's ACDC marks the edges it "
                "kept with inf). Replace them with finite values (e.g. one above the largest finite score) to read "
                "the file.")
        matrix[:n, cols] = values.reshape(len(cols), n).T
    return EdgeScores(g, matrix)


def _per_head(module: str) -> bool:
    """Whether a module's tensor has a head dimension (the heads' q, k, v inputs)."""
    parsed = parse_module(module)
    return parsed is not None and parsed[0] in QKV


def _columns(g: ComponentGraph) -> list[tuple[str, list[int], int]]:
    """(module, our destination columns, sources read) of every auto-circuit destination module."""
    out: list[tuple[str, list[int], int]] = []
    for layer in range(g.n_layers):
        for x in QKV:
            out.append((head_input_module(x, layer), [g.destination_index[f"a{layer}.h{h}<{x}>"]
                                                      for h in range(g.n_heads)], g.n_upstream(f"a{layer}.h0<{x}>")))
        if g.has_mlp:
            out.append((mlp_input_module(layer), [g.destination_index[f"m{layer}"]], g.n_upstream(f"m{layer}")))
    out.append((logits_module(g.n_layers), [g.destination_index["logits"]], len(g.sources)))
    return out


def _load(path: Path) -> object:
    """torch.load with weights_only=True: tensors, dicts, lists and numbers, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CircuitbenchError(f"{path}: not a prune-scores file torch can open safely ({first[:200]}). circuitbench "
                                "reads only tensors in dicts (torch.load weights_only=True), never other pickled "
                                "objects.") from None
    except OSError as e:
        raise CircuitbenchError(f"{path}: cannot read it ({e.strerror or e}).") from None


def _select(raw: object, select: Sequence[str], where: Path) -> object:
    """The PruneScores inside auto-circuit's nested dicts ({task: {algorithm: PruneScores}})."""
    chosen: list[str] = []
    for key in select:
        if not isinstance(raw, Mapping) or key not in raw:
            keys = ", ".join(map(repr, list(raw)[:10])) if isinstance(raw, Mapping) else "none"
            raise CircuitbenchError(f"{where}: [{']['.join(map(repr, [*chosen, key]))}]: no such key (keys here: "
                                    f"{keys}).")
        raw, chosen = raw[key], [*chosen, key]
    if isinstance(raw, Mapping) and raw and all(isinstance(v, Mapping) for v in raw.values()):
        keys = ", ".join(map(repr, list(raw)[:10]))
        at = f" at [{']['.join(map(repr, chosen))}]" if chosen else ""
        raise CircuitbenchError(f"{where}: holds several prune scores{at} (auto-circuit's TaskPruneScores / "
                                f"AlgoPruneScores: {{task: {{algorithm: PruneScores}}}}), keys {keys}. Choose one: "
                                "select=(task, algorithm).")
    return raw


def read_prune_scores(path: Path, graph: ComponentGraph | None = None, select: Sequence[str] = ()) -> PruneScoresFile:
    """A prune-scores file (auto-circuit's or ours) as EdgeScores, with its sidecar's meaning when
    there is one. `select` picks one PruneScores out of auto-circuit's nested caches."""
    raw = _select(_load(path), select, path)
    sidecar = read_sidecar(path)
    if graph is None and sidecar is not None:
        graph = sidecar.graph(str(sidecar_path(path)))
    edges = edge_scores_from_prune_scores(raw, str(path), graph)
    return PruneScoresFile(edges, sidecar.scores if sidecar else None)


def write_prune_scores(path: Path, edges: EdgeScores, meaning: ScoreMeaning, written_by: str) -> None:
    """`edges` as auto-circuit prune scores at `path` (torch.save, written atomically) and what
    they mean in the sidecar beside it."""
    buffer = io.BytesIO()
    torch.save(prune_scores(edges), buffer)
    write_atomic(path, buffer.getvalue())
    write_sidecar(path, Sidecar(written_by=written_by, format=FORMAT, file=path.name, cfg=edges.graph.config(),
                                scores=meaning))
