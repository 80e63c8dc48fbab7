"""MNIST as resident tensors: verified raw files -> ``(N, 1, 28, 28)`` floats -> sliced batches.

The whole data set is read once as uint8 tensors (no per-sample PIL decoding), converted to
float on the training device once, and cut into mini-batches by indexing: a new seeded
permutation every epoch for training (a disjoint shard of it per DDP rank), in order otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lenet_lightning.images import to_float_images
from lenet_lightning.mnist_files import ensure_mnist


def load_mnist(data_dir: str, train: bool) -> tuple[Tensor, Tensor]:
    """The uint8 images ``(N, 28, 28)`` and int64 labels of one official split."""
    from torchvision.datasets import MNIST

    ds = MNIST(data_dir, train=train, download=False)
    return ds.data, ds.targets


ELASTIC_SMOOTHING_PX = 4.0  # the displacement field's Gaussian smoothing (Simard et al., 2003)


def smooth_displacements(n: int, size: int, std_px: float, device: torch.device) -> Tensor:
    """``(n, size, size, 2)`` random displacements in pixels, smooth across the image, of
    ``std_px`` standard deviation at every pixel: white noise on every second pixel blurred by
    a Gaussian of ``ELASTIC_SMOOTHING_PX`` (Simard et al.'s elastic distortion, with a quarter of
    the random numbers)."""
    pixel = torch.arange(size, device=device, dtype=torch.float32)
    noisy = pixel[::2]  # the pixels that draw noise
    blur = torch.exp(-((pixel[:, None] - noisy) ** 2) / (2 * ELASTIC_SMOOTHING_PX**2))
    noise = torch.randn(n * 2, len(noisy), len(noisy), device=device)
    spread = blur.square().sum(1).sqrt()  # each pixel's std for unit noise, along one axis
    field = blur @ noise @ blur.T * (std_px / (spread[:, None] * spread))
    return field.view(n, 2, size, size).permute(0, 2, 3, 1)


def random_distortion(
    images: Tensor, degrees: float, translate: float, scale: float, elastic: float = 0.0
) -> Tensor:
    """Rotate, shift and zoom each image of a batch at random, then bend it by a smooth random
    displacement of ``elastic`` pixels (standard deviation; 0: none), all in one resampling on
    the batch's device. Pixels that come in from outside the image repeat the border (the
    background)."""
    n, size = images.shape[0], images.shape[-1]
    rand = lambda: torch.rand(n, device=images.device) * 2 - 1  # noqa: E731 - uniform in [-1, 1]
    angle = torch.deg2rad(rand() * degrees)
    zoom = 1 + rand() * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift_x, shift_y = rand() * translate * 2, rand() * translate * 2  # grid units span 2
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if elastic:
        grid = grid + smooth_displacements(n, size, elastic, images.device) * (2 / size)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


@dataclass(eq=False)
class ResidentBatches:
    """Mini-batches sliced from tensors that stay where they are (CPU or GPU memory)."""

    images: Tensor
    labels: Tensor
    batch_size: int
    _: KW_ONLY
    shuffle: bool = False
    seed: int = 0
    epoch: Callable[[], int] = lambda: 0
    rank: int = 0
    world_size: int = 1

    def indices(self) -> Tensor | None:
        """This rank's sample indices for the current epoch, or None for "all, in order".
        Training: equal shards of a new permutation (a remainder of under ``world_size`` images
        waits for the next epoch's). Evaluation: every image once, on one rank."""
        n = len(self.labels)
        if not self.shuffle:
            if self.world_size == 1:
                return None
            return torch.arange(self.rank, n, self.world_size, device=self.labels.device)
        seed = int(np.random.SeedSequence([self.seed, self.epoch()]).generate_state(1)[0])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        per_rank = n // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank].to(self.labels.device)

    def __len__(self) -> int:
        n, world = len(self.labels), self.world_size
        mine = n // world if self.shuffle else len(range(self.rank, n, world))
        return -(-mine // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, bs = self.indices(), self.batch_size
        for start in range(0, len(self.labels) if order is None else len(order), bs):
            idx = slice(start, start + bs) if order is None else order[start : start + bs]
            yield self.images[idx], self.labels[idx]


class MNISTDataModule(L.LightningDataModule):
    """MNIST train / validation / test, with a validation split held out of the training set;
    ``val_size=0`` validates on the official test set every epoch, as the lesson does."""

    def __init__(
        self,
        *,
        data_dir: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        normalize: bool,
        split_seed: int,
        seed: int,
        sources: Sequence[str],
        augment_degrees: float,
        augment_translate: float,
        augment_scale: float,
        augment_elastic: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # kept in checkpoints: evaluation prepares data the same way
        self.data_dir = str(Path(data_dir).expanduser())
        self.augment = (augment_degrees, augment_translate, augment_scale, augment_elastic)
        self.train_set: tuple[Tensor, Tensor] | None = None
        self.val_set: tuple[Tensor, Tensor] | None = None
        self.test_set: tuple[Tensor, Tensor] | None = None

    def prepare_data(self) -> None:
        ensure_mnist(self.data_dir, self.hparams.sources)

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        hp = self.hparams

        def resident(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
            return to_float_images(images.to(device), hp.normalize), labels.to(device)

        x, y = load_mnist(self.data_dir, train=True)
        val = torch.randperm(len(y), generator=torch.Generator().manual_seed(hp.split_seed))
        val = val[: hp.val_size]
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[val] = False
        self.train_set = resident(x[keep], y[keep])
        self.test_set = resident(*load_mnist(self.data_dir, train=False))
        self.val_set = resident(x[val], y[val]) if hp.val_size else self.test_set

    def _batches(self, data: tuple[Tensor, Tensor] | None, train: bool) -> ResidentBatches:
        assert data is not None, "call setup() first"
        trainer = self.trainer
        return ResidentBatches(
            *data,
            self.hparams.batch_size if train else self.hparams.eval_batch_size,
            shuffle=train,
            seed=self.hparams.seed,
            epoch=lambda: trainer.current_epoch if trainer else 0,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple:
        """Augment training batches (never validation or test ones) when augmentation is on.
        (The model summary's example input, a lone tensor, passes through here too.)"""
        training = self.trainer and self.trainer.training
        if training and any(self.augment) and isinstance(batch, (tuple, list)):
            images, labels = batch
            return random_distortion(images, *self.augment), labels
        return batch

    def train_dataloader(self) -> ResidentBatches:
        return self._batches(self.train_set, train=True)

    def val_dataloader(self) -> ResidentBatches:
        return self._batches(self.val_set, train=False)

    def test_dataloader(self) -> ResidentBatches:
        return self._batches(self.test_set, train=False)
