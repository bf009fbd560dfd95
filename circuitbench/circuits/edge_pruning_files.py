"""Edge Pruning's edges file (princeton-nlp/Edge-Pruning), written and read.

A learned circuit is saved by `src/modeling/vis_fpt2.py` (GPT-2) and `vis_fllama.py` (Llama) as
`json.dump(model.get_edges())`: a JSON list of [writer, reader] pairs, the circuit's edges, no
scores. Names (`modeling_fpt2.writer_idx_to_name`, `reader_idx_to_name`):

    writers  tok_embeds, pos_embeds (GPT-2 with embedding nodes, `-w`) or embeds (Llama); a{L}.h{H}; m{L}
    readers  a{L}.h{H}.q | .k | .v; m{L}; resid_post

which map to ours as: either embedding -> `input`, `a{L}.h{H}.q` -> `a{L}.h{H}<q>`, `resid_post`
-> `logits`. Our one input node becomes both of GPT-2's embedding writers when written; read
back, a reader must get both or neither (`merge="either"` keeps the input edge when either is
kept). A model pruned without embedding nodes never prunes them: its file names no embedding
writer and every reader reads the embeddings (`embeddings="auto"` then adds the input's edges into
every node of the circuit). Edge Pruning's drawing script adds q/k/v -> head edges inside a head
(`draw_fpt2.sanitize_edges`); they are part of the head, so reading skips them. Llama's grouped
key/value heads name a k/v input by its group, which our ungrouped graph cannot hold: such a file
is read only when its model has one key/value head per query head.

The file has no room for what it means (the method, the rule that chose the edges): that goes to
the sidecar `<file>.circuitbench.json` (circuits/score_meaning.py), with the model's shape, which
the file itself does not record.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from circuitbench.circuits.graph_files import read_json
from circuitbench.circuits.score_meaning import ScoreMeaning, Sidecar, read_sidecar, sidecar_path, write_sidecar
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.graph import ComponentGraph

FORMAT = "Edge Pruning edges"
GPT2_EMBEDDINGS = ("tok_embeds", "pos_embeds")  # modeling_fpt2 with embedding nodes
LLAMA_EMBEDDINGS = ("embeds",)  # modeling_fllama with embedding nodes
EMBEDDINGS = frozenset(GPT2_EMBEDDINGS + LLAMA_EMBEDDINGS)
_WRITER = re.compile(r"^(a\d+\.h\d+|m\d+)$")
_READER = re.compile(r"^(a\d+\.h\d+)\.([qkv])$|^(m\d+)$|^(resid_post)$")
FORMAT_TEXT = ('Edge Pruning\'s edges file is a JSON list of [writer, reader] pairs, e.g. [["tok_embeds", '
               '"a0.h1.q"], ["a0.h1", "m0"], ["m0", "resid_post"]]')


@dataclass(frozen=True)
class EdgePruningCircuit:
    """An edges file read back: the circuit's edges in our names (graph order), whether the input's
    edges were implied (a model pruned without embedding nodes), and the sidecar's meaning."""

    graph: ComponentGraph
    edges: list[str]
    implicit_embeddings: bool
    meaning: ScoreMeaning | None


def edge_pruning_edges(graph: ComponentGraph, edges: Iterable[str],
                       embeddings: Sequence[str] = GPT2_EMBEDDINGS) -> list[list[str]]:
    """Our edges (names of `graph`) as Edge Pruning's [writer, reader] pairs, in graph order; the
    input's edges become one pair per embedding writer (`embeddings`: GPT-2's two, or Llama's one)."""
    if not embeddings or not set(embeddings) <= EMBEDDINGS:
        raise CircuitbenchError(f"embeddings {list(embeddings)}: give Edge Pruning's embedding writers, "
                                f"{list(GPT2_EMBEDDINGS)} (GPT-2) or {list(LLAMA_EMBEDDINGS)} (Llama).")
    positions = []
    for name in set(edges):
        try:
            positions.append(graph.edge_position(name))
        except ValueError as e:
            raise CircuitbenchError(f"edge {name!r}: {e}.") from None
    out: list[list[str]] = []
    for i, j in sorted(positions, key=lambda p: (p[1], p[0])):
        src, dst = graph.sources[i], graph.destinations[j]
        reader = "resid_post" if dst == "logits" else dst.replace("<", ".").rstrip(">")
        out += [[writer, reader] for writer in (embeddings if src == "input" else (src,))]
    return out


def _reader_destination(reader: str) -> str | None:
    m = _READER.match(reader)
    if not m:
        return None
    head, qkv, mlp, final = m.groups()
    return f"{head}<{qkv}>" if head else mlp or "logits"


def circuit_from_edge_pruning(raw: object, graph: ComponentGraph, where: str,
                              embeddings: Literal["auto", "explicit"] = "auto",
                              merge: Literal["strict", "either"] = "strict") -> tuple[list[str], bool]:
    """An edges file's pairs as our edge names of `graph` (graph order), and whether the input's
    edges were implied. `embeddings="auto"`: a file naming no embedding writer comes from a model
    pruned without embedding nodes, whose readers all read the embeddings: the input feeds every
    input of every node of the circuit; "explicit": only the edges the file names. A pair that is
    no edge of `graph` is an error naming its index."""
    if not isinstance(raw, list):
        raise CircuitbenchError(f"{where}: (top level): a JSON {type(raw).__name__}, not a list; {FORMAT_TEXT}.")
    chosen: set[str] = set()
    embedded: dict[str, set[str]] = {}  # destination -> embedding writers feeding it
    for k, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise CircuitbenchError(f"{where}: [{k}]: {json.dumps(pair)[:60]} is not a [writer, reader] pair of "
                                    f"names; {FORMAT_TEXT}.")
        writer, reader = pair
        if re.fullmatch(r"a\d+\.h\d+\.[qkv]", writer) and reader == writer.rsplit(".", 1)[0]:
            continue  # q/k/v -> head inside one head (draw_fpt2.sanitize_edges): part of the head
        dst = _reader_destination(reader)
        if dst is None:
            raise CircuitbenchError(f"{where}: [{k}]: reader {reader!r} is not one of Edge Pruning's readers "
                                    "(a{L}.h{H}.q|k|v, m{L}, resid_post).")
        if writer in EMBEDDINGS:
            embedded.setdefault(dst, set()).add(writer)
            name = f"input->{dst}"
        elif _WRITER.match(writer):
            name = f"{writer}->{dst}"
        else:
            raise CircuitbenchError(f"{where}: [{k}]: writer {writer!r} is not one of Edge Pruning's writers "
                                    "(tok_embeds, pos_embeds, embeds, a{L}.h{H}, m{L}).")
        try:
            graph.edge_position(name)
        except ValueError as e:
            raise CircuitbenchError(f"{where}: [{k}]: [{writer!r}, {reader!r}] ({name}): {e}.") from None
        chosen.add(name)
    kinds = set().union(*embedded.values()) if embedded else set()
    if kinds & set(GPT2_EMBEDDINGS) and kinds & set(LLAMA_EMBEDDINGS):
        raise CircuitbenchError(f"{where}: names GPT-2's embedding writers (tok_embeds, pos_embeds) and Llama's "
                                "(embeds) together; a file is of one model.")
    if merge == "strict" and kinds & set(GPT2_EMBEDDINGS):
        for dst, writers in sorted(embedded.items()):
            if writers != set(GPT2_EMBEDDINGS):
                only, missing = sorted(writers)[0], sorted(set(GPT2_EMBEDDINGS) - writers)[0]
                raise CircuitbenchError(
                    f"{where}: {only} feeds {dst} but {missing} does not; circuitbench has one input node (token and "
                    "position embeddings together), so the circuit does not map. Read it with merge='either' to keep "
                    "the input's edge when either embedding's is kept.")
    implicit = embeddings == "auto" and not embedded
    if implicit:
        nodes = {name.split("->")[0] for name in chosen} | {"logits"}
        chosen |= {f"input->{dst}" for dst in graph.destinations
                   if dst == "logits" or any(node in nodes for node in graph.destination_nodes(dst))}
    positions = sorted((graph.edge_position(n) for n in chosen), key=lambda p: (p[1], p[0]))
    return [f"{graph.sources[i]}->{graph.destinations[j]}" for i, j in positions], implicit


def _shape(graph: ComponentGraph) -> tuple[int, int, bool, bool]:
    return graph.n_layers, graph.n_heads, graph.has_mlp, graph.parallel_attn_mlp


def read_edge_pruning(path: Path, graph: ComponentGraph | None = None, embeddings: Literal["auto", "explicit"] = "auto",
                      merge: Literal["strict", "either"] = "strict") -> EdgePruningCircuit:
    """An Edge Pruning edges file as our circuit. The file does not record the model's shape: it
    comes from `graph`, else from the sidecar circuitbench wrote beside it."""
    sidecar = read_sidecar(path)
    recorded = sidecar.graph(str(sidecar_path(path))) if sidecar is not None else None
    if graph is None:
        if recorded is None:
            raise CircuitbenchError(f"{path}: an Edge Pruning edges file does not say the model's shape; give it "
                                    "(graph=ComponentGraph(n_layers, n_heads)).")
        graph = recorded
    elif recorded is not None and _shape(recorded) != _shape(graph):
        raise CircuitbenchError(f"{path}: its sidecar says a model of {recorded.describe()}, but the model given has "
                                f"{graph.describe()}.")
    edges, implicit = circuit_from_edge_pruning(read_json(path, "Edge Pruning edges"), graph, str(path), embeddings,
                                                merge)
    return EdgePruningCircuit(graph, edges, implicit, sidecar.scores if sidecar else None)


def write_edge_pruning(path: Path, graph: ComponentGraph, edges: Iterable[str], meaning: ScoreMeaning,
                       written_by: str, embeddings: Sequence[str] = GPT2_EMBEDDINGS) -> list[list[str]]:
    """The circuit `edges` as Edge Pruning's edges file at `path` (indented as vis_fpt2.py writes
    it, atomically) and its meaning and model shape in the sidecar. Returns the pairs."""
    pairs = edge_pruning_edges(graph, edges, embeddings)
    write_atomic(path, json.dumps(pairs, indent=4) + "\n")
    write_sidecar(path, Sidecar(written_by=written_by, format=FORMAT, file=path.name, cfg=graph.config(),
                                scores=meaning))
    return pairs
