"""auto-circuit prune scores: ours -> theirs -> ours gives identical scores; a PruneScores built by
hand from auto-circuit's own definitions of its nodes and edges reads correctly; a bad file gives
one clear error naming the file and key."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitbench.circuits.autocircuit_files import (
    edge_scores_from_prune_scores,
    prune_scores,
    read_prune_scores,
    write_prune_scores,
)
from circuitbench.circuits.score_meaning import ScoreMeaning, sidecar_path
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.scores.methods.outputs import EdgeScores

GRAPHS = [ComponentGraph(2, 3), ComponentGraph(2, 2, has_mlp=False), ComponentGraph(3, 2, parallel_attn_mlp=True),
          ComponentGraph(1, 1)]
MEANING = ScoreMeaning(method="eap", kind="scores", signed=True, ablation="counterfactual", metric="logit_diff")


def _shape(g: ComponentGraph) -> tuple:
    return g.n_layers, g.n_heads, g.has_mlp, g.parallel_attn_mlp


def _scores(graph: ComponentGraph, seed: int = 0) -> EdgeScores:
    rng = np.random.default_rng(seed)
    return EdgeScores(graph, rng.normal(size=graph.real_edges.shape) * graph.real_edges)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.describe())
def test_ours_to_autocircuit_to_ours_is_exact(tmp_path, graph):
    edges = _scores(graph)
    path = tmp_path / "scores.pt"
    write_prune_scores(path, edges, MEANING, "test")
    raw = torch.load(path, weights_only=True)  # torch alone opens it: a dict of tensors, nothing else pickled
    assert isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())
    back = read_prune_scores(path)
    assert _shape(back.edges.graph) == _shape(graph) and np.array_equal(back.edges.scores, edges.scores)
    assert back.meaning == MEANING
    sidecar_path(path).unlink()  # without the sidecar the graph comes from the keys and shapes alone
    again = read_prune_scores(path)
    assert _shape(again.edges.graph) == _shape(graph) and np.array_equal(again.edges.scores, edges.scores)
    assert again.meaning is None


def _autocircuit_graph(n_layers: int, n_heads: int, has_mlp: bool, parallel: bool):
    """auto-circuit's factorized nodes as model_utils/transformer_lens_utils.py defines them
    (separate_qkv=True): sources (name, layer, src_idx), destinations (name, module, layer, head)."""
    srcs, layer = [("Resid Start", 0, 0)], 0
    for b in range(n_layers):
        layer += 1
        srcs += [(f"A{b}.{h}", layer, len(srcs) + h) for h in range(n_heads)]
        if has_mlp:
            if not parallel:
                layer += 1
            srcs.append((f"MLP {b}", layer, len(srcs)))
    dests, layer = [], 0
    for b in range(n_layers):
        layer += 1
        for h in range(n_heads):
            dests += [(f"A{b}.{h}.{x}", f"blocks.{b}.hook_{x.lower()}_input", layer, h) for x in "QKV"]
        if has_mlp:
            if not parallel:
                layer += 1
            dests.append((f"MLP {b}", f"blocks.{b}.hook_mlp_in", layer, None))
    dests.append(("Resid End", f"blocks.{n_layers - 1}.hook_resid_post", layer + 1, None))
    return srcs, dests


def _ours(name: str) -> str:
    """auto-circuit's node name -> ours ('A1.0.Q' -> 'a1.h0<q>', 'MLP 0' -> 'm0')."""
    if name in ("Resid Start", "Resid End"):
        return "input" if name == "Resid Start" else "logits"
    if name.startswith("MLP "):
        return "m" + name[4:]
    parts = name[1:].split(".")
    return f"a{parts[0]}.h{parts[1]}" + (f"<{parts[2].lower()}>" if len(parts) == 3 else "")


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.describe())
def test_a_prune_scores_built_from_autocircuits_definitions_reads_correctly(graph):
    srcs, dests = _autocircuit_graph(graph.n_layers, graph.n_heads, graph.has_mlp, graph.parallel_attn_mlp)
    # patch masks: [heads of the module] + [sources below the destination's layer] (graph_utils.make_model_patchable)
    shapes: dict[str, list[int]] = {}
    for _, module, layer, head in dests:
        n_in = sum(1 for s in srcs if s[1] < layer)
        shapes[module] = [graph.n_heads, n_in] if head is not None else [n_in]
    ps = {module: torch.zeros(shape, dtype=torch.float32) for module, shape in shapes.items()}
    expected: dict[str, float] = {}
    for k, ((s_name, _, s_idx), (d_name, module, _, head)) in enumerate(
            (s, d) for d in dests for s in srcs if s[1] < d[2]):  # edges: s.layer < d.layer (graph_edges)
        value = float(k + 1) / 8  # exact in float32
        ps[module][tuple(([] if head is None else [head]) + [s_idx])] = value  # Edge.patch_idx, min_src_idx 0
        expected[f"{_ours(s_name)}->{_ours(d_name)}"] = value
    edges = edge_scores_from_prune_scores(ps, "hand.pt")
    assert _shape(edges.graph) == _shape(graph)
    assert edges.as_dict() == expected  # every edge, each with its own value: names and layout agree
    assert len(expected) == graph.n_edges
    written = prune_scores(edges, torch.float32)  # and ours is theirs
    assert set(written) == set(ps) and all(torch.equal(written[k], ps[k]) for k in ps)


def test_a_boolean_circuit_reads_as_ones_and_zeros():
    graph = ComponentGraph(2, 2)
    ps = {k: v != 0 for k, v in prune_scores(EdgeScores(graph, np.zeros(graph.real_edges.shape))).items()}
    ps["blocks.1.hook_resid_post"][0] = True  # Resid Start -> Resid End
    ps["blocks.1.hook_k_input"][1, 3] = True  # sources: Resid Start, A0.0, A0.1, MLP 0 (3) -> A1.1.K
    edges = edge_scores_from_prune_scores(ps, "c.pt")
    assert {k: v for k, v in edges.as_dict().items() if v} == {"input->logits": 1.0, "m0->a1.h1<k>": 1.0}


def test_nested_caches_from_a_file(tmp_path):
    graph = ComponentGraph(1, 2)
    edges = _scores(graph, 3)
    path = tmp_path / "task-prune-scores.pkl"
    torch.save({"ioi": {"EAP": prune_scores(edges)}}, path)  # as auto-circuit's save_cache writes its caches
    assert np.array_equal(read_prune_scores(path, select=("ioi", "EAP")).edges.scores, edges.scores)
    with pytest.raises(CircuitbenchError, match=rf"{path}: holds several prune scores at \['ioi'\] .*'EAP'"):
        read_prune_scores(path, select=("ioi",))
    with pytest.raises(CircuitbenchError, match=r"\['ioi'\]\['Random'\]: no such key \(keys here: 'EAP'\)"):
        read_prune_scores(path, select=("ioi", "Random"))


class Pickled:  # an object torch.load(weights_only=True) must refuse to build
    pass


def test_a_file_of_other_pickled_objects_is_refused_without_unpickling_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"blocks.0.hook_q_input": Pickled()}, path)
    with pytest.raises(CircuitbenchError, match=rf"{path}: not a prune-scores file torch can open safely .*never other "
                                                r"pickled objects"):
        read_prune_scores(path)


def _good() -> dict[str, torch.Tensor]:
    return prune_scores(_scores(ComponentGraph(2, 3)))


@pytest.mark.parametrize("change, message", [
    (lambda ps: {**ps, "blocks.0.hook_attn_in": torch.zeros(3, 1)},
     r"\['blocks\.0\.hook_attn_in'\]: scores of edges into a head's whole input .*separate_qkv=True"),
    (lambda ps: {**ps, "blocks.0.hook_resid_mid": torch.zeros(4)},
     r"\['blocks\.0\.hook_resid_mid'\]: auto-circuit's unfactorized graph"),
    (lambda ps: {**ps, "blocks.0.hook_resid_post": torch.zeros(5)},
     r"\['blocks\.0\.hook_resid_post'\]: the residual stream after block 0, not after the last \(1\)"),
    (lambda ps: {**ps, "embed.W_E": torch.zeros(3)}, r"\['embed\.W_E'\]: not a destination module"),
    (lambda ps: {k: v for k, v in ps.items() if k != "blocks.1.hook_k_input"},
     r"\['blocks\.1\.hook_k_input'\]: missing"),
    (lambda ps: {k: v for k, v in ps.items() if k != "blocks.1.hook_resid_post"},
     r"\['blocks\.1\.hook_resid_post'\]: missing \(the edges into the logits"),
    (lambda ps: {**ps, "blocks.1.hook_mlp_in": torch.zeros(7)}, r"\['blocks\.1\.hook_mlp_in'\]: shape \[7\], "
     r"expected \[8\]"),
    (lambda ps: {**ps, "blocks.1.hook_v_input": torch.zeros(2, 5)},
     r"\['blocks\.1\.hook_v_input'\]: shape \[2, 5\], expected \[3, 5\]"),
    (lambda ps: {**ps, "blocks.0.hook_q_input": torch.zeros(4, 3, 1)},
     r"\['blocks\.0\.hook_q_input'\]: shape \[4, 3, 1\], .*one score per token position"),
    (lambda ps: {**ps, "blocks.1.hook_resid_post": torch.full((9,), float("inf"))},
     r"\['blocks\.1\.hook_resid_post'\]: 9 scores are not finite numbers \(auto-circuit's ACDC"),
    (lambda ps: {**ps, "blocks.1.hook_mlp_in": torch.zeros(8, dtype=torch.int64)},
     r"\['blocks\.1\.hook_mlp_in'\]: dtype torch\.int64"),
    (lambda ps: {**ps, "blocks.1.hook_mlp_in": [0.0] * 8}, r"\['blocks\.1\.hook_mlp_in'\]: a list, not a tensor"),
    (lambda ps: torch.zeros(3), r"a Tensor, not a dict of module name -> tensor"),
])
def test_bad_prune_scores_give_one_error_naming_the_key(tmp_path, change, message):
    path = tmp_path / "bad.pt"
    torch.save(change(_good()), path)
    with pytest.raises(CircuitbenchError, match=rf"^{path}: {message}"):
        read_prune_scores(path)


def test_scores_of_another_model_than_the_one_given_are_refused(tmp_path):
    path = tmp_path / "s.pt"
    torch.save(_good(), path)
    with pytest.raises(CircuitbenchError, match=r"scores of a model of 2 layers × 3 heads, attention then MLP, but the "
                                                r"model given has 2 layers × 4 heads"):
        read_prune_scores(path, ComponentGraph(2, 4))
