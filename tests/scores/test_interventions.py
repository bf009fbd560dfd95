"""The intervention engine's single-node ablations (scores/interventions.py): stacked copies resumed
at each node's layer give the numbers of one full forward per node with everything else kept."""
from __future__ import annotations

import numpy as np
import pytest

from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.ablations import Mean, Zero
from circuitbench.scores.interventions import ablated_nodes_values, single_node_ablations
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.catalog import load_task


@pytest.mark.parametrize("ablation", [Zero(), Mean(over="clean")], ids=lambda a: a.name)
def test_single_node_ablations_equal_one_forward_per_node(ablation):
    model = load_model("tracr-reverse", device="cpu")
    data = encode_task(load_task("tasks/known_answers/tracr_reverse.yaml"), model.vocab, model.unk_id, model.n_ctx)
    data = data.subset(0, 12)
    ctx = MethodContext(batch_size=5, metric="logit_diff")
    nodes = ["a0.h0", "m0", "a2.h0", "m3"]
    full, alone = single_node_ablations(model, data, ablation, ctx, nodes)
    heads = {(l, h) for l in range(model.n_layers) for h in range(model.n_heads)}
    mlps = set(range(model.n_layers))
    np.testing.assert_allclose(full, ablated_nodes_values(model, data, heads, mlps, ablation, ctx), atol=1e-5)
    for node in nodes:
        keep, keep_mlps = heads, mlps
        if node.startswith("m"):
            keep_mlps = mlps - {int(node[1:])}
        else:
            keep = heads - {(int(node[1]), int(node.split(".h")[1]))}
        naive = ablated_nodes_values(model, data, keep, keep_mlps, ablation, ctx)
        np.testing.assert_allclose(alone[node], naive, atol=1e-5, err_msg=node)
    assert any(not np.allclose(alone[n], full) for n in nodes)  # some ablation changes something
