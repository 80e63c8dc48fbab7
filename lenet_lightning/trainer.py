"""The Lightning ``Trainer`` a command runs: the config's ``trainer`` settings and the command's
own, with what Lightning refuses turned into one line and its messages kept to those that
concern the user; and the C library told to keep the memory a training step frees."""

from __future__ import annotations

import ctypes
import logging
import warnings
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lenet_lightning.errors import ConfigError


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
    # A deprecation inside Lightning 2.6 itself (with recent torch):
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Lightning's hint that `srun` exists, on a machine where this run was not started by it:
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
    # A run's folder is its own (cli.CheckConfig): checkpoints there are its own, or carried on.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Lightning's advice on step logging: our metrics are logged once per epoch.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")


def keep_freed_memory() -> int:
    """Tell glibc's malloc to keep the memory that torch frees, for its next allocation; return
    the size from which it still maps memory afresh (0: not glibc, nothing changed).

    A training step frees and takes back the same large buffers. By default glibc returns big
    ones to the system and maps them again, one page fault each 4 KiB, and how much it keeps
    depends on the process's history: a fresh process trained ``experiment=best`` 25-40% slower
    than the later jobs of the same sweep, with 9 to 13 times the page faults it takes with
    this. 32 MiB is the most glibc's own adaptive threshold reaches. (The environment variable
    ``GLIBC_TUNABLES`` does the same before a process starts.)
    """
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
    if peer_timeout and hasattr(trainer.strategy, "_timeout"):  # DDP's wait for its peers
        trainer.strategy._timeout = timedelta(seconds=peer_timeout)
    return trainer
