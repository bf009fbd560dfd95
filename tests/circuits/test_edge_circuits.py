"""Edge circuits end to end on the shipped induction toy: the edge rule, pruning, MIB's curve, the
sidecar file of edge scores (EAP-IG / MIB graph JSON) and the K-composition edge."""
import json

import numpy as np
import pytest

import circuitbench as cb
from circuitbench.circuits.edge_faithfulness import EdgeBaseline, circuit_of, edge_circuit
from circuitbench.circuits.faithfulness import MIB_FRACTIONS, mib_cpr_cmd
from circuitbench.circuits.graph_files import load_graph_file
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.results.store import load_result
from circuitbench.scores.ablations import Counterfactual, Resample
from circuitbench.scores.interventions import oriented_metric, resample_partners
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import EdgeScores
from circuitbench.specs.catalog import load_task
from circuitbench.specs.task import CircuitRule

PREVIOUS_TOKEN_HEAD = "a0.h2"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """induction on toy-induction-2l with the permuted counterfactual (the default one keeps the first
    half, so the previous-token head's output at the keys the induction heads read is the same in
    both runs: K-composition is invisible to patching with it)."""
    path = _run_induction(tmp_path_factory.mktemp("edges"), ["eap", "eap_ig", "edge_patching"],
                          CircuitRule(level="edge", top_k=10))
    return path, load_result(path)


def _run_induction(out, methods: list[str], rule: CircuitRule):
    """induction (16 prompts, permuted counterfactual) on toy-induction-2l with these edge methods
    and circuit rule; the result's path."""
    spec = load_task("induction")
    spec = spec.model_copy(update={
        "n_prompts": 16, "methods": methods,
        "method_options": {"eap_ig": {"variant": "activations", "steps": 3}},
        "generator": spec.generator.model_copy(update={"counterfactual": "permuted_positions"}),
        "counterfactuals": [], "circuit": rule})
    path = out / "induction.yaml"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    return cb.run_grid(str(path), "toy-induction-2l", cb.RunOptions(batch_size=16, out=str(out), cache=False))[0].path


def test_edge_circuit_holds_the_k_composition_edge(toy_run):
    _, result = toy_run
    c = result.circuit
    f = c.faithfulness
    assert c is not None and c.level == "edge" and 0 < len(c.edges) <= 10
    assert any(e.startswith(f"{PREVIOUS_TOKEN_HEAD}->a1.") and e.endswith("<k>") for e in c.edges)
    assert {k.method for k in c.candidates} == {"eap", "eap_ig", "edge_patching"}
    assert f.integration == "mib" and [p[1] for p in f.curve] == list(MIB_FRACTIONS)
    assert (f.cpr, f.cmd) == pytest.approx(mib_cpr_cmd([p[2] for p in f.curve_signed], [p[2] for p in f.curve]))
    assert f.curve[-1][2] == 1.0 and f.ablation == "counterfactual"
    assert result.edge_scores["eap_ig"].settings["alphas"] == [1 / 3, 2 / 3, 1.0]  # activations: k = 1…m


def test_edge_scores_sidecar_is_a_graph_file(toy_run):
    path, result = toy_run
    for method, info in result.edge_scores.items():
        raw = json.loads((path.parent / info.file).read_text())
        assert set(raw) >= {"cfg", "nodes", "edges"} and len(raw["edges"]) == info.n_edges == 81
        graph_file = load_graph_file(path.parent / info.file)
        top_edge, top_score = info.top[0]
        assert graph_file.scores[top_edge] == pytest.approx(top_score)
        in_graph = sorted(graph_file.edges)
        assert in_graph == (sorted(result.circuit.edges) if method == result.circuit.method else [])


def test_edge_rule_and_pruning():
    g = ComponentGraph(2, 2, has_mlp=False)
    scores = np.zeros(g.real_edges.shape)
    chosen = {"input->a0.h0<q>": 0.5, "a0.h0->logits": -0.9, "a0.h1->a1.h0<k>": 0.8, "input->a1.h1<v>": 0.1}
    for name, v in chosen.items():
        scores[g.edge_position(name)] = v

    es = EdgeScores(g, scores)
    top2 = edge_circuit(es, CircuitRule(level="edge", top_k=2), "m")
    # neither a0.h0 nor a0.h1 gets an input edge, and a1.h0 has no output: everything dangles, pruned away
    assert top2.edges == [] and top2.heads == []
    top3 = edge_circuit(es, CircuitRule(level="edge", top_k=3), "m")
    assert top3.edges == ["input->a0.h0<q>", "a0.h0->logits"] and top3.heads == [(0, 0)]
    signed = edge_circuit(es, CircuitRule(level="edge", top_k=1, by="signed"), "m")
    assert signed.edges == []  # the best signed edge dangles
    assert circuit_of(g, ["input->a1.h1<v>", "a1.h1->logits"], None, {}).heads == [(1, 1)]


def test_every_methods_cpr_and_cmd_are_its_own_circuits(toy_run, tmp_path):
    """circuit.by_method: the kept method's figures are the circuit's; another method's CPR / CMD
    equal those of a run whose rule names that method (same prompts, same baseline)."""
    _, result = toy_run
    c = result.circuit
    f = c.faithfulness
    assert set(f.by_method) == {"eap", "eap_ig", "edge_patching"}
    assert f.by_method[c.method] == {"faithfulness": f.value, "cpr": f.cpr, "cmd": f.cmd}
    other = next(m for m in ("eap", "eap_ig") if m != c.method)
    alone = load_result(_run_induction(tmp_path, [other], CircuitRule(level="edge", top_k=10, method=other))).circuit
    assert alone.method == other
    figures = {"faithfulness": alone.faithfulness.value, "cpr": alone.faithfulness.cpr, "cmd": alone.faithfulness.cmd}
    for key, value in figures.items():
        assert f.by_method[other][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("ablation", [Counterfactual(), Resample(seed=0)], ids=lambda a: a.name)
def test_every_edge_patched_is_the_replacing_run(tiny_models, ablation):
    """With every edge patched, every node reads only the replacing run's outputs (the input node's
    too): each prompt's m(∅) is the metric of that run (the prompt's counterfactual, or its resample
    partner's clean prompt) scored on the prompt's own answer, here run alone; under resample the
    prompts without a partner of their template are left out."""
    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 16}), model.vocab, model.unk_id, model.n_ctx)
    baseline = EdgeBaseline(model, data, ablation, MethodContext(batch_size=5, metric="logit_diff"))
    empty = baseline.values(np.zeros(baseline.graph.real_edges.shape, dtype=bool), "m(∅)")
    if isinstance(ablation, Counterfactual):
        replacing = {i: data.corrupted[i] for i in range(len(data))}
    else:
        partners = resample_partners(data, ablation.seed)
        replacing = {i: data.tokens[int(partners[i])] for i in range(len(data)) if partners[i] >= 0}
    naive = [float(oriented_metric("logit_diff", model.run_with_hooks(tokens[None, : int(data.lengths[i])]),
                                   data.batch(i, i + 1))[0]) for i, tokens in replacing.items()]
    assert len(empty) == len(naive) >= 4 and np.abs(empty - np.array(naive)).max() < 1e-4
