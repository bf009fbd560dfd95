"""Pictures: layer × head heatmaps, overlap matrices (matplotlib, files only)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlap_heatmap(labels: list[str], matrix: list[list[float]], metric: str, path: Path,
                    subtitle: str = "", pvalues: list[list[float | None]] | None = None) -> None:
    """The overlap matrix of one metric; with `pvalues` (against the permutation null) a cell is
    marked * (p < 0.05) or ** (p < 0.01)."""
    plt = pyplot()
    values = np.asarray(matrix, dtype=float)
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
    fig.savefig(path, dpi=110)
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
                ax.text(head, layer, f"L{layer}H{head}\n{values[layer, head]:.2f}", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")
    bar = fig.colorbar(im, ax=ax)
    bar.set_label(textwrap.fill(colorbar, 34), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
