"""Pictures: layer × head heatmaps, overlap matrices (matplotlib, files only)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from circuitbench.output_paths import save_figure

if TYPE_CHECKING:
    from circuitbench.circuits.overlap import OverlapMatrix
    from circuitbench.models.graph import ComponentGraph


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlap_heatmap(overlap: OverlapMatrix, metric: str, path: Path) -> None:
    """One metric of an overlap matrix; where it has a permutation null a cell is marked * (p < 0.05)
    or ** (p < 0.01) and the subtitle says how the null was drawn."""
    plt = pyplot()
    labels, values = overlap.labels, np.asarray(overlap.values[metric], dtype=float)
    pvalues = overlap.p_value.get(metric)
    subtitle = f"* p < 0.05, ** p < 0.01 against the null ({overlap.null})" if overlap.null else ""
    size = max(4.0, 0.8 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(values, cmap="viridis", vmin=0 if np.nanmin(values) >= 0 else None)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            p = pvalues[i][j] if pvalues else None
            mark = "" if p is None else "**" if p < 0.01 else "*" if p < 0.05 else ""
            ax.text(j, i, f"{values[i, j]:.2f}{mark}", ha="center", va="center",
                    color="white" if values[i, j] < np.nanmax(values) * 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"circuit overlap: {metric}" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def head_heatmap(scores: list[list[float]], title: str, path: Path,
                 circuit: list[tuple[int, int]] | None = None, reference: list[tuple[int, int]] | None = None,
                 colorbar: str = "score", floor: float = 0.0, circuit_label: str = "circuit") -> None:
    """Layer × head scores on a diverging colormap centred at 0, symmetric, at least ±`floor` (so
    a map of near-zero scores stays pale instead of saturating), the colour bar labelled with what
    the scores are (`colorbar`); circuit heads outlined in black (`circuit_label` in the legend),
    heads of a known (reference) circuit marked with a gold dashed ring."""
    plt = pyplot()
    values = np.asarray(scores, dtype=float)
    n_layers, n_heads = values.shape
    bound = max(float(np.abs(values).max()), floor, 1e-12)
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * n_heads + 4), max(3.2, 0.4 * n_layers + 2)))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set(xlabel="head", ylabel="layer")
    ax.set_title(title, fontsize=10)
    for layer, head in circuit or []:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
    for layer, head in reference or []:
        ax.add_patch(plt.Circle((head, layer), 0.42, fill=False, edgecolor="goldenrod", lw=2, ls="--"))
    if circuit:
        ax.plot([], [], color="black", lw=2, label=circuit_label)
    if reference:
        ax.plot([], [], ls="--", color="goldenrod", lw=2, label="known (reference) circuit")
    if circuit or reference:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.18 - 0.02 * n_layers), fontsize=7, frameon=False)
    if n_layers * n_heads <= 64:
        for layer in range(n_layers):
            for head in range(n_heads):
                dark = abs(values[layer, head]) > 0.6 * bound
                ax.text(head, layer, f"a{layer}.h{head}\n{values[layer, head]:.2f}", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")
    bar = fig.colorbar(im, ax=ax)
    bar.set_label(textwrap.fill(colorbar, 34), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


QKV_COLORS = {"q": "tab:blue", "k": "tab:green", "v": "tab:red"}
BEND = {"q": 0.12, "k": 0.0, "v": -0.12}  # a head's three inputs from one source drawn apart


def _node_position(name: str, n_layers: int, n_heads: int, parallel: bool) -> tuple[float, float]:
    """Layered layout: input at the bottom, each block's heads on one row and its MLP above them
    (beside them in parallel blocks), logits on top."""
    if name == "input":
        return 0.5, 0.0
    if name == "logits":
        return 0.5, 2.0 * n_layers + 1
    if name.startswith("m"):
        layer = int(name[1:])
        return (1.08, 2.0 * layer + 1) if parallel else (0.5, 2.0 * layer + 2)
    layer, head = (int(v) for v in name[1:].split(".h"))
    return (head + 0.5) / n_heads, 2.0 * layer + 1


def circuit_graph(edges: list[str], scores: dict[str, float], graph: ComponentGraph, title: str, path: Path) -> None:
    """An edge circuit drawn as a layered graph: edge width ∝ |score|, colour the head input it enters
    (q blue, k green, v red; MLP and logits inputs grey), negative scores dashed. An edge into a
    key-value group's input (grouped-query attention) is drawn into each head of the group."""
    plt = pyplot()
    n_layers, n_heads, parallel = graph.n_layers, graph.n_heads, graph.parallel_attn_mlp
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n_heads + 3), max(4, 0.9 * n_layers + 2)))
    biggest = max([abs(scores.get(e, 0.0)) for e in edges] + [1e-12])
    used: set[str] = set()
    for name in edges:
        src, dst = name.split("->")
        score = scores.get(name, 0.0)
        color = QKV_COLORS.get(dst[-2], "grey") if dst.endswith(">") else "grey"
        for node in graph.destination_nodes(dst) or ["logits"]:
            used |= {src, node}
            (x0, y0), (x1, y1) = (_node_position(n, n_layers, n_heads, parallel) for n in (src, node))
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(
                arrowstyle="-|>", color=color, alpha=0.75, lw=0.5 + 4.5 * abs(score) / biggest,
                ls="--" if score < 0 else "-", shrinkA=6, shrinkB=6,
                connectionstyle=f"arc3,rad={BEND.get(dst[-2], 0.06)}"))
    for node in used:
        x, y = _node_position(node, n_layers, n_heads, parallel)
        ax.text(x, y, node, ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.25", fc="lightyellow" if node.startswith("m") else "white", ec="black"))
    for kind, color in QKV_COLORS.items():
        ax.plot([], [], color=color, label=f"<{kind}>")
    ax.plot([], [], color="grey", label="MLP / logits input")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_xlim(-0.1, 1.2)
    ax.set_ylim(-0.7, 2.0 * n_layers + 1.7)
    ax.set_yticks([0] + [2 * l + 1 for l in range(n_layers)] + [2 * n_layers + 1],
                  ["input"] + [f"layer {l}" for l in range(n_layers)] + ["logits"])
    ax.set_xticks([])
    ax.set_title(f"{title} ({len(edges)} edges; width ∝ |score|)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def mlp_scores(node_scores: dict[str, dict[str, float]], title: str, path: Path) -> None:
    """Each method's MLP scores per layer, side by side."""
    plt = pyplot()
    methods = [m for m, s in node_scores.items() if any(k.startswith("m") for k in s)]
    layers = sorted({int(k[1:]) for s in node_scores.values() for k in s if k.startswith("m")})
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(layers) * max(1, len(methods)) + 2), 3.2))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        ax.bar([l + i * width for l in layers], [node_scores[method].get(f"m{l}", 0.0) for l in layers], width,
               label=method)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks([l + 0.4 - width / 2 for l in layers], [f"m{l}" for l in layers])
    ax.set(ylabel="score", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
