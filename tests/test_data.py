from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lenet_lightning.config import DataConfig
from lenet_lightning.data import MNISTDataModule, ResidentBatches
from lenet_lightning.images import MEAN, STD
from tests.conftest import N_TEST, N_TRAIN


def datamodule(data_dir: Path, seed: int = 0, **changes) -> MNISTDataModule:
    settings = DataConfig(str(data_dir), [], batch_size=32, eval_batch_size=64, val_size=50)
    dm = MNISTDataModule(**{**asdict(settings), **changes}, seed=seed)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_tensors_are_n_1_28_28_floats(tiny_mnist) -> None:
    dm = datamodule(tiny_mnist)
    for images, labels in (dm.train_set, dm.val_set, dm.test_set):
        assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
        assert labels.dtype == torch.int64 and len(labels) == len(images)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and y.shape == (32,)


def test_normalize_on_and_off(tiny_mnist) -> None:
    raw = datamodule(tiny_mnist, normalize=False).test_set[0]
    assert raw.min() >= 0 and raw.max() == 255 and raw.dtype == torch.float32
    normed = datamodule(tiny_mnist, normalize=True).test_set[0]
    torch.testing.assert_close(normed, (raw / 255 - MEAN) / STD)


def test_validation_is_held_out_of_training_and_the_test_set_is_separate(tiny_mnist) -> None:
    dm = datamodule(tiny_mnist, val_size=50)
    assert len(dm.train_set[1]) == N_TRAIN - 50 and len(dm.val_set[1]) == 50
    assert len(dm.test_set[1]) == N_TEST
    flat = lambda t: {tuple(row.tolist()) for row in t.flatten(1)}  # noqa: E731
    train, val, test = flat(dm.train_set[0]), flat(dm.val_set[0]), flat(dm.test_set[0])
    assert not train & val and not val & test and not train & test


def test_the_split_depends_on_split_seed_only(tiny_mnist) -> None:
    a = datamodule(tiny_mnist, seed=1).val_set[1]
    b = datamodule(tiny_mnist, seed=2).val_set[1]
    c = datamodule(tiny_mnist, split_seed=5).val_set[0]
    assert torch.equal(a, b)
    assert not torch.equal(datamodule(tiny_mnist).val_set[0], c)


def test_val_size_zero_validates_on_the_test_set(tiny_mnist) -> None:
    dm = datamodule(tiny_mnist, val_size=0)
    assert dm.val_set is dm.test_set and len(dm.train_set[1]) == N_TRAIN


def make_batches(n: int = 103, **kwargs) -> ResidentBatches:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return ResidentBatches(images, torch.arange(n), 10, **kwargs)


def seen(batches: ResidentBatches) -> list[int]:
    return [i for _, y in batches for i in y.tolist()]


def test_training_batches_are_a_new_permutation_every_epoch() -> None:
    epoch = {"now": 0}
    batches = make_batches(shuffle=True, seed=3, epoch=lambda: epoch["now"])
    first = seen(batches)
    assert sorted(first) == list(range(103)) and first != list(range(103))
    assert seen(batches) == first  # same epoch, same order
    epoch["now"] = 1
    second = seen(batches)
    assert sorted(second) == list(range(103)) and second != first
    assert seen(make_batches(shuffle=True, seed=3, epoch=lambda: 1)) == second
    assert seen(make_batches(shuffle=True, seed=4, epoch=lambda: 1)) != second
    assert len(batches) == 11 and all(x.flatten().tolist() == y.tolist() for x, y in batches)


def test_evaluation_batches_come_in_order() -> None:
    assert seen(make_batches()) == list(range(103))


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_get_disjoint_shards_that_cover_the_epoch(shuffle: bool) -> None:
    shards = [seen(make_batches(100, shuffle=shuffle, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert sorted(shards[0] + shards[1]) == list(range(100))
