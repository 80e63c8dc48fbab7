"""Pictures as the network sees them: any image of a digit becomes a 28x28 MNIST-like digit,
and MNIST digits become the float tensors the network takes. Shared by training (the data
set), ``lenet-predict`` and ``lenet-demo``; torch, numpy and PIL only.

A picture is made to look like MNIST: grayscale, a light digit on a dark background (dark-on-
light drawings and photos are inverted), the digit fitted into a 20x20 box keeping its aspect
ratio, then placed in a 28x28 field with its centre of mass in the middle.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

MEAN, STD = 0.1307, 0.3081  # of MNIST's training pixels scaled to [0, 1]


class ImageError(ValueError):
    """A file that cannot be read as a digit image."""


def to_float_images(images: Tensor, normalize: bool) -> Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 1, 28, 28)``: standardised, or the raw 0-255 values."""
    x = images.unsqueeze(1).float()
    return x.div_(255).sub_(MEAN).div_(STD) if normalize else x  # in place: one float copy


def read_image(path: Path) -> Image.Image:
    """Open an image upright (as a phone's EXIF orientation says), refusing non-images,
    anything but a regular file (a pipe would wait forever) and decompression bombs."""
    if not path.is_file():
        problem = "no such file" if not path.exists() else "not a regular file"
        raise ImageError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: refused, too many pixels to be a digit image ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{path}: not an image PIL can read") from err
    except OSError as err:
        raise ImageError(f"{path}: cannot read it ({err})") from err
    return image


def to_mnist(image: Image.Image) -> np.ndarray:
    """A 28x28 uint8 array laid out the way MNIST digits are."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image)  # transparent drawing: paper is white
    if image.mode.startswith(("I", "F")):  # 16- or 32-bit grayscale: PIL's "L" would clip it
        pixels = np.asarray(image, dtype=np.float32)
        pixels *= 255 / max(pixels.max(), 255)
    else:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper: MNIST is light on dark
        pixels, border = 255 - pixels, 255 - border
    pixels = np.clip(pixels - np.median(border), 0, None)
    if pixels.max() <= 0:
        raise ImageError("the image is blank: no digit to read")
    pixels *= 255 / pixels.max()
    rows, cols = np.nonzero(pixels > 0.05 * 255)
    digit = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = digit.shape
    if max(h, w) != 20:  # fit the longer side to 20 pixels
        scale = 20 / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        digit = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.LANCZOS))
        digit = np.clip(digit, 0, 255)
        h, w = digit.shape
    ys, xs = np.indices(digit.shape)
    mass = digit.sum()
    top = int(np.clip(round(14 - (ys * digit).sum() / mass), 0, 28 - h))
    left = int(np.clip(round(14 - (xs * digit).sum() / mass), 0, 28 - w))
    field = np.zeros((28, 28), dtype=np.float32)
    field[top : top + h, left : left + w] = digit
    return np.rint(field).astype(np.uint8)


def probabilities(network: torch.nn.Module, digit: np.ndarray, normalize: bool) -> Tensor:
    """The network's probability for each of the ten digits, for one 28x28 uint8 digit."""
    x = to_float_images(torch.from_numpy(digit)[None], normalize)
    with torch.inference_mode():
        return network(x).softmax(dim=1)[0]
