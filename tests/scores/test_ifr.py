"""Information flow routes (scores/methods/ifr.py) on a tiny random-init GPT-2 (2 layers × 2 heads,
MLPs) built here, against a naive loop over prompts, positions and edges that reads every node's
output and input from the HF model's own modules (not through circuitbench's hooks), and planted
facts: a source that is the whole of a destination's input has importance 1."""
import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.methods.ifr import proximity, record_ifr_run, shares
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task


def _save(path, tokenizer, zero_block0: bool = False):
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        hf = GPT2LMHeadModel(config)
    if zero_block0:  # block 0 writes nothing: block 1 and MLP 0 read the input embedding alone
        with torch.no_grad():
            for proj in (hf.transformer.h[0].attn.c_proj, hf.transformer.h[0].mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, gpt2_tokenizer):
    return _save(tmp_path_factory.mktemp("gpt2_ifr"), gpt2_tokenizer)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    torch.set_num_threads(1)
    model = load_model(str(tiny_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 5}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


def hf_activations(path, batch):
    """Per layer: the block input, each head's output z_h · W_O[h], the stream after attention, the
    MLP output, the attention pattern and values; and the final stream (ln_f's input), read with
    PyTorch hooks on the HF modules."""
    hf = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()  # returns patterns
    seen: dict = {}
    H = hf.config.n_head
    d = hf.config.n_embd
    for l, block in enumerate(hf.transformer.h):
        block.register_forward_pre_hook(lambda m, args, l=l: seen.__setitem__(("in", l), args[0].detach()))
        block.attn.c_proj.register_forward_pre_hook(lambda m, args, l=l: seen.__setitem__(("z", l), args[0].detach()))
        block.attn.c_attn.register_forward_hook(lambda m, a, out, l=l: seen.__setitem__(("qkv", l), out.detach()))
        block.attn.register_forward_hook(lambda m, a, out, l=l: seen.__setitem__(("attn", l), out[0].detach()))
        block.mlp.register_forward_hook(lambda m, a, out, l=l: seen.__setitem__(("mlp", l), out.detach()))
    hf.transformer.ln_f.register_forward_pre_hook(lambda m, args: seen.__setitem__("final", args[0].detach()))
    with torch.no_grad():
        out = hf(batch.tokens, output_attentions=True)
    layers = []
    for l, block in enumerate(hf.transformer.h):
        w = block.attn.c_proj.weight.detach()  # Conv1D: [d_in, d_out]
        dh = d // H
        z = seen[("z", l)]
        heads = [z[..., h * dh:(h + 1) * dh] @ w[h * dh:(h + 1) * dh] for h in range(H)]
        values = seen[("qkv", l)][..., 2 * d:]
        moved = [values[..., h * dh:(h + 1) * dh] @ w[h * dh:(h + 1) * dh] for h in range(H)]  # v_j W_O[h]
        layers.append({"in": seen[("in", l)], "heads": heads, "mid": seen[("in", l)] + seen[("attn", l)],
                       "mlp": seen[("mlp", l)], "pattern": out.attentions[l], "moved": moved})
    return layers, seen["final"]


def naive_ifr(path, data, heads="same_position"):
    """{edge: importance} by a loop: per prompt, per real token, per destination, the proximity of
    each upstream source's output to the destination's input, normalised over those sources; the
    mean over the prompt's tokens, then over prompts."""
    batch = data.batch(0, len(data))
    layers, final = hf_activations(path, batch)
    n_layers, H = len(layers), len(layers[0]["heads"])
    scores: dict[str, float] = {}

    def share_at(b, p, whole, sources):  # {name: imp} at one position
        x = whole[b, p].double()
        prox = {name: max(float(x.abs().sum() - (x - a[b, p].double()).abs().sum()), 0.0) for name, a in sources}
        total = sum(prox.values())
        return {name: (v / total if total > 0 else 0.0) for name, v in prox.items()}

    for b in range(len(batch)):
        n_tok = int(batch.lengths[b])
        sources = [("input", layers[0]["in"])]
        for l in range(n_layers):
            same = [share_at(b, p, layers[l]["in"], sources) for p in range(n_tok)]
            for h in range(H):
                for kind in "qkv":
                    per_pos = same
                    if heads == "attention" and kind in "kv":
                        per_pos = []
                        for i in range(n_tok):
                            alpha = layers[l]["pattern"][b, h, i]
                            moved = layers[l]["moved"][h][b]
                            whole = (alpha[:, None] * moved).sum(0).double()
                            prox = [max(float(whole.abs().sum() - (whole - alpha[j] * moved[j].double()).abs().sum()),
                                        0.0) for j in range(i + 1)]
                            c = [v / sum(prox) if sum(prox) > 0 else 0.0 for v in prox]
                            per_pos.append({name: sum(c[j] * same[j][name] for j in range(i + 1))
                                            for name, _ in sources})
                    for name, _ in sources:
                        edge = f"{name}->a{l}.h{h}<{kind}>"
                        scores[edge] = scores.get(edge, 0.0) + np.mean([s[name] for s in per_pos]) / len(batch)
            sources += [(f"a{l}.h{h}", layers[l]["heads"][h]) for h in range(H)]
            mlp_in = [share_at(b, p, layers[l]["mid"], sources) for p in range(n_tok)]
            for name, _ in sources:
                edge = f"{name}->m{l}"
                scores[edge] = scores.get(edge, 0.0) + np.mean([s[name] for s in mlp_in]) / len(batch)
            sources.append((f"m{l}", layers[l]["mlp"]))
        into_logits = [share_at(b, p, final, sources) for p in range(n_tok)]
        for name, _ in sources:
            edge = f"{name}->logits"
            scores[edge] = scores.get(edge, 0.0) + np.mean([s[name] for s in into_logits]) / len(batch)
    return scores


def test_proximity_is_the_l1_share_of_disjoint_parts_and_zero_for_a_cancelling_one():
    whole = torch.tensor([3.0, -1.0, 0.0, 2.0])
    parts = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 2.0], [-3.0, 1.0, 0.0, -2.0], [3.0, -1.0, 0.0, 2.0]])
    prox = proximity(parts, whole)
    assert prox.tolist() == [3.0, 3.0, 0.0, 6.0]  # ‖x‖₁ − ‖x − a‖₁: disjoint parts give their own L1 norm
    assert shares(prox[:2]).tolist() == [0.5, 0.5]
    assert shares(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]  # no source near the whole: 0, not 0/0


@pytest.mark.parametrize("heads", ["same_position", "attention"])
def test_ifr_equals_a_naive_loop_over_prompts_positions_and_edges(tiny, tiny_dir, heads):
    model, data = tiny
    output = run_methods(model, data.without_corrupted(), ["ifr"],  # no counterfactual needed
                         MethodRun(2, method_options={"ifr": {"heads": heads}}))["ifr"]
    assert output.settings["heads"] == heads and output.heads is None and output.edges is not None
    got = output.edges.as_dict()
    naive = naive_ifr(tiny_dir, data, heads)
    assert set(got) == set(naive)
    diff = max(abs(got[e] - naive[e]) for e in naive)
    assert diff <= 2e-5, diff
    graph = output.edges.graph
    sums = output.edges.scores.sum(0)  # every destination's sources share 1 at every position
    routed = np.array([d.endswith(("<k>", "<v>")) and heads == "attention" for d in graph.destinations])
    assert np.allclose(sums[~routed], 1.0, atol=1e-5), sums
    # routed through the pattern: ≤ 1 (a position whose parts all cancel each other gives 0)
    assert (sums[routed] <= 1 + 1e-6).all()
    assert (output.edges.scores >= 0).all() and (output.edges.scores[~graph.real_edges] == 0).all()
    same_column = output.edges.scores[:, graph.destination_index["a1.h0<q>"]]
    for kind in "kv":  # the attention decomposition changes key and value edges only, not queries
        column = output.edges.scores[:, graph.destination_index[f"a1.h1<{kind}>"]]
        assert np.allclose(column, same_column) == (heads == "same_position")


def test_a_source_that_is_the_whole_input_has_importance_one(tmp_path, gpt2_tokenizer, tiny):
    """Block 0 writes nothing (its attention and MLP projections zeroed): block 1's heads and MLP 0
    read the input embedding alone, so input -> them is 1 and every block-0 source 0 (planted)."""
    path = _save(tmp_path / "planted", gpt2_tokenizer, zero_block0=True)
    model = load_model(str(path), device="cpu")
    data = tiny[1]
    scores = run_methods(model, data, ["ifr"], MethodRun(5))["ifr"].edges.as_dict()
    for dst in ["m0", *(f"a1.h{h}<{k}>" for h in range(2) for k in "qkv")]:
        assert scores[f"input->{dst}"] == pytest.approx(1.0, abs=1e-6)
        for src in ("a0.h0", "a0.h1", "m0"):
            if f"{src}->{dst}" in scores:
                assert scores[f"{src}->{dst}"] == 0.0
    assert scores["input->a0.h1<k>"] == pytest.approx(1.0, abs=1e-6)  # a layer-0 input has one source, always


@pytest.mark.parametrize("arch", ["gpt_neo", "gpt_neox", "llama"])
def test_each_destination_input_is_the_sum_of_its_sources_on_every_architecture(tiny_models, arch):
    """What IFR compares with what: every node input it reads is the sum of the outputs of the
    sources the graph puts upstream of it, plus the attention output biases of the blocks before it
    (parallel blocks: the MLP reads the block input; grouped-query attention and RMSNorm: llama)."""
    model = load_model(str(tiny_models[arch]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 3}), model.vocab, model.unk_id, model.n_ctx)
    run = record_ifr_run(model, data.batch(0, 3).tokens)
    graph = model.component_graph()
    biases = [model.attention_weights(l).output_bias for l in range(model.n_layers)]

    def close(x, upstream, n_biases):
        expected = run.outputs[:, :, :upstream].sum(2) + sum(biases[:n_biases], torch.zeros_like(x))
        assert torch.allclose(x, expected, atol=1e-4 * (1 + float(x.abs().max()))), float((x - expected).abs().max())

    for l in range(model.n_layers):
        close(run.attention_inputs[l], graph.n_upstream(f"a{l}.h0<q>"), l)
        close(run.mlp_inputs[l], graph.n_upstream(f"m{l}"), l if model.parallel_attn_mlp else l + 1)
    close(run.final, len(graph.sources), model.n_layers)
    scores = run_methods(model, data, ["ifr"], MethodRun(3))["ifr"].edges.scores
    assert np.allclose(scores.sum(0), 1.0, atol=1e-5)
