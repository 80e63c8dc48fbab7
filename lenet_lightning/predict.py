"""lenet-predict: read handwritten digits from your own images with a trained checkpoint.

Each image is turned into what MNIST looks like: grayscale, light digit on a dark background
(dark-on-light drawings and photos are inverted), the digit fitted into a 20x20 box keeping its
aspect ratio, then placed in a 28x28 field with its centre of mass in the middle.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from lenet_lightning.config import (
    CONFIG_PATH,
    PredictConfig,
    register,
    reported_errors,
    resolve_checkpoint,
    validate,
)
from lenet_lightning.data import to_float_images
from lenet_lightning.evaluate import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """A file that cannot be read as a digit image."""


def read_image(path: Path) -> Image.Image:
    """Open an image, refusing non-images and decompression bombs with a clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
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


def image_files(paths: list[str]) -> list[Path]:
    """The files named, with the images inside any folder named (sorted)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


@dataclass
class Prediction:
    path: Path
    digit: int
    top: list[tuple[int, float]]  # (digit, probability), most likely first


def predict(cfg: DictConfig) -> tuple[list[Prediction], list[str]]:
    """Predict every image; return the predictions and one error line per unreadable file."""
    validate(cfg, PredictConfig)
    c = OmegaConf.to_container(cfg, resolve=True)
    path = resolve_checkpoint(c["ckpt_path"], c["paths"]["log_dir"], "best-*.ckpt")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    normalize = ckpt.get("datamodule_hyper_parameters", {}).get("normalize", True)
    predictions, errors = [], []
    for file in image_files(c["images"]):
        try:
            digit = to_mnist(read_image(file))
        except ImageError as err:
            errors.append(str(err) if str(file) in str(err) else f"{file}: {err}")
            continue
        x = to_float_images(torch.from_numpy(digit)[None], normalize)
        with torch.inference_mode():
            probs = model(x).softmax(dim=1)[0]
        values, digits = probs.topk(c["top_k"])
        top = list(zip(digits.tolist(), values.tolist(), strict=True))
        predictions.append(Prediction(file, top[0][0], top))
    return predictions, errors


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    with reported_errors("lenet-predict"):
        predictions, errors = predict(cfg)
    for p in predictions:
        shown = "  ".join(f"{d}: {prob:.3f}" for d, prob in p.top)
        print(f"{p.path}: {p.digit}   ({shown})")
    for line in errors:
        print(f"lenet-predict: error: {line}", file=sys.stderr)
    if errors:
        sys.exit(1)


def main() -> None:
    """``lenet-predict ckpt_path=<file or latest> images=[a.png,b.jpg]``."""
    register()
    with reported_errors("lenet-predict"):
        _hydra_main()


if __name__ == "__main__":
    main()
