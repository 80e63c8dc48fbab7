"""The settings: defaults, presets, and bad values refused in one line (composed in-process,
through the same composition and check as the command lines)."""

from dataclasses import fields

import pytest

from lenet_lightning.config import (
    MACHINE,
    MODEL,
    OPTIMISER,
    TRAINING,
    WEIGHTS,
    DataConfig,
    ModelConfig,
    compose_config,
    roles,
)
from lenet_lightning.errors import one_line

BAD_INPUTS = [  # override, what the one line must say
    ("model.lr=-1", "model.lr=-1.0 is not allowed: expected a finite number > 0"),
    ("model.lr=0", "model.lr=0.0 is not allowed"),
    ("model.lr=nan", "model.lr=nan is not allowed"),
    ("model.lr=inf", "model.lr=inf is not allowed"),
    ("model.lr=abc", "model.lr=abc: Value 'abc' of type 'str' could not be converted"),
    ("model.lr=", "model.lr=: Value '' of type 'str' could not be converted to Float"),
    (
        "model.weight_decay=-0.1",
        "model.weight_decay=-0.1 is not allowed: expected a finite number >= 0",
    ),
    ("model.label_smoothing=1.5", "model.label_smoothing=1.5 is not allowed"),
    (
        "model.dropout=1",
        "model.dropout=1.0 is not allowed: expected a number from 0 up to (not including) 1",
    ),
    ("model.dropout=-0.1", "model.dropout=-0.1 is not allowed"),
    (
        "model.activation=sigmoid",
        "model.activation='sigmoid' is not allowed: expected one of [tanh, relu]",
    ),
    ("model.pooling=median", "expected one of [avg, max]"),
    ("model.conv_size=7", "model.conv_size=7 is not allowed: expected one of [5, 3]"),
    ("model.optimizer=rmsprop", "expected one of [adam, adamw, sgd]"),
    ("model.momentum=1", "model.momentum=1.0 is not allowed: expected a number from 0 up to (not"),
    ("model.scheduler=step", "expected one of [cosine, none, onecycle]"),
    ("model.batch_norm=maybe", "model.batch_norm=maybe: Value 'maybe' is not a valid bool"),
    ("model.channels_last=maybe", "model.channels_last=maybe"),
    ("model.lrr=0.1", "unknown key 'model.lrr'; allowed there: activation, pooling, conv_size"),
    ("+model.lrr=0.1", "unknown key 'model.lrr'; allowed there: activation, pooling, conv_size"),
    ("+trainer.max_epoch=3", "unknown key 'trainer.max_epoch'"),
    ("data.batch_size=0", "data.batch_size=0 is not allowed: expected an integer >= 1"),
    ("data.batch_size=-5", "data.batch_size=-5 is not allowed"),
    ("data.batch_size=1.5", "data.batch_size=1.5"),
    ("data.eval_batch_size=0", "data.eval_batch_size=0 is not allowed"),
    ("data.val_size=-1", "data.val_size=-1 is not allowed: expected an integer from 0 to 59999"),
    ("data.val_size=60000", "data.val_size=60000 is not allowed"),
    (
        "data.sources=[ftp]",
        "data.sources=['ftp'] is not allowed: expected a list from ['torchvision', 'pypi']",
    ),
    ("data.augment_translate=0.9", "data.augment_translate=0.9 is not allowed"),
    (
        "data.augment_elastic=5.5",
        "data.augment_elastic=5.5 is not allowed: expected a number from 0",
    ),
    ("data.augment_degrees=1e39", "data.augment_degrees=1e+39 is not allowed: expected a number"),
    (
        "data.split_seed=18446744073709551616",
        "data.split_seed=18446744073709551616 is not allowed: expected an integer from 0 to",
    ),
    (
        "trainer.strategy=ddp_fork",
        "trainer.strategy='ddp_fork' is not allowed: expected a Lightning strategy other than",
    ),
    ("trainer.strategy=ddp_notebook_find_unused_parameters_true", "(use ddp or ddp_spawn)"),
    ("trainer.peer_timeout_s=0", "trainer.peer_timeout_s=0 is not allowed"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: expected an integer >= 1"),
    ("trainer.max_epochs=-3", "trainer.max_epochs=-3 is not allowed"),
    (
        "trainer.val_check_interval=1.5",
        "trainer.val_check_interval=1.5 is not allowed: expected null, a fraction above 0 up to",
    ),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 is not allowed"),
    (
        "trainer.limit_val_batches=-1",
        "trainer.limit_val_batches=-1 is not allowed: expected null, a fraction above 0 up to "
        "1.0, a number of batches >= 1, or 0 (no validation: the last epoch is tested)",
    ),
    (
        "trainer=tpu",
        "Could not find 'trainer/tpu'; Available options in 'trainer': cpu, ddp, ddp_cpu, default",
    ),
    ("logger=wandb", "logger='wandb' is not allowed: expected one of [tensorboard, csv, none]"),
    ("experiment=nope", "Could not find 'experiment/nope'"),
    ("model=resnet", "model=resnet"),
    ("callbacks.early_stopping_patience=0", "callbacks.early_stopping_patience=0 is not allowed"),
    (
        "callbacks.ema_decay=1",
        "callbacks.ema_decay=1.0 is not allowed: expected null (off) or a "
        "number from 0 up to (not including) 1",
    ),
    ("model.conv1_channels=0", "model.conv1_channels=0 is not allowed: expected an integer >= 1"),
    ("seed=abc", "seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("seed=-1", "seed=-1 is not allowed: expected an integer from 0 to 4294967295"),
    ("~data", "data was deleted (~data), but every run needs it"),
    ("~model.lr", "~model.lr: ModelConfig (DictConfig) does not support deletion"),
]


@pytest.mark.parametrize("override,message", BAD_INPUTS)
def test_a_bad_value_is_refused_in_one_line_naming_it(override: str, message: str) -> None:
    with pytest.raises(Exception) as refused:
        compose_config([override])
    line = one_line(refused.value)
    assert message in line and "\n" not in line


@pytest.mark.parametrize(
    "app,override,message",
    [  # a key a command does not use is refused, not ignored
        ("eval", "data.normalize=false", "unknown key 'data.normalize'"),
        ("eval", "data.batch_size=64", "unknown key 'data.batch_size'"),
        ("eval", "trainer.max_epochs=3", "unknown key 'trainer.max_epochs'"),
        ("eval", "model.lr=0.1", "unknown key 'model'; allowed there: task_name, ckpt_path"),
        ("predict", "data.data_dir=x", "unknown key 'data'"),
        ("predict", "paths.output_dir=x", "unknown key 'paths.output_dir'"),
        ("predict", "top_k=11", "top_k=11 is not allowed: expected an integer from 1 to 10"),
        ("predict", "images=[]", "images=[] is not allowed: expected one or more image files"),
        ("eval", "trainer.limit_test_batches=0", "trainer.limit_test_batches=0 is not allowed"),
    ],
)
def test_eval_and_predict_refuse_what_they_do_not_use(
    app: str, override: str, message: str
) -> None:
    with pytest.raises(Exception) as refused:
        required = ["ckpt_path=x.ckpt", "images=[a.png]"][: 1 + (app == "predict")]
        compose_config([*required, override], app)
    assert message in one_line(refused.value)


def test_a_missing_checkpoint_path_is_named() -> None:
    with pytest.raises(Exception) as refused:
        compose_config([], "eval")
    assert one_line(refused.value) == "ckpt_path is required: give it as ckpt_path=..."


def test_the_default_config_is_the_lessons_network_and_optimiser() -> None:
    cfg = compose_config([])
    assert (cfg.data.batch_size, cfg.model.lr, cfg.seed, cfg.trainer.max_epochs) == (
        100,
        1e-3,
        0,
        10,
    )
    m = cfg.model
    assert (m.activation, m.pooling, m.conv_size, m.batch_norm, m.dropout) == (
        "tanh",
        "avg",
        5,
        False,
        0,
    )
    assert (m.optimizer, m.weight_decay, m.label_smoothing, m.scheduler) == ("adam", 0, 0, "cosine")
    assert cfg.data.normalize and cfg.data.val_size == 5000
    assert cfg.trainer.deterministic and cfg.trainer.accelerator == "auto"


def test_the_lesson_experiment_is_exactly_the_lesson() -> None:
    cfg = compose_config(["experiment=lesson"])
    assert not cfg.data.normalize and cfg.data.val_size == 0 and cfg.data.batch_size == 100
    assert cfg.model.scheduler == "none" and cfg.model.lr == 1e-3
    assert cfg.model.activation == "tanh" and cfg.model.pooling == "avg"


def test_trainer_presets_change_only_what_they_name() -> None:
    default, cpu, ddp = (
        compose_config([f"trainer={t}"]).trainer for t in ("default", "cpu", "ddp_cpu")
    )
    assert (cpu.accelerator, cpu.devices) == ("cpu", 1) and cpu.max_epochs == default.max_epochs
    assert (ddp.accelerator, ddp.devices, ddp.strategy) == ("cpu", 2, "ddp")


def test_batch_limits_keep_ints_and_fractions() -> None:
    t = compose_config(["trainer.limit_train_batches=1", "trainer.limit_val_batches=0.5"]).trainer
    assert t.limit_train_batches == 1 and isinstance(
        t.limit_train_batches, int
    )  # 1 batch, not 100%
    assert t.limit_val_batches == 0.5
    assert compose_config(["trainer.limit_val_batches=0"]).trainer.limit_val_batches == 0


def test_every_setting_of_the_model_and_the_data_declares_what_it_changes() -> None:
    """The lists that resuming, ckpt_path=latest and the report use come from these roles."""
    found = roles()
    learned = [f"{group}.{f.name}" for group, schema in (("model", ModelConfig),
               ("data", DataConfig)) for f in fields(schema)]  # fmt: skip
    assert set(learned) <= set(found) and found["seed"] == TRAINING
    assert set(found.values()) == {WEIGHTS, MODEL, OPTIMISER, TRAINING, MACHINE}
    assert [k for k, role in found.items() if role == OPTIMISER] == [
        "model.lr", "model.weight_decay", "model.optimizer", "model.momentum", "model.scheduler"
    ]  # fmt: skip
