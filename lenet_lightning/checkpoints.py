"""Checkpoints: which file ``ckpt_path`` means (``latest`` included), reading one safely, and
the network inside it. Plain torch, no Lightning, so ``lenet-predict`` starts fast.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only, so
a file crafted to run code when unpickled is refused before any of it runs.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lenet_lightning.config import ConfigError

log = logging.getLogger(__name__)


def find_checkpoint(value: str, log_dir: str | Path, pattern: str) -> Path:
    """A checkpoint path as given, or for ``latest`` the newest file matching ``pattern``."""
    if value != "latest":
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={value!r}: no such file")
        return path
    found = sorted(Path(log_dir).rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"ckpt_path=latest: no {pattern} below {Path(log_dir).resolve()}")
    log.info("ckpt_path=latest: using %s", found[-1])
    return found[-1]


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn what goes wrong while a checkpoint is read into a one-line ConfigError."""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"ckpt_path={str(path)!r} refused: it holds objects other than tensors and plain "
            "values, which could run code when loaded (only weights_only checkpoints are read)"
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a readable checkpoint: {err}") from err


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's content as plain data; refuse one that holds anything else."""
    import torch

    with reading(path):
        return torch.load(path, map_location="cpu", weights_only=True)


def network_from(ckpt: dict[str, Any]) -> Any:
    """The trained ``LeNet5`` a LitLeNet5 checkpoint holds, in eval mode."""
    from lenet_lightning.model import LeNet5

    network = LeNet5.from_settings(ckpt["hyper_parameters"])
    prefix = "model."  # LitLeNet5 keeps the network as self.model
    weights = {
        k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)
    }
    network.load_state_dict(weights)
    return network.eval()
