"""The settings: every key of ``lenet-train``, ``lenet-eval``, ``lenet-predict`` and
``lenet-demo``, each written once here with its default, its type and the values it allows.

Hydra builds the apps' configs from these dataclasses; the YAML files in ``conf/`` only pick
presets (trainer, experiment, sweeps). Hydra checks types while it composes; ``validate``
checks the allowed values. Nothing here imports torch or Lightning, so a refused config costs
a fraction of a second. The Trainer's own arguments (accelerator, devices, strategy,
precision) are checked by Lightning itself, past the few it accepts but cannot run here.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields, is_dataclass
from functools import cache, reduce
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lenet_lightning.errors import ConfigError
from lenet_lightning.mnist_files import SOURCES

CONFIG_MODULE = "lenet_lightning.conf"  # conf/, shipped inside the package

# What a setting changes, declared on its line (role=...). Resuming, ckpt_path=latest and the
# run's report take their lists of keys from these, so a new setting is one line here.
WEIGHTS = "weights"  # which weights the network has: a checkpoint of another value cannot load
MODEL = "model"  # what the network computes with the same weights
OPTIMISER = "optimiser"  # how the weights are updated (a resumed optimiser keeps its own)
TRAINING = "training"  # what the network learns from: the data, its order, the seed
MACHINE = "machine"  # where and how fast; nothing learned changes


def setting(default: Any, allowed: str = "", check: Callable | None = None, role: str = "",
            **more: Any) -> Any:  # fmt: skip
    """A dataclass field: its default, ``check`` for the values described by ``allowed``, and
    its ``role`` (what it changes)."""
    where = {"default_factory": lambda: list(default)} if isinstance(default, list) else {}
    metadata = {"check": check, "allowed": allowed, "role": role, **more}
    return field(**(where or {"default": default}), metadata=metadata)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def choice(*values: Any, role: str = "", **more: Any) -> Any:
    """One of ``values``; the first is the default."""
    allowed = f"one of [{', '.join(map(str, values))}]"
    return setting(values[0], allowed, lambda v: v in values, role, choices=values, **more)


def positive(default: float, role: str = "") -> Any:
    return setting(default, "a finite number > 0", lambda v: _number(v) and v > 0, role)


def at_least(default: float, low: float, role: str = "") -> Any:
    kind = "an integer" if isinstance(default, int) else "a finite number"
    return setting(default, f"{kind} >= {low}", lambda v: _number(v) and v >= low, role)


def fraction(default: float, high: float = 1.0, *, high_included: bool = False, role: str = ""):
    """A number from 0 up to ``high`` (included or not)."""
    up_to = f"up to {high:g}" if high_included else f"up to (not including) {high:g}"
    ok = (lambda v: 0 <= v <= high) if high_included else (lambda v: 0 <= v < high)
    return setting(default, f"a number from 0 {up_to}", lambda v: _number(v) and ok(v), role)


def seed_value() -> Any:
    return setting(0, "an integer from 0 to 4294967295", lambda v: 0 <= v < 2**32, TRAINING)


def share_of_epoch(off: str = "") -> Any:
    """Lightning's int-or-float settings: an int counts batches, a float up to 1.0 is a share of
    them; ``off`` says what 0 means, where 0 is allowed. A float that Lightning reads as an int
    (0.0 where 0 is allowed, 5.0 for 5 batches) is allowed as that int is."""
    least = 0 if off else 1

    def ok(v: Any) -> bool:
        whole = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
        batches, share = whole and v >= least, isinstance(v, float) and 0 < v <= 1
        return not isinstance(v, bool) and (v is None or batches or share)

    zero = f", or 0 ({off})" if off else ""
    return setting(None, f"null, a fraction above 0 up to 1.0, a number of batches >= 1{zero}", ok)


@dataclass
class DataFilesConfig:
    """Where MNIST lives and how the test set is batched (all that evaluation needs)."""

    data_dir: str = setting('${oc.env:LENET_DATA_DIR,"~/.cache/lenet-lightning"}', role=MACHINE)
    sources: list[str] = setting(  # where missing raw files come from, in order; [] = none
        list(SOURCES), f"a list from {list(SOURCES)}", lambda v: set(v) <= set(SOURCES), MACHINE
    )
    eval_batch_size: int = at_least(1000, 1, MACHINE)  # validation and test mini-batch


@dataclass
class DataConfig(DataFilesConfig):
    """``MNISTDataModule``'s arguments (``lenet_lightning/data.py``)."""

    batch_size: int = at_least(100, 1, TRAINING)  # training mini-batch
    val_size: int = setting(
        5000, "an integer from 0 to 59999", lambda v: 0 <= v <= 59_999, TRAINING
    )
    normalize: bool = setting(True, role=TRAINING)  # MNIST's mean and std; false: raw 0-255
    split_seed: int = seed_value()  # which training images form the validation split
    augment_degrees: float = fraction(0.0, 180, high_included=True, role=TRAINING)  # +/- degrees
    augment_translate: float = fraction(0.0, 0.5, high_included=True, role=TRAINING)  # shift
    augment_scale: float = fraction(0.0, role=TRAINING)  # zoom in or out by up to this share
    augment_elastic: float = fraction(0.0, 5, high_included=True, role=TRAINING)  # bend: pixels


@dataclass
class ModelConfig:
    """``LitLeNet5``'s arguments (``lenet_lightning/module.py``); the defaults are the lesson's."""

    activation: str = choice("tanh", "relu", role=MODEL)
    pooling: str = choice("avg", "max", role=MODEL)
    conv_size: int = choice(5, 3, role=WEIGHTS)  # 3: two 3x3 convolutions for each 5x5 one
    conv1_channels: int = at_least(6, 1, WEIGHTS)  # feature maps of the first convolution stage
    conv2_channels: int = at_least(16, 1, WEIGHTS)  # feature maps of the second one
    fc1_units: int = at_least(120, 1, WEIGHTS)  # outputs of the first fully connected layer
    batch_norm: bool = setting(False, role=WEIGHTS)
    pool_first: bool = setting(False, role=MODEL)  # pool before each stage's norm and activation
    dropout: float = fraction(0.0, role=MODEL)  # probability, before each fully connected layer
    eval_shifts: bool = setting(False, role=MODEL)  # evaluate on each image and 4 one-pixel shifts
    lr: float = positive(1e-3, OPTIMISER)
    weight_decay: float = at_least(0.0, 0, OPTIMISER)
    optimizer: str = choice("adam", "adamw", "sgd", role=OPTIMISER, kind_of_state=True)
    momentum: float = fraction(0.0, role=OPTIMISER)  # sgd only: the share of the last step kept
    scheduler: str = choice(  # per step
        "cosine", "none", "onecycle", role=OPTIMISER, kind_of_state=True
    )
    label_smoothing: float = fraction(0.0, role=TRAINING)
    channels_last: bool = setting(True, role=MACHINE)  # NHWC layout: faster convolutions


@dataclass
class EvalTrainerConfig:
    """Lightning ``Trainer`` arguments for testing; Lightning checks the first four itself."""

    accelerator: str = "auto"  # auto: the GPU when there is one
    devices: Any = 1
    strategy: str = setting(  # forked copies of a process whose torch threads run hang
        "auto",
        "a Lightning strategy other than ddp_fork and ddp_notebook, which hang once torch has "
        "started its threads (use ddp or ddp_spawn)",
        lambda v: not str(v).startswith(("ddp_fork", "ddp_notebook")),
    )
    num_nodes: int = at_least(1, 1)
    precision: str = "32-true"
    deterministic: bool = True  # the same seed and config give the same metrics
    peer_timeout_s: int = at_least(300, 1)  # several processes: give up if not all connect
    limit_test_batches: Any = share_of_epoch()  # Any: OmegaConf would turn 1 into 1.0
    enable_progress_bar: bool = True


@dataclass
class TrainerConfig(EvalTrainerConfig):
    """Lightning ``Trainer`` arguments for training."""

    max_epochs: int = at_least(10, 1)
    fast_dev_run: Any = False  # true (or N): N batches of each stage, as a smoke test
    limit_train_batches: Any = share_of_epoch()
    limit_val_batches: Any = share_of_epoch(off="no validation: the last epoch is tested")
    val_check_interval: Any = share_of_epoch()  # validate every N batches, or each share
    log_every_n_steps: int = at_least(50, 1)


@dataclass
class CallbacksConfig:
    early_stopping_patience: int | None = setting(  # stop after N epochs without a better val/acc
        None, "null (off) or an integer >= 1", lambda v: v is None or v >= 1
    )
    ema_decay: float | None = setting(  # validate, save and test a moving average of the weights
        None,
        "null (off) or a number from 0 up to (not including) 1",
        lambda v: v is None or 0 <= v < 1,
        TRAINING,  # a checkpoint's state_dict is the average: another decay means other weights
    )


@dataclass
class LogDirConfig:
    log_dir: str = "outputs"  # every run writes below this folder (relative to where you start)


@dataclass
class PathsConfig(LogDirConfig):
    output_dir: str | None = "${hydra:runtime.output_dir}"  # this run's own folder


@dataclass
class SearchConfig:
    """The Optuna trial a job of a search is (``hparams_search=lr_optuna`` sets these)."""

    study: str | None = setting(None, role=MACHINE)  # the study's name
    storage: str | None = setting(None, role=MACHINE)  # its database URL, or journal file
    trial: int | None = setting(None, role=MACHINE)  # this job's trial number


@dataclass
class TrainConfig:
    task_name: str = "train"
    seed: int = seed_value()  # seeds python, numpy and torch (Lightning's seed_everything)
    ckpt_path: str | None = None  # a last.ckpt to resume from, or latest
    resume: bool = False  # carry on the run (or sweep) in the folder given as hydra.run.dir
    # (hydra.sweep.dir): finished jobs are kept, the others resume from their last.ckpt
    tune: str | None = setting(  # lr_find: search a learning rate instead of training
        None, "null (train) or lr_find", lambda v: v in (None, "lr_find")
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: str = choice("tensorboard", "csv", "none")  # csv: metrics.csv; none: neither
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)  # set by an Optuna search


@dataclass
class EvalConfig:
    task_name: str = "eval"
    ckpt_path: str = MISSING  # a .ckpt file, or latest: the newest best checkpoint below log_dir
    data: DataFilesConfig = field(default_factory=DataFilesConfig)
    trainer: EvalTrainerConfig = field(default_factory=EvalTrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class PredictConfig:
    task_name: str = "predict"
    ckpt_path: str = MISSING  # as for lenet-eval
    images: list[str] = setting(  # image files and/or folders
        [], "one or more image files or folders", lambda v: len(v) > 0
    )
    top_k: int = setting(3, "an integer from 1 to 10", lambda v: 1 <= v <= 10)
    paths: LogDirConfig = field(default_factory=LogDirConfig)


@dataclass
class DemoConfig:
    task_name: str = "demo"
    ckpt_path: str = MISSING  # as for lenet-eval
    host: str = "127.0.0.1"  # this machine only; 0.0.0.0 serves the local network too
    port: int = setting(7860, "0 (the first free port from 7860) or 1024 to 65535",
                        lambda v: v == 0 or 1024 <= v <= 65535)  # fmt: skip
    paths: LogDirConfig = field(default_factory=LogDirConfig)


@dataclass
class ExportConfig:
    task_name: str = "export"
    ckpt_path: str = MISSING  # as for lenet-eval
    output: str | None = setting(  # null: beside the checkpoint, <its name>.onnx
        None, "null or a path ending in .onnx", lambda v: v is None or v.endswith(".onnx")
    )
    data: DataFilesConfig = field(default_factory=DataFilesConfig)  # the self-check's test set
    paths: LogDirConfig = field(default_factory=LogDirConfig)


SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "predict": PredictConfig,
           "demo": DemoConfig, "export": ExportConfig}  # fmt: skip


def register(app: str = "train") -> None:
    """Make an app's schema known to Hydra as ``<app>_schema``, the first entry of its config."""
    ConfigStore.instance().store(name=f"{app}_schema", node=SCHEMAS[app])


def validate(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Check every value against its field's rule; raise ConfigError on the first bad one.

    Wrong types never get this far: Hydra refuses them while composing. Unknown keys do too,
    except those added with ``+key=value``, which are refused here.
    """
    known = [f.name for f in fields(schema)]
    unknown = [k for k in cfg if k not in known and not (prefix == "" and k == "hydra")]
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; allowed there: {', '.join(known)}")
    for f in fields(schema):
        key = prefix + f.name
        if OmegaConf.is_missing(cfg, f.name):
            raise ConfigError(f"{key} is required: give it as {key}=...")
        if f.name not in cfg:
            raise ConfigError(f"{key} was deleted (~{key}), but every run needs it")
        if is_dataclass(f.type):
            validate(cfg[f.name], f.type, key + ".")
        elif (check := f.metadata.get("check")) and not check(value := cfg[f.name]):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {f.metadata['allowed']}")


def settings_of(schema: type, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """Every setting of ``schema`` with its dotted key (``model.lr``), groups walked into."""
    for f in fields(schema):
        if is_dataclass(f.type):
            yield from settings_of(f.type, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


@cache
def roles(schema: type = TrainConfig) -> dict[str, str]:
    """``{dotted key: role}`` of every setting that declares one (``model.lr``: optimiser); read
    once, as the dataclasses never change."""
    return {key: f.metadata["role"] for key, f in settings_of(schema) if f.metadata.get("role")}


@cache
def kinds_of_state() -> tuple[str, ...]:
    """The settings that choose the kind of the optimiser and of its schedule, whose state a
    checkpoint holds: a run resumed from it cannot change them (its state would not fit)."""
    return tuple(key for key, f in settings_of(TrainConfig) if f.metadata.get("kind_of_state"))


RECORDED = "settings"  # the checkpoint entry holding ``learned`` of its run (module.py)


def learned(cfg: Any) -> dict[str, Any]:
    """``{dotted key: value}`` of ``cfg``'s settings that change what is learned (every role
    but ``machine``): what a checkpoint records, and resuming compares."""
    keys = [k for k, role in roles().items() if role != MACHINE]
    return {k: reduce(getattr, k.split("."), cfg) for k in keys}


def compose_config(
    overrides: list[str], app: str = "train", return_hydra_config: bool = False
) -> Any:
    """An app's settings with overrides, composed and checked as its command line does it: its
    dataclass (``TrainConfig``...), or with ``return_hydra_config`` the DictConfig with Hydra's
    own keys. Outside a Hydra run, ``paths.output_dir`` is None unless given."""
    register(app)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(app, overrides, return_hydra_config=return_hydra_config)
    validate(cfg, SCHEMAS[app])
    if return_hydra_config:
        return cfg
    paths = cfg.get("paths", {})
    if str(OmegaConf.to_container(paths).get("output_dir")).startswith("${hydra:"):
        paths.output_dir = None
    return OmegaConf.to_object(cfg)
