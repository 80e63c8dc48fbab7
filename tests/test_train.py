"""train(cfg) in-process on synthetic data, with configs composed by Hydra's compose API."""

import json
from pathlib import Path

import pytest
import torch

from lenet_lightning.config import ConfigError, validate
from lenet_lightning.train import train
from tests.conftest import compose_train, tiny_overrides


def test_fast_dev_run(tiny_mnist, tmp_path: Path) -> None:
    cfg = compose_train(tiny_overrides(tiny_mnist, tmp_path / "run", "trainer.fast_dev_run=true"))
    train(cfg)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= report["final"]["test/acc"] <= 1 and report["parameters"] == 61_706


def test_a_short_run_writes_its_report_checkpoints_and_events(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    best_val = train(compose_train(tiny_overrides(tiny_mnist, out, "model.lr=0.003")))
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs"] == 2 and len(report["history"]) == 2
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"}
    assert set(report["history"][0]) == expected | {"epoch"}
    assert {"test/loss", "test/acc"} <= set(report["final"])
    assert report["best"]["val/acc"] == max(row["val/acc"] for row in report["history"])
    assert best_val == pytest.approx(report["best"]["val/acc"])
    assert report["final"]["test/acc"] > 0.5  # the synthetic digits are easy to learn
    assert report["config"]["model"]["lr"] == 0.003 and report["fit_seconds"] > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    # Checkpoints hold plain values only: they load with weights_only=True.
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["activation"] == "tanh"
    assert ckpt["callbacks"]["EpochHistory"]["epochs"] == report["history"]


def test_same_seed_same_metrics_on_the_cpu(tiny_mnist, tmp_path: Path) -> None:
    histories = []
    for name in ("a", "b"):
        train(compose_train(tiny_overrides(tiny_mnist, tmp_path / name, "seed=3")))
        histories.append(json.loads((tmp_path / name / "metrics.json").read_text())["history"])
    assert histories[0] == histories[1]
    train(compose_train(tiny_overrides(tiny_mnist, tmp_path / "c", "seed=4")))
    other = json.loads((tmp_path / "c" / "metrics.json").read_text())["history"]
    assert other != histories[0]


def test_csv_logger_and_no_logger(tiny_mnist, tmp_path: Path) -> None:
    train(compose_train(tiny_overrides(tiny_mnist, tmp_path / "csv", "logger=csv")))
    assert (tmp_path / "csv" / "csv" / "metrics.csv").exists()
    train(compose_train(tiny_overrides(tiny_mnist, tmp_path / "none", "logger=none")))
    assert (tmp_path / "none" / "metrics.json").exists()
    assert not (tmp_path / "none" / "tensorboard").exists()


def test_early_stopping_is_an_option(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, out, "trainer.max_epochs=30")
    train(compose_train([*overrides, "callbacks.early_stopping_patience=1", "model.lr=1e-6"]))
    assert json.loads((out / "metrics.json").read_text())["epochs"] < 30


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.lr=0", "model.lr=0.0 is not allowed: expected a finite number > 0"),
        ("model.weight_decay=-1", "model.weight_decay=-1.0 is not allowed"),
        ("data.batch_size=-5", "data.batch_size=-5 is not allowed: expected an integer >= 1"),
        ("data.val_size=60000", "data.val_size=60000 is not allowed"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed"),
        ("+model.depth=3", "unknown key 'model.depth'; allowed there: activation, pooling"),
    ],
)
def test_validation_names_key_value_and_what_is_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose_train([override]))


def test_the_default_config_is_the_lessons_network_and_optimiser() -> None:
    cfg = compose_train([])
    assert (cfg.data.batch_size, cfg.model.lr, cfg.seed, cfg.trainer.max_epochs) == (
        100,
        1e-3,
        0,
        10,
    )
    model = cfg.model
    assert (model.activation.name, model.pooling.name, model.conv_size) == ("tanh", "avg", 5)
    assert (model.optimizer.name, model.weight_decay, model.label_smoothing) == ("adam", 0, 0)
    assert model.scheduler.name == "cosine" and not model.batch_norm
    assert cfg.data.normalize and cfg.data.val_size == 5000
    assert cfg.trainer.deterministic and cfg.trainer.accelerator == "auto"
    validate(cfg)


def test_the_lesson_experiment_is_exactly_the_lesson() -> None:
    cfg = compose_train(["experiment=lesson"])
    assert not cfg.data.normalize and cfg.data.val_size == 0 and cfg.data.batch_size == 100
    assert cfg.model.scheduler.name == "none" and cfg.model.lr == 1e-3
    assert cfg.model.activation.name == "tanh" and cfg.model.pooling.name == "avg"


@pytest.mark.parametrize(
    "experiment", ["lesson", "lenet5_relu_max", "lenet5_modern", "best", "fast"]
)
def test_every_experiment_trains_for_fast_dev_run(tiny_mnist, tmp_path: Path, experiment) -> None:
    out = tmp_path / experiment
    overrides = tiny_overrides(
        tiny_mnist, out, f"experiment={experiment}", "trainer.fast_dev_run=true"
    )
    train(compose_train([*overrides, "data.val_size=100"]))
    report = json.loads((out / "metrics.json").read_text())
    assert report["parameters"] < 100_000 and "test/acc" in report["final"]


def test_config_choices_match_what_the_code_builds() -> None:
    from lenet_lightning import config, model, module

    assert [a.name for a in config.Activation] == list(model.ACTIVATIONS)
    assert [p.name for p in config.Pooling] == list(model.POOLINGS)
    assert config.CONV_SIZES == model.CONV_SIZES
    assert {o.name for o in config.Optimizer} == set(module.OPTIMIZERS)
    assert {s.name for s in config.Scheduler} == set(module.SCHEDULERS)
