"""The Lightning ``Trainer`` a command runs (its refusals as one line, its messages kept to those
that concern the user, its checkpoints sealed with their digest and checked when read), its
logger, the model and data beside it (``build``), the batches of a training epoch, and the C
library told to keep the memory a training step frees."""

from __future__ import annotations

import ctypes
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lenet_lightning.checkpoints import reading, sealed, verified
from lenet_lightning.config import learned
from lenet_lightning.data import MNISTDataModule
from lenet_lightning.errors import ConfigError, Refused
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
        r"Be aware that when using `ckpt_path`.*\['WeightAverage'\]",  # resuming says the decay
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


class SealedCheckpointIO(CheckpointIO):
    """Every checkpoint the Trainer writes, written by another ``CheckpointIO`` (torch's, or the
    one given) with its digest (``checkpoints.sealed``); every one it reads, checked against it
    (``checkpoints.verified``): a resume, the best checkpoint tested after fitting, a SLURM job's
    ``hpc_ckpt`` that Lightning finds by itself. A damaged file is one line naming it."""

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        self.inner.save_checkpoint(sealed(checkpoint), path, storage_options=storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        where = {} if map_location is None else {"map_location": map_location}
        with reading(Path(path)):
            checkpoint = self.inner.load_checkpoint(path, weights_only=weights_only, **where)
        return verified(checkpoint, path)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def sealed_plugins(plugins: Any) -> list[Any]:
    """The Trainer's ``plugins``, its checkpoint IO (torch's where none is given) sealed."""
    given = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins] if plugins else []
    if not any(isinstance(p, CheckpointIO) for p in given):
        given.append(TorchCheckpointIO())
    return [SealedCheckpointIO(p) if isinstance(p, CheckpointIO) else p for p in given]


class StartLines:
    """Lightning's lines (``GPU available: ...``) held back from the output's handlers from the
    Trainer's start until the run is past its start checks (the data found, what only the data
    can check): a refusal found there is then the one line it is, and otherwise they follow, in
    order. One run holds them at a time; a new Trainer shows what an earlier one still held."""

    current: ClassVar[StartLines | None] = None

    def __init__(self) -> None:
        if StartLines.current:
            StartLines.current.release()
        StartLines.current = self
        self.held: list[tuple[logging.Handler, logging.LogRecord]] = []
        loggers = [logging.getLogger(name) for name in ("", "lightning", "lightning.pytorch")]
        handlers = dict.fromkeys(h for logger in loggers for h in logger.handlers)  # Lightning's
        self.holders = {h: self.holder(h) for h in handlers}  # own where the root had none
        for handler, holder in self.holders.items():
            handler.addFilter(holder)

    def holder(self, handler: logging.Handler) -> Callable[[logging.LogRecord], bool]:
        def hold(record: logging.LogRecord) -> bool:
            if record.levelno < logging.WARNING and record.name.startswith("lightning."):
                self.held.append((handler, record))
                return False
            return True

        return hold

    def release(self, show: bool = True) -> None:
        """Stop holding; show what was held (``show``), or drop it."""
        for handler, holder in self.holders.items():
            handler.removeFilter(holder)
        held, self.held, self.holders = self.held, [], {}
        if StartLines.current is self:
            StartLines.current = None
        for handler, record in held if show else ():
            handler.handle(record)


class ShowStartLines(L.Callback):
    """Shows the Trainer's held ``StartLines`` once a stage starts (its setup, the data's and
    ``CheckAgainstTheData``'s checks passed); drops them for a refusal found before."""

    def __init__(self, lines: StartLines) -> None:
        self.lines = lines

    def show(self, *args: Any) -> None:
        self.lines.release()

    on_fit_start = on_validation_start = on_test_start = on_predict_start = show

    def on_exception(self, trainer: L.Trainer, module: Any, exception: BaseException) -> None:
        self.lines.release(show=not isinstance(exception, Refused))


def trainer_from(settings: dict[str, Any], **ours: Any) -> L.Trainer:
    """The Trainer of the config's ``trainer`` settings (null: Lightning's default) and ours.
    What Lightning refuses becomes a ConfigError, so one line. Its checkpoint IO (torch's, or
    one in ``plugins``) seals each checkpoint it writes and checks each one it reads; Lightning's
    lines wait until the run is past its start checks (not where a strategy spawns processes,
    which run the stages themselves)."""
    quiet_lightning()
    keep_freed_memory()
    settings = {k: v for k, v in settings.items() if v is not None}
    peer_timeout = settings.pop("peer_timeout_s", None)
    ours["plugins"] = sealed_plugins(ours.get("plugins"))
    callbacks = ours.get("callbacks") or []
    callbacks = [callbacks] if isinstance(callbacks, L.Callback) else list(callbacks)
    lines = StartLines()
    if "spawn" in str(settings.get("strategy", "")):
        lines.release()
    try:
        trainer = L.Trainer(**settings, **ours | {"callbacks": [ShowStartLines(lines), *callbacks]})
    except (MisconfigurationException, ValueError, TypeError) as err:
        lines.release(show=False)
        given = ", ".join(f"{k}={settings[k]!r}" for k in ("accelerator", "devices", "precision"))
        raise ConfigError(f"Lightning refused the trainer settings ({given}): {err}") from err
    except BaseException:
        lines.release()
        raise
    if trainer.world_size == 1:  # LOCAL_RANK, RANK... left in the environment make no rank:
        rank_zero_only.rank = 0  # Lightning read them at import, and resets them only for DDP
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
    module = LitLeNet5(**vars(cfg.model))
    module.run_settings = learned(cfg)  # recorded in each checkpoint, for resuming to compare
    return trainer, module, MNISTDataModule(**vars(cfg.data), seed=cfg.seed)
