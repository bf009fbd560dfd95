"""Training dynamics across checkpoints: metric, per-head prefix-matching score, in-context
learning score and per-token-loss PCA, with the phase change located where the metric moves
fastest (per unit of log step, as phase changes are read on a log-step axis)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.evaluation import evaluate
from circuitbench.scores.metrics import token_losses
from circuitbench.scores.scoring import score_heads
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import RunOptions, effective_spec
from circuitbench.tables.plots import pyplot

STEP_DIR = re.compile(r"step_(\d+)$")


class PhaseChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    series: str
    start_step: int
    end_step: int
    change: float  # value at end_step minus value at start_step


class Dynamics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    metric: str
    steps: list[int]
    metric_values: list[float]
    prefix_matching: list[list[list[float]]]  # [checkpoint][layer][head]
    icl_score: list[float]  # loss late in context minus loss early (negative: learns in context)
    pca: list[list[float]]  # [checkpoint][2] per-token-loss vectors on their first two components
    pca_explained: list[float]
    phase_change: PhaseChange
    prefix_phase_change: PhaseChange


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for d in sorted((run_dir / "checkpoints").glob("step_*")):
        m = STEP_DIR.search(d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    if len(found) < 2:
        raise CircuitbenchError(
            f"{run_dir}: needs at least two checkpoints under checkpoints/step_N/ (train with --checkpoints K)."
        )
    return sorted(found)


def fastest_change(steps: list[int], values: list[float], series: str) -> PhaseChange:
    """The interval between consecutive checkpoints with the largest |Δvalue| per Δlog(step)."""
    logs = np.log(np.asarray(steps, dtype=float))
    vals = np.asarray(values, dtype=float)
    rates = np.abs(np.diff(vals)) / np.maximum(np.diff(logs), 1e-12)
    i = int(np.argmax(rates))
    return PhaseChange(series=series, start_step=steps[i], end_step=steps[i + 1], change=float(vals[i + 1] - vals[i]))


def analyse(run_dir: Path, task: str, n: int = 32, batch_size: int = 32) -> Dynamics:
    spec = effective_spec(load_task(task), RunOptions(n_prompts=n))
    metric = spec.metric
    steps, values, prefix, icl, vectors = [], [], [], [], []
    for step, path in checkpoint_dirs(run_dir):
        model = load_model(str(path), device="cpu")
        data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
        clean, _ = evaluate(model, data, [metric], batch_size)
        steps.append(step)
        values.append(float(clean[metric].mean()))
        prefix.append(score_heads(model, data, ["induction"], batch_size)["induction"].tolist())
        losses, late, early = [], [], []
        for batch in data.batches(batch_size):
            nll = token_losses(model.run(batch.tokens), batch.tokens)
            for row in range(len(batch)):
                length = int(batch.lengths[row])
                seq = nll[row, 1:length]
                losses.append(seq)
                q = max(1, len(seq) // 4)
                early.append(float(seq[q : 2 * q].mean()))
                late.append(float(seq[-q:].mean()))
        vectors.append(torch.cat(losses).numpy())
        icl.append(float(np.mean(late) - np.mean(early)))
    matrix = np.stack(vectors)
    centred = matrix - matrix.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = (u[:, :2] * s[:2]).tolist()
    explained = (s[:2] ** 2 / max(float((s**2).sum()), 1e-12)).tolist()
    best_prefix = [float(np.max(p)) for p in prefix]
    return Dynamics(
        task=spec.name, metric=metric, steps=steps, metric_values=values, prefix_matching=prefix, icl_score=icl,
        pca=coords, pca_explained=explained,
        phase_change=fastest_change(steps, values, metric),
        prefix_phase_change=fastest_change(steps, best_prefix, "max prefix-matching score"),
    )


def plot(dyn: Dynamics, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    ax.plot(dyn.steps, dyn.metric_values, "o-", color="C0")
    ax.axvspan(dyn.phase_change.start_step, dyn.phase_change.end_step, color="C3", alpha=0.2, label="phase change")
    ax.set(xscale="log", xlabel="step", ylabel=dyn.metric, title=f"{dyn.task}: {dyn.metric}")
    ax.legend()
    ax = axes[0, 1]
    arr = np.array(dyn.prefix_matching)  # [ckpt, layer, head]
    for layer in range(arr.shape[1]):
        for head in range(arr.shape[2]):
            ax.plot(dyn.steps, arr[:, layer, head], label=f"{layer}.{head}", lw=2 if layer == arr.shape[1] - 1 else 1)
    ax.set(xscale="log", xlabel="step", ylabel="prefix-matching score", title="per head", ylim=(0, 1))
    ax.legend(ncol=2, fontsize=7)
    ax = axes[1, 0]
    ax.plot(dyn.steps, dyn.icl_score, "o-", color="C2")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xscale="log", xlabel="step", ylabel="late − early loss (nats)", title="in-context learning score")
    ax = axes[1, 1]
    pcs = np.array(dyn.pca)
    ax.plot(pcs[:, 0], pcs[:, 1], "-", color="grey", lw=0.8)
    sc = ax.scatter(pcs[:, 0], pcs[:, 1], c=np.log(dyn.steps), cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log step")
    ax.set(xlabel=f"PC1 ({dyn.pca_explained[0]:.0%})", ylabel=f"PC2 ({dyn.pca_explained[1]:.0%})",
           title="per-token losses, PCA")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
