"""lenet-train: ``train(cfg)`` fits LeNet-5 as the config says, tests its best checkpoint and
returns the metrics; ``lenet-train tune=lr_find`` searches a learning rate instead.

``main`` is the thin Hydra entry point (``lenet_lightning/cli.py``); tests, the notebook and
the benchmarks call ``train`` with a config from ``compose_config``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from lenet_lightning.checkpoints import BEST_NAME, own_checkpoint, resume_checkpoint
from lenet_lightning.cli import entry_point
from lenet_lightning.model import count_parameters
from lenet_lightning.slurm import restart_count

if TYPE_CHECKING:  # Lightning takes seconds to import: only a run that passed the checks pays
    import lightning as L

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    callbacks: Sequence[L.Callback] = (),
    datamodule: L.LightningDataModule | None = None,
) -> dict[str, float]:
    """Train and test one model as ``cfg`` says; return the test metrics and ``val/acc_best``.

    ``callbacks`` join the run's own; ``datamodule`` replaces the one ``cfg.data`` describes.
    The benchmarks use both to time this very path, and to feed it another data pipeline.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    out_dir = Path(c["paths"]["output_dir"])
    ckpt_path = c["ckpt_path"] and resume_checkpoint(c["ckpt_path"], c["paths"]["log_dir"], c)
    if not ckpt_path and (why := carry_on_reason(c)):
        ckpt_path = own_checkpoint(out_dir, c, why)
        for mid_epoch in out_dir.glob("hpc_ckpt_*.ckpt"):  # Lightning's, saved on SLURM's
            mid_epoch.unlink()  # signal: an epoch boundary is where a resume is exact
    import lightning as L

    from lenet_lightning.callbacks import AtomicCheckpointIO
    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.module import MONITOR, LitLeNet5
    from lenet_lightning.trainer import trainer_from

    logger = make_logger(c["logger"], out_dir)
    trainer = trainer_from(
        c["trainer"],
        default_root_dir=out_dir,
        logger=logger,
        callbacks=[*run_callbacks(c, out_dir, logger), *callbacks],
        plugins=[AtomicCheckpointIO()],
    )
    L.seed_everything(c["seed"], workers=True, verbose=False)
    module = LitLeNet5(**c["model"])
    if datamodule is None:
        datamodule = MNISTDataModule(**c["data"], seed=c["seed"])
    log.info("LeNet-5 with %d parameters; writing to %s", count_parameters(module), out_dir)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = trainer.checkpoint_callback
    (test,) = trainer.test(
        module, datamodule=datamodule, ckpt_path=best.best_model_path or None, weights_only=True
    )  # no best checkpoint after fast_dev_run: the model as it is
    best_val = best.best_model_score or trainer.callback_metrics.get(MONITOR, math.nan)
    if trainer.is_global_zero:
        log.info("test/acc=%.4f  (%s)", test["test/acc"], out_dir)
    return {**test, f"{MONITOR}_best": float(best_val)}


def carry_on_reason(c: dict) -> str | None:
    """Why this run carries on from its own folder's last.ckpt, if it does."""
    if c["resume"]:
        return "resume=true"
    return f"SLURM restarted this job (restart {restart_count()})" if restart_count() else None


def make_logger(kind: str, out_dir: Path) -> Any:
    """The run's Lightning logger: TensorBoard, CSV, or none (False)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if kind == "tensorboard":
        return TensorBoardLogger(out_dir, name="tensorboard", version="", default_hp_metric=False)
    return CSVLogger(out_dir, name="csv", version="") if kind == "csv" else False


def run_callbacks(c: dict, out_dir: Path, logger: Any) -> list[L.Callback]:
    """The run's callbacks: the check against the data, the best and the last checkpoint (every
    epoch, to resume from), the report, what TensorBoard shows, the layer-by-layer summary, and
    the weights' moving average, early stopping and the learning-rate log where they apply."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelSummary

    from lenet_lightning.callbacks import (
        CheckAgainstTheData,
        ResumableCheckpoint,
        ResumeAfterInterrupt,
        RunReport,
        TensorBoardExtras,
        WeightAverage,
    )
    from lenet_lightning.module import MONITOR

    folder = out_dir / "checkpoints"
    validating = c["trainer"]["limit_val_batches"] != 0  # without validation: the last epoch
    best = ResumableCheckpoint(
        folder,
        BEST_NAME,
        monitor=MONITOR if validating else None,
        mode="max",
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    last = ResumableCheckpoint(
        folder, "last", enable_version_counter=False, save_on_train_epoch_end=True
    )  # listed after best: last.ckpt holds best's record too
    hparams = {**flat(c["model"], "model."), **flat(c["data"], "data."), "seed": c["seed"]}
    callbacks = [
        CheckAgainstTheData(),
        best,
        last,
        ResumeAfterInterrupt(Path(last.format_checkpoint_name({}))),
        RunReport(out_dir, c, best, last),
        TensorBoardExtras(hparams),
        ModelSummary(max_depth=3),  # every layer with its input and output shape, and FLOPs
    ]
    if (decay := c["callbacks"]["ema_decay"]) is not None:
        callbacks.append(WeightAverage(decay=decay))
    if patience := c["callbacks"]["early_stopping_patience"]:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    if logger and c["model"]["scheduler"] != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return callbacks


def flat(d: dict, prefix: str) -> dict:
    """One level of keys with a prefix; lists become text (TensorBoard takes scalars and text)."""
    return {prefix + k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


def find_learning_rate(cfg: DictConfig) -> float:
    """``tune=lr_find``: Lightning's learning-rate finder on the configured model and data."""
    c = OmegaConf.to_container(cfg, resolve=True)
    import lightning as L

    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.module import LitLeNet5
    from lenet_lightning.trainer import trainer_from
    from lenet_lightning.tune import find_lr

    out_dir = Path(c["paths"]["output_dir"])
    trainer = trainer_from(
        c["trainer"], default_root_dir=out_dir, logger=False, enable_checkpointing=False
    )
    L.seed_everything(c["seed"], workers=True, verbose=False)
    module = LitLeNet5(**c["model"])
    return find_lr(trainer, module, MNISTDataModule(**c["data"], seed=c["seed"]), out_dir)


def lenet_train(cfg: DictConfig) -> float:
    """What ``lenet-train`` runs: a learning-rate search, or training; returns the number a
    sweeper optimises (the suggested rate, or the best validation accuracy)."""
    return find_learning_rate(cfg) if cfg.tune == "lr_find" else train(cfg)["val/acc_best"]


main = entry_point("train", lenet_train)

if __name__ == "__main__":
    main()
