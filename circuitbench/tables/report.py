"""One RunResult → pictures and a self-contained HTML page: per-method layer × head heatmaps
with the circuit outlined, MLP scores, an edge circuit drawn as a graph, the faithfulness curve,
and causal-tracing maps (layer × position). An EAP-IG / MIB graph file gets its graph alone."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from circuitbench.circuits.graph_files import GraphFile, load_graph_file
from circuitbench.files import write_atomic
from circuitbench.results.schema import RunResult
from circuitbench.tables.plots import circuit_graph, head_heatmap, mlp_scores, pyplot


def faithfulness_curve(result: RunResult, path: Path) -> None:
    plt = pyplot()
    c = result.circuit
    assert c is not None
    xs = [p[1] for p in c.curve]
    ys = [p[2] for p in c.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    mib = c.integration == "mib"
    ax.plot(xs, ys, "o-", label=f"top-k |score| by {c.method}" + (" (CMD)" if mib else ""))
    if c.curve_signed:
        ax.plot([p[1] for p in c.curve_signed], [p[2] for p in c.curve_signed], "s--", label="signed ranking (CPR)")
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    what = {"edge": "edges", "node": "nodes"}.get(c.level, "heads")
    total = c.curve[-1][0] if c.curve else result.model.n_layers * result.model.n_heads
    size = len(c.edges) if c.level == "edge" else len(c.heads) + len(c.mlps)
    ax.axvline(size / max(total, 1), color="C3", lw=0.8, label="circuit")
    ax.set(xlabel=f"fraction of {what} kept", ylabel="faithfulness f",
           xscale="log" if mib else "symlog" if len(xs) > 12 else "linear",
           title=f"faithfulness (CPR {c.cpr:.2f}, CMD {c.cmd:.2f}{', MIB' if mib else ''})")
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


def build_report(result: RunResult, out_dir: Path, result_dir: Path | None = None) -> list[Path]:
    """Write the PNGs and report.html into out_dir; returns the files written. `result_dir` is where
    the result's sidecar files (edge scores) are."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[tuple[str, Path]] = []
    c = result.circuit
    if c is not None and c.level == "edge" and c.method in result.edge_scores and result_dir is not None:
        sidecar = result_dir / result.edge_scores[c.method].file
        if sidecar.is_file():
            graph_file = load_graph_file(sidecar)
            path = out_dir / "circuit_graph.png"
            circuit_graph(c.edges, graph_file.scores, result.model.n_layers or 0, result.model.n_heads or 0,
                          f"{result.model.name} · {result.task.name} · {c.method}", path,
                          graph_file.graph.parallel_attn_mlp)
            pngs.append(("edge circuit", path))
    if any(k.startswith("m") for s in result.node_scores.values() for k in s):
        path = out_dir / "mlp_scores.png"
        mlp_scores(result.node_scores, f"{result.model.name} · {result.task.name} · MLP scores", path)
        pngs.append(("MLP scores", path))
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
    members = "" if c is None else " ".join([f"{l}.{h}" for l, h in c.heads] + [f"m{l}" for l in c.mlps]) + (
        f" ({len(c.edges)} edges)" if c.level == "edge" else "")
    circuit_html = "" if c is None or c.faithfulness is None else (
        f"<p>circuit ({html.escape(c.method)}, {html.escape(str(c.rule))}): {html.escape(members)}"
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


def build_graph_report(graph_file: GraphFile, label: str, out_dir: Path) -> list[Path]:
    """An EAP-IG / MIB graph file: its circuit (edges in_graph) drawn as a graph, and its top edges."""
    out_dir.mkdir(parents=True, exist_ok=True)
    g = graph_file.graph
    edges = graph_file.edges or sorted(graph_file.scores, key=lambda e: -abs(graph_file.scores[e]))[:30]
    path = out_dir / "circuit_graph.png"
    circuit_graph(edges, graph_file.scores, g.n_layers, g.n_heads, label, path, g.parallel_attn_mlp)
    top = sorted(graph_file.scores, key=lambda e: -abs(graph_file.scores[e]))[:30]
    rows = "".join(f"<tr><td>{html.escape(e)}</td><td>{graph_file.scores[e]:.4g}</td><td>{'✓' if e in edges else ''}"
                   "</td></tr>" for e in top)
    picture = base64.b64encode(path.read_bytes()).decode()
    page = ("<!doctype html><meta charset='utf-8'><title>circuitbench graph</title>"
            f"<h1>{html.escape(label)}</h1><p>{g.describe()} · {g.n_edges} edges · {len(graph_file.edges)} in the "
            f"circuit{'' if graph_file.edges else ' (none marked: the 30 largest |scores| drawn)'}</p>"
            f"<img src='data:image/png;base64,{picture}'>"
            f"<table><tr><th>edge</th><th>score</th><th>drawn</th></tr>{rows}</table>")
    write_atomic(out_dir / "report.html", page)
    return [path, out_dir / "report.html"]
