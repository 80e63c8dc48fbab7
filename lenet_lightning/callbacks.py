"""Lightning callbacks and the checkpoint writer: checkpoints that survive a full disk, a resume
and an interruption; the run's report (``metrics.json``, ``curves.png``); what TensorBoard shows
beyond the metrics; and the settings only the data can check."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure

from lenet_lightning.errors import ConfigError
from lenet_lightning.model import count_parameters
from lenet_lightning.module import MONITOR, Diverged
from lenet_lightning.outputs import write_atomic
from lenet_lightning.report import digits_figure, plot_curves, write_run_report

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name, then renamed into place: a full disk or a
    crash leaves the previous good file, never a cut one. (Lightning's own writes into the
    temp folder and moves the file, which across two filesystems copies over the old one.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None):
        buffer = io.BytesIO()  # serialised first: a failed write is then a plain OSError
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), lambda f: f.write(buffer.getbuffer()))


class CheckAgainstTheData(L.Callback):
    """Refuse, before training starts, a setting that only the data can show to be wrong."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        interval = trainer.val_check_interval
        batches = len(trainer.datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        if isinstance(interval, int) and interval > batches:
            raise ConfigError(
                f"trainer.val_check_interval={interval} is more than the {batches} training "
                "batches of an epoch: give at most that many, or a share of an epoch (0.5)"
            )


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that names epochs from 1 (as the run prints them) and keeps its record
    (best score, files) across a resume.

    A resumed run writes into a new folder, and Lightning forgets the best score when the
    folder changes: the first epoch after a resume would count as the best whatever its score.
    Here the score, and the file it came from, carry over. Lightning only ever deletes
    checkpoints inside the current run's folder, so the earlier run's files stay.
    """

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
    epoch boundary (from the start of training on, a resumed run's too), and the run says how
    to resume from it; a diverged run says which checkpoint is the last good one.

    Lightning stops cleanly on both signals (its signal connector raises
    ``SIGTERMException``) and calls ``on_exception``. Resuming from an epoch boundary continues
    exactly as an uninterrupted run would (same data order, same metrics).
    """

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.last_checkpoint, weights_only=False)  # the start, or resume

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, Diverged):
            exception.args = (f"{exception}. The last good checkpoint: {self.last_checkpoint}",)
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
            "lenet-train ckpt_path=%s and the same settings",
            trainer.current_epoch + 1,
            done,
            self.last_checkpoint,
        )


class WeightAverage(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights, validated and saved in place of
    the weights themselves (a checkpoint's ``state_dict`` is the average).

    One change: when testing a checkpoint after fitting, Lightning's callback would load the raw
    weights (the checkpoint's ``current_model_state``) and test those; here the average is
    tested, the weights that were validated and chosen.
    """

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class RunReport(L.Callback):
    """``metrics.json`` in the run folder, rewritten as the run learns more: after fitting (the
    epochs, their curves in ``curves.png``, the checkpoints), after testing (the test metrics and
    the confusion matrix), and when training diverges (the good epochs and why it stopped)."""

    def __init__(
        self, out_dir: Path, config: dict, best: ModelCheckpoint, last: ModelCheckpoint
    ) -> None:
        self.out_dir, self.config, self.best, self.last = out_dir, config, best, last
        self.start = time.perf_counter()
        self.history: list[dict[str, float]] = []
        self.facts: dict[str, Any] = {}

    def write(self, trainer: L.Trainer, test: dict[str, float], **more: Any) -> None:
        if trainer.is_global_zero:
            facts = {**self.facts, **more, "config": self.config}
            write_run_report(self.out_dir, self.history, test, MONITOR, **facts)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        device = str(trainer.strategy.root_device)
        self.facts = {"parameters": count_parameters(pl_module), "device": device}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.history = list(pl_module.history)  # testing the best checkpoint restores its own
        self.facts |= {
            "fit_seconds": round(time.perf_counter() - self.start, 2),
            "best_checkpoint": self.best.best_model_path or None,  # none after fast_dev_run
            "last_checkpoint": self.last.best_model_path or None,
        }
        self.write(trainer, {})  # what is known if testing is interrupted
        if self.history and trainer.is_global_zero:
            plot_curves(self.history, self.out_dir / "curves.png")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitted = self.out_dir / "metrics.json"
        if not self.history and fitted.exists():  # fitted in another process (ddp_spawn)
            report = json.loads(fitted.read_text())
            self.history = report["history"]
            keep = ("parameters", "device", "fit_seconds", "best_checkpoint", "last_checkpoint")
            self.facts = {k: report[k] for k in keep if k in report}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        wall = round(time.perf_counter() - self.start, 2)
        confusion = pl_module.confusion.tolist()  # true digit down, predicted across
        self.write(trainer, test, wall_seconds=wall, confusion_matrix=confusion)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, Diverged):  # written: the good epochs; kept: the last good ckpt
            self.history = list(pl_module.history)
            self.write(trainer, {}, stopped=str(exception))


class TensorBoardExtras(L.Callback):
    """Beyond the metrics: sample training digits at the start; after testing, the confusion
    matrix, the test digits the model got wrong (kept by the module, over all ranks), and the
    HParams tab (each run's settings beside its results). Does nothing without TensorBoard."""

    def __init__(self, hparams: dict[str, Any], samples: int = 32) -> None:
        self.hparams, self.samples = hparams, samples

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any:
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            return logger.experiment
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (writer := self._writer(trainer)) is None:
            return
        images, labels = next(iter(trainer.train_dataloader))
        n = min(self.samples, len(labels))
        titles = [f"label {y}" for y in labels[:n].tolist()]
        writer.add_figure("samples/train", digits_figure(images[:n], titles), global_step=0)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (writer := self._writer(trainer)) is None:
            return
        step = trainer.global_step
        figure = Figure(figsize=(6, 5.5), layout="constrained")
        pl_module.test_confusion.plot(pl_module.confusion, ax=figure.subplots())
        writer.add_figure("test/confusion_matrix", figure, step)
        images, labels, preds = pl_module.mistakes
        if len(labels):
            pairs = zip(labels.tolist(), preds.tolist(), strict=True)
            titles = [f"true {t}, pred {p}" for t, p in pairs]
            writer.add_figure("test/mistakes", digits_figure(images, titles), step)
        best_val = trainer.checkpoint_callback.best_model_score
        results = {
            "hparams/val_acc_best": float(best_val if best_val is not None else "nan"),
            "hparams/test_acc": float(trainer.callback_metrics["test/acc"]),
        }
        trainer.logger.log_hyperparams(self.hparams, results)
