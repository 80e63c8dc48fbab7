"""lenet-train: ``train(cfg)`` fits LeNet-5 as the config says, tests its best checkpoint and
returns the metrics; ``lenet-train tune=lr_find`` searches a learning rate instead.

A run is finished when it is tested. Carried on (``resume=true``, a restarted SLURM job), a run
whose fitting had ended but that was stopped before its test runs only the test, of its best
checkpoint, as a run does at its end.

``main`` is the thin Hydra entry point (``lenet_lightning/cli.py``); tests, the notebook and
the benchmarks call ``train`` with settings from ``compose_config``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lenet_lightning.checkpoints import own_checkpoint, resume_checkpoint
from lenet_lightning.cli import entry_point
from lenet_lightning.config import TrainConfig
from lenet_lightning.run_folder import MID_EPOCH_CHECKPOINTS, RunFolder, RunRecord
from lenet_lightning.slurm import restart_count

if TYPE_CHECKING:  # Lightning takes seconds to import: only a run that passed the checks pays
    import lightning as L

log = logging.getLogger(__name__)


def train(
    cfg: TrainConfig,
    callbacks: Sequence[L.Callback] = (),
    datamodule: L.LightningDataModule | None = None,
) -> dict[str, float]:
    """Train and test one model as ``cfg`` says; return the test metrics and ``val/acc_best``.

    ``callbacks`` join the run's own; ``datamodule`` replaces the one ``cfg.data`` describes.
    The benchmarks use both to time this very path, and to feed it another data pipeline.
    """
    run = RunFolder(Path(cfg.paths.output_dir))
    ckpt_path = cfg.ckpt_path and resume_checkpoint(cfg.ckpt_path, cfg.paths.log_dir, cfg)
    fitted = None  # the record of this run's fit, where it ended but the test did not run
    if not ckpt_path and (why := carry_on_reason(cfg)):
        ckpt_path = own_checkpoint(run, cfg, why)
        for mid_epoch in run.path.glob(MID_EPOCH_CHECKPOINTS):  # an epoch boundary is where
            mid_epoch.unlink()  # a resume is exact
        fitted = fit_that_ended(run, cfg) if ckpt_path else None
    from lenet_lightning.callbacks import AtomicCheckpointIO, run_callbacks
    from lenet_lightning.module import MONITOR
    from lenet_lightning.trainer import build, make_logger

    logger = make_logger(cfg.logger, run.path)
    trainer, module, data = build(
        cfg,
        logger=logger,
        callbacks=[*run_callbacks(cfg, run, logger), *callbacks],
        plugins=[AtomicCheckpointIO()],
    )
    datamodule = datamodule or data

    if fitted:  # stopped between the end of fitting and the end of testing: the test alone
        tested = tested_checkpoint(run, fitted, ckpt_path)
        log.info("Training had ended (%d epochs): testing %s", fitted.epochs, tested)
    else:  # no best checkpoint after fast_dev_run: the model as it is is tested
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        tested = trainer.checkpoint_callback.best_model_path or None
    (test,) = trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=True)
    if fitted:
        best_val = fitted.best.get(MONITOR)
        best_val = best_val if isinstance(best_val, (int, float)) else math.nan
    else:
        best = trainer.checkpoint_callback
        best_val = best.best_model_score or trainer.callback_metrics.get(MONITOR, math.nan)
    if trainer.is_global_zero:
        log.info("test/acc=%.4f  (%s)", test["test/acc"], run.path)
    return {**test, f"{MONITOR}_best": float(best_val)}


def fit_that_ended(run: RunFolder, cfg: TrainConfig) -> RunRecord | None:
    """The record of the run's fit where it ran to its end (all ``trainer.max_epochs``, or early
    stopping) and the run was stopped before its test; None where epochs are left to train."""
    try:
        record = run.record()
    except (OSError, ValueError, TypeError):  # cut short: train on from last.ckpt
        return None
    if record is None or not record.fitted or record.tested:
        return None
    ended = record.epochs >= cfg.trainer.max_epochs or cfg.callbacks.early_stopping_patience
    return record if ended else None


def tested_checkpoint(run: RunFolder, fitted: RunRecord, last: Path) -> Path:
    """The checkpoint a run whose fit ended tests: its best (found in the run's own folder,
    wherever that lies now), or its last where it had no best."""
    best = fitted.best_checkpoint and run.checkpoints / Path(fitted.best_checkpoint).name
    return best if best and best.is_file() else last


def carry_on_reason(cfg: TrainConfig) -> str | None:
    """Why this run carries on from its own folder's last.ckpt, if it does."""
    if cfg.resume:
        return "resume=true"
    return f"SLURM restarted this job (restart {restart_count()})" if restart_count() else None


def lenet_train(cfg: TrainConfig) -> float:
    """What ``lenet-train`` runs: a learning-rate search, or training; returns the number a
    sweeper optimises (the suggested rate, or the best validation accuracy)."""
    if cfg.tune == "lr_find":
        from lenet_lightning.tune import find_learning_rate

        return find_learning_rate(cfg)
    return train(cfg)["val/acc_best"]


main = entry_point("train", lenet_train)

if __name__ == "__main__":
    main()
