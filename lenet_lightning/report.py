"""What runs leave for a person: ``metrics.json`` and ``curves.png`` per run, the digits shown
in TensorBoard, and ``summary.md`` / ``summary.png`` per sweep (``lenet-report``). Plain Python
and matplotlib's ``Figure`` (never pyplot, so a notebook's own plots are left alone): no
Lightning here, so it starts fast."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.figure import Figure

from lenet_lightning.config import CONFIG_MODULE, ConfigError, register

FAILED = "failed.txt"  # in a sweep job's folder: why the job failed


def summarize(history: list[dict[str, float]], test: dict[str, float], monitor: str) -> dict:
    """The last epoch's metrics, and the best epoch's: the first with the highest ``monitor``,
    the epoch of the best checkpoint (which ``test`` measured)."""
    if not history:
        return {"final": dict(test), "best": dict(test)}
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    scored = [row for row in history if not math.isnan(row.get(monitor, math.nan))]
    best = max(scored, key=lambda row: row[monitor]) if scored else history[-1]  # first of ties
    return {"final": {**final, **test}, "best": {**best, **test}}


def strict_json(data: Any) -> str:
    """JSON that every reader accepts: a NaN or an infinity is written as null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return [clean(v) for v in value] if isinstance(value, (list, tuple)) else value

    return json.dumps(clean(data), indent=2, allow_nan=False)


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
    part = out_dir / "metrics.json.part"  # written aside, then renamed: never a torn file
    part.write_text(strict_json(report) + "\n")
    part.replace(out_dir / "metrics.json")
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


# ---- sweeps --------------------------------------------------------------------------------


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper expands a sweep's command line."""
    hydra = GlobalHydra.instance()
    if not hydra.is_initialized():  # outside a Hydra app: glob(...) needs the configs
        register()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return sweep_jobs(overrides)
    jobs: list[list[str]] = [[]]
    parser = OverridesParser.create(config_loader=hydra.config_loader())
    for override in parser.parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_discrete_sweep():
            values = [f"{key}={v}" for v in override.sweep_string_iterator()]
        elif override.is_sweep_override():  # a range or interval that a search plugin samples
            continue
        else:
            values = [f"{key}={override.get_value_element_as_str()}"]
        jobs = [[*job, value] for job in jobs for value in values]
    return jobs


@dataclass
class Job:
    name: str  # the job's folder within the sweep ("3"), or "." for a single run
    overrides: dict[str, str]
    metrics: dict[str, Any] | None = None  # None: no metrics.json
    failed: str | None = None  # why it failed, when it did
    ran: bool = True  # False: the sweep stopped before this job started

    @property
    def best_val(self) -> float:
        return (self.metrics or {}).get("best", {}).get("val/acc", math.nan)

    @property
    def test_acc(self) -> float:
        return (self.metrics or {}).get("final", {}).get("test/acc", math.nan)

    def describe(self, keys: list[str]) -> str:
        shown = " ".join(f"{k}={self.overrides[k]}" for k in keys if k in self.overrides)
        return f"{self.name} ({shown})" if shown else self.name


def _pairs(overrides: list[str]) -> dict[str, str]:
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)


def find_jobs(folder: Path) -> list[Job]:
    """Every job of a sweep folder (or the run in a run folder): finished, failed, unfinished,
    and, from the sweep's ``multirun.yaml``, those that never started."""
    jobs = {}
    for run in {p.parent.parent for p in folder.rglob(".hydra/config.yaml")}:
        overrides_file = run / ".hydra" / "overrides.yaml"
        pairs = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        job = Job(str(run.relative_to(folder)), _pairs(pairs or []))
        if (run / "metrics.json").exists():
            job.metrics = json.loads((run / "metrics.json").read_text())
        if (run / FAILED).exists():
            job.failed = (run / FAILED).read_text().strip()
        jobs[job.name] = job
    multirun = folder / "multirun.yaml"
    hydra = yaml.safe_load(multirun.read_text())["hydra"] if multirun.exists() else {}
    if hydra.get("sweeper", {}).get("_target_", "").endswith("BasicSweeper"):
        for number, overrides in enumerate(sweep_jobs(hydra["overrides"]["task"])):
            jobs.setdefault(str(number), Job(str(number), _pairs(overrides), ran=False))
    number = lambda part: (0, int(part), "") if part.isdigit() else (1, 0, part)  # noqa: E731
    return sorted(jobs.values(), key=lambda j: [number(p) for p in Path(j.name).parts])


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs (all overrides for a single job)."""
    keys = sorted({k for job in jobs for k in job.overrides})
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def mean_and_std(values: list[float]) -> str:
    """``mean ± sample standard deviation`` (the mean alone for one value)."""
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread}"


def over_seeds(jobs: list[Job], keys: list[str]) -> str:
    """A table of the finished jobs that differ only in ``seed``: per setting, the number of
    seeds and the mean and standard deviation of best val/acc and test/acc."""
    others = [k for k in keys if k != "seed"]
    mean_best = lambda group: statistics.mean(j.best_val for j in group)  # noqa: E731
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k, "") for k in others), []).append(job)
    rows = [
        [*setting, str(len(group)), mean_and_std([j.best_val for j in group]),
         mean_and_std([j.test_acc for j in group])]
        for setting, group in sorted(groups.items(), key=lambda g: -mean_best(g[1]))
    ]  # fmt: skip
    header = [*others, "seeds", "best val/acc (mean ± std)", "test/acc (mean ± std)"]
    return table(header, rows)


def write_sweep_summary(folder: Path) -> str:
    """Write ``summary.md`` and ``summary.png`` into ``folder``; return the text.

    One row per finished job, best first; with ``seed`` swept, the mean and standard deviation
    over the seeds of each setting; then the jobs that failed, did not finish or never ran.
    """
    jobs = find_jobs(folder)
    if not jobs:
        raise ConfigError(f"no runs (folders with .hydra/) below {folder}")
    keys = swept_keys(jobs)
    done = sorted((j for j in jobs if j.metrics and not j.failed), key=lambda j: -j.best_val)
    rows = [
        ["**best**" if rank == 0 else "", job.name, *[job.overrides.get(k, "") for k in keys],
         f"{job.best_val:.4f}", f"{job.test_acc:.4f}", str(job.metrics.get("epochs", "")),
         f"{job.metrics.get('wall_seconds', math.nan):.1f}"]
        for rank, job in enumerate(done)
    ]  # fmt: skip
    header = ["", "job", *keys, "best val/acc", "test/acc", "epochs", "wall s"]
    text = f"# Sweep summary: {folder}\n\n{table(header, rows)}\n"
    if "seed" in keys and done:
        text += f"\nOver seeds (sample standard deviation):\n\n{over_seeds(done, keys)}\n"
    for title, group in (
        ("Failed", [j for j in jobs if j.failed]),
        ("Missing (no metrics.json, the job did not finish)", [
            j for j in jobs if j.ran and not j.metrics and not j.failed]),
        ("Missing (never ran: the sweep stopped before them)", [j for j in jobs if not j.ran]),
    ):  # fmt: skip
        if group:
            text += f"\n{title}: {', '.join(j.describe(keys) for j in group)}\n"
    text += "".join(f"- job {j.name}: {j.failed}\n" for j in jobs if j.failed)
    (folder / "summary.md").write_text(text)
    if done:
        plot_sweep(done, keys, folder / "summary.png")
    return text


def plot_sweep(jobs: list[Job], keys: list[str], path: Path) -> None:
    """Best validation accuracy against the swept value, and val/acc per epoch of every job."""
    fig = Figure(figsize=(11, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    label = lambda j: ", ".join(f"{k}={j.overrides.get(k, '')}" for k in keys) or j.name  # noqa: E731
    best = [j.best_val for j in jobs]
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
    if right.lines:
        right.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    """``lenet-report FOLDER``: (re)build the summary of a sweep or run folder."""
    parser = argparse.ArgumentParser(prog="lenet-report", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="a sweep folder (multiruns/...) or a run folder")
    folder = parser.parse_args(argv).folder
    if not folder.is_dir():
        parser.exit(2, f"lenet-report: error: {folder} is not a folder\n")
    from lenet_lightning.cli import errors_as_one_line

    with errors_as_one_line("lenet-report"):
        print(write_sweep_summary(folder))


if __name__ == "__main__":
    main(sys.argv[1:])
