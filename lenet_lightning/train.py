"""lenet-train: ``train(cfg)`` runs one job: fit, then test the best checkpoint (or, with
``tune=lr_find``, search a learning rate instead).

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

from lenet_lightning.checkpoints import BEST_NAME, resume_checkpoint
from lenet_lightning.cli import entry_point, trainer_from

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    callbacks: Sequence[L.Callback] = (),
    datamodule: L.LightningDataModule | None = None,
) -> float:
    """Train and test one model as ``cfg`` says; return the best validation accuracy (with
    ``tune=lr_find``: search a learning rate instead, and return the suggested one).

    ``callbacks`` join the run's own; ``datamodule`` replaces the one ``cfg.data`` describes.
    The benchmarks use both to time this very path, and to feed it another data pipeline.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = c["ckpt_path"] and resume_checkpoint(c["ckpt_path"], c["paths"]["log_dir"], c)
    # Lightning takes seconds to import: only a run that passed the checks pays for it.
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lenet_lightning.callbacks import (
        Diverged,
        LastCheckpoint,
        ResumableCheckpoint,
        ResumeAfterInterrupt,
        TensorBoardPictures,
    )
    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.model import count_parameters
    from lenet_lightning.module import MONITOR, LitLeNet5
    from lenet_lightning.report import plot_curves, write_run_report

    out_dir = Path(c["paths"]["output_dir"])
    # Every epoch: the checkpoint to resume from, and the history of every epoch's metrics.
    last = LastCheckpoint(out_dir / "checkpoints")
    best = ResumableCheckpoint(
        last.dirpath,
        BEST_NAME,
        monitor=MONITOR,
        mode="max",
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    interrupt = ResumeAfterInterrupt(Path(last.format_checkpoint_name({})))
    run_callbacks = [best, last, interrupt, TensorBoardPictures()]  # last.ckpt: best's state too
    if patience := c["callbacks"]["early_stopping_patience"]:
        run_callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    logger = {
        "tensorboard": lambda: TensorBoardLogger(
            out_dir, name="tensorboard", version="", default_hp_metric=False
        ),
        "csv": lambda: CSVLogger(out_dir, name="csv", version=""),
        "none": lambda: False,
    }["none" if c["tune"] else c["logger"]]()
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
    if c["tune"] == "lr_find":
        from lenet_lightning.tune import find_lr

        return find_lr(trainer, module, datamodule, out_dir)
    facts = {"parameters": count_parameters(module), "device": str(trainer.strategy.root_device)}
    log.info("LeNet-5 with %d parameters; writing to %s", facts["parameters"], out_dir)

    def report(epochs: list[dict], test: dict[str, float], **more: object) -> None:
        if trainer.is_global_zero:
            write_run_report(out_dir, epochs, test, MONITOR, **facts, **more, config=c)

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Diverged as err:  # written: the good epochs; kept: the last good checkpoint
        report(last.epochs, {}, stopped=str(err))
        raise Diverged(f"{err}. The last good checkpoint: {interrupt.last_checkpoint}") from None
    except SIGTERMException:  # Lightning stopped cleanly; a stopped job exits non-zero
        sys.exit(143)
    epochs = list(last.epochs)  # testing from a checkpoint restores the callbacks' state too
    fitted = {
        "fit_seconds": round(time.perf_counter() - start, 2),
        "best_checkpoint": best.best_model_path or None,  # none after fast_dev_run
        "last_checkpoint": last.best_model_path or None,
    }
    report(epochs, {}, **fitted)  # what is known if testing is interrupted
    if epochs and trainer.is_global_zero:
        plot_curves(epochs, out_dir / "curves.png")
    (test,) = trainer.test(
        module, datamodule=datamodule, ckpt_path=fitted["best_checkpoint"], weights_only=True
    )
    best_val = float(best.best_model_score or trainer.callback_metrics.get(MONITOR, 0.0))
    if isinstance(logger, TensorBoardLogger):  # the HParams tab: settings beside their results
        hparams = {**flat(c["model"], "model."), **flat(c["data"], "data."), "seed": c["seed"]}
        results = {"hparams/val_acc_best": best_val, "hparams/test_acc": test["test/acc"]}
        logger.log_hyperparams(hparams, results)
    wall = round(time.perf_counter() - start, 2)
    confusion = module.confusion.tolist()  # true digit down, predicted across
    report(epochs, test, **fitted, wall_seconds=wall, confusion_matrix=confusion)
    if trainer.is_global_zero:
        log.info("test/acc=%.4f  (%s)", test["test/acc"], out_dir)
    return best_val


def flat(d: dict, prefix: str) -> dict:
    """One level of keys with a prefix; lists become text (TensorBoard takes scalars and text)."""
    return {prefix + k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


main = entry_point("train", train)

if __name__ == "__main__":
    main()
