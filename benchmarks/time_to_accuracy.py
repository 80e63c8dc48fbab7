"""Time to accuracy: training seconds until validation accuracy first reaches 99.0%.

Each configuration - the default, and ``experiment=fast`` (99.0% after one epoch) - runs
through ``lenet-train``'s own path (``train(cfg)``) once per seed, validating after every tenth
of an epoch; beside each validation it also measures the accuracy on the official test set.
The clock starts at the first training batch (imports, data loading, model building and the
sanity check are start-up, not counted) and stops while these measurements run. A run ends
when both accuracies have reached the target, or at its last epoch; its best checkpoint is
then tested as usual. Writes a table to the terminal and JSON to
``benchmarks/results/time_to_accuracy-<device>[-quick].json``.

    python benchmarks/time_to_accuracy.py            # default and fast, seeds 0, 1, 2
    python benchmarks/time_to_accuracy.py --quick    # one seed, a fifth of an epoch, target 80%
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from machine import (
    RESULTS,
    VERDICTS,
    describe,
    device_from,
    named_overrides,
    publish,
    quiet_train,
    result_header,
    synchronize,
    trainer_overrides,
)

from lenet_lightning.config import compose_config
from lenet_lightning.outputs import markdown_table as table

CONFIGS = {"default": [], "fast": ["experiment=fast"]}
# The fast configuration's median over seeds to 99.0% test accuracy (the public figures'
# measure, and experiment=fast's: 99.0% after one epoch): on the CPU, on a GPU.
TARGETS = {"cpu": ("test", 30.0), "cuda": ("test", 1.0)}
QUICK = ["trainer.limit_train_batches=0.2", "trainer.max_epochs=1", "trainer.log_every_n_steps=5"]


class ReachAccuracy(L.Callback):
    """Counts training time (validation excluded) until validation accuracy, and the test
    accuracy measured beside it, first reach the target; then stops the run.

    ``curve`` holds every check: (training seconds, epochs done, val/acc, test accuracy).
    """

    def __init__(self, target: float) -> None:
        self.target = target
        self.train_seconds, self.wall_start, self.clock = 0.0, 0.0, 0.0
        self.reached: dict[str, dict | None] = {"val": None, "test": None}
        self.curve: list[tuple[float, float, float, float]] = []

    def _now(self, trainer: L.Trainer) -> float:
        synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    @torch.inference_mode()
    def _test_accuracy(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        pl_module.eval()
        correct, total = 0, 0
        for x, y in trainer.datamodule.test_dataloader():
            x, y = x.to(pl_module.device), y.to(pl_module.device)
            correct += int((pl_module(x).argmax(dim=1) == y).sum())
            total += len(y)
        return correct / total

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wall_start = self.clock = self._now(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.train_seconds += self._now(trainer) - self.clock

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        val = float(trainer.callback_metrics["val/acc"])
        test = self._test_accuracy(trainer, pl_module)
        epochs = trainer.global_step / trainer.num_training_batches
        self.curve.append((round(self.train_seconds, 3), round(epochs, 3), val, test))
        for name, acc in (("val", val), ("test", test)):
            if acc >= self.target and self.reached[name] is None:
                wall = time.perf_counter() - self.wall_start
                self.reached[name] = {
                    "train_s": self.train_seconds,
                    "wall_s": wall,
                    "epochs": epochs,
                }
        if all(self.reached.values()):
            trainer.should_stop = True
        self.clock = self._now(trainer)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seed 0, a fifth of an epoch, target 0.8")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (quick: 0)")
    p.add_argument("--target", type=float, help="validation accuracy to reach (default 0.99)")
    p.add_argument("--checks-per-epoch", type=int, default=10, help="validations per epoch")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="'NAME=OVERRIDES'",
        help="configurations to time instead of default and fast, e.g. 'lr3=model.lr=0.003'",
    )
    p.add_argument("--data-dir", help="MNIST folder (default: the config's data.data_dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.target = args.target or (0.8 if args.quick else 0.99)
    if not 0 < args.target <= 1 or args.checks_per_epoch < 1:
        p.error("--target must be in (0, 1]; --checks-per-epoch at least 1")
    args.configs = named_overrides(p, "--config", args.config, empty_ok=True) or CONFIGS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = device_from(args.device)
    machine = describe(device)
    print(f"{machine['cpu']}, {machine['torch_threads']} threads, {device}", flush=True)
    work = tempfile.TemporaryDirectory(prefix="lenet-tta-")
    started = time.perf_counter()
    rows = {}
    for name, overrides in args.configs.items():
        runs = []
        for seed in args.seeds:
            out = Path(work.name) / name / str(seed)
            cfg = compose_config(
                [
                    *([f"data.data_dir={args.data_dir}"] if args.data_dir else []),
                    f"paths.output_dir={out}",
                    *trainer_overrides(device),
                    "trainer.enable_progress_bar=false",
                    f"trainer.val_check_interval={1 / args.checks_per_epoch}",
                    *(QUICK * args.quick),
                    *overrides,
                    f"seed={seed}",
                ]
            )
            reach = ReachAccuracy(args.target)
            quiet_train(cfg, [reach])
            report = json.loads((out / "metrics.json").read_text())
            run = {
                "seed": seed,
                **{f"to_{k}": v for k, v in reach.reached.items()},
                "best_val_acc": max(point[2] for point in reach.curve),
                "final_test_acc": report["final"]["test/acc"],  # the best checkpoint's
                "curve": reach.curve,
            }
            runs.append(run)
            shown = ", ".join(f"{k} {seconds(run, k)}" for k in reach.reached)
            print(f"{name} seed {seed}: {shown}", flush=True)
        rows[name] = {"overrides": overrides, "parameters": report["parameters"], "runs": runs}
        for k in ("val", "test"):
            # A seed that never reached the target counts as slower than any that did.
            median = statistics.median(
                r[f"to_{k}"]["train_s"] if r[f"to_{k}"] else math.inf for r in runs
            )
            rows[name][f"{k}_reached"] = f"{sum(bool(r[f'to_{k}']) for r in runs)}/{len(runs)}"
            rows[name][f"{k}_median_train_s"] = round(median, 2) if math.isfinite(median) else None
    work.cleanup()
    measure, limit = TARGETS.get(device.type, ("val", None))
    fast = rows.get("fast", {}).get(f"{measure}_median_train_s")
    results = {
        **result_header("time_to_accuracy", argv, machine, quick=args.quick),
        "settings": {
            "target_acc": args.target,
            "seeds": args.seeds,
            "checks_per_epoch": args.checks_per_epoch,
        },
        "configs": rows,
        "target": f"fast reaches {args.target:.1%} {measure} accuracy in a median <= {limit} s",
        "target_met": None if args.quick or limit is None else fast is not None and fast <= limit,
        "seconds": round(time.perf_counter() - started, 1),
    }
    name = f"time_to_accuracy-{device.type}" + ("-quick" if args.quick else "")
    publish(name, args.out, results, render)
    return 0


def seconds(run: dict, measure: str) -> str:
    reached = run[f"to_{measure}"]
    return f"{reached['train_s']:.1f} s" if reached else "not reached"


def render(results: dict) -> str:
    """The results as a Markdown table, with the target and its verdict below it."""
    target = f"{results['settings']['target_acc']:.1%}"
    rows = []
    for name, row in results["configs"].items():
        runs = row["runs"]
        cells = [name, f"{row['parameters']:,}"]
        for k in ("val", "test"):
            median = row[f"{k}_median_train_s"]
            per_seed = ", ".join(seconds(r, k).removesuffix(" s") for r in runs)
            cells += [row[f"{k}_reached"], f"{median:.1f}" if median is not None else "-"]
            cells.append(per_seed.replace("not reached", "-"))
        cells.append(f"{statistics.median(r['best_val_acc'] for r in runs):.2%}")
        rows.append(cells)
    header = ["config", "parameters"]
    for k in ("val", "test"):
        header += [f"{k} >= {target}", "median s", "per seed (s)"]
    header.append("median best val/acc")
    verdict = VERDICTS[results["target_met"]]
    return f"{table(header, rows)}\n\ntarget: {results['target']}: {verdict}"


if __name__ == "__main__":
    sys.exit(main())
