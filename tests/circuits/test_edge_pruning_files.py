"""Edge Pruning's edges file: ours -> theirs -> ours gives the same circuit; every edge Edge
Pruning's GPT-2 can hold, named by its own naming functions, maps onto exactly our graph's edges; a
file written by hand as its scripts write them reads correctly; a bad file gives one clear error."""
from __future__ import annotations

import json

import pytest

from circuitbench.circuits.edge_pruning_files import (
    LLAMA_EMBEDDINGS,
    circuit_from_edge_pruning,
    edge_pruning_edges,
    read_edge_pruning,
    write_edge_pruning,
)
from circuitbench.circuits.score_meaning import ScoreMeaning, sidecar_path
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph

GRAPH = ComponentGraph(2, 3)
CIRCUIT = ["input->a0.h1<q>", "input->a0.h2<k>", "a0.h1->m0", "input->m0", "m0->a1.h0<v>", "a0.h2->a1.h2<k>",
           "a1.h0->m1", "m1->logits", "a1.h0->logits", "input->logits"]
MEANING = ScoreMeaning(method="eap", kind="membership", signed=True, ablation="counterfactual", metric="logit_diff",
                       rule={"top_k": 10})


def _graph_order(edges):
    return sorted(edges, key=lambda e: (GRAPH.edge_position(e)[1], GRAPH.edge_position(e)[0]))


@pytest.mark.parametrize("embeddings", [("tok_embeds", "pos_embeds"), LLAMA_EMBEDDINGS])
def test_ours_to_edge_pruning_to_ours_is_the_same_circuit(tmp_path, embeddings):
    path = tmp_path / "edges.json"
    pairs = write_edge_pruning(path, GRAPH, CIRCUIT, MEANING, "test", embeddings)
    assert json.loads(path.read_text()) == pairs
    assert len(pairs) == len(CIRCUIT) + 4 * (len(embeddings) - 1)  # 4 input edges, each once per embedding writer
    assert ["a0.h1", "m0"] in pairs and ["m1", "resid_post"] in pairs and ["m0", "a1.h0.v"] in pairs
    back = read_edge_pruning(path)  # the model's shape from the sidecar
    assert back.edges == _graph_order(CIRCUIT) and not back.implicit_embeddings and back.meaning == MEANING
    assert back.graph.describe() == GRAPH.describe()


def _edge_pruning_gpt2_edges(n_layers: int, n_heads: int) -> list[list[str]]:
    """Every [writer, reader] pair FPT2 (Edge-Pruning src/modeling/modeling_fpt2.py, with embedding
    nodes) can hold, named by its writer_idx_to_name / reader_idx_to_name, in get_edges' loops."""
    def writer(idx):
        if idx < 2:
            return ("tok_embeds", "pos_embeds")[idx]
        layer, head = divmod(idx - 2, n_heads + 1)
        return f"m{layer}" if head == n_heads else f"a{layer}.h{head}"

    def reader(idx):
        layer, head = divmod(idx, 3 * n_heads + 1)
        if layer == n_layers:
            return "resid_post"
        if head < 3 * n_heads:
            return f"a{layer}.h{head % n_heads}.{'qkv'[head // n_heads]}"
        return f"m{layer}"

    pairs = []
    for layer in range(n_layers):
        before = 2 + layer * (n_heads + 1)  # writers of earlier layers and the embeddings
        for qkv in range(3):
            for head in range(n_heads):
                pairs += [[writer(w), reader(layer * (3 * n_heads + 1) + qkv * n_heads + head)] for w in range(before)]
        pairs += [[writer(w), reader((layer + 1) * (3 * n_heads + 1) - 1)] for w in range(before + n_heads)]
    pairs += [[writer(w), "resid_post"] for w in range(2 + n_layers * (n_heads + 1))]
    return pairs


def test_every_edge_edge_pruning_can_hold_is_one_of_ours():
    graph = ComponentGraph(3, 2)
    pairs = _edge_pruning_gpt2_edges(3, 2)
    # get_num_edges(config, with_embedding_nodes=True): Σ_l 3H(2 + l(H+1)) + (2 + l(H+1) + H), + writers
    assert len(pairs) == sum(3 * 2 * (2 + l * 3) + (2 + l * 3 + 2) for l in range(3)) + 2 + 3 * 3
    edges, implicit = circuit_from_edge_pruning(pairs, graph, "all.json")
    assert edges == graph.edges and not implicit  # all of ours, in graph order
    assert len(pairs) == graph.n_edges + len(graph.destinations)  # the input's edges come twice (tok, pos)
    assert sorted(map(tuple, edge_pruning_edges(graph, graph.edges))) == sorted(map(tuple, pairs))


def test_a_file_written_as_edge_prunings_scripts_write_it_reads_correctly(tmp_path):
    path = tmp_path / "edges.json"  # vis_fpt2.py: json.dump(model.get_edges(), indent=4); draw_fpt2 adds q->head
    path.write_text(json.dumps([["tok_embeds", "a0.h1.q"], ["pos_embeds", "a0.h1.q"], ["a0.h1", "m0"],
                                ["m0", "a1.h0.v"], ["a1.h0.v", "a1.h0"], ["a1.h0", "resid_post"]], indent=4))
    circuit = read_edge_pruning(path, GRAPH)
    assert circuit.edges == ["input->a0.h1<q>", "a0.h1->m0", "m0->a1.h0<v>", "a1.h0->logits"]
    assert circuit.meaning is None and not circuit.implicit_embeddings


def test_a_circuit_pruned_without_embedding_nodes_reads_the_embeddings_everywhere():
    """Without -w, FPT2 adds the embeddings to every reader's input: the input feeds each node of the circuit."""
    pairs = [["a0.h1", "m0"], ["m0", "resid_post"]]
    edges, implicit = circuit_from_edge_pruning(pairs, GRAPH, "f.json")
    assert implicit and edges == _graph_order(["a0.h1->m0", "m0->logits", "input->a0.h1<q>", "input->a0.h1<k>",
                                               "input->a0.h1<v>", "input->m0", "input->logits"])
    assert circuit_from_edge_pruning(pairs, GRAPH, "f.json", embeddings="explicit") == (
        ["a0.h1->m0", "m0->logits"], False)


def test_one_embedding_without_the_other_maps_only_when_asked():
    pairs = [["tok_embeds", "a0.h1.q"], ["a0.h1", "resid_post"]]
    with pytest.raises(CircuitbenchError, match=r"f\.json: tok_embeds feeds a0\.h1<q> but pos_embeds does not; "
                                                r".*merge='either'"):
        circuit_from_edge_pruning(pairs, GRAPH, "f.json")
    assert circuit_from_edge_pruning(pairs, GRAPH, "f.json", merge="either")[0] == ["input->a0.h1<q>",
                                                                                    "a0.h1->logits"]


@pytest.mark.parametrize("raw, message", [
    ({"edges": []}, r"\(top level\): a JSON dict, not a list"),
    ([["a0.h1", "m0", "x"]], r"\[0\]: \[\"a0\.h1\", \"m0\", \"x\"\] is not a \[writer, reader\] pair"),
    ([["a0.h1", "m0"], ["embed", "m0"]], r"\[1\]: writer 'embed' is not one of Edge Pruning's writers"),
    ([["a0.h1", "a1.h0.o"]], r"\[0\]: reader 'a1\.h0\.o' is not one of Edge Pruning's readers"),
    ([["a1.h0", "a0.h2.q"]], r"\[0\]: \['a1\.h0', 'a0\.h2\.q'\] \(a1\.h0->a0\.h2<q>\): .*a1\.h0 does not feed "
                             r"a0\.h2<q>"),
    ([["a5.h0", "resid_post"]], r"\[0\]: \['a5\.h0', 'resid_post'\] .*names a node this model"),
    ([["embeds", "m0"], ["tok_embeds", "m0"], ["pos_embeds", "m0"]], r"names GPT-2's embedding writers .* and "
                                                                      r"Llama's \(embeds\) together"),
])
def test_bad_files_give_one_error_naming_the_pair(tmp_path, raw, message):
    path = tmp_path / "edges.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(CircuitbenchError, match=rf"^{path}: {message}"):
        read_edge_pruning(path, GRAPH)


def test_the_models_shape_is_required_and_must_agree_with_the_sidecar(tmp_path):
    path = tmp_path / "edges.json"
    path.write_text(json.dumps([["a0.h1", "resid_post"]]))
    with pytest.raises(CircuitbenchError, match=r"does not say the model's shape; give it"):
        read_edge_pruning(path)
    write_edge_pruning(path, GRAPH, ["a0.h1->logits"], MEANING, "test")
    with pytest.raises(CircuitbenchError, match=r"its sidecar says a model of 2 layers × 3 heads.*but the model given "
                                                r"has 2 layers × 4 heads"):
        read_edge_pruning(path, ComponentGraph(2, 4))
    side = sidecar_path(path)
    side.write_text(side.read_text().replace('"file": "edges.json"', '"file": "other.json"'))
    with pytest.raises(CircuitbenchError, match=r"describes 'other\.json', not 'edges\.json'"):
        read_edge_pruning(path)


def test_writing_refuses_edges_the_graph_does_not_have():
    with pytest.raises(CircuitbenchError, match=r"edge 'a1\.h0->a0\.h1<q>': .*does not feed"):
        edge_pruning_edges(GRAPH, ["a1.h0->a0.h1<q>"])
