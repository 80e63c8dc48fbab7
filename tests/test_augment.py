"""The on-tensor augmentation: labels intact, pixels in range, never at validation or test."""

from dataclasses import asdict
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenet_lightning.config import DataConfig
from lenet_lightning.data import MNISTDataModule, random_affine


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    degrees=st.floats(0, 45),
    translate=st.floats(0, 0.5),
    scale=st.floats(0, 0.9),
    n=st.integers(1, 16),
)
def test_augmented_pixels_stay_within_the_input_range(seed, degrees, translate, scale, n) -> None:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=gen) * 3 - 0.5
    torch.manual_seed(seed)
    out = random_affine(images, degrees, translate, scale)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5


def test_no_augmentation_is_the_identity() -> None:
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(random_affine(images, 0.0, 0.0, 0.0), images, atol=1e-5, rtol=0)


def test_a_shift_moves_the_digit() -> None:
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0
    out = random_affine(images, 0.0, 0.2, 0.0)
    assert not torch.allclose(out, images)


def datamodule_in(stage: str) -> MNISTDataModule:
    augment = DataConfig(augment_degrees=10.0, augment_translate=0.1, augment_scale=0.1)
    dm = MNISTDataModule(**asdict(augment), seed=0)
    dm.trainer = SimpleNamespace(training=stage == "train")
    return dm


def test_training_batches_are_augmented_with_labels_intact() -> None:
    images, labels = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    out, out_labels = datamodule_in("train").on_after_batch_transfer((images, labels), 0)
    assert out_labels is labels and not torch.allclose(out, images)


def test_validation_and_test_batches_are_left_alone() -> None:
    batch = (torch.rand(8, 1, 28, 28), torch.arange(8))
    assert datamodule_in("validate").on_after_batch_transfer(batch, 0) is batch
