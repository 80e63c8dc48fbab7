"""lenet-train: ``train(cfg)`` runs one job: fit, then test the best checkpoint.

``main`` is the thin Hydra entry point (``lenet_lightning/cli.py``); tests, the notebook and
the benchmarks call ``train`` with a config from ``compose_config``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from lenet_lightning.checkpoints import find_checkpoint
from lenet_lightning.cli import entry_point, trainer_from
from lenet_lightning.report import write_run_report

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    callbacks: Sequence[L.Callback] = (),
    datamodule: L.LightningDataModule | None = None,
) -> float:
    """Train and test one model as ``cfg`` says; return the best validation accuracy.

    ``callbacks`` join the run's own; ``datamodule`` replaces the one ``cfg.data`` describes.
    The benchmarks use both to time this very path, and to feed it another data pipeline.
    """
    # torch and Lightning take seconds to import: only a run that passed the checks pays for it.
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lenet_lightning.callbacks import (
        EpochHistory,
        ResumableCheckpoint,
        ResumeAfterInterrupt,
        TensorBoardPictures,
    )
    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.model import count_parameters
    from lenet_lightning.module import MONITOR, LitLeNet5

    c = OmegaConf.to_container(cfg, resolve=True)
    out_dir = Path(c["paths"]["output_dir"])
    ckpt_path = c["ckpt_path"] and find_checkpoint(
        c["ckpt_path"], c["paths"]["log_dir"], "last.ckpt"
    )
    history = EpochHistory()
    checkpoint_args = {"dirpath": out_dir / "checkpoints", "save_on_train_epoch_end": True}
    best = ResumableCheckpoint(
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=MONITOR,
        mode="max",
        **checkpoint_args,
    )
    # Every epoch (after EpochHistory has recorded it): the one to resume from.
    last = ResumableCheckpoint(filename="last", enable_version_counter=False, **checkpoint_args)
    interrupt = ResumeAfterInterrupt(Path(last.format_checkpoint_name({})))
    run_callbacks = [history, best, last, interrupt, TensorBoardPictures()]
    if patience := c["callbacks"]["early_stopping_patience"]:
        run_callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    logger = {
        "tensorboard": lambda: TensorBoardLogger(
            out_dir, name="tensorboard", version="", default_hp_metric=False
        ),
        "csv": lambda: CSVLogger(out_dir, name="csv", version=""),
        "none": lambda: False,
    }[c["logger"]["kind"]]()
    if logger and c["model"]["scheduler"] != "none":
        run_callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = trainer_from(
        c["trainer"],
        default_root_dir=out_dir,
        logger=logger,
        callbacks=[*run_callbacks, *callbacks],
    )
    L.seed_everything(c["seed"], workers=True, verbose=False)
    module = LitLeNet5(**c["model"])
    if datamodule is None:
        datamodule = MNISTDataModule(**c["data"], seed=c["seed"])
    log.info("LeNet-5 with %d parameters; writing to %s", count_parameters(module), out_dir)

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # Lightning stopped cleanly; a stopped job exits non-zero
        sys.exit(143)
    fit_seconds = time.perf_counter() - start
    epochs = list(history.epochs)  # testing from a checkpoint restores the callbacks' state too
    best_path = best.best_model_path or None  # none after fast_dev_run: test as trained
    (test,) = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=True)
    best_val = float(best.best_model_score or trainer.callback_metrics.get(MONITOR, 0.0))
    if isinstance(logger, TensorBoardLogger):  # the HParams tab: settings beside their results
        hparams = {**flat(c["model"], "model."), **flat(c["data"], "data."), "seed": c["seed"]}
        results = {"hparams/val_acc_best": best_val, "hparams/test_acc": test["test/acc"]}
        logger.log_hyperparams(hparams, results)
    if trainer.is_global_zero:
        write_run_report(
            out_dir,
            epochs,
            test,
            MONITOR,
            fit_seconds=round(fit_seconds, 2),
            wall_seconds=round(time.perf_counter() - start, 2),
            parameters=count_parameters(module),
            best_checkpoint=best_path,
            last_checkpoint=last.best_model_path or None,
            device=str(trainer.strategy.root_device),
            confusion_matrix=module.confusion.tolist(),  # true digit down, predicted across
            config=c,
        )
        log.info("test/acc=%.4f  (%s)", test["test/acc"], out_dir)
    return best_val


def flat(d: dict, prefix: str) -> dict:
    """One level of keys with a prefix; lists become text (TensorBoard takes scalars and text)."""
    return {prefix + k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


main = entry_point("train", train)

if __name__ == "__main__":
    main()
