"""LitLeNet5: the LightningModule around LeNet5 - cross-entropy, Adam, accuracy per stage.

Logged metrics (epoch means, detached numbers, never tensors that hold a graph):
``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss``,
``test/acc``. Hyperparameters are plain values, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from lenet_lightning.model import LeNet5

MONITOR = "val/acc"  # what checkpointing and early stopping watch; higher is better
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("none", "cosine", "onecycle")  # per step; cosine and onecycle end near zero


class LitLeNet5(L.LightningModule):
    """LeNet5 trained with cross-entropy on its logits; accuracy per stage (synced under DDP)."""

    def __init__(
        self,
        *,
        activation: str,
        pooling: str,
        conv_size: int,
        batch_norm: bool,
        lr: float,
        weight_decay: float,
        optimizer: str,
        scheduler: str,
        label_smoothing: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = LeNet5(activation, pooling, conv_size, batch_norm)
        self.train_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        x, y = batch
        logits = self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        preds = logits.argmax(dim=1)
        acc = getattr(self, f"{stage}_acc")
        acc.update(preds, y)
        log = {"on_step": False, "on_epoch": True, "batch_size": len(y)}
        self.log(f"{stage}/loss", loss, sync_dist=True, **log)  # averaged over DDP ranks
        self.log(f"{stage}/acc", acc, prog_bar=stage == "val", **log)
        return {"loss": loss, "preds": preds}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")["loss"]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._step(batch, "test")["preds"]}  # for the pictures in TensorBoard

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute())

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = OPTIMIZERS[hp.optimizer](
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay
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
