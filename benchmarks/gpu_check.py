"""Every registered method on a GPU (float32 and bfloat16) checked against the CPU float32 result.

    python benchmarks/gpu_check.py [--model PATH_OR_NAME] [--n 8] [--device cuda|mps]

Without --model: a random-init tiny GPT-2 (2 layers × 2 heads, d_model 32, as tests/conftest.py's
tiny_gpt2_dir, initializer range 0.2 so that the clean–counterfactual logit gap is several bf16 units
of the logits: see TOLERANCES) built in a temporary directory. Without a GPU it says so, runs the CPU
bfloat16 against CPU float32 comparison (the one tests/scores/test_low_precision.py asserts) and exits 0.
Exit status 1 when a method fails or disagrees beyond its tolerance.

The agreement figures and tolerances are defined here once; the test imports them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Options that keep the slow methods short (as tests/pipeline/test_plan.py's OPTIONS).
OPTIONS: dict[str, dict[str, object]] = {
    "edge_pruning": {"steps": 6}, "acdc": {"thresholds": [0.01, 0.3]}, "causal_tracing": {"samples": 2},
    "attribution_patching": {"ig_steps": 3}, "ablation": {"kind": "zero"}}


@dataclass(frozen=True)
class Tolerance:
    """How close a low-precision run's scores must be to the float32 reference: `max_rel` bounds
    max |diff| / max |reference| of the flattened scores, `min_spearman` their rank correlation;
    `min_same` (discrete scores) the fraction of entries exactly equal, instead of max_rel."""

    max_rel: float = 0.05
    min_spearman: float = 0.9
    min_same: float | None = None


# bfloat16 keeps 8 significant bits: one rounding is ≤ 2^-9 ≈ 0.2 % relative, and a 2-layer forward
# (embeddings, attention, MLP, norms, unembedding: ~10 roundings on the way to a score) lands around 1–2 %
# of the scale (measured: 0.1–2.3 %). 5 % is ≈ 12 bf16 units of relative error: generous for rounding,
# far below what a wrong device/dtype path gives (a dropped delta, a score summed in bf16 over prompts).
DEFAULT = Tolerance()
TOLERANCES: dict[str, Tolerance] = {
    # Exact patching scores are (m_clean − m_patched) / |m_clean − m_corr|: a difference of two bf16
    # logits read against the clean–counterfactual gap. One bf16 unit of the largest logit (≈ 6 here:
    # 2^-6) is ≈ 3 % of the gap (≈ 0.9 per prompt), so these sit at a few units: 10 % (measured 2–5 %).
    "activation_patching": Tolerance(max_rel=0.10),
    "edge_patching": Tolerance(max_rel=0.10),
    "ablation": Tolerance(max_rel=0.10),
    # ACDC's score is the largest threshold of its grid at which an edge survives: discrete, one edge
    # flipped by rounding moves a score by the full scale, so count equal entries instead.
    "acdc": Tolerance(min_same=0.9),
}


def flat_scores(output) -> np.ndarray:
    """Every score a MethodOutput holds, flattened in a fixed order (head, MLP, input, edge, span-edge
    scores, then each trace's mean map in key order)."""
    parts = [np.asarray(a, dtype=np.float64).ravel() for a in (output.heads, output.mlps) if a is not None]
    if output.input is not None:
        parts.append(np.array([output.input], dtype=np.float64))
    if output.edges is not None:
        parts.append(np.asarray(output.edges.scores, dtype=np.float64)[output.edges.graph.real_edges.astype(bool)])
    if output.span_edges is not None:
        parts.append(np.asarray(output.span_edges.scores, dtype=np.float64).ravel())
    for key in sorted(output.traces or {}):
        parts.append(np.asarray(output.traces[key].mean, dtype=np.float64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass(frozen=True)
class Agreement:
    """A run's scores against the reference's: max |diff| / max |reference| (`max_rel`), Spearman's ρ
    (1.0 when both are constant and equal), the fraction of entries exactly equal (`same`)."""

    max_rel: float
    spearman: float
    same: float

    def within(self, tol: Tolerance) -> bool:
        if tol.min_same is not None:
            return self.same >= tol.min_same and self.spearman >= tol.min_spearman
        return self.max_rel <= tol.max_rel and self.spearman >= tol.min_spearman


def agreement(reference: np.ndarray, other: np.ndarray) -> Agreement:
    from scipy.stats import spearmanr

    if reference.shape != other.shape:
        raise ValueError(f"score shapes differ: {reference.shape} vs {other.shape}")
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = float(np.abs(reference - other).max()) if reference.size else 0.0
    max_rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    if np.ptp(reference) == 0 or np.ptp(other) == 0:
        rho = 1.0 if np.array_equal(reference, other) else 0.0
    else:
        rho = float(spearmanr(reference, other)[0])
    same = float(np.mean(reference == other)) if reference.size else 1.0
    return Agreement(max_rel, rho, same)


def tiny_gpt2(path: Path) -> Path:
    """A random-init GPT-2 like tests/conftest.py's tiny_gpt2_dir, initializer range 0.2 (see TOLERANCES)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitbench.models.tokenizers import gpt2_bpe_tokenizer

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        GPT2LMHeadModel(config).save_pretrained(path)
    gpt2_bpe_tokenizer().save_pretrained(path)
    return path


@dataclass(frozen=True)
class Run:
    """Every method's output on one (device, dtype), seconds per method, and the failures' messages."""

    outputs: dict[str, object]
    seconds: dict[str, float]
    errors: dict[str, str]


def run_all(model_arg: str, device: str, dtype: str, n_prompts: int, methods: list[str] | None = None,
            batch_size: int = 4) -> Run:
    """Each registered method (or `methods`) on IOI prompts, one at a time so that one failure is
    reported and the rest still run."""
    from circuitbench.errors import CircuitbenchError
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.scoring import MethodRun, run_methods
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.registries import METHODS

    model = load_model(model_arg, device=device, dtype=dtype)
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": n_prompts}), model.vocab, model.unk_id,
                       model.n_ctx)
    outputs, seconds, errors = {}, {}, {}
    for name in methods or [n for n in METHODS.names() if METHODS.plugin_code(n) is None]:
        started = time.perf_counter()
        try:
            outputs[name] = run_methods(model, data, [name], MethodRun(batch_size, method_options=OPTIONS))[name]
        except (CircuitbenchError, RuntimeError, TypeError, ValueError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
        seconds[name] = time.perf_counter() - started
    return Run(outputs, seconds, errors)


def compare(reference: Run, runs: dict[str, Run]) -> tuple[object, bool]:
    """A rich table, one row per method: per compared run max |diff| / scale, Spearman ρ, ✓/✗, seconds."""
    from rich.table import Table

    table = Table(title="scores against CPU float32 (max |diff| relative to the float32 scale, Spearman ρ)")
    table.add_column("method")
    table.add_column("cpu fp32 s", justify="right")
    for label in runs:
        table.add_column(f"{label} max|Δ|", justify="right")
        table.add_column(f"{label} ρ", justify="right")
        table.add_column(label, justify="center")
        table.add_column(f"{label} s", justify="right")
    ok = True
    for name in reference.seconds:
        row = [name, f"{reference.seconds[name]:.2f}"]
        for run in runs.values():
            if name in reference.errors or name in run.errors:
                ok = False
                row += ["—", "—", f"[red]✗ {(run.errors.get(name) or reference.errors[name])[:40]}[/]",
                        f"{run.seconds.get(name, 0.0):.2f}"]
                continue
            tol = TOLERANCES.get(name, DEFAULT)
            a = agreement(flat_scores(reference.outputs[name]), flat_scores(run.outputs[name]))
            good = a.within(tol)
            ok &= good
            shown = f"{a.max_rel:.1%}" if tol.min_same is None else f"{a.same:.0%} same"
            row += [shown, f"{a.spearman:.3f}", "[green]✓[/]" if good else "[red]✗[/]", f"{run.seconds[name]:.2f}"]
        table.add_row(*row)
    return table, ok


def accelerator() -> str | None:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or directory (default: a random-init tiny GPT-2)")
    parser.add_argument("--n", type=int, default=8, help="IOI prompts (default 8)")
    parser.add_argument("--device", help="accelerator to check (default: cuda, else mps)")
    parser.add_argument("--methods", help="comma-separated methods (default: every registered one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    console = Console()
    methods = args.methods.split(",") if args.methods else None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model_arg = args.model or str(tiny_gpt2(Path(tmp) / "tiny-gpt2"))
        device = args.device or accelerator()
        reference = run_all(model_arg, "cpu", "float32", args.n, methods)
        if device is None:
            console.print("No GPU (CUDA or MPS) here: comparing CPU bfloat16 against CPU float32 only.")
            runs = {"cpu bf16": run_all(model_arg, "cpu", "bfloat16", args.n, methods)}
        else:
            runs = {f"{device} fp32": run_all(model_arg, device, "float32", args.n, methods),
                    f"{device} bf16": run_all(model_arg, device, "bfloat16", args.n, methods)}
        table, ok = compare(reference, runs)
    console.print(table)
    for label, run in {"cpu fp32": reference, **runs}.items():
        for name, message in run.errors.items():
            console.print(f"[red]{label} {name}[/]: {message}")
    if device is None:
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
