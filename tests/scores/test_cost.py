"""Method costs (scores/cost.py, models/forward_meter.py) on a tiny random-init GPT-2 (2 layers × 2
heads, MLPs): the forward-equivalents run_methods records equal what is counted by hand from each
method's definition, and the meter counts partial forwards, backwards and prefixes by their share."""
import pytest
import torch

from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.cost import prompt_positions
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 6}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


def test_eap_costs_one_corrupted_forward_and_one_clean_forward_with_its_backward(tiny):
    """EAP per batch: the corrupted run (1), the clean run (1) and its backward (2): 4 forwards of
    the prompts, whatever the batch size (6 prompts in batches of 4 and 2 of different widths)."""
    model, data = tiny
    cost = run_methods(model, data, ["eap"], MethodRun(4))["eap"].cost
    assert cost is not None
    assert cost.forwards == pytest.approx(4.0) and cost.backwards == pytest.approx(1.0)
    assert cost.calls == 4 and cost.prompts == 6 and cost.seconds > 0 and not cost.activation_cache
    assert run_methods(model, data, ["eap"], MethodRun(6))["eap"].cost.forwards == pytest.approx(4.0)


def test_exact_edge_patching_costs_one_forward_per_edge_from_its_destination_block(tiny):
    """Two base runs, then per edge one forward from its destination's block: into block 0 (6 head
    inputs from the input, MLP 0 from input, a0.h0, a0.h1) the whole model, into block 1 (6 head
    inputs × 4 sources, MLP 1 × 6) and the logits (7 sources; patched at the last block's output,
    so that block runs) half of it: 2 + 9 + (24 + 6 + 7) / 2 — with every forward over all positions
    (no key/value prefix); from the first position the counterfactual changes it costs less."""
    model, data = tiny
    assert model.component_graph().n_edges == 46
    outputs = run_methods(model, data, ["edge_patching", "eap"], MethodRun(4))
    with_prefix, eap = outputs["edge_patching"].cost, outputs["eap"].cost
    was, model._prefix_ok = model._prefix_ok, False  # forwards over every position
    try:
        exact = run_methods(model, data, ["edge_patching"], MethodRun(4))["edge_patching"].cost
    finally:
        model._prefix_ok = was
    assert exact.forwards == pytest.approx(2 + 9 + (24 + 6 + 7) / 2)
    assert exact.backwards == 0 and exact.forwards > 7 * eap.forwards
    assert was and with_prefix.forwards < exact.forwards


def test_the_meter_counts_shares_backwards_prefixes_and_not_the_prefix_self_check(tiny):
    model, data = tiny
    batch = data.batch(0, 3)
    rows, width = batch.tokens.shape
    _, cache = model.run_with_cache(batch.tokens, [hooks.resid_pre(1)])
    with model.metered() as outer:
        with model.metered() as meter:
            model.run(batch.tokens)  # 1
            model.run_with_hooks(batch.tokens, resume=(1, cache[hooks.resid_pre(1)]))  # blocks 1..1 of 2: 1/2
            with torch.enable_grad():
                model.run_with_hooks(batch.tokens, grad=True)  # 1, and a backward through it
            model.key_value_prefix(batch.tokens[:, :2])  # 2 of `width` positions
        model._prefix_ok = None
        model.prefix_forwards()  # the harness's own check: no method's work
    assert meter.forward == pytest.approx(rows * width * 2.5 + rows * 2)
    assert meter.backward == pytest.approx(rows * width) and meter.calls == 4
    assert outer.forward == meter.forward and outer.calls == meter.calls  # the inner meter's work, nothing more
    assert model._meter is None  # off again outside the block


def test_forward_equivalents_are_in_units_of_the_prompts_batched_at_their_own_widths(tiny):
    model, data = tiny
    widths = [int(b.tokens.shape[1]) for b in data.batches(4)]
    assert prompt_positions(data, 4) == 4 * widths[0] + 2 * widths[1]
