"""Head-scoring methods, circuits and faithfulness on the embedded toy and tiny HF models."""
import numpy as np
import pytest
import torch

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap_metrics import rank_correlation as spearman
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.pipeline.unit import run_unit
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.interventions import naive_head_metrics, patched_node_metrics, position_mask, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import ExecutionOptions
from circuitbench.specs.task import CircuitRule, TaskSpec


@pytest.fixture(scope="module")
def toy():
    model = load_model("toy-induction-2l", device="cpu")
    spec = load_task("induction").model_copy(update={"n_prompts": 24})
    return model, encode_task(spec, model.vocab, model.unk_id, model.n_ctx)


def _fast_vs_naive(model, data, metric, positions="all", from_first_difference=False):
    ctx = MethodContext(batch_size=8, metric=metric)
    batch = data.batch(0, 6)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    mask = position_mask(batch, positions)
    unchanged = batch.first_difference() if from_first_difference else None
    fast = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], None, mask, ctx, unchanged)
    slow = naive_head_metrics(model, batch, lambda l: corrupt.z[l], mask, ctx)
    return float((fast - slow).abs().max()), float(slow.abs().max())


def test_fast_patching_equals_naive_loop_on_toy(toy):
    model, data = toy
    diff, scale = _fast_vs_naive(model, data, "induction_loss")
    assert diff < 1e-4 and scale > 0


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama"])
def test_fast_patching_equals_naive_loop_on_hf(tiny_models, arch):
    model = load_model(str(tiny_models[arch]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 6}), model.vocab, model.unk_id, model.n_ctx)
    diff, scale = _fast_vs_naive(model, data, "logit_diff")
    assert diff < 1e-4 and scale > 0
    diff, _ = _fast_vs_naive(model, data, "logit_diff", positions=["S2", "END"])
    assert diff < 1e-4
    # forwards that start where the counterfactual first differs (or at the first patched
    # position), from the keys and values before it: the same numbers, fewer positions computed
    assert model.prefix_forwards()  # (checked once, itself from a prefix)
    starts = []
    record = model.key_value_prefix
    model.key_value_prefix = lambda tokens: starts.append(tokens.shape[1]) or record(tokens)
    try:
        for positions in ("all", ["S2", "END"]):
            diff, _ = _fast_vs_naive(model, data, "logit_diff", positions, from_first_difference=True)
            assert diff < 1e-4
    finally:
        del model.key_value_prefix
    batch = data.batch(0, 6)
    first = batch.first_difference()
    s2_or_end = torch.where(batch.positions["S2"] >= first, batch.positions["S2"], batch.end)
    assert starts == sorted(set(first.tolist())) + sorted(set(s2_or_end.tolist())) and min(starts) > 0


def test_skipped_blocks_do_no_work(toy):
    """Resuming at layer 1 must not run block 0's insides (else nothing is saved)."""
    model, data = toy
    tokens = data.tokens[:2]
    block = model.bridge.blocks[0].original_component
    inner = [m for m in block.modules() if m is not block]
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in inner]
    model.block_formats()  # recorded once per model, from a real forward
    calls.clear()
    logits, run = record_base_run(model, tokens)
    assert calls  # a plain run goes through block 0's submodules
    calls.clear()
    out = model.run_with_hooks(tokens, resume=(1, run.resid[1]))
    for h in handles:
        h.remove()
    assert not calls
    assert (out - logits).abs().max() < 1e-5
    assert "forward" not in vars(model.bridge.blocks[0].original_component)  # restored after the context
    calls.clear()
    assert torch.equal(model.embeddings(tokens), run.resid[0]) and not calls  # stopped before block 0


def test_toy_methods_find_the_induction_circuit(toy):
    model, data = toy
    outputs = run_methods(model, data, ["induction", "previous_token", "activation_patching", "attribution_patching"],
                          MethodRun(batch_size=12, metric="induction_loss"))
    ind, prev, exact, approx = (outputs[k].heads for k in ("induction", "previous_token", "activation_patching",
                                                           "attribution_patching"))
    # node methods score nodes (this model has no MLPs: heads only), detectors heads
    assert [outputs[k].nodes for k in outputs] == [False, False, True, True]
    assert outputs["activation_patching"].node_scores() == {f"a{l}.h{h}": exact[l, h] for l in range(2)
                                                             for h in range(4)}
    assert np.unravel_index(ind.argmax(), ind.shape)[0] == 1  # layer-1 induction head on top
    prev_head = np.unravel_index(prev.argmax(), prev.shape)
    assert prev_head[0] == 0 and prev.max() > 0.5  # layer-0 previous-token head
    # exact patching: the circuit is the previous-token head plus the layer-1 heads
    top5 = {tuple(map(int, np.unravel_index(i, exact.shape))) for i in np.argsort(-exact, axis=None)[:5]}
    assert top5 == {tuple(map(int, prev_head))} | {(1, h) for h in range(4)}
    other_layer0 = [exact[0, h] for h in range(4) if h != prev_head[1]]
    assert exact[1].min() > 3 * max(abs(v) for v in other_layer0)
    assert spearman(exact, approx) > 0.5  # attribution agrees with exact patching
    # denoising (clean head output into the corrupted run): the layer-1 induction heads come out on top,
    # every one above every layer-0 head, the previous-token head included
    restore = run_methods(model, data, ["activation_patching"], MethodRun(
        12, metric="induction_loss", method_options={"activation_patching": {"direction": "denoising"}})
    )["activation_patching"].heads
    assert np.unravel_index(restore.argmax(), restore.shape)[0] == 1
    assert restore[1].min() > restore[0].max() and restore[1].min() > 0.03


def test_ablation_kinds(toy):
    model, data = toy
    zero = run_methods(model, data, ["ablation"], MethodRun(
        12, metric="induction_loss", method_options={"ablation": {"kind": "zero"}}))["ablation"].heads
    resample = run_methods(model, data, ["ablation"], MethodRun(
        12, metric="induction_loss", method_options={"ablation": {"kind": "resample"}}))["ablation"].heads
    assert zero[1].mean() > 0 and resample[1].mean() > 0  # removing induction heads hurts
    assert not np.allclose(zero, resample)


def test_circuit_rules():
    scores = np.array([[0.1, -0.9, 0.0], [0.5, 0.2, -0.3]])
    assert Circuit.from_scores(scores, CircuitRule(top_k=2), "m").heads == [(0, 1), (1, 0)]
    assert Circuit.from_scores(scores, CircuitRule(top_k=2, by="signed"), "m").heads == [(1, 0), (1, 1)]
    assert Circuit.from_scores(scores, CircuitRule(threshold=0.25), "m").heads == [(0, 1), (1, 0), (1, 2)]
    assert Circuit.from_scores(scores, CircuitRule(fraction=0.5), "m").heads == [(0, 1), (1, 0), (1, 2)]
    with pytest.raises(ValueError):
        CircuitRule(top_k=2, threshold=0.1)


def test_faithfulness_and_curve_on_toy(toy, tmp_path):
    model, _ = toy
    spec = load_task("induction").model_copy(update={"n_prompts": 16})
    result = run_unit(spec, model, ExecutionOptions(batch_size=8))
    c = result.circuit
    f = c.faithfulness
    assert c is not None and len(c.heads) == 5
    # f(C) recomputed from the stored metric values, and the curve's end points
    assert abs(f.value - (f.m_circuit - f.m_empty) / (f.m_full - f.m_empty)) < 1e-9
    assert f.curve[0][2] == 0.0 and f.curve[-1][2] == 1.0 and len(f.curve) == 9
    xs, ys = np.array([p[1] for p in f.curve]), np.array([p[2] for p in f.curve])
    assert abs(f.cpr - np.trapezoid(ys, xs)) < 1e-9 and abs(f.cmd - np.trapezoid(np.abs(1 - ys), xs)) < 1e-9
    # stored in the metric's own sign, labelled: a loss is lower for the full model than for the all-ablated one
    assert f.metric == "induction_loss" and f.m_full < f.m_empty
    # like with like, and said: attribution patching approximates noising patching
    assert "spearman(activation_patching[noising], attribution_patching[noising])" in result.method_agreement
    assert {k.method for k in c.candidates} == set(result.head_scores) and f.by_ablation.keys() == {
        "mean_counterfactual", "zero"}
    # auto keeps the candidate whose worst case over the panel is smallest; each worst case is the largest
    # |1 − f| over the rule's ablation, counterfactual patching, mean and resample ablation of that circuit
    best = min(c.candidates, key=lambda k: k.worst_case)
    chosen = next(k for k in c.candidates if k.method == c.method)
    assert chosen.worst_case == best.worst_case and abs(f.value - chosen.faithfulness) < 1e-9
    assert c.choice.startswith(f"auto kept {c.method}: the smallest worst case")
    required = ("mean_counterfactual", "counterfactual", "mean_clean", "resample")  # and every other counterfactual
    panel_worst = max(abs(1 - entry.value) for name, entry in c.panel.items()
                      if name in required or name.startswith("counterfactual:"))
    assert chosen.worst_case == pytest.approx(panel_worst)
    # the 5-head circuit keeps more than the 5 worst heads would
    assert f.value > f.curve[3][2]


def test_causal_tracing_maps(toy):
    model, data = toy
    output = run_methods(model, data, ["causal_tracing"], MethodRun(12, metric="induction_loss", method_options={
        "causal_tracing": {"directions": ["restore", "noise"], "noise": "gaussian"}}))["causal_tracing"]
    assert output.heads is None and output.edges is None
    traces = output.traces
    resid = traces["resid/restore"]
    mean = np.array(resid.mean)
    assert mean.shape == (2, int(data.lengths.min()) - 1) and resid.positions[-1] == "END"
    # restoring the whole last-layer residual at END restores that position's prediction only,
    # restoring it at layer 0 everywhere is what the noise broke: effects are finite, some positive
    assert np.isfinite(mean).all() and mean.max() > 0.05
    assert "attn/noise" in traces and "mlp/restore" not in traces  # attention-only model
    for noise in ("random_embeddings", "shuffled"):
        t = run_methods(model, data, ["causal_tracing"], MethodRun(12, metric="induction_loss", method_options={
            "causal_tracing": {"noise": noise, "kinds": ["resid"]}}))["causal_tracing"].traces
        assert np.isfinite(np.array(t["resid/restore"].mean)).all()


def test_method_options_and_positions_are_validated(toy):
    base = load_task("ioi").model_dump()
    with pytest.raises(ValueError, match="method_options.activation_patching.direction"):
        TaskSpec.model_validate({**base, "methods": ["activation_patching"],
                                 "method_options": {"activation_patching": {"direction": "sideways"}}})
    model, data = toy
    with pytest.raises(CircuitbenchError, match="S2"):
        run_methods(model, data, ["activation_patching"], MethodRun(
            8, metric="induction_loss", method_options={"activation_patching": {"positions": ["S2"]}}))


def test_attention_to_matches_pattern_by_hand(tiny_models):
    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    options = {"attention_to": {"source": "END", "target": "IO"}}
    scores = run_methods(model, data, ["attention_to"], MethodRun(4, method_options=options))["attention_to"].heads
    _, cache = model.bridge.run_with_cache(data.tokens, names_filter=lambda n: n == "blocks.1.attn.hook_pattern")
    pattern = cache["blocks.1.attn.hook_pattern"]  # read through TransformerLens itself, not our facade
    rows = torch.arange(4)
    by_hand = pattern[rows, :, data.positions["END"], data.positions["IO"]].mean(0)
    assert torch.allclose(torch.tensor(scores[1]).float(), by_hand.float(), atol=1e-5)
    with pytest.raises(CircuitbenchError, match="REPEAT"):
        run_methods(model, data, ["attention_to"], MethodRun(4, method_options={"attention_to": {"source": "REPEAT"}}))


def test_resample_ablation_pairs_prompts_across_batches_and_ignores_batch_size(toy):
    """Resample partners come from a seeded derangement over the whole set within one length and
    template: the scores are the same at every batch size, and not zero at batch size 1 (where a
    partner from the prompt's own batch would be the prompt itself)."""
    from circuitbench.scores.interventions import resample_partners

    model, data = toy
    partners = resample_partners(data, seed=0)
    has = partners >= 0
    assert has.sum() >= len(data) // 2 and not (partners[has] == torch.arange(len(data))[has]).any()
    assert torch.equal(data.lengths[partners[has]], data.lengths[has])
    for name, pos in data.positions.items():
        assert torch.equal(pos[partners[has]], pos[has]), name
    assert torch.equal(partners, resample_partners(data, seed=0)) and not torch.equal(partners, resample_partners(data,
                                                                                                                  1))
    options = {"ablation": {"kind": "resample"}}
    by_batch = [run_methods(model, data, ["ablation"], MethodRun(bs, metric="induction_loss",
                                                                 method_options=options))["ablation"].heads
                for bs in (1, 5, 24)]
    assert np.abs(by_batch[0]).max() > 0.01
    for other in by_batch[1:]:
        assert np.abs(other - by_batch[0]).max() < 1e-5


def test_causal_tracing_rome_preset_records_its_settings(toy):
    """preset rome: noise std from the corrupted (subject) tokens' embeddings × 3, 10 samples, a
    window of layers for attention (here the whole 2-layer model: every layer's row is the same
    restoration, so the rows agree); it needs the subject's positions."""
    model, data = toy
    small = data.subset(0, 6)
    with pytest.raises(CircuitbenchError, match="corrupts the subject"):
        run_methods(model, small, ["causal_tracing"], MethodRun(6, metric="induction_loss",
                                                                method_options={"causal_tracing": {"preset": "rome"}}))
    from circuitbench.scores.methods.options import TracingOptions

    rome = TracingOptions(preset="rome", corrupt=["S1"]).resolved()
    assert (rome.samples, rome.window, rome.noise_scale, rome.noise_std_from) == (10, 10, 3.0, "corrupted_tokens")
    # 2 samples here (explicit options win over the preset) to keep the test quick
    options = {"causal_tracing": {"preset": "rome", "samples": 2, "corrupt": ["REPEAT"], "kinds": ["attn", "resid"]}}
    traces = run_methods(model, small, ["causal_tracing"], MethodRun(6, metric="induction_loss",
                                                                     method_options=options))["causal_tracing"].traces
    attn, resid = traces["attn/restore"].model_dump(), traces["resid/restore"].model_dump()
    table = model.token_embeddings()
    subject = small.tokens[torch.arange(len(small)), small.positions["REPEAT"]]
    assert abs(attn["noise_std"] - 3 * float(table[subject].float().std())) < 1e-5
    assert attn["samples"] == 2 and attn["window"] == 2 and resid["window"] == 1 and attn["corrupt"] == ["REPEAT"]
    mean = np.array(attn["mean"])
    assert np.allclose(mean[0], mean[1]) and np.abs(mean).max() > 0  # one window for both layers
    assert not np.allclose(np.array(resid["mean"])[0], np.array(resid["mean"])[1])
