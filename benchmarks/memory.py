"""`make bench`: predicted against measured peak memory of the edge methods under a memory budget
(scores/memory_plan.py plans the chunks, scores/chunking.py runs them), and EAP under --max-memory
1GB against the unbounded run.

Each measurement runs in a fresh process (random-init GPT-2 built from transformers' GPT2Config,
saved with save_pretrained in a temporary directory, HF_HUB_OFFLINE=1, one torch thread, IOI
prompts): the process's resident memory is read after the imports (before the model is loaded),
the peak (VmHWM) is reset after loading and a two-prompt warm-up (/proc/self/clear_refs), and the
measured peak is VmHWM during the method minus the resident memory before loading: the weights as
they are resident plus the method's tensors, what the plan's prediction counts. Linux only.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 0.25  # the prediction within 25 % of the measured peak
GB = 1000**3
# (model, method, prompts, budget or None for unbounded, method options)
POINTS = [
    ("gpt2-small", "eap", 64, None, {}),
    ("gpt2-small", "eap", 64, 1 * GB, {}),
    ("gpt2-small", "eap_ig", 16, 1 * GB, {"steps": 3}),
    ("gpt2-small", "eap_ig", 16, None, {"steps": 3}),
    ("gpt2-2l", "edge_patching", 8, int(0.6 * GB), {}),
    ("gpt2-medium", "eap", 32, int(2.5 * GB), {}),
    ("gpt2-medium", "eap", 32, None, {}),
]
CONFIGS = {"gpt2-small": {}, "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
           "gpt2-2l": {"n_layer": 2}}
SKIPPED = [("gpt2-small", "edge_patching", "32,000 edges × 64 prompts is hours on 2 cores: measured on gpt2-2l "
            "(GPT-2 small's width, 2 layers, 1,000 edges) instead")]


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def build(root: Path, name: str) -> Path:
    """A random-init GPT-2 of `name`'s config with GPT-2's BPE tokenizer, saved in `root`/name."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitbench.models.tokenizers import gpt2_bpe_tokenizer

    path = root / name
    if not (path / "config.json").exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            GPT2LMHeadModel(GPT2Config(**CONFIGS[name])).save_pretrained(path)
        gpt2_bpe_tokenizer().save_pretrained(path)
    return path


def one(path: str, method: str, n: int, budget: int | None, options: dict, scores_out: str | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.scoring import MethodRun, run_methods
    from circuitbench.specs.catalog import load_task

    _trim()
    before = _vm("VmRSS")
    model = load_model(path, device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": n}), model.vocab, model.unk_id, model.n_ctx)
    run = MethodRun(n, method_options={method: options}, memory_budget=budget or 10**15)
    run_methods(model, data.subset(0, 2), [method], run)  # warm-up: lazy weights views, allocator pools
    _trim()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here on
    started = time.perf_counter()
    out = run_methods(model, data, [method], run)[method]
    seconds = time.perf_counter() - started
    peak = _vm("VmHWM")
    if scores_out:
        import numpy as np

        np.save(scores_out, out.edges.scores)
    plan = out.settings["memory"]
    return {"method": method, "n": n, "budget": budget, "batch": plan["batch_size"],
            "source_chunk": plan["source_chunk"], "n_sources": plan["n_sources"], "sum_steps": plan["sum_steps"],
            "predicted": plan["predicted_peak_bytes"], "measured": peak - before, "seconds": seconds,
            "weights": plan["weight_bytes"], "width": int(data.tokens.shape[1])}


def measure(path: Path, method: str, n: int, budget: int | None, options: dict, scores: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = [sys.executable, __file__, "--one", str(path), method, str(n), str(budget or 0), json.dumps(options),
            str(scores or "")]
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--one", nargs=6, metavar=("PATH", "METHOD", "N", "BUDGET", "OPTIONS", "SCORES"))
    ap.add_argument("--quick", action="store_true", help="GPT-2 small's EAP points only")
    args = ap.parse_args()
    if args.one:
        path, method, n, budget, options, scores = args.one
        print(json.dumps(one(path, method, int(n), int(budget) or None, json.loads(options), scores or None)))
        return
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from circuitbench.specs.byte_size import format_bytes

    points = [p for p in POINTS if not args.quick or (p[0] == "gpt2-small" and p[1] == "eap")]
    table = Table(title="Edge methods' peak memory: predicted (scores/memory_plan.py) against measured (peak RSS)")
    for column in ("model", "method", "prompts", "batch", "sources", "budget", "predicted peak", "measured peak",
                   "ratio", "within 25 %", "under budget", "s"):
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scores: dict[tuple[str, str, int], dict[bool, np.ndarray]] = {}
        for model, method, n, budget, options in points:
            path = build(root, model)
            out = root / f"{model}_{method}_{n}_{budget or 0}.npy"
            r = measure(path, method, n, budget, options, out)
            if "error" in r:
                table.add_row(model, method, str(n), "", "", format_bytes(budget) if budget else "none", "", "",
                              "", "", "", f"failed: {r['error']}")
                continue
            scores.setdefault((model, method, n), {})[budget is not None] = np.load(out)
            ratio = r["predicted"] / max(r["measured"], 1)
            ok = abs(ratio - 1) <= GOAL
            under = "" if budget is None else ("✓" if r["measured"] <= budget else "✗")
            table.add_row(model, method, str(n), f"{r['batch']}", f"{r['source_chunk']}/{r['n_sources']}",
                          format_bytes(budget) if budget else "none", format_bytes(r["predicted"]),
                          format_bytes(r["measured"]), f"{ratio:.2f}", "✓" if ok else "✗", under, f"{r['seconds']:.0f}")
            print(json.dumps({"model": model, **r}), flush=True)
        for model, method, reason in SKIPPED:
            table.add_row(model, method, "", "", "", "", "", "", "", "", "", f"skipped: {reason}")
    Console(width=200).print(table)
    for (model, method, n), pair in scores.items():
        if len(pair) == 2:
            a, b = pair[True], pair[False]
            rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
            print(f"{method} on {model}, {n} prompts: budgeted scores vs unbounded: max |diff| / max |score| = "
                  f"{rel:.1e} {'✓' if rel <= 1e-5 else '✗'}")


if __name__ == "__main__":
    main()
