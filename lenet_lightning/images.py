"""Pictures as the network sees them: any image of a digit becomes a 28x28 MNIST-like digit,
and MNIST digits become the floats the network takes. Shared by training (the data set),
``lenet-predict``, ``lenet-demo`` and ``lenet-export``; numpy and PIL only (``to_float_images``
works on the tensors it is given), so reading an ``.onnx`` file never imports torch.

A picture in any of PIL's modes is made to look like MNIST: grayscale, stretched over its own
range (a float picture in 0-1 or a 16-bit scan as much as an 8-bit one), a light digit on a
dark background (dark-on-light drawings and photos are inverted), the digit fitted into a
20x20 box keeping its aspect ratio, then placed in a 28x28 field with its centre of mass in
the middle. A transparent picture is laid on white paper; if that shows no digit (white ink
on a clear background), its opacity is the ink. Whatever goes wrong reading or converting a
picture is an ``ImageError``, in one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from torch import Tensor

MEAN, STD = 0.1307, 0.3081  # of MNIST's training pixels scaled to [0, 1]


class ImageError(ValueError):
    """A file that cannot be read as a digit image."""


def to_float_images(images: Tensor, normalize: bool) -> Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 1, 28, 28)``: standardised, or the raw 0-255 values."""
    x = images.unsqueeze(1).float()
    return x.div_(255).sub_(MEAN).div_(STD) if normalize else x  # in place: one float copy


def scaling(normalize: bool) -> tuple[float, float, float]:
    """``(scale, mean, std)``: the network takes ``(pixels / scale - mean) / std``."""
    return (255, MEAN, STD) if normalize else (1, 0, 1)


def network_input(digits: np.ndarray, normalize: bool) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)``, as ``to_float_images`` makes it:
    the same float32 arithmetic, so the same values."""
    scale, mean, std = scaling(normalize)
    return (digits[:, None].astype(np.float32) / scale - mean) / std


def softmax(logits: np.ndarray) -> np.ndarray:
    """Each row of logits as probabilities."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def read_image(path: Path) -> Image.Image:
    """Open an image upright (as a phone's EXIF orientation says). Whatever goes wrong is an
    ImageError naming the file: not a regular file (a pipe would wait forever), not an image,
    a decompression bomb, a damaged file (PIL's decoders raise OSError, but also ValueError,
    TypeError, SyntaxError, struct.error...)."""
    if not path.is_file():
        problem = "no such file" if not path.exists() else "not a regular file"
        raise ImageError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's remarks on a file it can read anyway
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: refused, too many pixels to be a digit image ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{path}: not an image PIL can read") from err
    except Exception as err:
        raise ImageError(f"{path}: cannot read it ({reason(err)})") from err
    return image


def reason(err: Exception) -> str:
    """An exception in one line; its type too, unless it is an OSError (a file's own words)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, OSError) else f"{type(err).__name__}: {text}"


def to_mnist(image: Image.Image) -> np.ndarray:
    """A 28x28 uint8 array laid out the way MNIST digits are, from a picture in any of PIL's
    modes; ImageError if it shows no digit or cannot be converted."""
    try:
        grey, alpha = grey_and_alpha(image)
        pixels = ink(grey)
        if pixels is None and alpha is not None:  # e.g. white ink on a transparent background
            pixels = ink(alpha)
    except ImageError:
        raise
    except Exception as err:
        raise ImageError(f"cannot convert it from PIL's mode {image.mode} ({reason(err)})") from err
    if pixels is None:
        raise ImageError("the image is blank: no digit to read")
    return centred(pixels)


def grey_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """The picture in shades of grey, as floats in its own range (a transparent picture laid
    on white paper), and its opacity (alpha, 0-255) if it has transparency."""
    if image.mode.startswith(("I", "F")):  # 16- or 32-bit grayscale: PIL's "L" would clip it
        pixels = np.asarray(image, dtype=np.float32)
        if not np.isfinite(pixels).all():
            bad = int((~np.isfinite(pixels)).sum())
            raise ImageError(f"NaN or infinite pixels ({bad} of {pixels.size}): no digit to read")
        return pixels, None
    alpha = None  # below: an alpha channel, or a colour that stands for "clear"
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), rgba)
    elif image.mode == "LAB":  # PIL converts LAB to RGB, not to "L"
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.float32), alpha


def ink(pixels: np.ndarray) -> np.ndarray | None:
    """Light ink on a dark background, 0-255 (dark-on-light is inverted), or None where
    nothing stands out from the background."""
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return None
    pixels = (pixels - low) * (255 / (high - low))  # its own range: 0-1 floats, 16-bit scans...
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if median(border) > 127:  # dark ink on light paper: MNIST is light on dark
        pixels, border = 255 - pixels, 255 - border
    pixels = np.clip(pixels - median(border), 0, None)
    if pixels.max() <= 0:
        return None
    return pixels * (255 / pixels.max())


def median(values: np.ndarray) -> np.floating:
    """``np.median(values)`` for 1-d float32 values, the same float, without the import of
    ``numpy.ma`` that np.median makes (20 ms of lenet-predict's start-up)."""
    ordered = np.sort(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


def centred(pixels: np.ndarray) -> np.ndarray:
    """The digit fitted into 20x20 and placed in 28x28 with its centre of mass in the middle."""
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
