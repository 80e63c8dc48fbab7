"""lenet-predict: read handwritten digits from your own images with a trained checkpoint, or
with the ``.onnx`` file ``lenet-export`` made of one.

Each image is prepared as ``lenet_lightning/images.py`` describes (as MNIST digits were made),
then the network's top probabilities are printed. A checkpoint runs on plain torch (no
Lightning); an ``.onnx`` file on onnxruntime, without torch, in a quarter of the time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenet_lightning.cli import entry_point
from lenet_lightning.config import PredictConfig
from lenet_lightning.images import ImageError, read_image, to_mnist
from lenet_lightning.networks import open_network

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_files(paths: list[str]) -> list[Path]:
    """The paths named, with the entries inside any folder named that look like images."""
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


def predict(cfg: PredictConfig) -> tuple[list[Prediction], list[str]]:
    """Predict every image; return the predictions and one error line per unreadable file."""
    _, network = open_network(cfg.ckpt_path, cfg.paths.log_dir)
    files, read, errors = image_files(list(cfg.images)), [], []
    if not files:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        errors.append(f"no images found in {', '.join(cfg.images)} (looked for {kinds})")
    for file in files:
        try:
            read.append((file, to_mnist(read_image(file))))
        except ImageError as err:
            errors.append(str(err) if str(file) in str(err) else f"{file}: {err}")
    if not read:
        return [], errors
    paths, digits = zip(*read, strict=True)
    predictions = []
    for path, probs in zip(paths, network.probabilities(np.stack(digits)), strict=True):
        top = [(int(d), float(probs[d])) for d in np.argsort(-probs, kind="stable")[: cfg.top_k]]
        predictions.append(Prediction(path, top[0][0], top))
    return predictions, errors


def predict_and_print(cfg: PredictConfig) -> None:
    """Print one line per image; errors go to stderr, one line each, and exit code 1 if there
    were any or stdout cannot be written. A reader that leaves early (``| head -1``) ends the
    command quietly with exit code 141, as SIGPIPE ends Unix tools."""
    if sys.stdout is None:  # started with stdout closed (>&-): the predictions would be lost
        print("lenet-predict: error: stdout is closed: nowhere to print", file=sys.stderr)
        sys.exit(1)
    predictions, errors = predict(cfg)
    try:
        for p in predictions:
            shown = "  ".join(f"{d}: {prob:.3f}" for d, prob in p.top)
            print(f"{p.path}: {p.digit}   ({shown})")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader has gone: Python's last flush must go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE
    except (OSError, ValueError) as err:  # stdout read-only, on a full disk, or closed
        errors.insert(0, f"cannot print the predictions: {err}")
        with contextlib.suppress(OSError, ValueError):  # the same: a last flush that fails
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    for line in errors:
        print(f"lenet-predict: error: {line}", file=sys.stderr)
    if errors:
        sys.exit(1)


main = entry_point("predict", predict_and_print, compose_once=True)

if __name__ == "__main__":
    main()
