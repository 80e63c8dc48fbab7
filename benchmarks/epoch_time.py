"""Epoch time of several ways to train the same LeNet-5 on the same MNIST, in one process.

- A: the lesson's plain PyTorch loop (``lesson_loop.py``), evaluating the test set each epoch.
- B: ``lenet-train``'s own path - ``train(cfg)`` with the package's DataModule, LightningModule,
  Trainer, checkpoints and TensorBoard logging, validating on the test set each epoch (as A
  does), progress bar off.
- C: the same ``train(cfg)`` and LightningModule fed by torchvision's MNIST Dataset (a PIL image
  and ToTensor + Normalize per sample) through a ``DataLoader``, as common templates do.
- B step-log: B with the training metrics logged from every step (the common pattern), not
  once per epoch: what ``LitLeNet5``'s way of logging saves. Every Lightning variant also
  reports its median training step; "step-log cost" is what logging from every step adds to
  B's steps, as a share of B's epoch.

Every round runs each variant for ``--epochs`` epochs, in a rotating order; the figures are
medians over rounds and epochs. Epochs during which other work used more than
``--max-foreign`` of the CPUs are discarded (and counted). Writes a table to the terminal and
JSON to ``benchmarks/results/epoch_time-<device>[-quick].json``.

    python benchmarks/epoch_time.py            # 4 rounds of one epoch of the full data set
    python benchmarks/epoch_time.py --quick    # 2 rounds of a tenth of an epoch
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lesson_loop import LessonLoop, lesson_tensors
from machine import (
    RESULTS,
    VERDICTS,
    PeakMemory,
    Span,
    Stopwatch,
    describe,
    device_from,
    named_overrides,
    publish,
    quiet_train,
    result_header,
    trainer_overrides,
)
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST

from lenet_lightning.config import compose_config
from lenet_lightning.images import MEAN, STD
from lenet_lightning.mnist_files import ensure_mnist
from lenet_lightning.module import LitLeNet5
from lenet_lightning.outputs import markdown_table as table

# The last: logging from every step costs over 3% of an epoch, so LitLeNet5 logs once per epoch.
TARGETS = {"B/A": ("<=", 1.0), "C/B": (">=", 2.0), "step-log cost": (">=", 0.03)}


class TorchvisionMNIST(L.LightningDataModule):
    """MNIST the way common templates load it: a Dataset of PIL images, a transform per sample,
    a DataLoader per stage (validation on the test set, as in the other variants)."""

    def __init__(self, data_dir: str, batch_size: int, num_workers: int, pin_memory: bool) -> None:
        super().__init__()
        self.data_dir, self.batch_size = data_dir, batch_size
        self.loader_args = {"num_workers": num_workers, "pin_memory": pin_memory}
        self.loader_args["persistent_workers"] = num_workers > 0

    def setup(self, stage: str | None = None) -> None:
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        self.train_set = MNIST(self.data_dir, train=True, transform=transform)
        self.test_set = MNIST(self.data_dir, train=False, transform=transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, **self.loader_args)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.batch_size, **self.loader_args)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


@contextlib.contextmanager
def logging_every_step() -> Iterator[None]:
    """LitLeNet5 as the common pattern writes it: ``self.log`` from every training step."""

    def training_step(self: LitLeNet5, batch: tuple, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc.update(logits.argmax(dim=1), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    saved = LitLeNet5.training_step, LitLeNet5.on_train_epoch_end
    LitLeNet5.training_step, LitLeNet5.on_train_epoch_end = training_step, lambda self: None
    try:
        yield
    finally:
        LitLeNet5.training_step, LitLeNet5.on_train_epoch_end = saved


class EpochTimer(L.Callback):
    """One span per training epoch, from its start to its end (validation and checkpoints in),
    and the time of each training step (from the batch's start to its end, logging included)."""

    def __init__(self, stopwatch: Stopwatch) -> None:
        self.stopwatch, self.spans, self.steps = stopwatch, [], []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stopwatch.start()

    def on_train_batch_start(self, *args: object) -> None:
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.steps.append(time.perf_counter() - self.step_start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.spans.append(self.stopwatch.stop())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds of 10%% of an epoch")
    p.add_argument("--rounds", type=int, help="rounds of A, B, C (default 4; quick 2)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per variant and round")
    p.add_argument("--fraction", type=float, help="share of the images per epoch (default 1)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=int, default=0, help="C's DataLoader workers (default 0)")
    p.add_argument("--max-foreign", type=float, default=0.25, help="discard busier epochs")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'NAME=OVERRIDES'",
        help="one more B-like variant: lenet-train with these Hydra overrides, "
        "e.g. 'B bf16=trainer.precision=bf16-mixed'",
    )
    p.add_argument("--data-dir", help="MNIST folder (default: the config's data.data_dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 4)
    args.fraction = args.fraction or (0.1 if quick else 1.0)
    if not 0 < args.fraction <= 1 or args.rounds < 1 or args.epochs < 1:
        p.error("--fraction must be in (0, 1]; --rounds and --epochs at least 1")
    args.extra = named_overrides(p, "--variant", args.variant, empty_ok=False)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = device_from(args.device)
    base = compose_config([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    data_dir = str(Path(base.data.data_dir).expanduser())
    ensure_mnist(data_dir, base.data.sources)

    x, y, xt, yt = lesson_tensors(data_dir)  # read once: the lesson's loop never changes them
    n_train, n_eval = int(len(y) * args.fraction), int(len(yt) * args.fraction)
    images = n_train  # training images per epoch, the same for every variant

    stopwatch = Stopwatch(device)
    work = tempfile.TemporaryDirectory(prefix="lenet-bench-")
    steps: dict[str, list[float]] = defaultdict(list)  # each training step's seconds

    def lightning_run(
        name: str, overrides: list[str], datamodule: Callable | None = None, patch=None
    ) -> Callable:
        def run(round_: int) -> list[Span]:
            cfg = compose_config(
                [
                    f"data.data_dir={data_dir}",
                    f"paths.output_dir={work.name}/{name.replace(' ', '_')}/{round_}",
                    *trainer_overrides(device),
                    "data.val_size=0",  # validate on the 10,000 test images, as A does
                    f"data.batch_size={args.batch_size}",
                    "trainer.enable_progress_bar=false",
                    f"trainer.max_epochs={args.epochs}",
                    f"trainer.limit_train_batches={args.fraction}",
                    f"trainer.limit_val_batches={args.fraction}",
                    f"trainer.limit_test_batches={args.fraction}",  # not timed
                    *overrides,
                ]
            )
            timer = EpochTimer(stopwatch)
            dm = datamodule() if datamodule else None
            with patch() if patch else contextlib.nullcontext():
                quiet_train(cfg, [timer], dm)
            steps[name] += timer.steps
            return timer.spans

        return run

    def lesson_run(round_: int) -> list[Span]:
        torch.manual_seed(round_)
        loop = LessonLoop(
            x[:n_train], y[:n_train], xt[:n_eval], yt[:n_eval], device, args.batch_size
        )
        spans = []
        for _ in range(args.epochs):
            stopwatch.start()
            loop.epoch()
            spans.append(stopwatch.stop())
        return spans

    template = lambda: TorchvisionMNIST(  # noqa: E731
        data_dir, args.batch_size, args.workers, pin_memory=device.type == "cuda"
    )
    variants: dict[str, Callable[[int], list[Span]]] = {
        "A": lesson_run,
        "B": lightning_run("B", []),
        "C": lightning_run("C", [], template),
        "B step-log": lightning_run("B step-log", [], patch=logging_every_step),
    }
    for name, overrides in args.extra.items():
        variants[name] = lightning_run(name, overrides)
    spans: dict[str, list[Span]] = {name: [] for name in variants}
    memory = {name: PeakMemory(device) for name in variants}

    machine = describe(device)
    print(f"{machine['cpu']}, {machine['torch_threads']} threads, {device}", flush=True)
    print(f"{args.rounds} rounds x {args.epochs} epochs of {images} training images", flush=True)
    names = list(variants)
    started = time.perf_counter()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            with memory[name]:
                new = variants[name](r)
            spans[name] += new
            shown = " ".join(f"{s.seconds:.2f}s" for s in new)
            load = max(s.foreign_cpu for s in new)
            print(
                f"round {r + 1}/{args.rounds} {name}: {shown} (foreign CPU {load:.0%})", flush=True
            )
    work.cleanup()

    rows = {}
    for name in names:
        kept = [s for s in spans[name] if s.foreign_cpu <= args.max_foreign] or spans[name]
        median = statistics.median(s.seconds for s in kept)
        rows[name] = {
            "median_epoch_s": round(median, 3),
            "images_per_s": round(images / median),
            "peak_memory_mib": round(memory[name].peak_mib, 1),
            "epochs_kept": len(kept),
            "epochs_discarded": len(spans[name]) - len(kept),
            "median_step_ms": round(1000 * statistics.median(steps[name] or [0.0]), 3),
            "epochs": [vars(s) for s in spans[name]],
        }
    ratios = {
        "B/A": rows["B"]["median_epoch_s"] / rows["A"]["median_epoch_s"],
        "C/B": rows["C"]["median_epoch_s"] / rows["B"]["median_epoch_s"],
        # what logging from every step adds to B's steps, as a share of B's epoch
        "step-log cost": (rows["B step-log"]["median_step_ms"] - rows["B"]["median_step_ms"])
        * (len(steps["B"]) / len(spans["B"]))
        / 1000
        / rows["B"]["median_epoch_s"],
    }
    results = {
        **result_header("epoch_time", argv, machine, quick=args.quick),
        "settings": {
            "rounds": args.rounds,
            "epochs_per_round": args.epochs,
            "train_images_per_epoch": images,
            "eval_images_per_epoch": n_eval,
            "batch_size": args.batch_size,
            "template_workers": args.workers,
            "max_foreign_cpu": args.max_foreign,
            "extra_variants": args.extra,
        },
        "variants": rows,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "targets_met": {  # a tenth of an epoch weighs the per-epoch costs too much to judge
            k: None if args.quick else ratios[k] <= v if op == "<=" else ratios[k] >= v
            for k, (op, v) in TARGETS.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    name = f"epoch_time-{device.type}" + ("-quick" if args.quick else "")
    publish(name, args.out, results, render)
    return 0


def render(results: dict) -> str:
    """The results as a Markdown table, with the ratios and their targets below it."""
    rows = []
    for name, row in results["variants"].items():
        epochs = row["epochs"]
        rows.append(
            [
                name,
                f"{row['median_epoch_s']:.2f}",
                f"{row['images_per_s']:,}",
                f"{row['peak_memory_mib']:.0f}",
                f"{row['median_step_ms']:.2f}" if name != "A" else "-",
                f"{row['epochs_kept']}/{row['epochs_kept'] + row['epochs_discarded']}",
                f"{statistics.median(e['load_avg'] for e in epochs):.1f}",
                f"{max(e['foreign_cpu'] for e in epochs):.0%}",
            ]
        )
    header = ["variant", "median epoch (s)", "train images/s", "peak memory (MiB)"]
    header += ["median step (ms)", "epochs kept", "load average", "max foreign CPU"]
    lines = [table(header, rows), ""]
    for key, value in results["ratios"].items():
        verdict = VERDICTS[results["targets_met"][key]]
        lines.append(f"{key} = {value:.3g} (target {results['targets'][key]}: {verdict})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
