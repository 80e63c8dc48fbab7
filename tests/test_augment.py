"""The on-tensor augmentation: labels intact, pixels in range, never at validation or test."""

from dataclasses import asdict
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenet_lightning.config import DataConfig
from lenet_lightning.data import MNISTDataModule, random_distortion, smooth_displacements


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    degrees=st.floats(0, 45),
    translate=st.floats(0, 0.5),
    scale=st.floats(0, 0.9),
    elastic=st.floats(0, 5),
    n=st.integers(1, 16),
)
def test_augmented_pixels_stay_within_the_input_range(
    seed, degrees, translate, scale, elastic, n
) -> None:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=gen) * 3 - 0.5
    torch.manual_seed(seed)
    out = random_distortion(images, degrees, translate, scale, elastic)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5


def test_no_augmentation_is_the_identity() -> None:
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(random_distortion(images, 0.0, 0.0, 0.0), images, atol=1e-5, rtol=0)


def test_elastic_displacements_have_the_asked_size_everywhere_and_are_smooth() -> None:
    torch.manual_seed(0)
    field = smooth_displacements(4000, 28, 1.5, torch.device("cpu"))  # (N, 28, 28, 2), pixels
    assert field.shape == (4000, 28, 28, 2)
    std = field.std(0)  # each pixel's and axis's spread
    torch.testing.assert_close(std, torch.full_like(std, 1.5), atol=0.1, rtol=0)  # edges too
    row = field[:, 14, :, 0]

    def corr(a: int, b: int) -> float:
        return torch.corrcoef(torch.stack([row[:, a], row[:, b]]))[0, 1].item()

    assert corr(14, 15) > 0.95 and corr(14, 18) > 0.6  # neighbours move together...
    assert abs(corr(2, 25)) < 0.1  # ...far pixels independently
    assert abs(torch.corrcoef(field[:, 14, 14].T)[0, 1].item()) < 0.1  # and x apart from y


def test_an_elastic_distortion_bends_the_digit_in_place() -> None:
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 6:22, 12:16] = 1.0  # a bar, like a "1"
    torch.manual_seed(0)
    out = random_distortion(images, 0.0, 0.0, 0.0, 2.0)
    assert ((out - images).abs().sum((1, 2, 3)) > 2).all()  # every bar bent
    column = (out.sum((1, 2)) * torch.arange(28.0)).sum(1) / out.sum((1, 2, 3))
    moved = (column - 13.5).abs()  # the bar's sideways move: local, of about the asked size
    assert moved.mean() < 2.0 and moved.max() < 3 * 2.0


def test_a_shift_moves_the_digit_by_at_most_its_share_of_the_size() -> None:
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0
    torch.manual_seed(0)
    out = random_distortion(images, 0.0, 0.2, 0.0)

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
    augment = DataConfig(
        augment_degrees=10.0, augment_translate=0.1, augment_scale=0.1, augment_elastic=1.5
    )
    dm = MNISTDataModule(**asdict(augment), seed=0)
    dm.trainer = SimpleNamespace(training=stage == "train")
    return dm


def test_training_batches_are_augmented_with_labels_intact() -> None:
    images, labels = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    torch.manual_seed(0)
    out, out_labels = datamodule_in("train").on_after_batch_transfer((images, labels), 0)
    torch.manual_seed(0)
    expected = random_distortion(images, 10.0, 0.1, 0.1, 1.5)  # the settings of datamodule_in
    assert out_labels is labels
    torch.testing.assert_close(out, expected)
    assert all(not torch.allclose(a, b) for a, b in zip(out, images, strict=True))


def test_validation_and_test_batches_are_left_alone() -> None:
    batch = (torch.rand(8, 1, 28, 28), torch.arange(8))
    assert datamodule_in("validate").on_after_batch_transfer(batch, 0) is batch
