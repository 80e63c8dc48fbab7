"""The learning-rate finder (``lenet-train tune=lr_find``): Lightning's ``Tuner.lr_find`` on the
model and data the settings describe, instead of training. Over ``STEPS`` batches the rate grows
exponentially from ``MIN_LR`` to ``MAX_LR``; the suggestion is where the loss falls fastest, and
the model is restored. Writes ``lr_find.png`` and ``lr_find.json`` into the run folder.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.tuner import Tuner
from matplotlib.figure import Figure

from lenet_lightning.config import TrainConfig
from lenet_lightning.errors import ConfigError
from lenet_lightning.outputs import write_json
from lenet_lightning.trainer import build, training_batches

MIN_LR, MAX_LR, STEPS = 1e-6, 1.0, 100
FEWEST_STEPS = 20  # fewer cannot show where the loss falls fastest


def train_command(lr: float) -> str:
    """The ``lenet-train`` command of this run, with ``model.lr`` set and ``tune`` dropped."""
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in given if not o.lstrip("+~").startswith(("tune=", "model.lr="))]
    return shlex.join(["lenet-train", *kept, f"model.lr={lr:.3g}"])


def steps_available(trainer: L.Trainer, datamodule: L.LightningDataModule) -> int:
    """How many of its ``STEPS`` the finder can run: it stops at ``trainer.max_epochs``."""
    datamodule.trainer = trainer  # its tensors on the trainer's device
    datamodule.prepare_data()
    datamodule.setup("fit")
    per_epoch = training_batches(trainer, datamodule)
    steps = min(STEPS, per_epoch * trainer.max_epochs)
    if steps < FEWEST_STEPS:
        raise ConfigError(
            f"tune=lr_find needs at least {FEWEST_STEPS} training steps; these settings give "
            f"{steps} ({per_epoch} batches x {trainer.max_epochs} epochs): raise "
            "trainer.max_epochs or trainer.limit_train_batches, or lower data.batch_size"
        )
    if steps < STEPS:
        print(
            f"lr_find: {steps} steps ({per_epoch} batches x {trainer.max_epochs} epochs), fewer "
            f"than its {STEPS}: the same rates, {MIN_LR:g} to {MAX_LR:g}, in coarser steps"
        )
    return steps


def find_learning_rate(cfg: TrainConfig) -> float:
    """``tune=lr_find``: the finder on the model and data that ``cfg`` describes."""
    trainer, module, datamodule = build(cfg, logger=False, enable_checkpointing=False)
    return find_lr(trainer, module, datamodule, Path(cfg.paths.output_dir))


def find_lr(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, out: Path
) -> float:
    """Run the finder; write its picture and numbers; print the rate and how to train with it."""
    if trainer.fast_dev_run:
        raise ConfigError(
            f"tune=lr_find cannot run with trainer.fast_dev_run: it needs {STEPS} steps"
        )
    if trainer.world_size > 1:
        raise ConfigError("tune=lr_find runs on one device: use trainer=default or trainer=cpu")
    steps = steps_available(trainer, datamodule)
    start = time.perf_counter()
    finder = Tuner(trainer).lr_find(
        module, datamodule=datamodule, min_lr=MIN_LR, max_lr=MAX_LR, num_training=steps,
        update_attr=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    suggestion = finder.suggestion()
    if suggestion is None:
        raise RuntimeError(f"lr_find found no falling stretch of the loss in its {steps} steps")
    out.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 4), layout="tight")
    finder.plot(suggest=True, ax=figure.subplots())
    figure.axes[0].set_title(f"suggested learning rate: {suggestion:.3g}")
    figure.savefig(out / "lr_find.png", dpi=100)
    command = train_command(suggestion)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    result = {"suggestion": suggestion, "command": command, "seconds": round(seconds, 2)}
    write_json(out / "lr_find.json", {**result, "steps": len(lrs), "lr": lrs, "loss": losses})
    print(f"Suggested learning rate: {suggestion:.3g} (lr_find.png and lr_find.json in {out})")
    print(f"Train with it: {command}")
    return suggestion
