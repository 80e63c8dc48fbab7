"""The config schema: Hydra structured configs (types, allowed values, ranges), one check each.

The YAML files in ``conf/`` hold every default; these dataclasses hold only types and rules.
Hydra enforces types and enum values while it composes the config; ``validate`` adds unknown
keys (also those added with ``+key=``) and the range checks declared with ``rule(...)`` beside
each field. ``ValidateConfig`` runs it before Hydra writes a run folder.
"""

import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lenet_lightning.mnist_files import SOURCES, MNISTUnavailable

log = logging.getLogger(__name__)
CONFIG_MODULE = "lenet_lightning.conf"  # conf/, shipped inside the package
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # for @hydra.main


class ConfigError(ValueError):
    """A config value outside what is allowed; its message is one line naming key and value."""


# The choices the code builds (model.py, module.py; a test keeps them equal). Named here so
# that checking a config does not import torch.
Activation = Enum("Activation", {name: name for name in ("tanh", "relu")})
Pooling = Enum("Pooling", {name: name for name in ("avg", "max")})
CONV_SIZES = (5, 3)
Optimizer = Enum("Optimizer", {name: name for name in ("adam", "adamw")})
Scheduler = Enum("Scheduler", {name: name for name in ("none", "cosine", "onecycle")})
LoggerKind = Enum("LoggerKind", {name: name for name in ("tensorboard", "csv", "none")})
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32-true", "32", "64-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true")


def rule(check: Callable[[Any], bool], allowed: str) -> Any:
    """A mandatory field (its value comes from conf/) with a range check and its description."""
    return field(default=MISSING, metadata={"check": check, "allowed": allowed})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive() -> Any:
    return rule(lambda v: _finite(v) and v > 0, "a finite number > 0")


def non_negative() -> Any:
    return rule(lambda v: _finite(v) and v >= 0, "a finite number >= 0")


def positive_int() -> Any:
    return rule(lambda v: v >= 1, "an integer >= 1")


def share_of_epoch() -> Any:
    """Lightning's int-or-float settings: an int counts batches, a float is a share of them."""
    return rule(
        lambda v: (
            v is None
            or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            or (isinstance(v, float) and 0 < v <= 1)
        ),
        "null, a fraction above 0 up to 1.0, or a number of batches >= 1",
    )


@dataclass
class DataConfig:
    data_dir: str = MISSING
    batch_size: int = positive_int()
    eval_batch_size: int = positive_int()
    val_size: int = rule(lambda v: 0 <= v <= 59_999, "an integer from 0 to 59999")
    normalize: bool = MISSING
    split_seed: int = MISSING
    augment_degrees: float = non_negative()
    augment_translate: float = rule(lambda v: 0 <= v <= 0.5, "a fraction from 0 to 0.5")
    augment_scale: float = rule(lambda v: 0 <= v < 1, "a fraction from 0 up to 1")
    sources: list[str] = rule(lambda v: set(v) <= set(SOURCES), f"a list from {list(SOURCES)}")


@dataclass
class ModelConfig:
    activation: Activation = MISSING
    pooling: Pooling = MISSING
    conv_size: int = rule(lambda v: v in CONV_SIZES, f"one of {list(CONV_SIZES)}")
    batch_norm: bool = MISSING
    lr: float = positive()
    weight_decay: float = non_negative()
    optimizer: Optimizer = MISSING
    scheduler: Scheduler = MISSING
    label_smoothing: float = rule(lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
    channels_last: bool = MISSING


@dataclass
class TrainerConfig:
    accelerator: str = rule(lambda v: v in ACCELERATORS, f"one of {list(ACCELERATORS)}")
    devices: Any = MISSING
    strategy: str = MISSING
    num_nodes: int = positive_int()
    max_epochs: int = positive_int()
    precision: str = rule(lambda v: v in PRECISIONS, f"one of {list(PRECISIONS)}")
    deterministic: bool = MISSING
    fast_dev_run: Any = MISSING
    limit_train_batches: Any = share_of_epoch()  # Any: OmegaConf would turn 1 into 1.0
    limit_val_batches: Any = share_of_epoch()
    limit_test_batches: Any = share_of_epoch()
    val_check_interval: Any = share_of_epoch()
    log_every_n_steps: int = positive_int()
    enable_progress_bar: bool = MISSING


@dataclass
class LoggerConfig:
    kind: LoggerKind = MISSING


@dataclass
class CallbacksConfig:
    early_stopping_patience: int | None = rule(
        lambda v: v is None or v >= 1, "null (off) or an integer >= 1"
    )


@dataclass
class PathsConfig:
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    task_name: str = MISSING
    seed: int = MISSING
    ckpt_path: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvalConfig:
    task_name: str = MISSING
    ckpt_path: str = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class PredictConfig:
    task_name: str = MISSING
    ckpt_path: str = MISSING
    images: list[str] = rule(lambda v: len(v) > 0, "one or more image files or folders")
    top_k: int = rule(lambda v: 1 <= v <= 10, "an integer from 1 to 10")
    paths: PathsConfig = field(default_factory=PathsConfig)


SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "predict": PredictConfig}


def register() -> None:
    """Make the schemas known to Hydra as ``<app>_schema``, the first entry of each app's config."""
    for name, schema in SCHEMAS.items():
        ConfigStore.instance().store(name=f"{name}_schema", node=schema)


def compose_config(
    overrides: list[str], config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    """An app's config with overrides, composed as its CLI composes it (without running it)."""
    register()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name, overrides, return_hydra_config=return_hydra_config)


def validate(cfg: DictConfig, schema: type = TrainConfig, prefix: str = "") -> None:
    """Check every key against the schema and its rules; raise ConfigError on the first bad one."""
    known = [f.name for f in fields(schema)]
    unknown = [k for k in cfg if k not in known and not (prefix == "" and k == "hydra")]
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; allowed there: {', '.join(known)}")
    for f in fields(schema):
        key = prefix + f.name
        if is_dataclass(f.type):
            validate(cfg[f.name], f.type, key + ".")
        elif "check" in f.metadata and not f.metadata["check"](value := cfg[f.name]):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {f.metadata['allowed']}")
    accelerator = cfg.trainer.accelerator if "trainer" in known and prefix == "" else None
    if accelerator in ("gpu", "cuda") and not _cuda_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} needs a CUDA GPU and none is available: "
            "use trainer=cpu, or trainer=default to take a GPU only when there is one"
        )


def resolve_checkpoint(value: str, log_dir: str | Path, pattern: str) -> Path:
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


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


MIN_FREE_BYTES = 50 * 2**20  # room for a run's checkpoints and logs


def check_writable(folder: str | Path) -> None:
    """Refuse an output folder that could not be made or written, or whose disk is (nearly)
    full. Creates nothing: it looks at the nearest folder that exists."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = "Not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "Permission denied"
    if problem:
        raise ConfigError(f"paths.log_dir={str(folder)!r} cannot be written: {problem}")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"paths.log_dir={str(folder)!r} has only {free // 2**20} MiB free; a run needs "
            f"{MIN_FREE_BYTES // 2**20} MiB for its checkpoints and logs"
        )


def check_sweepable(config: DictConfig) -> None:
    """Refuse a sweep of DDP runs on the basic launcher: Lightning restarts each rank with
    ``hydra.run.dir``, which a sweep job does not use, so ranks would lose the job's folder."""
    strategy = str(config.trainer.strategy) if "trainer" in config else ""
    if strategy.startswith("ddp") and config.hydra.launcher._target_.endswith("BasicLauncher"):
        raise ConfigError(
            f"trainer.strategy={strategy!r} cannot run inside a sweep (-m) on the basic "
            "launcher: start each DDP run by itself, or sweep with hydra/launcher=slurm"
        )


class ValidateConfig(Callback):
    """Hydra callback: refuse a bad config before a run starts, in one line with exit code 2.

    Hydra turns exceptions raised in callbacks into warnings, so this exits by itself. A refused
    sweep job leaves no folder behind (Hydra makes a job's folder just before it starts).
    """

    def __init__(self, schema: str = "train") -> None:
        self.schema = SCHEMAS[schema]

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, sweep=True)  # the values common to every job

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, Path(config.hydra.runtime.output_dir))

    def _check(self, config: DictConfig, job_dir: Path | None = None, sweep: bool = False) -> None:
        try:
            validate(config, self.schema)
            check_writable(config.paths.log_dir)
            if sweep:
                check_sweepable(config)
        except ConfigError as err:
            if job_dir and {p.name for p in job_dir.iterdir()} <= {
                ".hydra",
                f"{config.hydra.job.name}.log",
            }:
                shutil.rmtree(job_dir)
            print(f"{config.hydra.help.app_name}: error: {err}", file=sys.stderr)
            sys.exit(2)


def one_line(err: BaseException) -> str:
    """A single-line account of a config or data error, naming the key and what is allowed."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        schema = cause.object_type if is_dataclass(cause.object_type) else None
        allowed = f"; allowed there: {', '.join(f.name for f in fields(schema))}" if schema else ""
        return f"unknown key '{cause.full_key}'{allowed}"
    lines = [line.strip() for line in str(err).split("Config search path:")[0].splitlines()]
    head, *rest = [line for line in lines if line] or [type(err).__name__]
    if isinstance(cause, OmegaConfBaseException) and cause is not err:
        rest = [cause.msg.splitlines()[0]]
    head = head.removeprefix("Error merging override ")
    if rest and rest[0].startswith("Available options"):
        return f"{head}; {rest[0]} {', '.join(rest[1:])}"
    return ": ".join([head, *rest])


@contextmanager
def reported_errors(prog: str) -> Iterator[None]:
    """Turn config and data errors into one line on stderr and exit code 2 (no traceback).

    Wrap both ``main`` (errors while Hydra composes the config) and the task function (errors
    inside a job, which Hydra would otherwise announce with a line of its own).
    """
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises instead of printing
    try:
        yield
    except (ConfigError, HydraException, OmegaConfBaseException, MNISTUnavailable) as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
