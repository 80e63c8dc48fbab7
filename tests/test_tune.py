"""The learning-rate finder, lenet-train tune=lr_find, on tiny synthetic data."""

import json
from pathlib import Path

import pytest
import torch

from lenet_lightning.config import ConfigError, compose_config
from lenet_lightning.train import lenet_train
from lenet_lightning.trainer import build
from lenet_lightning.tune import STEPS, find_lr, train_command
from tests.conftest import tiny_overrides

EXPERIMENTS = ["lesson", "lenet5_relu_max", "lenet5_modern", "best", "fast"]


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_the_finder_suggests_a_rate_for_every_experiment_and_trains_nothing_else(
    tiny_mnist, tmp_path: Path, experiment: str | None
) -> None:
    out = tmp_path / "run"
    chosen = [f"experiment={experiment}"] if experiment else []
    # batch 2: 150 batches an epoch, more than the finder's steps
    overrides = tiny_overrides(tiny_mnist, out, *chosen, "data.batch_size=2", "tune=lr_find")
    suggestion = lenet_train(compose_config(overrides))
    found = json.loads((out / "lr_find.json").read_text())
    assert found["suggestion"] == suggestion and 1e-6 < suggestion < 1
    assert 10 < found["steps"] <= STEPS and len(found["lr"]) == len(found["loss"]) == found["steps"]
    assert found["lr"] == sorted(found["lr"])  # an exponential sweep upwards
    assert found["command"] == f"lenet-train model.lr={suggestion:.3g}"
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_the_model_is_restored_afterwards(tiny_mnist, tmp_path: Path) -> None:
    cfg = compose_config(tiny_overrides(tiny_mnist, tmp_path, "data.batch_size=2"))
    trainer, module, datamodule = build(cfg, logger=False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    find_lr(trainer, module, datamodule, tmp_path)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.fast_dev_run=true", "tune=lr_find cannot run with trainer.fast_dev_run"),
        ("trainer=ddp_cpu", "tune=lr_find runs on one device"),
        ("tune=lr_search", "tune='lr_search' is not allowed: expected null (train) or lr_find"),
    ],
)
def test_a_config_that_cannot_be_tuned_is_refused(tiny_mnist, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        overrides = tiny_overrides(tiny_mnist, tmp_path / "run", "tune=lr_find", override)
        lenet_train(compose_config(overrides))


def test_the_command_to_train_with_the_rate_outside_hydra() -> None:
    assert train_command(0.0022912) == "lenet-train model.lr=0.00229"
