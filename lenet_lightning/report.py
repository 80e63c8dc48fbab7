"""What runs leave for a person: ``metrics.json`` and ``curves.png`` per run, the pictures shown
in TensorBoard, and ``summary.md`` / ``summary.png`` per sweep (the Hydra callback and
``lenet-report``). Plain Python and matplotlib: no Lightning here, so it starts fast."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig


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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation side by side (the lesson's plots)."""
    plt = _pyplot()
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


# ---- pictures for TensorBoard --------------------------------------------------------------


def digits_figure(images: Any, titles: list[str], columns: int = 8) -> Any:
    """A grid of digits, each with its title (label, or true and predicted label)."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image.squeeze(0).cpu().float().numpy(), cmap="gray")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: Any) -> Any:
    """The confusion matrix with counts, true digit down, predicted digit across."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix.tolist()):
        for j, count in enumerate(row):
            color = "white" if i == j else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    return fig


# ---- sweeps --------------------------------------------------------------------------------


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    metrics: dict[str, Any] | None  # None: the job did not finish


def find_jobs(folder: Path) -> list[Job]:
    """Every run below ``folder`` (a folder with Hydra's ``.hydra/``), finished or not."""
    runs = {p.parent.parent for p in folder.rglob(".hydra/config.yaml")}
    jobs = []
    for run in sorted(runs, key=lambda r: [int(x) if x.isdigit() else x for x in r.parts]):
        overrides_file = run / ".hydra" / "overrides.yaml"
        pairs = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        overrides = dict(o.lstrip("+~").split("=", 1) for o in pairs or [] if "=" in o)
        metrics_file = run / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        jobs.append(Job(run, overrides, metrics))
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs (all overrides for a single job)."""
    keys = sorted({k for job in jobs for k in job.overrides})
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def _value(metrics: dict[str, Any], key: str) -> float | None:
    return metrics.get("best", {}).get(key)


def write_sweep_summary(folder: Path) -> str:
    """Write ``summary.md`` and ``summary.png`` into ``folder``; return the table as text."""
    jobs = find_jobs(folder)
    if not jobs:
        raise FileNotFoundError(f"no runs (folders with .hydra/) below {folder}")
    keys = swept_keys(jobs)
    done = sorted(
        (j for j in jobs if j.metrics), key=lambda j: -(_value(j.metrics, "val/acc") or 0.0)
    )
    missing = [j for j in jobs if not j.metrics]
    header = ["", "job", *keys, "best val/acc", "test/acc", "epochs", "wall s"]
    rows = []
    for rank, job in enumerate(done):
        m = job.metrics
        rows.append(
            [
                "**best**" if rank == 0 else "",
                str(job.folder.relative_to(folder)) if job.folder != folder else ".",
                *[job.overrides.get(k, "") for k in keys],
                f"{_value(m, 'val/acc'):.4f}" if _value(m, "val/acc") is not None else "",
                f"{m['final'].get('test/acc', float('nan')):.4f}",
                str(m.get("epochs", "")),
                f"{m.get('wall_seconds', float('nan')):.1f}",
            ]
        )
    table = "\n".join(
        "| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]
    )
    text = f"# Sweep summary: {folder}\n\n{table}\n"
    if missing:
        names = ", ".join(str(j.folder.relative_to(folder)) for j in missing)
        text += f"\nMissing (no metrics.json, the job did not finish): {names}\n"
    (folder / "summary.md").write_text(text)
    if done:
        plot_sweep(done, keys, folder / "summary.png")
    return text


def plot_sweep(jobs: list[Job], keys: list[str], path: Path) -> None:
    """Best validation accuracy against the swept value, and val/acc per epoch of every job."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    label = lambda j: ", ".join(f"{k}={j.overrides.get(k, '')}" for k in keys) or j.folder.name  # noqa: E731
    best = [_value(j.metrics, "val/acc") or float("nan") for j in jobs]
    try:
        values = [float(j.overrides[keys[0]]) for j in jobs] if len(keys) == 1 else None
    except (KeyError, ValueError):
        values = None
    if values:
        order = sorted(range(len(jobs)), key=values.__getitem__)
        left.plot([values[i] for i in order], [best[i] for i in order], marker="o")
        if min(values) > 0 and max(values) / min(values) >= 10:
            left.set_xscale("log")
        left.set_xlabel(keys[0])
    else:
        left.barh([label(j) for j in jobs], best)
        left.set_xlim(min(best) - 0.01, 1.0)
    left.set_title("best val/acc")
    left.grid(alpha=0.3)
    for job in jobs:
        history = job.metrics.get("history", [])
        points = [(r["epoch"], r["val/acc"]) for r in history if "val/acc" in r]
        if points:
            right.plot(*zip(*points, strict=True), marker=".", label=label(job))
    right.set_xlabel("epoch")
    right.set_title("val/acc per epoch")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class SweepSummary(HydraCallback):
    """Hydra callback: when a multirun ends, summarise it in its folder and print the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(write_sweep_summary(Path(config.hydra.sweep.dir)))


def main(argv: list[str] | None = None) -> None:
    """``lenet-report FOLDER``: (re)build the summary of a sweep or run folder."""
    parser = argparse.ArgumentParser(prog="lenet-report", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="a sweep folder (multiruns/...) or a run folder")
    folder = parser.parse_args(argv).folder
    if not folder.is_dir():
        parser.exit(2, f"lenet-report: error: {folder} is not a folder\n")
    try:
        print(write_sweep_summary(folder))
    except FileNotFoundError as err:
        parser.exit(2, f"lenet-report: error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
