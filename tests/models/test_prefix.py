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
