"""Checkpoints: which file ``ckpt_path`` means (``latest`` included), reading one safely, and
the network inside it. Plain torch, no Lightning, so ``lenet-predict`` starts fast. Read with
``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lenet_lightning.config import MACHINE, OPTIMISER, WEIGHTS, ModelConfig, TrainConfig, roles
from lenet_lightning.errors import ConfigError
from lenet_lightning.model import LeNet5
from lenet_lightning.run_folder import LAST_CHECKPOINT, RunFolder

log = logging.getLogger(__name__)


def find_checkpoint(value: str, log_dir: str | Path, pattern: str) -> Path:
    """A checkpoint path as given, or for ``latest`` the newest file matching ``pattern``."""
    if value != "latest":
        path = Path(value).expanduser()
        if path.is_dir():
            raise ConfigError(f"ckpt_path={value!r} is a folder: give a .ckpt file, or latest")
        if not path.is_file():
            raise ConfigError(f"ckpt_path={value!r}: no such file")
        return path
    found = newest_first(log_dir, pattern)
    if not found:
        raise ConfigError(f"ckpt_path=latest: no {pattern} below {Path(log_dir).resolve()}")
    log.info("ckpt_path=latest: using %s", found[0])
    return found[0]


def newest_first(log_dir: str | Path, pattern: str) -> list[Path]:
    return sorted(Path(log_dir).rglob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


def model_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model settings a checkpoint was trained with; a setting added since it was written
    (``model.dropout``, say) takes its default, which is how that checkpoint's model worked."""
    return {**asdict(ModelConfig()), **ckpt.get("hyper_parameters", {})}


def differences(ckpt: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings of ``cfg`` that change what is learned and whose checkpoint value differs:
    ``{key: (in the checkpoint, now)}``."""
    data = dict(ckpt.get("datamodule_hyper_parameters", {}))
    then = {f"model.{k}": v for k, v in model_settings(ckpt).items()}
    then |= {f"data.{k}": v for k, v in data.items() if k != "seed"} | {"seed": data.get("seed")}
    now = {f"model.{k}": v for k, v in vars(cfg.model).items()}
    now |= {f"data.{k}": v for k, v in vars(cfg.data).items()} | {"seed": cfg.seed}
    learned = {k for k, role in roles().items() if role != MACHINE}
    return {k: (then.get(k), v) for k, v in now.items() if k in learned and then.get(k) != v}


def resume_checkpoint(value: str, log_dir: str | Path, cfg: TrainConfig) -> Path:
    """The checkpoint to resume ``cfg``'s run from. A file given by name: another network is
    refused, other settings that differ are reported. ``latest``: the newest ``last.ckpt`` below
    ``log_dir`` trained with exactly these settings; one that cannot be read is skipped."""
    if value != "latest":
        path = find_checkpoint(value, log_dir, LAST_CHECKPOINT)
        differ = differences(read_checkpoint(path), cfg)
        if mismatch := {k: v for k, v in differ.items() if roles()[k] == WEIGHTS}:
            raise ConfigError(
                f"ckpt_path={value!r}: {path} holds another network: {shown(mismatch)}"
            )
        for key, (then, now) in differ.items():
            log.warning("Resuming with %s=%r; the checkpoint was trained with %r", key, now, then)
        if any(roles()[key] == OPTIMISER for key in differ):
            log.warning(
                "The optimiser and its schedule resume as the checkpoint left them: its "
                "learning rate, weight decay and schedule hold, whatever these settings say"
            )
        log.info("Resuming from %s", path)
        return path
    paths = newest_first(log_dir, LAST_CHECKPOINT)
    newest_other = None
    for path in paths:
        try:
            differ = differences(read_checkpoint(path), cfg)
        except ConfigError as err:
            log.warning("ckpt_path=latest: skipping %s: %s", path, err)
            continue
        if not differ:
            log.info("Resuming from %s (ckpt_path=latest)", path)
            return path
        newest_other = newest_other or f"{path} differs in {shown(differ)}"
    where = Path(log_dir).resolve()
    if not paths:
        raise ConfigError(f"ckpt_path=latest: no {LAST_CHECKPOINT} below {where}")
    none_of = f"ckpt_path=latest: none of the {len(paths)} {LAST_CHECKPOINT} below {where}"
    if not newest_other:
        raise ConfigError(f"{none_of} can be read")
    raise ConfigError(
        f"{none_of} was trained with these settings (give the file as ckpt_path=... to resume it "
        f"anyway); the newest: {newest_other}"
    )


def own_checkpoint(run: RunFolder, cfg: TrainConfig, why: str) -> Path | None:
    """The run's own ``last.ckpt`` to carry it on from (``resume=true``, or a restarted SLURM
    job); None where the run had not started training; refused if trained with other settings."""
    path = run.last_checkpoint
    if not path.exists():
        return None
    ckpt = read_checkpoint(path)
    if differ := differences(ckpt, cfg):
        raise ConfigError(f"{why}: {path} belongs to another run: {shown(differ)}")
    log.info("%s: carrying the run on from %s (epoch %d)", why, path, ckpt.get("epoch", -1) + 1)
    return path


def shown(differ: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}={then!r} (this run: {now!r})" for k, (then, now) in differ.items())


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn what goes wrong while a checkpoint is read into a one-line ConfigError."""
    unreadable = f"ckpt_path={str(path)!r} is not a readable checkpoint"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ConfigError(f"{unreadable} (empty, cut short, or another kind of file)")
    try:
        yield
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"ckpt_path={str(path)!r} refused: it holds objects other than tensors and plain "
            "values, which could run code when loaded (only weights_only checkpoints are read)"
        ) from err
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"{unreadable}: {str(err) or type(err).__name__}") from err


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's content as plain data; refuse one that holds anything else."""
    with reading(path):
        return torch.load(path, map_location="cpu", weights_only=True)


def trained_network(path: Path) -> tuple[LeNet5, bool]:
    """The trained ``LeNet5`` in a LitLeNet5 checkpoint, in eval mode, and whether its run
    standardised the pixels (``data.normalize``): what ``lenet-predict`` and the demo need."""
    ckpt = read_checkpoint(path)
    network = LeNet5.from_settings(model_settings(ckpt))
    prefix = "model."  # LitLeNet5 keeps the network as self.model
    state = ckpt.get("state_dict", {})
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"the checkpoint does not hold a LeNet5 of its settings: {err}") from err
    normalize = ckpt.get("datamodule_hyper_parameters", {}).get("normalize", True)
    return network.eval(), normalize
