"""The induction phase change in a short CPU training run, and induction heads in one layer with
smeared keys.

The metrics are computed here, from the checkpoints' logits and attention patterns through the
bridge, and only then compared with what `dynamics` reports:
  second-half loss = mean next-token loss on the repeated half after its first token
                     (prompt BOS + A + A; the first half is random, the second predictable);
  prefix matching  = attention from each second-half token to the token after its earlier copy.
"""
import time

import numpy as np
import pytest
import torch

from circuitbench.environment import torch_threads
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import RunOptions, effective_spec
from circuitbench.training.config import TrainConfig, arch_from
from circuitbench.training.dynamics import analyse
from circuitbench.training.trainer import train

SMALL = "tasks/examples/induction_small.yaml"  # 16 symbols, |A| = 8..14
N_EVAL = 32


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny models; extra threads only stall on a shared CPU
        yield


def own_metrics(path) -> tuple[float, np.ndarray]:
    """(second-half loss in nats, mean over prompts; prefix-matching score [n_layers, n_heads], mean
    over second-half tokens) on the task's prompts."""
    model = load_model(str(path), device="cpu")
    data = encode_task(effective_spec(load_task(SMALL), RunOptions(n_prompts=N_EVAL)), model.vocab, model.unk_id,
                       model.n_ctx)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.n_layers)]
    losses, prefix, n_queries = [], np.zeros((model.n_layers, model.n_heads)), 0
    for batch in data.batches(N_EVAL):
        with torch.inference_mode():
            logits, cache = model.bridge.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
        logp = torch.log_softmax(logits.float(), -1)
        for row in range(len(batch)):
            tokens, length = batch.tokens[row], int(batch.lengths[row])
            half = (length - 1) // 2
            assert length == 1 + 2 * half and torch.equal(tokens[1 : 1 + half], tokens[1 + half : length])
            repeat = range(half + 2, 2 * half + 1)  # the repeat after its first token
            losses.append(np.mean([-float(logp[row, pos - 1, tokens[pos]]) for pos in repeat]))
            for query in range(half + 1, 2 * half + 1):  # token A_j of the repeat -> A_{j+1} of the first half
                n_queries += 1
                for layer, name in enumerate(names):
                    prefix[layer] += cache[name][row, :, query, query - half + 1].double().numpy()
    return float(np.mean(losses)), prefix / n_queries


def test_two_layer_attention_only_model_shows_the_induction_phase_change_within_a_minute(tmp_path):
    # rotary positions make a previous-token head easy to form; the loss on the copied tokens
    # only keeps the unpredictable random tokens from drowning the induction signal
    config = TrainConfig(arch=arch_from("attn-only-2l", d_model=32, n_heads=2, positional="rotary"), tasks=[SMALL],
                         steps=400, checkpoints=12, batch_size=32, lr=1e-2, seed=0, loss_positions="answer")
    t0 = time.perf_counter()
    summary = train(config, tmp_path)
    assert time.perf_counter() - t0 < 60  # measured ~11 s on 2 shared cores

    steps = summary["checkpoints"]
    own = [own_metrics(tmp_path / "checkpoints" / f"step_{s:06d}") for s in steps]
    loss = [l for l, _ in own]
    prefix_l1 = [float(p[1].max()) for _, p in own]  # best layer-1 head
    assert loss[0] > 2.0 and prefix_l1[0] < 0.3  # before: no induction (random guessing is ln 16 = 2.8)
    assert loss[-1] < 1.0 and prefix_l1[-1] > 0.5  # after: the induction head
    assert loss[-1] < 0.2 and prefix_l1[-1] > 0.8  # (measured 0.03 and 0.99)

    dyn = analyse(tmp_path, SMALL, n=N_EVAL)
    assert dyn.steps == steps
    # dynamics measures the same things as the test's own computation
    assert np.allclose(dyn.metric_values, loss, atol=1e-3)
    assert np.allclose([np.max(p[1]) for p in dyn.prefix_matching], prefix_l1, atol=1e-3)
    # ... and puts the phase change on the checkpoint interval where the loss crosses 1 nat and
    # the prefix-matching score crosses 0.5
    crossing = steps[next(i for i, l in enumerate(loss) if l < 1.0)]
    pc = dyn.phase_change
    assert pc.end_step == crossing and steps.index(pc.start_step) == steps.index(crossing) - 1
    assert pc.change < -1.0
    prefix_crossing = steps[next(i for i, p in enumerate(prefix_l1) if p > 0.5)]
    assert dyn.prefix_phase_change.end_step == prefix_crossing and dyn.prefix_phase_change.change > 0.3


def test_one_layer_model_forms_an_induction_head_with_smeared_keys_only(tmp_path):
    results = {}
    for smear in (True, False):
        config = TrainConfig(arch=arch_from("attn-only-1l", d_model=32, n_heads=2, smear_keys=smear), tasks=[SMALL],
                             steps=400, checkpoints=0, batch_size=32, lr=1e-2, seed=0, loss_positions="answer")
        train(config, tmp_path / str(smear))
        results[smear] = own_metrics(tmp_path / str(smear))
    (smeared_loss, smeared_prefix), (plain_loss, plain_prefix) = results[True], results[False]
    assert smeared_prefix.max() > 0.5 and smeared_loss < 1.0  # measured 0.83, 0.04
    assert plain_prefix.max() < 0.3 and plain_loss > 2.0  # measured ~0.1, ~2.5: no previous token in its keys
    assert smeared_loss < plain_loss - 1.5
