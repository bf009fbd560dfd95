"""A block's attention output handed in instead of computed (models/known_attention.py): the
forward does none of that attention's work and gives the full forward's logits; a replacement
that does not reproduce the model is refused by the self-check."""
import pytest
import torch

from circuitbench.models import hooks, known_attention
from circuitbench.models.known_attention import attention_from_heads, known_heads_attention
from circuitbench.models.loading import load_model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_given_attention_does_no_attention_work_and_reproduces_the_forward(tiny_models, arch):
    model = load_model(str(tiny_models[arch]), device="cpu")
    assert known_heads_attention(model)
    tokens = torch.randint(0, 1000, (3, 9), generator=torch.Generator().manual_seed(0))
    full, cache = model.run_with_cache(tokens, [hooks.resid_pre(1), hooks.head_outputs(1), hooks.attn_out(1)])
    given = attention_from_heads(model, 1, cache[hooks.head_outputs(1)])
    assert torch.allclose(given, cache[hooks.attn_out(1)], atol=1e-5)  # Σ_h z_h W_O[h] + b_O is the output
    attention = model.bridge.blocks[1].attn
    inner = [m for m in attention.modules() if m is not attention]
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in inner]
    try:
        with known_attention.known_attention(model, 1, given) as used:
            part = model.run_with_hooks(tokens, resume=(1, cache[hooks.resid_pre(1)]))
    finally:
        for h in handles:
            h.remove()
    assert used and not calls and "forward" not in vars(attention)  # replaced, then put back
    assert float((part - full).abs().max()) <= 1e-4


def test_a_replacement_that_does_not_reproduce_the_model_is_refused(tiny_models, monkeypatch):
    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    monkeypatch.setattr(known_attention, "attention_from_heads", lambda m, l, z: torch.zeros(
        *z.shape[:2], m.d_model, dtype=z.dtype))
    assert not known_heads_attention(model)
