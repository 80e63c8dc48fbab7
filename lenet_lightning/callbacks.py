"""Lightning callbacks: checkpoints that survive a resume and an interruption (the last one
also keeps each epoch's metrics, printed as a line), and the pictures shown in TensorBoard."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure

from lenet_lightning.report import digits_figure

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The training loss is no longer a finite number; nothing of that epoch is kept."""


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that never saves a diverged epoch, names epochs from 1 (as the run
    prints them), and keeps its record (best score, files) across a resume.

    A resumed run writes into a new folder, and Lightning forgets the best score when the
    folder changes: the first epoch after a resume would count as the best whatever its score.
    Here the score, and the file it came from, carry over. Lightning only ever deletes
    checkpoints inside the current run's folder, so the earlier run's files stay.
    """

    @staticmethod
    def refuse_diverged(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = float(trainer.callback_metrics.get("train/loss", 0.0))
        if not math.isfinite(loss):  # stop before this epoch's weights are written anywhere
            raise Diverged(
                f"the training loss became {loss} in epoch {trainer.current_epoch + 1}: "
                f"training diverged. Lower model.lr (now {pl_module.hparams.lr:g}); "
                "standardised inputs (data.normalize=true) and a schedule (model.scheduler) help"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refuse_diverged(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, *args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
            return
        self.best_model_path = state_dict["best_model_path"]
        self.best_model_score = state_dict["best_model_score"]
        self.best_k_models = dict(state_dict.get("best_k_models", {}))
        self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
        self.kth_value = state_dict.get("kth_value", self.kth_value)


class ResumeAfterInterrupt(L.Callback):
    """Ctrl-C or SIGTERM loses at most the current epoch: ``last.ckpt`` always holds the last
    epoch boundary (from the start of training on), and the run says how to resume from it.

    Lightning stops cleanly on both (its signal connector raises ``SIGTERMException``) and
    calls ``on_exception``. Resuming from an epoch boundary continues exactly as an
    uninterrupted run would (same data order, same metrics); a mid-epoch state could not.
    """

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            trainer.save_checkpoint(self.last_checkpoint, weights_only=False)  # epoch 0: the start

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if not interrupted or not trainer.is_global_zero:
            return
        if trainer.testing:  # training had finished: its checkpoints and metrics.json are kept
            log.warning(
                "Interrupted while testing; training had finished and its checkpoints are kept. "
                "Test the best one with: lenet-eval ckpt_path=%s",
                trainer.checkpoint_callback.best_model_path,
            )
            return
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        log.warning(
            "Interrupted in epoch %d after %d batches; those batches are lost. Resume with: "
            "lenet-train ckpt_path=%s (or ckpt_path=latest) and the same settings",
            trainer.current_epoch + 1,
            done,
            self.last_checkpoint,
        )


class LastCheckpoint(ResumableCheckpoint):
    """``last.ckpt``, written after every epoch, holding the history of every epoch's metrics
    (so a resumed run still reports all of them); each epoch is also printed as one line.

    Lightning runs a checkpoint callback's ``on_train_epoch_end`` after the module's own, where
    the epoch's training metrics are logged: this one sees all of them.
    """

    def __init__(self, dirpath: Path) -> None:
        super().__init__(
            dirpath, "last", enable_version_counter=False, save_on_train_epoch_end=True
        )
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refuse_diverged(trainer, pl_module)  # before a diverged epoch enters the history
        row = {"epoch": trainer.current_epoch + 1}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(("train/", "val/")):
                row[key] = float(value)
        self.epochs.append(row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
        pl_module.print(f"epoch {row['epoch']}/{trainer.max_epochs}: {shown}")  # beside the bar
        super().on_train_epoch_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.epochs = list(state_dict["epochs"])


class TensorBoardPictures(L.Callback):
    """Sample training digits at the start; after testing, the confusion matrix and the test
    digits the model got wrong (kept by the module, over all ranks). Needs a TensorBoard logger;
    does nothing otherwise."""

    def __init__(self, samples: int = 32) -> None:
        self.samples = samples

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any:
        logger = trainer.logger
        return logger.experiment if isinstance(logger, TensorBoardLogger) else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        images, labels = next(iter(trainer.train_dataloader))
        n = min(self.samples, len(labels))
        titles = [f"label {y}" for y in labels[:n].tolist()]
        writer.add_figure("samples/train", digits_figure(images[:n], titles), global_step=0)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        figure = Figure(figsize=(6, 5.5), layout="constrained")
        pl_module.test_confusion.plot(pl_module.confusion, ax=figure.subplots())
        writer.add_figure("test/confusion_matrix", figure, step)
        images, labels, preds = pl_module.mistakes
        if len(labels):
            titles = [
                f"true {t}, pred {p}" for t, p in zip(labels.tolist(), preds.tolist(), strict=True)
            ]
            writer.add_figure("test/mistakes", digits_figure(images, titles), step)
