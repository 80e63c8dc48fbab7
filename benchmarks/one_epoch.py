"""One epoch, three ways, over the same seeds in one process: the lesson's own loop (A,
``lesson_loop.py``), ``lenet-train experiment=lesson`` and ``lenet-train experiment=fast``.

For each: the test accuracy after the one epoch, and the epoch's training time. A's time is
its epoch as taught (its pass over the test set included); a ``lenet-train`` epoch's time stops
where its validation starts. The lesson printed 98.5% after its first epoch: the first two rows
show where its loop and ``experiment=lesson`` land over seeds. The target of ``experiment=fast``:
a median test accuracy of at least 99.0% with no seed under 98.85%, in a median training time
of at most three quarters of A's median epoch. Seeds are set as the lesson sets them
(``random``, ``numpy``, ``torch``). Writes a table to the terminal and JSON to
``benchmarks/results/one_epoch-<device>.json``.

    python benchmarks/one_epoch.py                 # seeds 0-4
    python benchmarks/one_epoch.py --seeds 0 1     # fewer
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lesson_loop import LessonLoop, lesson_tensors
from machine import (
    RESULTS,
    VERDICTS,
    describe,
    device_from,
    publish,
    quiet_train,
    result_header,
    synchronize,
    trainer_overrides,
)

from lenet_lightning.config import compose_config
from lenet_lightning.outputs import markdown_table

LESSON = "A (the lesson's loop)"
EXPERIMENTS = ("lesson", "fast")
MEDIAN, LOWEST = 0.99, 0.9885  # experiment=fast's target after one epoch...
TIME_SHARE = 0.75  # ...in at most this share of A's epoch


class EpochClock(L.Callback):
    """The first training epoch's seconds, up to the start of its validation."""

    def __init__(self) -> None:
        self.start, self.seconds = 0.0, None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self.seconds is None:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start


def lesson_loop(
    seed: int, tensors: tuple[torch.Tensor, ...], device: torch.device
) -> tuple[float, float]:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loop = LessonLoop(*tensors, device)
    synchronize(device)
    started = time.perf_counter()
    accuracy = loop.epoch()
    synchronize(device)
    return accuracy, time.perf_counter() - started


def experiment(
    name: str, seed: int, out: Path, device: torch.device, data_dir: str, more: list[str]
) -> tuple[float, float]:
    overrides = [f"experiment={name}", "trainer.max_epochs=1", f"seed={seed}", *more]
    overrides += [f"data.data_dir={data_dir}", f"paths.output_dir={out}", "logger=none"]
    cfg = compose_config(
        [*overrides, *trainer_overrides(device), "trainer.enable_progress_bar=false"]
    )
    clock = EpochClock()
    quiet_train(cfg, [clock])
    return json.loads((out / "metrics.json").read_text())["final"]["test/acc"], clock.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", help="MNIST folder (default: the config's data.data_dir)")
    p.add_argument("--set", nargs="+", default=[], help="more overrides for the lenet-train runs")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    device = device_from(args.device)
    data_dir = args.data_dir or str(Path(compose_config([]).data.data_dir).expanduser())
    machine = describe(device)
    print(f"{machine['cpu']}, {machine['torch_threads']} threads, {device}", flush=True)
    started = time.perf_counter()
    names = [LESSON, *(f"experiment={name}" for name in EXPERIMENTS)]
    found = {name: {"test_acc": [], "train_s": []} for name in names}
    tensors = lesson_tensors(data_dir)  # read once: the lesson's loop never changes them
    with tempfile.TemporaryDirectory(prefix="lenet-one-epoch-") as work:
        for seed in args.seeds:
            runs = {LESSON: lesson_loop(seed, tensors, device)}
            for name in EXPERIMENTS:
                out = Path(work) / name / str(seed)
                runs[f"experiment={name}"] = experiment(name, seed, out, device, data_dir, args.set)
            for name, (accuracy, seconds) in runs.items():
                found[name]["test_acc"].append(accuracy)
                found[name]["train_s"].append(round(seconds, 3))
            shown = ", ".join(f"{n} {a:.4f} in {s:.1f} s" for n, (a, s) in runs.items())
            print(f"seed {seed}: {shown}", flush=True)
    fast, lesson = found["experiment=fast"], found[LESSON]
    accuracy_met = statistics.median(fast["test_acc"]) >= MEDIAN and min(fast["test_acc"]) >= LOWEST
    time_share = statistics.median(fast["train_s"]) / statistics.median(lesson["train_s"])
    results = {
        **result_header("one_epoch", argv, machine),
        "seeds": args.seeds,
        "runs": found,
        "time_share": round(time_share, 3),
        "target": f"experiment=fast: median test/acc >= {MEDIAN:.2%}, none under {LOWEST:.2%}, "
        f"in a median training time <= {TIME_SHARE} x A's median epoch",
        "target_met": accuracy_met and time_share <= TIME_SHARE,
        "seconds": round(time.perf_counter() - started, 1),
    }
    publish(f"one_epoch-{device.type}", args.out, results, render)
    return 0


def render(results: dict) -> str:
    """The results as a Markdown table, with the target and its verdict below it."""
    rows = []
    for name, run in results["runs"].items():
        acc, seconds = run["test_acc"], run["train_s"]
        spread = f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        rows.append([
            name, " ".join(f"{a:.4f}" for a in acc), f"{statistics.mean(acc):.4f}{spread}",
            f"{statistics.median(acc):.4f}", f"{min(acc):.4f}", f"{statistics.median(seconds):.2f}",
        ])  # fmt: skip
    seeds = " ".join(map(str, results["seeds"]))
    header = ["one epoch", f"test/acc, seeds {seeds}", "mean ± std", "median", "min"]
    table = markdown_table([*header, "median training s"], rows)
    share = f"experiment=fast / A, median training s: {results['time_share']:.3f}"
    return f"{table}\n\n{share}\ntarget: {results['target']}: {VERDICTS[results['target_met']]}"


if __name__ == "__main__":
    sys.exit(main())
