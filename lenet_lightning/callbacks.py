"""The run's Lightning callbacks, and ``run_callbacks``, which assembles them from the settings:
checkpoints that survive a full disk, a resume and an interruption; the run's report; what
TensorBoard shows beyond the metrics; and the settings only the data can check."""

from __future__ import annotations

import io
import logging
import re
import shlex
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure

from lenet_lightning.config import TrainConfig, learned
from lenet_lightning.errors import ConfigError
from lenet_lightning.figures import digits_figure, plot_curves
from lenet_lightning.model import count_parameters
from lenet_lightning.module import MONITOR, Diverged
from lenet_lightning.outputs import write_atomic
from lenet_lightning.run_folder import BEST_NAME, LAST_NAME, RunFolder, RunRecord
from lenet_lightning.search import pruning_callback
from lenet_lightning.trainer import training_batches

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
        batches = training_batches(trainer, trainer.datamodule)
        if isinstance(interval, int) and interval > batches:
            raise ConfigError(
                f"trainer.val_check_interval={interval} is more than the {batches} training "
                "batches of an epoch: give at most that many, or a share of an epoch (0.5)"
            )


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that names epochs from 1 (as the run prints them) and keeps its record
    (best score, files) across a resume into a new folder, where Lightning would forget the best
    score. Lightning only deletes checkpoints in the current folder: the earlier run's stay."""

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


def hydra_value(text: str) -> str:
    """``text`` as an override's value that Hydra and OmegaConf read back as exactly ``text``:
    bare where it is a plain path, else quoted (a space, a letter beyond ASCII, a comma, a quote,
    a bracket, ``${``), with the backslashes and quotes inside escaped."""
    if "/" in text and re.fullmatch(r"[\w/.+\-@%]+", text, re.ASCII):
        return text
    text = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", text)  # OmegaConf: a plain ${
    quote = "'" if '"' in text else '"'

    def escaped(m: re.Match) -> str:  # Hydra: backslashes before the quote or at the end
        return m[1] * 2 + "\\" * bool(m[2]) + m[2]

    return quote + re.sub(rf"(\\*)({quote}|\Z)", escaped, text) + quote


def command_line(prog: str, settings: list[str] | None, given: dict[str, str]) -> str:
    """The command ``prog`` with the run's ``settings`` (its overrides, as given) and ``given``
    (key: Hydra value) in place of its ``ckpt_path`` and ``resume``, as a shell takes it back
    word for word. Where the settings are unknown (a run not started by Hydra: ``train`` called
    from Python), ``given`` alone, and a word on the rest."""
    replaced = {"ckpt_path", "resume", *given}
    kept = [o for o in settings or [] if o.split("=", 1)[0].lstrip("+~") not in replaced]
    line = shlex.join([prog, *kept, *(f"{key}={value}" for key, value in given.items())])
    return line if settings is not None else f"{line} and the same settings"


def run_settings() -> list[str] | None:
    """The overrides this run was started with, as given (None: not started by Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


class ResumeAfterInterrupt(L.Callback):
    """Ctrl-C or SIGTERM loses at most the current epoch: ``last.ckpt`` always holds the last
    epoch boundary (from the start of training on, a resumed run's too), and the run prints the
    command that resumes from it, quoted for a shell and for Hydra. Interrupted once training
    has finished (before or while testing), nothing is lost: it says so, and how to run the
    test (``resume=true`` in the run's folder). A diverged run names the last good checkpoint."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.batches_done = 0  # in the current epoch
        self.trained = False  # the fit loop reached its end: every epoch is in the checkpoints

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained = False
        trainer.save_checkpoint(self.run.last_checkpoint, weights_only=False)  # start, or resume

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches_done = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.batches_done += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained = True

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, Diverged):
            last = self.run.last_checkpoint
            exception.args = (f"{exception}. The last good checkpoint: {last}",)
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if not interrupted or not trainer.is_global_zero:
            return
        settings = run_settings()
        every_epoch = 0 <= (trainer.max_epochs or -1) <= trainer.current_epoch  # -1: no end
        if self.trained or trainer.testing or every_epoch:  # nothing of training is lost
            folder = {"resume": "true", "hydra.run.dir": hydra_value(str(self.run.path))}
            log.warning(
                "Interrupted %s testing; training had finished and its checkpoints are kept, "
                "but the test did not finish. Run it with: %s",
                "while" if trainer.testing else "before",
                command_line("lenet-train", settings, folder),
            )
            return
        last = {"ckpt_path": hydra_value(str(self.run.last_checkpoint))}
        log.warning(
            "Interrupted in epoch %d after %d batches; those batches are lost. Resume with: %s",
            trainer.current_epoch + 1,
            self.batches_done,
            command_line("lenet-train", settings, last),
        )


class EndEpochBeforeTimeLimit(L.Callback):
    """SLURM's warning before a job's time limit (submitit asks for USR2, ``signal_delay_s``
    ahead) ends training at the end of the epoch under way, once its ``last.ckpt`` is saved,
    and only then hands the signal to submitit, which requeues the job: the next attempt
    carries on from that epoch boundary, exactly. (Handed over at once, as submitit does, the
    epoch under way would be lost, and an attempt shorter than an epoch would never get on.)
    Outside training, and outside a submitit job, the signal is left as it is."""

    def __init__(self) -> None:
        self.handler: Any = None
        self.warned = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.handler = signal.getsignal(signal.SIGUSR2)  # Lightning puts it back at teardown
        if callable(self.handler):
            signal.signal(signal.SIGUSR2, self.warn)

    def warn(self, signum: int, frame: Any) -> None:
        self.warned = True
        log.warning(
            "SLURM's time limit is near (SIGUSR2): training stops at the end of this epoch, "
            "which is saved; then the job is requeued to carry on from it"
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.reduce_boolean_decision(self.warned, all=False):
            trainer.should_stop = True  # as early stopping does: last.ckpt is this epoch's

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.warned and callable(self.handler):
            self.handler(signal.SIGUSR2, None)  # submitit's: requeue this job, and exit


class WeightAverage(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights, validated and saved in place of
    the weights themselves. One change: testing after fitting tests the average (the weights
    validated and chosen), where Lightning's callback would load the raw weights."""

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class RunReport(L.Callback):
    """``metrics.json`` in the run folder, rewritten after fitting (epochs, ``curves.png``,
    checkpoints), after testing (test metrics, confusion matrix), and when training diverges.
    Its times add up the attempts of a run carried on from a checkpoint (a resume, a SLURM
    requeue): each checkpoint holds the seconds fitted until it was saved."""

    def __init__(self, run: RunFolder, config: dict, best: ModelCheckpoint, last: ModelCheckpoint):
        self.run, self.config, self.best, self.last = run, config, best, last
        self.start = time.perf_counter()
        self.before = self.carried = 0.0  # seconds fitted by the attempts before this one
        self.record = RunRecord(config=config)

    def seconds(self) -> float:
        return round(self.before + time.perf_counter() - self.start, 2)

    def state_dict(self) -> dict[str, Any]:
        return {"fit_seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # fitting's, or testing's
        self.carried = state_dict.get("fit_seconds", 0.0)

    def write(self, trainer: L.Trainer, test: dict[str, float], **more: Any) -> None:
        if trainer.is_global_zero:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.record.summarised(test, MONITOR, **more).write(self.run.metrics)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.before = time.perf_counter(), self.carried
        device, parameters = str(trainer.strategy.root_device), count_parameters(pl_module)
        self.record = replace(self.record, parameters=parameters, device=device)
        if trainer.is_global_zero:  # after the start checks: a refusal is the only line
            log.info("LeNet-5 with %d parameters; writing to %s", parameters, self.run.path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record = replace(
            self.record,
            history=list(pl_module.history),  # testing the best checkpoint restores its own
            fit_seconds=self.seconds(),
            best_checkpoint=self.best.best_model_path or None,  # none after fast_dev_run
            last_checkpoint=self.last.best_model_path or None,
        )
        self.write(trainer, {})  # what is known if testing is interrupted
        if self.record.history and trainer.is_global_zero:
            plot_curves(self.record.history, self.run.curves)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.record.history and (fitted := self.run.record()):  # fitted in another
            self.record = replace(fitted, config=self.config)  # process (ddp_spawn)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        wall = self.seconds()
        confusion = pl_module.confusion.tolist()  # true digit down, predicted across
        self.write(trainer, test, wall_seconds=wall, confusion_matrix=confusion)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, Diverged):  # written: the good epochs; kept: the last good ckpt
            self.record = replace(self.record, history=list(pl_module.history))
            self.write(trainer, {}, stopped=str(exception))


class TensorBoardExtras(L.Callback):
    """Beyond the metrics: sample training digits at the start; after testing, the confusion
    matrix, the test digits the model got wrong (kept by the module, over all ranks), and the
    HParams tab (each run's settings beside its results). Does nothing without TensorBoard."""

    def __init__(self, hparams: dict[str, Any], samples: int = 32) -> None:
        self.hparams, self.samples = hparams, samples

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any:
        tensorboard = isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero
        return trainer.logger.experiment if tensorboard else None

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


PROGRESS_EVERY_BATCHES = 20  # a 2-core CPU trains about 100 batches a second


def progress_bar() -> L.Callback:
    """Lightning's tqdm progress bar, moved every ``PROGRESS_EVERY_BATCHES`` batches. Lightning's
    default (Rich's bar where Rich is installed, else tqdm's) does its work after every batch,
    and Rich's wakes a thread 100 times a second: about a tenth of an epoch's time on a 2-core
    CPU (docs/performance.md, "What the figures guided")."""
    return TQDMProgressBar(refresh_rate=PROGRESS_EVERY_BATCHES)


def run_callbacks(cfg: TrainConfig, run: RunFolder, logger: Any) -> list[L.Callback]:
    """The run's callbacks: the check against the data, the best and the last checkpoint (every
    epoch, to resume from), the report, what TensorBoard shows, the layer-by-layer summary, and
    the weights' moving average, early stopping, the learning-rate log and an Optuna trial's
    pruning where they apply; last, the end of training before SLURM's time limit."""
    validating = cfg.trainer.limit_val_batches != 0  # without validation: the last epoch
    best = ResumableCheckpoint(
        run.checkpoints,
        BEST_NAME,
        monitor=MONITOR if validating else None,
        mode="max",
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    last = ResumableCheckpoint(
        run.checkpoints, LAST_NAME, enable_version_counter=False, save_on_train_epoch_end=True
    )  # listed after best: last.ckpt holds best's record too
    settings = learned(cfg)
    callbacks = [
        CheckAgainstTheData(),
        best,
        last,
        ResumeAfterInterrupt(run),
        RunReport(run, asdict(cfg), best, last),
        TensorBoardExtras({k: str(v) if isinstance(v, list) else v for k, v in settings.items()}),
        ModelSummary(max_depth=3),  # every layer with its input and output shape, and FLOPs
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(progress_bar())
    if cfg.callbacks.ema_decay is not None:
        callbacks.append(WeightAverage(decay=cfg.callbacks.ema_decay))
    if patience := cfg.callbacks.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    if logger and cfg.model.scheduler != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.search.trial is not None and (pruning := pruning_callback(cfg.search, MONITOR)):
        callbacks.append(pruning)  # an Optuna search's trial: each epoch's val/acc to its pruner
    return [*callbacks, EndEpochBeforeTimeLimit()]  # last: its on_fit_end may end the process
