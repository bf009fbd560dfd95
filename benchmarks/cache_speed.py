"""Activation cache: how long a second run that adds a method takes with the cache (filled by a
first run) and without it (--no-cache), on the same loaded model. Prints `name: value` lines.

    python benchmarks/cache_speed.py            # toy-induction-2l and gpt2-small (random init)
    python benchmarks/cache_speed.py --quick    # toy only

Each scenario: run 1 with methods A fills the cache; then run 2 with methods A + B, alternately
cached and uncached, `--repeats` times each; the minimum of each is reported (the machine is shared).
Unit times exclude model loading (the model is loaded once).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuitbench.models.loading import load_model  # noqa: E402
from circuitbench.pipeline.unit import run_unit  # noqa: E402
from circuitbench.specs.catalog import load_task  # noqa: E402
from circuitbench.specs.options import RunOptions, effective_spec  # noqa: E402

SCENARIOS = {
    # name: (model, init, task, n, methods of run 1, method added in run 2)
    "toy_induction": ("toy-induction-2l", "pretrained", "induction", 64, ["activation_patching"],
                      "attribution_patching"),
    "gpt2_small_ioi": ("gpt2-small", "random", "ioi", 32, ["attribution_patching"], "previous_token"),
}


def scenario(name: str, repeats: int) -> None:
    model_name, init, task, n, first, added = SCENARIOS[name]
    model = load_model(model_name, init=init, device="cpu")
    with tempfile.TemporaryDirectory() as cache_dir:
        def unit(methods: list[str], cache: bool):
            options = RunOptions(n_prompts=n, batch_size=32, methods=methods, cache=cache, cache_dir=cache_dir)
            t0 = time.perf_counter()
            result = run_unit(effective_spec(load_task(task), options), model, options.execution())
            return result, time.perf_counter() - t0

        _, t_fill = unit(first, True)
        cached, uncached = [], []
        for _ in range(repeats):
            cached.append(unit([*first, added], True))
            uncached.append(unit([*first, added], False))
        t_cached, t_uncached = min(t for _, t in cached), min(t for _, t in uncached)
        a, b = cached[0][0], uncached[0][0]
        diff = max(float(np.abs(np.array(a.head_scores[m]) - np.array(b.head_scores[m])).max()) for m in a.head_scores)
        print(f"{name}_setup: {model_name} ({init}), {task}, {n} prompts, run 1 {'+'.join(first)}, run 2 adds {added}")
        print(f"{name}_run1_fill_seconds: {t_fill:.2f}")
        print(f"{name}_run2_cached_seconds: {t_cached:.2f} (cache {a.run.cache})")
        print(f"{name}_run2_uncached_seconds: {t_uncached:.2f}")
        print(f"{name}_run2_speedup: {t_uncached / t_cached:.2f}x (max abs head-score diff {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="toy scenario only")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in ["toy_induction"] if args.quick else list(SCENARIOS):
        scenario(name, args.repeats)


if __name__ == "__main__":
    main()
