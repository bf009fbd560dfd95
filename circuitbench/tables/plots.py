"""Pictures: layer × head heatmaps, overlap matrices (matplotlib, files only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlap_heatmap(labels: list[str], matrix: list[list[float]], metric: str, path: Path) -> None:
    plt = pyplot()
    values = np.asarray(matrix, dtype=float)
    size = max(4.0, 0.8 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(values, cmap="viridis", vmin=0 if np.nanmin(values) >= 0 else None)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                    color="white" if values[i, j] < np.nanmax(values) * 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"circuit overlap: {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def head_heatmap(scores: list[list[float]], title: str, path: Path,
                 circuit: list[tuple[int, int]] | None = None, reference: list[tuple[int, int]] | None = None) -> None:
    """Layer × head scores on a diverging colormap centred at 0, circuit heads outlined in black,
    heads of a known (reference) circuit marked with a gold dashed ring."""
    plt = pyplot()
    values = np.asarray(scores, dtype=float)
    n_layers, n_heads = values.shape
    bound = max(float(np.abs(values).max()), 1e-12)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * n_heads + 2), max(3, 0.4 * n_layers + 1.5)))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set(xlabel="head", ylabel="layer")
    ax.set_title(title, fontsize=10)
    for layer, head in circuit or []:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
    for layer, head in reference or []:
        ax.add_patch(plt.Circle((head, layer), 0.42, fill=False, edgecolor="goldenrod", lw=2, ls="--"))
    if reference:
        ax.plot([], [], ls="--", color="goldenrod", lw=2, label="reference circuit")
        ax.plot([], [], color="black", lw=2, label="chosen circuit")
        ax.legend(loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=7)
    if n_layers * n_heads <= 64:
        for layer in range(n_layers):
            for head in range(n_heads):
                dark = abs(values[layer, head]) > 0.6 * bound
                ax.text(head, layer, f"{layer}.{head}\n{values[layer, head]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
