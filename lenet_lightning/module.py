"""LitLeNet5: the LightningModule around LeNet5 - cross-entropy, Adam, accuracy per stage.

Logged metrics, as epoch means: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
``val/acc_best``, ``test/loss``, ``test/acc``: torchmetrics objects, synced over DDP ranks.
Testing also keeps the confusion matrix and the first mistakes (over all ranks too).
Hyperparameters are plain values, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

from lenet_lightning.model import LeNet5

MONITOR = "val/acc"  # what checkpointing and early stopping watch; higher is better
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


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
        images, labels, preds = (
            dim_zero_cat(getattr(self, n)) for n in ("images", "labels", "preds")
        )
        return images[: self.limit], labels[: self.limit], preds[: self.limit]


class LitLeNet5(L.LightningModule):
    """LeNet5 trained with cross-entropy on its logits. The keyword arguments are
    ``ModelConfig``'s: those that describe the network go to ``LeNet5``.

    Steps only update the metrics; each is logged once, in the stage's epoch-end hook, and
    Lightning computes, syncs and resets it there. Logging from every training step, the
    common pattern, added 14% to an epoch on a 2-core CPU (``make bench``: "step-log cost"):
    each ``self.log`` call moves Lightning's bookkeeping to the device.
    """

    def __init__(
        self,
        *,
        lr: float,
        weight_decay: float,
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

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_loss.update(loss.detach(), len(y))
        self.train_acc.update(logits.argmax(dim=1), y)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict({"train/loss": self.train_loss, "train/acc": self.train_acc})

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits, y), len(y))
        self.val_acc.update(logits.argmax(dim=1), y)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation
        best = getattr(self.trainer.checkpoint_callback, "best_model_score", None)
        if best is not None:  # a resumed run carries on from its best so far
            self.val_acc_best.update(best)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)
        self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        preds = logits.argmax(dim=1)
        self.test_loss.update(F.cross_entropy(logits, y), len(y))
        self.test_acc.update(preds, y)
        self.test_confusion.update(preds, y)
        self.test_mistakes.update(x, y, preds)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss, "test/acc": self.test_acc})
        # Kept for metrics.json and TensorBoard: true digit down, predicted across.
        self.confusion = self.test_confusion.compute().cpu()  # every rank calls: they sync
        self.mistakes = [t.cpu() for t in self.test_mistakes.compute()]
        self.test_confusion.reset()
        self.test_mistakes.reset()

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = OPTIMIZERS[hp.optimizer](  # fused: one kernel per step, not ~100 small ones
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=True
        )
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        steps = int(self.trainer.estimated_stepping_batches)
        if hp.scheduler == "cosine":
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        else:
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=steps
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
