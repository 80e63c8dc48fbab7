"""The pictures a run draws: its curves (``curves.png``) and grids of digits (TensorBoard).
matplotlib's ``Figure``, never pyplot, so a notebook's own plots are left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation side by side (the lesson's plots)."""
    fig = Figure(figsize=(10, 4), layout="tight")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for key in (f"train/{metric}", f"val/{metric}"):
            if rows := [row for row in history if key in row]:
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def digits_figure(images: Any, titles: list[str], columns: int = 8) -> Figure:
    """A grid of digits, each with its title (label, or true and predicted label): one picture
    of all the digits, not one axes each, which is many times slower to draw."""
    rows = max(1, -(-len(images) // columns))
    h, w = images.shape[-2:]
    grid = np.full((rows * (h + 6), columns * (w + 2)), np.nan)  # nan: blank paper between
    for i, image in enumerate(images.squeeze(1).cpu().float().numpy()):
        r, c = divmod(i, columns)
        grid[r * (h + 6) + 5 : r * (h + 6) + 5 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = image
    fig = Figure(figsize=(columns * 1.2, rows * 1.4), layout="tight")
    ax = fig.subplots()
    ax.axis("off")
    ax.imshow(grid, cmap="gray")
    for i, title in enumerate(titles):
        r, c = divmod(i, columns)
        ax.text(c * (w + 2) + w / 2, r * (h + 6) + 3, title, ha="center", va="bottom", fontsize=9)
    return fig
