"""`circuitbench train` and `circuitbench dynamics`: checkpoints, reproducibility, phase-change
location and the plot."""
import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.specs.catalog import load_task
from circuitbench.training.config import TrainConfig, arch_from
from circuitbench.training.dynamics import analyse, fastest_change, plot
from circuitbench.training.trainer import checkpoint_steps, train

from helpers import cli


def test_checkpoint_steps_log_and_linear():
    steps = checkpoint_steps(1000, 8)
    assert steps[-1] == 1000 and steps == sorted(set(steps))
    assert steps[0] < 50  # log-spaced early checkpoints
    assert {250, 500, 750, 1000} <= set(steps)  # linear ones
    assert checkpoint_steps(10, 0) == [10]


def test_fastest_change_by_hand():
    pc = fastest_change([10, 100, 200, 1000], [4.0, 3.9, 1.0, 0.9], "loss")
    assert (pc.start_step, pc.end_step) == (100, 200) and abs(pc.change + 2.9) < 1e-12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    config = TrainConfig(arch=arch_from("attn-only-2l", d_model=32), tasks=["tasks/examples/induction_small.yaml"],
                         steps=40, checkpoints=4, batch_size=16, seed=1)
    summary = train(config, out / "a")
    train(config, out / "b")
    train(config.model_copy(update={"seed": 2}), out / "c")
    return out, summary


def test_training_is_reproducible_and_checkpoints_load(trained):
    out, summary = trained
    wa, wb, wc = (load_file(str(out / x / "model.safetensors")) for x in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert summary["checkpoints"] == checkpoint_steps(40, 4)
    for step in summary["checkpoints"]:
        model = load_model(str(out / "a" / "checkpoints" / f"step_{step:06d}"), device="cpu")
        assert model.n_layers == 2
    log = json.loads((out / "a" / "training_log.json").read_text())
    assert len(log["loss"]) == 40 and log["config"]["seed"] == 1


def test_dynamics_on_checkpoints_and_plot(trained, tmp_path):
    out, summary = trained
    dyn = analyse(out / "a", "tasks/examples/induction_small.yaml", n=8)
    assert dyn.steps == summary["checkpoints"] and len(dyn.metric_values) == len(dyn.steps)
    assert np.array(dyn.prefix_matching).shape == (len(dyn.steps), 2, 4)
    assert dyn.phase_change.start_step in dyn.steps and dyn.phase_change.end_step in dyn.steps
    i = dyn.steps.index(dyn.phase_change.start_step)
    assert abs(dyn.phase_change.change - (dyn.metric_values[i + 1] - dyn.metric_values[i])) < 1e-9
    png = tmp_path / "d.png"
    plot(dyn, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_tasks_train_on_train_split_only(tmp_path):
    from circuitbench.prompts.generate import generate_prompts
    from circuitbench.specs.options import RunOptions, effective_spec
    from circuitbench.training.trainer import _text_examples

    examples, _ = _text_examples("x2", 1000)
    texts = [prompt + answer for prompt, answer in examples]
    test_prompts = {p.text for p in generate_prompts(effective_spec(load_task("x2"), RunOptions(split="test"))).prompts}
    assert texts and not any(t.startswith(p) for t in texts for p in test_prompts)
    assert not {t.split(",")[0] for t in texts} & {p.split(",")[0] for p in test_prompts}  # whole starts held out
    config = TrainConfig(arch=arch_from("gpt-2l", d_model=32), tasks=["x2"], steps=3, checkpoints=0, batch_size=4)
    train(config, tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    from circuitbench.prompts.encoding import encode_task

    data = encode_task(load_task("x2"), model.vocab, model.unk_id, model.n_ctx)
    assert data.report.n_dropped == 0  # the toy vocabulary covers the test split too


def test_report_splits_put_train_and_test_side_by_side(tmp_path):
    """x2 reports train-split metrics beside test: each equals a separate run on that split."""
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.specs.options import ExecutionOptions, RunOptions, effective_spec

    config = TrainConfig(arch=arch_from("gpt-2l", d_model=32), tasks=["x2"], steps=30, checkpoints=0, batch_size=16)
    train(config, tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    spec = effective_spec(load_task("x2"), RunOptions(methods=[], n_prompts=12))
    assert spec.report_splits == ["train"]
    result = run_unit(spec, model, ExecutionOptions())
    train_spec = effective_spec(load_task("x2"), RunOptions(methods=[], n_prompts=12, split="train"))
    assert train_spec.report_splits == ["test"]
    train_only = run_unit(train_spec, model, ExecutionOptions())
    by_split = result.metrics_by_split
    assert set(by_split) == {"train", "test"}
    for name in ("logit_diff", "loss", "accuracy"):
        assert abs(by_split["test"].metrics[name] - result.metrics[name]) < 1e-9
        assert abs(by_split["train"].metrics[name] - train_only.metrics[name]) < 1e-6
    assert by_split["train"].n_prompts == train_only.task.n_prompts == 12
    assert by_split["train"].metrics["loss"] != by_split["test"].metrics["loss"]  # different prompts


def test_mixed_model_draws_induction_symbols_from_its_stream(tmp_path):
    """A model trained on text + the induction stream gets induction prompts in the stream's
    symbols (t0, t1, ...), not in arbitrary text words of its vocabulary."""
    from circuitbench.models.vocabulary import load_vocabulary
    from circuitbench.prompts.encoding import encode_task

    config = TrainConfig(arch=arch_from("attn-only-1l", d_model=16), tasks=["seq_days",
                                                                            "tasks/examples/induction_small.yaml"],
                         steps=2, checkpoints=0, batch_size=4)
    train(config, tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    vocab = model.vocab.tokenizer.get_vocab()
    symbols = [w for w in vocab if w[0] == "t" and w[1:].isdigit()]
    assert symbols and any(w in vocab for w in ("Monday", "Friday"))
    assert sorted(model.vocab.token_pool) == sorted(vocab[w] for w in symbols)
    assert load_vocabulary(str(tmp_path))[0].token_pool == model.vocab.token_pool
    data = encode_task(load_task("tasks/examples/induction_small.yaml"), model.vocab, model.unk_id, model.n_ctx)
    used = set(data.tokens[:, 1:][data.tokens[:, 1:] != model.vocab.pad_id].tolist())
    assert used <= {vocab[w] for w in symbols}


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_train_weights_and_checkpoints_honour_the_umask(capsys, tmp_path, umask):
    old = os.umask(umask)
    try:
        code, _, err = cli(capsys, "train", "--task", "induction", "--steps", "2", "--checkpoints", "1", "--arch",
                           "attn-only-1l", "--out", str(tmp_path / "t"))
    finally:
        os.umask(old)
    assert code == 0, err
    written = list((tmp_path / "t").rglob("*"))
    assert any(p.name == "model.safetensors" for p in written) and any(p.is_dir() for p in written)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "t", *written]}
    assert modes == {k: (0o777 if (tmp_path / k).is_dir() else 0o666) & ~umask for k in modes}


def test_task_weights_set_how_often_each_task_is_drawn():
    """seq_days (18 train prompts) and seq_digits (hundreds) weighted 3:1: per step about 3 days rows to 1
    digits row, whatever the tasks' sizes; a weight for a task not trained on is an error."""
    from circuitbench.training.trainer import training_data

    config = TrainConfig(arch=arch_from("gpt-2l", d_model=32), tasks=["seq_days", "seq_digits"], steps=1,
                         task_weights={"seq_days": 3})
    data = training_data(config)
    vocab = data.tokenizer.get_vocab()
    days = torch.tensor([vocab[d] for d in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                                            "Sunday")])
    batch, _ = data.batch(1, torch.Generator().manual_seed(0), config.model_copy(update={"batch_size": 4000}))
    assert abs(float(torch.isin(batch[:, 1], days).float().mean()) - 0.75) < 0.03  # a row's first word: its task
    with pytest.raises(CircuitbenchError, match="--task-weights names x2, not among the text tasks"):
        training_data(config.model_copy(update={"task_weights": {"x2": 2.0}}))


def test_the_number_prior_writes_each_numbers_value_into_its_rows(tmp_path):
    """With number_prior the embedding and unembedding rows of an integer token n start as cos/sin(2πn/P):
    computed here for the token '12' and P = 10; a word's rows stay random; without it nothing is written."""
    from circuitbench.models.toy import build_native_model
    from circuitbench.training.trainer import NUMBER_PERIODS, seed_number_embeddings, training_data

    config = TrainConfig(arch=arch_from("gpt-2l", d_model=32), tasks=["x2"], steps=1, number_prior=True)
    vocab = training_data(config).tokenizer.get_vocab()
    model = build_native_model(config.arch.bridge_config(len(vocab)), 0)
    before = model.tok_embed.weight.detach().clone()
    assert seed_number_embeddings(model, vocab) == sum(w.isdigit() for w in vocab) > 50
    k, n = len(NUMBER_PERIODS), NUMBER_PERIODS.index(10)
    for weight in (model.tok_embed.weight, model.head.weight):
        row = weight[vocab["12"], : 2 * k].detach()
        scale = float(row[:k].pow(2).sum().add(row[k:].pow(2).sum()).sqrt()) / k**0.5  # cos² + sin² = 1 per P
        assert row[n] == pytest.approx(scale * np.cos(2 * np.pi * 12 / 10), abs=1e-6)
        assert row[k + n] == pytest.approx(scale * np.sin(2 * np.pi * 12 / 10), abs=1e-6)
    assert torch.equal(model.tok_embed.weight[vocab[","]], before[vocab[","]])
    assert not torch.equal(model.tok_embed.weight[vocab["12"]], before[vocab["12"]])
