"""training/planted.py: the shipped planted-circuit models keep what planted.json says — every
distractor active, none of them (alone or together) mattering, the reference circuit alone being the
tracr program — measured here with plain forwards through circuitbench's hooks on the loaded
checkpoint (not the training code's own forward); the recipe is reproducible; a build that fails
its check writes nothing; and on a real run an effect method falls below 1 where mean ablation
does not."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.models.toy import ZOO_DIR
from circuitbench.training import planted

PLANTED = ["planted-reverse", "planted-hist", "planted-detect-abc"]
BOUND = 0.02  # of the full clean - counterfactual effect (the 1-2 %)


def _rows(model, texts: list[str], n_pos: int) -> torch.Tensor:
    tok = model.bridge.tokenizer
    ids = [[tok.bos_token_id] + [tok.convert_tokens_to_ids(w) for w in t.split()] for t in texts]
    return torch.tensor([r + [tok.pad_token_id] * (n_pos - len(r)) for r in ids])


@pytest.fixture(scope="module", params=PLANTED)
def shipped(request):
    """(name, loaded model, record, prompts as tensors)."""
    folder = ZOO_DIR / request.param
    model = load_model(str(folder), device="cpu")
    record = json.loads((folder / "planted.json").read_text())
    records = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    n_pos = model.n_ctx
    tok = model.bridge.tokenizer
    data = {"tokens": _rows(model, [r["prompt"] for r in records], n_pos),
            "corrupted": _rows(model, [r["corrupted"] for r in records], n_pos),
            "end": torch.tensor([len(r["prompt"].split()) for r in records]),
            "answer": torch.tensor([tok.convert_tokens_to_ids(r["answer"].strip()) for r in records]),
            "distractor": torch.tensor([tok.convert_tokens_to_ids(r["distractor"].strip()) for r in records])}
    return request.param, model, record, data


def _logit_diff(logits: torch.Tensor, data: dict) -> torch.Tensor:
    rows = torch.arange(len(data["end"]))
    end = logits[rows, data["end"]]
    return end[rows, data["answer"]] - end[rows, data["distractor"]]


def _outputs(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every head's z·W_O and every MLP's output [batch, pos, d_model], from the loaded model's cache."""
    sites = [s for layer in range(model.n_layers) for s in (hooks.head_outputs(layer), hooks.mlp_out(layer))]
    _, cache = model.run_with_cache(tokens, sites)
    out = {}
    for layer in range(model.n_layers):
        per_head = model.attention_weights(layer).head_results(cache[hooks.head_outputs(layer)])
        out.update({f"a{layer}.h{h}": per_head[:, :, h] for h in range(model.n_heads)})
        out[f"m{layer}"] = cache[hooks.mlp_out(layer)]
    return out


def _ablating(model, replace: dict[str, torch.Tensor], z: dict[str, torch.Tensor]) -> list:
    """Hooks that put `replace[name]` in place of those nodes (heads through their z: `z[name]`)."""
    out = []
    for layer in range(model.n_layers):
        heads = {int(n.split(".h")[1]): z[n] for n in replace if n.startswith(f"a{layer}.")}
        if heads:
            def edit(x, _heads=heads):
                x = x.clone()
                for h, value in _heads.items():
                    x[:, :, h] = value
                return x
            out.append((hooks.head_outputs(layer), edit))
        if f"m{layer}" in replace:
            out.append((hooks.mlp_out(layer), lambda x, _v=replace[f"m{layer}"]: _v))
    return out


def _head(node: str) -> tuple[int, int]:
    layer, head = node[1:].split(".h")
    return int(layer), int(head)


def _real(data: dict, n_pos: int) -> torch.Tensor:
    return torch.arange(n_pos)[None] <= data["end"][:, None]


def _replacements(kind: str, values: torch.Tensor, data: dict, n_pos: int) -> torch.Tensor:
    """zero; the position-wise mean over prompts having the position; the next prompt of the same length."""
    if kind == "zero":
        return torch.zeros_like(values)
    if kind == "mean":
        real = _real(data, n_pos).float()[..., None]
        return ((values * real).sum(0) / real.sum(0).clamp(min=1))[None].expand_as(values)
    lengths = data["end"].tolist()
    partner = [next((j for j in [*range(i + 1, len(lengths)), *range(i)] if lengths[j] == lengths[i]), i)
               for i in range(len(lengths))]
    return values[partner]


def test_every_distractor_is_active_and_irrelevant_and_the_record_says_so(shipped):
    name, model, record, data = shipped
    n_pos = model.n_ctx
    clean = model.run(data["tokens"])
    ld = _logit_diff(clean, data)
    full = float(ld.mean() - _logit_diff(model.run(data["corrupted"]), data).mean())
    assert full > 1.0 and bool((clean[torch.arange(len(ld)), data["end"]].argmax(-1) == data["answer"]).all())
    sites = [hooks.head_outputs(layer) for layer in range(model.n_layers)]
    _, zcache = model.run_with_cache(data["tokens"], sites)
    outs, corr = _outputs(model, data["tokens"]), _outputs(model, data["corrupted"])
    distractors = sorted(record["distractors"])
    reference = set(json.loads((ZOO_DIR / name / "circuit.json").read_text())["nodes"])
    every = {f"a{l}.h{h}" for l in range(model.n_layers) for h in range(model.n_heads)} | {
        f"m{l}" for l in range(model.n_layers)}
    assert set(distractors) == every - reference and reference == set(record["reference"])
    real = _real(data, n_pos)
    for node in distractors:  # active: its output varies across prompts and with the counterfactual
        mean = _replacements("mean", outs[node], data, n_pos)
        rms = float((((outs[node] - mean) ** 2).sum(-1)[:, 1:][real[:, 1:]]).mean().sqrt())
        changed = float((((outs[node] - corr[node]).norm(dim=-1) * real).amax(1) > 1e-2).float().mean())
        assert rms > 0.5 and changed > 0.5, (name, node, rms, changed)
        assert abs(rms - record["distractors"][node]["output_rms"]) < 1e-3 * max(1.0, rms)
    zero_z = {n: torch.zeros(*outs[n].shape[:2], model.d_head) for n in reference if not n.startswith("m")}
    hooked = model.run_with_hooks(data["tokens"], _ablating(model, {n: torch.zeros_like(outs[n]) for n in reference},
                                                            zero_z))
    assert float((_logit_diff(hooked, data) - ld).abs().mean()) > 0.25 * full  # the hooks do reach the model
    for kind in ("zero", "mean", "resample"):  # irrelevant: alone, and all of them together
        for group in [[n] for n in distractors] + [distractors]:
            replace = {n: _replacements(kind, outs[n], data, n_pos) for n in group}
            z = {n: _replacements(kind, zcache[hooks.head_outputs(_head(n)[0])][:, :, _head(n)[1]], data, n_pos)
                 for n in group if not n.startswith("m")}
            ablated = model.run_with_hooks(data["tokens"], _ablating(model, replace, z))
            change = (_logit_diff(ablated, data) - ld).abs().max() / full
            assert float(change) < BOUND, (name, kind, group, float(change))
            same = ablated[torch.arange(len(ld)), data["end"]].argmax(-1) == data["answer"]
            assert bool(same.all()), (name, kind, group)


def test_previous_token_distractors_attend_to_the_previous_token(shipped):
    """What a previous-token detector looks for is there, in heads that do not matter."""
    name, model, record, data = shipped
    sites = [hooks.attention_pattern(layer) for layer in range(model.n_layers)]
    _, cache = model.run_with_cache(data["tokens"], sites)
    for node, d in record["distractors"].items():
        if d["role"] != "previous":
            continue
        layer, head = _head(node)
        pattern = cache[hooks.attention_pattern(layer)][:, head]  # [batch, query, key]
        q = torch.arange(1, model.n_ctx)
        on_previous = pattern[:, q, q - 1]
        mask = q[None] <= data["end"][:, None]
        assert float(on_previous[mask].mean()) > 0.9, (name, node)


def test_the_reference_circuit_alone_is_the_tracr_program(shipped):
    """Every distractor zeroed: the planted model's output logits are its tracr base model's."""
    name, model, record, data = shipped
    base = load_model(str(ZOO_DIR / record["base"]), device="cpu")
    assert hashlib.sha256((ZOO_DIR / record["base"] / "model.safetensors").read_bytes()).hexdigest() == \
        record["base_weights_sha256"]
    outs = _outputs(model, data["tokens"])
    zeros = {n: torch.zeros_like(outs[n]) for n in record["distractors"]}
    z = {n: torch.zeros(*outs[n].shape[:2], model.d_head) for n in record["distractors"] if not n.startswith("m")}
    alone = model.run_with_hooks(data["tokens"], _ablating(model, zeros, z))
    want = base.run(data["tokens"])
    outputs = [base.bridge.tokenizer.convert_tokens_to_ids(t)
               for t in json.loads((ZOO_DIR / record["base"] / "tracr.json").read_text())["output_tokens"]]
    real = _real(data, model.n_ctx)
    assert float((alone[..., outputs] - want[..., outputs]).abs()[real].max()) < 1e-4


def test_the_same_seed_rebuilds_the_same_weights(tmp_path):
    digests = []
    for i in range(2):
        planted.build_planted("planted-hist", tmp_path / str(i), steps=20, seed=3, check=False)
        digests.append(hashlib.sha256((tmp_path / str(i) / "model.safetensors").read_bytes()).hexdigest())
    other = planted.build_planted("planted-hist", tmp_path / "other", steps=20, seed=4, check=False)
    assert digests[0] == digests[1] != hashlib.sha256((tmp_path / "other" / "model.safetensors").read_bytes()
                                                      ).hexdigest()
    assert other.seed == 4 and other.steps == 20


@pytest.mark.slow
def test_the_recipe_rebuilds_the_shipped_planted_hist_byte_for_byte(tmp_path):
    record = planted.build_planted("planted-hist", tmp_path / "hist")
    assert (tmp_path / "hist" / "model.safetensors").read_bytes() == \
        (ZOO_DIR / "planted-hist" / "model.safetensors").read_bytes()
    shipped = json.loads((ZOO_DIR / "planted-hist" / "planted.json").read_text())
    assert record.model_dump(mode="json", exclude={"train_seconds"}) == \
        {k: v for k, v in shipped.items() if k != "train_seconds"}


def test_a_build_that_fails_its_check_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(planted, "ACTIVE_MIN", 1e6)  # no distractor can be that active
    with pytest.raises(CircuitbenchError, match="is not active.*Nothing was written"):
        planted.build_planted("planted-hist", tmp_path / "out", steps=5)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_every_empty_slot_needs_a_role(monkeypatch, tmp_path):
    recipe = planted.PLANTED["planted-hist"]
    roles = {k: v for k, v in recipe.roles.items() if k != "m1"}
    monkeypatch.setitem(planted.PLANTED, "planted-hist", planted.PlantedRecipe(
        recipe.base, recipe.n_layers, recipe.n_heads, roles, recipe.description))
    with pytest.raises(CircuitbenchError, match=r"empty slots are .*'m1'"):
        planted.build_planted("planted-hist", tmp_path / "out", steps=1)


def test_on_a_planted_model_patching_loses_precision_that_mean_ablation_keeps():
    """A real run: the length head of planted-reverse is invisible to a same-length counterfactual,
    so activation patching ranks it below distractors with small real effects; mean ablation does
    not. (On tracr-reverse the zero-weight heads tie with it at 0 and precision stays 1.)"""
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.specs.catalog import load_task

    spec = load_task("planted_reverse").model_copy(update={"n_prompts": 24})
    result = run_unit(spec, load_model("planted-reverse", device="cpu"))
    patching, ablation = result.recovery["activation_patching"], result.recovery["ablation"]
    assert patching.precision < 1 and patching.auroc < 1
    assert ablation.precision == ablation.recall == ablation.auroc == 1
    assert result.recovery["previous_token"].precision == 0  # it finds the previous-token distractors
    for method, scores in result.recovery.items():
        ci = result.recovery_ci[method]
        assert ci.n_resamples > 1 and ci.precision[0] <= scores.precision <= ci.precision[1]
    assert result.recovery_ci["activation_patching"].precision[1] < 1  # below 1 on every resample
