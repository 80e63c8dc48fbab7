"""LitLeNet5: the LightningModule around LeNet5 - cross-entropy, Adam, accuracy per stage.

Logged metrics, as epoch means (torchmetrics objects, synced over DDP ranks): ``train/loss``,
``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss``, ``test/acc``. For the
report it keeps each epoch's metrics (``history``, saved in checkpoints), the test's confusion
matrix and first mistakes. Hyperparameters are plain values: checkpoints load ``weights_only``.
Each checkpoint also records the run's settings that change what is learned (``run_settings``),
for resuming to compare; fitting resumed from a checkpoint of a weights' average carries on from
the raw weights saved beside it.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

from lenet_lightning.config import RECORDED
from lenet_lightning.errors import to_log_files
from lenet_lightning.model import LeNet5


class Diverged(RuntimeError):
    """The training loss is no longer a finite number; nothing of that epoch is kept."""


log = logging.getLogger(__name__)
MONITOR = "val/acc"  # what checkpointing and early stopping watch; higher is better
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class Mistakes(Metric):
    """The first ``limit`` misclassified images with their labels and predictions (all ranks)."""

    def __init__(self, limit: int = 32) -> None:
        super().__init__()
        self.limit = limit
        for name in ("images", "labels", "preds"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, images: Tensor, labels: Tensor, preds: Tensor) -> None:
        room = self.limit - sum(len(t) for t in self.labels)
        wrong = (preds != labels).nonzero().flatten()[: max(room, 0)]
        self.images.append(images[wrong])
        self.labels.append(labels[wrong])
        self.preds.append(preds[wrong])

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        images, labels, preds = (dim_zero_cat(s) for s in (self.images, self.labels, self.preds))
        return images[: self.limit], labels[: self.limit], preds[: self.limit]


class LitLeNet5(L.LightningModule):
    """LeNet5 trained with cross-entropy on its logits; the keyword arguments are ``ModelConfig``'s
    (those that describe the network go to ``LeNet5``). Steps only update the metrics; each is
    logged once, in the stage's epoch-end hook, where Lightning computes, syncs and resets it
    (docs/performance.md: "step-log cost")."""

    def __init__(
        self,
        *,
        lr: float,
        weight_decay: float,
        momentum: float,
        optimizer: str,
        scheduler: str,
        label_smoothing: float,
        channels_last: bool,
        **network: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels_last: the layout the CPU's oneDNN and the GPU's tensor cores convolve fastest
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = LeNet5(**network).to(memory_format=self.memory_format)
        accuracy = lambda: MulticlassAccuracy(10, average="micro", validate_args=False)  # noqa: E731
        mean = lambda: MeanMetric(nan_strategy="disable")  # noqa: E731 - keep a nan; no host sync
        self.train_loss, self.val_loss, self.test_loss = mean(), mean(), mean()
        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()
        self.val_acc_best = MaxMetric()
        self.test_confusion = MulticlassConfusionMatrix(10, validate_args=False)
        self.test_mistakes = Mistakes()
        self.example_input_array = torch.zeros(1, 1, 28, 28)  # the summary's shapes and FLOPs
        self.history: list[dict[str, float]] = []  # each epoch's train/ and val/ metrics
        self.run_settings: dict[str, Any] = {}  # config.learned of the run (trainer.build's)
        self.confusion: Tensor | None = None  # after testing: true digit down, predicted across
        self.mistakes: tuple[Tensor, Tensor, Tensor] | None = None  # images, labels, preds

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def model_step(
        self, batch: tuple[Tensor, Tensor], loss: MeanMetric, accuracy: Metric, smoothing: float = 0
    ) -> tuple[Tensor, Tensor]:
        """The loss of a batch and its predictions; the stage's metrics are updated."""
        x, y = batch
        logits = self(x)
        value = F.cross_entropy(logits, y, label_smoothing=smoothing)
        preds = logits.argmax(dim=1)
        loss.update(value.detach(), len(y))
        accuracy.update(preds, y)
        return value, preds

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        smoothing = self.hparams.label_smoothing
        return self.model_step(batch, self.train_loss, self.train_acc, smoothing)[0]

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training metrics, and record the epoch in ``history``; refuse a
        diverged epoch here, before any checkpoint callback could save it."""
        self.log_dict({"train/loss": self.train_loss, "train/acc": self.train_acc})
        metrics = sorted(self.trainer.callback_metrics.items())
        row = {"epoch": self.current_epoch + 1}
        row |= {k: float(v) for k, v in metrics if k.startswith(("train/", "val/"))}
        if not math.isfinite(row["train/loss"]):
            raise Diverged(
                f"the training loss became {row['train/loss']} in epoch {row['epoch']}: "
                f"training diverged. Lower model.lr (now {self.hparams.lr:g}); "
                "standardised inputs (data.normalize=true) and a schedule (model.scheduler) help"
            )
        self.history.append(row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
        line = f"epoch {row['epoch']}/{self.trainer.max_epochs}: {shown}"
        self.print(line)  # beside the progress bar
        to_log_files(line)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["history"] = self.history
        if self.run_settings:
            checkpoint[RECORDED] = dict(self.run_settings)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the history. Where fitting resumes without a weights' average from a
        checkpoint of one (whose ``state_dict`` is the average), load the raw weights saved
        beside it, as the average's callback does: training carries on from them."""
        self.history = list(checkpoint.get("history", []))
        raw = checkpoint.get("current_model_state")
        if raw is not None and self.fitting_without_an_average():
            checkpoint["state_dict"] = raw

    def fitting_without_an_average(self) -> bool:
        try:
            trainer = self.trainer
        except RuntimeError:  # loaded by itself (load_from_checkpoint), not by a Trainer
            return False
        averaging = any(isinstance(c, WeightAveraging) for c in trainer.callbacks)
        return trainer.state.fn == TrainerFn.FITTING and not averaging

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.model_step(batch, self.val_loss, self.val_acc)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation
        best = getattr(self.trainer.checkpoint_callback, "best_model_score", None)
        if best is not None:  # a resumed run carries on from its best so far
            self.val_acc_best.update(best)
        self.stretch_schedule()

    def stretch_schedule(self) -> None:
        """A run resumed with more (or fewer) epochs than its checkpoint's run planned: the
        restored schedule is stretched over this run's steps, from the step reached. (As it was,
        a cosine schedule would climb back up after its end, and a one-cycle one stop the run.)"""
        if not self.trainer.lr_scheduler_configs:
            return
        config = self.trainer.lr_scheduler_configs[0]
        old = config.scheduler
        planned = getattr(old, "T_max", getattr(old, "total_steps", None))
        if planned is None:
            return  # not ours: the learning-rate finder's
        total, step = int(self.trainer.estimated_stepping_batches), self.trainer.global_step
        if planned == total or step >= total:
            return
        config.scheduler = self.schedule(old.optimizer, total, last_step=step)
        if self.trainer.is_global_zero:
            lr = config.scheduler.get_last_lr()[0]
            log.info(
                "Resuming at step %d: the %s schedule planned %d steps, this run has %d; it is "
                "stretched over the %d, so the learning rate is now %.3g",
                step, self.hparams.scheduler, planned, total, total, lr,
            )  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)
        self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, preds = self.model_step(batch, self.test_loss, self.test_acc)
        self.test_confusion.update(preds, batch[1])
        self.test_mistakes.update(*batch, preds)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss, "test/acc": self.test_acc})
        self.confusion = self.test_confusion.compute().cpu()  # every rank calls: they sync
        images, labels, preds = self.test_mistakes.compute()  # torchmetrics squeezes a lone
        self.mistakes = images.cpu(), labels.cpu().view(-1), preds.cpu().view(-1)  # mistake's
        self.test_confusion.reset()
        self.test_mistakes.reset()

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        more = {"momentum": hp.momentum} if hp.optimizer == "sgd" else {}
        optimizer = OPTIMIZERS[hp.optimizer](  # fused: one kernel per step, not ~100 small ones
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=True, **more
        )
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        schedule = self.schedule(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def schedule(self, optimizer: Any, total: int, last_step: int = 0) -> Any:
        """The learning-rate schedule over ``total`` steps, brought to step ``last_step`` along
        the very path a run of that length takes."""
        for group in optimizer.param_groups:  # a resumed optimiser holds its last rate
            group["lr"] = group.get("initial_lr", group["lr"])
        lr_scheduler = torch.optim.lr_scheduler
        if self.hparams.scheduler == "onecycle":
            made = lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=total)
        else:
            made = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        with warnings.catch_warnings():  # torch's note that the optimiser has not stepped yet
            warnings.simplefilter("ignore")
            for _ in range(last_step):
                made.step()
        return made
