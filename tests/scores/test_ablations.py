"""Typed ablations: parsed from every spec string, and each one's ablated metric (every head and MLP
outside a set replaced) checked against a naive loop that runs one prompt at a time with hooks
written here, from replacement values computed here from single-prompt runs."""
from typing import get_args

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.ablations import Ablation, Counterfactual, Mean, Resample, Zero, parse_ablation
from circuitbench.scores.interventions import ablated_nodes_values, oriented_metric, resample_partners
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AblationOptions
from circuitbench.specs.catalog import all_tasks, load_task
from circuitbench.specs.task import CircuitRule

KEEP = {(0, 1), (1, 0)}  # heads kept; every other head is ablated
KEEP_MLPS = {1}  # MLPs kept; MLP 0 is ablated


def test_every_spec_string_parses_to_its_type():
    assert parse_ablation("zero") == Zero()
    assert parse_ablation("mean") == parse_ablation("mean_clean") == Mean(over="clean")
    assert parse_ablation("mean_counterfactual") == Mean(over="counterfactual")
    assert parse_ablation("counterfactual") == Counterfactual()
    assert parse_ablation("resample") == Resample(seed=0) and parse_ablation("resample", seed=7) == Resample(seed=7)
    # every spelling the spec schema allows, and the name each type reports (the keys of by_ablation)
    for name in get_args(CircuitRule.model_fields["ablation"].annotation):
        assert parse_ablation(name).name == name
    for name in get_args(AblationOptions.model_fields["kind"].annotation):
        assert parse_ablation(name).kind == name
    # every shipped task's ablations
    for task in all_tasks().values():
        if task.circuit is not None:
            assert parse_ablation(task.circuit.ablation).name == task.circuit.ablation
        options = AblationOptions.model_validate(task.method_options.get("ablation", {}))
        assert parse_ablation(options.kind, options.seed).kind == options.kind
    with pytest.raises(CircuitbenchError, match="Unknown ablation 'mean_conterfactual'. Did you mean 'mean_co"):
        parse_ablation("mean_conterfactual")


def test_ablations_are_a_discriminated_union():
    adapter = TypeAdapter(Ablation)
    for ablation in (Zero(), Mean(over="clean"), Mean(over="counterfactual"), Counterfactual(), Resample(seed=3)):
        assert adapter.validate_json(adapter.dump_json(ablation)) == ablation
    assert adapter.validate_python({"kind": "mean", "over": "counterfactual"}) == Mean(over="counterfactual")
    with pytest.raises(ValueError):
        adapter.validate_python({"kind": "mean"})  # over is required: which prompts the mean is over
    with pytest.raises(ValueError):
        adapter.validate_python({"kind": "resample", "seed": -1})


@pytest.fixture(scope="module")
def ioi(tiny_models):
    """A tiny GPT-2 (heads and MLPs) on 24 IOI prompts."""
    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 24}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


def _single_run(model, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer head outputs [pos, n_heads, d_head] and MLP outputs [pos, d_model] of one prompt run alone."""
    sites = [hooks.head_outputs(l) for l in range(model.n_layers)] + [hooks.mlp_out(l) for l in range(model.n_layers)]
    _, cache = model.run_with_cache(tokens[None], sites)
    return ([cache[hooks.head_outputs(l)][0] for l in range(model.n_layers)],
            [cache[hooks.mlp_out(l)][0] for l in range(model.n_layers)])


def _naive(model, data, prompts, replacement, metric="logit_diff") -> np.ndarray:
    """Per prompt of `prompts`, run alone: every head outside KEEP and every MLP outside KEEP_MLPS
    gets `replacement(i)` (head outputs [pos, n_heads, d_head], MLP outputs [pos, d_model] per layer)."""
    out = []
    for i in prompts:
        batch = data.batch(i, i + 1)
        z_fill, mlp_fill = replacement(i)
        edits = []
        for layer in range(model.n_layers):
            heads = [h for h in range(model.n_heads) if (layer, h) not in KEEP]

            def ablate_heads(z, _l=layer, _heads=heads):
                z = z.clone()
                for h in _heads:
                    z[0, :, h] = z_fill[_l][: z.shape[1], h]
                return z

            edits.append((hooks.head_outputs(layer), ablate_heads))
            if layer not in KEEP_MLPS:
                edits.append((hooks.mlp_out(layer), lambda x, _l=layer: mlp_fill[_l][None, : x.shape[1]].clone()))
        logits = model.run_with_hooks(batch.tokens, edits)
        out.append(float(oriented_metric(metric, logits, batch)[0]))
    return np.array(out)


def _engine(model, data, ablation, batch_size=4) -> np.ndarray:
    ctx = MethodContext(batch_size=batch_size, metric="logit_diff")
    return ablated_nodes_values(model, data, KEEP, KEEP_MLPS, ablation, ctx).numpy()


def test_zero_ablation_equals_a_naive_loop(ioi):
    model, data = ioi
    zeros = ([torch.zeros(data.tokens.shape[1], model.n_heads, model.d_head)] * model.n_layers,
             [torch.zeros(data.tokens.shape[1], model.d_model)] * model.n_layers)
    naive = _naive(model, data, range(len(data)), lambda i: zeros)
    assert np.abs(_engine(model, data, Zero()) - naive).max() < 1e-4 and np.abs(naive).max() > 0


@pytest.mark.parametrize("over", ["clean", "counterfactual"])
def test_mean_ablation_equals_a_naive_loop(ioi, over):
    """The mean of every position over the prompts long enough to have it, from each prompt run alone."""
    model, data = ioi
    width = data.tokens.shape[1]
    z_sum = [torch.zeros(width, model.n_heads, model.d_head, dtype=torch.float64) for _ in range(model.n_layers)]
    mlp_sum = [torch.zeros(width, model.d_model, dtype=torch.float64) for _ in range(model.n_layers)]
    count = torch.zeros(width, dtype=torch.float64)
    for i in range(len(data)):
        n = int(data.lengths[i])
        z, mlp = _single_run(model, (data.tokens if over == "clean" else data.corrupted)[i, :n])
        for l in range(model.n_layers):
            z_sum[l][:n] += z[l].double()
            mlp_sum[l][:n] += mlp[l].double()
        count[:n] += 1
    per = count.clamp(min=1)
    means = ([(s / per[:, None, None]).float() for s in z_sum], [(s / per[:, None]).float() for s in mlp_sum])
    naive = _naive(model, data, range(len(data)), lambda i: means)
    assert np.abs(_engine(model, data, Mean(over=over)) - naive).max() < 1e-4
    assert not np.allclose(_engine(model, data, Mean(over=over)), _engine(model, data, Zero()))


def test_counterfactual_ablation_equals_a_naive_loop(ioi):
    model, data = ioi
    naive = _naive(model, data, range(len(data)),
                   lambda i: _single_run(model, data.corrupted[i, : int(data.lengths[i])]))
    assert np.abs(_engine(model, data, Counterfactual()) - naive).max() < 1e-4


def test_resample_ablation_equals_a_naive_loop(ioi):
    """Each prompt with a partner (the same length and named positions) gets the partner's clean
    outputs; prompts without one are left out, in order; the draw is the seed's, whatever the batch size."""
    model, data = ioi
    partners = resample_partners(data, seed=0)
    paired = [i for i in range(len(data)) if partners[i] >= 0]
    assert len(paired) >= 4
    for i in paired:
        j = int(partners[i])
        assert j != i and data.lengths[j] == data.lengths[i]
        assert all(v[j] == v[i] for v in data.positions.values())
    naive = _naive(model, data, paired,
                   lambda i: _single_run(model, data.tokens[int(partners[i]), : int(data.lengths[i])]))
    for batch_size in (1, 5, 24):
        assert np.abs(_engine(model, data, Resample(seed=0), batch_size) - naive).max() < 1e-4


def test_resample_is_deterministic_under_a_seed_and_differs_across_seeds(ioi):
    model, data = ioi
    assert torch.equal(resample_partners(data, 0), resample_partners(data, 0))
    assert not torch.equal(resample_partners(data, 0), resample_partners(data, 1))
    a, b = _engine(model, data, Resample(seed=0)), _engine(model, data, Resample(seed=0))
    assert np.array_equal(a, b)
    assert not np.allclose(a, _engine(model, data, Resample(seed=1)))


def test_ablations_that_need_counterfactuals_say_so(ioi):
    model, data = ioi
    clean_only = data.without_corrupted()
    for ablation in (Counterfactual(), Mean(over="counterfactual")):
        with pytest.raises(CircuitbenchError, match=f"circuit.ablation {ablation.name} needs corrupted prompts"):
            _engine(model, clean_only, ablation)
    assert len(_engine(model, clean_only, Mean(over="clean"))) == len(data)
