"""Visibility (scores/visibility.py): the share of prompts on which a component's output differs
between the clean and counterfactual run, against a naive one-prompt-at-a-time loop; and the
warnings a run gives when patching cannot see something."""
from __future__ import annotations

import torch

from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.pipeline.unit import visibility_warnings
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.visibility import VISIBLE_TOL, invisible_nodes, visibility
from circuitbench.specs.catalog import load_task


def naive_visibility(model, data) -> dict[str, float]:
    counts: dict[str, int] = {}
    for i in range(len(data)):
        n = int(data.lengths[i])
        clean = model.run_with_cache(data.tokens[i : i + 1, :n], [hooks.head_outputs(l) for l in range(model.n_layers)]
                                     + [hooks.mlp_out(l) for l in range(model.n_layers)])[1]
        corrupt = model.run_with_cache(data.corrupted[i : i + 1, :n], list(clean))[1]
        for site, a in clean.items():
            b = corrupt[site]
            layer = int(str(site).split(".")[1]) if str(site).count(".") else None
            parts = ([(f"a{layer}.h{h}", a[..., h, :], b[..., h, :]) for h in range(model.n_heads)]
                     if a.dim() == 4 else [(f"m{layer}", a, b)])
            for name, x, y in parts:
                changed = (x.double() - y.double()).abs().max() > VISIBLE_TOL * (1 + x.double().abs().max())
                counts[name] = counts.get(name, 0) + int(changed)
    return {name: k / len(data) for name, k in counts.items()}


def test_visibility_is_the_share_of_prompts_where_an_output_changes():
    model = load_model("tracr-reverse", device="cpu")
    data = encode_task(load_task("tasks/known_answers/tracr_reverse.yaml"), model.vocab, model.unk_id, model.n_ctx)
    shares = visibility(model, data, MethodContext(batch_size=16))
    naive = naive_visibility(model, data)
    assert set(shares) == set(naive) and all(abs(shares[k] - naive[k]) < 1e-12 for k in naive), (shares, naive)
    assert 0 < len(invisible_nodes(shares)) < len(shares)  # tracr's unused heads never change; others do


class _Prompts:
    def __init__(self, lengths):
        self.lengths = torch.tensor(lengths)

    def __len__(self):
        return len(self.lengths)


def test_one_prompt_length_and_invisible_components_are_warned():
    warned = visibility_warnings(_Prompts([6, 6, 6]), {"a0.h0": 0.0, "a0.h1": 1.0, "m0": 0.02})
    assert any("every prompt has 6 tokens" in w for w in warned)
    assert any(w.startswith("1 head and 1 MLP never change under this counterfactual (a0.h0, m0)") for w in warned)
    assert visibility_warnings(_Prompts([5, 6]), {"a0.h0": 1.0}) == []
