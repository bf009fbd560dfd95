"""MLP nodes: exact patching of MLP outputs against a naive loop, node scores in results, node-level
circuits and recovery of the tracr zoo's known circuits (heads and MLPs), and MIB's integration
of the faithfulness curve checked by hand."""
import numpy as np
import pytest
import torch

from circuitbench.circuits.faithfulness import MIB_FRACTIONS, mib_cpr_cmd, mib_sizes
from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.pipeline.unit import run_unit
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.interventions import oriented_metric, patched_node_metrics, position_mask, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import ExecutionOptions
from circuitbench.specs.task import CircuitRule

TRACR = {"tracr-reverse": "tracr_reverse", "tracr-hist": "tracr_hist", "tracr-sort-unique": "tracr_sort_unique",
         "tracr-detect-abc": "tracr_detect_abc"}


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_mlp_patching_equals_a_naive_loop(tiny_models, arch):
    model = load_model(str(tiny_models[arch]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 5}), model.vocab, model.unk_id, model.n_ctx)
    ctx = MethodContext(batch_size=8, metric="logit_diff")
    batch = data.batch(0, 5)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    mask = position_mask(batch, "all")
    fast = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], lambda l: corrupt.mlp[l], mask, ctx)
    for layer in range(model.n_layers):
        def patch(x, _l=layer):
            return torch.where(mask[:, :, None], corrupt.mlp[_l], x)
        logits = model.run_with_hooks(batch.tokens, [(hooks.mlp_out(layer), patch)])
        naive = float(oriented_metric("logit_diff", logits, batch).double().sum())
        assert abs(float(fast[layer, -1]) - naive) < 1e-4
    assert fast.shape == (model.n_layers, model.n_heads + 1)


@pytest.mark.parametrize("name", list(TRACR))
def test_mean_ablation_recovers_every_reference_node_of_the_tracr_zoo(name):
    model = load_model(name, device="cpu")
    spec = load_task(f"tasks/known_answers/{TRACR[name]}.yaml")
    result = run_unit(spec, model, ExecutionOptions(batch_size=32))
    assert result.reference is not None and result.reference.mlps  # every zoo circuit holds MLPs
    nodes = result.node_scores["ablation"]
    assert {f"m{l}" for l in range(model.n_layers)} <= set(nodes)  # MLPs are scored
    assert result.node_recovery["ablation"].recall == 1.0
    assert result.node_recovery["ablation"].n_reference == len(result.reference.heads) + len(result.reference.mlps)


def test_node_circuit_keeps_mlps_and_integrates_as_mib():
    model = load_model("tracr-detect-abc", device="cpu")
    spec = load_task("tasks/known_answers/tracr_detect_abc.yaml").model_copy(
        update={"circuit": CircuitRule(level="node", top_k=5, method="ablation")})
    c = run_unit(spec, model, ExecutionOptions(batch_size=32)).circuit
    f = c.faithfulness
    assert c is not None and c.level == "node" and c.mlps == [0, 1, 2] and c.heads == [(1, 0), (1, 1)]
    assert f.value == pytest.approx(1.0, abs=1e-6)  # the known circuit does the task alone
    assert f.integration == "mib" and len(f.curve) == len(f.curve_signed) == 10
    n_nodes = 3 * (2 + 1)
    assert [p[0] for p in f.curve] == mib_sizes(n_nodes) and [p[1] for p in f.curve] == list(MIB_FRACTIONS)
    cpr, cmd = mib_cpr_cmd([p[2] for p in f.curve_signed], [p[2] for p in f.curve])
    assert (f.cpr, f.cmd) == (pytest.approx(cpr), pytest.approx(cmd))


def test_mib_integration_by_hand():
    # a curve over MIB's fractions 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 %, 100 %
    f = [0.0, 0.0, 0.1, 0.2, 0.4, 0.5, 0.7, 0.9, 1.1, 1.0]
    # trapezoids between consecutive fractions, by hand
    widths = [0.001, 0.003, 0.005, 0.01, 0.03, 0.05, 0.1, 0.3, 0.5]
    area = (0.001 * 0.0 + 0.003 * 0.05 + 0.005 * 0.15 + 0.01 * 0.3 + 0.03 * 0.45 + 0.05 * 0.6 + 0.1 * 0.8
            + 0.3 * 1.0 + 0.5 * 1.05)
    from_one = (0.001 * 1.0 + 0.003 * 0.95 + 0.005 * 0.85 + 0.01 * 0.7 + 0.03 * 0.55 + 0.05 * 0.4 + 0.1 * 0.2
                + 0.3 * 0.1 + 0.5 * 0.05)
    assert np.allclose(np.diff(MIB_FRACTIONS), widths)
    cpr, cmd = mib_cpr_cmd(f, f)
    assert cpr == pytest.approx(area) and cmd == pytest.approx(from_one)
    assert cpr == pytest.approx(0.9524) and cmd == pytest.approx(0.1266)
    # CPR and CMD read different rankings: CMD only ever sees the |score| curve
    assert mib_cpr_cmd(f, [1.0] * 10) == (pytest.approx(area), 0.0)
    assert mib_sizes(32491) == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]
