"""Checkpoints: which file ``ckpt_path`` means (``latest`` included), reading one safely, and
the network inside it. Plain torch, no Lightning, so ``lenet-predict`` starts fast. Read with
``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused.

Every checkpoint carries its digest, as MNIST's files are checked against theirs: the sha256 of
all it holds (``sealed``), written into it when saved (the Trainer's checkpoint IO, ``trainer.py``)
and checked whenever it is read (``verified``): a file changed on disk since, by a bad disk or a
bad copy, is refused in one line naming it, and ``latest`` passes it over. A checkpoint written
before checkpoints carried a digest reads as before, unchecked.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lenet_lightning.config import (
    OPTIMISER,
    RECORDED,
    WEIGHTS,
    ModelConfig,
    TrainConfig,
    kinds_of_state,
    learned,
    roles,
)
from lenet_lightning.errors import ConfigError
from lenet_lightning.model import LeNet5
from lenet_lightning.run_folder import LAST_CHECKPOINT, RunFolder

log = logging.getLogger(__name__)
DIGEST = "lenet_lightning_sha256"  # a checkpoint's own entry: the sha256 of all the others


def digest(ckpt: Mapping[str, Any]) -> str:
    """The sha256 of what a checkpoint holds, but its digest: every key and plain value, and
    every tensor's dtype, shape and bytes, in order; the same before saving and after loading."""
    found = hashlib.sha256()
    _feed(found, {k: v for k, v in ckpt.items() if k != DIGEST})
    return found.hexdigest()


def _feed(found: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        found.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}\0".encode())
        found.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        found.update(f"map {len(value)}\0".encode())
        for key, item in value.items():
            _feed(found, key)
            _feed(found, item)
    elif isinstance(value, (list, tuple)):
        found.update(f"list {len(value)}\0".encode())
        for item in value:
            _feed(found, item)
    else:
        found.update(f"{type(value).__name__} {value!r}\0".encode())


def sealed(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with its digest, as it is written."""
    return {**ckpt, DIGEST: digest(ckpt)}


def verified(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """The checkpoint read from ``path``, its digest checked and taken out; one without a digest
    (written before checkpoints had one) as it is. Refuse a damaged one, naming the file."""
    if not isinstance(ckpt, dict):
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a checkpoint: it holds a {type(ckpt).__name__}"
        )
    written = ckpt.pop(DIGEST, None)
    if written is not None and written != digest(ckpt):
        raise ConfigError(
            f"checkpoint {str(path)!r} is damaged: what it holds does not match the sha256 "
            "written into it when it was saved (it changed on disk since); use another "
            "checkpoint, or train again"
        )
    return ckpt


def find_checkpoint(value: str, log_dir: str | Path, pattern: str) -> Path:
    """A checkpoint path as given, or for ``latest`` the newest file matching ``pattern`` that
    reads whole (each one that does not is named as passed over)."""
    if value != "latest":
        path = Path(value).expanduser()
        if path.is_dir():
            raise ConfigError(f"ckpt_path={value!r} is a folder: give a .ckpt file, or latest")
        if not path.is_file():
            raise ConfigError(f"ckpt_path={value!r}: no such file")
        return path
    found = newest_first(log_dir, pattern)
    where = Path(log_dir).resolve()
    if not found:
        raise ConfigError(f"ckpt_path=latest: no {pattern} below {where}")
    for path in found:
        try:
            read_checkpoint(path)
        except ConfigError as err:
            log.warning("ckpt_path=latest: skipping %s: %s", path, err)
            continue
        log.info("ckpt_path=latest: using %s", path)
        return path
    raise ConfigError(f"ckpt_path=latest: none of the {len(found)} {pattern} below {where} reads")


def newest_first(log_dir: str | Path, pattern: str) -> list[Path]:
    return sorted(Path(log_dir).rglob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


def model_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model settings a checkpoint was trained with; a setting added since it was written
    (``model.dropout``, say) takes its default, which is how that checkpoint's model worked."""
    return {**asdict(ModelConfig()), **ckpt.get("hyper_parameters", {})}


def trained_with(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The settings that change what is learned (``config.learned``) that a checkpoint was
    trained with: as it recorded them, or, for one written before it did, as its model's and
    data's hyperparameters say. A setting it does not name takes its default, which is how that
    checkpoint's run worked; but the weights' average of one that did not record its decay
    (whose ``state_dict`` is the average, the raw weights beside it) is not taken for none."""
    data = dict(ckpt.get("datamodule_hyper_parameters", {}))
    then = learned(TrainConfig())
    then |= {f"model.{k}": v for k, v in model_settings(ckpt).items()}
    then |= {f"data.{k}": v for k, v in data.items() if k != "seed"} | {"seed": data.get("seed")}
    if "current_model_state" in ckpt:
        then["callbacks.ema_decay"] = "an unrecorded decay"
    return then | ckpt.get(RECORDED, {})


def differences(ckpt: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings of ``cfg`` that change what is learned and whose checkpoint value differs:
    ``{key: (in the checkpoint, now)}``."""
    then = trained_with(ckpt)
    return {k: (then.get(k), v) for k, v in learned(cfg).items() if then.get(k) != v}


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
        if mismatch := {k: v for k, v in differ.items() if k in kinds_of_state()}:
            raise ConfigError(
                f"ckpt_path={value!r}: {path} was trained with another optimiser or schedule: "
                f"{shown(mismatch)}; a resumed run carries on the state of the checkpoint's, "
                "which the other cannot take: resume with the checkpoint's, or train afresh"
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
    log.info("%s: carrying the run on from %s, %s", why, path, saved_when(ckpt))
    return path


def saved_when(ckpt: dict[str, Any]) -> str:
    """When in its run a checkpoint was saved, by the epochs it had finished (each one's row of
    ``history`` is recorded before any checkpoint of it is written)."""
    done = len(ckpt.get("history", []))
    return f"saved at the end of epoch {done}" if done else "saved before its first epoch"


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
    """A checkpoint's content as plain data, its digest checked; refuse one that holds anything
    else, or whose content changed since it was written."""
    with reading(path):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return verified(ckpt, path)


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
