"""Test accuracy after the first epoch: the lesson's own loop (A, ``lesson_loop.py``) beside
``lenet-train experiment=lesson``, over the same seeds, on the same machine.

The lesson printed 98.5% after its first epoch; this shows whether that is where its loop
lands for most seeds, and whether ``experiment=lesson`` lands in the same place. Seeds are set
as the lesson sets them (``random``, ``numpy``, ``torch``). Writes a table to the terminal and
JSON to ``benchmarks/results/lesson_first_epoch-<device>.json``.

    python benchmarks/lesson_first_epoch.py                 # seeds 0-4
    python benchmarks/lesson_first_epoch.py --seeds 0 1     # fewer
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

import numpy as np
import torch
from lesson_loop import LessonLoop
from machine import RESULTS, describe, device_from, quiet_train, trainer_overrides, write_results

from lenet_lightning.config import compose_config
from lenet_lightning.data import load_mnist
from lenet_lightning.outputs import markdown_table


def lesson_loop(seed: int, data_dir: str, device: torch.device) -> float:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    x, y = load_mnist(data_dir, train=True)
    xt, yt = load_mnist(data_dir, train=False)
    loop = LessonLoop(x.unsqueeze(1).float(), y, xt.unsqueeze(1).float(), yt, device)
    return loop.epoch()


def experiment_lesson(seed: int, out: Path, device: torch.device, data_dir: str) -> float:
    overrides = [
        "experiment=lesson",
        "trainer.max_epochs=1",
        f"seed={seed}",
        f"data.data_dir={data_dir}",
    ]
    cfg = compose_config([*overrides, *trainer_overrides(device), f"paths.output_dir={out}",
                          "trainer.enable_progress_bar=false", "logger=none"])  # fmt: skip
    quiet_train(cfg, [])
    return json.loads((out / "metrics.json").read_text())["final"]["test/acc"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", help="MNIST folder (default: the config's data.data_dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    device = device_from(args.device)
    data_dir = args.data_dir or str(Path(compose_config([]).data.data_dir).expanduser())
    started = time.perf_counter()
    found: dict[str, list[float]] = {"A (the lesson's loop)": [], "experiment=lesson": []}
    with tempfile.TemporaryDirectory(prefix="lenet-lesson-") as work:
        for seed in args.seeds:
            a = lesson_loop(seed, data_dir, device)
            b = experiment_lesson(seed, Path(work) / str(seed), device, data_dir)
            found["A (the lesson's loop)"].append(a)
            found["experiment=lesson"].append(b)
            print(f"seed {seed}: lesson loop {a:.4f}, experiment=lesson {b:.4f}", flush=True)
    rows = [
        [name, " ".join(f"{v:.4f}" for v in values), f"{statistics.mean(values):.4f}",
         f"{statistics.stdev(values):.4f}" if len(values) > 1 else "", f"{min(values):.4f}",
         f"{max(values):.4f}"]
        for name, values in found.items()
    ]  # fmt: skip
    header = ["after one epoch", f"seeds {' '.join(map(str, args.seeds))}", "mean", "std"]
    print(markdown_table([*header, "min", "max"], rows))
    machine = describe(device)
    results = {"machine": machine, "seeds": args.seeds, "test_acc": found,
               "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    print(f"written: {write_results(f'lesson_first_epoch-{device.type}', args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
