"""`make bench`: performance figures measured side by side in one run, printed as `name: value`.

1. exact head activation patching, circuitbench vs the naive per-head loop (ratio, equal numbers)
2. attribution patching cost in forward-pass equivalents
3. plain evaluation overhead vs a bare HF forward on the same prompts
4. peak memory of a gpt-neo-2.7B bf16 random-init run relative to its weights (--with-neo)
Model: GPT-2-small architecture, random init; task: IOI, 32 prompts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from circuitbench.models.loading import load_model  # noqa: E402
from circuitbench.prompts.encoding import encode_task  # noqa: E402
from circuitbench.scores.evaluation import evaluate  # noqa: E402
from circuitbench.scores.interventions import (  # noqa: E402
    naive_head_metrics,
    patched_node_metrics,
    position_mask,
    record_base_run,
)
from circuitbench.scores.methods.attribution import attribution_patching  # noqa: E402
from circuitbench.scores.methods.context import MethodContext  # noqa: E402
from circuitbench.specs.catalog import load_task  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    n = int(os.environ.get("BENCH_N", "32"))
    model = load_model("gpt2-small", init="random", device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": n}), model.vocab, model.unk_id, model.n_ctx)
    batch = data.batch(0, len(data))
    ctx = MethodContext(batch_size=n, metric="logit_diff")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"setup: gpt2-small (random init), ioi, {len(data)} prompts, {int(batch.tokens.shape[1])} tokens")

    # 3. evaluation overhead vs bare HF forward (same tokens, same batch)
    from transformers import AutoConfig, AutoModelForCausalLM

    from circuitbench.specs.catalog import model_registry

    cfg = dict(model_registry()["gpt2-small"].hf_config)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg),
                                          attn_implementation="eager").eval()
    def bare_hf() -> None:
        with torch.inference_mode():
            hf(batch.tokens)

    bare_hf()  # warm-up
    _, t_hf = timed(lambda: [bare_hf() for _ in range(3)])
    evaluate(model, data, ["logit_diff"], n)
    _, t_eval = timed(lambda: [evaluate(model, data, ["logit_diff"], n) for _ in range(3)])
    # evaluate runs clean and corrupted prompts: two forwards per prompt
    print(f"eval_overhead_vs_hf_forward: {t_eval / (2 * t_hf) - 1:+.1%}")

    # 1. exact patching vs naive loop
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    mask = position_mask(batch, "all")
    model.block_formats()  # recorded once per model; not part of the timing
    fast, t_fast = timed(lambda: patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], None, mask, ctx,
                                                      unchanged_before=batch.first_difference()))
    slow, t_slow = timed(lambda: naive_head_metrics(model, batch, lambda l: corrupt.z[l], mask, ctx))
    print(f"patching_naive_seconds: {t_slow:.1f}")
    print(f"patching_circuitbench_seconds: {t_fast:.1f}")
    print(f"patching_speedup: {t_slow / t_fast:.2f}x (max abs diff {float((fast - slow).abs().max()):.2e})")

    # 2. attribution patching in forward-pass equivalents
    _, t_fwd = timed(lambda: model.run(batch.tokens))
    _, t_attr = timed(lambda: attribution_patching(model, data, ctx))
    print(f"attribution_patching_forward_equivalents: {t_attr / t_fwd:.1f}")

    # 4. peak memory of a big model (slow: opt in)
    if "--with-neo" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "circuitbench.cli", "run", "--task", "fibonacci", "--model", "gpt-neo-2.7B",
                   "--init", "random", "--dtype", "bfloat16", "--n", "8", "--out", tmp, "-q", "--methods",
                   "previous_token"]
            subprocess.run(cmd, check=True, capture_output=True)
            result = json.loads(next(Path(tmp).glob("*/fibonacci.json")).read_text())
            weights_mb = result["model"]["n_params"] * 2 / 2**20
            print(f"neo27_peak_memory_vs_weights: {result['run']['peak_memory_mb'] / weights_mb:.2f}x "
                  f"({result['run']['peak_memory_mb']:.0f} MB peak, {weights_mb:.0f} MB weights)")


if __name__ == "__main__":
    main()
