"""`make bench-scale`: time and peak memory of circuitbench's methods against model size and prompt
count, a log-log plot and the fitted exponents (README, "Performance").

Each point runs in its own process (random-init weights, IOI prompts, logit difference, one torch
thread unless BENCH_THREADS says otherwise) and reports the method's seconds and two memory figures:
the process's peak RSS, and the peak above what the loaded model and prompts already held (the
method's own working memory; Linux: /proc/self/clear_refs resets the peak after loading).

The default plan is a reduced grid that fits a small shared machine (2 cores, other jobs running)
in well under half an hour: models up to GPT-2 medium (355 M), exact patching up to Pythia-160m and
32 prompts; --full adds Pythia-410m and GPT-2 large to every curve and exact patching of 256
prompts (hours on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODELS = ["pythia-70m", "gpt2-small", "pythia-160m", "gpt2-medium", "pythia-410m", "gpt2-large"]
LARGE = ("pythia-410m", "gpt2-large")  # --full only
SLOW_FOR_EXACT = ("gpt2-medium", *LARGE)  # exact patching: --full only
SIZE_N = 16  # prompts for the model-size curve
COUNTS = [16, 64, 256]  # prompt counts for the prompt-count curve (on gpt2-small)
EXACT_COUNTS = [16, 32]  # exact patching's prompt counts in the reduced grid
EDGE_METHODS = ["eap"]  # picked up when the method registry has them


def plan(full: bool, methods: list[str]) -> list[tuple[str, str, int]]:
    points = []
    for method in methods:
        for model in MODELS:
            if not full and (model in LARGE or (method == "activation_patching" and model in SLOW_FOR_EXACT)):
                continue
            points.append((model, method, SIZE_N))
        for n in COUNTS if full or method != "activation_patching" else EXACT_COUNTS:
            if n != SIZE_N:
                points.append(("gpt2-small", method, n))
    return points


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(model_name: str, method: str, n: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.scoring import MethodRun, run_methods
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.registries import METHODS

    if method not in METHODS:
        return {"skipped": f"no '{method}' method in this circuitbench"}
    model = load_model(model_name, init="random", device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": n}), model.vocab, model.unk_id, model.n_ctx)
    batch_size = min(n, 64)
    model.block_formats()
    run_methods(model, data.subset(0, 2), [method], MethodRun(2))  # warm-up
    held = _vm("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    except OSError:
        pass
    t0 = time.perf_counter()
    run_methods(model, data, [method], MethodRun(batch_size))
    seconds = time.perf_counter() - t0
    peak = _vm("VmHWM")
    return {"model": model_name, "n_params": model.n_params, "method": method, "n": n, "batch_size": batch_size,
            "seconds": seconds, "peak_rss_mb": peak, "method_peak_mb": max(0.0, peak - held),
            "load": os.getloadavg()[0], "threads": torch.get_num_threads()}


def fit(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(points: list[dict], path: Path) -> dict[str, dict[str, float | None]]:
    """Time (top) and the method's own peak memory (bottom) against model size and prompt count,
    log-log, with the fitted exponents in the legends (returned as {method: {what: exponent}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    exponents: dict[str, dict[str, float | None]] = {}
    for method in sorted({p["method"] for p in points}):
        size = sorted((p for p in points if p["method"] == method and p["n"] == SIZE_N), key=lambda p: p["n_params"])
        count = sorted((p for p in points if p["method"] == method and p["model"] == "gpt2-small"),
                       key=lambda p: p["n"])
        exponents[method] = {}
        color = None
        for row, (key, what) in enumerate((("seconds", "time"), ("method_peak_mb", "memory"))):
            for col, (series, x, unit) in enumerate(((size, lambda p: p["n_params"] / 1e6, "params"),
                                                     (count, lambda p: p["n"], "prompts"))):
                kept = [p for p in series if p[key] > 0]
                e = fit([x(p) for p in kept], [p[key] for p in kept])
                exponents[method][f"{what}_{unit}"] = e
                label = f"{method} (∝ {unit}^{e:.2f})" if e is not None else method
                line = axes[row][col].loglog([x(p) for p in kept], [p[key] for p in kept], "o-", color=color,
                                             label=label)[0]
                color = line.get_color()
                if col == 0 and row == 0:
                    for p in kept:
                        axes[row][col].annotate(p["model"], (x(p), p[key]), fontsize=7, alpha=0.7)
    titles = [[f"time, model size ({SIZE_N} IOI prompts)", "time, prompt count (gpt2-small)"],
              [f"method's own peak memory, model size ({SIZE_N} prompts)", "method's own peak memory, prompt count"]]
    for row in range(2):
        for col in range(2):
            ax = axes[row][col]
            ax.set(title=titles[row][col], xlabel="parameters (millions)" if col == 0 else "prompts (batches of ≤ 64)",
                   ylabel="seconds" if row == 0 else "MB above the loaded model")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("circuitbench scale curves (random init, CPU, 1 thread)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return exponents


def table(points: list[dict]) -> str:
    rows = ["| model | params | method | prompts | seconds | peak RSS MB | method's own peak MB | load |",
            "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["method"], p["n_params"], p["n"])):
        rows.append(f"| {p['model']} | {p['n_params'] / 1e6:.0f} M | {p['method']} | {p['n']} | {p['seconds']:.1f} | "
                    f"{p['peak_rss_mb']:.0f} | {p['method_peak_mb']:.0f} | {p['load']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/bench/scale"))
    ap.add_argument("--plot", type=Path, default=Path("docs/scale.png"))
    ap.add_argument("--methods", default="attribution_patching,activation_patching," + ",".join(EDGE_METHODS))
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "N"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], int(args.one[2]))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    points = []
    for model, method, n in plan(args.full, args.methods.split(",")):
        path = args.out / f"{model}_{method}_{n}.json"
        if not args.report_only and not path.exists():
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1"), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_VERBOSITY": "error"}
            proc = subprocess.run([sys.executable, __file__, "--one", model, method, str(n)], capture_output=True,
                                  text=True, env=env)
            if proc.returncode != 0:
                print(f"{model} {method} n={n}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            path.write_text(proc.stdout.strip().splitlines()[-1])
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if "skipped" in record:
            print(f"{model} {method} n={n}: {record['skipped']}", flush=True)
            continue
        points.append(record)
        print(f"{model} {method} n={n}: {record['seconds']:.1f} s, peak {record['peak_rss_mb']:.0f} MB "
              f"(method {record['method_peak_mb']:.0f} MB)", flush=True)
    if not points:
        return
    exponents = plot(points, args.plot)
    text = table(points) + "\n\nfitted exponents (log-log least squares): " + "; ".join(
        f"{m}: " + ", ".join(f"{k.replace('_', ' ∝ ')}^{v:.2f}" for k, v in e.items() if v is not None)
        for m, e in exponents.items())
    print(text)
    (args.out / "scale.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
