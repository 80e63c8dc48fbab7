"""What a run leaves for a person: one line per epoch, ``metrics.json`` and ``curves.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L


class EpochHistory(L.Callback):
    """Keeps each epoch's logged metrics as plain floats and reports them in one line.

    The history travels in checkpoints, so a resumed run still reports every epoch.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {"epoch": trainer.current_epoch + 1}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(("train/", "val/")):
                row[key] = float(value)
        self.epochs.append(row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
        pl_module.print(f"epoch {row['epoch']}/{trainer.max_epochs}: {shown}")  # beside the bar

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict["epochs"])


def summarize(history: list[dict[str, float]], test: dict[str, float]) -> dict[str, Any]:
    """Final and best value of every logged metric (best: highest accuracy, lowest loss)."""
    final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
    best = {}
    for key in final:
        values = [row[key] for row in history if key in row and not math.isnan(row[key])]
        if values:
            best[key] = min(values) if key.endswith("loss") else max(values)
    return {"final": {**final, **test}, "best": {**best, **test}}


def write_run_report(
    out_dir: Path,
    history: list[dict[str, float]],
    test: dict[str, float],
    **facts: Any,
) -> dict[str, Any]:
    """Write ``metrics.json`` (and ``curves.png`` when there is a history) into ``out_dir``."""
    report = {**summarize(history, test), "epochs": len(history), **facts, "history": history}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if history:
        plot_curves(history, out_dir / "curves.png")
    return report


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation side by side (the lesson's plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
