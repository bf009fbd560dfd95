"""Attribution patching, NAP and NAP-IG (scores/methods/attribution.py) against gradients taken by
hand with autograd on a tiny random-init GPT-2 with MLPs: the input embedding's node score, EAP-IG's
node integration points α = k/m for k = 1…m, and the sign of every score being the raw effect's
whatever the sign of the clean − counterfactual gap (MIB ranks raw effects)."""
import dataclasses

import numpy as np
import pytest
import torch

from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.interventions import oriented_metric, record_base_run
from circuitbench.scores.methods.attribution import alphas_of
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task

N_PROMPTS = 6


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": N_PROMPTS}), model.vocab, model.unk_id,
                       model.n_ctx)
    return model, data


def naive(model, data, alphas):
    """(head raw effects [L, H], MLP raw effects [L], input raw effect, gap): −Σ (a_corr − a_clean) ·
    mean over α of ∂m/∂a, the block-0 input at corr + α·(clean − corr), one full forward per α
    the input a leaf and every other activation's gradient retained; gap = mean m_clean − mean m_corr (oriented)."""
    batch = data.batch(0, len(data))
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).double()
    _, clean = record_base_run(model, batch.tokens)
    _, corrupt = record_base_run(model, batch.as_corrupted().tokens)
    m_clean = oriented_metric("logit_diff", model.run(batch.tokens), batch).double().mean()
    m_corr = oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch.as_corrupted()).double().mean()
    n, heads, mlps = model.n_layers, model.n_heads, model.has_mlp
    grads_z = [torch.zeros_like(clean.z[l], dtype=torch.float64) for l in range(n)]
    grads_m = [torch.zeros_like(clean.mlp[l], dtype=torch.float64) for l in range(n)]
    grad_in = torch.zeros_like(clean.resid[0], dtype=torch.float64)
    for alpha in alphas:
        leaves = {}

        def leaf(name, value=None):  # the input: a leaf; every later activation: kept with its gradient
            def hook(x):
                if value is not None:
                    leaves[name] = value.detach().clone().requires_grad_(True)
                else:
                    x.retain_grad()
                    leaves[name] = x
                return leaves[name]
            return hook
        start = corrupt.resid[0] + alpha * (clean.resid[0] - corrupt.resid[0])
        edits = [(hooks.resid_pre(0), leaf("input", start))]
        edits += [(hooks.head_outputs(l), leaf(f"z{l}")) for l in range(n)]
        edits += [(hooks.mlp_out(l), leaf(f"m{l}")) for l in range(n)] if mlps else []
        with torch.enable_grad():
            logits = model.run_with_hooks(batch.tokens, edits, grad=True)
            oriented_metric("logit_diff", logits, batch).sum().backward()
        grad_in += leaves["input"].grad.double() / len(alphas)
        for l in range(n):
            grads_z[l] += leaves[f"z{l}"].grad.double() / len(alphas)
            grads_m[l] += leaves[f"m{l}"].grad.double() / len(alphas)
    count = len(data)
    head_effects = np.array([[float(-((corrupt.z[l] - clean.z[l]).double()[:, :, h] * valid[:, :, None]
                                      * grads_z[l][:, :, h]).sum()) / count for h in range(heads)] for l in range(n)])
    mlp_effects = np.array([float(-((corrupt.mlp[l] - clean.mlp[l]).double() * valid[:, :, None]
                                    * grads_m[l]).sum()) / count for l in range(n)])
    input_effect = float(-((corrupt.resid[0] - clean.resid[0]).double() * valid[:, :, None] * grad_in).sum()) / count
    return head_effects, mlp_effects, input_effect, float(m_clean - m_corr)


def scores(model, data, methods, options=None):
    run = MethodRun(batch_size=len(data), metric="logit_diff", method_options=options or {})
    return run_methods(model, data, methods, run)


def test_integration_points_are_eap_igs_node_rule():
    assert alphas_of(0, "published") == [1.0]
    assert alphas_of(4, "published") == [0.25, 0.5, 0.75, 1.0]  # k/m, k = 1…m
    assert alphas_of(4, "midpoint") == [0.125, 0.375, 0.625, 0.875]


@pytest.mark.parametrize("steps", [0, 3])
def test_nap_scores_every_node_and_the_input_as_the_gradient_formula(tiny, steps):
    model, data = tiny
    method = "nap" if steps == 0 else "nap_ig"
    out = scores(model, data, [method, "attribution_patching"],
                 {"nap_ig": {"steps": steps}, "attribution_patching": {"ig_steps": steps}} if steps else None)
    heads, mlps, input_effect, gap = naive(model, data, alphas_of(steps, "published"))
    nap = out[method]
    # normalised by |gap|: the sign is the raw effect's, whichever way the gap points
    np.testing.assert_allclose(nap.heads, heads / abs(gap), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(nap.mlps, mlps / abs(gap), rtol=1e-4, atol=1e-6)
    assert nap.input == pytest.approx(input_effect / abs(gap), rel=1e-4, abs=1e-6)
    assert list(nap.node_scores())[0] == "input"
    # attribution_patching: the same heads and MLPs, no input node
    np.testing.assert_allclose(out["attribution_patching"].heads, nap.heads, rtol=1e-6, atol=1e-9)
    assert out["attribution_patching"].input is None and "input" not in out["attribution_patching"].node_scores()


def test_a_negative_gap_keeps_each_scores_sign_the_raw_effects(tiny):
    """Swap clean and counterfactual prompts: the gap changes sign, and every score flips with the
    raw effect it measures, not with the gap (dividing by the signed gap would leave it unflipped)."""
    model, data = tiny
    swapped = dataclasses.replace(data, tokens=data.corrupted, corrupted=data.tokens)  # same lengths (IOI aligned)
    forward = scores(model, data, ["nap"])["nap"]
    backward = scores(model, swapped, ["nap"])["nap"]
    heads_fwd, _, _, gap_fwd = naive(model, data, [1.0])
    heads_bwd, _, _, gap_bwd = naive(model, swapped, [1.0])
    assert np.sign(gap_fwd) != np.sign(gap_bwd)
    np.testing.assert_array_equal(np.sign(backward.heads), np.sign(heads_bwd))
    np.testing.assert_array_equal(np.sign(forward.heads), np.sign(heads_fwd))


def test_sign_of_normalised_scores_is_the_raw_effects(tiny):
    """Whichever sign m_clean − m_corr has on this model, score × |gap| is the raw effect."""
    model, data = tiny
    heads, _, _, gap = naive(model, data, [1.0])
    out = scores(model, data, ["attribution_patching"])["attribution_patching"]
    np.testing.assert_allclose(out.heads * abs(gap), heads, rtol=1e-4, atol=1e-7)
