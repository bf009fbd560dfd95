import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model, resolve_model
from circuitbench.specs.catalog import model_registry


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama"])
def test_local_dir_bridge_matches_hf(tiny_models, arch):
    path = tiny_models[arch]
    model = load_model(str(path), device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tokens = torch.randint(0, 1000, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model.bridge(tokens) - reference(tokens).logits).abs().max().item()
    assert diff < 1e-4
    assert model.n_layers == 2 and model.n_heads == 4
    assert model.n_params == sum(p.numel() for p in reference.parameters())
    # per-head outputs rebuilt from hook_z and W_O give the attention output
    _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in ("blocks.1.attn.hook_z",
                                                                                "blocks.1.hook_attn_out"))
    attn = model.bridge.blocks[1].attn
    rebuilt = torch.einsum("bphd,hdm->bpm", cache["blocks.1.attn.hook_z"], attn.W_O)
    if attn.b_O is not None:  # Llama has no output bias
        rebuilt = rebuilt + attn.b_O
    assert (rebuilt - cache["blocks.1.hook_attn_out"]).abs().max().item() < 1e-4
    # the embeddings alone (a forward stopped before block 0) are what block 0 reads in a full run
    from circuitbench.models import hooks

    calls = []
    handle = model.bridge.blocks[0].original_component.register_forward_pre_hook(lambda *_: calls.append(1))
    embedded = model.embeddings(tokens)
    handle.remove()
    _, full = model.run_with_cache(tokens, [hooks.resid_pre(0)])
    assert not calls and torch.equal(embedded, full[hooks.resid_pre(0)])


def test_registry_parameter_counts_match_architecture():
    """models.yaml's n_params and shape numbers equal the real architecture built (on meta)."""
    for name, spec in model_registry().items():
        if spec.source != "hf":
            continue
        cfg = dict(spec.hf_config)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == spec.n_params, name
        assert config.num_hidden_layers == spec.n_layers, name
        assert config.num_attention_heads == spec.n_heads, name
        assert config.hidden_size == spec.d_model == spec.n_heads * spec.d_head, name
        assert config.vocab_size == spec.d_vocab, name


def test_random_init_registry_model_offline():
    model = load_model("pythia-70m", init="random", device="cpu")
    assert model.n_layers == 6 and model.n_heads == 8
    assert model.n_params == model_registry()["pythia-70m"].n_params
    assert "substitute" in model.tokenizer_source  # pythia's own tokenizer is not shipped offline
    again = load_model("pythia-70m", init="random", device="cpu")
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model.bridge(tokens), again.bridge(tokens))  # seeded init


def test_hub_name_offline_fails_fast_with_advice():
    t0 = time.perf_counter()
    with pytest.raises(CircuitbenchError) as e:
        load_model("gpt2-small", device="cpu")
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "openai-community/gpt2" in msg and "--model DIR" in msg and "--init random" in msg


def test_resolution_kinds(tiny_models, tmp_path):
    assert resolve_model("gpt2-small").kind == "registry"
    assert resolve_model("toy-induction-2l").kind == "toy"
    assert resolve_model(str(tiny_models["gpt2"])).kind == "local_hf"
    assert resolve_model("someorg/some-model").kind == "hub"
    with pytest.raises(CircuitbenchError, match="neither config.json"):
        resolve_model(str(tmp_path))


def test_toy_training_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    from circuitbench.training.zoo import train_zoo_model

    a, _ = train_zoo_model("toy-induction-2l", tmp_path / "a", steps=5, seed=3)
    b, _ = train_zoo_model("toy-induction-2l", tmp_path / "b", steps=5, seed=3)
    c, _ = train_zoo_model("toy-induction-2l", tmp_path / "c", steps=5, seed=4)
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    model = load_model(str(a), device="cpu")  # a fresh checkpoint loads through --model DIR
    assert model.n_layers == 2


def test_shipped_toy_matches_its_registry_entry():
    spec = model_registry()["toy-induction-2l"]
    model = load_model("toy-induction-2l", device="cpu")
    assert (model.n_params, model.n_layers, model.n_heads, model.n_ctx) == (spec.n_params, spec.n_layers, spec.n_heads,
                                                                            spec.n_ctx)
    assert int(model.bridge.cfg.d_vocab) == spec.d_vocab


def test_model_that_cannot_fit_is_refused_before_loading(monkeypatch):
    from circuitbench.models import loading, memory

    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 2 * 2**30)
    monkeypatch.setattr(loading, "_hf_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(CircuitbenchError) as e:
        load_model("gpt-neo-2.7B", init="random", dtype="float32", device="cpu")
    msg = str(e.value)
    # 2,651,307,520 parameters × 4 bytes × 1.2 = 11.85 GiB; bf16 halves it
    assert "11.9 GB in float32" in msg and "--dtype bfloat16 (about 5.9 GB)" in msg and "2.0 GB is free" in msg


def test_zoo_models_reproduce_their_recorded_test_metrics():
    """models.yaml reports each toy's test-split figures; they must be what the model does."""
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.evaluation import evaluate
    from circuitbench.specs.catalog import load_task

    checked = 0
    for name, spec in model_registry().items():
        if spec.source != "toy":
            continue
        assert spec.test_metrics, f"{name}: no test_metrics in models.yaml"
        model = load_model(name, device="cpu")
        for task, recorded in spec.test_metrics.items():
            task_spec = load_task(task)
            data = encode_task(task_spec, model.vocab, model.unk_id, model.n_ctx)
            assert data.report.n_dropped == 0 and task_spec.split == "test"
            clean, _ = evaluate(model, data, list(recorded), 32)
            for metric, value in recorded.items():
                assert abs(float(clean[metric].mean()) - value) < 1e-3, (name, task, metric)
                checked += 1
    assert checked >= 2
