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


def test_a_shift_moves_the_digit_by_at_most_its_share_of_the_size() -> None:
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0
    torch.manual_seed(0)
    out = random_affine(images, 0.0, 0.2, 0.0)

    def centre(x: torch.Tensor) -> torch.Tensor:  # (N, 2): the centre of mass, row and column
        grid = torch.arange(28.0)
        mass = x.sum((1, 2, 3))
        return (
            torch.stack([(x.sum((1, 3)) * grid).sum(1), (x.sum((1, 2)) * grid).sum(1)], 1)
            / (mass[:, None])
        )

    moved = centre(out) - centre(images)
    assert moved.abs().max() <= 0.2 * 28 + 0.5  # within the allowed share, each axis
    assert (moved.abs().sum(1) > 1).float().mean() > 0.8  # most digits moved a pixel or more
    torch.testing.assert_close(out.sum((1, 2, 3)), images.sum((1, 2, 3)), atol=1.0, rtol=0)


def datamodule_in(stage: str) -> MNISTDataModule:
    augment = DataConfig(augment_degrees=10.0, augment_translate=0.1, augment_scale=0.1)
    dm = MNISTDataModule(**asdict(augment), seed=0)
    dm.trainer = SimpleNamespace(training=stage == "train")
    return dm


def test_training_batches_are_augmented_with_labels_intact() -> None:
    images, labels = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    torch.manual_seed(0)
    out, out_labels = datamodule_in("train").on_after_batch_transfer((images, labels), 0)
    torch.manual_seed(0)
    expected = random_affine(images, 10.0, 0.1, 0.1)  # the settings of datamodule_in
    assert out_labels is labels
    torch.testing.assert_close(out, expected)
    assert all(not torch.allclose(a, b) for a, b in zip(out, images, strict=True))


def test_validation_and_test_batches_are_left_alone() -> None:
    batch = (torch.rand(8, 1, 28, 28), torch.arange(8))
    assert datamodule_in("validate").on_after_batch_transfer(batch, 0) is batch
