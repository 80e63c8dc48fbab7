"""What a run leaves for a person: ``metrics.json``, ``curves.png``, and the digits shown in
TensorBoard. Plain Python and matplotlib's ``Figure`` (never pyplot, so a notebook's own plots
are left alone)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lenet_lightning.outputs import write_json


def summarize(history: list[dict[str, float]], test: dict[str, float], monitor: str) -> dict:
    """The last epoch's metrics, and the best epoch's: the first with the highest ``monitor``,
    the epoch of the best checkpoint (which ``test`` measured)."""
    if not history:
        return {"final": dict(test), "best": dict(test)}
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    scored = [row for row in history if not math.isnan(row.get(monitor, math.nan))]
    best = max(scored, key=lambda row: row[monitor]) if scored else history[-1]  # first of ties
    return {"final": {**final, **test}, "best": {**best, **test}}


def write_run_report(
    out_dir: Path,
    history: list[dict[str, float]],
    test: dict[str, float],
    monitor: str,
    **facts: Any,
) -> dict[str, Any]:
    """Write ``metrics.json`` into ``out_dir``."""
    summary = summarize(history, test, monitor)
    report = {**summary, "epochs": len(history), **facts, "history": history}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", report)
    return report


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation side by side (the lesson's plots)."""
    fig = Figure(figsize=(10, 4), layout="tight")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for stage in ("train", "val"):
            key = f"{stage}/{metric}"
            epochs = [row["epoch"] for row in history if key in row]
            if epochs:
                ax.plot(epochs, [row[key] for row in history if key in row], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def digits_figure(images: Any, titles: list[str], columns: int = 8) -> Figure:
    """A grid of digits, each with its title (label, or true and predicted label).

    One picture of all the digits, not one axes each: eight times faster to draw.
    """
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
