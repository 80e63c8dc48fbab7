"""The Lightning ``Trainer`` a command runs (its refusals as one line, its messages kept to those
that concern the user), its logger, the model and data beside it (``build``), the batches of a
training epoch, and the C library told to keep the memory a training step frees."""

from __future__ import annotations

import ctypes
import logging
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lenet_lightning.data import MNISTDataModule
from lenet_lightning.errors import ConfigError
from lenet_lightning.module import LitLeNet5


def no_advertisement(record: logging.LogRecord) -> bool:
    """Not Lightning's tips, nor its note that our layer-by-layer summary replaces its own."""
    message = record.getMessage()
    return not message.startswith(("💡", "Trainer already configured with model summary"))


def quiet_lightning() -> None:
    """Keep Lightning's advertisements, and warnings that are not the user's to act on, off the
    run's output; let Hydra's handlers (console and the run's log) show the rest once."""
    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(no_advertisement)
    for message in (
        r".*isinstance\(treespec, LeafSpec\)",  # a deprecation inside Lightning, with recent torch
        r"The `srun` command is available on your system",  # this run was not started by srun
        r"Checkpoint directory .* exists and is not empty",  # the run's own (cli.CheckConfig)
        r".*smaller than the logging interval",  # our metrics are logged once per epoch
    ):
        warnings.filterwarnings("ignore", message=message)


def keep_freed_memory() -> int:
    """Tell glibc's malloc to keep the memory that torch frees, for its next allocation; return
    the size from which it still maps memory afresh (0: not glibc, nothing changed). A training
    step frees and takes back the same large buffers, which glibc would otherwise map afresh, a
    page fault each 4 KiB (docs/performance.md: "Freed memory kept"); 32 MiB is the most glibc's
    own adaptive threshold reaches."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return 0
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_trim_threshold, 1 << 30)  # keep up to 1 GiB free at the heap's top
    threshold = 32 << 20
    return threshold if mallopt(m_mmap_threshold, threshold) else 0


def trainer_from(settings: dict[str, Any], **ours: Any) -> L.Trainer:
    """The Trainer of the config's ``trainer`` settings (null: Lightning's default) and ours.
    What Lightning refuses becomes a ConfigError, so one line."""
    quiet_lightning()
    keep_freed_memory()
    settings = {k: v for k, v in settings.items() if v is not None}
    peer_timeout = settings.pop("peer_timeout_s", None)
    try:
        trainer = L.Trainer(**settings, **ours)
    except (MisconfigurationException, ValueError, TypeError) as err:
        given = ", ".join(f"{k}={settings[k]!r}" for k in ("accelerator", "devices", "precision"))
        raise ConfigError(f"Lightning refused the trainer settings ({given}): {err}") from err
    if peer_timeout and hasattr(trainer.strategy, "_timeout"):  # DDP's wait for its peers, also
        trainer.strategy._timeout = timedelta(seconds=peer_timeout)  # where Lightning chose DDP
    return trainer


def make_logger(kind: str, folder: Path) -> Any:
    """The run's Lightning logger: TensorBoard, CSV, or none (False)."""
    if kind == "tensorboard":
        return TensorBoardLogger(folder, name="tensorboard", version="", default_hp_metric=False)
    return CSVLogger(folder, name="csv", version="") if kind == "csv" else False


def training_batches(trainer: L.Trainer, datamodule: L.LightningDataModule) -> int:
    """The training batches of an epoch on one process, within ``trainer.limit_train_batches``
    (the datamodule set up)."""
    batches, limit = len(datamodule.train_dataloader()), trainer.limit_train_batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def build(cfg: Any, **trainer_args: Any) -> tuple[L.Trainer, LitLeNet5, MNISTDataModule]:
    """The Trainer, the model and the data that a ``TrainConfig`` describes, seeded as the
    run is: what training and the learning-rate finder both start from."""
    trainer = trainer_from(
        asdict(cfg.trainer), default_root_dir=cfg.paths.output_dir, **trainer_args
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return trainer, LitLeNet5(**vars(cfg.model)), MNISTDataModule(**vars(cfg.data), seed=cfg.seed)
