"""Golden test: auto-circuit's two-layer MicroModel pruning test (UFO-101/auto-circuit,
tests/test_prune.py with datasets/micro_model_inputs.json and model_utils/micro_model_utils.py),
rebuilt as a native toy our bridge loads, through our component graph and edge engine.

The MicroModel. A 2-dim residual stream; 2 layers of 2 "heads"; head h returns w_h ⊙ x with
w_0 = [1, 2], w_1 = [3, 4]; the block adds its heads' sum to the stream; the output is the final
stream (no norm, no unembedding). Here: an attention-only native toy with normalization_type None,
d_model = d_head = n_heads = 2, W_V[h] = diag(w_h), W_O[h] = I, zero W_Q, W_K and biases, zero
positional embeddings, identity unembedding, tokens 0 / 1 embedded as [1, 1] / [−1, −1]. Prompts are
one token long, so each head attends to itself with weight exactly 1 and computes w_h ⊙ x. Names:
auto-circuit's Resid Start = `input`, B{L}.{h} = `a{L}.h{h}` (as a destination its `<v>` input; its
`<q>` and `<k>` inputs change nothing), Resid End = `logits`. A test-local metric reads the answer
token's logit, so prompts with answer 0 and 1 read the two output coordinates.

Node outputs by hand. Clean x = [1, 1]: input [1, 1], a0.h0 = [1, 2], a0.h1 = [3, 4], block-1 input
x ⊙ (1 + w_0 + w_1) = [5, 7], a1.h0 = [5, 14], a1.h1 = [15, 28], logits [5, 7] ⊙ [5, 7] = [25, 49].
Corrupt x' = [−1, −1]: every output negated, logits [−25, −49].

What auto-circuit's numbers mean (prune.run_circuits with PatchType.EDGE_PATCH: the input is
batch.corrupt, patch_src_outs come from batch.clean, patch_mask is 1 on the top-k edges; nothing is
pruned). Edges by score: a0.h1->logits 3, a0.h0->a1.h1<v> 2, input->a0.h0<v> 1. The forward runs on
the CORRUPT prompt; the circuit's edges carry the CLEAN run's source outputs, every other edge the
current run's (denoising):
- k = 0: the corrupted run, [−25, −49].
- k = 1: logits read a0.h1's clean [3, 4] instead of [−3, −4]: [−25, −49] + [6, 8] = [−19, −41].
- k = 2: a1.h1 reads [−5, −7] + ([1, 2] − [−1, −2]) = [−3, −3], outputs [−9, −12] instead of
  [−15, −28]: + [6, 16] = [−13, −25].
- k = 3: a0.h0 reads the clean input and outputs [1, 2] (+ [2, 4]), which reaches the logits directly
  (+ [2, 4]) and through a1.h0 (+ w_0 ⊙ [2, 4] = [2, 8]); its edge into a1.h1 already carried the clean
  [1, 2]: + [4, 12] = [−9, −13].
So the belief holds: corrupted run, circuit edges carry clean outputs, no dangling-node pruning (at
k = 1 the single edge's source has no input edge in the circuit and still counts). In our engine:
`circuit_metric` on the corrupted prompts with `outside` = the circuit's edges and the clean node
outputs as replacement. (auto-circuit's TREE_PATCH — clean input, edges outside the circuit carry the
corrupt outputs — is MIB's forward without the pruning.)

MIB's semantics on the same circuits (clean run, edges outside carry the corrupt outputs, edges
inside the current run's; dangling nodes pruned). A circuit edge whose source reads only corrupt
inputs carries its corrupt output, and one whose destination reaches the logits through no circuit
edge changes nothing: all four circuits give the corrupted run, [−25, −49], so f = 0 (auto-circuit's
k = 3 recovers 32 % / 37 % of the two gaps). ComponentGraph.prune (EAP-IG's and MIB's) leaves all
of them empty: a0.h1 has no incoming circuit edge, a1.h1 no outgoing one, then a0.h0 no outgoing one.
Dangling edges being inert, pruning never changes MIB's m(C); a connected circuit shows it is not
vacuous: {input->a0.h0<v>, a0.h0->a1.h1<v>, a1.h1->logits, input->logits} gives logits = input [1, 1]
+ a0.h0 corrupt [−1, −2] + a0.h1 corrupt [−3, −4] + a1.h0 corrupt [−5, −14] + a1.h1 on
[−1, −1] + [1, 2] + [−3, −4] = [−3, −3], [−9, −12] → [−17, −31], with or without a dangling
a0.h1->a1.h0<v> (which the prune drops).

Exact patching of one edge u -> v on the clean run (EAP-IG's and our edge_patching's effect):
logits = [25, 49] + (corrupt_u − clean_u) ⊙ gain(v), gain(logits) = 1, gain(a1.h<v>) = w_h,
gain(a0.h<v>) = w_h ⊙ [5, 7] (the head's output goes to the logits and through both layer-1 heads),
gain(<q>), gain(<k>) = 0; e.g. a1.h1->logits [−5, −7], a0.h1->a1.h1<v> [7, 17], input->a0.h0<v>
[15, 21]. `micro_reference` below recomputes every number edge by edge, as the MicroModel would.
"""
from collections.abc import Callable

import numpy as np
import pytest
import torch

from circuitbench.circuits.edge_faithfulness import EdgeBaseline, circuit_of
from circuitbench.environment import torch_threads
from circuitbench.models.loading import load_model
from circuitbench.models.tokenizers import vocab_list_tokenizer
from circuitbench.models.toy import build_native_model, native_config, save_checkpoint
from circuitbench.prompts.encoding import Batch, DropReport, EncodedPrompts
from circuitbench.scores.ablations import Counterfactual
from circuitbench.scores.edges import circuit_metric, node_outputs, output_deltas, patched_edge_metrics, valid_positions
from circuitbench.scores.interventions import record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.registries import METRICS, metric

W = np.array([[1.0, 2.0], [3.0, 4.0]])  # auto-circuit's Block.weights: head h multiplies by W[h]
CLEAN, CORRUPT = np.array([1.0, 1.0]), np.array([-1.0, -1.0])  # micro_model_inputs.json, last position
METRIC = "micro_model_answer_logit"  # test-local; registered for this module only
# auto-circuit's prune scores (B0.1->Resid End 3, B0.0->B1.1 2, Resid Start->B0.0 1), in our names
SCORED = {"a0.h1->logits": 3.0, "a0.h0->a1.h1<v>": 2.0, "input->a0.h0<v>": 1.0}
AUTO_CIRCUIT = [(-25.0, -49.0), (-19.0, -41.0), (-13.0, -25.0), (-9.0, -13.0)]  # test_pruning, 0..3 edges
PATH = ["input->a0.h0<v>", "a0.h0->a1.h1<v>", "a1.h1->logits", "input->logits"]
DANGLING = "a0.h1->a1.h0<v>"


# --- the MicroModel, edge by edge (independent of the engine) -----------------------------------
Carried = Callable[[str, str, np.ndarray], np.ndarray]


def micro_reference(x: np.ndarray, carried: Carried) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(node outputs, output) of auto-circuit's MicroModel on input `x` when destination d reads
    carried(u, d, u's output in this run) from each source u upstream of it."""
    out = {"input": x}
    for layer in range(2):
        upstream = list(out)
        for h in range(2):
            dst = f"a{layer}.h{h}<v>"
            out[f"a{layer}.h{h}"] = W[h] * sum(carried(u, dst, out[u]) for u in upstream)
    return out, sum(carried(u, "logits", out[u]) for u in out)


def live(u: str, d: str, value: np.ndarray) -> np.ndarray:
    return value


CLEAN_NODES, CLEAN_OUT = micro_reference(CLEAN, live)
CORRUPT_NODES, CORRUPT_OUT = micro_reference(CORRUPT, live)


def auto_circuit_edge_patch(circuit: list[str]) -> np.ndarray:
    """PatchType.EDGE_PATCH: the corrupted run, the circuit's edges carry the clean outputs."""
    return micro_reference(CORRUPT, lambda u, d, v: CLEAN_NODES[u] if f"{u}->{d}" in circuit else v)[1]


def mib(circuit: list[str]) -> np.ndarray:
    """MIB: the clean run, edges outside the circuit carry the corrupt outputs."""
    return micro_reference(CLEAN, lambda u, d, v: v if f"{u}->{d}" in circuit else CORRUPT_NODES[u])[1]


def one_edge_patched(edge: str) -> np.ndarray:
    """The clean run with only `edge` carrying its source's corrupt output ([25, 49] for q/k edges)."""
    return micro_reference(CLEAN, lambda u, d, v: CORRUPT_NODES[u] if f"{u}->{d}" == edge else v)[1]


def test_the_reference_is_the_micro_model_and_gives_auto_circuits_numbers():
    assert CLEAN_OUT.tolist() == [25, 49] and CORRUPT_OUT.tolist() == [-25, -49]
    assert {k: v.tolist() for k, v in CLEAN_NODES.items()} == {
        "input": [1, 1], "a0.h0": [1, 2], "a0.h1": [3, 4], "a1.h0": [5, 14], "a1.h1": [15, 28]}
    top = list(SCORED)
    assert [auto_circuit_edge_patch(top[:k]).tolist() for k in range(4)] == [list(v) for v in AUTO_CIRCUIT]
    assert all(mib(top[:k]).tolist() == [-25, -49] for k in range(4))
    assert mib(PATH).tolist() == mib([*PATH, DANGLING]).tolist() == [-17, -31]
    assert one_edge_patched("a1.h1->logits").tolist() == [-5, -7]
    assert one_edge_patched("a0.h1->a1.h1<v>").tolist() == [7, 17]
    assert one_edge_patched("input->a0.h0<v>").tolist() == [15, 21]


# --- the toy through our loader, graph and engine ---------------------------------------------
def micro_state_dict(n_ctx: int) -> dict[str, torch.Tensor]:
    """Every parameter of the native model, hand-set (nn.Linear weights are [out, in])."""
    w = torch.tensor(W, dtype=torch.float32)
    state = {"tok_embed.weight": torch.tensor(np.stack([CLEAN, CORRUPT]), dtype=torch.float32),
             "pos.weight": torch.zeros(n_ctx, 2), "head.weight": torch.eye(2)}
    for layer in range(2):
        p = f"layers.{layer}.attn."
        state |= {p + "q.weight": torch.zeros(4, 2), p + "k.weight": torch.zeros(4, 2),
                  p + "v.weight": torch.cat([torch.diag(w[h]) for h in range(2)]),  # rows: head h's d_head
                  p + "o.weight": torch.cat([torch.eye(2), torch.eye(2)], 1)}  # columns: head h's z
        state |= {p + f"{x}.bias": torch.zeros(2 if x == "o" else 4) for x in "qkvo"}
    return state


@pytest.fixture(scope="module")
def answer_logit_metric():
    """The answer token's logit, registered as a plugin registers a metric, for this module only."""
    METRICS.names()  # built-ins loaded before the registry is copied
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(METRICS, "_items", dict(METRICS._items))
        mp.setattr(METRICS, "_origins", dict(METRICS._origins))

        @metric(METRIC, higher_is_better=True, needs_answer=True, description="the answer token's logit at END")
        def answer_logit(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
            rows = torch.arange(len(batch), device=logits.device)
            return logits[rows, batch.end.to(logits.device), batch.answer.to(logits.device)].float()
        yield METRIC


@pytest.fixture(scope="module")
def micro(tmp_path_factory, answer_logit_metric):
    """(model, prompts, batch): two copies of the one-token clean prompt (corrupt: token 1), with
    answers 0 and 1, so a per-prompt metric reads both output coordinates."""
    n_ctx = 4
    config = native_config(n_layers=2, d_model=2, n_heads=2, d_head=2, n_ctx=n_ctx, d_vocab=2, attn_only=True,
                           normalization_type=None)
    native = build_native_model(config, seed=0)
    native.load_state_dict(micro_state_dict(n_ctx))  # strict: every parameter replaced by a hand-set one
    path = tmp_path_factory.mktemp("micro_model")
    save_checkpoint(path, native, config, vocab_list_tokenizer(["<bos>", "<unk>"], "micro-model"),
                    {"recipe": "auto-circuit MicroModel, hand-set weights"})
    with torch_threads(1):
        model = load_model(str(path), device="cpu", dtype="float32")
    answers = torch.tensor([0, 1])
    data = EncodedPrompts(texts=["<bos>", "<bos>"], tokens=torch.zeros(2, 1, dtype=torch.long),
                          corrupted=torch.ones(2, 1, dtype=torch.long), lengths=torch.ones(2, dtype=torch.long),
                          answer=answers, distractor=1 - answers, positions={"END": torch.zeros(2, dtype=torch.long)},
                          score_mask=torch.zeros(2, 1, dtype=torch.bool), has_answer=True,
                          report=DropReport(n_total=2), prompt_hash="micro-model")
    return model, data, data.batch(0, 2)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def ctx() -> MethodContext:
    return MethodContext(batch_size=2, metric=METRIC)


def edge_mask(graph, edges: list[str]) -> torch.Tensor:
    mask = torch.zeros(graph.real_edges.shape, dtype=torch.bool)
    for name in edges:
        mask[graph.edge_position(name)] = True
    return mask


def runs(model, batch):
    """Each source node's output [batch, pos, n_src, d] in the clean and in the corrupted run."""
    _, clean = record_base_run(model, batch.tokens)
    _, corrupt = record_base_run(model, batch.corrupted)
    return clean, corrupt, node_outputs(model, clean), node_outputs(model, corrupt)


def test_the_toy_is_the_micro_model(micro):
    model, _, batch = micro
    assert model.run(batch.tokens)[0, -1].tolist() == [25.0, 49.0]
    assert model.run(batch.corrupted)[0, -1].tolist() == [-25.0, -49.0]
    graph = model.component_graph()
    assert graph.sources == ["input", "a0.h0", "a0.h1", "a1.h0", "a1.h1"] and graph.n_edges == 3 * 2 + 3 * 2 * 3 + 5
    _, _, clean, corrupt = runs(model, batch)
    for i, name in enumerate(graph.sources):
        assert clean[0, 0, i].tolist() == CLEAN_NODES[name].tolist()
        assert corrupt[0, 0, i].tolist() == CORRUPT_NODES[name].tolist()


def test_auto_circuit_edge_patch_outputs_are_the_denoising_circuit_forward(micro):
    """auto-circuit's four outputs: the corrupted prompts, the top-k edges by score carrying the clean outputs."""
    model, _, batch = micro
    graph = model.component_graph()
    _, _, clean, _ = runs(model, batch)
    scores = np.zeros(graph.real_edges.shape)
    for name, score in SCORED.items():
        scores[graph.edge_position(name)] = score
    order = np.argsort(-scores, axis=None, kind="stable")
    for k, want in enumerate(AUTO_CIRCUIT):
        circuit = torch.zeros(scores.size, dtype=torch.bool)
        circuit[torch.from_numpy(order[:k])] = True
        got = circuit_metric(model, graph, batch.as_corrupted(), circuit.reshape(scores.shape), clean, ctx())
        assert torch.allclose(got, torch.tensor(want), atol=1e-4), (k, got)


def test_mib_semantics_on_the_same_circuits_with_and_without_the_prune(micro):
    model, data, batch = micro
    graph = model.component_graph()
    _, _, _, corrupt = runs(model, batch)
    real = torch.from_numpy(graph.real_edges)
    baseline = EdgeBaseline(model, data, Counterfactual(), ctx())  # MIB's edge faithfulness machinery
    assert (baseline.m_full, baseline.m_empty) == pytest.approx((37.0, -37.0), abs=1e-4)  # means of ±[25, 49]
    top = list(SCORED)
    for k in range(4):
        keep = edge_mask(graph, top[:k])
        unpruned = circuit_metric(model, graph, batch, real & ~keep, corrupt, ctx())
        pruned, nodes = graph.prune(keep.numpy())
        assert not pruned.any() and not nodes.any()  # no edge and no node left (the input has no outgoing edge)
        assert circuit_of(graph, top[:k], None, {}).edges == []
        assert torch.allclose(unpruned, torch.tensor(mib(top[:k]), dtype=torch.float32), atol=1e-4)
        assert torch.allclose(unpruned, torch.tensor([-25.0, -49.0]), atol=1e-4)
        assert baseline.values(baseline.keep_of(top[:k]), "m(C)") == pytest.approx([-25.0, -49.0], abs=1e-4)
        assert baseline.f(top[:k]) == pytest.approx(0.0, abs=1e-6)
    # a connected circuit, and the same with a dangling edge: the prune drops that edge, m(C) is unchanged
    with_dangling = [*PATH, DANGLING]
    pruned, _ = graph.prune(edge_mask(graph, with_dangling).numpy())
    assert sorted(circuit_of(graph, with_dangling, None, {}).edges) == sorted(PATH)
    assert torch.equal(torch.from_numpy(pruned), edge_mask(graph, PATH))
    for edges in (PATH, with_dangling):
        got = circuit_metric(model, graph, batch, real & ~edge_mask(graph, edges), corrupt, ctx())
        assert torch.allclose(got, torch.tensor([-17.0, -31.0]), atol=1e-4)
        assert torch.allclose(got, torch.tensor(mib(edges), dtype=torch.float32), atol=1e-4)
    assert baseline.values(baseline.keep_of(with_dangling), "m(C)") == pytest.approx([-17.0, -31.0], abs=1e-4)
    assert baseline.f(with_dangling) == pytest.approx((-24.0 + 37.0) / 74.0, abs=1e-6)


def test_exact_single_edge_patching(micro):
    model, data, batch = micro
    graph = model.component_graph()
    edges = [graph.edge_position(name) for name in graph.edges]
    gain = {"logits": np.ones(2)} | {f"a{layer}.h{h}<v>": W[h] * (np.array([5.0, 7.0]) if layer == 0 else 1.0)
                                     for layer in range(2) for h in range(2)}
    for answer in (0, 1):
        one = batch.select(torch.tensor([answer]))
        clean, corrupt, _, _ = runs(model, one)
        delta = output_deltas(model, clean, corrupt, valid_positions(one, model.device))
        got = patched_edge_metrics(model, graph, one, clean, delta, edges, ctx())
        for k, name in enumerate(graph.edges):
            src, dst = name.split("->")
            by_hand = CLEAN_OUT + (CORRUPT_NODES[src] - CLEAN_NODES[src]) * gain.get(dst, 0.0)
            assert by_hand.tolist() == one_edge_patched(name).tolist()
            assert float(got[k]) == pytest.approx(by_hand[answer], abs=1e-4), name
    # the method: (m_clean − m_patched) / |m_clean − m_corr|, prompts (here: the two coordinates) summed
    scores = run_methods(model, data, ["edge_patching"], MethodRun(2, metric=METRIC))["edge_patching"].edges
    for name in graph.edges:
        want = (CLEAN_OUT.sum() - one_edge_patched(name).sum()) / (CLEAN_OUT.sum() - CORRUPT_OUT.sum())
        assert scores.scores[graph.edge_position(name)] == pytest.approx(want, abs=1e-5), name
    assert scores.scores[graph.edge_position("a1.h1->logits")] == pytest.approx(86 / 148)
