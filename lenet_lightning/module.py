"""LitLeNet5: the LightningModule around LeNet5 - cross-entropy, Adam, accuracy per stage.

Logged metrics (epoch means, detached numbers, never tensors that hold a graph):
``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss``,
``test/acc``. Hyperparameters are plain values, so checkpoints load with ``weights_only=True``.

Each step only updates torchmetrics accumulators on the training device (no host sync); each
metric goes through ``self.log`` once per epoch. In Lightning 2.6 every ``self.log`` call
deep-copies its bookkeeping (Lightning issue 20388): under cProfile about 4 ms a call on a
2-core CPU, against a training step of about 25 ms.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric
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
        channels_last: bool,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels_last: the layout the CPU's oneDNN and the GPU's tensor cores convolve fastest
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = LeNet5(activation, pooling, conv_size, batch_norm)
        self.model.to(memory_format=self.memory_format)
        for stage in ("train", "val", "test"):  # synced over DDP ranks when computed
            accuracy = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
            setattr(self, f"{stage}_acc", accuracy)
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """Loss and predictions of one batch; the stage's epoch metrics take them in."""
        x, y = batch
        logits = self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        preds = logits.argmax(dim=1)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        getattr(self, f"{stage}_acc").update(preds, y)
        return loss, preds

    def _log_epoch(self, stage: str) -> Tensor:
        """Log the stage's epoch loss and accuracy, start the next epoch afresh; return the acc."""
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        value = acc.compute()
        once = {"on_step": False, "on_epoch": True, "batch_size": 1}  # values already reduced
        self.log(f"{stage}/loss", loss.compute(), **once)
        self.log(f"{stage}/acc", value, prog_bar=stage == "val", **once)
        loss.reset()
        acc.reset()
        return value

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch, "train")
        if batch_idx == self.trainer.num_training_batches - 1:  # before callbacks see the epoch
            self._log_epoch("train")
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._step(batch, "test")[1]}  # for the pictures in TensorBoard

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self._log_epoch("val"))
        self.log("val/acc_best", self.val_acc_best.compute())

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

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
