"""One RunResult → pictures and a self-contained HTML page: per-method layer × head heatmaps
with the circuit outlined, the faithfulness curve, and causal-tracing maps (layer × position)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from circuitbench.files import write_atomic
from circuitbench.results.schema import RunResult
from circuitbench.tables.plots import head_heatmap, pyplot


def faithfulness_curve(result: RunResult, path: Path) -> None:
    plt = pyplot()
    c = result.circuit
    assert c is not None
    xs = [p[1] for p in c.curve]
    ys = [p[2] for p in c.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o-", label=f"top-k by {c.method}")
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.axvline(len(c.heads) / (result.model.n_layers * result.model.n_heads), color="C3", lw=0.8, label="circuit")
    ax.set(xlabel="fraction of heads kept", ylabel="faithfulness f", xscale="symlog" if len(xs) > 12 else "linear",
           title=f"faithfulness (CPR {c.cpr:.2f}, CMD {c.cmd:.2f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trace_map(name: str, trace: dict, path: Path) -> None:
    plt = pyplot()
    mean = np.asarray(trace["mean"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * mean.shape[1] + 2), max(3, 0.3 * mean.shape[0] + 1.5)))
    bound = max(float(np.abs(mean).max()), 1e-12)
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(trace["positions"])), trace["positions"], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="layer", title=f"{name} ({trace['noise']}, {trace['metric']})")
    fig.colorbar(im, ax=ax, label="indirect effect")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(result: RunResult, out_dir: Path) -> list[Path]:
    """Write the PNGs and report.html into out_dir; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[tuple[str, Path]] = []
    circuit = [tuple(h) for h in result.circuit.heads] if result.circuit else None
    for method, scores in result.head_scores.items():
        path = out_dir / f"heads_{method}.png"
        outlined = circuit if result.circuit and result.circuit.method == method else None
        reference = [tuple(h) for h in result.reference.heads] if result.reference else None
        head_heatmap(scores, f"{result.model.name} · {result.task.name} · {method}", path, outlined, reference)
        pngs.append((f"head scores: {method}", path))
    if result.circuit and result.circuit.curve:
        path = out_dir / "faithfulness.png"
        faithfulness_curve(result, path)
        pngs.append(("faithfulness curve", path))
    for name, trace in result.traces.items():
        path = out_dir / f"trace_{name.replace('/', '_')}.png"
        trace_map(name, trace, path)
        pngs.append((f"causal tracing: {name}", path))
    nan = float("nan")
    metrics = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td><td>{result.metrics_stderr.get(k, nan):.4f}</td>"
        f"<td>{result.metrics_corrupted.get(k, nan):.4f}</td></tr>" for k, v in result.metrics.items())
    figures = "".join(
        f"<h3>{html.escape(title)}</h3><img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
        for title, p in pngs)
    c = result.circuit
    circuit_html = "" if c is None or c.faithfulness is None else (
        f"<p>circuit ({html.escape(c.method)}, {html.escape(str(c.rule))}): {' '.join(f'{l}.{h}' for l, h in c.heads)}"
        f" · faithfulness {c.faithfulness:.3f}</p>")
    task, model = result.task, result.model
    style = "body{font-family:sans-serif;margin:2em;max-width:1100px}td,th{padding:3px 10px}img{max-width:100%}"
    page = ("<!doctype html><meta charset='utf-8'><title>circuitbench report</title>"
            f"<style>{style}</style><h1>{html.escape(model.name)} · {html.escape(task.name)}</h1>"
            f"<p>{task.n_prompts} prompts ({task.n_dropped} dropped) · {html.escape(model.init)} · "
            f"{html.escape(model.dtype)} · spec {task.spec_hash} · {html.escape(result.run.started_at)}</p>"
            f"<table><tr><th>metric</th><th>clean</th><th>± se</th><th>corrupted</th></tr>{metrics}</table>"
            f"{circuit_html}{figures}")
    write_atomic(out_dir / "report.html", page)
    return [p for _, p in pngs] + [out_dir / "report.html"]
