"""Architecture and training options from the seeds: smeared keys (through the bridge), noise
injection (training only, reproducible) and the loss positions (all | answer)."""
import pytest
import torch
from safetensors.torch import load_file

from circuitbench.environment import torch_threads
from circuitbench.models.loading import load_model
from circuitbench.models.smeared_keys import SmearedKeyProjection
from circuitbench.models.tokenizers import word_level_tokenizer
from circuitbench.models.toy import NativeVariant, build_native_model, load_toy, read_checkpoint_meta, save_checkpoint
from circuitbench.training.config import NoiseConfig, TrainConfig, arch_from
from circuitbench.training.noise import injected_noise
from circuitbench.training.trainer import text_rows, train
from circuitbench.training.zoo import induction_batch

from helpers import cli  # the in-process CLI runner

SMALL = "tasks/examples/induction_small.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny models; extra threads only stall on a shared CPU
        yield


def test_smeared_key_projection_by_hand():
    proj = SmearedKeyProjection(6, n_heads=2, d_head=3)
    with torch.no_grad():
        proj.smear_logit.copy_(torch.tensor([1.5, -0.5]))
    x = torch.randn(2, 5, 6)
    plain = torch.nn.functional.linear(x, proj.weight, proj.bias).view(2, 5, 2, 3)
    w = torch.sigmoid(torch.tensor([1.5, -0.5]))[:, None]
    want = plain.clone()
    want[:, 1:] = w * plain[:, 1:] + (1 - w) * plain[:, :-1]  # position 0 keeps its own key
    assert torch.allclose(proj(x), want.reshape(2, 5, 6), atol=1e-6)


@pytest.mark.parametrize("positional", ["standard", "rotary"])
def test_smeared_model_through_the_bridge_equals_the_trained_model(tmp_path, positional):
    arch = arch_from("attn-only-2l", d_model=32, n_heads=2, n_ctx=40, positional=positional, smear_keys=True)
    tokenizer = word_level_tokenizer([f"t{i}" for i in range(16)])
    cfg = arch.bridge_config(len(tokenizer))
    model = build_native_model(cfg, 0, arch.variant())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # train a little, so the smear weights move away from their init
        tokens, _ = induction_batch(gen, 8, 16, 4, 10, 40, tokenizer.bos_token_id, 3)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    smear = [block.attn.k.smear_logit.detach().clone() for block in model.layers]
    assert all((s.abs() > 1e-3).all() for s in smear)
    model.eval()
    save_checkpoint(tmp_path, model, cfg, tokenizer, {"test": True}, arch.variant())
    assert read_checkpoint_meta(tmp_path)["variant"] == {"smear_keys": True}

    bridge, _, n_params = load_toy(tmp_path, torch.device("cpu"), torch.float32)
    assert n_params == sum(p.numel() for p in model.parameters())
    tokens, _ = induction_batch(torch.Generator().manual_seed(1), 4, 16, 4, 10, 40, tokenizer.bos_token_id, 3)
    with torch.no_grad():
        want = model(tokens)
        got, cache = bridge.run_with_cache(tokens)
    assert (got - want).abs().max() < 1e-5
    # the hooks the harness uses are there, and hook_k holds the smeared keys attention used
    for layer in range(2):
        assert {f"blocks.{layer}.attn.{h}" for h in ("hook_k", "hook_z", "hook_pattern")} <= set(cache.keys())
    native_keys = {}
    handle = model.layers[0].attn.k.register_forward_hook(lambda m, i, o: native_keys.setdefault("k", o))
    with torch.no_grad():
        model(tokens)
    handle.remove()
    assert torch.allclose(cache["blocks.0.attn.hook_k"].reshape(native_keys["k"].shape), native_keys["k"], atol=1e-5)


def test_smeared_keys_record_and_run_through_train_and_load_model(tmp_path):
    config = TrainConfig(arch=arch_from("attn-only-1l", d_model=32, n_heads=2, smear_keys=True), tasks=[SMALL],
                         steps=3, checkpoints=0, batch_size=4)
    train(config, tmp_path)
    assert read_checkpoint_meta(tmp_path)["variant"]["smear_keys"] is True
    assert "layers.0.attn.k.smear_logit" in load_file(str(tmp_path / "model.safetensors"))
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.options import TaskOverrides, effective_spec

    model = load_model(str(tmp_path), device="cpu")
    spec = effective_spec(load_task(SMALL), TaskOverrides(n_prompts=4, methods=["induction", "activation_patching"]))
    result = run_unit(spec, model)
    assert set(result.head_scores) == {"induction", "activation_patching"}
    assert all(len(row) == 2 for row in result.head_scores["activation_patching"])


@pytest.mark.parametrize("site", ["embed", "attn_out", "resid"])
def test_noise_is_injected_in_train_mode_only(site):
    arch = arch_from("gpt-2l", d_model=32, n_heads=2)
    model = build_native_model(arch.bridge_config(20), 0, arch.variant())
    tokens = torch.randint(3, 20, (2, 12), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        clean = model(tokens)
        with injected_noise(model, NoiseConfig(site=site, scale=0.5), torch.Generator().manual_seed(0)):
            model.eval()
            eval_a, eval_b = model(tokens), model(tokens)
            model.train()
            train_a, train_b = model(tokens), model(tokens)
        model.train()
        after = model(tokens)  # the hooks are gone
    assert torch.equal(eval_a, clean) and torch.equal(eval_b, clean)
    assert not torch.allclose(train_a, clean, atol=1e-3) and not torch.allclose(train_a, train_b, atol=1e-3)
    assert torch.equal(after, clean)


def test_noisy_training_is_reproducible_and_the_checkpoint_is_noise_free(tmp_path):
    base = TrainConfig(arch=arch_from("attn-only-2l", d_model=32, n_heads=2), tasks=[SMALL], steps=15, checkpoints=0,
                       batch_size=8, seed=3)
    noisy = base.model_copy(update={"noise": NoiseConfig(site="resid", scale=0.3)})
    for name, config in (("a", noisy), ("b", noisy), ("plain", base)):
        train(config, tmp_path / name)
    wa, wb, wp = (load_file(str(tmp_path / x / "model.safetensors")) for x in ("a", "b", "plain"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wp[k]) for k in wa)  # the noise did change training
    assert read_checkpoint_meta(tmp_path / "a")["record"]["noise"] == {"site": "resid", "scale": 0.3}
    model = load_model(str(tmp_path / "a"), device="cpu")
    tokens = torch.randint(3, 19, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.bridge(tokens), model.bridge(tokens))


def test_answer_targets_mark_exactly_the_answer_tokens():
    vocab = {w: i for i, w in enumerate(["<bos>", "<pad>", "a", "b", "c", "d", ","])}
    data, answers = text_rows([("a b ,", " c d"), ("a", " b")], vocab, 0, 1, n_ctx=16)
    assert data.tolist() == [[0, 2, 3, 6, 4, 5], [0, 2, 3, 1, 1, 1]]
    # target i predicts token i + 1: row 0's answer tokens c, d sit at 4, 5 -> targets 3, 4
    assert answers.tolist() == [[False, False, False, True, True], [False, True, False, False, False]]


def test_induction_answer_mask_marks_copied_tokens_only():
    gen = torch.Generator().manual_seed(0)
    tokens, answers = induction_batch(gen, 16, 8, 4, 10, 40, 0, 3)
    lengths = answers.sum(1)
    assert ((lengths >= 3) & (lengths <= 9)).all()  # a copy of L tokens: L - 1 predictable targets
    for row in range(16):
        for t in answers[row].nonzero().flatten().tolist():
            # an earlier bigram (token t, token t + 1) predicts the target by induction
            assert any(tokens[row, p] == tokens[row, t] and tokens[row, p + 1] == tokens[row, t + 1] for p in range(t))


def test_loss_positions_answer_trains_text_and_induction(tmp_path):
    for task in ("x2", SMALL):
        config = TrainConfig(arch=arch_from("gpt-2l", d_model=32), tasks=[task], steps=3, checkpoints=0, batch_size=4,
                             loss_positions="answer")
        summary = train(config, tmp_path / task.replace("/", "_"))
        assert 0 < summary["final_loss"] < 20


def test_arch_overrides_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        arch_from("attn-only-2l", n_layers=0)
    with pytest.raises(ValidationError, match="multiple of n_heads"):
        arch_from("attn-only-2l", d_model=30)
    with pytest.raises(ValidationError, match="even head size"):
        arch_from("attn-only-2l", d_model=36, n_heads=4, positional="rotary")
    assert NativeVariant.model_validate({}).smear_keys is False  # checkpoints without a variant load plain



def test_train_cli_options_reach_the_checkpoint(capsys, tmp_path):
    code, out, err = cli(capsys, "train", "--task", SMALL, "--arch", "attn-only-1l", "--d-model", "32", "--heads", "2",
                         "--positional", "rotary", "--smear-keys", "--noise-site", "attn_out", "--noise-scale", "0.2",
                         "--loss-positions", "answer", "--steps", "3", "--checkpoints", "2", "--out", str(tmp_path))
    assert code == 0, err
    meta = read_checkpoint_meta(tmp_path)
    assert meta["variant"] == {"smear_keys": True} and meta["config"]["positional_embedding_type"] == "rotary"
    assert meta["record"]["noise"] == {"site": "attn_out",
                                       "scale": 0.2} and meta["record"]["loss_positions"] == "answer"
    assert read_checkpoint_meta(tmp_path / "checkpoints" / "step_000003")["variant"] == {"smear_keys": True}


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--noise-site", "mlp", "--noise-scale", "0.1"], "--noise-site"),
        (["--noise-site", "embed"], "--noise-site and --noise-scale go together"),
        (["--noise-scale", "0.1"], "--noise-site and --noise-scale go together"),
        (["--noise-site", "resid", "--noise-scale", "-1"], "--noise-scale"),
        (["--loss-positions", "last"], "--loss-positions"),
        (["--positional", "alibi"], "--positional"),
        (["--layers", "0"], "--layers"),
        (["--d-model", "30", "--heads", "4"], "not a multiple of n_heads"),
        (["--steps", "many"], "--steps"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_train_options_exit_2_one_message(capsys, tmp_path, args, expected):
    code, _, err = cli(capsys, "train", "--task", SMALL, "--out", str(tmp_path / "run"), *args)
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
