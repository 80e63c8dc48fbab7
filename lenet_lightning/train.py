"""lenet-train: ``train(cfg)`` runs one job (fit, then test the best checkpoint).

``main`` is a thin ``@hydra.main`` wrapper; tests call ``train`` with a config composed by Hydra.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.config import (
    CONFIG_PATH,
    register,
    reported_errors,
    resolve_checkpoint,
    validate,
)
from lenet_lightning.report import write_run_report

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)


def make_logger(kind: str, out_dir: Path) -> Logger | bool:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if kind == "tensorboard":
        return TensorBoardLogger(out_dir, name="tensorboard", version="", default_hp_metric=False)
    if kind == "csv":
        return CSVLogger(out_dir, name="csv", version="")
    return False


def train(
    cfg: DictConfig,
    callbacks: Sequence[L.Callback] = (),
    datamodule: L.LightningDataModule | None = None,
) -> float:
    """Train and test one model as ``cfg`` says; return the best validation accuracy.

    ``callbacks`` join the run's own; ``datamodule`` replaces the one ``cfg.data`` describes.
    The benchmarks use both to time this very path, and to feed it another data pipeline.
    """
    # torch and Lightning take seconds to import: only a run that passed validation pays for it.
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from lenet_lightning.callbacks import (
        EpochHistory,
        ResumableCheckpoint,
        ResumeAfterInterrupt,
        TensorBoardPictures,
    )
    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.model import count_parameters
    from lenet_lightning.module import MONITOR, LitLeNet5

    if logging.getLogger().hasHandlers():  # Hydra's handlers print and file Lightning's messages
        logging.getLogger("lightning").handlers.clear()
    # A deprecation inside Lightning 2.6 itself, printed on every run with recent torch:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    validate(cfg)
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    trainer_args = {k: v for k, v in c["trainer"].items() if v is not None}
    out_dir = Path(c["paths"]["output_dir"])
    L.seed_everything(c["seed"], workers=True, verbose=False)

    if datamodule is None:
        datamodule = MNISTDataModule(**c["data"], seed=c["seed"])
    module = LitLeNet5(**c["model"])
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
    if c["callbacks"]["early_stopping_patience"]:
        patience = c["callbacks"]["early_stopping_patience"]
        run_callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    logger = make_logger(c["logger"]["kind"], out_dir)
    if logger and c["model"]["scheduler"] != "none":
        run_callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        **trainer_args,
        default_root_dir=out_dir,
        logger=logger,
        callbacks=[*run_callbacks, *callbacks],
    )
    ckpt_path = c["ckpt_path"] and resolve_checkpoint(
        c["ckpt_path"], c["paths"]["log_dir"], "last.ckpt"
    )
    log.info("LeNet-5 with %d parameters; writing to %s", count_parameters(module), out_dir)

    start = time.perf_counter()
    with sigterm_as_interrupt():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    epochs = list(history.epochs)  # testing from a checkpoint restores the callbacks' state too
    best_path = best.best_model_path or None  # none after fast_dev_run: test as trained
    (test,) = trainer.test(module, datamodule=datamodule, ckpt_path=best_path)
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
            fit_seconds=round(fit_seconds, 2),
            wall_seconds=round(time.perf_counter() - start, 2),
            parameters=count_parameters(module),
            best_checkpoint=best_path,
            last_checkpoint=last.best_model_path or None,
            device=str(trainer.strategy.root_device),
            config=c,
        )
        log.info("test/acc=%.4f  (%s)", test["test/acc"], out_dir)
    return best_val


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) is handled like Ctrl-C: Lightning stops cleanly."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def flat(d: dict, prefix: str) -> dict:
    """One level of keys with a prefix; lists become text (TensorBoard takes scalars and text)."""
    return {prefix + k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    with reported_errors("lenet-train"):
        return train(cfg)


def main() -> None:
    """``lenet-train`` (and ``python -m lenet_lightning.train``)."""
    register()
    with reported_errors("lenet-train"):
        _hydra_main()


if __name__ == "__main__":
    main()
