"""Training dynamics across checkpoints: metric, per-head prefix-matching score, in-context
learning score and per-token-loss PCA, with the phase change located where the metric moves
fastest (per unit of log step, as phase changes are read on a log-step axis).

Each quantity is computed on the prompts it is defined for: the task's metric and per-token
losses on the task's prompts; prefix matching (attention to the token after an earlier copy) and
the in-context-learning score (loss late in context minus early) on `induction` prompts, repeated
random tokens from the model's own symbol pool, whatever the task (on x2's six numbers neither
means anything)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from circuitbench.environment import threads_for, torch_threads
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.loading import load_model
from circuitbench.output_paths import (
    check_figure_file,
    check_output_file,
    is_dynamics_record,
    path_component,
    save_figure,
)
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.evaluation import evaluate
from circuitbench.scores.metrics import token_losses
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import RunOptions, effective_spec
from circuitbench.specs.task import TaskSpec
from circuitbench.tables.plots import pyplot

STEP_DIR = re.compile(r"step_(\d+)$")
DETECTOR_TASK = "induction"  # prefix matching and the ICL score are defined on repeated random tokens


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
    prefix_matching: list[list[list[float]]]  # [checkpoint][layer][head], on `detector_prompts`
    icl_score: list[float]  # loss late in context minus loss early (negative: learns in context), same prompts
    detector_prompts: str = DETECTOR_TASK  # the task whose prompts prefix matching and the ICL score ran on
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


def induction_prompts_for(pool_size: int, n: int) -> TaskSpec:
    """The `induction` task's prompts (repeated random tokens) within a model's symbol pool: at most
    `pool_size` symbols, repeats no longer than that."""
    spec = load_task(DETECTOR_TASK)
    params = spec.generator.model_dump()
    symbols = min(int(params["n_symbols"]), pool_size)
    params.update(n_symbols=symbols, max_len=min(int(params["max_len"]), symbols),
                  min_len=min(int(params["min_len"]), symbols))
    return effective_spec(TaskSpec.model_validate({**spec.model_dump(), "generator": params}), RunOptions(n_prompts=n))


def _sequence_losses(model, batch) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Each prompt's next-token losses after BOS, unpadded."""
    nll = token_losses(model.run(batch.tokens), batch.tokens)
    return [nll[row, 1 : int(batch.lengths[row])] for row in range(len(batch))]


def analyse(run_dir: Path, task: str, n: int = 32, batch_size: int = 32) -> Dynamics:
    spec = effective_spec(load_task(task), RunOptions(n_prompts=n))
    metric = spec.metric
    steps, values, prefix, icl, vectors = [], [], [], [], []
    detector_spec: TaskSpec | None = spec if spec.generator.name == "induction" else None  # its own repeats
    for step, path in checkpoint_dirs(run_dir):
        model = load_model(str(path), device="cpu")
        data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
        if detector_spec is None:
            detector_spec = induction_prompts_for(len(model.vocab.token_pool), n)
        repeats = data if detector_spec is spec else encode_task(detector_spec, model.vocab, model.unk_id, model.n_ctx)
        clean, _ = evaluate(model, data, [metric], batch_size)
        steps.append(step)
        values.append(float(clean[metric].mean()))
        prefix.append(run_methods(model, repeats, ["induction"], MethodRun(batch_size))["induction"].heads.tolist())
        losses = [seq for batch in data.batches(batch_size) for seq in _sequence_losses(model, batch)]
        vectors.append(torch.cat(losses).numpy())
        late, early = [], []
        for batch in repeats.batches(batch_size):
            for seq in _sequence_losses(model, batch):
                q = max(1, len(seq) // 4)
                early.append(float(seq[q : 2 * q].mean()))
                late.append(float(seq[-q:].mean()))
        icl.append(float(np.mean(late) - np.mean(early)))
    matrix = np.stack(vectors)
    centred = matrix - matrix.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = (u[:, :2] * s[:2]).tolist()
    explained = (s[:2] ** 2 / max(float((s**2).sum()), 1e-12)).tolist()
    best_prefix = [float(np.max(p)) for p in prefix]
    assert detector_spec is not None
    return Dynamics(
        detector_prompts=detector_spec.name,
        task=spec.name, metric=metric, steps=steps, metric_values=values, prefix_matching=prefix, icl_score=icl,
        pca=coords, pca_explained=explained,
        phase_change=fastest_change(steps, values, metric),
        prefix_phase_change=fastest_change(steps, best_prefix,
                                           f"max prefix-matching score ({detector_spec.name} prompts)"),
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
    ax.set(xscale="log", xlabel="step", ylabel="prefix-matching score", ylim=(0, 1),
           title=f"prefix matching per head, on {dyn.detector_prompts} prompts (repeated random tokens)")
    ax.legend(ncol=2, fontsize=7)
    ax = axes[1, 0]
    ax.plot(dyn.steps, dyn.icl_score, "o-", color="C2")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xscale="log", xlabel="step", ylabel="late − early loss (nats)",
           title=f"in-context learning score, on {dyn.detector_prompts} prompts")
    ax = axes[1, 1]
    pcs = np.array(dyn.pca)
    ax.plot(pcs[:, 0], pcs[:, 1], "-", color="grey", lw=0.8)
    sc = ax.scatter(pcs[:, 0], pcs[:, 1], c=np.log(dyn.steps), cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log step")
    ax.set(xlabel=f"PC1 ({dyn.pca_explained[0]:.0%})", ylabel=f"PC2 ({dyn.pca_explained[1]:.0%})",
           title=f"per-token losses on {dyn.task} prompts, PCA")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_dynamics(run_dir: Path, task: str, n: int = 32, plot_path: Path | None = None, threads: int | None = None,
                   force: bool = False) -> tuple[Dynamics, Path, Path]:
    """`analyse` a training run's checkpoints and write the record (RUN/dynamics_<task>.json) and
    its plot (`plot_path`, default RUN/dynamics_<task>.png), each only over an earlier one of its
    kind (else --force), checked before any compute. Returns (dynamics, record, plot)."""
    stem = f"dynamics_{path_component(task, '--task')}"
    record, png = run_dir / f"{stem}.json", plot_path or run_dir / f"{stem}.png"
    if run_dir.is_dir():  # (a missing one is reported by analyse, which needs its checkpoints)
        check_output_file(record, "--model (dynamics are written next to the checkpoints)", force=force,
                          ours=is_dynamics_record, what="a record `circuitbench dynamics` wrote")
    if plot_path is not None or run_dir.is_dir():
        check_figure_file(png, "--plot", force=force)
    weights = run_dir / "model.safetensors"  # float32 weights: 4 bytes a parameter
    n_params = weights.stat().st_size // 4 if weights.is_file() else None
    with torch_threads(threads_for(n_params, threads)):
        dyn = analyse(run_dir, task, n=n)
    write_atomic(record, dyn.model_dump_json(indent=2) + "\n")
    plot(dyn, png)
    return dyn, record, png
