"""LitLeNet5: its memory-layout option, and metrics that reach the logger once per epoch."""

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lenet_lightning.callbacks import TensorBoardExtras
from lenet_lightning.config import ModelConfig, compose_config
from lenet_lightning.module import LitLeNet5
from lenet_lightning.train import train
from tests.conftest import tiny_overrides


def test_channels_last_is_the_same_network() -> None:
    settings = ModelConfig(activation="relu", pooling="max", batch_norm=True, scheduler="none")
    nchw = LitLeNet5(**asdict(settings) | {"channels_last": False}).eval()
    nhwc = LitLeNet5(**asdict(settings)).eval()
    nhwc.load_state_dict(nchw.state_dict())
    conv = nhwc.model.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_a_test_with_exactly_one_mistake_shows_it(tmp_path: Path) -> None:
    module = LitLeNet5(**asdict(ModelConfig())).eval()
    images = torch.randn(4, 1, 28, 28)
    labels = module(images).argmax(1)
    labels[2] = (labels[2] + 1) % 10
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="", version="")
    trainer = L.Trainer(logger=logger, callbacks=[TensorBoardExtras({})], enable_progress_bar=False)
    trainer.test(module, dataloaders=DataLoader(TensorDataset(images, labels), batch_size=4))
    images, labels, preds = module.mistakes
    assert images.shape == (1, 1, 28, 28) and labels.shape == preds.shape == (1,)


class Count(L.Callback):
    """Training batches and validations (sanity check excluded) per epoch, and the accuracy
    of each epoch's training batches, measured on the side."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.validations = 0
        self.correct: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches.append(0)
        self.correct.append(0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, y = batch
        with torch.no_grad():  # before the step changes the weights: what the step sees
            self.correct[-1] += int((pl_module(x).argmax(1) == y).sum())

    def on_train_batch_end(self, *args: object) -> None:
        self.batches[-1] += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validations += 0 if trainer.sanity_checking else 1


def test_each_metric_is_logged_once_per_epoch_and_holds_that_epoch_alone(
    tiny_mnist, tmp_path: Path, monkeypatch
) -> None:
    logged: list[str] = []
    original = LitLeNet5.log

    def log(self: LitLeNet5, name: str, *args: object, **kwargs: object) -> None:
        logged.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(LitLeNet5, "log", log)
    count = Count()
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(tiny_mnist, out, "model.lr=0.01")), callbacks=[count])
    assert count.batches == [6, 6]  # 300 training images in batches of 50, two epochs
    assert logged.count("train/loss") == logged.count("train/acc") == 2
    assert logged.count("val/acc") == 3  # the sanity check, then each epoch
    assert logged.count("test/acc") == 1
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [row["train/acc"] for row in history] == pytest.approx([c / 300 for c in count.correct])


def test_batch_limits_count_batches_and_validation_can_run_within_epochs(
    tiny_mnist, tmp_path: Path
) -> None:
    cfg = compose_config(
        tiny_overrides(
            tiny_mnist,
            tmp_path / "run",
            "trainer.limit_train_batches=1",  # one batch, not 100%
            "trainer.val_check_interval=0.5",
            "data.batch_size=25",
        )
    )
    count = Count()
    train(cfg, callbacks=[count])
    assert count.batches == [1, 1]
    cfg.trainer.limit_train_batches = None
    count = Count()
    train(cfg, callbacks=[count])
    assert count.batches == [12, 12] and count.validations == 4
