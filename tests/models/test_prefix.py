"""Forwards from a key/value prefix (models/prefix.py) against the full forward they replace."""
import pytest
import torch

from circuitbench.models import hooks
from circuitbench.models.loading import load_model


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama"])
def test_prefix_forwards_reproduce_the_full_forward(tiny_models, arch):
    """Positions after a prefix, resumed at block 1 with the prefix's keys and values tiled over two
    copies, give the full forward's logits there (rotary models: the positions keep their offsets)."""
    model = load_model(str(tiny_models[arch]), device="cpu")
    assert model.prefix_forwards()
    tokens = torch.randint(0, 1000, (3, 12), generator=torch.Generator().manual_seed(2))
    full, cache = model.run_with_cache(tokens, [hooks.resid_pre(1)])
    start = 5
    prefix = model.key_value_prefix(tokens[:, :start])
    assert prefix.length == start and prefix.batch == 3
    resid = cache[hooks.resid_pre(1)][:, start:]
    part = model.run_with_hooks(tokens[:, start:].repeat(2, 1), resume=(1, resid.repeat(2, 1, 1)), prefix=prefix)
    assert part.shape == (6, 12 - start, full.shape[-1])
    assert (part - full[:, start:].repeat(2, 1, 1)).abs().max() < 1e-4
    # the cache was not consumed: a second forward from the same prefix gives the same logits
    again = model.run_with_hooks(tokens[:, start:], resume=(1, resid), prefix=prefix)
    assert (again - full[:, start:]).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["tracr-reverse", "toy-induction-2l"])
def test_models_that_cannot_resume_from_a_prefix_compute_every_position(name):
    """The shipped toys and TransformerLens-format checkpoints (the tracr zoo) run on the bridge's
    native path, which keeps no key/value cache: they say so, and methods run every position."""
    assert not load_model(name, device="cpu").prefix_forwards()


def test_the_self_check_covers_block_0_and_a_sequence_longer_than_local_attention(tiny_models, monkeypatch):
    """The check that enables prefix forwards resumes at block 0 and block 1, on a short sequence and
    on one longer than GPT-Neo's local-attention window (16 in the tiny config, 256 in the real one)."""
    from circuitbench.models.loaded import PREFIX_CHECK_LENGTH, LoadedModel

    model = load_model(str(tiny_models["gpt_neo"]), device="cpu")
    seen = []
    real = LoadedModel._prefix_reproduces

    def spy(self, layer, length, cut, generator):
        seen.append((layer, length, cut))
        return real(self, layer, length, cut, generator)

    monkeypatch.setattr(LoadedModel, "_prefix_reproduces", spy)
    assert model.prefix_forwards()
    long = min(model.n_ctx, PREFIX_CHECK_LENGTH)
    assert sorted(seen) == sorted([(0, 6, 3), (1, 6, 3), (0, long, long - 3), (1, long, long - 3)])
    assert long - 3 > 16 and PREFIX_CHECK_LENGTH > 256


def test_a_prefix_that_breaks_past_a_window_is_caught(tiny_models, monkeypatch):
    """A forward that is right on short sequences and wrong past position 16 (as a cache that drops
    old keys would be) disables prefix forwards: the long sequence catches it."""
    from circuitbench.models.loaded import LoadedModel

    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    real = LoadedModel.run_with_hooks

    def broken(self, tokens, hooks=(), *, resume=None, grad=False, prefix=None):
        logits = real(self, tokens, hooks, resume=resume, grad=grad, prefix=prefix)
        if prefix is not None and prefix.length > 16:
            logits = logits + 1.0
        return logits

    monkeypatch.setattr(LoadedModel, "run_with_hooks", broken)
    assert not model.prefix_forwards()
